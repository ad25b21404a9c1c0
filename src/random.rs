//! Reproducible random matrices of any faer scalar type, for tests, examples,
//! benchmarks and [`dottest`](crate::dottest()).

use faer::Mat;
use faer::traits::ComplexField;
use faer::traits::math_utils::{add, from_f64, mul, sqrt};

/// An `nrows × ncols` matrix with entries uniform in `[-1, 1)` (real and
/// imaginary parts independently), the same for the same `seed`.
///
/// # Examples
/// ```
/// use faer::c32;
/// let a = lazylinop::random::mat::<c32>(3, 2, 7);
/// assert_eq!(a, lazylinop::random::mat::<c32>(3, 2, 7));
/// assert!(a.norm_max() <= 1.5);
/// ```
pub fn mat<T: ComplexField>(nrows: usize, ncols: usize, seed: u64) -> Mat<T> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut uniform = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let i: T = sqrt(&from_f64(-1.0));
    // Column-major order, so that a matrix's leading columns do not depend on its width.
    let mut out = Mat::zeros(nrows, ncols);
    for j in 0..ncols {
        for r in 0..nrows {
            let re = from_f64::<T>(uniform());
            out[(r, j)] = if T::IS_REAL { re } else { add(&re, &mul(&i, &from_f64::<T>(uniform()))) };
        }
    }
    out
}
