//! [`save`]: one matrix as a new `.npz`, written atomically.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use faer::MatRef;

use super::{NpzError, NpzErrorKind};
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

/// Writes the archive into `file` and flushes it to disk.
fn write<T: Scalar>(file: File, member: &str, mat: MatRef<'_, T>) -> io::Result<()> {
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
    let mut zip = zip::ZipWriter::new(io::BufWriter::new(file));
    let bytes = mat.nrows() * mat.ncols() * size_of::<T>() + 10 + header.len();
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
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
    let file = zip.finish().map_err(io::Error::other)?.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()
}
