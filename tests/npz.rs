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
        let expect_view = method == zip::CompressionMethod::Stored && (starts[k] + 128) % 8 == 0;
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
