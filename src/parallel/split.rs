//! THE column split, shared by threads, processes and MPI ranks: `k`
//! columns in `p` contiguous blocks, the first `k mod p` one column larger
//! (as Python lazylinop splits them).

use core::ops::Range;

/// Block `i` of `0..k` split into `p` contiguous blocks; the first `k % p`
/// blocks have one more column. Blocks past the column count are empty.
///
/// # Panics
/// If `p == 0` or `i >= p`.
///
/// # Examples
/// ```
/// use lazylinop::parallel::split::block;
/// let blocks: Vec<_> = (0..3).map(|i| block(7, 3, i)).collect();
/// assert_eq!(blocks, [0..3, 3..5, 5..7]);
/// assert_eq!(block(2, 3, 2), 2..2); // fewer columns than workers
/// ```
pub fn block(k: usize, p: usize, i: usize) -> Range<usize> {
    assert!(i < p, "lazylinop: block {i} of {p} blocks");
    let (start, len) = faer::utils::thread::par_split_indices(k, i, p);
    start..start + len
}

/// The number of non-empty blocks when `k` columns go to `p` workers.
pub fn nonempty(k: usize, p: usize) -> usize {
    k.min(p)
}

/// The largest block's width.
pub fn widest(k: usize, p: usize) -> usize {
    k.div_ceil(p)
}
