//! Row blocks of one 2-D array member of a numpy `.npz` file, read through a memory map.
//!
//! A `.npz` is a zip archive of `.npy` files, one per array: `np.savez` stores them as they
//! are, `np.savez_compressed` deflates them. [`NpzMatrix::open`] maps the whole file, finds the
//! member and parses its `.npy` header (shape, dtype, order, byte order), without reading the
//! array data. Then each caller asks for the rows it needs, as a distributed operator whose
//! ranks each keep one block of rows does:
//! - [`NpzMatrix::view_rows`] views them in place, without a copy, when the member is stored
//!   (not compressed), in the machine's byte order and its data is aligned for the scalar type;
//! - [`NpzMatrix::read_rows`] copies them into a new [`Mat`] in every case: from the map for a
//!   stored member (touching only the pages of those rows in C order), or by streaming the
//!   decompressed data of a deflated member, keeping only those rows.
//!
//! The scalar type is matched exactly to the member's dtype ([`Scalar`]): `f32` for
//! float32, `f64` for float64, [`c32`](faer::c32) for complex64 and [`c64`](faer::c64) for
//! complex128. Another type is an error ([`NpzErrorKind::DtypeMismatch`]), never a conversion.
//!
//! `np.savez` does not align member data in the archive (an f64 member's data typically starts
//! at an odd offset), so [`NpzMatrix::view_rows`] often returns `None` there: fall back to
//! [`NpzMatrix::read_rows`].
//!
//! ```no_run
//! use lazylinop::npz::NpzMatrix;
//!
//! let m = NpzMatrix::open("matrix.npz", None)?; // the first array of the archive
//! let (nrows, _) = m.shape();
//! let rows = 0..nrows / 2;
//! let block = match m.view_rows::<f64>(rows.clone())? {
//!     Some(view) => view.to_owned(), // or use the view in place
//!     None => m.read_rows::<f64>(rows)?,
//! };
//! # let _ = block;
//! # Ok::<(), lazylinop::npz::NpzError>(())
//! ```

use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use faer::{Mat, MatRef};
use memmap2::Mmap;
use npyz::{DType, NpyHeader, TypeChar};
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

pub use crate::{Dtype, Scalar};

/// The dtypes a member can hold, as listed in error messages.
const ACCEPTED: &str = "float32, float64, complex64, complex128";

/// The dtype and byte order of a `.npy` descr, if it is one this module reads.
fn dtype_of(dtype: &DType) -> Option<(Dtype, bool)> {
    let DType::Plain(ty) = dtype else { return None };
    let dtype = match (ty.type_char(), ty.num_bytes()?) {
        (TypeChar::Float, 4) => Dtype::Float32,
        (TypeChar::Float, 8) => Dtype::Float64,
        (TypeChar::Complex, 8) => Dtype::Complex64,
        (TypeChar::Complex, 16) => Dtype::Complex128,
        _ => return None,
    };
    Some((dtype, ty.endianness() == npyz::Endianness::Big))
}

/// Memory order of the array data, as the `.npy` header's `fortran_order` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Order {
    /// Row-major: the entries of a row are contiguous.
    C,
    /// Column-major: the entries of a column are contiguous.
    Fortran,
}

/// Why opening or reading a member failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum NpzErrorKind {
    /// The file is missing or unreadable.
    Io(io::Error),
    /// The file is not a zip archive (zip's reason).
    NotZip(String),
    /// The requested member is not in the archive.
    MemberMissing {
        /// The archive's members, without their `.npy` suffix.
        available: Vec<String>,
    },
    /// The archive holds no array (no `.npy` member).
    Empty,
    /// The archive or the member is shorter than its headers say.
    Truncated,
    /// The `.npy` header cannot be parsed, or its shape disagrees with the size of the data.
    BadHeader(String),
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

/// An error of this module: the path of the file, the member where known, and the reason.
///
/// Displays as `{path}: {reason}` or `{path}: member {member}: {reason}`.
#[derive(Debug)]
pub struct NpzError {
    path: PathBuf,
    member: Option<String>,
    kind: NpzErrorKind,
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

/// The memory map, shared by the matrix and the zip reader of compressed members.
#[derive(Clone)]
struct MapBytes(Arc<Mmap>);

impl AsRef<[u8]> for MapBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// One 2-D array member of a `.npz` file, opened for reading row blocks.
///
/// Owns a read-only memory map of the whole file and the parsed `.npy` header; reads no array
/// data until asked. It is `Send + Sync`: threads can read their blocks concurrently.
pub struct NpzMatrix {
    path: PathBuf,
    member: String,
    map: Arc<Mmap>,
    archive: ZipArchive<Cursor<MapBytes>>,
    /// Index of the member in the archive.
    index: usize,
    compressed: bool,
    /// Stored: offset of the array data in the file. Compressed: length of the `.npy` header
    /// (offset of the array data in the decompressed member).
    data_offset: usize,
    nrows: usize,
    ncols: usize,
    dtype: Dtype,
    order: Order,
    big_endian: bool,
}

impl fmt::Debug for NpzMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NpzMatrix")
            .field("path", &self.path)
            .field("member", &self.member)
            .field("shape", &(self.nrows, self.ncols))
            .field("dtype", &self.dtype)
            .field("order", &self.order)
            .field("compressed", &self.compressed)
            .field("big_endian", &self.big_endian)
            .finish_non_exhaustive()
    }
}

/// Maps an error of npyz's header parser.
fn header_error(e: io::Error) -> NpzErrorKind {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => NpzErrorKind::Truncated,
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => NpzErrorKind::BadHeader(e.to_string()),
        _ => NpzErrorKind::Io(e),
    }
}

/// Maps an error met while reading array data.
fn data_error(e: io::Error) -> NpzErrorKind {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => NpzErrorKind::Truncated,
        _ => NpzErrorKind::Io(e),
    }
}

/// Maps an error of the zip reader.
fn zip_error(e: ZipError) -> NpzErrorKind {
    match e {
        ZipError::Io(e) => data_error(e),
        ZipError::UnsupportedArchive(why) if why == ZipError::PASSWORD_REQUIRED => {
            NpzErrorKind::UnsupportedCompression("encrypted member".into())
        }
        other => NpzErrorKind::NotZip(other.to_string()),
    }
}

fn compression_name(method: CompressionMethod) -> String {
    let known = [
        (CompressionMethod::DEFLATE64, "deflate64"),
        (CompressionMethod::BZIP2, "bzip2"),
        (CompressionMethod::LZMA, "lzma"),
        (CompressionMethod::ZSTD, "zstd"),
        (CompressionMethod::XZ, "xz"),
        (CompressionMethod::PPMD, "ppmd"),
        (CompressionMethod::AES, "aes"),
    ];
    match known.iter().find(|(m, _)| *m == method) {
        Some((_, name)) => (*name).to_string(),
        None => format!("zip method {method}"),
    }
}

/// A reader that counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: usize,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n;
        Ok(n)
    }
}

/// Where the array data comes from: a slice of the map or a decompressing stream.
trait Source {
    /// Skips `n` bytes.
    fn skip(&mut self, n: usize) -> io::Result<()>;
    /// Fills `buf`.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

impl Source for &[u8] {
    fn skip(&mut self, n: usize) -> io::Result<()> {
        if n > self.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        *self = &self[n..];
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact(buf)
    }
}

/// A decompressing reader as a [`Source`].
struct Stream<R>(R);

impl<R: Read> Source for Stream<R> {
    fn skip(&mut self, n: usize) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.0).take(n as u64), &mut io::sink())?;
        if skipped < n as u64 { Err(io::ErrorKind::UnexpectedEof.into()) } else { Ok(()) }
    }

    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact(buf)
    }
}

/// Reverses the bytes of each `component`-byte scalar of `bytes` (big-endian to native).
fn swap_bytes(bytes: &mut [u8], component: usize) {
    for c in bytes.chunks_exact_mut(component) {
        c.reverse();
    }
}

impl NpzMatrix {
    /// Opens member `member` of the `.npz` file at `path` (`None`: the first array in the
    /// archive, as Python lazylinop's `MPILop` does). A member `a` is stored as `a.npy` in the
    /// archive; either name is accepted.
    ///
    /// Maps the whole file read-only and parses the member's `.npy` header: nothing of the
    /// array data is read. As with every memory-mapped file, the file must not be truncated or
    /// modified by anyone while the returned matrix lives.
    ///
    /// # Errors
    /// [`NpzErrorKind::Io`] if the file cannot be opened or mapped, [`NpzErrorKind::NotZip`] if
    /// it is no zip archive, [`NpzErrorKind::Truncated`] if it was cut short (a zip that lost
    /// its end) or the member is shorter than its headers, [`NpzErrorKind::Empty`] if the
    /// archive holds no `.npy` member and `member` is `None`, [`NpzErrorKind::MemberMissing`]
    /// if `member` is not there, [`NpzErrorKind::UnsupportedCompression`] for a member neither
    /// stored nor deflated, [`NpzErrorKind::BadHeader`] for an unparsable `.npy` header or one
    /// whose shape disagrees with the size of the data, [`NpzErrorKind::UnsupportedDtype`] for
    /// a dtype other than float32, float64, complex64, complex128 (either byte order), and
    /// [`NpzErrorKind::NotTwoDimensional`] for an array of another number of dimensions.
    pub fn open(path: impl AsRef<Path>, member: Option<&str>) -> Result<Self, NpzError> {
        let path = path.as_ref().to_path_buf();
        let fail = |member: Option<&str>, kind| NpzError { path: path.clone(), member: member.map(Into::into), kind };

        let file = File::open(&path).map_err(|e| fail(member, NpzErrorKind::Io(e)))?;
        // SAFETY: the map is read-only and private to this process. Its contents change only if
        // another party modifies or truncates the file while it is mapped, which `open`'s
        // documentation forbids (the usual contract of memory-mapped readers); the slices taken
        // from the map never outlive it (they borrow `self`).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| fail(member, NpzErrorKind::Io(e)))?;
        drop(file);
        let map = Arc::new(map);

        let mut archive = match ZipArchive::new(Cursor::new(MapBytes(Arc::clone(&map)))) {
            Ok(archive) => archive,
            // A local file header at the start but no readable central directory at the end:
            // a zip archive that was cut short.
            Err(ZipError::InvalidArchive(_)) if map.starts_with(b"PK\x03\x04") => {
                return Err(fail(member, NpzErrorKind::Truncated));
            }
            Err(ZipError::InvalidArchive(why)) if map.is_empty() => {
                return Err(fail(member, NpzErrorKind::NotZip(format!("the file is empty; {why}"))));
            }
            Err(e) => return Err(fail(member, zip_error(e))),
        };

        let strip = |name: &str| name.strip_suffix(".npy").unwrap_or(name).to_string();
        let index = match member {
            Some(name) => {
                let found = archive.index_for_name(name).or_else(|| archive.index_for_name(&format!("{name}.npy")));
                found.ok_or_else(|| {
                    let available = archive.file_names().map(strip).collect();
                    fail(member, NpzErrorKind::MemberMissing { available })
                })?
            }
            None => (0..archive.len())
                .find(|&i| archive.name_for_index(i).is_some_and(|n| n.ends_with(".npy")))
                .ok_or_else(|| fail(None, NpzErrorKind::Empty))?,
        };
        let name = strip(archive.name_for_index(index).unwrap_or_default());
        let fail = |kind| fail(Some(&name), kind);

        // Where the member is and how it is compressed.
        let (compressed, start, size) = {
            let raw = archive.by_index_raw(index).map_err(|e| fail(zip_error(e)))?;
            if raw.encrypted() {
                return Err(fail(NpzErrorKind::UnsupportedCompression("encrypted member".into())));
            }
            let compressed = match raw.compression() {
                CompressionMethod::Stored => false,
                CompressionMethod::Deflated => true,
                other => return Err(fail(NpzErrorKind::UnsupportedCompression(compression_name(other)))),
            };
            let start = raw.data_start().ok_or_else(|| fail(NpzErrorKind::NotZip("no member data".into())))?;
            let end = start.checked_add(raw.compressed_size());
            if end.is_none_or(|end| end > map.len() as u64) {
                return Err(fail(NpzErrorKind::Truncated));
            }
            if !compressed && raw.compressed_size() != raw.size() {
                return Err(fail(NpzErrorKind::NotZip("a stored member whose sizes disagree".into())));
            }
            (compressed, start as usize, raw.size())
        };

        // The .npy header: parsed from the map, or from the start of the decompressed stream.
        let (header, header_len) = if compressed {
            let file = archive.by_index(index).map_err(|e| fail(zip_error(e)))?;
            let mut counting = Counting { inner: file, count: 0 };
            let header = NpyHeader::from_reader(&mut counting).map_err(|e| fail(header_error(e)))?;
            (header, counting.count)
        } else {
            let bytes = &map[start..start + size as usize];
            let mut rest = bytes;
            let header = NpyHeader::from_reader(&mut rest).map_err(|e| fail(header_error(e)))?;
            (header, bytes.len() - rest.len())
        };

        let descr = header.dtype();
        let Some((dtype, big_endian)) = dtype_of(&descr) else {
            return Err(fail(NpzErrorKind::UnsupportedDtype(descr.descr())));
        };
        let shape: Vec<usize> = header
            .shape()
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| fail(NpzErrorKind::BadHeader(format!("shape {:?} too large", header.shape()))))?;
        let &[nrows, ncols] = shape.as_slice() else {
            return Err(fail(NpzErrorKind::NotTwoDimensional(shape)));
        };
        let order = match header.order() {
            npyz::Order::C => Order::C,
            npyz::Order::Fortran => Order::Fortran,
        };

        // The data must be exactly what the header says.
        let data_len = size - header_len as u64;
        let expected = nrows.checked_mul(ncols).and_then(|n| n.checked_mul(dtype.size()));
        if expected.is_none_or(|e| e as u64 != data_len) {
            let says = match expected {
                Some(e) => format!("{e} bytes"),
                None => "an overflowing size".into(),
            };
            return Err(fail(NpzErrorKind::BadHeader(format!(
                "the header says shape ({nrows}, {ncols}) of {dtype}, {says} of data, but the member holds {data_len} bytes"
            ))));
        }

        let data_offset = if compressed { header_len } else { start + header_len };
        Ok(NpzMatrix {
            path,
            member: name,
            map,
            archive,
            index,
            compressed,
            data_offset,
            nrows,
            ncols,
            dtype,
            order,
            big_endian,
        })
    }

    /// The path of the `.npz` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The member's name, without its `.npy` suffix (numpy's key, e.g. `arr_0`).
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The shape `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// The member's dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The member's memory order. numpy writes an array with one row or one column in C order,
    /// whatever the order it had.
    pub fn order(&self) -> Order {
        self.order
    }

    /// Whether the member is compressed (deflated, as by `np.savez_compressed`).
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// Whether the member's data is big-endian (e.g. dtype `'>f8'`).
    pub fn is_big_endian(&self) -> bool {
        self.big_endian
    }

    fn error(&self, kind: NpzErrorKind) -> NpzError {
        NpzError { path: self.path.clone(), member: Some(self.member.clone()), kind }
    }

    fn check<T: Scalar>(&self, rows: &Range<usize>) -> Result<(), NpzError> {
        if T::DTYPE != self.dtype {
            let found = if self.big_endian { format!("{} (big-endian)", self.dtype) } else { self.dtype.to_string() };
            return Err(self.error(NpzErrorKind::DtypeMismatch { found, expected: T::DTYPE }));
        }
        if rows.start > rows.end || rows.end > self.nrows {
            return Err(self.error(NpzErrorKind::RowsOutOfRange { rows: rows.clone(), nrows: self.nrows }));
        }
        Ok(())
    }

    fn needs_swap(&self) -> bool {
        self.big_endian != cfg!(target_endian = "big")
    }

    /// Rows `rows` as a zero-copy strided view into the map, when the member is stored (not
    /// compressed), in the machine's byte order and its data is aligned for `T`; `Ok(None)`
    /// otherwise (then use [`read_rows`](Self::read_rows)). Whether it is `Some` depends on
    /// the member only, not on `rows`.
    ///
    /// C order: row stride `ncols`, column stride 1. Fortran order: row stride 1, column
    /// stride `nrows`.
    ///
    /// # Errors
    /// [`NpzErrorKind::DtypeMismatch`] if the member's dtype is not `T::DTYPE`, and
    /// [`NpzErrorKind::RowsOutOfRange`] unless `rows.start <= rows.end <= nrows`.
    pub fn view_rows<T: Scalar>(&self, rows: Range<usize>) -> Result<Option<MatRef<'_, T>>, NpzError> {
        self.check::<T>(&rows)?;
        if self.compressed || self.needs_swap() {
            return Ok(None);
        }
        let (nrows, ncols) = (self.nrows, self.ncols);
        let bytes = &self.map[self.data_offset..self.data_offset + nrows * ncols * size_of::<T>()];
        let Ok(all) = bytemuck::try_cast_slice::<u8, T>(bytes) else { return Ok(None) };
        let k = rows.end - rows.start;
        let view = match self.order {
            Order::C => MatRef::from_row_major_slice(&all[rows.start * ncols..rows.end * ncols], k, ncols),
            Order::Fortran if k == 0 || ncols == 0 => MatRef::from_column_major_slice(&all[..0], k, ncols),
            Order::Fortran => MatRef::from_column_major_slice_with_stride(
                &all[rows.start..(ncols - 1) * nrows + rows.end],
                k,
                ncols,
                nrows,
            ),
        };
        Ok(Some(view))
    }

    /// Rows `rows` copied into a new `Mat<T>`, for every member of dtype `T::DTYPE`: stored or
    /// compressed, aligned or not, in C or Fortran order. Big-endian data is converted to the
    /// machine's byte order (byte swapping of each real component).
    ///
    /// A stored member is read from the map: only the requested rows in C order, or the
    /// requested part of each column in Fortran order. A compressed member is decompressed as
    /// a stream that stops after the last requested element, keeping only the requested rows:
    /// the whole matrix is never held in memory.
    ///
    /// # Errors
    /// [`NpzErrorKind::DtypeMismatch`] if the member's dtype is not `T::DTYPE`,
    /// [`NpzErrorKind::RowsOutOfRange`] unless `rows.start <= rows.end <= nrows`, and for a
    /// compressed member [`NpzErrorKind::Truncated`] if the decompressed stream ends early or
    /// [`NpzErrorKind::Io`] if it is corrupt.
    pub fn read_rows<T: Scalar>(&self, rows: Range<usize>) -> Result<Mat<T>, NpzError> {
        self.check::<T>(&rows)?;
        let mut out = Mat::<T>::zeros(rows.end - rows.start, self.ncols);
        if out.nrows() == 0 || out.ncols() == 0 {
            return Ok(out);
        }
        let result = if self.compressed {
            let mut archive = self.archive.clone();
            let file = archive.by_index(self.index).map_err(|e| self.error(zip_error(e)))?;
            let mut stream = Stream(file);
            stream.skip(self.data_offset).and_then(|()| self.copy_rows(&mut stream, rows, &mut out))
        } else {
            let len = self.nrows * self.ncols * size_of::<T>();
            let mut data = &self.map[self.data_offset..self.data_offset + len];
            self.copy_rows(&mut data, rows, &mut out)
        };
        result.map_err(|e| self.error(data_error(e)))?;
        Ok(out)
    }

    /// Copies rows `rows` of the data read from `src` (positioned at the start of the data)
    /// into `out`, swapping bytes when needed.
    fn copy_rows<T: Scalar>(&self, src: &mut impl Source, rows: Range<usize>, out: &mut Mat<T>) -> io::Result<()> {
        let size = size_of::<T>();
        let k = rows.end - rows.start;
        let swap = self.needs_swap().then(|| self.dtype.component_size());
        match self.order {
            Order::C => {
                src.skip(rows.start * self.ncols * size)?;
                let mut row = vec![T::zeroed(); self.ncols];
                for i in 0..k {
                    let bytes = bytemuck::cast_slice_mut::<T, u8>(&mut row);
                    src.fill(bytes)?;
                    if let Some(component) = swap {
                        swap_bytes(bytes, component);
                    }
                    for (j, &x) in row.iter().enumerate() {
                        out[(i, j)] = x;
                    }
                }
            }
            Order::Fortran => {
                src.skip(rows.start * size)?;
                for j in 0..self.ncols {
                    if j > 0 {
                        src.skip((self.nrows - k) * size)?;
                    }
                    let bytes = bytemuck::cast_slice_mut::<T, u8>(out.col_as_slice_mut(j));
                    src.fill(bytes)?;
                    if let Some(component) = swap {
                        swap_bytes(bytes, component);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes `mat` as the only member `member` (numpy's key, without `.npy`) of
/// a new `.npz` file at `path`, that numpy reads with `np.load`: stored (not
/// compressed), in Fortran order, with the data aligned to 64 bytes in the
/// file, so that [`NpzMatrix::view_rows`] (and an
/// `MpiLop`, feature `mpi`) can view it in place without a copy.
///
/// # Errors
/// [`NpzErrorKind::Io`] if the file cannot be written.
///
/// # Examples
/// ```no_run
/// use lazylinop::npz::{NpzMatrix, save};
/// let a = lazylinop::random::mat::<f64>(100, 40, 0);
/// save("a.npz", "a", a.as_ref()).unwrap();
/// let back = NpzMatrix::open("a.npz", None).unwrap();
/// assert_eq!(back.view_rows::<f64>(0..100).unwrap().unwrap(), a.as_ref());
/// ```
pub fn save<T: Scalar>(path: impl AsRef<Path>, member: &str, mat: MatRef<'_, T>) -> Result<(), NpzError> {
    use std::io::Write;
    let path = path.as_ref();
    let error =
        |e: io::Error| NpzError { path: path.to_owned(), member: Some(member.to_owned()), kind: NpzErrorKind::Io(e) };
    let endian = if cfg!(target_endian = "little") { '<' } else { '>' };
    let descr = match T::DTYPE {
        Dtype::Float32 => "f4",
        Dtype::Float64 => "f8",
        Dtype::Complex64 => "c8",
        Dtype::Complex128 => "c16",
    };
    // numpy's format 1.0: magic, version, header length, then the header padded so that the
    // data starts at a multiple of 64 bytes from the start of the member.
    let mut header =
        format!("{{'descr': '{endian}{descr}', 'fortran_order': True, 'shape': ({}, {}), }}", mat.nrows(), mat.ncols());
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let write = || -> io::Result<()> {
        let file = File::create(path)?;
        let mut zip = zip::ZipWriter::new(io::BufWriter::new(file));
        let bytes = mat.nrows() * mat.ncols() * size_of::<T>() + 10 + header.len();
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .with_alignment(64)
            .large_file(bytes >= u32::MAX as usize);
        zip.start_file(format!("{member}.npy"), options).map_err(io::Error::other)?;
        zip.write_all(b"\x93NUMPY\x01\x00")?;
        zip.write_all(&(header.len() as u16).to_le_bytes())?;
        zip.write_all(header.as_bytes())?;
        for j in 0..mat.ncols() {
            let col = mat.col(j);
            match col.try_as_col_major() {
                Some(col) => zip.write_all(bytemuck::cast_slice(col.as_slice()))?,
                None => {
                    for i in 0..mat.nrows() {
                        zip.write_all(bytemuck::bytes_of(&col[i]))?;
                    }
                }
            }
        }
        zip.finish().map_err(io::Error::other)?.flush()
    };
    write().map_err(error)
}
