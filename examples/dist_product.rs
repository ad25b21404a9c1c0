//! Distributed products of a sparse `MpiLop` on distributed vectors
//! (`DistMat`), with the halo exchange, side by side with the replicated
//! product (`Gather::All`, the whole vectors on every rank), the local
//! kernel alone on each rank's rows, and the exchange alone (the same
//! messages between the same ranks, without the products).
//!
//! ```text
//! cargo build --release --features mpi --example dist_product
//! mpirun -n 2 target/release/examples/dist_product                # the 7-point Laplacian on a 60³ grid
//! mpirun -n 2 target/release/examples/dist_product laplace 100     # on a 100³ grid
//! mpirun -n 2 target/release/examples/dist_product file.npz [reps] # a scipy sparse file (square)
//! ```
//!
//! Rank 0 writes the generated matrix with `save_sparse` (to the system's
//! temporary directory, or to `$LAZYLINOP_MATRIX` if set, for other tools to
//! read the same file). With `$LAZYLINOP_BENCH_CSV` set, rank 0 appends its
//! figures to that CSV file (`scripts/bench_distributed.sh` does).

mod common;

use std::io::Write;
use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{MatMut, MatRef, Par};
use lazylinop::mpi::{DistMat, DistOp, MpiLop};
use lazylinop::npz::SparseNpz;
use lazylinop::ops::Mode;
use lazylinop::parallel::{Gather, MpiOptions};
use lazylinop::prelude::*;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Destination, Source};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median over `reps` runs of the slowest rank's time of `f`, all ranks
/// starting together.
fn timed(world: &SimpleCommunicator, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let times = (0..reps)
        .map(|_| {
            world.barrier();
            let start = Instant::now();
            f();
            let mine = start.elapsed().as_secs_f64();
            let mut slowest = 0.0;
            world.all_reduce_into(&mine, &mut slowest, mpi::collective::SystemOperation::max());
            slowest
        })
        .collect();
    median(times)
}

fn main() {
    let universe = mpi::initialize().expect("MPI initializes");
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let (path, name, reps) = common::problem(&world, "dist_product [laplace [N] [reps] | FILE.npz [reps]]", 20);
    let before = common::status_bytes("VmRSS");
    let l = MpiLop::<f64>::new(&world, &path, None, false, None).expect("open the matrix");
    let l = l.with_options(MpiOptions::default().gather(Gather::All));
    let matrix_rss = common::status_bytes("VmRSS").saturating_sub(before);
    let (m, n) = (l.nrows(), l.ncols());
    let stats = l.halo_stats().expect("a sparse file");
    let nnz: usize = l.local_nnz().unwrap();
    if rank == 0 {
        println!("{name}: {m}×{n}, {size} rank(s), {reps} runs per figure (medians of the slowest rank)");
        println!(
            "| k | distributed | local kernel | exchange alone | replicated (Gather::All) | GFLOP/s | distributed / (kernel + exchange) | replicated / distributed |"
        );
        println!("|---|---|---|---|---|---|---|---|");
    }
    let csv = std::env::var_os("LAZYLINOP_BENCH_CSV");
    for k in [1usize, 16] {
        // The exchange alone: the halo's messages, rank to rank, the same sizes. Timed first,
        // so that MPI's own state for these peers and sizes is set up before the vectors'
        // memory is measured.
        let send: Vec<Vec<f64>> = stats.send_to.iter().map(|&(_, e)| vec![1.0; e * k]).collect();
        let mut recv: Vec<Vec<f64>> = stats.recv_from.iter().map(|&(_, e)| vec![0.0; e * k]).collect();
        let t_exchange = timed(&world, reps, || {
            mpi::request::scope(|scope| {
                let mut reqs = Vec::new();
                for ((q, _), buf) in stats.recv_from.iter().zip(recv.iter_mut()) {
                    reqs.push(world.process_at_rank(*q as i32).immediate_receive_into_with_tag(scope, &mut buf[..], 1));
                }
                let mut sends = Vec::new();
                for ((q, _), buf) in stats.send_to.iter().zip(&send) {
                    sends.push(world.process_at_rank(*q as i32).immediate_send_with_tag(scope, &buf[..], 1));
                }
                for r in reqs {
                    r.wait();
                }
                for r in sends {
                    r.wait();
                }
            })
        });
        // Distributed: DistMat in, DistMat out, halo exchange.
        // What the vectors take: the operand, the output and the product's scratch (halo
        // buffers, the kernel's), less the output (known exactly); in anonymous memory
        // (`RssAnon`), where they live: the pages of code the first product faults in, and
        // MPI's shared-memory segments, are not the vectors'.
        let rss_0 = common::status_bytes("RssAnon");
        let x = DistMat::from_fn(l.col_layout(), k, |i, j| 1.0 + ((i * 7 + j * 3) % 11) as f64);
        let mut y = DistMat::zeros(l.row_layout(), k);
        y.local_mut().fill(0.0);
        let mut buf = MemBuffer::new(l.dist_scratch(Mode::Apply, k, Par::Seq));
        let t_dist = timed(&world, reps, || {
            l.dist_apply(Mode::Apply, y.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf)).unwrap();
        });
        let vec_rss =
            common::status_bytes("RssAnon").saturating_sub(rss_0).saturating_sub((y.local().nrows() * k * 8) as u64);
        // The local kernel alone: this rank's rows (global columns) on a whole operand.
        let npz = SparseNpz::open(&path).unwrap();
        let rows = l.row_layout().local_range();
        // Row-major whole operand and outputs, as a DistMat's rows are (the kernel reads them in place).
        let xw_data: Vec<f64> = (0..n * k).map(|p| 1.0 + (((p / k) * 7 + (p % k) * 3) % 11) as f64).collect();
        let xw = MatRef::from_row_major_slice(&xw_data, n, k);
        let t_kernel = {
            let part = npz.part::<f64, u32>(rows.clone()).expect("an int32 file");
            let op = Sparse::new(part.view());
            let mut yw_data = vec![0.0; rows.len() * k];
            let mut yw = MatMut::from_row_major_slice_mut(&mut yw_data, rows.len(), k);
            let mut kbuf = MemBuffer::new(op.apply_scratch(k, Par::Seq));
            timed(&world, reps, || op.apply(yw.as_mut(), xw, Par::Seq, MemStack::new(&mut kbuf)))
        };
        // Replicated: the whole operand on every rank, the whole result gathered on every rank.
        let mut yr_data = vec![0.0; m * k];
        let mut yr = MatMut::from_row_major_slice_mut(&mut yr_data, m, k);
        let mut rbuf = MemBuffer::new(l.apply_scratch(k, Par::Seq));
        let t_repl = timed(&world, reps, || l.apply(yr.as_mut(), xw, Par::Seq, MemStack::new(&mut rbuf)));
        // The distributed result is the replicated one.
        let got = y.gather(Gather::All).unwrap().unwrap();
        let err = (&got - yr.as_ref()).norm_max() / yr.norm_max().max(1.0);
        assert!(err < 1e-12, "distributed and replicated products differ: {err:e}");
        let mut total_nnz = 0usize;
        world.all_reduce_into(&nnz, &mut total_nnz, mpi::collective::SystemOperation::sum());
        let flops = 2.0 * (total_nnz * k) as f64;
        // Each rank's vector memory against its rows and ghosts.
        let want = ((stats.rows.max(stats.cols) + stats.ghosts) * k * 8) as f64;
        let scratch = l.dist_scratch(Mode::Apply, k, Par::Seq).size_bytes();
        let mine =
            [vec_rss as f64, want, matrix_rss as f64, stats.ghosts as f64, stats.neighbours() as f64, scratch as f64];
        let mut all = vec![0.0f64; 6 * size];
        world.all_gather_into(&mine[..], &mut all[..]);
        if rank == 0 {
            println!(
                "| {k} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.2} | {:.2} | {:.2} |",
                t_dist * 1e3,
                t_kernel * 1e3,
                t_exchange * 1e3,
                t_repl * 1e3,
                flops / t_dist * 1e-9,
                t_dist / (t_kernel + t_exchange),
                t_repl / t_dist
            );
            for r in 0..size {
                let a = &all[6 * r..6 * r + 6];
                println!(
                    "    rank {r}: {} ghosts from {} neighbours; operand + halo buffers + scratch {:.2} MB (scratch {:.2} MB) against (rows + ghosts)·k·8 = {:.2} MB ({:.2}×); matrix {:.1} MB",
                    a[3],
                    a[4],
                    a[0] / 1e6,
                    a[5] / 1e6,
                    a[1] / 1e6,
                    a[0] / a[1],
                    a[2] / 1e6
                );
            }
            if let Some(csv) = &csv {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(csv).expect("the CSV file");
                for (variant, t) in
                    [("distributed", t_dist), ("kernel", t_kernel), ("exchange", t_exchange), ("replicated", t_repl)]
                {
                    writeln!(f, "lazylinop,{name},{m},{size},{k},product,{variant},{t:.9}").unwrap();
                }
                let ratio = (0..size).map(|r| all[6 * r] / all[6 * r + 1]).fold(0.0, f64::max);
                writeln!(f, "lazylinop,{name},{m},{size},{k},memory_ratio,distributed,{ratio:.4}").unwrap();
            }
        }
        world.barrier();
    }
}
