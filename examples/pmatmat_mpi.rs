//! A lazy operator's product split over MPI ranks by columns, as Python
//! lazylinop's `pmatmat_mpi`; checked and timed against one rank's
//! sequential product.
//!
//! ```text
//! cargo build --release --features mpi --example pmatmat_mpi
//! mpirun -n 2 target/release/examples/pmatmat_mpi [n k]
//! ```
//! (add `--allow-run-as-root --oversubscribe` as root or with more ranks than cores)

use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, Par};
use lazylinop::parallel::pmatmat_mpi;
use lazylinop::parallel::{Gather, MpiOptions};
use lazylinop::prelude::*;
use lazylinop::random;
use mpi::traits::{Communicator, CommunicatorCollectives};

fn main() {
    let universe = mpi::initialize().expect("MPI initializes");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("usage: pmatmat_mpi [n k]"));
    let (n, k) = (args.next().unwrap_or(2000), args.next().unwrap_or(512));

    // SPMD: every rank builds the same operator and operand (same seeds).
    // L = A + D, a dense matrix plus a diagonal, never summed.
    let a = random::mat::<f64>(n, n, 0);
    let d = diag(faer::Col::from_fn(n, |i| 1.0 + i as f64));
    let l = (&a).plus(&d);
    let x = random::mat::<f64>(n, k, 1);

    let pl = pmatmat_mpi(&l, &world, false, MpiOptions::default().gather(Gather::Root)).expect("MPI is initialized");
    let mut y = Mat::zeros(n, k);
    let mut buf = MemBuffer::new(pl.apply_scratch(k, Par::Seq));
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        world.barrier();
        let start = Instant::now();
        pl.apply(y.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
        world.barrier();
        best = best.min(start.elapsed().as_secs_f64());
    }
    if rank == 0 {
        // One process, sequential, for the reference and the speedup.
        let mut reference = Mat::zeros(n, k);
        let mut seq_buf = MemBuffer::new(l.apply_scratch(k, Par::Seq));
        let start = Instant::now();
        l.apply(reference.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut seq_buf));
        let seq = start.elapsed().as_secs_f64();
        let diff = (&y - &reference).norm_max() / reference.norm_max();
        let gflops = 2.0 * (n * n * k) as f64 * 1e-9;
        println!("L = A + D, {n}×{n}, operand {n}×{k}, f64");
        println!("sequential, one process: {:8.1} ms ({:.1} GFLOP/s)", seq * 1e3, gflops / seq);
        println!(
            "pmatmat_mpi, {size} ranks:    {:8.1} ms ({:.1} GFLOP/s), speedup {:.2}, gathered on rank 0",
            best * 1e3,
            gflops / best,
            seq / best
        );
        println!("max relative difference from the sequential product: {diff:.1e}");
        assert!(diff < 1e-12, "the distributed product disagrees");
    }
}
