//! Tests of `lazylinop::npz` on fixtures written by real numpy (`scripts/make_npz_fixtures.py`,
//! committed in `tests/data/npz/`) and on larger archives written here with the `zip` crate.
//!
//! Every valid array holds a formula recomputed here, independently of the reader: with `s`
//! the array's seed (in `tests/data/npz/manifest.json`), entry (i, j) has real part
//! `s * 100000 + i * 1000 + j + 0.5` and, for complex dtypes, imaginary part `-(i + 2 * j) - s`.
//! The manifest also gives each stored member's data offset in the file, from which the test
//! knows whether a zero-copy view must be possible.

use std::io::Write;
use std::ops::Range;
use std::path::Path;

use faer::{Mat, MatRef, c32, c64};
use lazylinop::npz::{Dtype, NpzError, NpzErrorKind, NpzMatrix, Order};
use serde_json::Value;

mod common;

use common::fixtures::{Formula, fixture, re};

/// Checks that `m` holds rows `rows` of the formula with seed `seed`, exactly.
fn check_values<T: Formula>(m: MatRef<'_, T>, seed: u64, rows: &Range<usize>, ncols: usize, ctx: &str) {
    assert_eq!((m.nrows(), m.ncols()), (rows.len(), ncols), "{ctx}: shape of rows {rows:?}");
    for i in 0..m.nrows() {
        for j in 0..ncols {
            assert_eq!(m[(i, j)], T::value(seed, rows.start + i, j), "{ctx}: entry ({}, {j})", rows.start + i);
        }
    }
}

/// Row ranges worth checking for a matrix of `n` rows.
fn ranges(n: usize) -> Vec<Range<usize>> {
    let few = n.min(2);
    vec![0..n, 0..few, n - few..n, n / 3..(2 * n).div_ceil(3), n / 2..n / 2, 0..0, n..n, 0..1.min(n)]
}

/// One valid array of the manifest.
struct Entry {
    file: String,
    member: String,
    shape: (usize, usize),
    dtype: Dtype,
    order: Order,
    compressed: bool,
    big_endian: bool,
    seed: u64,
    data_offset: Option<usize>,
}

fn manifest() -> (Vec<Entry>, Value) {
    let text = std::fs::read_to_string(fixture("manifest.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let entries = v["arrays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let shape = a["shape"].as_array().unwrap();
            Entry {
                file: a["file"].as_str().unwrap().into(),
                member: a["member"].as_str().unwrap().into(),
                shape: (shape[0].as_u64().unwrap() as usize, shape[1].as_u64().unwrap() as usize),
                dtype: match a["dtype"].as_str().unwrap() {
                    "float32" => Dtype::Float32,
                    "float64" => Dtype::Float64,
                    "complex64" => Dtype::Complex64,
                    "complex128" => Dtype::Complex128,
                    other => panic!("unexpected dtype {other} in the manifest"),
                },
                order: if a["order"] == "F" { Order::Fortran } else { Order::C },
                compressed: a["compressed"].as_bool().unwrap(),
                big_endian: a["big_endian"].as_bool().unwrap(),
                seed: a["seed"].as_u64().unwrap(),
                data_offset: a["data_offset"].as_u64().map(|o| o as usize),
            }
        })
        .collect();
    (entries, v["first_member"].clone())
}

/// Checks reads and views of `m` as `T`; returns whether the view was zero-copy.
fn check_member<T: Formula>(m: &NpzMatrix, e: &Entry, ctx: &str) -> bool {
    let (n, ncols) = e.shape;
    let aligned = e.data_offset.is_some_and(|o| o % align_of::<T>() == 0);
    let expect_view = !e.compressed && !e.big_endian && aligned;
    for rows in ranges(n) {
        let ctx = format!("{ctx} rows {rows:?}");
        let read = m.read_rows::<T>(rows.clone()).unwrap();
        check_values(read.as_ref(), e.seed, &rows, ncols, &ctx);
        let view = m.view_rows::<T>(rows.clone()).unwrap();
        assert_eq!(view.is_some(), expect_view, "{ctx}: zero-copy view");
        if let Some(view) = view {
            assert_eq!(view, read.as_ref(), "{ctx}: view == read");
            if rows.len() > 1 && ncols > 1 {
                let strides = match e.order {
                    Order::C => (ncols as isize, 1),
                    Order::Fortran => (1, n as isize),
                };
                assert_eq!((view.row_stride(), view.col_stride()), strides, "{ctx}: strides");
                // The view points into the map, at the right element.
                let base = m.view_rows::<T>(0..n).unwrap().unwrap();
                assert_eq!(view.as_ptr(), base.ptr_at(rows.start, 0), "{ctx}: no copy");
            }
        }
    }
    for rows in [0..n + 1, n + 1..n + 1] {
        let err = m.read_rows::<T>(rows.clone()).unwrap_err();
        assert!(matches!(err.kind(), NpzErrorKind::RowsOutOfRange { nrows, .. } if *nrows == n), "{ctx}: {err}");
        assert!(m.view_rows::<T>(rows).is_err(), "{ctx}");
    }
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 2..1;
    if n >= 2 {
        let err = m.read_rows::<T>(backwards).unwrap_err();
        assert!(matches!(err.kind(), NpzErrorKind::RowsOutOfRange { .. }), "{ctx}: {err}");
    }
    expect_view
}

/// Reading as `T` when the member holds another dtype is an error, never a misread.
fn check_mismatch<T: Formula>(m: &NpzMatrix, e: &Entry, ctx: &str) {
    if T::DTYPE == e.dtype {
        return;
    }
    for err in [m.read_rows::<T>(0..0).unwrap_err(), m.view_rows::<T>(0..0).unwrap_err()] {
        match err.kind() {
            NpzErrorKind::DtypeMismatch { found, expected } => {
                assert_eq!(*expected, T::DTYPE, "{ctx}");
                assert!(found.contains(e.dtype.name()), "{ctx}: {found}");
            }
            other => panic!("{ctx}: expected a dtype mismatch, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&e.file) && msg.contains(&e.member), "{ctx}: {msg}");
        assert!(msg.contains("float32, float64, complex64, complex128"), "{ctx}: {msg}");
    }
}

#[test]
fn every_fixture_reads_the_formula() {
    let (entries, first) = manifest();
    assert!(entries.len() >= 60, "the manifest lists {} arrays", entries.len());
    let mut zero_copy = Vec::new();
    let mut copied = 0;
    for e in &entries {
        let ctx = format!("{}[{}]", e.file, e.member);
        let path = fixture(&e.file);
        let m = NpzMatrix::open(&path, Some(&e.member)).unwrap();
        assert_eq!(m.path(), path);
        assert_eq!(m.member(), e.member, "{ctx}");
        assert_eq!(m.shape(), e.shape, "{ctx}");
        assert_eq!(m.dtype(), e.dtype, "{ctx}");
        assert_eq!(m.order(), e.order, "{ctx}");
        assert_eq!(m.is_compressed(), e.compressed, "{ctx}");
        assert_eq!(m.is_big_endian(), e.big_endian, "{ctx}");
        let viewed = match e.dtype {
            Dtype::Float32 => check_member::<f32>(&m, e, &ctx),
            Dtype::Float64 => check_member::<f64>(&m, e, &ctx),
            Dtype::Complex64 => check_member::<c32>(&m, e, &ctx),
            Dtype::Complex128 => check_member::<c64>(&m, e, &ctx),
        };
        if viewed {
            zero_copy.push((e.dtype, e.order, e.shape));
        } else {
            copied += 1;
        }
        check_mismatch::<f32>(&m, e, &ctx);
        check_mismatch::<f64>(&m, e, &ctx);
        check_mismatch::<c32>(&m, e, &ctx);
        check_mismatch::<c64>(&m, e, &ctx);

        // The member's name with its `.npy` suffix names the same member.
        let m2 = NpzMatrix::open(&path, Some(&format!("{}.npy", e.member))).unwrap();
        assert_eq!((m2.member(), m2.shape()), (e.member.as_str(), e.shape), "{ctx}");
        // The default member is the archive's first.
        let default = NpzMatrix::open(&path, None).unwrap();
        assert_eq!(default.member(), first[&e.file].as_str().unwrap(), "{ctx}");
    }
    // The zero-copy path is really taken, for every dtype and both orders, nonempty.
    for dtype in [Dtype::Float32, Dtype::Float64, Dtype::Complex64, Dtype::Complex128] {
        assert!(zero_copy.iter().any(|&(d, _, (r, c))| d == dtype && r * c > 1), "no zero-copy {dtype} view");
    }
    for order in [Order::C, Order::Fortran] {
        assert!(zero_copy.iter().any(|&(_, o, (r, c))| o == order && r > 1 && c > 1), "no zero-copy {order:?} view");
    }
    assert!(copied > 40, "{copied} copies");
}

#[test]
fn default_member_is_the_first_in_the_archive() {
    // np.savez(path, a0, a1, named=a2) writes `named` first.
    let m = NpzMatrix::open(fixture("multi.npz"), None).unwrap();
    assert_eq!((m.member(), m.shape()), ("named", (2, 6)));
    let m = NpzMatrix::open(fixture("multi.npz"), Some("arr_1")).unwrap();
    assert_eq!((m.member(), m.shape()), ("arr_1", (5, 2)));
}

#[test]
fn matrix_is_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<NpzMatrix>();
    send_sync::<NpzError>();
}

/// Opens `file[member]`, expects an error, checks its message names the path, the member
/// (if given) and contains `reason`, and returns its kind.
fn open_err(file: &str, member: Option<&str>, reason: &str) -> NpzErrorKind {
    let path = fixture(file);
    let err = NpzMatrix::open(&path, member).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert_eq!(err.path(), path);
    if let Some(member) = member {
        assert!(msg.contains(&format!(": member {member}")), "{msg}");
        assert!(err.member().is_some(), "{msg}");
    }
    assert!(msg.contains(reason), "{msg:?} does not contain {reason:?}");
    err.into_kind()
}

#[test]
fn missing_file_is_io() {
    let kind = open_err("no_such_file.npz", None, "cannot read the file");
    assert!(matches!(kind, NpzErrorKind::Io(ref e) if e.kind() == std::io::ErrorKind::NotFound), "{kind:?}");
    let err = NpzMatrix::open(fixture("no_such_file.npz"), None).unwrap_err();
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn not_a_zip() {
    for file in ["not_a_zip.txt", "empty_file.npz"] {
        let kind = open_err(file, None, "not a zip archive");
        assert!(matches!(kind, NpzErrorKind::NotZip(_)), "{file}: {kind:?}");
    }
}

#[test]
fn truncated_archive() {
    let kind = open_err("truncated.npz", None, "truncated");
    assert!(matches!(kind, NpzErrorKind::Truncated), "{kind:?}");
    let kind = open_err("truncated.npz", Some("m7x5"), "truncated");
    assert!(matches!(kind, NpzErrorKind::Truncated), "{kind:?}");
}

#[test]
fn missing_member_lists_the_available_ones() {
    let kind = open_err("float64_c_stored.npz", Some("nope"), "m33x17");
    match kind {
        NpzErrorKind::MemberMissing { available } => {
            assert_eq!(available, ["m7x5", "m1x3", "m0x4", "m13x1", "m33x17", "m4x0"]);
        }
        other => panic!("{other:?}"),
    }
    let kind = open_err("no_arrays.npz", Some("arr_0"), "no such member");
    assert!(matches!(kind, NpzErrorKind::MemberMissing { ref available } if available.is_empty()), "{kind:?}");
}

#[test]
fn archive_without_arrays_is_empty() {
    let kind = open_err("no_arrays.npz", None, "no array");
    assert!(matches!(kind, NpzErrorKind::Empty), "{kind:?}");
}

#[test]
fn unsupported_dtypes() {
    for (member, descr) in
        [("obj", "|O"), ("i64", "<i8"), ("str", "<U2"), ("bool", "|b1"), ("f16", "<f2"), ("rec", "('x', '<f8')")]
    {
        let kind =
            open_err("unsupported.npz", Some(member), "accepted dtypes: float32, float64, complex64, complex128");
        match kind {
            NpzErrorKind::UnsupportedDtype(d) => assert!(d.contains(descr), "{member}: {d}"),
            other => panic!("{member}: {other:?}"),
        }
    }
}

#[test]
fn not_two_dimensional() {
    for (member, shape) in [("d0", vec![]), ("d1", vec![4]), ("d3", vec![2, 3, 4])] {
        let kind = open_err("ndim.npz", Some(member), "not a 2-D array");
        assert!(matches!(kind, NpzErrorKind::NotTwoDimensional(ref s) if *s == shape), "{member}: {kind:?}");
    }
}

#[test]
fn bad_headers() {
    // A header that lies about its size: (100, 100) float64 over 10 values, and (2, 2) over 10.
    for (file, member, reason) in [
        ("bad_headers.npz", "liar", "(100, 100)"),
        ("bad_headers_compressed.npz", "liar", "(100, 100)"),
        ("bad_headers.npz", "small", "(2, 2)"),
        ("bad_headers.npz", "garbage", "bad .npy header"),
        ("bad_headers.npz", "bad_dict", "bad .npy header"),
    ] {
        let kind = open_err(file, Some(member), reason);
        assert!(matches!(kind, NpzErrorKind::BadHeader(_)), "{file}[{member}]: {kind:?}");
    }
    // A member cut inside its header.
    let kind = open_err("bad_headers.npz", Some("cut"), "truncated");
    assert!(matches!(kind, NpzErrorKind::Truncated), "{kind:?}");
}

#[test]
fn unsupported_compression() {
    let kind = open_err("bzip2.npz", None, "bzip2");
    assert!(matches!(kind, NpzErrorKind::UnsupportedCompression(_)), "{kind:?}");
}

/// The bytes of a `.npy` file holding the formula with seed `seed` as a `rows × cols` float64
/// array in `order`.
fn npy_f64(rows: usize, cols: usize, order: Order, seed: u64) -> Vec<u8> {
    let fortran = if order == Order::Fortran { "True" } else { "False" };
    let mut dict = format!("{{'descr': '<f8', 'fortran_order': {fortran}, 'shape': ({rows}, {cols}), }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    let values: Vec<f64> = match order {
        Order::C => (0..rows).flat_map(|i| (0..cols).map(move |j| re(seed, i, j))).collect(),
        Order::Fortran => (0..cols).flat_map(|j| (0..rows).map(move |i| re(seed, i, j))).collect(),
    };
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Balanced contiguous blocks of `n` rows over `p` ranks, the first `n mod p` one row larger.
fn blocks(n: usize, p: usize) -> Vec<Range<usize>> {
    let (q, r) = (n / p, n % p);
    (0..p).map(|k| k * q + k.min(r)..(k + 1) * q + (k + 1).min(r)).collect()
}

#[test]
fn larger_members_read_by_blocks() {
    use zip::write::SimpleFileOptions;
    let (rows, cols) = (300, 200);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("npz_large_{}.npz", std::process::id()));
    let members = [
        ("c_stored", Order::C, zip::CompressionMethod::Stored, false),
        ("f_stored", Order::Fortran, zip::CompressionMethod::Stored, false),
        ("c_aligned", Order::C, zip::CompressionMethod::Stored, true),
        ("f_aligned", Order::Fortran, zip::CompressionMethod::Stored, true),
        ("c_deflated", Order::C, zip::CompressionMethod::Deflated, false),
        ("f_deflated", Order::Fortran, zip::CompressionMethod::Deflated, false),
    ];
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        // A small member first, so that the next members' data are not aligned by chance.
        w.start_file("pad.txt", SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored))
            .unwrap();
        w.write_all(b"xy").unwrap();
        for (k, &(name, order, method, aligned)) in members.iter().enumerate() {
            let mut options = SimpleFileOptions::default().compression_method(method);
            if aligned {
                options = options.with_alignment(64);
            }
            w.start_file(format!("{name}.npy"), options).unwrap();
            w.write_all(&npy_f64(rows, cols, order, k as u64)).unwrap();
        }
        w.finish().unwrap();
    }
    // Independently of the reader: where the stored members' data starts (after the .npy
    // magic and a 128-byte header), in the file order of `members`.
    let bytes = std::fs::read(&path).unwrap();
    let magic = b"\x93NUMPY";
    let starts: Vec<usize> = (0..bytes.len() - magic.len()).filter(|&i| &bytes[i..i + magic.len()] == magic).collect();
    assert_eq!(npy_f64(rows, cols, Order::C, 0).len() - rows * cols * 8, 128);
    let mut views = 0;
    let partitions = [1, 2, 3, 7, 16, 301];
    for (k, &(name, order, method, aligned)) in members.iter().enumerate() {
        let expect_view = method == zip::CompressionMethod::Stored && (starts[k] + 128).is_multiple_of(8);
        assert_eq!(expect_view, aligned, "{name}: data at {}", starts[k] + 128);
        let m = NpzMatrix::open(&path, Some(name)).unwrap();
        assert_eq!((m.shape(), m.order()), ((rows, cols), order), "{name}");
        assert_eq!(m.is_compressed(), method == zip::CompressionMethod::Deflated, "{name}");
        let full = m.read_rows::<f64>(0..rows).unwrap();
        check_values(full.as_ref(), k as u64, &(0..rows), cols, name);
        for p in partitions {
            for b in blocks(rows, p) {
                let ctx = format!("{name}: {p} blocks, rows {b:?}");
                let block = m.read_rows::<f64>(b.clone()).unwrap();
                check_values(block.as_ref(), k as u64, &b, cols, &ctx);
                let view = m.view_rows::<f64>(b.clone()).unwrap();
                assert_eq!(view.is_some(), expect_view, "{ctx}");
                if let Some(view) = view {
                    assert_eq!(view, block.as_ref(), "{ctx}");
                    views += 1;
                }
            }
        }
        let default = Mat::<f64>::zeros(0, cols);
        assert_eq!(m.read_rows::<f64>(rows..rows).unwrap(), default, "{name}");
    }
    // The two aligned members were viewed in place, in every block of every partition.
    assert_eq!(views, 2 * partitions.iter().sum::<usize>());
    let default = NpzMatrix::open(&path, None).unwrap();
    assert_eq!(default.member(), "c_stored", "pad.txt is not an array");
    std::fs::remove_file(&path).unwrap();
}

fn save_and_view<T: lazylinop::Scalar + std::fmt::Debug>() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (m, n) in [(0, 3), (3, 0), (1, 1), (7, 5), (33, 17)] {
        let a = lazylinop::random::mat::<T>(m + 2, n + 3, 9);
        // A strided view: the writer handles any layout.
        let view = a.as_ref().submatrix(1, 2, m, n);
        let path = dir.join(format!(
            "saved_{}_{m}x{n}_{}.npz",
            std::any::type_name::<T>().replace("::", "_"),
            std::process::id()
        ));
        lazylinop::npz::save(&path, "a", view).unwrap();
        let back = NpzMatrix::open(&path, None).unwrap();
        assert_eq!((back.member(), back.shape(), back.dtype(), back.is_compressed()), ("a", (m, n), T::DTYPE, false));
        let mapped = back.view_rows::<T>(0..m).unwrap().expect("saved data is aligned: a view in place");
        assert_eq!(mapped, view);
        assert_eq!(back.read_rows::<T>(0..m).unwrap(), view.to_owned());
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn saved_matrices_are_viewed_in_place() {
    save_and_view::<f32>();
    save_and_view::<f64>();
    save_and_view::<c32>();
    save_and_view::<c64>();
}

// ---------------------------------------------------------------------------------------------
// Hostile and damaged files (issue 12). Each is built here, byte by byte, and opened and read on
// a worker thread under a deadline and an allocation limit, so that a regression fails (or, for
// an allocation beyond the limit, aborts) instead of hanging or exhausting the machine's memory.
// ---------------------------------------------------------------------------------------------

mod budget {
    //! A global allocator that counts the live heap bytes of each thread and their peak, and
    //! refuses (returns null, so the process aborts) any allocation beyond a per-thread limit.
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Budget;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
        static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    fn grow(by: usize) -> bool {
        if by > LIMIT.with(Cell::get) {
            return false;
        }
        let live = LIVE.with(|l| {
            l.set(l.get() + by as isize);
            l.get()
        });
        PEAK.with(|p| p.set(p.get().max(live)));
        true
    }

    fn shrink(by: usize) {
        LIVE.with(|l| l.set(l.get() - by as isize));
    }

    // SAFETY: forwards every call to the system allocator, or returns null (allowed: an
    // allocation failure); the counters are thread-local cells that never allocate.
    unsafe impl GlobalAlloc for Budget {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if !grow(layout.size()) {
                return std::ptr::null_mut();
            }
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if !grow(layout.size()) {
                return std::ptr::null_mut();
            }
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            shrink(layout.size());
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !grow(new_size) {
                return std::ptr::null_mut();
            }
            shrink(layout.size());
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Budget = Budget;

    /// Starts counting this thread's peak from now, refusing single allocations above `limit`.
    pub fn start(limit: usize) {
        LIVE.with(|l| l.set(0));
        PEAK.with(|p| p.set(0));
        LIMIT.with(|l| l.set(limit));
    }

    /// This thread's peak of live heap bytes since [`start`].
    pub fn peak() -> usize {
        PEAK.with(Cell::get).max(0) as usize
    }
}

/// Runs `f` on a new thread; panics if it takes longer than `deadline`. Returns its result, its
/// peak heap use (allocations beyond 256 MiB abort the process) and its duration.
fn bounded<R: Send + 'static>(
    deadline: std::time::Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> (R, usize, std::time::Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        budget::start(256 << 20);
        let t = std::time::Instant::now();
        let r = f();
        let _ = tx.send((r, budget::peak(), t.elapsed()));
    });
    match rx.recv_timeout(deadline) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("did not finish within {deadline:?}"),
        Err(e) => panic!("the worker panicked ({e})"),
    }
}

/// One member of a hand-made zip archive: its bytes as stored (deflated or not), the declared
/// uncompressed size and CRC-32.
struct RawMember {
    name: String,
    deflated: bool,
    bytes: Vec<u8>,
    size: u32,
    crc: u32,
}

impl RawMember {
    /// A stored member holding `npy`, with its true size and CRC.
    fn stored(name: &str, npy: &[u8]) -> Self {
        RawMember {
            name: name.into(),
            deflated: false,
            bytes: npy.to_vec(),
            size: npy.len() as u32,
            crc: crc32fast::hash(npy),
        }
    }

    /// A deflated member holding `npy`, with its true size and CRC.
    fn deflated(name: &str, npy: &[u8]) -> Self {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(npy).unwrap();
        RawMember {
            name: name.into(),
            deflated: true,
            bytes: e.finish().unwrap(),
            size: npy.len() as u32,
            crc: crc32fast::hash(npy),
        }
    }
}

/// A zip archive of `members`, as written by any zip writer (no zip64, no data descriptors).
fn zip_archive(members: &[RawMember]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for m in members {
        let offset = out.len() as u32;
        let method: u16 = if m.deflated { 8 } else { 0 };
        let fixed = |sig: u32, out: &mut Vec<u8>| {
            out.extend_from_slice(&sig.to_le_bytes());
            if sig == 0x0201_4b50 {
                out.extend_from_slice(&20u16.to_le_bytes()); // version made by
            }
            out.extend_from_slice(&20u16.to_le_bytes()); // version needed
            out.extend_from_slice(&0u16.to_le_bytes()); // flags
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes()); // time
            out.extend_from_slice(&0x21u16.to_le_bytes()); // date
            out.extend_from_slice(&m.crc.to_le_bytes());
            out.extend_from_slice(&(m.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&m.size.to_le_bytes());
            out.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        };
        fixed(0x0403_4b50, &mut out);
        out.extend_from_slice(m.name.as_bytes());
        out.extend_from_slice(&m.bytes);
        fixed(0x0201_4b50, &mut central);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(m.name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out
}

/// The `.npy` bytes of `dict` (padded as numpy pads it) in format `version` (1, 2 or 3),
/// followed by `data`.
fn npy(dict: &str, version: u8, data: &[u8]) -> Vec<u8> {
    let len_bytes = if version == 1 { 2 } else { 4 };
    let mut dict = dict.to_string();
    while !(8 + len_bytes + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

/// `n` float64 values 0.5, 1.5, ... as little-endian bytes.
fn f64_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f64 + 0.5).to_le_bytes()).collect()
}

/// Writes `bytes` as a temporary `.npz` named after `name`, returning its path.
fn temp_npz(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile_{name}_{}.npz", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Opens the first member of the archive `bytes` and reads all its rows as f64, under a
/// 5-second deadline; checks that the peak heap use stays below 64 KiB plus 8 times the file's
/// size. Returns the error met, if any.
fn open_hostile(name: &str, bytes: &[u8]) -> Result<Mat<f64>, NpzError> {
    let path = temp_npz(name, bytes);
    let p = path.clone();
    let (result, peak, took) = bounded(std::time::Duration::from_secs(5), move || {
        let m = NpzMatrix::open(&p, None)?;
        m.read_rows::<f64>(0..m.shape().0)
    });
    let bound = (64 << 10) + 8 * bytes.len();
    assert!(peak <= bound, "{name}: peak heap {peak} bytes, more than {bound}, in {took:?}");
    println!("hostile {name}: {took:?}, peak heap {peak} bytes for a {}-byte file", bytes.len());
    std::fs::remove_file(&path).unwrap();
    result
}

/// Expects `result` to be an error whose kind `matches` and whose message contains `reason`.
fn expect_err(result: Result<Mat<f64>, NpzError>, reason: &str, matches: impl Fn(&NpzErrorKind) -> bool) {
    let err = result.expect_err("a hostile file must not load");
    let msg = err.to_string();
    assert!(matches(err.kind()), "unexpected kind: {msg}");
    assert!(msg.contains(reason), "{msg:?} does not contain {reason:?}");
}

const F64_2X3: &str = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";

#[test]
fn hand_made_archives_are_read() {
    // The test's own archive writer, checked on valid members of every header version.
    for version in [1, 2, 3] {
        let member = npy(F64_2X3, version, &f64_bytes(6));
        for raw in [RawMember::stored("a.npy", &member), RawMember::deflated("a.npy", &member)] {
            let m = open_hostile("valid", &zip_archive(&[raw])).unwrap();
            assert_eq!(m, Mat::from_fn(2, 3, |i, j| (3 * i + j) as f64 + 0.5), "version {version}");
        }
    }
}

#[test]
fn deeply_nested_header_is_refused_quickly() {
    // A value nested `depth` levels deep, in an extra key or in the shape, deflated, in format
    // 2.0: about 200 bytes. The parser must not take time exponential in the depth.
    for depth in [20, 1000, 5000] {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        for dict in [
            format!("{{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'x': {nested}}}"),
            format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({nested}, 3)}}"),
        ] {
            let member = npy(&dict, 2, &f64_bytes(6));
            let bytes = zip_archive(&[RawMember::deflated("a.npy", &member)]);
            expect_err(open_hostile("nested", &bytes), "bad .npy header", |k| matches!(k, NpzErrorKind::BadHeader(_)));
        }
    }
}

#[test]
fn huge_header_length_is_refused_before_allocating() {
    // A stored format 2.0 member whose header claims 0xFFFFFFFF bytes.
    let mut member = b"\x93NUMPY\x02\x00\xff\xff\xff\xff".to_vec();
    member.extend_from_slice(b"{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }\n");
    member.extend_from_slice(&f64_bytes(1));
    for raw in [RawMember::stored("a.npy", &member), RawMember::deflated("a.npy", &member)] {
        expect_err(open_hostile("header_len", &zip_archive(&[raw])), "10000", |k| {
            matches!(k, NpzErrorKind::BadHeader(_))
        });
    }
}

/// A deflated member whose header and zip entry both declare `shape` float64 but whose data is
/// missing.
fn empty_deflated_member(shape: (usize, usize)) -> Vec<u8> {
    let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({}, {}), }}", shape.0, shape.1);
    let header = npy(&dict, 1, &[]);
    let mut raw = RawMember::deflated("a.npy", &header);
    raw.size = (header.len() + shape.0 * shape.1 * 8) as u32;
    zip_archive(&[raw])
}

#[test]
fn deflated_member_declaring_a_huge_row_without_data() {
    expect_err(open_hostile("huge_row", &empty_deflated_member((1, 500_000_000))), "truncated", |k| {
        matches!(k, NpzErrorKind::Truncated)
    });
}

#[test]
fn deflated_member_padded_past_the_ratio_check_allocates_as_data_arrives() {
    // 4 MiB of junk after the deflate stream: the compressed size could inflate to the declared
    // 4 GB, so only reading finds the data missing; nothing may be sized from the shape.
    let (rows, cols) = (1usize, 500_000_000usize);
    let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let header = npy(&dict, 1, &f64_bytes(1000));
    let mut raw = RawMember::deflated("a.npy", &header);
    raw.bytes.resize(raw.bytes.len() + (4 << 20), 0);
    raw.size = (header.len() - 8000 + rows * cols * 8) as u32;
    let path = temp_npz("padded", &zip_archive(&[raw]));
    let p = path.clone();
    let (result, peak, took) = bounded(std::time::Duration::from_secs(5), move || {
        let m = NpzMatrix::open(&p, None)?;
        m.read_rows::<f64>(0..1)
    });
    let err = result.unwrap_err();
    assert!(matches!(err.kind(), NpzErrorKind::Truncated), "{err}");
    assert!(peak < 1 << 20, "peak heap {peak} bytes");
    println!("hostile padded: {took:?}, peak heap {peak} bytes");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn deflated_member_declaring_a_huge_matrix_without_data() {
    expect_err(open_hostile("huge_matrix", &empty_deflated_member((2000, 250_000))), "truncated", |k| {
        matches!(k, NpzErrorKind::Truncated)
    });
}

#[test]
fn deflated_member_smaller_than_its_header() {
    // The zip entry declares 10 bytes; the member inflates to a 128-byte header.
    let header = npy(F64_2X3, 1, &[]);
    let mut raw = RawMember::deflated("a.npy", &header);
    raw.size = 10;
    expect_err(open_hostile("small_entry", &zip_archive(&[raw])), "truncated", |k| {
        matches!(k, NpzErrorKind::Truncated)
    });
}

#[test]
fn flipped_data_byte_fails_the_crc() {
    let member = npy(F64_2X3, 1, &f64_bytes(6));
    let mut raw = RawMember::stored("a.npy", &member);
    let last = raw.bytes.len() - 3;
    raw.bytes[last] ^= 0x10;
    expect_err(open_hostile("crc", &zip_archive(&[raw])), "CRC-32", |k| matches!(k, NpzErrorKind::Crc { .. }));
}

#[test]
fn list_shape_is_refused_as_numpy_does() {
    let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': [2, 3], }";
    let bytes = zip_archive(&[RawMember::stored("a.npy", &npy(dict, 1, &f64_bytes(6)))]);
    expect_err(open_hostile("list_shape", &bytes), "tuple", |k| matches!(k, NpzErrorKind::BadHeader(_)));
}

#[test]
fn headers_numpy_refuses_are_refused() {
    for (dict, reason) in [
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}", "extra"),
        ("{'descr': '<f8', 'fortran_order': False}", "shape"),
        ("{'descr': '<f8', 'fortran_order': 0, 'shape': (2, 3)}", "fortran_order"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (2, -3)}", "shape"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'shape': (2, 3)}", "shape"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3.0)}", "integer"),
        ("['descr', '<f8']", "dict"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3)} trailing", "bad .npy header"),
    ] {
        let bytes = zip_archive(&[RawMember::stored("a.npy", &npy(dict, 1, &f64_bytes(6)))]);
        expect_err(open_hostile("refused", &bytes), reason, |k| matches!(k, NpzErrorKind::BadHeader(_)));
    }
    // What numpy accepts is accepted: no trailing comma, another key order, double quotes.
    for dict in [
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3)}",
        "{\"shape\": (2, 3,), \"fortran_order\": False, \"descr\": \"<f8\"}",
    ] {
        let bytes = zip_archive(&[RawMember::stored("a.npy", &npy(dict, 1, &f64_bytes(6)))]);
        assert_eq!(open_hostile("accepted", &bytes).unwrap().shape(), (2, 3), "{dict}");
    }
}

#[test]
fn directory_is_named_as_such() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let err = NpzMatrix::open(dir, None).unwrap_err();
    assert!(matches!(err.kind(), NpzErrorKind::Io(e) if e.kind() == std::io::ErrorKind::IsADirectory), "{err}");
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn save_replaces_the_file_atomically() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("atomic_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.npz");
    let a = lazylinop::random::mat::<f64>(40, 30, 1);
    lazylinop::npz::save(&path, "a", a.as_ref()).unwrap();
    let m = NpzMatrix::open(&path, None).unwrap();
    let view = m.view_rows::<f64>(0..40).unwrap().unwrap();
    // Saving to the same path, as a program updating its matrix does: the live view keeps the
    // old values (same size), and stays readable (smaller file).
    let b = lazylinop::random::mat::<f64>(40, 30, 2);
    lazylinop::npz::save(&path, "a", b.as_ref()).unwrap();
    assert_eq!(view, a.as_ref(), "the view changed under a save of the same shape");
    let c = lazylinop::random::mat::<f64>(2, 3, 3);
    lazylinop::npz::save(&path, "a", c.as_ref()).unwrap();
    assert_eq!(view, a.as_ref(), "the view changed under a save of a smaller matrix");
    assert_eq!(NpzMatrix::open(&path, None).unwrap().read_rows::<f64>(0..2).unwrap(), c);
    // A failed save (the target is a directory) leaves the target and no temporary behind.
    let sub = dir.join("sub.npz");
    std::fs::create_dir(&sub).unwrap();
    assert!(lazylinop::npz::save(&sub, "a", c.as_ref()).is_err());
    assert!(sub.is_dir());
    let mut left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["a.npz", "sub.npz"]);
    drop(m);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Checks the stored member `m` with `crc32_of` over `parts` consecutive shares of its bytes and
/// `verify_crc`, as ranks sharing the work do.
fn verify_in_shares(m: &NpzMatrix, parts: u64) -> Result<(), NpzError> {
    let span = m.crc_span().expect("a stored member");
    let shares: Vec<(u32, u64)> = (0..parts)
        .map(|k| {
            let range = span * k / parts..span * (k + 1) / parts;
            (m.crc32_of(range.clone()).unwrap(), range.end - range.start)
        })
        .collect();
    m.verify_crc(shares)
}

#[test]
fn crc_of_byte_ranges_combines_across_shares() {
    let member = npy(F64_2X3, 1, &f64_bytes(6));
    let good = temp_npz("crc_shares", &zip_archive(&[RawMember::stored("a.npy", &member)]));
    let m = NpzMatrix::open(&good, None).unwrap();
    assert_eq!(m.crc_span(), Some(member.len() as u64));
    assert_eq!(m.crc32_of(0..member.len() as u64).unwrap(), crc32fast::hash(&member));
    assert_eq!(m.crc32_of(5..5).unwrap(), 0);
    for parts in [1, 2, 3, 7, member.len() as u64] {
        verify_in_shares(&m, parts).unwrap();
    }
    // Shares that do not cover the member, or a range beyond it.
    let span = member.len() as u64;
    for parts in [vec![(crc32fast::hash(&member[..10]), 10)], vec![(0, span), (0, 1)], vec![(0, u64::MAX), (0, 2)]] {
        let err = m.verify_crc(parts).unwrap_err();
        assert!(matches!(err.kind(), NpzErrorKind::CrcRange { span: Some(s), .. } if *s == span), "{err}");
    }
    #[allow(clippy::reversed_empty_ranges)]
    for range in [0..span + 1, span + 1..span + 2, 3..2] {
        let err = m.crc32_of(range).unwrap_err();
        assert!(matches!(err.kind(), NpzErrorKind::CrcRange { .. }), "{err}");
    }
    // A wrong share is a CRC error naming the file and the member.
    let err = m.verify_crc([(1, span)]).unwrap_err();
    assert!(matches!(err.kind(), NpzErrorKind::Crc { .. }), "{err}");
    assert!(err.to_string().contains("member a: CRC-32 mismatch"), "{err}");

    // One flipped data byte: the view loads it (not verified), the shares find it.
    let mut raw = RawMember::stored("a.npy", &member);
    let at = raw.bytes.len() - 3;
    raw.bytes[at] ^= 0x10;
    let bad = temp_npz("crc_shares_bad", &zip_archive(&[raw]));
    let m = NpzMatrix::open(&bad, None).unwrap();
    assert!(m.read_rows::<f64>(0..1).is_ok(), "a partial read is not verified");
    for parts in [1, 2, 3] {
        let err = verify_in_shares(&m, parts).unwrap_err();
        assert!(matches!(err.kind(), NpzErrorKind::Crc { .. }), "{err}");
        assert_eq!((err.path(), err.member()), (bad.as_path(), Some("a")));
    }

    // A deflated member has no byte range to checksum; a read that streams it to its end
    // (all its rows, or rows up to the last) verifies it.
    let mut raw = RawMember::deflated("a.npy", &member);
    raw.crc ^= 1;
    let deflated = temp_npz("crc_deflated", &zip_archive(&[raw]));
    let m = NpzMatrix::open(&deflated, None).unwrap();
    assert_eq!(m.crc_span(), None);
    let err = m.crc32_of(0..1).unwrap_err();
    assert!(matches!(err.kind(), NpzErrorKind::CrcRange { span: None, .. }), "{err}");
    assert!(matches!(m.verify_crc([]).unwrap_err().kind(), NpzErrorKind::CrcRange { span: None, .. }));
    for rows in [0..2, 1..2] {
        let err = m.read_rows::<f64>(rows).unwrap_err();
        assert!(matches!(err.kind(), NpzErrorKind::Crc { .. }), "{err}");
    }
    for path in [good, bad, deflated] {
        std::fs::remove_file(path).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The mutation test: thousands of deterministic mutants of committed fixtures, each opened and
// read under a deadline and an allocation budget.
// ---------------------------------------------------------------------------------------------

/// The values of a read (shape, then the entries column by column), to compare reads.
fn mat_bytes<T: lazylinop::Scalar>(m: &Mat<T>) -> Vec<u8> {
    let mut out = format!("{}x{}:", m.nrows(), m.ncols()).into_bytes();
    for j in 0..m.ncols() {
        out.extend_from_slice(bytemuck::cast_slice(m.col_as_slice(j)));
    }
    out
}

/// Reads rows `rows` of `m` as its own dtype.
fn read_as_is(m: &NpzMatrix, rows: Range<usize>) -> Result<Vec<u8>, NpzError> {
    match m.dtype() {
        Dtype::Float32 => m.read_rows::<f32>(rows).map(|x| mat_bytes(&x)),
        Dtype::Float64 => m.read_rows::<f64>(rows).map(|x| mat_bytes(&x)),
        Dtype::Complex64 => m.read_rows::<c32>(rows).map(|x| mat_bytes(&x)),
        Dtype::Complex128 => m.read_rows::<c64>(rows).map(|x| mat_bytes(&x)),
    }
}

/// Views rows `rows` of `m` as its own dtype, copied out of the map (so that every byte is read).
fn view_as_is(m: &NpzMatrix, rows: Range<usize>) -> Result<Option<Vec<u8>>, NpzError> {
    Ok(match m.dtype() {
        Dtype::Float32 => m.view_rows::<f32>(rows)?.map(|v| mat_bytes(&v.to_owned())),
        Dtype::Float64 => m.view_rows::<f64>(rows)?.map(|v| mat_bytes(&v.to_owned())),
        Dtype::Complex64 => m.view_rows::<c32>(rows)?.map(|v| mat_bytes(&v.to_owned())),
        Dtype::Complex128 => m.view_rows::<c64>(rows)?.map(|v| mat_bytes(&v.to_owned())),
    })
}

/// What a mutant must do, beyond never panicking, hanging or over-allocating.
#[derive(Clone)]
enum Expect {
    /// Anything but a silent wrong result: a read of all rows either fails or gives the
    /// original member's values (bit flips and truncations: the CRC-32 catches the rest).
    SameOrError,
    /// A data byte of stored member `0` was flipped: reading all its rows, and checking it in
    /// shares, are CRC errors.
    CrcError(String),
    /// A deliberate edit: only the bounds.
    Any,
}

struct Mutant {
    what: String,
    bytes: Vec<u8>,
    expect: Expect,
}

/// Opens every member of the mutant at `path` (and the default one) and reads it in every way;
/// returns the invariants it breaks. `originals`: each member's name and full read.
fn exercise(path: &Path, originals: &[(String, Vec<u8>)], expect: &Expect) -> Vec<String> {
    let mut broken = Vec::new();
    let names = originals.iter().map(|(n, _)| Some(n.as_str())).chain([None]);
    for name in names {
        let Ok(m) = NpzMatrix::open(path, name) else { continue };
        let n = m.shape().0;
        let whole = read_as_is(&m, 0..n);
        let _ = read_as_is(&m, n / 3..n / 2 + 1.min(n));
        let _ = view_as_is(&m, 0..n);
        let _ = view_as_is(&m, n / 2..n);
        let shares = m.crc_span().map(|_| verify_in_shares(&m, 3));
        let original = originals.iter().find(|(o, _)| o == m.member()).map(|(_, v)| v);
        match expect {
            Expect::SameOrError => {
                if let (Ok(got), Some(want)) = (&whole, original)
                    && got != want
                {
                    broken.push(format!("member {}: a whole read succeeded with other values", m.member()));
                }
                if let Some(shares) = &shares
                    && whole.is_ok() != shares.is_ok()
                {
                    broken.push(format!("member {}: the whole read and the shares disagree", m.member()));
                }
            }
            Expect::CrcError(member) if m.member() == member => {
                if !matches!(whole.as_ref().map_err(|e| e.kind()), Err(NpzErrorKind::Crc { .. })) {
                    broken.push(format!("member {member}: flipped data byte, whole read gives {:?}", whole.err()));
                }
                if !matches!(
                    shares.as_ref().map(|s| s.as_ref().map_err(|e| e.kind())),
                    Some(Err(NpzErrorKind::Crc { .. }))
                ) {
                    broken.push(format!("member {member}: flipped data byte, shares give {shares:?}"));
                }
            }
            _ => {}
        }
    }
    broken
}

/// The regions of a zip archive written by numpy (no data descriptors), found by walking its
/// headers independently of the reader: boundaries, zip structure bytes, and for each member
/// (local header offset, stored?, `.npy` header range, data range).
struct Layout {
    boundaries: Vec<usize>,
    structure: Vec<usize>,
    members: Vec<(usize, bool, Range<usize>, Range<usize>)>,
}

fn layout(b: &[u8]) -> Layout {
    let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let (mut boundaries, mut structure, mut members) = (vec![0, b.len()], Vec::new(), Vec::new());
    let mut pos = 0;
    while b[pos..].starts_with(b"PK\x03\x04") {
        let extra = pos + 30 + u16_at(pos + 26);
        let start = extra + u16_at(pos + 28);
        let mut size = u32_at(pos + 18);
        if size == u32::MAX as usize {
            // numpy writes zip64 local headers: the sizes are in the zip64 extra field.
            let mut at = extra;
            while u16_at(at) != 1 {
                at += 4 + u16_at(at + 2);
            }
            size = u64::from_le_bytes(b[at + 12..at + 20].try_into().unwrap()) as usize;
        }
        let end = start + size;
        structure.extend(pos..start);
        let stored = u16_at(pos + 8) == 0;
        let (header, data) = if stored {
            let (pre, len) = if b[start + 6] == 1 { (10, u16_at(start + 8)) } else { (12, u32_at(start + 8)) };
            (start..start + pre + len, start + pre + len..end)
        } else {
            (start..start, start..end)
        };
        boundaries.extend([pos, start, header.end, end]);
        members.push((pos, stored, header, data));
        pos = end;
    }
    while b[pos..].starts_with(b"PK\x01\x02") {
        let next = pos + 46 + u16_at(pos + 28) + u16_at(pos + 30) + u16_at(pos + 32);
        structure.extend(pos..next);
        boundaries.push(pos);
        pos = next;
    }
    assert!(b[pos..].starts_with(b"PK\x05\x06") || b[pos..].starts_with(b"PK\x06\x06"), "layout at {pos}");
    structure.extend(pos..b.len());
    boundaries.push(pos);
    boundaries.sort_unstable();
    boundaries.dedup();
    Layout { boundaries, structure, members }
}

/// Rewrites the CRC-32 of the member whose local header is at `local` after its bytes changed.
fn fix_crc(b: &mut [u8], local: usize, data: Range<usize>) {
    let crc = crc32fast::hash(&b[data]).to_le_bytes();
    b[local + 14..local + 18].copy_from_slice(&crc);
    let mut pos = b.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    while b[pos..].starts_with(b"PK\x01\x02") {
        if u32::from_le_bytes(b[pos + 42..pos + 46].try_into().unwrap()) as usize == local {
            b[pos + 16..pos + 20].copy_from_slice(&crc);
        }
        pos +=
            46 + [28, 30, 32].iter().map(|&o| u16::from_le_bytes([b[pos + o], b[pos + o + 1]]) as usize).sum::<usize>();
    }
}

/// A deterministic pseudo-random sequence (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Header dicts that edit a member's shape, dtype and order.
fn header_edits(shape: (usize, usize)) -> Vec<String> {
    let (r, c) = shape;
    let dict = |descr: &str, order: &str, shape: &str| {
        format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}")
    };
    let mut out = Vec::new();
    for s in [
        format!("({c}, {r})"),
        format!("({r}, {})", c + 1),
        format!("({}, {c})", r + 1),
        format!("(0, {c})"),
        format!("({r}, 0)"),
        "(0, 0)".into(),
        "(0, 18446744073709551615)".into(),
        "(4611686018427387904, 4611686018427387904)".into(),
        "(1, 1099511627776)".into(),
        format!("({r}, {c}, 1)"),
        format!("({},)", r * c),
        "()".into(),
        format!("[{r}, {c}]"),
        format!("({r}, -{c})"),
        format!("({r}, {c}.0)"),
        format!("({r}, {c}"),
    ] {
        out.push(dict("<f8", "False", &s));
    }
    for descr in ["<f4", "<f8", "<c8", "<c16", ">f8", "|O", "<i8", "<f2"] {
        for order in ["False", "True"] {
            out.push(dict(descr, order, &format!("({r}, {c})")));
        }
    }
    out.push(format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({r}, {c}), 'x': 0}}"));
    out.push(format!("{{'descr': '<f8', 'shape': ({r}, {c})}}"));
    out.push(format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({r}, {c}), 'x': {}1{}}}",
        "[".repeat(40),
        "]".repeat(40)
    ));
    out
}

/// The mutants of fixture `bytes`.
fn mutants(file: &str, bytes: &[u8], rng: &mut Rng) -> Vec<Mutant> {
    let lay = layout(bytes);
    let mut out = Vec::new();
    let flip = |at: usize, bit: usize| {
        let mut b = bytes.to_vec();
        b[at] ^= 1 << bit;
        b
    };
    // Bit flips in every byte of the zip structures and of the stored .npy headers, and in a
    // sample of the data.
    for &at in &lay.structure {
        let bit = rng.below(8);
        out.push(Mutant {
            what: format!("{file}: flip bit {bit} of zip byte {at}"),
            bytes: flip(at, bit),
            expect: Expect::SameOrError,
        });
    }
    for (k, (_, stored, header, data)) in lay.members.iter().enumerate() {
        let name = member_name(bytes, lay.members[k].0);
        for at in header.clone() {
            let bit = rng.below(8);
            out.push(Mutant {
                what: format!("{file}: flip bit {bit} of header byte {at}"),
                bytes: flip(at, bit),
                expect: Expect::SameOrError,
            });
        }
        for _ in 0..data.len().min(24) {
            let at = data.start + rng.below(data.len());
            let bit = rng.below(8);
            let expect = if *stored { Expect::CrcError(name.clone()) } else { Expect::SameOrError };
            out.push(Mutant {
                what: format!("{file}: flip bit {bit} of data byte {at}"),
                bytes: flip(at, bit),
                expect,
            });
        }
    }
    // Truncations at every region boundary, and one byte either side.
    for &at in &lay.boundaries {
        for cut in [at.saturating_sub(1), at, at + 1] {
            if cut < bytes.len() {
                out.push(Mutant {
                    what: format!("{file}: cut at {cut}"),
                    bytes: bytes[..cut].to_vec(),
                    expect: Expect::SameOrError,
                });
            }
        }
    }
    // Header edits of the stored members: shape, dtype, order, length; with the CRC-32
    // rewritten (the reader must judge by structure) or not (a whole read must then fail).
    for &(local, stored, ref header, ref data) in &lay.members {
        if !stored {
            continue;
        }
        let start = header.start;
        let pre = if bytes[start + 6] == 1 { 10 } else { 12 };
        let dict_len = header.len() - pre;
        let text = String::from_utf8_lossy(&bytes[start + pre..header.end]).into_owned();
        let shape = parse_shape(&text);
        let member = start..data.end;
        let mut edits: Vec<(String, Vec<u8>)> = Vec::new();
        for dict in header_edits(shape) {
            if dict.len() + 1 > dict_len {
                continue;
            }
            let mut b = bytes.to_vec();
            let padded = format!("{dict:<width$}\n", width = dict_len - 1);
            b[start + pre..header.end].copy_from_slice(padded.as_bytes());
            edits.push((format!("header {dict}"), b));
        }
        if pre == 10 {
            for len in [0u16, 1, dict_len as u16 - 1, dict_len as u16 + 1, 10_000, 10_001, u16::MAX] {
                let mut b = bytes.to_vec();
                b[start + 8..start + 10].copy_from_slice(&len.to_le_bytes());
                edits.push((format!("header length {len}"), b));
            }
        }
        for (at, value, what) in [
            (6, 2, "version 2.0"),
            (6, 3, "version 3.0"),
            (6, 4, "version 4.0"),
            (7, 1, "version 1.1"),
            (0, 0x92, "magic"),
        ] {
            let mut b = bytes.to_vec();
            b[start + at] = value;
            edits.push((what.to_string(), b));
        }
        for (what, b) in edits {
            let mut fixed = b.clone();
            fix_crc(&mut fixed, local, member.clone());
            out.push(Mutant { what: format!("{file}: {what}, CRC rewritten"), bytes: fixed, expect: Expect::Any });
            out.push(Mutant { what: format!("{file}: {what}"), bytes: b, expect: Expect::SameOrError });
        }
    }
    out
}

/// The name (without `.npy`) of the member whose local header is at `local`.
fn member_name(b: &[u8], local: usize) -> String {
    let len = u16::from_le_bytes([b[local + 26], b[local + 27]]) as usize;
    let name = String::from_utf8_lossy(&b[local + 30..local + 30 + len]).into_owned();
    name.strip_suffix(".npy").unwrap_or(&name).to_string()
}

/// The 2-D shape written in a numpy header dict.
fn parse_shape(text: &str) -> (usize, usize) {
    let s = &text[text.find("'shape': (").unwrap() + 10..];
    let dims: Vec<usize> = s[..s.find(')').unwrap()].split(',').filter_map(|d| d.trim().parse().ok()).collect();
    (dims[0], dims.get(1).copied().unwrap_or(1))
}

/// Hand-made archives: every header edit over a 4×3 float64 member, stored and deflated, with
/// the zip entry declaring the true size, one byte more or less, or a thousand times more.
fn crafted_mutants() -> Vec<Mutant> {
    let mut out = Vec::new();
    for dict in header_edits((4, 3)) {
        let member = npy(&dict, 1, &f64_bytes(12));
        for deflated in [false, true] {
            for declared in [0i64, 1, -1, 1000] {
                let mut raw =
                    if deflated { RawMember::deflated("a.npy", &member) } else { RawMember::stored("a.npy", &member) };
                raw.size = match declared {
                    1000 => raw.size.saturating_mul(1000),
                    d => (raw.size as i64 + d) as u32,
                };
                if !deflated && declared != 0 {
                    raw.bytes.resize(raw.size as usize, 0);
                }
                out.push(Mutant {
                    what: format!("crafted {dict}, deflated {deflated}, declared size {declared:+}"),
                    bytes: zip_archive(&[raw]),
                    expect: Expect::Any,
                });
            }
        }
    }
    out
}

#[test]
fn mutants_of_the_fixtures_fail_cleanly() {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    let files = [
        "float64_c_stored.npz",
        "float64_f_compressed.npz",
        "complex64_f_stored.npz",
        "complex128_c_compressed.npz",
        "bigendian.npz",
        "multi.npz",
        "aligned.npz",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut all = Vec::new();
    for file in files {
        let bytes = std::fs::read(fixture(file)).unwrap();
        // The members' full reads, from the pristine file.
        let lay = layout(&bytes);
        let originals: Vec<(String, Vec<u8>)> = lay
            .members
            .iter()
            .map(|m| {
                let name = member_name(&bytes, m.0);
                let npz = NpzMatrix::open(fixture(file), Some(&name)).unwrap();
                let values = read_as_is(&npz, 0..npz.shape().0).unwrap();
                (name, values)
            })
            .collect();
        let originals = std::sync::Arc::new(originals);
        for m in mutants(file, &bytes, &mut rng) {
            all.push((m, originals.clone()));
        }
    }
    let none = std::sync::Arc::new(Vec::new());
    all.extend(crafted_mutants().into_iter().map(|m| (m, none.clone())));
    let count = all.len();

    // One worker runs the mutants one after the other; this thread waits for each under a
    // deadline, so that a hang fails the test instead of blocking it.
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mutant_{}.npz", std::process::id()));
    let (to_worker, inbox) = mpsc::channel::<(Mutant, std::sync::Arc<Vec<(String, Vec<u8>)>>)>();
    let (to_main, results) = mpsc::channel();
    let worker_path = path.clone();
    std::thread::spawn(move || {
        for (m, originals) in inbox {
            std::fs::write(&worker_path, &m.bytes).unwrap();
            budget::start(256 << 20);
            let t = Instant::now();
            let broken = exercise(&worker_path, &originals, &m.expect);
            let (took, peak) = (t.elapsed(), budget::peak());
            if to_main.send((broken, took, peak)).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let (mut worst_time, mut worst_mem) = ((Duration::ZERO, String::new()), (0.0f64, 0, String::new()));
    let mut failures = Vec::new();
    for (m, originals) in all {
        let (what, len) = (m.what.clone(), m.bytes.len());
        to_worker.send((m, originals)).unwrap();
        let (broken, took, peak) = match results.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: not done within 10 s"),
            Err(e) => panic!("{what}: the worker panicked ({e})"),
        };
        failures.extend(broken.into_iter().map(|b| format!("{what}: {b}")));
        if took > worst_time.0 {
            worst_time = (took, what.clone());
        }
        // Bound: 4 times the file plus 192 KiB (the inflater's state and window, buffers).
        let ratio = peak as f64 / len.max(1) as f64;
        assert!(peak <= 4 * len + (192 << 10), "{what}: peak heap {peak} bytes for a {len}-byte file");
        assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
        if peak > worst_mem.1 {
            worst_mem = (ratio, peak, what.clone());
        }
    }
    drop(to_worker);
    let _ = std::fs::remove_file(&path);
    println!(
        "{count} mutants in {:?}; slowest {:?} ({}); largest peak heap {} bytes, {:.1}x its file ({})",
        started.elapsed(),
        worst_time.0,
        worst_time.1,
        worst_mem.1,
        worst_mem.0,
        worst_mem.2
    );
    assert!(failures.is_empty(), "{} broken invariants:\n{}", failures.len(), failures.join("\n"));
    assert!(count > 3000, "only {count} mutants");
}

/// A zip end of central directory record declaring `count` members in `cd_size` bytes at
/// `cd_offset`.
fn end_record(count: u16, cd_size: u32, cd_offset: u32) -> Vec<u8> {
    let mut out = b"PK\x05\x06\0\0\0\0".to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[test]
fn many_end_records_are_not_each_searched_from() {
    // 4.4 MB of end records, each declaring one member at offset 0. A reader that looks for the
    // end record anywhere in the file, and for a central directory before each one it tries,
    // takes time quadratic in the file's size; the end record is in the last 64 KiB.
    let bytes = end_record(1, 46, 0).repeat(200_000);
    expect_err(open_hostile("end_records", &bytes), "central directory", |k| matches!(k, NpzErrorKind::NotZip(_)));
}

#[test]
fn declared_member_count_reserves_nothing_before_the_entries_are_read() {
    // 640 KB of padding, one zeroed central directory entry, and an end record declaring 65535
    // members in it: room for the declared entries may not be reserved before they are read.
    let mut bytes = vec![0u8; 640_000];
    bytes.extend_from_slice(b"PK\x01\x02");
    bytes.extend_from_slice(&[0; 42]);
    bytes.extend_from_slice(&end_record(u16::MAX, 46, 640_000));
    expect_err(open_hostile("member_count", &bytes), "65535 members", |k| matches!(k, NpzErrorKind::NotZip(_)));
}

#[test]
fn named_pipe_is_refused_without_waiting_for_a_writer() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fifo_{}.npz", std::process::id()));
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let p = path.clone();
    let (result, _, _) = bounded(std::time::Duration::from_secs(5), move || NpzMatrix::open(&p, None).map(|_| ()));
    let err = result.unwrap_err();
    assert!(matches!(err.kind(), NpzErrorKind::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput), "{err}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn duplicate_member_names_are_refused() {
    // numpy reads the last member of a name, a reader taking the first would load other data.
    let a = npy(F64_2X3, 1, &f64_bytes(6));
    let b = npy(F64_2X3, 1, &[0u8; 48]);
    let bytes = zip_archive(&[RawMember::stored("a.npy", &a), RawMember::stored("a.npy", &b)]);
    expect_err(open_hostile("duplicate", &bytes), "two members named a.npy", |k| matches!(k, NpzErrorKind::NotZip(_)));
}

// ---------------------------------------------------------------------------------------------
// scipy sparse files (issue 14): the fixtures of `tests/data/sparse/` (written by
// `scripts/make_sparse_fixtures.py` with scipy), read whole and by parts, and `save_sparse`.
// ---------------------------------------------------------------------------------------------

mod sparse {
    use std::ops::Range;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use faer::{Mat, c32, c64};
    use lazylinop::Scalar;
    use lazylinop::npz::{
        Dtype, IndexDtype, NpzError, NpzErrorKind, NpzLayout, SparseIndex, SparseMember, SparseNpz, SparsePart, detect,
        save_sparse, split_nnz,
    };
    use lazylinop::sparse::Format;
    use serde_json::Value;

    use super::bounded;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sparse").join(name)
    }

    fn manifest() -> Value {
        serde_json::from_str(&std::fs::read_to_string(data("manifest.json")).unwrap()).unwrap()
    }

    /// The scalar types, built exactly from the manifest's numbers.
    pub trait Exact: Scalar + PartialEq + std::fmt::Debug {
        fn from_pair(re: f64, im: f64) -> Self;
    }
    impl Exact for f32 {
        fn from_pair(re: f64, _: f64) -> Self {
            re as f32
        }
    }
    impl Exact for f64 {
        fn from_pair(re: f64, _: f64) -> Self {
            re
        }
    }
    impl Exact for c32 {
        fn from_pair(re: f64, im: f64) -> Self {
            c32::new(re as f32, im as f32)
        }
    }
    impl Exact for c64 {
        fn from_pair(re: f64, im: f64) -> Self {
            c64::new(re, im)
        }
    }

    /// The manifest's dense matrix, as `T`.
    fn expected<T: Exact>(e: &Value) -> Mat<T> {
        let shape = e["shape"].as_array().unwrap();
        let (m, n) = (shape[0].as_u64().unwrap() as usize, shape[1].as_u64().unwrap() as usize);
        let rows = e["dense"].as_array().unwrap();
        Mat::from_fn(m, n, |i, j| {
            let x = &rows[i][j];
            match x.as_array() {
                Some(pair) => T::from_pair(pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap()),
                None => T::from_pair(x.as_f64().unwrap(), 0.0),
            }
        })
    }

    /// Adds the entries of `part` into `out` (the whole matrix), from its raw slices, and checks
    /// that faer's view of it (checked by faer) has the same entries.
    fn accumulate<T: Exact, I: SparseIndex>(part: &SparsePart<T, I>, out: &mut Mat<T>) {
        let (ptr, idx, val) = (part.indptr(), part.indices(), part.data());
        assert_eq!(ptr.len(), part.range().len() + 1);
        assert_eq!(ptr[0].zx(), 0);
        assert_eq!((idx.len(), val.len(), ptr[ptr.len() - 1].zx()), (part.nnz(), part.nnz(), part.nnz()));
        let mut block = Mat::<T>::zeros(part.shape().0, part.shape().1);
        for k in 0..part.range().len() {
            for e in ptr[k].zx()..ptr[k + 1].zx() {
                let (i, j) = match part.format() {
                    Format::Csr => (k, idx[e].zx()),
                    Format::Csc => (idx[e].zx(), k),
                };
                block[(i, j)] += val[e];
            }
        }
        let faer_dense = match part.format() {
            Format::Csr => {
                assert!(part.as_csc().is_none());
                part.as_csr().unwrap().to_dense()
            }
            Format::Csc => {
                assert!(part.as_csr().is_none());
                part.as_csc().unwrap().to_dense()
            }
        };
        assert_eq!(faer_dense, block, "faer's view of the part");
        let r = part.range();
        for i in 0..block.nrows() {
            for j in 0..block.ncols() {
                let (oi, oj) = match part.format() {
                    Format::Csr => (r.start + i, j),
                    Format::Csc => (i, r.start + j),
                };
                out[(oi, oj)] += block[(i, j)];
            }
        }
    }

    /// Reads `npz` as a distributed reader would with `parts` ranks: the whole `indptr`, the
    /// split, then each part; returns the dense matrix and whether each part was mapped.
    fn read_by_parts<T: Exact, I: SparseIndex>(npz: &SparseNpz, parts: usize) -> Result<(Mat<T>, Vec<bool>), NpzError> {
        let indptr = npz.indptr::<I>()?;
        let blocks = split_nnz(&indptr, parts);
        check_split(&indptr, &blocks, parts);
        // The binary search in the file's `indptr` (no whole read when stored) cuts the same blocks.
        let searched = npz.split::<I>(parts)?;
        let starts: Vec<(std::ops::Range<usize>, usize)> =
            blocks.iter().map(|b| (b.clone(), indptr[b.start].zx())).collect();
        assert_eq!(searched, starts, "SparseNpz::split against split_nnz on the whole indptr");
        let (m, n) = npz.shape();
        let mut out = Mat::<T>::zeros(m, n);
        let mut mapped = Vec::new();
        for b in blocks {
            let part = npz.part::<T, I>(b.clone())?;
            assert_eq!(part.range(), b);
            assert_eq!(part.offset(), indptr[b.start].zx());
            mapped.push(part.is_mapped());
            accumulate(&part, &mut out);
        }
        Ok((out, mapped))
    }

    /// The blocks cover `0..major` in order, each index once, and are balanced: each holds
    /// within one major index's entries (the largest) of `nnz / parts`.
    fn check_split<I: SparseIndex>(indptr: &[I], blocks: &[Range<usize>], parts: usize) {
        let major = indptr.len() - 1;
        assert_eq!(blocks.len(), parts);
        assert_eq!(blocks[0].start, 0);
        assert_eq!(blocks[parts - 1].end, major);
        for w in blocks.windows(2) {
            assert_eq!(w[0].end, w[1].start, "{blocks:?}");
        }
        let nnz = indptr[major].zx() as f64;
        let widest = indptr.windows(2).map(|w| w[1].zx() - w[0].zx()).max().unwrap_or(0) as f64;
        for b in blocks {
            assert!(b.start <= b.end, "{blocks:?}");
            let held = (indptr[b.end].zx() - indptr[b.start].zx()) as f64;
            assert!((held - nnz / parts as f64).abs() <= widest + 1.0, "{blocks:?}: {held} of {nnz} for {parts} parts");
        }
        if nnz == 0.0 {
            for b in blocks {
                assert!(b.len() <= major.div_ceil(parts), "{blocks:?}: even by count without entries");
            }
        }
    }

    fn check_valid<T: Exact, I: SparseIndex>(e: &Value) {
        let file = e["file"].as_str().unwrap();
        let npz = SparseNpz::open(data(file)).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(detect(data(file)).unwrap(), NpzLayout::Sparse);
        let format = if e["format"] == "csr" { Format::Csr } else { Format::Csc };
        assert_eq!(npz.format(), format, "{file}");
        assert_eq!((npz.dtype(), npz.index_dtype()), (T::DTYPE, I::DTYPE), "{file}");
        assert_eq!(npz.nnz() as u64, e["nnz"].as_u64().unwrap(), "{file}");
        let want = expected::<T>(e);
        assert_eq!(npz.shape(), (want.nrows(), want.ncols()));
        let indptr: Vec<u64> = npz.indptr::<I>().unwrap().iter().map(|v| v.zx() as u64).collect();
        let listed: Vec<u64> = e["indptr"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(indptr, listed, "{file}: indptr");

        // Zero-copy exactly where the member is stored, native-endian and aligned for its type.
        let offset = |name: &str| {
            e["members"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()["data_offset"].as_u64()
        };
        let viewable = |name: &str, align: usize| {
            !e["big_endian"].as_bool().unwrap() && offset(name).is_some_and(|o| (o as usize).is_multiple_of(align))
        };
        let mapped = viewable("indices", align_of::<I>()) && viewable("data", align_of::<T>());
        if e["aligned"].as_bool().unwrap() {
            assert!(mapped, "{file}: the manifest says aligned");
        }
        let borrowed = matches!(npz.indptr::<I>().unwrap(), std::borrow::Cow::Borrowed(_));
        assert_eq!(borrowed, viewable("indptr", align_of::<I>()), "{file}: indptr borrowed from the map");
        for parts in [1, 2, 3, 5] {
            let (got, views) = read_by_parts::<T, I>(&npz, parts).unwrap_or_else(|err| panic!("{file}: {err}"));
            assert_eq!(got, want, "{file}: {parts} parts");
            assert!(views.iter().all(|&v| v == mapped), "{file}: {parts} parts mapped {views:?}, expected {mapped}");
        }
        // A part lives on after the file handle (it shares the map or owns its copy).
        let whole = npz.part::<T, I>(0..npz.major()).unwrap();
        drop(npz);
        let mut again = Mat::<T>::zeros(want.nrows(), want.ncols());
        accumulate(&whole, &mut again);
        assert_eq!(again, want, "{file}: whole part after the file handle is dropped");
    }

    macro_rules! with_types {
        ($dtype:expr, $index:expr, $f:ident($($arg:expr),*)) => {
            match ($dtype, $index) {
                (Dtype::Float32, IndexDtype::Int32) => $f::<f32, u32>($($arg),*),
                (Dtype::Float32, IndexDtype::Int64) => $f::<f32, u64>($($arg),*),
                (Dtype::Float64, IndexDtype::Int32) => $f::<f64, u32>($($arg),*),
                (Dtype::Float64, IndexDtype::Int64) => $f::<f64, u64>($($arg),*),
                (Dtype::Complex64, IndexDtype::Int32) => $f::<c32, u32>($($arg),*),
                (Dtype::Complex64, IndexDtype::Int64) => $f::<c32, u64>($($arg),*),
                (Dtype::Complex128, IndexDtype::Int32) => $f::<c64, u32>($($arg),*),
                (Dtype::Complex128, IndexDtype::Int64) => $f::<c64, u64>($($arg),*),
            }
        };
    }

    fn dtype_of(name: &str) -> Dtype {
        *Dtype::ALL.iter().find(|d| d.name() == name).unwrap()
    }

    fn index_of(name: &str) -> IndexDtype {
        if name == "int32" { IndexDtype::Int32 } else { IndexDtype::Int64 }
    }

    #[test]
    fn every_valid_fixture_reads_whole_and_by_parts() {
        let m = manifest();
        let valid = m["valid"].as_array().unwrap();
        assert_eq!(valid.len(), 56);
        for e in valid {
            let e = e.clone();
            let file = e["file"].as_str().unwrap().to_string();
            let (dtype, index) = (dtype_of(e["dtype"].as_str().unwrap()), index_of(e["index_dtype"].as_str().unwrap()));
            let ((), _, took) = bounded(Duration::from_secs(20), move || with_types!(dtype, index, check_valid(&e)));
            assert!(took < Duration::from_secs(10), "{file}: {took:?}");
        }
    }

    #[test]
    fn mismatched_types_are_typed_errors() {
        let npz = SparseNpz::open(data("csr_float64_int32_stored.npz")).unwrap();
        match npz.part::<f32, u32>(0..1).unwrap_err().kind() {
            NpzErrorKind::DtypeMismatch { expected: Dtype::Float32, .. } => {}
            other => panic!("{other:?}"),
        }
        let err = npz.part::<f64, u64>(0..1).unwrap_err();
        assert!(
            matches!(err.kind(), NpzErrorKind::IndexMismatch { found: IndexDtype::Int32, expected: IndexDtype::Int64 }),
            "{err}"
        );
        assert!(matches!(npz.indptr::<u64>().unwrap_err().kind(), NpzErrorKind::IndexMismatch { .. }));
        let err = npz.part::<f64, u32>(3..14).unwrap_err();
        assert!(matches!(err.kind(), NpzErrorKind::MajorOutOfRange { major: 13, .. }), "{err}");
        #[allow(clippy::reversed_empty_ranges)]
        let err = npz.part::<f64, u32>(5..4).unwrap_err();
        assert!(matches!(err.kind(), NpzErrorKind::MajorOutOfRange { .. }), "{err}");
        // Empty parts anywhere, including at the end.
        for k in 0..=13 {
            let part = npz.part::<f64, u32>(k..k).unwrap();
            assert_eq!((part.nnz(), part.indptr().len(), part.shape()), (0, 1, (0, 11)));
        }
    }

    #[test]
    fn dense_files_are_told_apart_and_refused_as_sparse() {
        let dense = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/npz/float64_c_stored.npz");
        assert_eq!(detect(&dense).unwrap(), NpzLayout::Dense);
        let err = SparseNpz::open(&dense).unwrap_err();
        assert!(matches!(err.kind(), NpzErrorKind::NotSparse { .. }), "{err}");
        assert!(err.to_string().contains("not a scipy sparse matrix file"), "{err}");
        // A sparse file missing one member is still detected as sparse, and named.
        assert_eq!(detect(data("missing_format.npz")).unwrap(), NpzLayout::Sparse);
        assert_eq!(detect(data("unsupported_coo.npz")).unwrap(), NpzLayout::Sparse);
        assert!(matches!(detect(data("truncated.npz")).unwrap_err().kind(), NpzErrorKind::Truncated));
    }

    /// Whether `kind` is the error the manifest's `reason` describes.
    fn matches_reason(reason: &str, err: &NpzError) -> bool {
        let kind = err.kind();
        match reason {
            "indptr_not_monotonic" => matches!(kind, NpzErrorKind::Indptr { why, .. } if why.contains("decreases")),
            "indptr_first_nonzero" => matches!(kind, NpzErrorKind::Indptr { at: 0, value: 1, .. }),
            "indptr_last_exceeds_nnz" | "indptr_entry_exceeds_nnz" => {
                matches!(kind, NpzErrorKind::Indptr { why, .. } if why.contains("exceeds"))
            }
            "indptr_last_below_nnz" => matches!(kind, NpzErrorKind::Indptr { why, .. } if why.contains("last entry")),
            "index_out_of_range" => {
                matches!(kind, NpzErrorKind::IndexOutOfRange { index, bound, .. } if index >= &(*bound as i64))
            }
            "negative_index" => matches!(kind, NpzErrorKind::IndexOutOfRange { index: -1, bound: 11, .. }),
            "data_indices_length_mismatch" => matches!(kind, NpzErrorKind::LengthMismatch { .. }),
            "shape_indptr_mismatch" => matches!(kind, NpzErrorKind::IndptrLength { found: 14, expected: 13 }),
            "shape_not_2d" | "negative_shape" => {
                matches!(kind, NpzErrorKind::SparseMember(_)) && err.member() == Some("shape")
            }
            "data_not_1d" => matches!(kind, NpzErrorKind::SparseMember(_)) && err.member() == Some("data"),
            "index_dtype:int8" | "index_dtype:float64" => matches!(kind, NpzErrorKind::IndexDtype(_)),
            "index_dtype_mismatch" => matches!(
                kind,
                NpzErrorKind::IndexDtypeMismatch { indices: IndexDtype::Int32, indptr: IndexDtype::Int64 }
            ),
            "bad_crc" => matches!(kind, NpzErrorKind::Crc { .. }) && err.member() == Some("data"),
            "truncated" => matches!(kind, NpzErrorKind::Truncated),
            _ => {
                if let Some(member) = reason.strip_prefix("missing_member:") {
                    matches!(kind, NpzErrorKind::MemberMissing { .. }) && err.member() == Some(member)
                } else if let Some(dtype) = reason.strip_prefix("data_dtype:") {
                    matches!(kind, NpzErrorKind::UnsupportedDtype(_))
                        && err.member() == Some("data")
                        && (dtype == "int64" || err.to_string().contains(if dtype == "object" { "O" } else { dtype }))
                } else if let Some(name) =
                    reason.strip_prefix("unknown_format:").or_else(|| reason.strip_prefix("unsupported_format:"))
                {
                    let hint = reason.starts_with("unknown") || err.to_string().contains(".tocsr()");
                    matches!(kind, NpzErrorKind::SparseFormat(f) if f == name) && hint
                } else {
                    panic!("unknown reason {reason}")
                }
            }
        }
    }

    /// A whole read, as a distributed reader's first steps: open, the whole `indptr`, a part
    /// of every major index.
    fn whole_read<T: Scalar, I: SparseIndex>(path: &Path) -> Result<(), NpzError> {
        let npz = SparseNpz::open(path)?;
        npz.indptr::<I>()?;
        npz.part::<T, I>(0..npz.major())?;
        Ok(())
    }

    /// Each part of `parts` even blocks on its own (without reading the whole `indptr`): the
    /// errors they give.
    fn by_parts<T: Scalar, I: SparseIndex>(npz: &SparseNpz, parts: usize) -> Vec<NpzError> {
        let major = npz.major();
        (0..parts).filter_map(|k| npz.part::<T, I>(k * major / parts..(k + 1) * major / parts).err()).collect()
    }

    #[test]
    fn every_malformed_fixture_is_a_typed_error() {
        let m = manifest();
        let malformed = m["malformed"].as_array().unwrap();
        assert_eq!(malformed.len(), 33);
        for e in malformed {
            let (file, reason) = (e["file"].as_str().unwrap().to_string(), e["reason"].as_str().unwrap().to_string());
            let path = data(&file);
            let (result, _, _) = bounded(Duration::from_secs(10), move || {
                // The file's own types where it opens, else any: the error comes first.
                let types = SparseNpz::open(&path).map(|n| (n.dtype(), n.index_dtype()));
                let (dtype, index) = types.unwrap_or((Dtype::Float64, IndexDtype::Int32));
                let whole = with_types!(dtype, index, whole_read(&path));
                // Structural faults are found by the part holding them, alone.
                let parts: Vec<Vec<NpzError>> = match SparseNpz::open(&path) {
                    Ok(npz) => [1, 2, 3, 5].iter().map(|&p| with_types!(dtype, index, by_parts(&npz, p))).collect(),
                    Err(_) => Vec::new(),
                };
                (whole, parts)
            });
            let (whole, parts) = result;
            let err = whole.expect_err(&file);
            assert!(matches_reason(&reason, &err), "{file} ({reason}): {err} ({:?})", err.kind());
            assert!(err.to_string().contains(&file), "{err}");
            let structural =
                reason.starts_with("indptr_") || reason.starts_with("index_out") || reason == "negative_index";
            for (p, errs) in parts.iter().enumerate() {
                if structural {
                    assert!(!errs.is_empty(), "{file}: no part of split {p} found the fault");
                }
                for err in errs {
                    // A part that sees another part's fault differently may name another
                    // `indptr` problem (e.g. an entry past nnz seen as decreasing), never a
                    // wrong kind.
                    let ok = matches_reason(&reason, err)
                        || (reason.starts_with("indptr_") && matches!(err.kind(), NpzErrorKind::Indptr { .. }))
                        || (reason == "bad_crc" && matches!(err.kind(), NpzErrorKind::Crc { .. }));
                    assert!(ok, "{file}: a part failed with {err}");
                }
            }
        }
    }

    #[test]
    fn split_is_balanced_and_covers_every_index_once() {
        // The skewed fixture: one row holds 6 of the 10 entries.
        let npz = SparseNpz::open(data("csr_skewed.npz")).unwrap();
        let indptr = npz.indptr::<u32>().unwrap();
        for parts in 1..=12 {
            let blocks = split_nnz(&indptr, parts);
            check_split(&indptr, &blocks, parts);
        }
        let heavy = (0..9).find(|&i| indptr[i + 1] - indptr[i] == 6).unwrap();
        let two = split_nnz(&indptr, 2);
        let holds = |b: &Range<usize>| indptr[b.end] - indptr[b.start];
        // 10 entries in two: the heavy row goes where the split is closest to 5.
        assert!(two.iter().any(|b| b.contains(&heavy) && holds(b) >= 6), "{two:?}");
        assert!(two.iter().map(holds).max().unwrap() <= 8, "{two:?}");
        assert_eq!(split_nnz(&indptr, 3), split_nnz(&indptr, 3), "deterministic");

        // Uniform rows balance exactly; empty matrices split by count; more parts than rows.
        let uniform: Vec<u64> = (0..=12).map(|i| 5 * i).collect();
        assert_eq!(split_nnz(&uniform, 4), vec![0..3, 3..6, 6..9, 9..12]);
        let empty = vec![0u32; 11];
        assert_eq!(split_nnz(&empty, 3), vec![0..3, 3..6, 6..10]);
        let few = [0u32, 4, 9];
        let blocks = split_nnz(&few, 5);
        check_split(&few, &blocks, 5);
        assert_eq!(blocks.iter().filter(|b| !b.is_empty()).count(), 2);
        assert_eq!(split_nnz(&[0u32], 3), vec![0..0, 0..0, 0..0]);
        // An unchecked, decreasing indptr: still every index once, no panic.
        let wild = [5u32, 30, 3, 12, 2, 20];
        for parts in 1..8 {
            let blocks = split_nnz(&wild, parts);
            assert_eq!((blocks[0].start, blocks[parts - 1].end), (0, 5));
            assert!(blocks.windows(2).all(|w| w[0].end == w[1].start && w[0].start <= w[0].end), "{blocks:?}");
        }

        // Random indptrs with heavy rows.
        let mut state = 12345u64;
        for _ in 0..200 {
            let mut next = || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as usize
            };
            let n = next() % 40;
            let mut ptr = vec![0u64];
            for _ in 0..n {
                let heavy = next() % 10 == 0;
                let add = if heavy { next() % 200 } else { next() % 6 };
                ptr.push(ptr.last().unwrap() + add as u64);
            }
            for parts in [1, 2, 3, 5, 7, 64] {
                check_split(&ptr, &split_nnz(&ptr, parts), parts);
            }
        }
    }

    #[test]
    fn crc_of_members_combines_across_shares() {
        let npz = SparseNpz::open(data("csr_float64_int32_aligned.npz")).unwrap();
        for member in [SparseMember::Indptr, SparseMember::Indices, SparseMember::Data] {
            let span = npz.crc_span(member).unwrap();
            let cut = span / 3;
            let parts =
                [(npz.crc32_of(member, 0..cut).unwrap(), cut), (npz.crc32_of(member, cut..span).unwrap(), span - cut)];
            npz.verify_crc(member, parts).unwrap();
            let err = npz.verify_crc(member, [(parts[0].0 ^ 1, cut), parts[1]]).unwrap_err();
            assert!(matches!(err.kind(), NpzErrorKind::Crc { .. }), "{err}");
            assert!(matches!(npz.crc32_of(member, 0..span + 1).unwrap_err().kind(), NpzErrorKind::CrcRange { .. }));
        }
        // The damaged fixture: only the data member's shares disagree.
        let bad = SparseNpz::open(data("bad_crc.npz")).unwrap();
        for (member, ok) in [(SparseMember::Indptr, true), (SparseMember::Indices, true), (SparseMember::Data, false)] {
            let span = bad.crc_span(member).unwrap();
            assert_eq!(bad.verify_crc(member, [(bad.crc32_of(member, 0..span).unwrap(), span)]).is_ok(), ok);
        }
        // Deflated members have no span: a whole part verifies them.
        let deflated = SparseNpz::open(data("csr_float64_int32_deflated.npz")).unwrap();
        assert!(deflated.is_compressed(SparseMember::Data));
        assert_eq!(deflated.crc_span(SparseMember::Data), None);
        assert!(matches!(
            deflated.crc32_of(SparseMember::Data, 0..0).unwrap_err().kind(),
            NpzErrorKind::CrcRange { span: None, .. }
        ));
    }

    /// A CSR matrix with unsorted and repeated column indices and an empty row.
    fn noncanonical<T: Exact, I: SparseIndex>() -> (Vec<I>, Vec<I>, Vec<T>, Mat<T>) {
        let pattern: [&[usize]; 5] = [&[2, 0, 2], &[], &[3, 1, 1, 0], &[1], &[3, 3]];
        let (mut ptr, mut idx, mut val) = (vec![I::truncate(0)], Vec::new(), Vec::new());
        let mut dense = Mat::<T>::zeros(5, 4);
        let mut x = 0.25;
        for (i, row) in pattern.iter().enumerate() {
            for &j in row.iter() {
                x += 1.5;
                let v = T::from_pair(x, -x / 2.0);
                idx.push(I::truncate(j));
                val.push(v);
                dense[(i, j)] += v;
            }
            ptr.push(I::truncate(idx.len()));
        }
        (ptr, idx, val, dense)
    }

    fn round_trip<T: Exact, I: SparseIndex>(dir: &Path) {
        use faer::sparse::{SparseColMatRef, SparseRowMatRef, SymbolicSparseColMatRef, SymbolicSparseRowMatRef};
        let (ptr, idx, val, dense) = noncanonical::<T, I>();
        let path = dir.join(format!("sparse_{}_{}_{}.npz", T::DTYPE, I::DTYPE, std::process::id()));
        for format in [Format::Csr, Format::Csc] {
            match format {
                Format::Csr => {
                    let s = SymbolicSparseRowMatRef::new_unsorted_checked(5, 4, &ptr, None, &idx);
                    save_sparse(&path, SparseRowMatRef::new(s, &val)).unwrap();
                }
                Format::Csc => {
                    // The same arrays as a CSC matrix: the transpose.
                    let s = SymbolicSparseColMatRef::new_unsorted_checked(4, 5, &ptr, None, &idx);
                    save_sparse(&path, SparseColMatRef::new(s, &val)).unwrap();
                }
            }
            let want = match format {
                Format::Csr => dense.clone(),
                Format::Csc => dense.transpose().to_owned(),
            };
            let npz = SparseNpz::open(&path).unwrap();
            assert_eq!((npz.format(), npz.dtype(), npz.index_dtype()), (format, T::DTYPE, I::DTYPE));
            for parts in [1, 2, 3, 5] {
                let (got, mapped) = read_by_parts::<T, I>(&npz, parts).unwrap();
                assert_eq!(got, want, "{format:?}, {parts} parts");
                assert!(mapped.iter().all(|&m| m), "save_sparse's members are viewed in place");
            }
            // The arrays as written, unsorted and repeated indices kept.
            let whole = npz.part::<T, I>(0..5).unwrap();
            assert_eq!((whole.indptr(), whole.indices(), whole.data()), (&ptr[..], &idx[..], &val[..]));
            if T::DTYPE == Dtype::Complex128 && I::DTYPE == IndexDtype::Int32 {
                scipy_check(&path, format, &want);
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    /// Loads `path` with `scipy.sparse.load_npz` and compares it with `want`, when python3 and
    /// scipy are installed (CI has no scipy: then it says so and checks nothing).
    fn scipy_check<T: Exact>(path: &Path, format: Format, want: &Mat<T>) {
        let script = "import sys, json, scipy.sparse as sp\n\
                      a = sp.load_npz(sys.argv[1]); a.check_format(full_check=True)\n\
                      d = a.toarray()\n\
                      print(json.dumps([a.format, [[[float(x.real), float(x.imag)] for x in r] for r in d]]))";
        let out = match std::process::Command::new("python3").arg("-c").arg(script).arg(path).output() {
            Ok(out) if out.status.success() => out,
            Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
                println!("scipy is not installed: save_sparse not checked against scipy");
                return;
            }
            Ok(out) => panic!("scipy failed to load the file: {}", String::from_utf8_lossy(&out.stderr)),
            Err(_) => {
                println!("python3 is not installed: save_sparse not checked against scipy");
                return;
            }
        };
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0], if format == Format::Csr { "csr" } else { "csc" });
        let got = Mat::<T>::from_fn(want.nrows(), want.ncols(), |i, j| {
            let x = &v[1][i][j];
            T::from_pair(x[0].as_f64().unwrap(), x[1].as_f64().unwrap())
        });
        assert_eq!(&got, want, "scipy reads what save_sparse wrote");
        println!("scipy loads save_sparse's {format:?} file");
    }

    /// A deflated CSR file of `rows` rows of 8 entries (int32 indices, float64 values), built
    /// here with the zip helpers.
    fn deflated_csr(rows: usize) -> Vec<u8> {
        use super::{RawMember, npy, zip_archive};
        let (n, per) = (rows, 8usize);
        let mut idx = Vec::new();
        let mut val = Vec::new();
        let mut ptr = vec![0u8; 0];
        ptr.extend_from_slice(&0i32.to_le_bytes());
        for i in 0..n {
            for k in 0..per {
                idx.extend_from_slice(&(((i * 7 + k * 3) % 50) as i32).to_le_bytes());
                val.extend_from_slice(&((i * per + k) as f64).to_le_bytes());
            }
            ptr.extend_from_slice(&(((i + 1) * per) as i32).to_le_bytes());
        }
        let dict =
            |descr: &str, shape: &str| format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        let nnz = n * per;
        let mut shape = Vec::new();
        shape.extend_from_slice(&(n as i64).to_le_bytes());
        shape.extend_from_slice(&50i64.to_le_bytes());
        zip_archive(&[
            RawMember::deflated("indices.npy", &npy(&dict("<i4", &format!("({nnz},)")), 1, &idx)),
            RawMember::deflated("indptr.npy", &npy(&dict("<i4", &format!("({},)", n + 1)), 1, &ptr)),
            RawMember::deflated("format.npy", &npy(&dict("|S3", "()"), 1, b"csr")),
            RawMember::deflated("shape.npy", &npy(&dict("<i8", "(2,)"), 1, &shape)),
            RawMember::deflated("data.npy", &npy(&dict("<f8", &format!("({nnz},)")), 1, &val)),
        ])
    }

    #[test]
    fn deflated_parts_hold_only_their_share() {
        let rows = 100_000;
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sparse_deflated_{}.npz", std::process::id()));
        std::fs::write(&path, deflated_csr(rows)).unwrap();
        for range in [0..10, rows / 2..rows / 2 + 10, rows - 10..rows] {
            let p = path.clone();
            let r = range.clone();
            let (part, peak, _) = bounded(Duration::from_secs(20), move || {
                let npz = SparseNpz::open(&p).unwrap();
                npz.part::<f64, u32>(r).unwrap()
            });
            // 10 rows of 8 entries: 80 values and indices, whatever the file's 800000; the
            // inflater's state and a chunk buffer besides.
            assert!(peak < 256 << 10, "{range:?}: peak heap {peak} bytes");
            println!("deflated part {range:?}: peak heap {peak} bytes");
            assert!(!part.is_mapped());
            assert_eq!((part.nnz(), part.offset()), (80, range.start * 8));
            let want: Vec<f64> = (range.start * 8..range.end * 8).map(|k| k as f64).collect();
            assert_eq!(part.data(), &want[..]);
            assert_eq!(part.indptr(), &(0..=10).map(|k| k * 8).collect::<Vec<u32>>()[..]);
        }
        // The whole file, checked and CRC-verified.
        let npz = SparseNpz::open(&path).unwrap();
        assert_eq!(npz.part::<f64, u32>(0..rows).unwrap().nnz(), rows * 8);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn sparse_file_and_part_are_send_and_sync() {
        fn check<X: Send + Sync>() {}
        check::<SparseNpz>();
        check::<SparsePart<c64, u64>>();
    }

    /// Reads `path` whole (one part: every member's CRC-32 verified) as the types `e` names,
    /// and on success compares with the manifest's matrix: a damaged file is an error or the
    /// right matrix, never another one.
    fn read_mutant<T: Exact, I: SparseIndex>(path: &Path, e: &Value) -> Result<(), String> {
        match SparseNpz::open(path).and_then(|npz| read_by_parts::<T, I>(&npz, 1)) {
            Ok((got, _)) if got == expected::<T>(e) => Ok(()),
            Ok(_) => Err("read another matrix without an error".into()),
            Err(_) => Ok(()),
        }
    }

    #[test]
    fn mutants_of_sparse_fixtures_fail_cleanly() {
        let m = manifest();
        let files = [
            "csr_float64_int32_stored.npz",
            "csc_complex64_int64_deflated.npz",
            "csr_float64_int32_aligned.npz",
            "csr_bigendian.npz",
            "csc_noncanonical_complex128_deflated.npz",
        ];
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut count = 0;
        for file in files {
            let e = m["valid"].as_array().unwrap().iter().find(|e| e["file"] == file).unwrap().clone();
            let (dtype, index) = (dtype_of(e["dtype"].as_str().unwrap()), index_of(e["index_dtype"].as_str().unwrap()));
            let bytes = std::fs::read(data(file)).unwrap();
            let mut mutants = Vec::new();
            for cut in (0..bytes.len()).step_by(7) {
                mutants.push(bytes[..cut].to_vec());
            }
            for _ in 0..1000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut b = bytes.clone();
                let at = (state as usize >> 8) % b.len();
                match state % 3 {
                    0 => b[at] ^= 1 << (state >> 3 & 7),
                    1 => b[at] = 0xff,
                    _ => b[at] = b[at].wrapping_add(1),
                }
                mutants.push(b);
            }
            count += mutants.len();
            let path = dir.join(format!("sparse_mutant_{}.npz", std::process::id()));
            let len = bytes.len();
            let (broken, peak, took) = bounded(Duration::from_secs(60), move || {
                let mut broken = Vec::new();
                for (k, b) in mutants.iter().enumerate() {
                    std::fs::write(&path, b).unwrap();
                    if let Err(why) = with_types!(dtype, index, read_mutant(&path, &e)) {
                        broken.push(format!("mutant {k}: {why}"));
                    }
                }
                let _ = std::fs::remove_file(&path);
                broken
            });
            assert!(broken.is_empty(), "{file}: {broken:?}");
            // Memory bounded by the file's content, whatever its headers declare: the largest
            // read of any mutant (and the test's own bookkeeping) stays small.
            assert!(peak <= 8 * len + (256 << 10), "{file}: peak heap {peak} bytes for a {len}-byte file");
            println!("{file}: mutants read in {took:?}, peak heap {peak} bytes");
        }
        assert!(count > 5000, "only {count} mutants");
    }

    /// A mapped part's indices live in the file's map: a file rewritten in place after the
    /// view was checked (against the map's contract, but with safe code) makes the kernels
    /// panic on an index out of range, never read or write out of bounds (the one-column
    /// scatter writes, and the gathers read, unchecked at indices that cannot change): the
    /// scatter and the gather, on one column and on a panel.
    #[test]
    fn a_mapped_part_whose_file_changes_in_place_never_reads_or_writes_out_of_bounds() {
        use faer::sparse::{SparseColMatRef, SymbolicSparseColMatRef};
        use lazylinop::prelude::*;
        use lazylinop::sparse::Sparse;
        use std::io::{Seek, SeekFrom, Write};

        let path = std::env::temp_dir().join(format!("lazylinop-npz-{}-changed-in-place.npz", std::process::id()));
        // A 4×4 CSC, one entry a column, at rows 3, 1, 0, 2.
        let (ptr, idx, val) = ([0u32, 1, 2, 3, 4], [3u32, 1, 0, 2], [1.5f64, 2.5, 3.5, 4.5]);
        let sym = SymbolicSparseColMatRef::new_unsorted_checked(4, 4, &ptr, None, &idx);
        save_sparse(&path, SparseColMatRef::new(sym, &val)).unwrap();
        let npz = SparseNpz::open(&path).unwrap();
        let part = npz.part::<f64, u32>(0..4).unwrap();
        assert!(part.is_mapped(), "save_sparse writes members that are viewed in place");
        let op = Sparse::new(part.view());
        let x = Mat::<f64>::from_fn(4, 1, |i, _| i as f64 + 1.0);
        assert_eq!(op.matmat(&x), Mat::from_fn(4, 1, |i, _| [10.5, 5.0, 18.0, 1.5][i]), "before the change");
        // The file's second index becomes 2³⁰, in place, while `op` holds its checked view.
        let bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(16).position(|w| w == bytemuck::cast_slice::<u32, u8>(&idx)).expect("indices") + 4;
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(at as u64)).unwrap();
        file.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
        drop(file);
        let x16 = Mat::<f64>::from_fn(4, 16, |i, j| (i + j) as f64);
        for (what, x) in [("one column", &x), ("a panel", &x16)] {
            for (walk, got) in [
                ("scatter", std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.matmat(x)))),
                ("gather", std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.transpose().matmat(x)))),
            ] {
                assert!(
                    got.is_err(),
                    "{walk} on {what}: an index out of range read from the map must panic, got {got:?}"
                );
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn save_sparse_round_trips_viewed_in_place() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        round_trip::<f32, u32>(dir);
        round_trip::<f64, u32>(dir);
        round_trip::<f64, u64>(dir);
        round_trip::<c32, u64>(dir);
        round_trip::<c64, u32>(dir);
        round_trip::<c64, u64>(dir);
        // A faer view with per-row counts (entries past each count are not the matrix's):
        // written compressed, `indptr` from 0.
        {
            use faer::sparse::{SparseRowMatRef, SymbolicSparseRowMatRef};
            let ptr = [1u32, 4, 5, 9];
            let nnz = [2u32, 0, 3];
            let idx = [9u32, 0, 2, 7, 8, 1, 1, 3, 8];
            let val = [9.0f64, 1.0, 2.0, 9.0, 9.0, 3.0, 4.0, 5.0, 9.0];
            let s = SymbolicSparseRowMatRef::new_unsorted_checked(3, 4, &ptr, Some(&nnz), &idx);
            let path = dir.join(format!("sparse_nnz_{}.npz", std::process::id()));
            save_sparse(&path, SparseRowMatRef::new(s, &val)).unwrap();
            let npz = SparseNpz::open(&path).unwrap();
            let whole = npz.part::<f64, u32>(0..3).unwrap();
            assert_eq!(
                (whole.indptr(), whole.indices(), whole.data()),
                (&[0u32, 2, 2, 5][..], &[0u32, 2, 1, 1, 3][..], &[1.0, 2.0, 3.0, 4.0, 5.0][..])
            );
            std::fs::remove_file(&path).unwrap();
        }
        // An empty 0×0 matrix and one without entries.
        let path = dir.join(format!("sparse_empty_{}.npz", std::process::id()));
        for (m, n) in [(0, 0), (3, 0), (0, 4), (6, 5)] {
            let a = faer::sparse::SparseRowMat::<u32, f64>::try_new_from_triplets(m, n, &[]).unwrap();
            save_sparse(&path, a.as_ref()).unwrap();
            let npz = SparseNpz::open(&path).unwrap();
            assert_eq!((npz.shape(), npz.nnz()), ((m, n), 0));
            for parts in [1, 3] {
                let (got, _) = read_by_parts::<f64, u32>(&npz, parts).unwrap();
                assert_eq!(got, Mat::<f64>::zeros(m, n));
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
}
