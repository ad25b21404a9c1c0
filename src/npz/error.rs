//! The errors of [`npz`](super): [`NpzError`] (path, member, reason) and its [`NpzErrorKind`].

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::IndexDtype;
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
    /// The archive is not a scipy sparse matrix file (`scipy.sparse.save_npz`): it has no
    /// `format` member and not both `indptr` and `indices`.
    NotSparse {
        /// The archive's members, without their `.npy` suffix.
        members: Vec<String>,
    },
    /// The sparse file's `format` is not `csr` or `csc` (the format it names): another scipy
    /// format (`coo`, `bsr`, `dia`, …), to convert with `.tocsr()` or `.tocsc()`, or none.
    SparseFormat(String),
    /// A member is not an array of the kind its role in a sparse file requires (the reason):
    /// `format` not a 0-d bytes array, `shape` not two non-negative int64 entries, `indptr`,
    /// `indices` or `data` not 1-D.
    SparseMember(String),
    /// The member (`indices` or `indptr`) is not int32 or int64 (its numpy descr).
    IndexDtype(String),
    /// `indices` and `indptr` have different dtypes.
    IndexDtypeMismatch {
        /// The dtype of `indices`.
        indices: IndexDtype,
        /// The dtype of `indptr`.
        indptr: IndexDtype,
    },
    /// The file's index dtype is not the one of the requested index type.
    IndexMismatch {
        /// The dtype of the file's `indices` and `indptr`.
        found: IndexDtype,
        /// The dtype of the requested index type.
        expected: IndexDtype,
    },
    /// `indptr` does not have one entry more than the major dimension (rows for CSR, columns
    /// for CSC) of the `shape` member.
    IndptrLength {
        /// The number of entries of `indptr`.
        found: usize,
        /// The major dimension plus one.
        expected: usize,
    },
    /// An entry of `indptr` is out of place: the first is not 0, one decreases, one exceeds
    /// the number of stored entries, or the last is not that number (scipy would drop or read
    /// past entries).
    Indptr {
        /// Its position in `indptr`.
        at: usize,
        /// Its value.
        value: i64,
        /// Why it is wrong.
        why: &'static str,
    },
    /// `indices` and `data` have different lengths.
    LengthMismatch {
        /// The length of `indices`.
        indices: usize,
        /// The length of `data`.
        data: usize,
    },
    /// An entry of `indices` is negative or not below the minor dimension (columns for CSR,
    /// rows for CSC).
    IndexOutOfRange {
        /// Its position in `indices`.
        at: usize,
        /// Its value.
        index: i64,
        /// The minor dimension.
        bound: usize,
    },
    /// Requested major indices (rows of a CSR, columns of a CSC) not within `0..major`.
    MajorOutOfRange {
        /// The requested range.
        range: Range<usize>,
        /// The major dimension.
        major: usize,
    },
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
            NpzErrorKind::NotSparse { members } => write!(
                f,
                "not a scipy sparse matrix file (members format, shape, indptr, indices, data); the archive holds: {}",
                members.join(", ")
            ),
            NpzErrorKind::SparseFormat(name) if matches!(name.as_str(), "coo" | "bsr" | "dia" | "dok" | "lil") => {
                write!(
                    f,
                    "sparse format {name} is not supported: only csr and csc are; convert it with .tocsr() or \
                     .tocsc() before scipy.sparse.save_npz"
                )
            }
            NpzErrorKind::SparseFormat(name) => {
                write!(f, "unknown sparse format {name:?}: only csr and csc are supported")
            }
            NpzErrorKind::SparseMember(why) => write!(f, "not a scipy sparse member: {why}"),
            NpzErrorKind::IndexDtype(descr) => {
                write!(f, "unsupported index dtype {descr}; indices and indptr must be int32 or int64")
            }
            NpzErrorKind::IndexDtypeMismatch { indices, indptr } => {
                write!(f, "indices are {indices} but indptr is {indptr}; they must have the same dtype")
            }
            NpzErrorKind::IndexMismatch { found, expected } => write!(
                f,
                "index dtype mismatch: the file's indices are {found}, not {expected} as requested \
                 (read int32 as u32, int64 as u64)"
            ),
            NpzErrorKind::IndptrLength { found, expected } => {
                write!(f, "indptr has {found} entries but the shape member implies {expected} (major dimension + 1)")
            }
            NpzErrorKind::Indptr { at, value, why } => write!(f, "indptr[{at}] = {value}: {why}"),
            NpzErrorKind::LengthMismatch { indices, data } => {
                write!(f, "indices holds {indices} entries but data {data}")
            }
            NpzErrorKind::IndexOutOfRange { at, index, bound } => {
                write!(f, "indices[{at}] = {index} is out of range 0..{bound}")
            }
            NpzErrorKind::MajorOutOfRange { range, major } => {
                write!(f, "range {}..{} out of range for a major dimension of {major}", range.start, range.end)
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
