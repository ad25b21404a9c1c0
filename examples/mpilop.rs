//! A matrix stored in a numpy `.npz` file, distributed by rows over MPI
//! ranks, as Python lazylinop's `MPILop`: products and adjoint products,
//! checked on rank 0 against the matrix read whole from the file.
//!
//! ```text
//! cargo build --release --features mpi --example mpilop
//! mpirun -n 2 target/release/examples/mpilop [file.npz | m n]
//! ```
//! Without a file, rank 0 writes an `m × n` float64 matrix (3000×2000 by
//! default) to a temporary `.npz` first (`lazylinop::npz::save`, which numpy
//! reads too).

use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, Par};
use lazylinop::mpi::MpiLop;
use lazylinop::npz::NpzMatrix;
use lazylinop::prelude::*;
use lazylinop::random;
use mpi::traits::{Communicator, CommunicatorCollectives};

fn main() {
    let universe = mpi::initialize().expect("MPI initializes");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match &args[..] {
        [path] => path.into(),
        _ => {
            let size =
                |i: usize, default| args.get(i).map_or(default, |a| a.parse().expect("usage: mpilop [file.npz | m n]"));
            let (m, n) = (size(0, 3000), size(1, 2000));
            let path = std::env::temp_dir().join(format!("lazylinop-mpilop-example-{m}x{n}.npz"));
            if rank == 0 {
                lazylinop::npz::save(&path, "M", random::mat::<f64>(m, n, 0).as_ref()).expect("write the example file");
            }
            world.barrier();
            path
        }
    };

    // Every rank maps the file and keeps its own rows; errors are the same on every rank.
    let l = match MpiLop::<f64>::new(&world, &path, None, true, None) {
        Ok(l) => l,
        Err(e) => {
            if rank == 0 {
                eprintln!("{e}");
            }
            std::process::exit(1);
        }
    };
    let (m, n) = (l.nrows(), l.ncols());
    println!(
        "rank {rank}/{size}: rows {:?} of {m}×{n} from {} (member {:?}), {}",
        l.local_rows(),
        path.display(),
        l.member(),
        if l.is_mapped() { "viewed in place" } else { "copied" }
    );

    let k = 64;
    let x = random::mat::<f64>(n, k, 1); // broadcast from rank 0 (bcast_op)
    let y = random::mat::<f64>(m, k, 2);
    let mut lx = Mat::zeros(m, k);
    let mut lhy = Mat::zeros(n, k);
    let mut buf = MemBuffer::new(l.apply_scratch(k, Par::Seq).or(l.transpose_apply_scratch(k, Par::Seq)));
    let start = Instant::now();
    l.apply(lx.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
    let t_apply = start.elapsed().as_secs_f64();
    let start = Instant::now();
    l.adjoint_apply(lhy.as_mut(), y.as_ref(), Par::Seq, MemStack::new(&mut buf));
    let t_adjoint = start.elapsed().as_secs_f64();

    if rank == 0 {
        // The dense reference, read whole from the file here only.
        let dense = NpzMatrix::open(&path, None).unwrap().read_rows::<f64>(0..m).unwrap();
        let e1 = (&lx - &dense * &x).norm_max() / lx.norm_max().max(1.0);
        let e2 = (&lhy - dense.adjoint() * &y).norm_max() / lhy.norm_max().max(1.0);
        println!("L·X  ({m}×{n} @ {n}×{k}): {:.1} ms, max relative difference {e1:.1e}", t_apply * 1e3);
        println!("Lᴴ·Y ({n}×{m} @ {m}×{k}): {:.1} ms, max relative difference {e2:.1e}", t_adjoint * 1e3);
        assert!(e1 < 1e-12 && e2 < 1e-12, "the distributed products disagree with the file");
    }
}
