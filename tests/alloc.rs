//! No heap allocation inside a product once the scratch buffer exists,
//! counted by a global allocator. The counter sees every thread, so the
//! checks run one after the other in one test: the test harness's own
//! threads (starting other tests) would be counted otherwise.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, MatMut, MatRef, Par};
use lazylinop::prelude::*;
use lazylinop::random;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator; counting has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

thread_local! {
    /// Counting on this thread only (a const initializer: no allocation).
    static COUNTING_HERE: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.load(Ordering::Relaxed) || COUNTING_HERE.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Heap allocations made by `f` on this thread: for sequential products,
/// while other threads (rayon's, the harness's) do what they do.
fn allocations_here(f: impl FnOnce()) -> usize {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING_HERE.with(|c| c.set(true));
    f();
    COUNTING_HERE.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// Heap allocations made by `f`, on any thread.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// A composite of every kind: composition, sum, scaling, stacks, closure,
/// views, Kronecker product, identity, type-erased handles.
fn composite(a: &Mat<f64>, b: &Mat<f64>) -> impl BiLinOp<f64> + Send + Sync + 'static {
    let n = a.nrows();
    let shift = from_matmat(
        n,
        n,
        |mut out: MatMut<'_, f64>, x: MatRef<'_, f64>| {
            out.fill(0.0);
            let rows = x.nrows();
            out.subrows_mut(1, rows - 1).copy_from(x.subrows(0, rows - 1));
        },
        |mut out: MatMut<'_, f64>, y: MatRef<'_, f64>| {
            out.fill(0.0);
            let rows = y.nrows();
            out.subrows_mut(0, rows - 1).copy_from(y.subrows(1, rows - 1));
        },
    );
    // n×n: (A·Bᴴ + S)·0.5
    let top = a.clone().compose(Adjoint(b.clone())).plus(shift).scale(0.5);
    // n×n: [A B]·[I; Bᵀ]
    let bottom = hstack(vec![a.clone(), b.clone()])
        .compose(vstack(vec![DynOp::new(eye(n, n, 0)), DynOp::new(Transpose(b.clone()))]));
    // 2n×n: (I₂ ⊗ top)·[I; shifted I]
    let kron = Kron::new(eye(2, 2, 0), top).compose(vstack::<f64, _>(vec![eye(n, n, 0), eye(n, n, 1)]));
    vstack(vec![DynOp::new(kron), DynOp::new(bottom)]).minus(zeros(3 * n, n))
}

fn composite_products_do_not_allocate() {
    let n = 40;
    let a = random::mat::<f64>(n, n, 1);
    let b = random::mat::<f64>(n, n, 2);
    let l = composite(&a, &b);
    let k = 5;
    let x = random::mat::<f64>(n, k, 3);
    let y = random::mat::<f64>(3 * n, k, 4);
    let mut out = Mat::zeros(3 * n, k);
    let mut out_t = Mat::zeros(n, k);
    let mut buf = MemBuffer::new(l.apply_scratch(k, Par::Seq).or(l.transpose_apply_scratch(k, Par::Seq)));

    // faer's first matrix product in a process sets up its kernels (about 500
    // allocations, once): warm up, then count.
    l.apply(out.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
    let count = allocations_here(|| {
        l.apply(out.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
        l.conj_apply(out.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
        l.adjoint_apply(out_t.as_mut(), y.as_ref(), Par::Seq, MemStack::new(&mut buf));
        l.transpose_apply(out_t.as_mut(), y.as_ref(), Par::Seq, MemStack::new(&mut buf));
    });
    assert_eq!(count, 0, "heap allocations inside the products");

    // The counter does count: the allocating convenience is seen, and the products were right.
    let count = allocations(|| {
        let dense = l.to_dense();
        assert!((&dense * y.subrows(0, n) - l.matmat(y.subrows(0, n))).norm_max() < 1e-10);
    });
    assert!(count > 0);
    let want = l.to_dense().transpose() * &y;
    assert!((&out_t - &want).norm_max() < 1e-10 * want.norm_max());
}

fn thread_backend_products_do_not_allocate_per_product() {
    let n = 40;
    let a = random::mat::<f64>(n, n, 1);
    let b = random::mat::<f64>(n, n, 2);
    let k = 7;
    let x = random::mat::<f64>(n, k, 3);
    let y = random::mat::<f64>(3 * n, k, 4);
    for use_matvec in [false, true] {
        let l =
            lazylinop::parallel::pmatmat(composite(&a, &b), lazylinop::parallel::Method::Thread, Some(3), use_matvec)
                .unwrap()
                .with_min_parallel_work(0);
        let mut out = Mat::zeros(3 * n, k);
        let mut out_t = Mat::zeros(n, k);
        let mut buf = MemBuffer::new(l.apply_scratch(k, Par::Seq).or(l.transpose_apply_scratch(k, Par::Seq)));
        // Warm up: faer's kernels, and the pool's threads reaching their first job.
        for _ in 0..3 {
            l.apply(out.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
        }
        let rounds = 500;
        let count = allocations(|| {
            for _ in 0..rounds {
                l.apply(out.as_mut(), x.as_ref(), Par::Seq, MemStack::new(&mut buf));
                l.adjoint_apply(out_t.as_mut(), y.as_ref(), Par::Seq, MemStack::new(&mut buf));
            }
        });
        // Nothing per product: the only allocations are rayon's job queue
        // (crossbeam's Injector) taking a new block of 63 slots every 63 jobs
        // that enter the pool from outside it: far less than one in 32 products.
        let products = 2 * rounds;
        assert!(32 * count <= products, "use_matvec {use_matvec}: {count} allocations in {products} products");
    }
}

/// Sparse operators (CSR, CSC, both ways and prepared, column-major and row-major operands, in a composite without dense parts, whose
/// faer products allocate on several threads), on one thread and on two: no
/// allocation at all.
fn sparse_products_do_not_allocate() {
    use faer::sparse::{SparseColMat, Triplet};
    let n = 300;
    let triplets: Vec<_> = (0..n)
        .flat_map(|j| (0..20).map(move |t| Triplet::new(((j * 7 + t * 13) % n) as u32, j as u32, 1.0 + t as f64)))
        .collect();
    let csc = SparseColMat::<u32, f64>::try_new_from_triplets(n, n, &triplets).unwrap();
    let csr = csc.to_row_major().unwrap();
    let both = lazylinop::sparse::BothWays::new(&csc).unwrap();
    let l = Sparse::new(&csr)
        .compose(Sparse::new(&csc))
        .plus(Sparse::new(csc.as_ref()).scale(2.0))
        .plus(Sparse::new(&both))
        .plus(Sparse::new(lazylinop::sparse::Prepared::new(&csr, Par::rayon(2))));
    for (k, row_major) in [(1, false), (5, false), (40, false), (5, true), (40, true)] {
        // Row-major operands are read in place, column-major ones staged.
        let x = random::mat::<f64>(n, k, 3);
        let x = if row_major { x.transpose().to_owned() } else { x };
        let x = if row_major { x.transpose() } else { x.as_ref() };
        let mut out = Mat::zeros(n, k);
        for par in [Par::Seq, Par::rayon(2)] {
            let mut buf = MemBuffer::new(l.apply_scratch(k, par).or(l.transpose_apply_scratch(k, par)));
            let rounds = 50;
            let products = |buf: &mut MemBuffer, out: &mut Mat<f64>| {
                l.apply(out.as_mut(), x, par, MemStack::new(buf));
                l.conj_apply(out.as_mut(), x, par, MemStack::new(buf));
                l.transpose_apply(out.as_mut(), x, par, MemStack::new(buf));
                l.adjoint_apply(out.as_mut(), x, par, MemStack::new(buf));
            };
            // Warm up (faer's dense kernels set themselves up once per process;
            // rayon's pool is built at its first job).
            rayon::join(|| products(&mut buf, &mut out), || ());
            let run = || {
                for _ in 0..rounds {
                    products(&mut buf, &mut out);
                }
            };
            if par == Par::Seq {
                let count = allocations_here(run);
                assert_eq!(count, 0, "k = {k}: heap allocations inside sequential sparse products");
            } else {
                // The products run on a worker of rayon's pool, so that their
                // teams are jobs on its own deque: none enters the pool from
                // outside, where rayon's injector takes a new block of 63
                // slots every 63 jobs (an allocation amortised over jobs, not
                // ours, and as frequent as the kernel starts teams). The one
                // job that carries the loop into the pool may take one.
                let count = allocations(|| rayon::join(run, || ()).0);
                assert!(count <= 1, "k = {k}, {par:?}: {count} allocations in {} sparse products", 4 * 5 * rounds);
            }
        }
        let want = (csr.to_dense() * csc.to_dense() + csc.to_dense() * 3.0 + csr.to_dense()).transpose() * x;
        assert!((&out - &want).norm_max() < 1e-9 * want.norm_max());
    }
}

#[test]
fn products_do_not_allocate() {
    composite_products_do_not_allocate();
    thread_backend_products_do_not_allocate_per_product();
    sparse_products_do_not_allocate();
}
