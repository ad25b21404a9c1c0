//! Distributed vectors and products (`Layout`, `DistMat`, `DistOp`): every
//! result gathered and checked against a dense reference and against the
//! replicated product, on every rank; bad input is the same error on every
//! rank.

use super::*;
use lazylinop::halo;
use lazylinop::mpi::{DistDiag, DistLocal, DistMat, DistOp, DistOpExt, Layout};
use mpi::traits::Root;

/// The widths of the distributed tests: none, one, odd, more than a panel.
const KS: [usize; 4] = [0, 1, 3, 17];

/// `op`'s distributed products in every mode against `dense` (and against
/// its replicated product, when it has one), for every width.
fn check_dist<T: Scalar, D: DistOp<T>>(op: &D, dense: MatRef<'_, T>, replicated: Option<&dyn BiLinOp<T>>, what: &str) {
    for (seed, k) in KS.into_iter().enumerate() {
        for mode in Mode::ALL {
            let (rows, cols) = if mode.is_transposed() {
                (op.col_layout(), op.row_layout())
            } else {
                (op.row_layout(), op.col_layout())
            };
            let x = random::mat::<T>(cols.len(), k, 50 + seed as u64);
            let dx = DistMat::from_full(cols, x.as_ref());
            let label = format!("{what}, distributed {mode:?}, k = {k}");
            let y = op.dist_product(mode, dx.as_ref()).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(y.layout().offsets(), rows.offsets(), "{label}: the result's layout");
            let got = y.gather(Gather::All).unwrap().expect("gathered on every rank");
            assert_close(got.as_ref(), reference(dense, mode, x.as_ref()).as_ref(), &label);
            if let Some(r) = replicated {
                let want = product(r, mode, x.as_ref(), Par::Seq);
                assert_close(got.as_ref(), want.as_ref(), &format!("{label}, against the replicated product"));
            }
        }
    }
}

fn sparse_dist_case<T: Exact>(world: &SimpleCommunicator, e: &serde_json::Value) {
    let file = e["file"].as_str().unwrap();
    let (m, n) = manifest_shape(e);
    let dense = manifest_dense::<T>(e);
    for max_message in [usize::MAX, 5] {
        let bytes = max_message.saturating_mul(size_of::<T>());
        let options = MpiOptions::default().gather(Gather::All).max_message_bytes(bytes);
        let l = MpiLop::<T>::new(world, sparse_fixture(file), None, false, Some((m, n))).unwrap().with_options(options);
        check_dist(&l, dense.as_ref(), Some(&l), &format!("{file} {m}×{n}, max {max_message}"));
        // Two threads inside each rank.
        let x = DistMat::from_fn(l.col_layout(), 16, |i, j| T::from_pair((i * 3 + j) as f64, j as f64));
        let mut y = DistMat::zeros(l.row_layout(), 16);
        let mut buf = faer::dyn_stack::MemBuffer::new(l.dist_scratch(Mode::Apply, 16, Par::rayon(2)));
        l.dist_apply(Mode::Apply, y.as_mut(), x.as_ref(), Par::rayon(2), faer::dyn_stack::MemStack::new(&mut buf))
            .unwrap();
        let want = reference(dense.as_ref(), Mode::Apply, x.gather(Gather::All).unwrap().unwrap().as_ref());
        assert_close(
            y.gather(Gather::All).unwrap().unwrap().as_ref(),
            want.as_ref(),
            &format!("{file}, Par::rayon(2)"),
        );
    }
}

/// Every valid sparse fixture (CSR and CSC, every type and index type,
/// rectangular, empty, unsorted and repeated indices; more ranks than rows
/// under `-n 3` and `-n 4`), distributed, against the manifest's matrix and
/// the replicated product.
fn distributed_sparse_products_match(world: &SimpleCommunicator) {
    let manifest = sparse_manifest();
    for e in manifest["valid"].as_array().unwrap() {
        match e["dtype"].as_str().unwrap() {
            "float32" => sparse_dist_case::<f32>(world, e),
            "float64" => sparse_dist_case::<f64>(world, e),
            "complex64" => sparse_dist_case::<faer::c32>(world, e),
            "complex128" => sparse_dist_case::<faer::c64>(world, e),
            other => panic!("dtype {other}"),
        }
    }
}

fn dense_dist_all<T: Scalar + Formula>(world: &SimpleCommunicator, dtype: &str) {
    for (file, member, (m, n), seed) in fixtures_of(dtype) {
        let dense = Mat::from_fn(m, n, |i, j| T::value(seed, i, j));
        for max_message in [usize::MAX, 5] {
            let bytes = max_message.saturating_mul(size_of::<T>());
            let options = MpiOptions::default().gather(Gather::All).max_message_bytes(bytes);
            let l = MpiLop::<T>::new(world, fixtures::fixture(&file), Some(&member), false, Some((m, n)))
                .unwrap()
                .with_options(options);
            check_dist(&l, dense.as_ref(), Some(&l), &format!("dense {file}:{member} {m}×{n}, max {max_message}"));
        }
    }
}

/// Dense files: the operand all-gathered, the adjoint reduce-scattered.
fn distributed_dense_products_match(world: &SimpleCommunicator) {
    dense_dist_all::<f32>(world, "float32");
    dense_dist_all::<f64>(world, "float64");
    dense_dist_all::<faer::c32>(world, "complex64");
    dense_dist_all::<faer::c64>(world, "complex128");
}

/// A scipy-style file of `a` (CSR or CSC), written by rank 0; the path.
fn saved<T: Scalar>(
    world: &SimpleCommunicator,
    name: &str,
    a: &faer::sparse::SparseRowMat<u32, T>,
    csc: bool,
) -> std::path::PathBuf {
    let mut pid = std::process::id();
    world.process_at_rank(0).broadcast_into(&mut pid);
    let path = std::env::temp_dir().join(format!("lazylinop-dist-{pid}-{name}.npz"));
    if world.rank() == 0 {
        if csc {
            let c = a.to_col_major().unwrap();
            lazylinop::npz::save_sparse(&path, c.as_ref()).unwrap();
        } else {
            lazylinop::npz::save_sparse(&path, a.as_ref()).unwrap();
        }
    }
    world.barrier();
    path
}

/// A scipy-style CSR file of `a`, written by rank 0; the path (in the
/// system's temporary directory, named after the job and `name`).
pub(super) fn saved_sparse<T: Scalar>(
    world: &SimpleCommunicator,
    name: &str,
    a: faer::sparse::SparseRowMatRef<'_, u32, T>,
) -> std::path::PathBuf {
    let mut pid = std::process::id();
    world.process_at_rank(0).broadcast_into(&mut pid);
    let path = std::env::temp_dir().join(format!("lazylinop-dist-{pid}-{name}.npz"));
    if world.rank() == 0 {
        lazylinop::npz::save_sparse(&path, a).unwrap();
    }
    world.barrier();
    path
}

/// A solver's error on every rank, the same everywhere, containing `needle`.
#[track_caller]
pub(super) fn same_error_everywhere_solve(
    world: &SimpleCommunicator,
    got: Result<lazylinop::solvers::SolveInfo, lazylinop::solvers::SolveError>,
    needle: &str,
) {
    let err = got.expect_err(needle).to_string();
    assert!(err.contains(needle), "expected an error about {needle:?}, got: {err}");
    let all = all_gather_u64(world, [fnv(&err)]);
    assert!(all.iter().all(|h| *h == all[0]), "the ranks got different errors: {err}");
}

/// An `n × n` matrix whose rank blocks of an even split hold only their
/// own columns (no ghosts) when `coupled` is false; a tridiagonal matrix
/// with repeated entries (coupled neighbours) otherwise.
fn banded(n: usize, coupled: bool) -> faer::sparse::SparseRowMat<u32, f64> {
    use faer::sparse::Triplet;
    let mut t = Vec::new();
    for i in 0..n {
        t.push(Triplet::new(i as u32, i as u32, 4.0 + i as f64));
        if coupled {
            if i > 0 {
                t.push(Triplet::new(i as u32, i as u32 - 1, -1.0));
                t.push(Triplet::new(i as u32, i as u32 - 1, -0.5));
            }
            if i + 1 < n {
                t.push(Triplet::new(i as u32, i as u32 + 1, -1.0 - i as f64 / n as f64));
            }
        }
    }
    faer::sparse::SparseRowMat::try_new_from_triplets(n, n, &t).unwrap()
}

/// A rank without ghosts (a diagonal matrix), a path graph (each inner rank
/// two neighbours, repeated entries), both formats; the plan's statistics
/// agree with the offline ones.
fn halo_cases_and_stats(world: &SimpleCommunicator) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    for coupled in [false, true] {
        for csc in [false, true] {
            let a = banded(40, coupled);
            let name = format!("banded-{coupled}-{csc}");
            let path = saved(world, &name, &a, csc);
            let l = MpiLop::<f64>::new(world, &path, None, false, None)
                .unwrap()
                .with_options(MpiOptions::default().gather(Gather::All));
            let dense = a.to_dense();
            check_dist(&l, dense.as_ref(), Some(&l), &name);
            let diag = l.diagonal().unwrap().gather(Gather::All).unwrap().unwrap();
            assert_eq!(diag, Mat::from_fn(40, 1, |i, _| dense[(i, i)]), "{name}: the diagonal");
            let stats = l.halo_stats().expect("a sparse file has a halo");
            let npz = lazylinop::npz::SparseNpz::open(&path).unwrap();
            let offline = halo::stats_of_file(&npz, size).unwrap();
            assert_eq!(stats, offline[rank], "{name}: the plan's statistics are the offline ones");
            if !coupled {
                assert_eq!((stats.ghosts, stats.recv_from.len(), stats.send_to.len()), (0, 0, 0), "{name}: no ghosts");
            } else if size > 1 && rank > 0 && rank + 1 < size && stats.rows > 0 {
                assert_eq!(stats.recv_from.len(), 2, "{name}: an inner rank has two neighbours: {stats:?}");
            }
            world.barrier();
            if rank == 0 {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
}

/// Forward products large enough that each rank multiplies its diagonal
/// block in pieces, moving the halo's messages on between them (a path
/// graph of 100 000 rows, three entries a row, k = 17: at least two pieces
/// a rank on up to four ranks), against faer's sequential product.
fn pieced_forward_products_match(world: &SimpleCommunicator) {
    let a = banded(100_000, true);
    let path = saved(world, "pieced", &a, false);
    let l = MpiLop::<f64>::new(world, &path, None, false, None).unwrap();
    let k = 17;
    let x = random::mat::<f64>(a.ncols(), k, 91);
    let want = a.as_ref() * &x;
    for mode in [Mode::Apply, Mode::Conj] {
        let y = l.dist_product(mode, DistMat::from_full(l.col_layout(), x.as_ref()).as_ref()).unwrap();
        let got = y.gather(Gather::All).unwrap().expect("gathered on every rank");
        assert_close(got.as_ref(), want.as_ref(), &format!("a pieced forward product, {mode:?}"));
    }
    world.barrier();
    if world.rank() == 0 {
        std::fs::remove_file(&path).unwrap();
    }
}

/// Compositions, sums, scaling, the views, a rank-local operator and a
/// distributed diagonal, against their dense matrices.
fn distributed_algebra_matches(world: &SimpleCommunicator) {
    let rank = world.rank() as usize;
    let a = banded(23, true);
    let path = saved(world, "algebra", &a, false);
    let l = MpiLop::<f64>::new(world, &path, None, false, None).unwrap();
    let d = a.to_dense();
    check_dist(&(&l).dist_compose(&l), (&d * &d).as_ref(), None, "A·A");
    check_dist(&(&l).dist_plus(l.dist_adjoint()), (&d + d.adjoint()).as_ref(), None, "A + Aᴴ");
    check_dist(&(&l).dist_scale(-2.5), (&d * faer::Scale(-2.5)).as_ref(), None, "-2.5·A");
    check_dist(&l.dist_transpose(), d.transpose(), None, "Aᵀ");
    // A rank-local block: rank r's block is a fixed random matrix of its size.
    let rows = l.row_layout();
    let local = random::mat::<f64>(rows.local_len(), rows.local_len(), 7 + rank as u64);
    let blocks = (0..rows.size()).map(|r| random::mat::<f64>(rows.range(r).len(), rows.range(r).len(), 7 + r as u64));
    let mut block_diag = Mat::<f64>::zeros(rows.len(), rows.len());
    for (r, b) in blocks.enumerate() {
        let at = rows.range(r).start;
        block_diag.as_mut().submatrix_mut(at, at, b.nrows(), b.ncols()).copy_from(&b);
    }
    let loc = DistLocal::new(rows, rows, local.clone());
    check_dist(&loc, block_diag.as_ref(), None, "rank-local blocks");
    check_dist(&(&l).dist_compose(&loc), (&d * &block_diag).as_ref(), None, "A · local");
    let diag = DistMat::from_fn(rows, 1, |i, _| 1.0 + i as f64);
    let dd = Mat::from_fn(rows.len(), rows.len(), |i, j| if i == j { 1.0 + i as f64 } else { 0.0 });
    check_dist(&DistDiag::new(diag), dd.as_ref(), None, "diag");
    world.barrier();
    if rank == 0 {
        std::fs::remove_file(&path).unwrap();
    }
}

fn reductions_of<T: Scalar>(world: &SimpleCommunicator) {
    for (n, k1, k2) in [(0, 2, 3), (1, 1, 1), (29, 3, 5), (7, 0, 2)] {
        let layout = Layout::from_local_len(
            world,
            lazylinop::parallel::split::block(n, world.size() as usize, world.rank() as usize).len(),
            Some(n),
        )
        .unwrap();
        let (x, y) = (random::mat::<T>(n, k1, 1), random::mat::<T>(n, k2, 2));
        let (dx, dy) = (DistMat::from_full(&layout, x.as_ref()), DistMat::from_full(&layout, y.as_ref()));
        let what = format!("{n}×{k1}, {n}×{k2}");
        assert_close(
            dx.as_ref().gram(dy.as_ref()).unwrap().as_ref(),
            (x.adjoint() * &y).as_ref(),
            &format!("gram {what}"),
        );
        let norms = dx.as_ref().norms().unwrap();
        let want = Mat::from_fn(k1, 1, |j, _| faer::traits::math_utils::from_real::<T>(&x.col(j).norm_l2()));
        let got = Mat::from_fn(k1, 1, |j, _| faer::traits::math_utils::from_real::<T>(&norms[j]));
        assert_close(got.as_ref(), want.as_ref(), &format!("norms {what}"));
        let dots = dx.as_ref().dots(dx.as_ref()).unwrap();
        let want = Mat::from_fn(k1, 1, |j, _| x.col(j).adjoint() * x.col(j));
        assert_close(Mat::from_fn(k1, 1, |j, _| dots[j]).as_ref(), want.as_ref(), &format!("dots {what}"));
        // Round trips: scatter from the last rank, gather to rank 0 and to all.
        let root = world.size() as usize - 1;
        let mine = (world.rank() as usize == root).then_some(x.as_ref());
        let s = DistMat::scatter(&layout, root, mine).unwrap();
        assert_eq!(s.local(), dx.local(), "scatter {what}");
        let g = s.gather(Gather::Root).unwrap();
        assert_eq!(g.is_some(), world.rank() == 0, "gather to the root {what}");
        if let Some(g) = g {
            assert_eq!(g, x, "gather {what}");
        }
        assert_eq!(s.gather(Gather::All).unwrap().unwrap(), x, "gather to all {what}");
        // Local updates.
        let mut z = dx.clone();
        z.as_mut().axpby(
            faer::traits::math_utils::from_f64::<T>(2.0),
            dx.as_ref(),
            faer::traits::math_utils::from_f64::<T>(-1.0),
        );
        assert_close(z.gather(Gather::All).unwrap().unwrap().as_ref(), x.as_ref(), &format!("axpby {what}"));
    }
}

/// Column norms, dots and the Gram matrix in one allreduce each; scatter,
/// gather and local updates.
fn distributed_reductions_match(world: &SimpleCommunicator) {
    reductions_of::<f32>(world);
    reductions_of::<f64>(world);
    reductions_of::<faer::c32>(world);
    reductions_of::<faer::c64>(world);
    // A .npz member, each rank reading its rows.
    for (file, member, (m, n), seed) in fixtures_of("float64") {
        let layout = Layout::even(world, m).unwrap();
        let x = DistMat::<f64>::read_npz(&layout, fixtures::fixture(&file), Some(&member)).unwrap();
        let want = Mat::from_fn(m, n, |i, j| f64::value(seed, i, j));
        assert_eq!(x.gather(Gather::All).unwrap().unwrap(), want, "read_npz {file}:{member}");
    }
    // Written by rank 0 from every rank's rows, read back by rows; a path that cannot be
    // written (a directory) is the same error on every rank, not a hang.
    let mut pid = std::process::id();
    world.process_at_rank(0).broadcast_into(&mut pid);
    let path = std::env::temp_dir().join(format!("lazylinop-dist-{pid}-saved.npz"));
    for (n, k) in [(0, 3), (1, 1), (37, 5), (8, 0)] {
        let layout = Layout::even(world, n).unwrap();
        let x = random::mat::<faer::c64>(n, k, 11);
        DistMat::from_full(&layout, x.as_ref()).save_npz(&path, "x").unwrap();
        let npz = lazylinop::npz::NpzMatrix::open(&path, Some("x")).unwrap();
        assert_eq!((npz.shape(), npz.order()), ((n, k), lazylinop::npz::Order::C), "saved {n}×{k}");
        let back = DistMat::<faer::c64>::read_npz(&layout, &path, None).unwrap();
        assert_eq!(back.gather(Gather::All).unwrap().unwrap(), x, "saved {n}×{k}");
        world.barrier();
    }
    if world.rank() == 0 {
        std::fs::remove_file(&path).unwrap();
    }
    let layout = Layout::even(world, 10).unwrap();
    let x = DistMat::<f64>::zeros(&layout, 2);
    same_error_everywhere(world, x.save_npz(std::env::temp_dir(), "x"), "rank 0 failed");
}

/// `got` is an error on every rank, the same message everywhere, containing `needle`.
#[track_caller]
fn same_error_everywhere<R: std::fmt::Debug>(world: &SimpleCommunicator, got: Result<R, Error>, needle: &str) {
    let err = got.expect_err(needle).to_string();
    assert!(err.contains(needle), "expected an error about {needle:?}, got: {err}");
    let all = all_gather_u64(world, [fnv(&err)]);
    assert!(all.iter().all(|h| *h == all[0]), "the ranks got different errors: {err}");
}

/// Layouts whose sizes do not add up, operands of another layout, column
/// count or communicator, a panic in a rank-local operator on one rank: the
/// same typed error on every rank, and the operator still works.
fn distributed_bad_input_is_an_error_on_every_rank(world: &SimpleCommunicator) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    same_error_everywhere(world, Layout::from_local_len(world, rank + 1, Some(size * (size + 1) / 2 + 1)), "add up");
    let a = banded(31, true);
    let path = saved(world, "bad", &a, false);
    let l = MpiLop::<f64>::new(world, &path, None, false, None).unwrap();
    let cols = l.col_layout();
    let good = DistMat::from_fn(cols, 2, |i, j| (i + j) as f64);
    if size > 1 {
        // One row moved from the last rank to the first.
        let len = cols.local_len() + usize::from(rank == 0) - usize::from(rank == size - 1);
        let other = cols.with_local_len(len, Some(cols.len())).unwrap();
        let x = DistMat::from_fn(&other, 2, |i, j| (i + j) as f64);
        same_error_everywhere(world, l.dist_product(Mode::Apply, x.as_ref()), "layout");
        // The same split, on the world's ranks in reverse order.
        let reversed =
            world.split_by_color_with_key(mpi::topology::Color::with_value(0), (size - 1 - rank) as i32).unwrap();
        let flipped = Layout::from_local_len(&reversed, cols.range(size - 1 - rank).len(), Some(cols.len())).unwrap();
        if flipped.offsets() == cols.offsets() {
            let x = DistMat::from_fn(&flipped, 2, |i, j| (i + j) as f64);
            same_error_everywhere(world, l.dist_product(Mode::Apply, x.as_ref()), "communicator");
        }
        // Another column count on one rank.
        let x = DistMat::from_fn(cols, 2 + usize::from(rank == 1), |i, j| (i + j) as f64);
        same_error_everywhere(world, l.dist_product(Mode::Apply, x.as_ref()), "disagree");
    }
    // An output with other columns than the operand.
    let mut y = DistMat::zeros(l.row_layout(), 3);
    let mut buf = faer::dyn_stack::MemBuffer::new(l.dist_scratch(Mode::Apply, 3, Par::Seq));
    let got = l.dist_apply(Mode::Apply, y.as_mut(), good.as_ref(), Par::Seq, faer::dyn_stack::MemStack::new(&mut buf));
    same_error_everywhere(world, got, "columns");
    // A panic in a rank-local operator on the last rank.
    let rows = l.row_layout();
    let n = rows.local_len();
    let panicky = lazylinop::ops::from_matmat(
        n,
        n,
        move |_out: faer::MatMut<'_, f64>, _x: MatRef<'_, f64>| {
            if rank == size - 1 {
                panic!("deliberate panic in a rank-local operator");
            }
        },
        |_o: faer::MatMut<'_, f64>, _x: MatRef<'_, f64>| {},
    );
    let loc = DistLocal::new(rows, rows, panicky);
    same_error_everywhere(world, loc.dist_product(Mode::Apply, good.as_ref()), "deliberate panic");
    // Everything still works.
    check_dist(&l, a.to_dense().as_ref(), None, "after the errors");
    world.barrier();
    if rank == 0 {
        std::fs::remove_file(&path).unwrap();
    }
}

/// `sigkill` scenario (`mpirun -n 3`): rank 1 kills itself with SIGKILL in
/// the middle of a distributed product (inside a rank-local operator of a
/// composite, while the other ranks wait in MPI for it); the job must end
/// (scripts/test.sh checks that mpirun exits, with an error, within seconds).
pub(super) fn a_rank_killed_in_a_product(world: &SimpleCommunicator) {
    let rank = world.rank() as usize;
    let a = banded(300, true);
    let path = saved(world, "sigkill", &a, false);
    let l = MpiLop::<f64>::new(world, &path, None, false, None).unwrap();
    let rows = l.row_layout();
    let n = rows.local_len();
    let killer = lazylinop::ops::from_matmat(
        n,
        n,
        move |mut out: faer::MatMut<'_, f64>, x: MatRef<'_, f64>| {
            if rank == 1 {
                eprintln!("rank 1: killing itself with SIGKILL in the middle of a product");
                let pid = std::process::id().to_string();
                std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap();
                std::thread::sleep(Duration::from_secs(60));
            }
            out.copy_from(x);
        },
        |_o: faer::MatMut<'_, f64>, _x: MatRef<'_, f64>| {},
    );
    let loc = DistLocal::new(rows, rows, killer);
    let x = DistMat::from_fn(l.col_layout(), 4, |i, j| (i * j) as f64);
    eprintln!("rank {rank}: in the product");
    let got = (&l).dist_compose(&loc).dist_product(Mode::Apply, x.as_ref());
    eprintln!("rank {rank}: the product returned {:?} although rank 1 was killed", got.map(|_| ()));
}

/// The distributed tests, with their deadlines in seconds.
pub(super) const TESTS: &[(&str, super::Test, u64)] = &[
    ("distributed_sparse_products_match", distributed_sparse_products_match, 600),
    ("distributed_dense_products_match", distributed_dense_products_match, 600),
    ("halo_cases_and_stats", halo_cases_and_stats, 120),
    ("pieced_forward_products_match", pieced_forward_products_match, 120),
    ("distributed_algebra_matches", distributed_algebra_matches, 120),
    ("distributed_reductions_match", distributed_reductions_match, 120),
    ("distributed_bad_input_is_an_error_on_every_rank", distributed_bad_input_is_an_error_on_every_rank, 120),
];
