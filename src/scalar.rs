//! The one scalar trait of the crate: faer's `f32`, `f64`, `c32` and `c64`.
//!
//! Every part of the crate that moves numbers outside a faer view — shared
//! memory between processes, MPI messages, `.npz` files — works on a
//! [`Scalar`]: plain data ([`bytemuck::Pod`]) whose [`Dtype`] names its layout.
//! The trait is sealed: exactly these four types implement it, whatever
//! features are enabled.

use core::fmt;

use faer::traits::ComplexField;

/// The layout of one [`Scalar`], named as numpy names it.
///
/// numpy counts a complex type's bits over both parts: `complex64` is two
/// `f32` ([`faer::c32`]), `complex128` two `f64` ([`faer::c64`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `float32`: [`f32`].
    Float32,
    /// `float64`: [`f64`].
    Float64,
    /// `complex64`: [`faer::c32`].
    Complex64,
    /// `complex128`: [`faer::c64`].
    Complex128,
}

impl Dtype {
    /// The four dtypes.
    pub const ALL: [Dtype; 4] = [Dtype::Float32, Dtype::Float64, Dtype::Complex64, Dtype::Complex128];

    /// The numpy name: `float32`, `float64`, `complex64` or `complex128`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Float64 => "float64",
            Dtype::Complex64 => "complex64",
            Dtype::Complex128 => "complex128",
        }
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            Dtype::Float32 => 4,
            Dtype::Float64 | Dtype::Complex64 => 8,
            Dtype::Complex128 => 16,
        }
    }

    /// Whether the dtype is complex.
    pub fn is_complex(self) -> bool {
        matches!(self, Dtype::Complex64 | Dtype::Complex128)
    }

    /// Size in bytes of one real component (the unit of byte swapping).
    pub fn component_size(self) -> usize {
        if self.is_complex() { self.size() / 2 } else { self.size() }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    // With MPI, every scalar is also an MPI datatype. The trait is private
    // and sealed to the same four types in every build, so enabling the
    // feature does not change which types are `Scalar`.
    #[cfg(not(feature = "mpi"))]
    pub trait Sealed {}
    #[cfg(feature = "mpi")]
    pub trait Sealed: mpi::datatype::Equivalence {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for faer::c32 {}
    impl Sealed for faer::c64 {}
}

/// faer's `f32`, `f64`, [`faer::c32`] and [`faer::c64`]: the scalar types
/// that the parallel backends, `.npz` files and MPI carry. Sealed.
pub trait Scalar: ComplexField + bytemuck::Pod + sealed::Sealed {
    /// This type's layout.
    const DTYPE: Dtype;

    /// A real value of this type (`f32` or `f64`) as an `f64`, exactly.
    fn real_to_f64(r: Self::Real) -> f64;

    /// This value as a `c64` (exactly; imaginary part 0 for a real type).
    fn to_c64(self) -> faer::c64;

    /// `z` as this type (rounded for `f32` and `c32`; only the real part
    /// for a real type).
    fn from_c64(z: faer::c64) -> Self;
}

impl Scalar for f32 {
    const DTYPE: Dtype = Dtype::Float32;
    fn real_to_f64(r: f32) -> f64 {
        f64::from(r)
    }
    fn to_c64(self) -> faer::c64 {
        faer::c64::new(f64::from(self), 0.0)
    }
    fn from_c64(z: faer::c64) -> Self {
        z.re as f32
    }
}
impl Scalar for f64 {
    const DTYPE: Dtype = Dtype::Float64;
    fn real_to_f64(r: f64) -> f64 {
        r
    }
    fn to_c64(self) -> faer::c64 {
        faer::c64::new(self, 0.0)
    }
    fn from_c64(z: faer::c64) -> Self {
        z.re
    }
}
impl Scalar for faer::c32 {
    const DTYPE: Dtype = Dtype::Complex64;
    fn real_to_f64(r: f32) -> f64 {
        f64::from(r)
    }
    fn to_c64(self) -> faer::c64 {
        faer::c64::new(f64::from(self.re), f64::from(self.im))
    }
    fn from_c64(z: faer::c64) -> Self {
        faer::c32::new(z.re as f32, z.im as f32)
    }
}
impl Scalar for faer::c64 {
    const DTYPE: Dtype = Dtype::Complex128;
    fn real_to_f64(r: f64) -> f64 {
        r
    }
    fn to_c64(self) -> faer::c64 {
        self
    }
    fn from_c64(z: faer::c64) -> Self {
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_types() {
        fn size<T: Scalar>() -> usize {
            core::mem::size_of::<T>()
        }
        assert_eq!(size::<f32>(), Dtype::Float32.size());
        assert_eq!(size::<f64>(), Dtype::Float64.size());
        assert_eq!(size::<faer::c32>(), Dtype::Complex64.size());
        assert_eq!(size::<faer::c64>(), Dtype::Complex128.size());
    }
}
