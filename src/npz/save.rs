//! [`save`] (a dense matrix) and [`save_sparse`] (a CSR or CSC matrix, as scipy's `save_npz`),
//! each as a new `.npz` written atomically, its members stored and their data 64-byte aligned
//! so that readers (and ranks) map them in place.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use faer::sparse::{SparseColMatRef, SparseRowMatRef};
use faer::{Index, MatRef};
use npyz::WriterBuilder;

use super::{NpzError, NpzErrorKind, SparseIndex};
use crate::{Dtype, Scalar};

/// Writes `mat` as the only member `member` (numpy's key, without `.npy`) of
/// a new `.npz` file at `path`, that numpy reads with `np.load`: stored (not
/// compressed), in Fortran order, with the data aligned to 64 bytes in the
/// file, so that [`NpzMatrix::view_rows`](super::NpzMatrix::view_rows) (and an
/// `MpiLop`, feature `mpi`) can view it in place without a copy.
///
/// Atomic: the file is written under a temporary name in the same directory,
/// flushed to disk, then renamed over `path`. Readers that mapped the old file
/// (an [`NpzMatrix`](super::NpzMatrix) and its views) keep the old contents,
/// new readers see the whole new file, and a failed save leaves the old file
/// as it was and removes the temporary one. The new file has default
/// permissions, not the replaced file's.
///
/// # Errors
/// [`NpzErrorKind::Io`] if the file cannot be written or renamed over `path`
/// (e.g. `path` is a directory).
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
    let path = path.as_ref();
    let error =
        |e: io::Error| NpzError { path: path.to_owned(), member: Some(member.to_owned()), kind: NpzErrorKind::Io(e) };
    let (temp, file) = temporary(path).map_err(error)?;
    let written = write(file, member, mat).and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(error(e));
    }
    Ok(())
}

/// [`save`] for a matrix that arrives in pieces: member `member` of shape
/// `nrows × ncols`, in C order (row by row), its data written by `rows`
/// into the writer it is given, row after row (`nrows · ncols` elements of
/// `T`, as bytes in the machine's order); what a distributed matrix's rows,
/// gathered one block at a time, are written with. Atomic, as [`save`].
///
/// # Errors
/// As [`save`], and `rows`'s own error, or [`NpzErrorKind::Io`] if it wrote
/// another number of bytes than the shape's.
#[cfg(feature = "mpi")]
pub(crate) fn save_rows<T: Scalar>(
    path: &Path,
    member: &str,
    (m, n): (usize, usize),
    rows: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), NpzError> {
    let error =
        |e: io::Error| NpzError { path: path.to_owned(), member: Some(member.to_owned()), kind: NpzErrorKind::Io(e) };
    let (temp, file) = temporary(path).map_err(error)?;
    let written = (|| {
        let mut zip = zip::ZipWriter::new(io::BufWriter::new(file));
        let len = m * n * size_of::<T>();
        start_member(&mut zip, member, &descr_of(T::DTYPE), npyz::Order::C, &[m as u64, n as u64], len)?;
        let mut counted = Counted { inner: &mut zip, bytes: 0 };
        rows(&mut counted)?;
        if counted.bytes != len {
            return Err(io::Error::other(format!(
                "{} bytes of data written for a {m}×{n} member of {len}",
                counted.bytes
            )));
        }
        finish(zip)
    })()
    .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(error(e));
    }
    Ok(())
}

/// A writer that counts what goes through.
#[cfg(feature = "mpi")]
struct Counted<'a, W> {
    inner: &'a mut W,
    bytes: usize,
}

#[cfg(feature = "mpi")]
impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A new file next to `path`, named `.{name}.{pid}.{n}.tmp`.
fn temporary(path: &Path) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?
        .to_string_lossy();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match File::create_new(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// numpy's descr of `T` in the machine's byte order.
fn descr_of(dtype: Dtype) -> String {
    let endian = if cfg!(target_endian = "little") { '<' } else { '>' };
    let code = match dtype {
        Dtype::Float32 => "f4",
        Dtype::Float64 => "f8",
        Dtype::Complex64 => "c8",
        Dtype::Complex128 => "c16",
    };
    format!("{endian}{code}")
}

/// Starts member `name` (`.npy` added) of `zip`: stored, aligned to 64 bytes in the file, with
/// the `.npy` preamble and header npyz writes (`descr` such as `<f8`, `order`, `shape`), which it
/// pads to a multiple of 64 bytes as numpy does, so that the data starts 64-byte aligned in the
/// file. `data_len` is the number of data bytes that will follow (written by the caller: npyz's
/// element writer would go one element at a time). npyz's own `.npz` writer (feature `npz`) is
/// not used: it is built on zip 0.6, a second zip beside the 7.x that aligns members here.
fn start_member<W: Write + io::Seek>(
    zip: &mut zip::ZipWriter<W>,
    name: &str,
    descr: &str,
    order: npyz::Order,
    shape: &[u64],
    data_len: usize,
) -> io::Result<()> {
    let dtype = npyz::DType::Plain(descr.parse().map_err(io::Error::other)?);
    let mut header = Vec::new();
    npyz::WriteOptions::new_header_only()
        .dtype(dtype)
        .shape(shape)
        .order(order)
        .writer(&mut header)
        .write_header_only()?;
    debug_assert!(header.len().is_multiple_of(64), "npyz pads the header to 64 bytes");
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64)
        .large_file((data_len + header.len()) as u64 >= u32::MAX as u64);
    zip.start_file(format!("{name}.npy"), options).map_err(io::Error::other)?;
    zip.write_all(&header)
}

/// Finishes the archive and flushes it to disk.
fn finish(zip: zip::ZipWriter<io::BufWriter<File>>) -> io::Result<()> {
    let file = zip.finish().map_err(io::Error::other)?.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()
}

/// Writes the archive into `file` and flushes it to disk.
fn write<T: Scalar>(file: File, member: &str, mat: MatRef<'_, T>) -> io::Result<()> {
    let mut zip = zip::ZipWriter::new(io::BufWriter::new(file));
    let (m, n) = (mat.nrows(), mat.ncols());
    start_member(
        &mut zip,
        member,
        &descr_of(T::DTYPE),
        npyz::Order::Fortran,
        &[m as u64, n as u64],
        m * n * size_of::<T>(),
    )?;
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
    finish(zip)
}

/// A faer sparse matrix view to save with [`save_sparse`]: CSR or CSC, made with [`From`] from
/// faer's [`SparseRowMatRef`] or [`SparseColMatRef`].
#[derive(Debug)]
pub enum SparseRef<'a, I: Index, T> {
    /// Compressed sparse rows.
    Csr(SparseRowMatRef<'a, I, T>),
    /// Compressed sparse columns.
    Csc(SparseColMatRef<'a, I, T>),
}

impl<'a, I: Index, T> From<SparseRowMatRef<'a, I, T>> for SparseRef<'a, I, T> {
    fn from(m: SparseRowMatRef<'a, I, T>) -> Self {
        SparseRef::Csr(m)
    }
}

impl<'a, I: Index, T> From<SparseColMatRef<'a, I, T>> for SparseRef<'a, I, T> {
    fn from(m: SparseColMatRef<'a, I, T>) -> Self {
        SparseRef::Csc(m)
    }
}

/// Writes the sparse matrix `mat` (a faer CSR or CSC view, see [`SparseRef`]) as a new scipy
/// sparse `.npz` at `path`, that `scipy.sparse.load_npz` reads as a `csr_matrix` or
/// `csc_matrix`: the members `indices`, `indptr`, `format`, `shape`, `data` in the order and
/// with the dtypes `scipy.sparse.save_npz(path, a, compressed=False)` writes (indices int32
/// for `u32`, int64 for `u64`; `shape` int64), but each member's data aligned to 64 bytes in
/// the file, so that [`SparseNpz`](super::SparseNpz) views `indices` and `data` in place.
/// Entries are written in faer's order (unsorted indices stay unsorted); a view with per-row
/// (column) counts is written compressed, `indptr` starting at 0.
///
/// Atomic, as [`save`]: written under a temporary name next to `path`, flushed, then renamed
/// over it.
///
/// # Errors
/// [`NpzErrorKind::Io`] if the file cannot be written or renamed over `path`, or (kind
/// `InvalidInput`) if the matrix holds more entries than its index type's signed maximum.
///
/// # Examples
/// ```no_run
/// use faer::sparse::SparseRowMat;
/// use lazylinop::npz::{SparseNpz, save_sparse};
/// let a = SparseRowMat::<u32, f64>::try_new_from_triplets(3, 4, &[faer::sparse::Triplet::new(0, 1, 2.0)]).unwrap();
/// save_sparse("a.npz", a.as_ref()).unwrap();
/// let part = SparseNpz::open("a.npz").unwrap().part::<f64, u32>(0..3).unwrap();
/// assert!(part.is_mapped());
/// ```
pub fn save_sparse<'a, T: Scalar, I: SparseIndex>(
    path: impl AsRef<Path>,
    mat: impl Into<SparseRef<'a, I, T>>,
) -> Result<(), NpzError> {
    let path = path.as_ref();
    let error = |e: io::Error| NpzError { path: path.to_owned(), member: None, kind: NpzErrorKind::Io(e) };
    let (temp, file) = temporary(path).map_err(error)?;
    let written = write_sparse(file, mat.into()).and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(error(e));
    }
    Ok(())
}

/// Writes the sparse archive into `file` and flushes it to disk.
fn write_sparse<T: Scalar, I: SparseIndex>(file: File, mat: SparseRef<'_, I, T>) -> io::Result<()> {
    let (format, nrows, ncols, ptr, nnz, idx, val) = match mat {
        SparseRef::Csr(m) => {
            let (s, val) = m.parts();
            let (nrows, ncols, ptr, nnz, idx) = s.parts();
            ("csr", nrows, ncols, ptr, nnz, idx, val)
        }
        SparseRef::Csc(m) => {
            let (s, val) = m.parts();
            let (nrows, ncols, ptr, nnz, idx) = s.parts();
            ("csc", nrows, ncols, ptr, nnz, idx, val)
        }
    };
    let major = ptr.len() - 1;
    // The entries of major index k: `start(k)..start(k) + count(k)` of `idx` and `val`.
    let count = |k: usize| match nnz {
        Some(nnz) => nnz[k].zx(),
        None => ptr[k + 1].zx() - ptr[k].zx(),
    };
    let ranges = || (0..major).map(|k| ptr[k].zx()..ptr[k].zx() + count(k));
    let total: usize = (0..major).map(count).sum();
    if total as u64 > I::DTYPE.max() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{total} stored entries do not fit {} indices", I::DTYPE),
        ));
    }
    let index_descr = format!("{}i{}", if cfg!(target_endian = "little") { '<' } else { '>' }, size_of::<I>());
    let mut zip = zip::ZipWriter::new(io::BufWriter::new(file));

    let c = npyz::Order::C;
    start_member(&mut zip, "indices", &index_descr, c, &[total as u64], total * size_of::<I>())?;
    for r in ranges() {
        zip.write_all(bytemuck::cast_slice(&idx[r]))?;
    }
    start_member(&mut zip, "indptr", &index_descr, c, &[major as u64 + 1], (major + 1) * size_of::<I>())?;
    let mut at = 0usize;
    zip.write_all(bytemuck::bytes_of(&I::truncate(0)))?;
    for k in 0..major {
        at += count(k);
        zip.write_all(bytemuck::bytes_of(&I::truncate(at)))?;
    }
    start_member(&mut zip, "format", "|S3", c, &[], 3)?;
    zip.write_all(format.as_bytes())?;
    let shape_descr = format!("{}i8", if cfg!(target_endian = "little") { '<' } else { '>' });
    start_member(&mut zip, "shape", &shape_descr, c, &[2], 16)?;
    zip.write_all(&(nrows as i64).to_ne_bytes())?;
    zip.write_all(&(ncols as i64).to_ne_bytes())?;
    start_member(&mut zip, "data", &descr_of(T::DTYPE), c, &[total as u64], total * size_of::<T>())?;
    for r in ranges() {
        zip.write_all(bytemuck::cast_slice(&val[r]))?;
    }
    finish(zip)
}
