//! A lazy operator's product split over MPI ranks by columns, as Python
//! lazylinop's `pmatmat_mpi`; checked and timed against one rank's
//! sequential product.
//!
//! ```text
//! cargo build --release --features mpi --example pmatmat_mpi
//! mpirun -n 2 target/release/examples/pmatmat_mpi [n k | file.npz [k]]
//! ```
//! (add `--allow-run-as-root --oversubscribe` as root or with more ranks than cores)
//!
//! Without a file, `L = A + D`, an `n × n` dense matrix plus a diagonal
//! (2000, with 512 columns, by default). With a file, `L` is its float64
//! matrix, read whole by every rank: a dense array (`np.savez`) or a scipy
//! sparse CSR or CSC matrix (`scipy.sparse.save_npz`), then a
//! [`Sparse`](lazylinop::sparse::Sparse) operator.

use std::path::Path;
use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, Par};
use lazylinop::npz::{IndexDtype, NpzLayout, NpzMatrix, SparseNpz};
use lazylinop::parallel::pmatmat_mpi;
use lazylinop::parallel::{Gather, MpiOptions};
use lazylinop::prelude::*;
use lazylinop::random;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

fn main() {
    let universe = mpi::initialize().expect("MPI initializes");
    let world = universe.world();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pmatmat_mpi [n k | file.npz [k]]";
    let number = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().expect(usage));
    match args.first().filter(|a| a.ends_with(".npz")) {
        Some(file) => {
            let path = Path::new(file);
            let k = number(1, 64);
            if lazylinop::npz::detect(path).expect("read the file") == NpzLayout::Dense {
                let npz = NpzMatrix::open(path, None).expect("open the file");
                let a = npz.read_rows::<f64>(0..npz.shape().0).expect("read the matrix");
                let flops = 2.0 * (a.nrows() * a.ncols()) as f64;
                run(&world, &a, &format!("{file} (dense)"), k, flops);
            } else {
                // SPMD: every rank reads the whole sparse matrix, and multiplies its columns of X.
                let npz = SparseNpz::open(path).expect("open the sparse file");
                let label = format!("{file} ({:?}, {} nonzeros, {})", npz.format(), npz.nnz(), npz.index_dtype());
                let flops = 2.0 * npz.nnz() as f64;
                match npz.index_dtype() {
                    IndexDtype::Int32 => {
                        let part = npz.part::<f64, u32>(0..npz.major()).expect("read the matrix");
                        match part.as_csr() {
                            Some(a) => run(&world, &Sparse::new(a), &label, k, flops),
                            None => run(&world, &Sparse::new(part.as_csc().unwrap()), &label, k, flops),
                        }
                    }
                    IndexDtype::Int64 => {
                        let part = npz.part::<f64, u64>(0..npz.major()).expect("read the matrix");
                        match part.as_csr() {
                            Some(a) => run(&world, &Sparse::new(a), &label, k, flops),
                            None => run(&world, &Sparse::new(part.as_csc().unwrap()), &label, k, flops),
                        }
                    }
                }
            }
        }
        None => {
            let (n, k) = (number(0, 2000), number(1, 512));
            // SPMD: every rank builds the same operator and operand (same seeds).
            // L = A + D, a dense matrix plus a diagonal, never summed.
            let a = random::mat::<f64>(n, n, 0);
            let d = diag(faer::Col::from_fn(n, |i| 1.0 + i as f64));
            run(&world, &(&a).plus(&d), &format!("L = A + D, {n}×{n}"), k, 2.0 * (n * n) as f64);
        }
    }
}

/// Times `l`'s product with `k` columns split over the ranks, checks it on rank 0
/// against the sequential product; `flops_per_column` of `l` give the GFLOP/s.
fn run<L: BiLinOp<f64>>(world: &SimpleCommunicator, l: &L, label: &str, k: usize, flops_per_column: f64) {
    let (rank, size) = (world.rank(), world.size());
    let (m, n) = (l.nrows(), l.ncols());
    let x = random::mat::<f64>(n, k, 1);
    let pl = pmatmat_mpi(l, world, false, MpiOptions::default().gather(Gather::Root)).expect("MPI is initialized");
    let mut y = Mat::zeros(m, k);
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
        let mut reference = Mat::zeros(m, k);
        let mut seq_buf = MemBuffer::new(l.apply_scratch(k, Par::Seq));
        let start = Instant::now();
        l.apply(reference.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut seq_buf));
        let seq = start.elapsed().as_secs_f64();
        let diff = (&y - &reference).norm_max() / reference.norm_max().max(f64::MIN_POSITIVE);
        println!("{label}, operand {n}×{k}, f64");
        let gflops = flops_per_column * k as f64 * 1e-9;
        println!("sequential, one process: {:8.3} ms ({:.1} GFLOP/s)", seq * 1e3, gflops / seq);
        println!(
            "pmatmat_mpi, {size} ranks:    {:8.3} ms ({:.1} GFLOP/s), speedup {:.2}, gathered on rank 0",
            best * 1e3,
            gflops / best,
            seq / best
        );
        println!("max relative difference from the sequential product: {diff:.1e}");
        assert!(diff < 1e-12, "the distributed product disagrees");
    }
}
