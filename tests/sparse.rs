//! Sparse operators and their kernels: every product mode against the dense
//! reference and against faer's own sparse product, for the four scalar
//! types, CSR and CSC, two index types, unsorted and repeated indices,
//! empty rows and columns, no entries, non-compact faer storage, strided
//! and transposed views, threads; checked raw views; both formats held
//! at once (`BothWays`); the algebra and
//! pmatmat on threads and processes.

mod common;

use common::{assert_close, check_op, check_parallel, product, reference};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::sparse::{
    SparseColMat, SparseColMatRef, SparseRowMat, SymbolicSparseColMat, SymbolicSparseColMatRef, SymbolicSparseRowMat,
};
use faer::{Index, Mat, MatMut, MatRef, Par};
use lazylinop::parallel::{Method, pmatmat};
use lazylinop::prelude::*;
use lazylinop::sparse::{BothWays, Format, Prepared, SparseError, SparseView, matmul, matmul_scratch};
use lazylinop::{Scalar, random};

/// Compressed arrays with `outer` offsets over `inner`: some outers empty,
/// indices unsorted, some repeated. Returns `(ptr, idx, val)`.
fn raw<T: Scalar>(outer: usize, inner: usize, per: usize, seed: u64) -> (Vec<usize>, Vec<usize>, Vec<T>) {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move |bound: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % bound.max(1)
    };
    let (mut ptr, mut idx) = (vec![0], vec![]);
    for j in 0..outer {
        // Every third outer is empty; the others have up to 2·per entries.
        let count = if j % 3 == 1 || inner == 0 { 0 } else { next(2 * per + 1) };
        for t in 0..count {
            // Descending runs and a repeat now and then.
            let i = if t > 0 && next(5) == 0 { idx[idx.len() - 1] } else { inner - 1 - next(inner) };
            idx.push(i);
        }
        ptr.push(idx.len());
    }
    let val = random::mat::<T>(idx.len(), 1, seed).col(0).iter().copied().collect();
    (ptr, idx, val)
}

/// The dense matrix of compressed arrays (repeats summed).
fn densify<T: Scalar>(format: Format, nrows: usize, ncols: usize, ptr: &[usize], idx: &[usize], val: &[T]) -> Mat<T> {
    let mut d = Mat::<T>::zeros(nrows, ncols);
    for j in 0..ptr.len() - 1 {
        for p in ptr[j]..ptr[j + 1] {
            let (r, c) = if format == Format::Csr { (j, idx[p]) } else { (idx[p], j) };
            d[(r, c)] += val[p];
        }
    }
    d
}

fn cast<I: Index>(v: &[usize]) -> Vec<I> {
    v.iter().map(|&i| I::truncate(i)).collect()
}

/// A CSR and a CSC faer matrix, with their dense forms.
type Fixture<I, T> = (SparseRowMat<I, T>, Mat<T>, SparseColMat<I, T>, Mat<T>);

/// A CSR and a CSC faer matrix of shape `m × n`, with their dense forms.
fn matrices<I: Index, T: Scalar>(m: usize, n: usize, per: usize, seed: u64) -> Fixture<I, T> {
    let (ptr, idx, val) = raw::<T>(m, n, per, seed);
    let csr_dense = densify(Format::Csr, m, n, &ptr, &idx, &val);
    let csr = SparseRowMat::new(SymbolicSparseRowMat::new_unsorted_checked(m, n, cast(&ptr), None, cast(&idx)), val);
    let (ptr, idx, val) = raw::<T>(n, m, per, seed + 1);
    let csc_dense = densify(Format::Csc, m, n, &ptr, &idx, &val);
    let csc = SparseColMat::new(SymbolicSparseColMat::new_unsorted_checked(m, n, cast(&ptr), None, cast(&idx)), val);
    (csr, csr_dense, csc, csc_dense)
}

/// A sparse operator on a view.
type ViewOp<'a, T> = Sparse<SparseView<'a, u32, T>>;

const SHAPES: [(usize, usize); 8] = [(0, 0), (0, 4), (4, 0), (1, 1), (7, 5), (5, 9), (33, 70), (130, 41)];
const WIDTHS: [usize; 12] = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 40];
fn pars() -> [Par; 3] {
    [Par::Seq, Par::rayon(2), Par::rayon(3)]
}

/// `op`'s four products, for every width and `Par`, against `dense` and
/// against `faer_op` (faer's own sparse product).
fn check_against<T: Scalar, L: BiLinOp<T>, F: BiLinOp<T>>(op: &L, faer_op: &F, dense: MatRef<'_, T>, what: &str) {
    for (seed, k) in WIDTHS.into_iter().enumerate() {
        for mode in Mode::ALL {
            let x = random::mat::<T>(mode.dims_of(op).1, k, seed as u64);
            let want = reference(dense, mode, x.as_ref());
            let theirs = product(faer_op, mode, x.as_ref(), Par::Seq);
            assert_close(theirs.as_ref(), want.as_ref(), &format!("{what}: faer itself, {mode:?}, k = {k}"));
            for par in pars() {
                let got = product(op, mode, x.as_ref(), par);
                assert_close(got.as_ref(), want.as_ref(), &format!("{what}, {mode:?}, k = {k}, {par:?}"));
            }
        }
    }
}

fn every_mode_matches<I: Index, T: Scalar>() {
    for (s, (m, n)) in SHAPES.into_iter().enumerate() {
        let (csr, csr_dense, csc, csc_dense) = matrices::<I, T>(m, n, 4, s as u64);
        let what = |f: &str| format!("{f} {m}×{n} [{}]", std::any::type_name::<I>());
        check_against(&Sparse::new(&csr), &csr, csr_dense.as_ref(), &what("CSR"));
        check_against(&Sparse::new(&csc), &csc, csc_dense.as_ref(), &what("CSC"));
        let (csr_both, csc_both) = (BothWays::new(&csr).unwrap(), BothWays::new(csc.as_ref()).unwrap());
        assert_eq!((csr_both.copy().format(), csc_both.copy().format()), (Format::Csc, Format::Csr));
        check_against(&Sparse::new(&csr_both), &csr, csr_dense.as_ref(), &what("CSR both ways"));
        check_against(&Sparse::new(csc_both), &csc, csc_dense.as_ref(), &what("CSC both ways"));
        check_op(&Sparse::new(csr.as_ref()), csr_dense.as_ref(), &what("CSR ref"));
        check_op(&Sparse::new(csc.as_ref()), csc_dense.as_ref(), &what("CSC ref"));
    }
}

#[test]
fn every_mode_matches_dense_and_faer() {
    fn run<T: Scalar>() {
        every_mode_matches::<u32, T>();
        every_mode_matches::<u64, T>();
        every_mode_matches::<usize, T>();
    }
    for_all_types!(run);
}

/// Large enough that `Par::rayon` really splits the work (odd parts too),
/// and wide enough for panels of four vectors on each of two threads.
#[test]
fn threaded_products_match() {
    fn check<T: Scalar, L: BiLinOp<T>>(op: &L, dense: &Mat<T>, what: &str) {
        for k in [1, 2, 5, 24, 100] {
            for mode in Mode::ALL {
                let x = random::mat::<T>(mode.dims_of(op).1, k, k as u64);
                let want = reference(dense.as_ref(), mode, x.as_ref());
                for par in [Par::rayon(2), Par::rayon(3), Par::rayon(4)] {
                    let got = product(op, mode, x.as_ref(), par);
                    assert_close(got.as_ref(), want.as_ref(), &format!("{what}, {mode:?}, k = {k}, {par:?}"));
                }
            }
        }
    }
    fn run<T: Scalar>() {
        let (m, n) = (2600, 2100);
        let (csr, csr_dense, csc, csc_dense) = matrices::<u32, T>(m, n, 80, 7);
        for (op, dense, what) in [
            (&Sparse::new(csr.as_ref().into()) as &ViewOp<'_, T>, &csr_dense, "CSR"),
            (&Sparse::new(csc.as_ref().into()), &csc_dense, "CSC"),
        ] {
            check(op, dense, what);
            check(&Sparse::new(BothWays::new(*op.inner()).unwrap()), dense, &format!("{what} both ways"));
        }
    }
    for_all_types!(run);
}

/// Every layout of operand and output the kernels treat apart — column-major
/// (staged), row-major (read and written in place), row-major with a row
/// stride wider than the columns, a column-major output beside a row-major
/// operand and the other way round — for widths from 0 to 70 (whole
/// vectors, partial panels, tails narrower than a vector), every mode, on
/// 1, 2 and 3 threads, on a matrix large enough that threads split even one
/// column; plain, prepared, and prepared both ways.
#[test]
fn layouts_widths_and_teams() {
    /// `rows × k` in `layout` (0: column-major, 1: row-major, 2: row-major
    /// with 3 spare columns a row), in `store`.
    fn place<T: Scalar>(store: &mut Vec<T>, m: MatRef<'_, T>, layout: usize) -> (usize, usize) {
        let (rows, k) = (m.nrows(), m.ncols());
        let stride = if layout == 2 { k + 3 } else { k };
        *store = vec![T::from_f64_impl(7.25); rows.max(1) * stride.max(1) + rows + k];
        for i in 0..rows {
            for j in 0..k {
                let at = if layout == 0 { i + j * rows } else { i * stride + j };
                store[at] = m[(i, j)];
            }
        }
        (rows, stride)
    }
    fn view<T>(store: &[T], rows: usize, k: usize, stride: usize, layout: usize) -> MatRef<'_, T> {
        match layout {
            0 => MatRef::from_column_major_slice(&store[..rows * k], rows, k),
            _ => MatRef::from_row_major_slice_with_stride(&store[..(rows * stride).max(rows * k)], rows, k, stride),
        }
    }
    fn run<T: Scalar>() {
        let (m, n) = (500, 400);
        for format in [Format::Csr, Format::Csc] {
            let (outer, inner) = if format == Format::Csr { (m, n) } else { (n, m) };
            let (ptr, idx, val) = raw::<T>(outer, inner, 200, 21);
            let dense = densify(format, m, n, &ptr, &idx, &val);
            let a = match format {
                Format::Csr => SparseView::csr(m, n, &ptr, &idx, &val).unwrap(),
                Format::Csc => SparseView::csc(m, n, &ptr, &idx, &val).unwrap(),
            };
            let plain = Sparse::new(a);
            let prepared = Sparse::new(Prepared::new(a, Par::rayon(3)));
            let both = Sparse::new(Prepared::new(BothWays::new(a).unwrap(), Par::rayon(2)));
            let ops: [(&dyn BiLinOp<T>, &str); 3] = [(&plain, "plain"), (&prepared, "prepared"), (&both, "both ways")];
            for k in [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 70] {
                for mode in Mode::ALL {
                    let (rows, cols) = mode.dims((m, n));
                    let x = random::mat::<T>(cols, k, k as u64);
                    let want = reference(dense.as_ref(), mode, x.as_ref());
                    for (op, name) in ops {
                        for par in pars() {
                            // The prepared operators on one layout pair, the plain one on all.
                            let pairs: &[(usize, usize)] =
                                if name == "plain" { &[(0, 0), (1, 1), (2, 0), (0, 1), (2, 2)] } else { &[(1, 1)] };
                            for &(lx, ly) in pairs {
                                let (mut xs, mut ys) = (Vec::new(), Vec::new());
                                let (_, sx) = place(&mut xs, x.as_ref(), lx);
                                let fill = Mat::<T>::from_fn(rows, k, |_, _| T::from_f64_impl(f64::NAN));
                                let (_, sy) = place(&mut ys, fill.as_ref(), ly);
                                let outside: Vec<T> = ys.clone();
                                let xv = view(&xs, cols, k, sx, lx);
                                let mut buf = MemBuffer::new(mode.scratch(op, k, par));
                                {
                                    let yv = match ly {
                                        0 => MatMut::from_column_major_slice_mut(&mut ys[..rows * k], rows, k),
                                        _ => {
                                            // (faer 0.24.4's `from_row_major_slice_with_stride_mut`
                                            // makes a column-major view: its transpose's twin instead.)
                                            let len = (rows * sy).max(rows * k);
                                            MatMut::from_column_major_slice_with_stride_mut(&mut ys[..len], k, rows, sy)
                                                .transpose_mut()
                                        }
                                    };
                                    mode.apply(op, yv, xv, par, MemStack::new(&mut buf));
                                }
                                let got = view(&ys, rows, k, sy, ly).to_owned();
                                let what = format!("{format:?} {name}, layouts {lx}→{ly}, {mode:?}, k = {k}, {par:?}");
                                assert_close(got.as_ref(), want.as_ref(), &what);
                                // Nothing outside the output's elements was written.
                                for (p, (a, b)) in ys.iter().zip(&outside).enumerate() {
                                    let inside = match ly {
                                        0 => p < rows * k,
                                        _ => p < rows * sy && p % sy.max(1) < k,
                                    };
                                    assert!(inside || a == b, "{what}: element {p} outside the output changed");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for_all_types!(run);
}

/// A storage whose view grows after the prepared operator computed its
/// cuts: the stale cuts (they end before the new outer dimension) are not
/// used, and every row is still computed (before, products on threads used
/// them and left the new rows unwritten or panicked).
#[test]
fn prepared_cuts_of_a_view_that_changed_are_not_used() {
    use std::sync::atomic::{AtomicBool, Ordering};
    #[derive(Debug)]
    struct Growing {
        grown: AtomicBool,
        small: (Vec<usize>, Vec<usize>, Vec<f64>),
        large: (Vec<usize>, Vec<usize>, Vec<f64>),
    }
    impl lazylinop::sparse::SparseStorage<f64> for Growing {
        type Index = usize;
        fn view(&self) -> SparseView<'_, usize, f64> {
            let (ptr, idx, val) = if self.grown.load(Ordering::Relaxed) { &self.large } else { &self.small };
            SparseView::csr(ptr.len() - 1, 300, ptr, idx, val).unwrap()
        }
    }
    let (small, large) = (raw::<f64>(100, 300, 200, 1), raw::<f64>(900, 300, 200, 2));
    let dense = densify(Format::Csr, 900, 300, &large.0, &large.1, &large.2);
    let storage = Growing { grown: AtomicBool::new(false), small, large };
    let op = Sparse::new(Prepared::new(&storage, Par::rayon(2)));
    storage.grown.store(true, Ordering::Relaxed);
    for k in [1, 3, 16] {
        let x = random::mat::<f64>(300, k, 3);
        for par in pars() {
            let got = product(&op, Mode::Apply, x.as_ref(), par);
            assert_close(got.as_ref(), (&dense * &x).as_ref(), &format!("k = {k}, {par:?}"));
        }
    }
}

#[test]
fn no_entries() {
    fn run<T: Scalar>() {
        let (m, n) = (6, 4);
        let ptr = vec![0u32; m + 1];
        let a = SparseView::<u32, T>::csr(m, n, &ptr, &[], &[]).unwrap();
        check_op(&Sparse::new(a), Mat::<T>::zeros(m, n).as_ref(), "no entries");
    }
    for_all_types!(run);
}

/// faer's non-compact storage: column `j` is `col_ptr[j]..col_ptr[j] + col_nnz[j]`,
/// with unused entries (poisoned with NaN) between columns.
#[test]
fn non_compact_faer_storage() {
    fn run<T: Scalar>() {
        let (m, n) = (9, 5);
        let col_ptr = [0usize, 4, 4, 9, 12, 16];
        let col_nnz = [2usize, 0, 3, 3, 1];
        let row_idx = [8usize, 1, 99, 99, 0, 0, 7, 99, 99, 3, 4, 2, 5, 99, 99, 99];
        let nan = faer::traits::math_utils::nan::<T>();
        let x = random::mat::<T>(16, 1, 3);
        let val: Vec<T> = (0..16).map(|p| if row_idx[p] == 99 { nan } else { x[(p, 0)] }).collect();
        let row_idx: Vec<usize> = row_idx.iter().map(|&i| i.min(m - 1)).collect();
        let sym = SymbolicSparseColMatRef::new_unsorted_checked(m, n, &col_ptr, Some(&col_nnz), &row_idx);
        let a = SparseColMatRef::new(sym, &val);
        let dense = a.to_dense();
        let nan_inside = (0..n).any(|j| (0..m).any(|i| faer::traits::math_utils::is_nan(&dense[(i, j)])));
        assert!(!nan_inside, "the fixture's unused entries are outside the matrix");
        check_against(&Sparse::new(a), &a, dense.as_ref(), "non-compact CSC");
        check_against(&Sparse::new(a.transpose()), &a.transpose(), dense.transpose(), "non-compact CSR");
        let both = BothWays::new(a).unwrap();
        check_against(&Sparse::new(&both), &a, dense.as_ref(), "non-compact CSC both ways");
        check_against(
            &Sparse::new(BothWays::new(a.transpose()).unwrap()),
            &a.transpose(),
            dense.transpose(),
            "non-compact CSR both ways",
        );
    }
    for_all_types!(run);
}

/// A column-major operand with padding, a transposed (row-major) operand,
/// a reversed one (negative row stride), and outputs that are blocks of
/// larger matrices (column-major, row-major, rows reversed), whose other
/// entries stay untouched.
#[test]
fn strided_and_transposed_views() {
    fn run<T: Scalar>() {
        let (m, n) = (37, 29);
        let (csr, csr_dense, csc, csc_dense) = matrices::<u32, T>(m, n, 5, 11);
        let (csr, csc) = (Sparse::new(csr.as_ref().into()), Sparse::new(csc.as_ref().into()));
        let ops: [(&ViewOp<'_, T>, &Mat<T>); 2] = [(&csr, &csr_dense), (&csc, &csc_dense)];
        for (op, dense) in ops {
            for k in [1, 3, 17] {
                for mode in Mode::ALL {
                    let (rows, cols) = mode.dims_of(op);
                    let big = random::mat::<T>(cols + 5, k + 3, 1);
                    let row_major = random::mat::<T>(k, cols, 2);
                    let operands = [
                        big.as_ref().submatrix(2, 1, cols, k),
                        row_major.transpose(),
                        big.as_ref().subrows(0, cols).subcols(0, k).reverse_rows(),
                    ];
                    for x in operands {
                        let want = reference(dense.as_ref(), mode, x);
                        for par in [Par::Seq, Par::rayon(2)] {
                            for layout in 0..3 {
                                let fill = random::mat::<T>(rows + 4, k + 2, 3);
                                let mut big_out = if layout == 1 { fill.transpose().to_owned() } else { fill.clone() };
                                {
                                    let view = match layout {
                                        0 => big_out.as_mut().submatrix_mut(3, 1, rows, k),
                                        1 => big_out.as_mut().transpose_mut().submatrix_mut(3, 1, rows, k),
                                        _ => big_out.as_mut().submatrix_mut(3, 1, rows, k).reverse_rows_mut(),
                                    };
                                    let mut buf = MemBuffer::new(mode.scratch(op, k, par));
                                    mode.apply(op, view, x, par, MemStack::new(&mut buf));
                                }
                                let out = if layout == 1 { big_out.transpose().to_owned() } else { big_out };
                                let mut got = out.as_ref().submatrix(3, 1, rows, k).to_owned();
                                if layout == 2 {
                                    got = got.as_ref().reverse_rows().to_owned();
                                }
                                let what = format!("strided, layout {layout}, {mode:?}, k = {k}, {par:?}");
                                assert_close(got.as_ref(), want.as_ref(), &what);
                                for c in 0..out.ncols() {
                                    for r in 0..out.nrows() {
                                        let inside = (3..3 + rows).contains(&r) && (1..1 + k).contains(&c);
                                        assert!(
                                            inside || out[(r, c)] == fill[(r, c)],
                                            "{what}: entry ({r}, {c}) outside the output changed"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for_all_types!(run);
}

#[test]
fn raw_views_are_checked() {
    let v = [1.0f64; 4];
    let ok = SparseView::<u32, f64>::csr(2, 3, &[0, 1, 4], &[2, 0, 1, 2], &v).unwrap();
    assert_eq!((ok.nrows(), ok.ncols(), ok.format(), ok.nnz()), (2, 3, Format::Csr, 4));
    assert_eq!(
        SparseView::<u32, f64>::csr(3, 3, &[0, 1, 4], &[2, 0, 1, 2], &v).unwrap_err(),
        SparseError::IndptrLength { expected: 4, found: 3 }
    );
    assert_eq!(
        SparseView::<u32, f64>::csr(2, 3, &[0, 3, 2], &[2, 0, 1, 2], &v).unwrap_err(),
        SparseError::IndptrDecreasing { at: 1 }
    );
    assert_eq!(
        SparseView::<u32, f64>::csr(2, 3, &[0, 1, 5], &[2, 0, 1, 2], &v).unwrap_err(),
        SparseError::IndptrPastEnd { end: 5, len: 4 }
    );
    assert_eq!(
        SparseView::<u32, f64>::csr(2, 3, &[0, 1, 4], &[2, 0, 1], &v).unwrap_err(),
        SparseError::LengthMismatch { indices: 3, values: 4 }
    );
    assert_eq!(
        SparseView::<u32, f64>::csr(2, 3, &[0, 1, 4], &[2, 0, 3, 2], &v).unwrap_err(),
        SparseError::IndexOutOfBounds { position: 2, index: 3, bound: 3 }
    );
    // CSC: indices are rows.
    assert_eq!(
        SparseView::<u32, f64>::csc(2, 3, &[0, 1, 2, 4], &[1, 0, 2, 1], &v).unwrap_err(),
        SparseError::IndexOutOfBounds { position: 2, index: 2, bound: 2 }
    );
    // Indices outside the offsets' range are not part of the matrix and not checked.
    let share = SparseView::<u32, f64>::csr(1, 3, &[1, 3], &[9, 0, 1, 9], &v).unwrap();
    assert_eq!(share.nnz(), 2);
    assert!(SparseError::IndptrDecreasing { at: 1 }.to_string().contains("decreases"));
}

/// A block of rows of a CSR matrix, viewed with the whole matrix's indices
/// and values (offsets not from 0), equals those rows.
#[test]
fn a_row_block_of_raw_slices() {
    fn run<T: Scalar>() {
        let (m, n) = (40, 23);
        let (ptr, idx, val) = raw::<T>(m, n, 6, 5);
        let dense = densify(Format::Csr, m, n, &ptr, &idx, &val);
        let (ptr, idx): (Vec<u64>, Vec<u64>) = (cast(&ptr), cast(&idx));
        let (r0, r1) = (11, 30);
        let block = SparseView::csr(r1 - r0, n, &ptr[r0..=r1], &idx, &val).unwrap();
        check_op(&Sparse::new(block), dense.as_ref().subrows(r0, r1 - r0), "row block");
        // The kernel entry itself, with its scratch.
        let x = random::mat::<T>(n, 5, 1);
        let mut out = Mat::<T>::zeros(r1 - r0, 5);
        let mut buf = MemBuffer::new(matmul_scratch(block, Mode::Apply, 5, Par::rayon(2)));
        matmul(out.as_mut(), block, Mode::Apply, x.as_ref(), Par::rayon(2), MemStack::new(&mut buf));
        assert_close(out.as_ref(), (dense.as_ref().subrows(r0, r1 - r0) * &x).as_ref(), "matmul on a row block");
    }
    for_all_types!(run);
}

#[test]
#[should_panic(expected = "the operator is 3×2")]
fn a_shape_mismatch_panics_naming_the_shapes() {
    let v = [1.0f64, 2.0];
    let a = SparseView::<u32, f64>::csr(3, 2, &[0, 1, 1, 2], &[0, 1], &v).unwrap();
    let x = Mat::<f64>::zeros(3, 1);
    let _ = Sparse::new(a).matmat(&x);
}

/// Sparse operators inside the algebra and under pmatmat (threads, and
/// processes where they exist).
#[test]
fn algebra_and_pmatmat() {
    fn run<T: Scalar>() {
        let n = 45;
        let (csr, csr_dense, csc, csc_dense) = matrices::<u32, T>(n, n, 5, 3);
        let d = random::mat::<T>(n, n, 9);
        let l = Sparse::new(&csr).compose(Sparse::new(&csc)).plus(&d);
        let dense = &csr_dense * &csc_dense + &d;
        check_op(&l, dense.as_ref(), "S₁·S₂ + D");
        let (b1, b2) = (BothWays::new(&csr).unwrap(), BothWays::new(&csc).unwrap());
        let both = Sparse::new(&b1).compose(Sparse::new(&b2)).plus(&d);
        fn on_threads<T: Scalar, L: BiLinOp<T>>(l: &L, dense: &Mat<T>, what: &str) {
            for w in [1, 2, 3] {
                check_parallel(pmatmat(l, Method::Thread, Some(w), false).unwrap(), dense.as_ref(), what);
                check_parallel(pmatmat(l, Method::Thread, Some(w), true).unwrap(), dense.as_ref(), what);
            }
        }
        on_threads(&l, &dense, "thread");
        on_threads(&both, &dense, "thread, both ways");
        #[cfg(unix)]
        with_deadline(30, {
            let (l, dense) =
                (DynOp::new(Sparse::new(csr.clone()).compose(Sparse::new(csc.clone())).plus(d.clone())), dense.clone());
            move || {
                for once in [false, true] {
                    let p = pmatmat(
                        l.clone(),
                        if once { Method::process_pool() } else { Method::process() },
                        Some(2),
                        false,
                    )
                    .unwrap();
                    check_parallel(p, dense.as_ref(), "process");
                }
            }
        });
    }
    for_all_types!(run);
}

/// `BothWays` of raw views whose offsets do not start at 0 (unsorted and
/// repeated indices, both formats), and of its copy alone.
#[test]
fn both_ways_of_offsets_not_from_zero() {
    fn run<T: Scalar>() {
        let ptr: Vec<u32> = vec![0, 2, 5, 5, 8, 9];
        let idx: Vec<u32> = vec![3, 0, 2, 2, 1, 3, 0, 3, 1];
        let val: Vec<T> = random::mat::<T>(9, 1, 4).col(0).iter().copied().collect();
        for format in [Format::Csr, Format::Csc] {
            let v = match format {
                Format::Csr => SparseView::csr(4, 4, &ptr[1..=5], &idx, &val).unwrap(),
                Format::Csc => SparseView::csc(4, 4, &ptr[1..=5], &idx, &val).unwrap(),
            };
            let dense = densify(format, 4, 4, &[0, 3, 3, 6, 7], &[2, 2, 1, 3, 0, 3, 1], &val[2..]);
            let both = BothWays::new(v).unwrap();
            let copy = both.copy();
            assert_eq!((copy.format() != format, copy.nnz(), copy.nrows(), copy.ncols()), (true, 7, 4, 4));
            check_op(&Sparse::new(&both), dense.as_ref(), "offsets not from 0, both ways");
            check_op(&Sparse::new(copy), dense.as_ref(), "offsets not from 0, the copy alone");
        }
    }
    for_all_types!(run);
}

/// An inner dimension whose offsets cannot be allocated is a typed error.
#[test]
fn both_ways_of_a_huge_inner_dimension_is_out_of_memory() {
    for inner in [usize::MAX, usize::MAX - 1, 1 << 50] {
        let v = SparseView::<u64, f64>::csr(1, inner, &[0, 0], &[], &[]).unwrap();
        assert_eq!(BothWays::new(v).err(), Some(faer::sparse::FaerError::OutOfMemory), "inner = {inner}");
    }
}

/// A memory-mapped part of a scipy file, held both ways.
#[test]
fn both_ways_of_a_mapped_npz_part() {
    use faer::sparse::Triplet;
    use lazylinop::npz::{SparseNpz, save_sparse};
    let dir = std::env::temp_dir().join(format!("lazylinop-both-ways-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.npz");
    let (m, n) = (50usize, 31usize);
    let triplets: Vec<_> = (0..400usize)
        .map(|t| Triplet::new(((t * 13) % m) as u32, ((t * 29 + 7) % n) as u32, t as f64 - 100.0))
        .collect();
    let a = SparseRowMat::<u32, f64>::try_new_from_triplets(m, n, &triplets).unwrap();
    save_sparse(&path, a.as_ref()).unwrap();
    let part = SparseNpz::open(&path).unwrap().part::<f64, u32>(10..40).unwrap();
    assert!(part.is_mapped());
    let both = BothWays::new(part.view()).unwrap();
    check_op(&Sparse::new(&both), a.to_dense().as_ref().subrows(10, 30), "mapped part both ways");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `f` on a thread; panics if it has not finished after `secs` seconds
/// (a hang becomes a failure) or if it panicked.
fn with_deadline(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(()) => handle.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(handle.join().unwrap_err()),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("did not finish within {secs} s"),
    }
}
