//! The errors of [`npz`](super): [`NpzError`] (path, member, reason) and its [`NpzErrorKind`].

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::Dtype;

/// The dtypes a member can hold, as listed in error messages.
const ACCEPTED: &str = "float32, float64, complex64, complex128";

/// Why opening, reading or checking a member failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum NpzErrorKind {
    /// The file is missing or unreadable, or the path is a directory or not a regular file.
    Io(io::Error),
    /// The file is not a zip archive, or its zip structures are inconsistent (the reason).
    NotZip(String),
    /// The requested member is not in the archive.
    MemberMissing {
        /// The archive's members, without their `.npy` suffix.
        available: Vec<String>,
    },
    /// The archive holds no array (no `.npy` member).
    Empty,
    /// The archive or the member is shorter than its headers say: cut short, or a deflated
    /// member declaring more bytes than its compressed data can hold or inflates to.
    Truncated,
    /// The `.npy` header is not one numpy writes and accepts (the reason): no magic, a length
    /// above numpy's limit of 10000 bytes, not a dict of exactly `descr`, `fortran_order` and
    /// `shape`, a shape that is no tuple of non-negative integers, values nested too deep, or a
    /// shape that disagrees with the size of the data.
    BadHeader(String),
    /// The member's compressed data is corrupt (the decompressor's reason).
    Corrupt(String),
    /// The member's bytes do not have the CRC-32 its zip entry records: the file is damaged.
    Crc {
        /// The CRC-32 the zip entry records.
        expected: u32,
        /// The CRC-32 of the member's bytes.
        found: u32,
    },
    /// A byte range given to [`NpzMatrix::crc32_of`](super::NpzMatrix::crc32_of) or covered by the
    /// parts given to [`NpzMatrix::verify_crc`](super::NpzMatrix::verify_crc) is not within the
    /// stored member's bytes `0..span`, or (`span` is `None`) the member is deflated.
    CrcRange {
        /// The range asked for; for parts, the first part that ends past the member, or all
        /// the parts (`0..total`) when they end before it.
        range: Range<u64>,
        /// The stored member's length ([`NpzMatrix::crc_span`](super::NpzMatrix::crc_span)).
        span: Option<u64>,
    },
    /// The member's dtype is not the one of the requested scalar type.
    DtypeMismatch {
        /// The member's dtype.
        found: String,
        /// The dtype of the requested scalar type.
        expected: Dtype,
    },
    /// The member's dtype is none of float32, float64, complex64, complex128 (its numpy descr).
    UnsupportedDtype(String),
    /// The member is not a 2-D array (its shape).
    NotTwoDimensional(Vec<usize>),
    /// The requested rows are not within `0..nrows`.
    RowsOutOfRange {
        /// The requested rows.
        rows: Range<usize>,
        /// The member's number of rows.
        nrows: usize,
    },
    /// The member is compressed with another method than deflate, or encrypted.
    UnsupportedCompression(String),
}

impl fmt::Display for NpzErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NpzErrorKind::Io(e) => write!(f, "cannot read the file: {e}"),
            NpzErrorKind::NotZip(why) => write!(f, "not a zip archive, as an .npz must be ({why})"),
            NpzErrorKind::MemberMissing { available } if available.is_empty() => {
                write!(f, "no such member: the archive has no members")
            }
            NpzErrorKind::MemberMissing { available } => {
                write!(f, "no such member; the archive holds: {}", available.join(", "))
            }
            NpzErrorKind::Empty => write!(f, "the archive holds no array (no .npy member)"),
            NpzErrorKind::Truncated => {
                write!(f, "truncated: the archive or the member is shorter than its headers say")
            }
            NpzErrorKind::BadHeader(why) => write!(f, "bad .npy header: {why}"),
            NpzErrorKind::Corrupt(why) => write!(f, "corrupt compressed data: {why}"),
            NpzErrorKind::Crc { expected, found } => write!(
                f,
                "CRC-32 mismatch: the zip entry records {expected:08x}, the member's bytes give {found:08x} \
                 (the file is damaged)"
            ),
            NpzErrorKind::CrcRange { range, span: None } => write!(
                f,
                "no CRC-32 of bytes {}..{}: the member is deflated (read all its rows to verify it)",
                range.start, range.end
            ),
            NpzErrorKind::CrcRange { range, span: Some(span) } => write!(
                f,
                "CRC-32 of bytes {}..{}: not the member's bytes 0..{span} (parts must be consecutive and cover them)",
                range.start, range.end
            ),
            NpzErrorKind::DtypeMismatch { found, expected } => write!(
                f,
                "dtype mismatch: the member holds {found}, not {expected} as requested; \
                 accepted dtypes: {ACCEPTED} (read as f32, f64, c32, c64 respectively)"
            ),
            NpzErrorKind::UnsupportedDtype(descr) => {
                write!(f, "unsupported dtype {descr}; accepted dtypes: {ACCEPTED}")
            }
            NpzErrorKind::NotTwoDimensional(shape) => {
                write!(f, "not a 2-D array: shape {shape:?} has {} dimension(s)", shape.len())
            }
            NpzErrorKind::RowsOutOfRange { rows, nrows } => {
                write!(f, "rows {}..{} out of range for a matrix of {nrows} rows", rows.start, rows.end)
            }
            NpzErrorKind::UnsupportedCompression(method) => {
                write!(f, "unsupported compression {method}: only stored and deflated members can be read")
            }
        }
    }
}

/// An error of [`npz`](super): the path of the file, the member where known, and the reason.
///
/// Displays as `{path}: {reason}` or `{path}: member {member}: {reason}`.
#[derive(Debug)]
pub struct NpzError {
    pub(super) path: PathBuf,
    pub(super) member: Option<String>,
    pub(super) kind: NpzErrorKind,
}

impl NpzError {
    /// The path of the `.npz` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The member concerned, when known (as requested, or found without a request).
    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// The reason.
    pub fn kind(&self) -> &NpzErrorKind {
        &self.kind
    }

    /// The reason, by value.
    pub fn into_kind(self) -> NpzErrorKind {
        self.kind
    }
}

impl fmt::Display for NpzError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(member) = &self.member {
            write!(f, ": member {member}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for NpzError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            NpzErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}
