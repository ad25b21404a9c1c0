//! Benchmark of `MpiLop`, counterpart of Python lazylinop's `bm_mpilop.py`:
//! an `n × n` float64 matrix in a `.npz` file times `n × k`, first and
//! steady products, adjoint included, against one process's sequential faer
//! product. Run it with 1 and 2 ranks:
//!
//! ```text
//! cargo build --release --features mpi --example bm_mpilop
//! mpirun -n 1 target/release/examples/bm_mpilop [n k reps]
//! mpirun -n 2 target/release/examples/bm_mpilop [n k reps]
//! ```

use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use lazylinop::mpi::MpiLop;
use lazylinop::npz::NpzMatrix;
use lazylinop::prelude::*;
use lazylinop::random;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds `f` takes on rank 0, all ranks starting together.
fn timed(world: &SimpleCommunicator, f: impl FnOnce()) -> f64 {
    world.barrier();
    let start = Instant::now();
    f();
    let t = start.elapsed().as_secs_f64();
    world.barrier();
    t
}

fn main() {
    let universe = mpi::initialize().expect("MPI initializes");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("usage: bm_mpilop [n k reps]"));
    let (n, k, reps) = (args.next().unwrap_or(4000), args.next().unwrap_or(256), args.next().unwrap_or(5));
    let path = std::env::temp_dir().join(format!("lazylinop-bm-mpilop-{n}.npz"));
    if rank == 0 {
        lazylinop::npz::save(&path, "M", random::mat::<f64>(n, n, 0).as_ref()).expect("write the matrix");
    }
    world.barrier();
    let x = random::mat::<f64>(n, k, 1);
    let flops = 2.0 * (n * n * k) as f64;

    // One process's sequential faer product, the matrix in memory.
    let mut t_seq = f64::NAN;
    if rank == 0 {
        let dense = NpzMatrix::open(&path, None).unwrap().read_rows::<f64>(0..n).unwrap();
        let mut out = Mat::zeros(n, k);
        t_seq = median(
            (0..reps)
                .map(|_| {
                    let start = Instant::now();
                    matmul(out.as_mut(), Accum::Replace, dense.as_ref(), x.as_ref(), 1.0, Par::Seq);
                    start.elapsed().as_secs_f64()
                })
                .collect(),
        );
        println!(
            "{n}×{n} @ {n}×{k}, float64, {size} rank(s); one process sequential: {:.1} ms ({:.1} GFLOP/s)",
            t_seq * 1e3,
            flops / t_seq * 1e-9
        );
        println!(
            "| ranks | bcast_op | build (CRC-32 verified) | build, trusted (no CRC) | copy of own rows | first L·X | steady L·X | GFLOP/s | speedup | first/steady | first Lᴴ·Y | steady Lᴴ·Y |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    world.barrier();

    for bcast_op in [false, true] {
        let t_trusted = timed(&world, || {
            drop(MpiLop::<f64>::new_trusted(&world, &path, None, bcast_op, Some((n, n))).unwrap());
        });
        let mut l = None;
        let t_build =
            timed(&world, || l = Some(MpiLop::<f64>::new(&world, &path, None, bcast_op, Some((n, n))).unwrap()));
        let l = l.unwrap();
        // What the copy path costs (np.savez data is unaligned for f64): reading this rank's rows.
        let t_copy = timed(&world, || {
            NpzMatrix::open(&path, None).unwrap().read_rows::<f64>(l.local_rows()).unwrap();
        });
        let mut out = Mat::zeros(n, k);
        let mut buf = MemBuffer::new(l.apply_scratch(k, Par::Seq).or(l.transpose_apply_scratch(k, Par::Seq)));
        let mut apply = |adjoint: bool| {
            timed(&world, || {
                let stack = MemStack::new(&mut buf);
                if adjoint {
                    l.adjoint_apply(out.as_mut(), x.as_ref(), Par::Seq, stack)
                } else {
                    l.apply(out.as_mut(), x.as_ref(), Par::Seq, stack)
                }
            })
        };
        let first = apply(false);
        let steady = median((0..reps).map(|_| apply(false)).collect());
        let first_adj = apply(true);
        let steady_adj = median((0..reps).map(|_| apply(true)).collect());
        if rank == 0 {
            println!(
                "| {size} | {bcast_op} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} | {:.2} | {:.2} | {:.1} ms | {:.1} ms |",
                t_build * 1e3,
                t_trusted * 1e3,
                t_copy * 1e3,
                first * 1e3,
                steady * 1e3,
                flops / steady * 1e-9,
                t_seq / steady,
                first / steady,
                first_adj * 1e3,
                steady_adj * 1e3
            );
        }
    }
}
