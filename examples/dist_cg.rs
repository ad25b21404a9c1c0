//! Solves `A·x = b` with the distributed CG of `lazylinop::solvers` under
//! `mpirun`: the 7-point Laplacian on a 60³ grid (216 000 rows) or a square
//! scipy sparse file, `b` all ones. Prints the iterations, the residual and
//! the time per iteration of each variant (standard and fused CG, Jacobi,
//! CG on 16 right-hand sides at once, GMRES(30)), then checks the solution
//! against the replicated solve (faer's CG run on every rank on an `MpiLop`
//! with `Gather::All`: whole vectors on every rank), which it also times.
//!
//! ```text
//! cargo build --release --features mpi --example dist_cg
//! mpirun -n 2 target/release/examples/dist_cg                  # the 60³ Laplacian, 100 iterations per timing
//! mpirun -n 2 target/release/examples/dist_cg laplace 40 50    # a 40³ grid, 50 iterations
//! mpirun -n 2 target/release/examples/dist_cg file.npz 100
//! ```
//!
//! Timings run a fixed number of iterations (tolerance 0, as PETSc's
//! benchmark in `scripts/bench_petsc.py`); iteration counts are to a
//! relative residual of 1e-8. With `$LAZYLINOP_BENCH_CSV` set, rank 0
//! appends its figures to that CSV file.

mod common;

use std::io::Write;
use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::matrix_free::IdentityPrecond;
use faer::matrix_free::conjugate_gradient::{CgParams, conjugate_gradient, conjugate_gradient_scratch};
use faer::{Mat, Par};
use lazylinop::mpi::{DistMat, DistOp, MpiLop};
use lazylinop::parallel::{Gather, MpiOptions};
use lazylinop::prelude::*;
use lazylinop::solvers::{self, CgVariant, Params, SolveError};
use mpi::traits::{Communicator, CommunicatorCollectives};

fn main() {
    let universe = mpi::initialize().expect("MPI initializes");
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let (path, name, iters) = common::problem(&world, "dist_cg [laplace [N] [iters] | FILE.npz [iters]]", 100);
    let l = MpiLop::<f64>::new(&world, &path, None, false, None).expect("open the matrix");
    let n = l.nrows();
    let jacobi = solvers::jacobi(&l).expect("a diagonal without zeros");
    let csv = std::env::var_os("LAZYLINOP_BENCH_CSV");
    let emit = |what: &str, k: usize, t: f64| {
        if let (0, Some(csv)) = (rank, &csv) {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(csv).expect("the CSV file");
            writeln!(f, "lazylinop,{name},{n},{size},{k},{what},lazylinop,{t:.9}").unwrap();
        }
    };
    if rank == 0 {
        println!("{name}: {n} rows, {size} rank(s); CG from x = 0, b = 1");
        println!(
            "| solver | iterations to 1e-8 | relative residual | ms per iteration ({iters} iterations) | ms per iteration and right-hand side |"
        );
        println!("|---|---|---|---|---|");
    }
    let timed = |f: &mut dyn FnMut() -> usize| -> (f64, usize) {
        world.barrier();
        let start = Instant::now();
        let done = f();
        let mine = start.elapsed().as_secs_f64();
        let mut slowest = 0.0;
        world.all_reduce_into(&mine, &mut slowest, mpi::collective::SystemOperation::max());
        (slowest, done)
    };
    let mut solution = None;
    let mut peaks = vec![0u64; size];
    for (label, variant, m, k, key) in [
        ("CG", CgVariant::Standard, None, 1, "cg_none"),
        ("CG, fused (one allreduce)", CgVariant::Fused, None, 1, "cg_fused"),
        ("CG, Jacobi", CgVariant::Standard, Some(&jacobi as &dyn DistOp<f64>), 1, "cg_jacobi"),
        ("CG, 16 right-hand sides", CgVariant::Standard, None, 16, "cg16_none"),
    ] {
        let b = DistMat::from_fn(l.row_layout(), k, |_, j| 1.0 + j as f64 * 0.1);
        let mut x = DistMat::zeros(l.col_layout(), k);
        let info =
            solvers::cg(x.as_mut(), &l, m, b.as_ref(), Params::default().max_iters(10_000), variant, None, Par::Seq)
                .expect("CG converges");
        if k == 1 && m.is_none() && variant == CgVariant::Standard {
            solution = Some(x.gather(Gather::All).unwrap().unwrap());
        }
        // A fixed number of iterations: never converged (tolerance 0).
        let fixed = Params::default().rel_tolerance(0.0).max_iters(iters);
        let (t, _) = timed(&mut || match solvers::cg(x.as_mut(), &l, m, b.as_ref(), fixed, variant, None, Par::Seq) {
            Err(SolveError::NoConvergence(info)) => info.iterations,
            other => panic!("{other:?}"),
        });
        let per = t / iters as f64;
        emit(key, k, per);
        emit(&format!("{key}_iterations"), k, info.iterations as f64);
        if key == "cg_jacobi" {
            // Peak memory of the one-right-hand-side distributed solves.
            world.all_gather_into(&common::status_bytes("VmHWM"), &mut peaks[..]);
        }
        if rank == 0 {
            println!(
                "| {label} | {} | {:.1e} | {:.3} | {:.3} |",
                info.iterations,
                info.rel_residuals.iter().cloned().fold(0.0, f64::max),
                per * 1e3,
                per * 1e3 / k as f64
            );
        }
    }
    for (label, m, key) in [
        ("GMRES(30)", None, "gmres30_none"),
        ("GMRES(30), Jacobi", Some(&jacobi as &dyn DistOp<f64>), "gmres30_jacobi"),
    ] {
        let b = DistMat::from_fn(l.row_layout(), 1, |_, _| 1.0);
        let mut x = DistMat::zeros(l.col_layout(), 1);
        let info =
            solvers::gmres(x.as_mut(), &l, m, b.as_ref(), Params::default().max_iters(10_000), 30, None, Par::Seq)
                .expect("GMRES converges");
        emit(&format!("{key}_iterations"), 1, info.iterations as f64);
        if rank == 0 {
            println!("| {label} | {} | {:.1e} | | |", info.iterations, info.rel_residuals[0]);
        }
    }
    // The replicated solve: faer's CG on every rank, whole vectors gathered on every rank.
    let lr = MpiLop::<f64>::new(&world, &path, None, false, None)
        .unwrap()
        .with_options(MpiOptions::default().gather(Gather::All));
    let rhs = Mat::<f64>::from_fn(n, 1, |_, _| 1.0);
    let mut sol = Mat::<f64>::zeros(n, 1);
    let precond = IdentityPrecond { dim: n };
    let mut buf = MemBuffer::new(conjugate_gradient_scratch(precond, &lr, 1, Par::Seq));
    let params = CgParams { rel_tolerance: 1e-8, max_iters: 10_000, ..Default::default() };
    let info =
        conjugate_gradient(sol.as_mut(), precond, &lr, rhs.as_ref(), params, |_| {}, Par::Seq, MemStack::new(&mut buf))
            .expect("faer's CG converges");
    let fixed = CgParams { rel_tolerance: 0.0, abs_tolerance: 0.0, max_iters: iters, ..Default::default() };
    let (t, _) = timed(&mut || {
        let _ = conjugate_gradient(
            sol.as_mut(),
            precond,
            &lr,
            rhs.as_ref(),
            fixed,
            |_| {},
            Par::Seq,
            MemStack::new(&mut buf),
        );
        iters
    });
    emit("cg_replicated", 1, t / iters as f64);
    let ours = solution.expect("the standard CG's solution");
    let err = (&ours - &sol).norm_l2() / sol.norm_l2();
    if rank == 0 {
        println!(
            "| faer's CG on every rank, replicated (Gather::All) | {} | {:.1e} | {:.3} | |",
            info.iter_count,
            info.rel_residual,
            t / iters as f64 * 1e3
        );
        println!(
            "distributed and replicated solutions differ by {err:.1e} (relative); peak RSS per rank in the distributed one-right-hand-side solves {:?} MB",
            peaks.iter().map(|p| p >> 20).collect::<Vec<_>>()
        );
        emit("peak_rss", 1, *peaks.iter().max().unwrap() as f64);
    }
    assert!(err < 1e-6, "the distributed solution differs from the replicated one by {err:e}");
}
