//! scipy sparse matrices (`scipy.sparse.save_npz`), read by shares of their nonzeros: see
//! [`SparseNpz`].

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use faer::Index;
use faer::sparse::{SparseColMatRef, SparseRowMatRef, SymbolicSparseColMatRef, SymbolicSparseRowMatRef};
use memmap2::Mmap;

use super::header::Elem;
use super::read::{Inflate, Source, data_error, swap_bytes};
use super::{CHUNK, Member, NpzError, NpzErrorKind, archive, map_file};
use crate::sparse::{Format, SparseView};
use crate::{Dtype, Scalar};

/// The dtype of a sparse file's `indices` and `indptr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexDtype {
    /// numpy's int32, read as `u32`.
    Int32,
    /// numpy's int64, read as `u64`.
    Int64,
}

impl IndexDtype {
    /// numpy's name: `int32` or `int64`.
    pub fn name(self) -> &'static str {
        match self {
            IndexDtype::Int32 => "int32",
            IndexDtype::Int64 => "int64",
        }
    }

    /// The size of one index in bytes.
    pub fn size(self) -> usize {
        match self {
            IndexDtype::Int32 => 4,
            IndexDtype::Int64 => 8,
        }
    }

    /// The largest value of the signed type.
    pub(crate) fn max(self) -> u64 {
        match self {
            IndexDtype::Int32 => i32::MAX as u64,
            IndexDtype::Int64 => i64::MAX as u64,
        }
    }
}

impl fmt::Display for IndexDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// The faer index types a sparse file's indices are read as: `u32` for int32, `u64` for
/// int64 (the same bytes; negative values are refused when read). Sealed.
pub trait SparseIndex: Index + bytemuck::Pod + sealed::Sealed {
    /// The file dtype read as this type.
    const DTYPE: IndexDtype;

    /// The value as the file's signed integer (for error messages).
    fn signed(self) -> i64;
}

impl SparseIndex for u32 {
    const DTYPE: IndexDtype = IndexDtype::Int32;

    fn signed(self) -> i64 {
        self as i32 as i64
    }
}

impl SparseIndex for u64 {
    const DTYPE: IndexDtype = IndexDtype::Int64;

    fn signed(self) -> i64 {
        self as i64
    }
}

/// What an `.npz` file holds, as [`detect`] tells from its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NpzLayout {
    /// Arrays: open one with [`NpzMatrix::open`](super::NpzMatrix::open).
    Dense,
    /// A scipy sparse matrix: open it with [`SparseNpz::open`].
    Sparse,
}

/// Whether the scipy member names say the archive is a sparse matrix: a `format` member, or
/// both `indptr` and `indices`.
fn looks_sparse(names: &[String]) -> bool {
    let has = |n: &str| names.iter().any(|m| m == n);
    has("format") || (has("indptr") && has("indices"))
}

fn strip(name: &str) -> String {
    name.strip_suffix(".npy").unwrap_or(name).to_string()
}

/// Tells whether the `.npz` file at `path` holds a scipy sparse matrix or dense arrays, from
/// its member names only (reads the zip directory, no array): [`NpzLayout::Sparse`] if it has
/// a `format` member, or both `indptr` and `indices` (then [`SparseNpz::open`] says what is
/// wrong with it if anything is), else [`NpzLayout::Dense`].
///
/// # Errors
/// [`NpzErrorKind::Io`], [`NpzErrorKind::NotZip`] or [`NpzErrorKind::Truncated`] as
/// [`NpzMatrix::open`](super::NpzMatrix::open), and [`NpzErrorKind::Empty`] if the archive holds
/// no `.npy` member.
pub fn detect(path: impl AsRef<Path>) -> Result<NpzLayout, NpzError> {
    let path = path.as_ref();
    let fail = |kind| NpzError { path: path.to_path_buf(), member: None, kind };
    let map = map_file(path).map_err(|e| fail(NpzErrorKind::Io(e)))?;
    let entries = archive::entries(&map).map_err(fail)?;
    let names: Vec<String> = entries.iter().filter(|e| e.name.ends_with(".npy")).map(|e| strip(&e.name)).collect();
    if names.is_empty() {
        return Err(fail(NpzErrorKind::Empty));
    }
    Ok(if looks_sparse(&names) { NpzLayout::Sparse } else { NpzLayout::Dense })
}

/// One 1-D (or 0-d) member of a sparse file.
#[derive(Debug)]
struct Array {
    name: &'static str,
    loc: Member,
    elem: Elem,
    /// Its number of elements.
    len: usize,
}

/// A scipy sparse matrix file (CSR or CSC), opened for reading shares of its nonzeros.
///
/// Owns a read-only memory map of the whole file (shared with the mapped [`SparsePart`]s made
/// from it), the `format` and `shape`, and the locations and dtypes of `indptr`, `indices`
/// and `data`; reads none of them until asked. `Send + Sync`.
///
/// A sparse `.npz` holds the members `indices`, `indptr` (int32 or int64, the same for both),
/// `format` (a 0-d bytes array, `b'csr'` or `b'csc'`), `shape` (two int64) and `data` (1-D),
/// and for a `csr_array`/`csc_array` a sixth, `_is_array`. CSR stores the entries of row `i` at
/// positions `indptr[i]..indptr[i + 1]` of `indices` (their columns) and `data`; CSC the same
/// by columns. Here the *major* dimension is the one `indptr` runs over (rows for CSR, columns
/// for CSC) and the *minor* one the other.
///
/// The steps of a distributed reader, each rank doing the same:
/// 1. [`detect`] tells a sparse file from a dense one by its members; [`SparseNpz::open`] maps
///    the file, reads `format` and `shape`, and checks the members' dtypes, dimensions and
///    lengths, reading none of the arrays' data;
/// 2. [`SparseNpz::indptr`] reads the whole `indptr` (checked: starts at 0, never decreases,
///    ends at the number of stored entries), and [`split_nnz`] cuts the major indices into
///    contiguous blocks of about equal numbers of nonzeros, the same on every rank;
/// 3. [`SparseNpz::part`] reads one block: its `indptr` entries and only its share of
///    `indices` and `data`, checked (every index below the minor dimension), as a
///    [`SparsePart`] that faer's sparse views ([`SparsePart::as_csr`],
///    [`SparsePart::as_csc`]) and the crate's kernels read.
///
/// ```no_run
/// use lazylinop::npz::{SparseNpz, split_nnz};
///
/// let npz = SparseNpz::open("matrix.npz")?; // written by scipy.sparse.save_npz
/// let (rank, ranks) = (0, 2);
/// // An int32 file is read as u32, an int64 one as u64: see `index_dtype()`.
/// let indptr = npz.indptr::<u32>()?;
/// let rows = split_nnz(&indptr, ranks)[rank].clone();
/// let part = npz.part::<f64, u32>(rows)?; // views where possible, else copies of this share
/// let local = part.as_csr().expect("a CSR file"); // faer's view of this rank's rows
/// # let _ = local;
/// # Ok::<(), lazylinop::npz::NpzError>(())
/// ```
///
/// # Zero-copy
/// A part's `indices` and `data` are views into the file's map when their member is stored
/// (not compressed), in the machine's byte order and aligned for the element type
/// ([`SparsePart::is_mapped`]); otherwise they are a copy of the part's share only, read from
/// the map or by streaming the deflated member (stopping after the share, allocating as the
/// data arrives). scipy's own stored files (`np.savez`) do not align members, so expect the
/// copy there; [`save_sparse`](super::save_sparse) writes aligned members. The part's `indptr`
/// is always a copy, rebased to start at 0 ([`SparsePart::offset`] gives the file position of
/// its first entry): faer's sparse views index `indices` from the `indptr` values, so viewing a
/// share in place needs `indptr` relative to the share; it holds one entry per major index of
/// the part, a fraction of the share's `indices`.
///
/// # Index types
/// The file's index dtype is read as an unsigned faer [`Index`]: int32 as `u32`, int64 as `u64`
/// ([`SparseIndex`]), the same bytes reinterpreted, so that a stored member can be viewed in
/// place. A negative entry becomes a value of at least 2³¹ (2⁶³), which the checks refuse:
/// every `indptr` entry must be at most the number of stored entries, every index below the
/// minor dimension, and both dimensions at most the signed maximum of the index type (faer's
/// own bound). Another index type than the file's is an error
/// ([`NpzErrorKind::IndexMismatch`]): dispatch on [`SparseNpz::index_dtype`].
///
/// # What is refused
/// Everything scipy refuses, and more, where scipy would read something else than the file
/// says or cast silently: a `format` other than csr and csc (coo, bsr, dia: convert them with
/// `.tocsr()`), indices of another dtype than int32 and int64 (scipy casts int8 and float64
/// indices), `indices` and `indptr` of different dtypes (scipy casts), `data` of a dtype other
/// than the four [`Scalar`] ones (scipy makes an integer or string matrix), an `indptr` whose
/// last entry is below the number of stored entries (scipy drops the rest). Unsorted and
/// repeated indices within a row are accepted, as scipy and faer's unsorted views accept them:
/// repeated entries add up in products.
///
/// # What the CRC-32 covers
/// [`SparseNpz::open`] verifies the CRC-32 of `format` and `shape`, which it reads whole.
/// [`SparseNpz::part`] of all the major indices verifies those of `indptr`, `indices` and
/// `data`; a part of some verifies the deflated members it streams to their end (the last
/// part's), and nothing else. Ranks holding parts can check a stored member together with [`SparseNpz::crc_span`], [`SparseNpz::crc32_of`] and
/// [`SparseNpz::verify_crc`], as for [`NpzMatrix`](super::NpzMatrix).
///
/// As for [`NpzMatrix`](super::NpzMatrix), the file must not be modified in place or truncated
/// while a [`SparseNpz`] or a mapped [`SparsePart`] of it lives (see the module's "Files changed
/// while mapped"): a part's views are checked when the part is made, and checked again by
/// [`SparsePart::view`] and [`SparsePart::as_csr`] (faer's checked constructor). A product on
/// [`SparsePart::view`] also checks every index it uses, so a change even during a product
/// panics; faer's view ([`SparsePart::as_csr`]) carries no such mark, and faer's products and
/// this crate's kernels read its indices unchecked: a change after it is made reads out of
/// bounds.
pub struct SparseNpz {
    path: PathBuf,
    map: Arc<Mmap>,
    format: Format,
    nrows: usize,
    ncols: usize,
    index_dtype: IndexDtype,
    dtype: Dtype,
    indptr: Array,
    indices: Array,
    data: Array,
}

impl fmt::Debug for SparseNpz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SparseNpz")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("shape", &(self.nrows, self.ncols))
            .field("nnz", &self.nnz())
            .field("dtype", &self.dtype)
            .field("index_dtype", &self.index_dtype)
            .finish_non_exhaustive()
    }
}

/// The members of a sparse file, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SparseMember {
    /// `indptr`: where each major index's entries start.
    Indptr,
    /// `indices`: the minor index of each stored entry.
    Indices,
    /// `data`: the value of each stored entry.
    Data,
}

/// A range of a 1-D member's elements: a view into the map or a copy.
enum Slice<X> {
    /// Bytes `range` of the map, aligned for `X` (checked when made).
    Mapped {
        map: Arc<Mmap>,
        bytes: Range<usize>,
        kind: PhantomData<X>,
    },
    Owned(Vec<X>),
}

impl<X: bytemuck::Pod> Slice<X> {
    fn get(&self) -> &[X] {
        match self {
            Slice::Mapped { map, bytes, .. } => {
                bytemuck::try_cast_slice(&map[bytes.clone()]).expect("a mapped slice's alignment is checked when made")
            }
            Slice::Owned(v) => v,
        }
    }
}

impl<X> fmt::Debug for Slice<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slice::Mapped { bytes, .. } => write!(f, "Mapped({bytes:?})"),
            Slice::Owned(v) => write!(f, "Owned({} elements)", v.len()),
        }
    }
}

impl SparseNpz {
    /// Opens the scipy sparse `.npz` file at `path` (`scipy.sparse.save_npz`, stored or
    /// compressed, a sparse matrix or array). Maps the file, reads and checks `format` (csr or
    /// csc), `shape` (two non-negative int64) and the CRC-32 of both, and checks the headers of
    /// `indptr`, `indices` and `data` (1-D, dtypes, lengths consistent with `shape` and with
    /// each other), reading none of their data.
    ///
    /// # Errors
    /// As [`NpzMatrix::open`](super::NpzMatrix::open) for the file and each member (I/O, zip,
    /// truncation, compression, header, CRC of `format` and `shape`), and
    /// [`NpzErrorKind::NotSparse`] if the archive is no sparse file (see [`detect`]),
    /// [`NpzErrorKind::MemberMissing`] (naming the member) if one of the five is missing,
    /// [`NpzErrorKind::NotZip`] if one is given twice, [`NpzErrorKind::SparseFormat`] for
    /// another format than csr and csc, [`NpzErrorKind::SparseMember`] if `format`, `shape`,
    /// `indptr`, `indices` or `data` is not the kind of array its role requires or a
    /// dimension exceeds the index type's signed maximum, [`NpzErrorKind::IndexDtype`] and
    /// [`NpzErrorKind::IndexDtypeMismatch`] for indices not both int32 or both int64,
    /// [`NpzErrorKind::UnsupportedDtype`] for `data` of another dtype than the four
    /// [`Scalar`] ones, [`NpzErrorKind::IndptrLength`] if `indptr` does not have one entry
    /// more than the major dimension, [`NpzErrorKind::LengthMismatch`] if `indices` and
    /// `data` differ in length.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NpzError> {
        let path = path.as_ref().to_path_buf();
        let fail = |member: Option<&str>, kind| NpzError { path: path.clone(), member: member.map(Into::into), kind };
        let map = map_file(&path).map_err(|e| fail(None, NpzErrorKind::Io(e)))?;
        let entries = archive::entries(&map).map_err(|kind| fail(None, kind))?;
        let names: Vec<String> = entries.iter().map(|e| strip(&e.name)).collect();
        if !looks_sparse(&names) {
            return Err(fail(None, NpzErrorKind::NotSparse { members: names }));
        }
        let open = |name: &'static str| -> Result<Member, NpzError> {
            let fail = |kind| fail(Some(name), kind);
            let file_name = format!("{name}.npy");
            let mut found = entries.iter().filter(|e| e.name == file_name || e.name == name);
            let entry = found.next().ok_or_else(|| fail(NpzErrorKind::MemberMissing { available: names.clone() }))?;
            if found.next().is_some() {
                return Err(fail(NpzErrorKind::NotZip(format!("the archive holds two members named {name}"))));
            }
            Member::open(&map, entry).map_err(fail)
        };
        let member_error = |name: &str, why: String| fail(Some(name), NpzErrorKind::SparseMember(why));

        // `format` first: a coo or dia file has no `indptr`, and must be named as such.
        let format = open("format")?;
        let (Some(Elem::Bytes(n)), true) = (format.header.elem, format.shape.is_empty()) else {
            let why = format!("format has dtype {} and shape {:?}, not 0-d bytes", format.header.descr, format.shape);
            return Err(member_error("format", why));
        };
        let bytes = read_whole(&map, &format, n).map_err(|kind| fail(Some("format"), kind))?;
        // numpy's bytes strip trailing NULs.
        let name = String::from_utf8_lossy(&bytes).trim_end_matches('\0').to_string();
        let format = match name.as_str() {
            "csr" => Format::Csr,
            "csc" => Format::Csc,
            _ => return Err(fail(Some("format"), NpzErrorKind::SparseFormat(name))),
        };

        let shape = open("shape")?;
        let dims = match (shape.header.elem, shape.shape.as_slice()) {
            (Some(Elem::Int(t)), [2]) => {
                let bytes = read_whole(&map, &shape, 2 * t.size()).map_err(|kind| fail(Some("shape"), kind))?;
                let swap = shape.needs_swap();
                let dims: Vec<i64> = bytes
                    .chunks_exact(t.size())
                    .map(|c| {
                        let mut c = c.to_vec();
                        if swap {
                            c.reverse();
                        }
                        match t {
                            IndexDtype::Int32 => i32::from_ne_bytes(c[..].try_into().unwrap_or_default()) as i64,
                            IndexDtype::Int64 => i64::from_ne_bytes(c[..].try_into().unwrap_or_default()),
                        }
                    })
                    .collect();
                dims
            }
            _ => {
                let why = format!("shape has dtype {} and shape {:?}, not 2 integers", shape.header.descr, shape.shape);
                return Err(member_error("shape", why));
            }
        };
        let to_dim = |d: i64| usize::try_from(d).ok().filter(|&d| d <= isize::MAX as usize);
        let (Some(nrows), Some(ncols)) = (to_dim(dims[0]), to_dim(dims[1])) else {
            return Err(member_error("shape", format!("shape is ({}, {}): negative", dims[0], dims[1])));
        };

        let one_d = |loc: Member, name: &'static str| -> Result<Array, NpzError> {
            let Some(elem) = loc.header.elem else {
                let kind = match name {
                    "data" => NpzErrorKind::UnsupportedDtype(loc.header.descr),
                    _ => NpzErrorKind::IndexDtype(loc.header.descr),
                };
                return Err(fail(Some(name), kind));
            };
            let &[len] = loc.shape.as_slice() else {
                return Err(member_error(name, format!("{name} has shape {:?}, not 1-D", loc.shape)));
            };
            Ok(Array { name, loc, elem, len })
        };
        let indptr = one_d(open("indptr")?, "indptr")?;
        let indices = one_d(open("indices")?, "indices")?;
        let data = one_d(open("data")?, "data")?;
        let index_of = |a: &Array| match a.elem {
            Elem::Int(t) => Ok(t),
            _ => Err(fail(Some(a.name), NpzErrorKind::IndexDtype(a.loc.header.descr.clone()))),
        };
        let (t_indptr, t_indices) = (index_of(&indptr)?, index_of(&indices)?);
        if t_indptr != t_indices {
            return Err(fail(None, NpzErrorKind::IndexDtypeMismatch { indices: t_indices, indptr: t_indptr }));
        }
        let Elem::Scalar(dtype) = data.elem else {
            return Err(fail(Some("data"), NpzErrorKind::UnsupportedDtype(data.loc.header.descr.clone())));
        };
        let major = match format {
            Format::Csr => nrows,
            Format::Csc => ncols,
        };
        if indptr.len != major + 1 {
            return Err(fail(Some("indptr"), NpzErrorKind::IndptrLength { found: indptr.len, expected: major + 1 }));
        }
        if indices.len != data.len {
            return Err(fail(None, NpzErrorKind::LengthMismatch { indices: indices.len, data: data.len }));
        }
        let max = t_indices.max();
        if nrows as u64 > max || ncols as u64 > max || data.len as u64 > max {
            let why =
                format!("shape ({nrows}, {ncols}) with {} entries exceeds what {t_indices} indices address", data.len);
            return Err(member_error("shape", why));
        }
        drop(entries);
        Ok(SparseNpz {
            path,
            map: Arc::new(map),
            format,
            nrows,
            ncols,
            index_dtype: t_indices,
            dtype,
            indptr,
            indices,
            data,
        })
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// CSR or CSC.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The shape `(nrows, ncols)`, from the `shape` member.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// The major dimension: rows for CSR, columns for CSC (`indptr` has one entry more).
    pub fn major(&self) -> usize {
        match self.format {
            Format::Csr => self.nrows,
            Format::Csc => self.ncols,
        }
    }

    /// The minor dimension: columns for CSR, rows for CSC (every index is below it).
    pub fn minor(&self) -> usize {
        match self.format {
            Format::Csr => self.ncols,
            Format::Csc => self.nrows,
        }
    }

    /// The number of stored entries (the length of `indices` and `data`, repeated entries
    /// counted each time).
    pub fn nnz(&self) -> usize {
        self.data.len
    }

    /// The dtype of `data`.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The dtype of `indices` and `indptr`.
    pub fn index_dtype(&self) -> IndexDtype {
        self.index_dtype
    }

    /// Whether the member is compressed (deflated, as by `save_npz(..., compressed=True)`).
    pub fn is_compressed(&self, member: SparseMember) -> bool {
        self.array(member).loc.compressed
    }

    fn array(&self, member: SparseMember) -> &Array {
        match member {
            SparseMember::Indptr => &self.indptr,
            SparseMember::Indices => &self.indices,
            SparseMember::Data => &self.data,
        }
    }

    fn error(&self, member: Option<&str>, kind: NpzErrorKind) -> NpzError {
        NpzError { path: self.path.clone(), member: member.map(Into::into), kind }
    }

    fn check_index<I: SparseIndex>(&self) -> Result<(), NpzError> {
        if I::DTYPE != self.index_dtype {
            let kind = NpzErrorKind::IndexMismatch { found: self.index_dtype, expected: I::DTYPE };
            return Err(self.error(Some("indices"), kind));
        }
        Ok(())
    }

    /// Elements `range` of `a` (checked to be within it): a view when the member is stored,
    /// native-endian and aligned for `X`, else a copy of just those. With `crc`, `range` must
    /// be all the elements, and the member's CRC-32 is verified; a deflated member read to its
    /// end (streamed whole) is verified in any case.
    fn read<X: bytemuck::Pod>(&self, a: &Array, range: Range<usize>, crc: bool) -> Result<Slice<X>, NpzError> {
        debug_assert!(size_of::<X>() == a.elem.size() && range.start <= range.end && range.end <= a.len);
        let fail = |kind| self.error(Some(a.name), kind);
        let size = size_of::<X>();
        let swap = a.loc.needs_swap().then(|| a.elem.component_size());
        let n = range.end - range.start;
        if !a.loc.compressed {
            let member = a.loc.stored_bytes(&self.map);
            if crc {
                a.loc.check_crc(crc32fast::hash(member)).map_err(fail)?;
            }
            let data = &member[a.loc.header_len..];
            let bytes = &data[range.start * size..range.end * size];
            if swap.is_none() && bytemuck::try_cast_slice::<u8, X>(bytes).is_ok() {
                let at = a.loc.start + a.loc.header_len + range.start * size;
                return Ok(Slice::Mapped { map: self.map.clone(), bytes: at..at + n * size, kind: PhantomData });
            }
            // Within the map: the copy's size is bounded by the file's.
            let mut out = vec![X::zeroed(); n];
            let out_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
            out_bytes.copy_from_slice(bytes);
            if let Some(c) = swap {
                swap_bytes(out_bytes, c);
            }
            return Ok(Slice::Owned(out));
        }
        let mut src = Inflate::new(a.loc.stored_bytes(&self.map), a.loc.entry.size);
        // Grown as the data arrives, never sized from the header.
        let mut out = Vec::<X>::new();
        let mut buf = vec![X::zeroed(); CHUNK.min(n)];
        let mut at = 0;
        src.skip(a.loc.header_len + range.start * size)
            .and_then(|()| {
                super::read_chunks(&mut src, &mut buf, n, swap, &mut at, &mut |_, chunk| out.extend_from_slice(chunk))
            })
            .map_err(|e| fail(data_error(e)))?;
        // A deflated member streamed to its end is verified, whoever asked: it costs nothing more.
        if crc || range.end == a.len {
            let found = src.crc_of_all().ok_or_else(|| fail(NpzErrorKind::Truncated))?;
            a.loc.check_crc(found).map_err(fail)?;
        }
        Ok(Slice::Owned(out))
    }

    /// Checks `indptr` entries `first..first + ptr.len()` of the file: non-decreasing, at most
    /// the number of stored entries, the first 0 and the last that number.
    fn check_indptr<I: SparseIndex>(&self, ptr: &[I], first: usize) -> Result<(), NpzError> {
        let nnz = self.nnz();
        let wrong = |k: usize, why| {
            self.error(Some("indptr"), NpzErrorKind::Indptr { at: first + k, value: ptr[k].signed(), why })
        };
        if first == 0 && ptr.first().is_some_and(|v| v.zx() != 0) {
            return Err(wrong(0, "the first entry must be 0"));
        }
        for (k, &v) in ptr.iter().enumerate() {
            if v.signed() < 0 {
                return Err(wrong(k, "negative"));
            }
            if v.zx() > nnz {
                return Err(wrong(k, "exceeds the number of stored entries (the length of indices and data)"));
            }
            if k > 0 && v < ptr[k - 1] {
                return Err(wrong(k, "decreases"));
            }
        }
        if first + ptr.len() == self.indptr.len && ptr.last().is_some_and(|v| v.zx() != nnz) {
            return Err(wrong(
                ptr.len() - 1,
                "the last entry must be the number of stored entries (the length of indices and data)",
            ));
        }
        Ok(())
    }

    /// The whole `indptr` (`major() + 1` entries), checked: it starts at 0, never decreases,
    /// and ends at [`nnz`](Self::nnz). Borrowed from the map when the member is stored,
    /// native-endian and aligned (its pages are read, not copied), else a copy. Verifies its
    /// CRC-32. What [`split_nnz`] needs, and the same on every rank.
    ///
    /// # Errors
    /// [`NpzErrorKind::IndexMismatch`] if `I::DTYPE` is not the file's index dtype,
    /// [`NpzErrorKind::Indptr`] for an entry out of place, [`NpzErrorKind::Crc`] if the
    /// member is damaged, [`NpzErrorKind::Truncated`] or [`NpzErrorKind::Corrupt`] for a
    /// deflated member that does not inflate to its size.
    pub fn indptr<I: SparseIndex>(&self) -> Result<Cow<'_, [I]>, NpzError> {
        self.check_index::<I>()?;
        let all = self.read::<I>(&self.indptr, 0..self.indptr.len, true)?;
        self.check_indptr(all.get(), 0)?;
        Ok(match all {
            Slice::Owned(v) => Cow::Owned(v),
            Slice::Mapped { bytes, .. } => Cow::Borrowed(
                bytemuck::try_cast_slice(&self.map[bytes]).expect("a mapped slice's alignment is checked when made"),
            ),
        })
    }

    /// [`split_nnz`] without reading the whole `indptr` when it is stored: the major indices cut
    /// into `parts` contiguous blocks of about equal numbers of stored entries, each with the
    /// `indptr` entry at its start (where its entries begin in `indices` and `data`). A stored
    /// `indptr` is read only at the entries a binary search visits (`O(parts · log major)`, a few
    /// pages), so that a rank of many reads no more of it than its own [`part`](Self::part); a
    /// deflated one is streamed whole (its CRC-32 verified). Not a check of `indptr`: each
    /// [`part`](Self::part) checks its own entries, and together the parts check them all; for
    /// an `indptr` out of order the blocks still cover every major index once. The same on
    /// every rank.
    ///
    /// # Panics
    /// If `parts` is 0.
    ///
    /// # Errors
    /// [`NpzErrorKind::IndexMismatch`] if `I::DTYPE` is not the file's index dtype; for a
    /// deflated `indptr`, [`NpzErrorKind::Crc`], [`NpzErrorKind::Truncated`] or
    /// [`NpzErrorKind::Corrupt`] as [`indptr`](Self::indptr).
    pub fn split<I: SparseIndex>(&self, parts: usize) -> Result<Vec<(Range<usize>, usize)>, NpzError> {
        assert!(parts > 0, "split: zero parts");
        self.check_index::<I>()?;
        let a = &self.indptr;
        let with_starts = |blocks: Vec<Range<usize>>, at: &dyn Fn(usize) -> u128| {
            // An entry out of range is refused by the part that holds it; here it only balances.
            blocks.into_iter().map(|r| (r.clone(), usize::try_from(at(r.start)).unwrap_or(usize::MAX))).collect()
        };
        if a.loc.compressed {
            let all = self.read::<I>(a, 0..a.len, true)?;
            let all = all.get();
            let at = |j: usize| all[j].zx() as u128;
            return Ok(with_starts(split_by(a.len - 1, parts, at), &at));
        }
        let data = &a.loc.stored_bytes(&self.map)[a.loc.header_len..];
        let swap = a.loc.needs_swap();
        let at = |j: usize| {
            let mut x = I::zeroed();
            let bytes: &mut [u8] = bytemuck::bytes_of_mut(&mut x);
            bytes.copy_from_slice(&data[j * size_of::<I>()..(j + 1) * size_of::<I>()]);
            if swap {
                bytes.reverse();
            }
            x.zx() as u128
        };
        Ok(with_starts(split_by(a.len - 1, parts, at), &at))
    }

    /// The entries of major indices `range` (rows of a CSR, columns of a CSC): their `indptr`
    /// entries (a copy, rebased to start at 0), and their share of `indices` and `data`, as
    /// views into the map where the members are stored, native-endian and aligned, else as
    /// copies of that share only. Checked before it is returned: its `indptr` entries never
    /// decrease and lie within `0..=nnz` (the first is 0 if `range.start` is 0, the last is
    /// `nnz` if `range.end` is `major()`), and each of its indices is below the minor
    /// dimension. Reading all the major indices (`0..major()`) verifies the CRC-32 of
    /// `indptr`, `indices` and `data`.
    ///
    /// # Errors
    /// [`NpzErrorKind::DtypeMismatch`] if `T::DTYPE` is not the dtype of `data`,
    /// [`NpzErrorKind::IndexMismatch`] if `I::DTYPE` is not the file's index dtype,
    /// [`NpzErrorKind::MajorOutOfRange`] unless `range.start <= range.end <= major()`,
    /// [`NpzErrorKind::Indptr`] for an `indptr` entry out of place,
    /// [`NpzErrorKind::IndexOutOfRange`] for a negative index or one not below the minor
    /// dimension, [`NpzErrorKind::Crc`] for a damaged member (whole reads), and
    /// [`NpzErrorKind::Truncated`] or [`NpzErrorKind::Corrupt`] for a deflated member that
    /// does not inflate.
    pub fn part<T: Scalar, I: SparseIndex>(&self, range: Range<usize>) -> Result<SparsePart<T, I>, NpzError> {
        if T::DTYPE != self.dtype {
            let found = if self.data.loc.header.big_endian {
                format!("{} (big-endian)", self.dtype)
            } else {
                self.dtype.to_string()
            };
            return Err(self.error(Some("data"), NpzErrorKind::DtypeMismatch { found, expected: T::DTYPE }));
        }
        self.check_index::<I>()?;
        let major = self.major();
        if range.start > range.end || range.end > major {
            return Err(self.error(None, NpzErrorKind::MajorOutOfRange { range, major }));
        }
        let whole = range.start == 0 && range.end == major;
        let ptr = self.read::<I>(&self.indptr, range.start..range.end + 1, whole)?;
        let ptr = ptr.get();
        self.check_indptr(ptr, range.start)?;
        let (lo, hi) = (ptr[0].zx(), ptr[ptr.len() - 1].zx());
        let indptr: Vec<I> = ptr.iter().map(|&v| I::truncate(v.zx() - lo)).collect();
        let indices = self.read::<I>(&self.indices, lo..hi, whole)?;
        let bound = self.minor();
        if let Some(k) = indices.get().iter().position(|&i| i.zx() >= bound) {
            let index = indices.get()[k].signed();
            return Err(self.error(Some("indices"), NpzErrorKind::IndexOutOfRange { at: lo + k, index, bound }));
        }
        let data = self.read::<T>(&self.data, lo..hi, whole)?;
        Ok(SparsePart {
            format: self.format,
            nrows: self.nrows,
            ncols: self.ncols,
            range,
            offset: lo,
            indptr,
            indices,
            data,
        })
    }

    /// The number of bytes the zip entry's CRC-32 of `member` covers when it is stored (its
    /// `.npy` header and data), `None` when it is deflated (then a whole
    /// [`part`](Self::part) verifies it). Offsets of [`crc32_of`](Self::crc32_of) count from
    /// the member's first byte: ranks can split `0..span` into contiguous shares.
    pub fn crc_span(&self, member: SparseMember) -> Option<u64> {
        self.array(member).loc.crc_span()
    }

    /// The CRC-32 of bytes `range` of the stored `member` (see [`crc_span`](Self::crc_span)),
    /// read through the map.
    ///
    /// # Errors
    /// [`NpzErrorKind::CrcRange`] if the member is deflated or `range` is not within
    /// `0..span`.
    pub fn crc32_of(&self, member: SparseMember, range: Range<u64>) -> Result<u32, NpzError> {
        let a = self.array(member);
        a.loc.crc32_of(&self.map, range).map_err(|kind| self.error(Some(a.name), kind))
    }

    /// Combines the CRC-32s of consecutive byte ranges of `member`, given as `(crc, len)` in
    /// order from byte 0 (each from [`crc32_of`](Self::crc32_of), possibly on another rank),
    /// and compares the result with the CRC-32 its zip entry records.
    ///
    /// # Errors
    /// [`NpzErrorKind::Crc`] if they differ (the member is damaged);
    /// [`NpzErrorKind::CrcRange`] if the member is deflated or the lengths do not add up to
    /// [`crc_span`](Self::crc_span).
    pub fn verify_crc(
        &self,
        member: SparseMember,
        parts: impl IntoIterator<Item = (u32, u64)>,
    ) -> Result<(), NpzError> {
        let a = self.array(member);
        a.loc.verify_crc(parts).map_err(|kind| self.error(Some(a.name), kind))
    }
}

/// The first `n` bytes of the data of a small member (`format`, `shape`), read whole: its
/// CRC-32 is verified.
fn read_whole(map: &[u8], loc: &Member, n: usize) -> Result<Vec<u8>, NpzErrorKind> {
    let mut out = vec![0; n];
    if loc.compressed {
        let mut src = Inflate::new(loc.stored_bytes(map), loc.entry.size);
        src.skip(loc.header_len).and_then(|()| src.fill(&mut out)).map_err(data_error)?;
        // The header and the data fill the member (checked by `Member::open`).
        let found = src.crc_of_all().ok_or(NpzErrorKind::Truncated)?;
        loc.check_crc(found)?;
    } else {
        let member = loc.stored_bytes(map);
        loc.check_crc(crc32fast::hash(member))?;
        let mut data = &member[loc.header_len..];
        data.fill(&mut out).map_err(|e: io::Error| data_error(e))?;
    }
    Ok(out)
}

/// The entries of a block of major indices of a sparse file (rows of a CSR, columns of a
/// CSC), checked, as [`SparseNpz::part`] reads them: owns copies and shares the file's map
/// for views, so it lives independently of the [`SparseNpz`].
///
/// The entries of the part's `k`-th major index (`range().start + k` in the matrix) are
/// `data()[indptr()[k]..indptr()[k + 1]]`, at minor indices
/// `indices()[indptr()[k]..indptr()[k + 1]]` (unsorted and repeated indices allowed).
pub struct SparsePart<T, I> {
    format: Format,
    nrows: usize,
    ncols: usize,
    range: Range<usize>,
    offset: usize,
    indptr: Vec<I>,
    indices: Slice<I>,
    data: Slice<T>,
}

impl<T, I> fmt::Debug for SparsePart<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SparsePart")
            .field("format", &self.format)
            .field("shape", &(self.nrows, self.ncols))
            .field("range", &self.range)
            .field("offset", &self.offset)
            .field("indices", &self.indices)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl<T: Scalar, I: SparseIndex> SparsePart<T, I> {
    /// CSR or CSC.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The major indices the part holds: rows of a CSR, columns of a CSC.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The shape of the part as a matrix: `(range.len(), ncols)` for CSR, `(nrows,
    /// range.len())` for CSC, where `(nrows, ncols)` is the whole matrix's shape.
    pub fn shape(&self) -> (usize, usize) {
        match self.format {
            Format::Csr => (self.range.len(), self.ncols),
            Format::Csc => (self.nrows, self.range.len()),
        }
    }

    /// The position in the file's `indices` and `data` of the part's first entry (the file's
    /// `indptr[range.start]`).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The number of stored entries of the part.
    pub fn nnz(&self) -> usize {
        self.data.get().len()
    }

    /// `range.len() + 1` offsets into [`indices`](Self::indices) and [`data`](Self::data),
    /// starting at 0 (the file's `indptr[range]` minus [`offset`](Self::offset)).
    pub fn indptr(&self) -> &[I] {
        &self.indptr
    }

    /// The part's minor indices (columns for CSR, rows for CSC), each below the minor
    /// dimension.
    pub fn indices(&self) -> &[I] {
        self.indices.get()
    }

    /// The part's values.
    pub fn data(&self) -> &[T] {
        self.data.get()
    }

    /// Whether both `indices` and `data` are views into the file's map (no copy).
    pub fn is_mapped(&self) -> bool {
        matches!((&self.indices, &self.data), (Slice::Mapped { .. }, Slice::Mapped { .. }))
    }

    /// The part as the crate's sparse view (of [`shape`](Self::shape)), what the kernels of
    /// [`crate::sparse`] read. When `indices` is a view into the map, checked again, as
    /// [`as_csr`](Self::as_csr) (a pass over `indptr` and `indices`), and the kernels
    /// bounds-check every access at them; a copy, checked when it was read, is not.
    ///
    /// # Panics
    /// Only if the file was changed in place while mapped (see [`SparseNpz`]); a change during
    /// a product panics in the kernel (or gives wrong values), never an access out of bounds.
    pub fn view(&self) -> SparseView<'_, I, T> {
        let (m, n) = self.shape();
        if let Slice::Owned(indices) = &self.indices {
            // SAFETY: `SparseNpz::part` checked this `indptr` (from 0, never decreasing, ending
            // at `indices.len()`, one entry per major index plus one) and every index against
            // the minor dimension before it made the part, and the part's private `indptr` and
            // owned `indices` are never changed after.
            return unsafe { SparseView::prechecked(self.format, (m, n), &self.indptr, indices, self.data()) };
        }
        let view = match self.format {
            Format::Csr => SparseView::csr(m, n, &self.indptr, self.indices(), self.data()),
            Format::Csc => SparseView::csc(m, n, &self.indptr, self.indices(), self.data()),
        };
        // Checked again, and marked: the kernels then also bounds-check each write at these
        // indices, which the file's owner could still change during a product.
        view.expect("a part is checked when it is read: the file was changed in place while mapped").mapped()
    }

    /// The part as faer's CSR view (`range.len() × ncols`), `None` for a CSC part. Built with
    /// faer's checked unsorted constructor, which checks the structure again (a pass over
    /// `indptr` and `indices`): it cannot fail for a part as read, and panics rather than
    /// handing a kernel indices out of bounds if the file was changed in place while mapped.
    /// A change *after* this view is made is not caught: faer's own products and this crate's
    /// kernels read a faer view's indices unchecked. For products on a file that could change,
    /// use [`SparsePart::view`], which checks every index at every use.
    pub fn as_csr(&self) -> Option<SparseRowMatRef<'_, I, T>> {
        (self.format == Format::Csr).then(|| {
            let (m, n) = self.shape();
            let symbolic = SymbolicSparseRowMatRef::new_unsorted_checked(m, n, &self.indptr, None, self.indices());
            SparseRowMatRef::new(symbolic, self.data())
        })
    }

    /// The part as faer's CSC view (`nrows × range.len()`), `None` for a CSR part; checked as
    /// [`as_csr`](Self::as_csr).
    pub fn as_csc(&self) -> Option<SparseColMatRef<'_, I, T>> {
        (self.format == Format::Csc).then(|| {
            let (m, n) = self.shape();
            let symbolic = SymbolicSparseColMatRef::new_unsorted_checked(m, n, &self.indptr, None, self.indices());
            SparseColMatRef::new(symbolic, self.data())
        })
    }
}

/// Splits major indices `0..indptr.len() - 1` into `parts` contiguous blocks (in order,
/// covering every index once, some possibly empty) holding about `nnz / parts` stored entries
/// each, `nnz` being `indptr`'s last entry: block `k` ends at the major index whose `indptr`
/// entry is closest to `k · nnz / parts` (rounded), found by binary search. A single major
/// index holding many entries makes its block larger. Without stored entries, the indices are
/// split evenly by count instead. Deterministic: every rank computes the same blocks from the
/// same `indptr`.
///
/// # Panics
/// If `parts` is 0 or `indptr` is empty. `indptr` must be non-decreasing, as
/// [`SparseNpz::indptr`] checks (otherwise the blocks still cover every index once, unbalanced).
pub fn split_nnz<I: Index>(indptr: &[I], parts: usize) -> Vec<Range<usize>> {
    assert!(parts > 0, "split_nnz: zero parts");
    assert!(!indptr.is_empty(), "split_nnz: an indptr has at least one entry");
    split_by(indptr.len() - 1, parts, |j| indptr[j].zx() as u128)
}

/// [`split_nnz`] on `major + 1` entries read one at a time by `at`: a binary search per block
/// boundary, so it reads `O(parts · log major)` entries.
fn split_by(major: usize, parts: usize, at: impl Fn(usize) -> u128) -> Vec<Range<usize>> {
    let (first, nnz) = (at(0), at(major));
    let total = nnz.saturating_sub(first);
    let mut bounds = Vec::with_capacity(parts + 1);
    bounds.push(0);
    for k in 1..parts {
        let end = if total == 0 {
            // Even by count.
            (major as u128 * k as u128 / parts as u128) as usize
        } else {
            let target = first + (total * k as u128 + parts as u128 / 2) / parts as u128;
            // The first `j` with `at(j) >= target` (a partition point when `at` never decreases).
            let (mut lo, mut hi) = (0, major + 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if at(mid) < target { lo = mid + 1 } else { hi = mid }
            }
            let j = lo.min(major);
            // `at(j - 1) < target <= at(j)` (or `j` is the end): the closer of the two.
            let (below, above) = (at(j.saturating_sub(1)), at(j));
            if j > 0 && target.saturating_sub(below) < above.saturating_sub(target) { j - 1 } else { j }
        };
        let prev = *bounds.last().unwrap_or(&0);
        bounds.push(end.clamp(prev, major));
    }
    bounds.push(major);
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}
