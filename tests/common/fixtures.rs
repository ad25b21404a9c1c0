//! The numpy fixtures in `tests/data/npz` (`scripts/make_npz_fixtures.py`):
//! with `s` an array's seed (in `manifest.json`), entry (i, j) has real part
//! `s * 100000 + i * 1000 + j + 0.5` and, for complex dtypes, imaginary part
//! `-(i + 2 * j) - s`.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use faer::{c32, c64};
use lazylinop::Scalar;

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/npz")
}

pub fn fixture(name: &str) -> PathBuf {
    data_dir().join(name)
}

/// The scalar types, with the fixtures' formula.
pub trait Formula: Scalar + PartialEq + Debug {
    fn value(seed: u64, i: usize, j: usize) -> Self;
}

pub fn re(seed: u64, i: usize, j: usize) -> f64 {
    (seed * 100_000 + i as u64 * 1000 + j as u64) as f64 + 0.5
}

pub fn im(seed: u64, i: usize, j: usize) -> f64 {
    -((i + 2 * j) as f64) - seed as f64
}

impl Formula for f32 {
    fn value(seed: u64, i: usize, j: usize) -> Self {
        re(seed, i, j) as f32
    }
}
impl Formula for f64 {
    fn value(seed: u64, i: usize, j: usize) -> Self {
        re(seed, i, j)
    }
}
impl Formula for c32 {
    fn value(seed: u64, i: usize, j: usize) -> Self {
        c32::new(re(seed, i, j) as f32, im(seed, i, j) as f32)
    }
}
impl Formula for c64 {
    fn value(seed: u64, i: usize, j: usize) -> Self {
        c64::new(re(seed, i, j), im(seed, i, j))
    }
}
