//! numpy `.npz` files read through a memory map, and written for reading in place: dense 2-D
//! arrays by blocks of rows ([`NpzMatrix`], [`save`]) and scipy sparse matrices by shares of
//! their nonzeros ([`SparseNpz`], [`save_sparse`]), each reader checking what it reads.
//!
//! A `.npz` is a zip archive of `.npy` files, one per array: `np.savez` stores them as they
//! are, `np.savez_compressed` deflates them. [`NpzMatrix::open`] maps the whole file, finds the
//! member and parses its `.npy` header (shape, dtype, order, byte order; with
//! [npyz](https://docs.rs/npyz) behind a guard), without reading the array data. Then each caller asks for the rows it needs, as a distributed operator whose
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
//! [`NpzMatrix::read_rows`]. [`save`] writes aligned members, viewed in place.
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
//!
//! # Sparse matrices
//! A scipy sparse matrix saved with `scipy.sparse.save_npz` (CSR or CSC) is read by shares of
//! its nonzeros with [`SparseNpz`] (see its documentation for the steps:
//! [`detect`], [`SparseNpz::open`], [`SparseNpz::indptr`], [`split_nnz`], [`SparseNpz::part`]),
//! and written for zero-copy reading with [`save_sparse`]. The same machinery reads its
//! members (zip reader, guarded header parse, bounded inflater, CRC-32), under the same rules.
//!
//! # Untrusted files
//! A file from a shared filesystem, another person or another program may be damaged or
//! crafted. Every inconsistency is a typed [`NpzError`], found quickly and with memory bounded
//! by the file's real content:
//! - the zip structures are read by a small reader that checks every offset and size against
//!   the file's length before using it (time linear in the file's size; the `zip` crate's
//!   reader is not bounded on hostile archives, see `src/npz/archive.rs`);
//! - the `.npy` header's declared length is refused above numpy's own limit for untrusted input
//!   (10000 bytes, `np.load`'s `max_header_size`) or past the member before anything is read
//!   or allocated, and a linear scan refuses what no header of a dtype read here holds (keys
//!   other than `descr`, `fortran_order` and `shape`, nesting below a tuple, a shape that is no
//!   sequence of at most 64 decimal integers or whose size overflows) before npyz parses it
//!   (npyz's parser takes time exponential in the nesting depth, and multiplies the dimensions
//!   unchecked); a list shape, which `np.load` refuses, is refused after npyz's parse;
//! - the data size the header implies must be exactly the member's size; a stored member must
//!   lie within the file; a deflated member may not declare more bytes than its compressed size
//!   can inflate to (1032 times, deflate's limit), is inflated no further than it declares, and
//!   its rows are collected as they arrive: no buffer is sized from a declared shape before the
//!   data is there.
//!
//! # What the CRC-32 covers
//! Each zip entry records the CRC-32 of the member's bytes (its `.npy` header and data).
//! - [`NpzMatrix::read_rows`] verifies it whenever it reads all the rows (`0..nrows`), stored or
//!   deflated, and whenever a read streams a deflated member to its end (rows up to the last):
//!   a damaged byte anywhere in the member is then an [`NpzErrorKind::Crc`] error.
//!   Reading other rows verifies nothing (the check needs every byte).
//! - [`NpzMatrix::view_rows`] verifies nothing. A holder of views checks a stored member with
//!   [`NpzMatrix::crc32_of`] over byte ranges of [`NpzMatrix::crc_span`] and
//!   [`NpzMatrix::verify_crc`], which combines the ranges' CRCs: ranks can each checksum a
//!   contiguous share and agree on one verdict.
//! - [`NpzMatrix::open`] verifies nothing but the structure: the header is parsed before its
//!   CRC could be known.
//!
//! # Files changed while mapped
//! [`NpzMatrix`] maps the file, and its views point into that map. If another program rewrites
//! the file in place while the map lives, the views' values change; if it truncates the file,
//! reading them raises `SIGBUS`. As with every memory-mapped reader (numpy's `mmap_mode`,
//! `memmap2`), the file must not be modified in place or truncated while an [`NpzMatrix`] of it
//! lives. Replacing it is safe: a writer that writes a new file and renames it over the old one
//! (as [`save`] does, and most tools writing atomically) leaves the old map intact. Note that
//! `np.savez` to the same path writes in place (it truncates the file first).

mod archive;
mod error;
mod header;
mod read;
mod save;
mod sparse;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use faer::{Mat, MatRef};
use memmap2::Mmap;

pub use self::error::{NpzError, NpzErrorKind};
use self::read::{Inflate, Source, data_error, swap_bytes};
#[cfg(feature = "mpi")]
pub(crate) use self::save::save_rows;
pub use self::save::{SparseRef, save, save_sparse};
pub use self::sparse::{IndexDtype, NpzLayout, SparseIndex, SparseMember, SparseNpz, SparsePart, detect, split_nnz};
pub use crate::{Dtype, Scalar};

/// Memory order of the array data, as the `.npy` header's `fortran_order` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Order {
    /// Row-major: the entries of a row are contiguous.
    C,
    /// Column-major: the entries of a column are contiguous.
    Fortran,
}

/// The most bytes deflate can inflate one compressed byte to (258-byte matches in 2 bits).
const DEFLATE_RATIO: u64 = 1032;

/// Elements read at a time when copying data.
const CHUNK: usize = 4096;

/// One 2-D array member of a `.npz` file, opened for reading row blocks.
///
/// Owns a read-only memory map of the whole file and the parsed `.npy` header; reads no array
/// data until asked. It is `Send + Sync`: threads can read their blocks concurrently.
pub struct NpzMatrix {
    path: PathBuf,
    member: String,
    map: Mmap,
    /// Where the member is and its header (boxed: keeps the matrix small to move).
    loc: Box<Member>,
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
            .field("compressed", &self.loc.compressed)
            .field("big_endian", &self.big_endian)
            .finish_non_exhaustive()
    }
}

fn compression_name(method: u16) -> String {
    let name = match method {
        9 => "deflate64",
        12 => "bzip2",
        14 => "lzma",
        93 => "zstd",
        95 => "xz",
        98 => "ppmd",
        99 => "aes",
        _ => return format!("zip method {method}"),
    };
    name.to_string()
}

/// Maps the regular file at `path` read-only. A directory or another kind of file (a named pipe
/// would block the open, a device has no length) is an error, checked on the opened file.
fn map_file(path: &Path) -> io::Result<Mmap> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a named pipe for reading would wait for a writer; this returns at once.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file: File = options.open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "the path is a directory, not an .npz file"));
    }
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is not a regular file (a named pipe, socket or device)",
        ));
    }
    // SAFETY: the map is read-only and private to this process, and every slice taken from it
    // borrows the `NpzMatrix` that owns it, so none outlives it. Its contents change only if
    // another program modifies or truncates the file while it is mapped, which the module's
    // documentation ("Files changed while mapped") excludes, as every memory-mapped reader
    // must; this crate's own writer, `save`, replaces files by renaming and never does.
    unsafe { Mmap::map(&file) }
}

/// Reads `n` elements from `src` through `buf`, a chunk at a time, swapping the bytes of each
/// `swap`-byte component when needed, and hands each chunk to `emit` with the index `at` of its
/// first element (then advanced).
fn read_chunks<T: bytemuck::Pod>(
    src: &mut impl Source,
    buf: &mut [T],
    mut n: usize,
    swap: Option<usize>,
    at: &mut usize,
    emit: &mut impl FnMut(usize, &[T]),
) -> io::Result<()> {
    while n > 0 {
        let m = n.min(buf.len());
        let bytes = bytemuck::cast_slice_mut::<T, u8>(&mut buf[..m]);
        src.fill(bytes)?;
        if let Some(component) = swap {
            swap_bytes(bytes, component);
        }
        emit(*at, &buf[..m]);
        *at += m;
        n -= m;
    }
    Ok(())
}

/// The `.npy` header at the start of `src`, a member of `size` bytes, and its length (preamble
/// included). The declared length is checked against numpy's limit and the member's size before
/// the header is read (see [`header`]).
fn read_header(src: &mut impl Read, size: u64) -> Result<(header::Header, usize), NpzErrorKind> {
    let mut preamble = [0u8; 12];
    let mut have = 0;
    let (pre_len, len) = loop {
        if let Some(found) = header::preamble(&preamble[..have])? {
            break found;
        }
        // One byte at a time: the preamble's length depends on its version byte.
        if src.read(&mut preamble[have..=have]).map_err(data_error)? == 0 {
            return Err(NpzErrorKind::Truncated);
        }
        have += 1;
    };
    if (pre_len + len) as u64 > size {
        return Err(NpzErrorKind::Truncated);
    }
    // At most `header::MAX_HEADER_LEN` bytes, checked by `preamble`.
    let mut text = vec![0; len];
    src.read_exact(&mut text).map_err(data_error)?;
    Ok((header::parse(&text)?, pre_len + len))
}

/// One member of the archive, located and its `.npy` header parsed, its size checked against
/// the header's shape when the dtype is one this module reads.
#[derive(Debug)]
pub(crate) struct Member {
    pub entry: archive::Entry,
    pub compressed: bool,
    /// Offset in the file of the member's bytes (stored: the `.npy` bytes; deflated: the
    /// compressed bytes).
    pub start: usize,
    pub header: header::Header,
    /// Length of the `.npy` preamble and header: where the array data starts in the member.
    pub header_len: usize,
    /// The header's shape, each dimension at most `isize::MAX`.
    pub shape: Vec<usize>,
}

impl Member {
    /// Locates `entry` in `map` and parses its header. For an element type this module reads
    /// ([`header::Elem`]), the data must be exactly the header's shape of it.
    pub(crate) fn open(map: &[u8], entry: &archive::Entry) -> Result<Member, NpzErrorKind> {
        if entry.flags & 1 != 0 {
            return Err(NpzErrorKind::UnsupportedCompression("encrypted member".into()));
        }
        let compressed = match entry.method {
            0 => false,
            8 => true,
            other => return Err(NpzErrorKind::UnsupportedCompression(compression_name(other))),
        };
        let start = archive::data_start(map, entry)?;
        if !compressed && entry.compressed_size != entry.size {
            return Err(NpzErrorKind::NotZip("a stored member whose sizes disagree".into()));
        }
        if compressed && entry.size > entry.compressed_size.saturating_mul(DEFLATE_RATIO).saturating_add(1024) {
            // More than its compressed bytes can inflate to: the data is not there.
            return Err(NpzErrorKind::Truncated);
        }
        // Within the map (checked by `data_start`), so within `usize`.
        let start = start as usize;
        let compressed_bytes = &map[start..start + entry.compressed_size as usize];

        // The .npy header, from the map or from the start of the inflated member.
        let (header, header_len) = if compressed {
            read_header(&mut Inflate::new(compressed_bytes, entry.size), entry.size)
        } else {
            read_header(&mut &*compressed_bytes, entry.size)
        }?;
        let shape: Vec<usize> = header
            .shape
            .iter()
            .map(|&d| usize::try_from(d).ok().filter(|&d| d <= isize::MAX as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| NpzErrorKind::BadHeader(format!("shape {:?} too large", header.shape)))?;

        // The data must be exactly what the header says.
        let data_len = entry.size.checked_sub(header_len as u64).ok_or(NpzErrorKind::Truncated)?;
        if let Some(elem) = header.elem {
            let expected = shape.iter().try_fold(elem.size(), |n, &d| n.checked_mul(d));
            if expected.is_none_or(|e| e as u64 != data_len) {
                let says = match expected {
                    Some(e) => format!("{e} bytes"),
                    None => "an overflowing size".into(),
                };
                let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
                let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
                return Err(NpzErrorKind::BadHeader(format!(
                    "the header says shape {tuple} of {}, {says} of data, but the member holds {data_len} bytes",
                    header.descr
                )));
            }
        }
        Ok(Member { entry: entry.clone(), compressed, start, header, header_len, shape })
    }

    /// The member's bytes in the file as stored: the `.npy` bytes of a stored member, the
    /// compressed bytes of a deflated one.
    pub(crate) fn stored_bytes<'a>(&self, map: &'a [u8]) -> &'a [u8] {
        &map[self.start..self.start + self.entry.compressed_size as usize]
    }

    /// The number of bytes the CRC-32 covers, when the member is stored.
    pub(crate) fn crc_span(&self) -> Option<u64> {
        (!self.compressed).then_some(self.entry.size)
    }

    /// Compares `found` with the CRC-32 the zip entry records.
    pub(crate) fn check_crc(&self, found: u32) -> Result<(), NpzErrorKind> {
        if found == self.entry.crc { Ok(()) } else { Err(NpzErrorKind::Crc { expected: self.entry.crc, found }) }
    }

    /// The CRC-32 of bytes `range` of the stored member.
    pub(crate) fn crc32_of(&self, map: &[u8], range: Range<u64>) -> Result<u32, NpzErrorKind> {
        match self.crc_span() {
            Some(span) if range.start <= range.end && range.end <= span => {
                Ok(crc32fast::hash(&self.stored_bytes(map)[range.start as usize..range.end as usize]))
            }
            span => Err(NpzErrorKind::CrcRange { range, span }),
        }
    }

    /// Combines the CRC-32s of consecutive byte ranges and compares the result with the entry's.
    pub(crate) fn verify_crc(&self, parts: impl IntoIterator<Item = (u32, u64)>) -> Result<(), NpzErrorKind> {
        let span = self.crc_span();
        let mut total = 0u64;
        let mut combined = crc32fast::Hasher::new();
        for (crc, len) in parts {
            // Past the member (or overflowing): the shares cannot be its bytes.
            let Some(end) = total.checked_add(len).filter(|&end| span.is_some_and(|s| end <= s)) else {
                return Err(NpzErrorKind::CrcRange { range: total..total.saturating_add(len), span });
            };
            total = end;
            combined.combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
        }
        if span != Some(total) {
            return Err(NpzErrorKind::CrcRange { range: 0..total, span });
        }
        self.check_crc(combined.finalize())
    }

    /// Whether the data must be byte-swapped to the machine's order.
    pub(crate) fn needs_swap(&self) -> bool {
        self.header.big_endian != cfg!(target_endian = "big")
    }
}

impl NpzMatrix {
    /// Opens member `member` of the `.npz` file at `path` (`None`: the first array in the
    /// archive, as Python lazylinop's `MPILop` does). A member `a` is stored as `a.npy` in the
    /// archive; either name is accepted.
    ///
    /// Maps the whole file read-only and parses the member's `.npy` header: nothing of the
    /// array data is read. The file must not be modified in place or truncated while the
    /// returned matrix lives (see the module's "Files changed while mapped").
    ///
    /// # Errors
    /// [`NpzErrorKind::Io`] if the file cannot be opened or mapped, or is a directory or not a
    /// regular file, [`NpzErrorKind::NotZip`] if it is no zip archive or its zip structures are
    /// inconsistent, [`NpzErrorKind::Truncated`] if it was cut short (a zip that lost its end)
    /// or the member is shorter than its headers say, [`NpzErrorKind::Empty`] if the archive
    /// holds no `.npy` member and `member` is `None`, [`NpzErrorKind::MemberMissing`] if
    /// `member` is not there, [`NpzErrorKind::UnsupportedCompression`] for a member neither
    /// stored nor deflated, [`NpzErrorKind::Corrupt`] for a deflated member that does not
    /// inflate, [`NpzErrorKind::BadHeader`] for a `.npy` header numpy would refuse or whose
    /// shape disagrees with the size of the data, [`NpzErrorKind::UnsupportedDtype`] for a
    /// dtype other than float32, float64, complex64, complex128 (either byte order), and
    /// [`NpzErrorKind::NotTwoDimensional`] for an array of another number of dimensions.
    pub fn open(path: impl AsRef<Path>, member: Option<&str>) -> Result<Self, NpzError> {
        let path = path.as_ref().to_path_buf();
        let fail = |member: Option<&str>, kind| NpzError { path: path.clone(), member: member.map(Into::into), kind };

        let map = map_file(&path).map_err(|e| fail(member, NpzErrorKind::Io(e)))?;
        let entries = archive::entries(&map).map_err(|kind| fail(member, kind))?;
        let strip = |name: &str| name.strip_suffix(".npy").unwrap_or(name).to_string();
        let index = match member {
            Some(name) => {
                // As numpy's `NpzFile`: the exact name first, then with the suffix.
                let with_suffix = format!("{name}.npy");
                let found = entries.iter().position(|e| e.name == name);
                found.or_else(|| entries.iter().position(|e| e.name == with_suffix)).ok_or_else(|| {
                    let available = entries.iter().map(|e| strip(&e.name)).collect();
                    fail(member, NpzErrorKind::MemberMissing { available })
                })?
            }
            None => {
                entries.iter().position(|e| e.name.ends_with(".npy")).ok_or_else(|| fail(None, NpzErrorKind::Empty))?
            }
        };
        if entries.iter().filter(|e| e.name == entries[index].name).count() > 1 {
            // numpy would read the last of them, other readers the first: refuse to choose.
            let why = format!("the archive holds two members named {}", entries[index].name);
            return Err(fail(member, NpzErrorKind::NotZip(why)));
        }
        let name = strip(&entries[index].name);
        let fail = |kind| fail(Some(&name), kind);
        let loc = Box::new(Member::open(&map, &entries[index]).map_err(fail)?);
        drop(entries);
        let Some(header::Elem::Scalar(dtype)) = loc.header.elem else {
            return Err(fail(NpzErrorKind::UnsupportedDtype(loc.header.descr)));
        };
        let &[nrows, ncols] = loc.shape.as_slice() else {
            return Err(fail(NpzErrorKind::NotTwoDimensional(loc.shape)));
        };
        let order = if loc.header.fortran_order { Order::Fortran } else { Order::C };
        let big_endian = loc.header.big_endian;

        Ok(NpzMatrix { path, member: name, map, loc, nrows, ncols, dtype, order, big_endian })
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
        self.loc.compressed
    }

    /// Whether the member's data is big-endian (e.g. dtype `'>f8'`).
    pub fn is_big_endian(&self) -> bool {
        self.big_endian
    }

    fn error(&self, kind: NpzErrorKind) -> NpzError {
        NpzError { path: self.path.clone(), member: Some(self.member.clone()), kind }
    }

    /// The member's bytes in the file as stored: the `.npy` bytes of a stored member.
    fn stored_bytes(&self) -> &[u8] {
        &self.map[self.loc.start..self.loc.start + self.loc.entry.compressed_size as usize]
    }

    /// Compares `found` with the CRC-32 the zip entry records.
    fn check_crc(&self, found: u32) -> Result<(), NpzError> {
        self.loc.check_crc(found).map_err(|kind| self.error(kind))
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
    /// the member only, not on `rows`. The view's bytes are not checked against the member's
    /// CRC-32: see [`verify_crc`](Self::verify_crc).
    ///
    /// C order: row stride `ncols`, column stride 1. Fortran order: row stride 1, column
    /// stride `nrows`.
    ///
    /// # Errors
    /// [`NpzErrorKind::DtypeMismatch`] if the member's dtype is not `T::DTYPE`, and
    /// [`NpzErrorKind::RowsOutOfRange`] unless `rows.start <= rows.end <= nrows`.
    pub fn view_rows<T: Scalar>(&self, rows: Range<usize>) -> Result<Option<MatRef<'_, T>>, NpzError> {
        self.check::<T>(&rows)?;
        if self.loc.compressed || self.needs_swap() {
            return Ok(None);
        }
        let (nrows, ncols) = (self.nrows, self.ncols);
        // The data is exactly the rest of the stored member (checked by `open`).
        let bytes = &self.stored_bytes()[self.loc.header_len..];
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
    /// a stream that stops after the last requested element, keeping only the requested rows
    /// as they arrive: the whole matrix is never held in memory, and nothing is allocated from
    /// the declared shape before the data is there.
    ///
    /// Reading all the rows (`0..nrows`) verifies the member's CRC-32 (over its every byte);
    /// so does any read of a compressed member that streams it to its end (rows up to the
    /// last, or a member smaller than one read chunk). Other reads verify nothing.
    ///
    /// # Errors
    /// [`NpzErrorKind::DtypeMismatch`] if the member's dtype is not `T::DTYPE`,
    /// [`NpzErrorKind::RowsOutOfRange`] unless `rows.start <= rows.end <= nrows`,
    /// [`NpzErrorKind::Crc`] if all rows are read and the member's bytes do not have its
    /// CRC-32, and for a compressed member [`NpzErrorKind::Truncated`] if the decompressed
    /// stream ends early or [`NpzErrorKind::Corrupt`] if it is corrupt.
    pub fn read_rows<T: Scalar>(&self, rows: Range<usize>) -> Result<Mat<T>, NpzError> {
        self.check::<T>(&rows)?;
        let whole = rows.start == 0 && rows.end == self.nrows;
        let (k, ncols) = (rows.end - rows.start, self.ncols);
        if !self.loc.compressed {
            let member = self.stored_bytes();
            if whole {
                self.check_crc(crc32fast::hash(member))?;
            }
            // The rows are in the map (the data's size was checked by `open`): the output's
            // size is bounded by the file's.
            let mut out = Mat::<T>::zeros(k, ncols);
            let order = self.order;
            self.copy_rows(&mut &member[self.loc.header_len..], &rows, |at, chunk: &[T]| match order {
                Order::C => {
                    let (mut i, mut j) = (at / ncols, at % ncols);
                    for &x in chunk {
                        out[(i, j)] = x;
                        j += 1;
                        if j == ncols {
                            (i, j) = (i + 1, 0);
                        }
                    }
                }
                Order::Fortran => {
                    let (j, i) = (at / k, at % k);
                    out.col_as_slice_mut(j)[i..i + chunk.len()].copy_from_slice(chunk);
                }
            })
            .map_err(|e| self.error(data_error(e)))?;
            return Ok(out);
        }
        let compressed = self.stored_bytes();
        let mut src = Inflate::new(compressed, self.loc.entry.size);
        // The rows as they arrive, in the member's order: grown with the data, never sized
        // from the declared shape.
        let mut arrived = Vec::<T>::new();
        src.skip(self.loc.header_len)
            .and_then(|()| self.copy_rows(&mut src, &rows, |_, chunk| arrived.extend_from_slice(chunk)))
            .map_err(|e| self.error(data_error(e)))?;
        // Rows that reach the end of the member stream it all (header and data fill the
        // member, `open` checked it): its CRC-32 is known then, whichever rows were kept.
        match src.crc_of_all() {
            Some(found) => self.check_crc(found)?,
            None if whole => return Err(self.error(NpzErrorKind::Truncated)),
            None => {}
        }
        Ok(match self.order {
            Order::C => MatRef::from_row_major_slice(&arrived, k, ncols).to_owned(),
            Order::Fortran => MatRef::from_column_major_slice(&arrived, k, ncols).to_owned(),
        })
    }

    /// Reads rows `rows` of the data from `src` (positioned at the start of the data), in
    /// chunks of at most [`CHUNK`] elements, swapping bytes when needed; hands each chunk to
    /// `emit` with the index of its first element in the member's order restricted to `rows`
    /// (row-major for C order, column-major for Fortran order).
    fn copy_rows<T: Scalar>(
        &self,
        src: &mut impl Source,
        rows: &Range<usize>,
        mut emit: impl FnMut(usize, &[T]),
    ) -> io::Result<()> {
        let size = size_of::<T>();
        let k = rows.end - rows.start;
        if k == 0 || self.ncols == 0 {
            return Ok(());
        }
        let swap = self.needs_swap().then(|| self.dtype.component_size());
        let mut buf = vec![T::zeroed(); CHUNK.min(k * self.ncols)];
        let mut at = 0;
        match self.order {
            Order::C => {
                src.skip(rows.start * self.ncols * size)?;
                read_chunks(src, &mut buf, k * self.ncols, swap, &mut at, &mut emit)
            }
            Order::Fortran => {
                src.skip(rows.start * size)?;
                for j in 0..self.ncols {
                    if j > 0 {
                        src.skip((self.nrows - k) * size)?;
                    }
                    read_chunks(src, &mut buf, k, swap, &mut at, &mut emit)?;
                }
                Ok(())
            }
        }
    }

    /// The number of bytes the zip entry's CRC-32 covers when the member is stored (its
    /// `.npy` header and data, as laid out in the file), `None` when it is deflated (then
    /// reading all rows with [`read_rows`](Self::read_rows) verifies it).
    ///
    /// Byte offsets of [`crc32_of`](Self::crc32_of) count from the member's first byte, so
    /// `0..span` is the whole member; ranks can split it into contiguous shares.
    pub fn crc_span(&self) -> Option<u64> {
        self.loc.crc_span()
    }

    /// The CRC-32 of bytes `range` of the stored member (offsets from its first byte; see
    /// [`crc_span`](Self::crc_span)), read through the map.
    ///
    /// # Errors
    /// [`NpzErrorKind::CrcRange`] if the member is deflated or `range` is not within
    /// `0..span`.
    pub fn crc32_of(&self, range: Range<u64>) -> Result<u32, NpzError> {
        self.loc.crc32_of(&self.map, range).map_err(|kind| self.error(kind))
    }

    /// Combines the CRC-32s of consecutive byte ranges, given as `(crc, len)` in order from byte
    /// 0 (each from [`crc32_of`](Self::crc32_of), possibly computed elsewhere, e.g. by another
    /// rank), and compares the result with the CRC-32 the member's zip entry records.
    ///
    /// # Errors
    /// [`NpzErrorKind::Crc`] (naming the path and member) if they differ: the member is
    /// damaged; [`NpzErrorKind::CrcRange`] if the member is deflated or the lengths do not add
    /// up to [`crc_span`](Self::crc_span).
    pub fn verify_crc(&self, parts: impl IntoIterator<Item = (u32, u64)>) -> Result<(), NpzError> {
        self.loc.verify_crc(parts).map_err(|kind| self.error(kind))
    }
}
