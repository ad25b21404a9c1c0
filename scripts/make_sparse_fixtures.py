#!/usr/bin/env python3
"""Writes the scipy sparse `.npz` fixtures of the sparse `MpiLop` into `tests/data/sparse/`.

Run it from anywhere: `pip install scipy numpy && python3 scripts/make_sparse_fixtures.py`.
It installs nothing itself. CI has no scipy: the generated files are committed
(each a few KB at most). The content is deterministic (fixed seeds): a rerun
writes the same matrices, members and offsets (numpy stamps zip entries with the
current time, so the bytes differ in those fields). Made with numpy 2.4.6 and
scipy 1.17.1.

What scipy writes
-----------------
`scipy.sparse.save_npz(file, A, compressed)` writes, in this order, the members
`indices`, `indptr` (both int32, or int64 when the matrix holds int64 index
arrays), `format` (0-d `S3`: b'csr' or b'csc'), `shape` (int64, 2 entries),
`data`, and `_is_array` (0-d bool, only for `csr_array`/`csc_array`), with
`np.savez` (stored members, not aligned) or `np.savez_compressed` (deflated).
`coo` files have `row`, `col` instead of `indices`, `indptr`; `dia` files have
`offsets`; `bsr` files have 3-D `data`.

Values
------
Every stored value is a multiple of 1/4 in [-50, 50] (and so are imaginary
parts), never 0: exact in float32, and sums of duplicates stay exact. The
manifest gives the dense matrix, so the Rust test compares exactly.

Manifest (`manifest.json`)
--------------------------
`{"valid": [...], "malformed": [...]}`, one entry per line. A valid entry:

    file, case          file name; which situation it covers ("grid", "few_rows", ...)
    format              "csr" or "csc"
    dtype, index_dtype  numpy names of `data` and of `indices`/`indptr` as stored in the file
    compressed          true if members are deflated (compressed=True)
    aligned             true if every member's array data starts at a multiple of 64 bytes
    big_endian          true if `data`, `indices` and `indptr` are big-endian
    shape, nnz          [nrows, ncols]; len(data) (duplicates counted, = indptr[-1])
    canonical           scipy's has_canonical_format (sorted indices, no duplicates)
    members             zip order of the members: [{name, dtype, shape, data_offset}], where
                        data_offset is the offset in the file of the member's array data
                        (null when deflated), and dtype a numpy `str` (e.g. "<i4", "|S3")
    indptr              the `indptr` member, as a list
    dense               the dense matrix, row-major: a list of rows, each a list of numbers
                        (real dtypes) or of [re, im] pairs (complex dtypes); duplicates summed.
                        Integral values are written as JSON integers (0, -23), others as
                        floats (48.5): read every number as f64, all are exact

A malformed entry:

    file, reason        file name; machine-readable reason key (e.g. "index_out_of_range",
                        "missing_member:data", "unsupported_format:coo")
    description         one human sentence
    base                the valid file it varies (or null)
    members             zip order of its members: [name, ...] (null if the zip is unreadable)
    scipy               what scipy 1.17 does with it: "raises_at_load" (`load_npz` raises),
                        "raises_at_check_format" (loads, `check_format(full_check=True)`
                        raises) or "loads_silently"
    scipy_error         the exception scipy raised ("Type: message"), or null
"""

import io
import json
import os
import struct
import zipfile

import numpy as np
import scipy.sparse as sp

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "sparse")
DTYPES = ["float32", "float64", "complex64", "complex128"]
INDEX_DTYPES = ["int32", "int64"]
MEMBER_ORDER = ["indices", "indptr", "format", "shape", "data"]
ZIP_DATE = (2024, 1, 1, 0, 0, 0)

manifest = {"valid": [], "malformed": []}
next_seed = [1]
saved = {}  # file name -> (matrix, dense) of each valid file, for the malformed variations


def path(fname):
    return os.path.join(OUT, fname)


# ---------------------------------------------------------------------------------------------
# Matrices


def values(rng, n, dtype):
    """`n` nonzero multiples of 1/4 in [-50, 50] (real and imaginary parts)."""

    def part():
        k = rng.integers(1, 201, size=n) * rng.choice([-1, 1], size=n)
        return k / 4.0

    if np.dtype(dtype).kind == "c":
        return (part() + 1j * part()).astype(dtype)
    return part().astype(dtype)


def random_dense(shape, nnz, dtype, empty_rows=(), empty_cols=(), seed=None):
    """A dense matrix with `nnz` nonzeros placed at random outside the given empty rows/cols."""
    if seed is None:
        seed = next_seed[0]
        next_seed[0] += 1
    rng = np.random.default_rng(seed)
    m, n = shape
    slots = [(i, j) for i in range(m) for j in range(n) if i not in empty_rows and j not in empty_cols]
    assert nnz <= len(slots)
    pick = rng.choice(len(slots), size=nnz, replace=False)
    a = np.zeros(shape, dtype=dtype)
    v = values(rng, nnz, dtype)
    for k, p in enumerate(sorted(pick)):
        a[slots[p]] = v[k]
    return a


def to_sparse(dense, fmt, index_dtype):
    a = sp.csr_matrix(dense) if fmt == "csr" else sp.csc_matrix(dense)
    # scipy picks int32 whenever it can; assigning the arrays keeps int64 (save_npz writes them).
    a.indices = a.indices.astype(index_dtype)
    a.indptr = a.indptr.astype(index_dtype)
    return a


# ---------------------------------------------------------------------------------------------
# Zip layout


def read_header(f):
    """(shape, fortran_order, dtype) of the .npy header at f, left at the start of the data."""
    major, _ = np.lib.format.read_magic(f)
    if major == 1:
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def members_of(raw):
    """[{name, dtype, shape, data_offset}] of the archive bytes `raw`, in zip order.

    `data_offset` is computed from the member's zip local header (not the central
    directory) and its .npy header: the offset of its array data in the file, or None
    when the member is deflated.
    """
    zf = zipfile.ZipFile(io.BytesIO(raw))
    out = []
    for info in zf.infolist():
        npy = io.BytesIO(zf.read(info))
        shape, _, dtype = read_header(npy)
        offset = None
        if info.compress_type == zipfile.ZIP_STORED:
            off = info.header_offset
            (sig,) = struct.unpack("<I", raw[off : off + 4])
            assert sig == 0x04034B50
            name_len, extra_len = struct.unpack("<HH", raw[off + 26 : off + 30])
            offset = off + 30 + name_len + extra_len + npy.tell()
        out.append({"name": info.filename[: -len(".npy")], "dtype": dtype.str, "shape": list(shape),
                    "data_offset": offset})
    return out


def npy_bytes(a):
    b = io.BytesIO()
    np.lib.format.write_array(b, np.asanyarray(a), allow_pickle=False)
    return b.getvalue()


def save_npz_aligned(file, matrix):
    # `file` is a path (the check at the end reads the file back).
    """Writes `matrix` (CSR or CSC) as scipy's `save_npz(file, matrix, compressed=False)` does
    (same members, same order, same dtypes), but with every member's array data starting at a
    multiple of 64 bytes in the file, so that a reader can map it without copying.

    numpy already pads each .npy header so that the data starts at a multiple of 64 bytes
    from the start of the member (as `lazylinop::npz::save` does); this writer also pads each
    member's zip local header with an extra field (id 0xCAFE, ignored by readers) so that the
    member itself starts at a multiple of 64. The member sizes are known, so no data
    descriptor follows the data. (For members of 4 GiB or more zipfile adds a zip64 extra
    field, which the padding below does not account for: the final check catches it.)
    """
    assert matrix.format in ("csr", "csc"), matrix.format
    arrays = {
        "indices": matrix.indices,
        "indptr": matrix.indptr,
        "format": np.array(matrix.format.encode("ascii")),
        "shape": np.array(matrix.shape, dtype=np.int64),
        "data": matrix.data,
    }
    if isinstance(matrix, sp.sparray):
        arrays["_is_array"] = np.array(True)
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, a in arrays.items():
            name = key + ".npy"
            payload = npy_bytes(a)
            pos = zf.fp.tell() + 30 + len(name) + 4  # local header, name, extra field header
            pad = (-pos) % 64
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.extra = struct.pack("<HH", 0xCAFE, pad) + b"\0" * pad
            zf.writestr(info, payload)
    with open(file, "rb") as f:
        raw = f.read()
    for m in members_of(raw):
        assert m["data_offset"] % 64 == 0, m


def save_members(fname, members, compressed=False):
    """A hand-made archive with numpy: `members` maps member names to arrays, in zip order."""
    (np.savez_compressed if compressed else np.savez)(path(fname), **members)


def scipy_members(a):
    """The members scipy's save_npz writes for the CSR/CSC matrix `a`, as a dict in zip order."""
    return {
        "indices": a.indices,
        "indptr": a.indptr,
        "format": np.array(a.format.encode("ascii")),
        "shape": np.array(a.shape, dtype=np.int64),
        "data": a.data,
    }


# ---------------------------------------------------------------------------------------------
# Valid files


def number(x):
    """An exact JSON number: an integer when the value is one (shorter), else a float."""
    x = float(x)
    return int(x) if x.is_integer() else x


def dense_json(d):
    if d.dtype.kind == "c":
        return [[[number(x.real), number(x.imag)] for x in row] for row in d]
    return [[number(x) for x in row] for row in d]


def record_valid(fname, case, a, dense, compressed, aligned=False, big_endian=False):
    """Checks the file just written against `dense` with scipy and adds its manifest entry."""
    raw = open(path(fname), "rb").read()
    members = members_of(raw)
    names = [m["name"] for m in members]
    expected = MEMBER_ORDER + (["_is_array"] if isinstance(a, sp.sparray) else [])
    assert names == expected, (fname, names)
    by_name = {m["name"]: m for m in members}
    index_dtype = np.dtype(by_name["indices"]["dtype"])
    assert index_dtype == np.dtype(by_name["indptr"]["dtype"])
    assert index_dtype.newbyteorder("=") == a.indices.dtype.newbyteorder("="), fname
    data_dtype = np.dtype(by_name["data"]["dtype"])
    assert data_dtype.newbyteorder("=") == dense.dtype, fname
    assert (data_dtype.byteorder == ">") == big_endian and (index_dtype.byteorder == ">") == big_endian
    assert all((m["data_offset"] is None) == compressed for m in members), fname
    if aligned:
        assert all(m["data_offset"] % 64 == 0 for m in members), fname

    # scipy reads it back as the same matrix, entries and (non-)canonical structure included.
    back = sp.load_npz(path(fname))
    assert back.format == a.format and back.shape == dense.shape
    assert back.dtype.newbyteorder("=") == dense.dtype, (fname, back.dtype)
    back.check_format(full_check=True)
    assert np.array_equal(back.toarray(), dense), fname
    assert back.has_canonical_format == a.has_canonical_format
    with np.load(path(fname)) as z:
        assert np.array_equal(z["indptr"], a.indptr) and np.array_equal(z["indices"], a.indices)
        assert np.array_equal(z["data"], a.data)
        nnz = int(z["indptr"][-1])
        assert nnz == len(z["data"]) == len(z["indices"])

    manifest["valid"].append(
        {
            "file": fname,
            "case": case,
            "format": a.format,
            "dtype": dense.dtype.name,
            "index_dtype": index_dtype.newbyteorder("=").name,
            "compressed": compressed,
            "aligned": aligned,
            "big_endian": big_endian,
            "shape": list(dense.shape),
            "nnz": nnz,
            "canonical": bool(a.has_canonical_format),
            "members": members,
            "indptr": [int(x) for x in a.indptr],
            "dense": dense_json(dense),
        }
    )


def save_valid(fname, case, a, dense, compressed):
    sp.save_npz(path(fname), a, compressed=compressed)
    record_valid(fname, case, a, dense, compressed)
    saved[fname] = (a, dense)


def valid_files():
    # The grid: every format x dtype x index dtype x compression, 13 x 11 with 30 nonzeros,
    # empty first, middle and last rows and columns.
    for fmt in ["csr", "csc"]:
        for dtype in DTYPES:
            for index_dtype in INDEX_DTYPES:
                for compressed in [False, True]:
                    dense = random_dense((13, 11), 30, dtype, empty_rows=(0, 6, 12), empty_cols=(0, 4, 10))
                    a = to_sparse(dense, fmt, index_dtype)
                    kind = "deflated" if compressed else "stored"
                    save_valid("%s_%s_%s_%s.npz" % (fmt, dtype, index_dtype, kind), "grid", a, dense, compressed)

    # Fewer rows (CSR) or columns (CSC) than 3 ranks, both shapes in both formats.
    for shape in [(2, 7), (7, 2)]:
        for fmt in ["csr", "csc"]:
            dense = random_dense(shape, 6, "float64")
            a = to_sparse(dense, fmt, "int32")
            save_valid("%s_few_%dx%d.npz" % (fmt, *shape), "few_rows" if shape[0] == 2 else "few_cols",
                       a, dense, False)
    dense = random_dense((2, 7), 5, "complex64")
    save_valid("csr_few_2x7_complex64_int64_deflated.npz", "few_rows", to_sparse(dense, "csr", "int64"),
               dense, True)

    # Nonzeros concentrated in one row (CSR) / column (CSC): balancing by nonzeros is uneven.
    dense = random_dense((9, 6), 4, "float64", empty_rows=(4,))
    dense[4, :] = values(np.random.default_rng(1000), 6, "float64")
    save_valid("csr_skewed.npz", "skewed", to_sparse(dense, "csr", "int32"), dense, False)
    dense = np.ascontiguousarray(dense.T)
    save_valid("csc_skewed.npz", "skewed", to_sparse(dense, "csc", "int32"), dense, False)

    # No nonzeros; zero rows and/or columns.
    for shape, case in [((13, 11), "zero_nnz"), ((0, 5), "zero_rows"), ((5, 0), "zero_cols"),
                        ((0, 0), "zero_by_zero")]:
        for fmt in ["csr", "csc"]:
            dense = np.zeros(shape, dtype=np.float64)
            a = to_sparse(dense, fmt, "int32")
            assert a.nnz == 0
            save_valid("%s_%s_%dx%d.npz" % (fmt, case, *shape), case, a, dense, False)

    # Unsorted indices and duplicate entries, as scipy keeps them when built from arrays.
    # Row (CSR) / column (CSC) k of a 5 x 4 matrix:
    pattern = [[2, 0, 2], [], [3, 1, 1, 0], [1], [3, 3]]
    rng = np.random.default_rng(2000)
    indices = np.array([j for row in pattern for j in row], dtype=np.int32)
    indptr = np.cumsum([0] + [len(row) for row in pattern]).astype(np.int32)
    data = values(rng, len(indices), "float64")
    for fmt, shape, cls in [("csr", (5, 4), sp.csr_matrix), ("csc", (4, 5), sp.csc_matrix)]:
        a = cls((data, indices, indptr), shape=shape)
        assert not a.has_canonical_format and not a.has_sorted_indices
        dense = np.zeros(shape)
        for k, row in enumerate(pattern):
            for p in range(indptr[k], indptr[k + 1]):
                if fmt == "csr":
                    dense[k, indices[p]] += data[p]
                else:
                    dense[indices[p], k] += data[p]
        assert np.array_equal(a.toarray(), dense)
        save_valid("%s_noncanonical.npz" % fmt, "noncanonical", a, dense, False)
        a_c = cls((data.astype(np.complex128) * (1 - 0.5j), indices, indptr), shape=shape)
        assert not a_c.has_canonical_format
        save_valid("%s_noncanonical_complex128_deflated.npz" % fmt, "noncanonical", a_c,
                   dense.astype(np.complex128) * (1 - 0.5j), True)

    # A csr_array / csc_array: save_npz adds a sixth member, `_is_array`.
    for fmt, cls in [("csr", sp.csr_array), ("csc", sp.csc_array)]:
        dense = random_dense((6, 5), 9, "float64")
        a = cls(dense)
        save_valid("%s_sparray.npz" % fmt, "sparray", a, dense, False)

    # Big-endian data and indices (written with np.savez: save_npz writes what the matrix holds).
    dense = random_dense((6, 5), 9, "float64")
    a = to_sparse(dense, "csr", "int32")
    save_members("csr_bigendian.npz", {"indices": a.indices.astype(">i4"), "indptr": a.indptr.astype(">i4"),
                                       "format": np.array(b"csr"), "shape": np.array(a.shape, dtype=np.int64),
                                       "data": a.data.astype(">f8")})
    record_valid("csr_bigendian.npz", "big_endian", a, dense, False, big_endian=True)

    # Aligned, stored members: the zero-copy path.
    dense = random_dense((13, 11), 30, "float64", empty_rows=(0, 6, 12), empty_cols=(0, 4, 10))
    a = to_sparse(dense, "csr", "int32")
    save_npz_aligned(path("csr_float64_int32_aligned.npz"), a)
    record_valid("csr_float64_int32_aligned.npz", "aligned", a, dense, False, aligned=True)
    dense = random_dense((13, 11), 30, "complex128", empty_rows=(0, 6, 12), empty_cols=(0, 4, 10))
    a = to_sparse(dense, "csc", "int64")
    save_npz_aligned(path("csc_complex128_int64_aligned.npz"), a)
    record_valid("csc_complex128_int64_aligned.npz", "aligned", a, dense, False, aligned=True)
    # The aligned writer keeps `_is_array` too (checked, not committed).
    save_npz_aligned(path("tmp_aligned_array.npz"), sp.csr_array(dense))
    back = sp.load_npz(path("tmp_aligned_array.npz"))
    assert isinstance(back, sp.csr_array) and np.array_equal(back.toarray(), dense)
    assert [m["name"] for m in members_of(open(path("tmp_aligned_array.npz"), "rb").read())][-1] == "_is_array"
    os.remove(path("tmp_aligned_array.npz"))


# ---------------------------------------------------------------------------------------------
# Malformed files


def scipy_outcome(fname):
    """What scipy does with the file: never densifies it (an unchecked index could crash)."""
    try:
        a = sp.load_npz(path(fname))
    except Exception as e:  # noqa: BLE001 - recording what scipy raises is the point
        return "raises_at_load", "%s: %s" % (type(e).__name__, str(e).replace(path(fname), fname))
    if not hasattr(a, "check_format"):  # coo and dia have none
        return "loads_silently", None
    try:
        a.check_format(full_check=True)
    except Exception as e:  # noqa: BLE001
        return "raises_at_check_format", "%s: %s" % (type(e).__name__, e)
    return "loads_silently", None


def record_malformed(fname, reason, description, base, expect=None):
    try:
        with zipfile.ZipFile(path(fname)) as zf:
            members = [n[: -len(".npy")] if n.endswith(".npy") else n for n in zf.namelist()]
    except zipfile.BadZipFile:
        members = None
    outcome, error = scipy_outcome(fname)
    if expect is not None:
        assert outcome == expect, (fname, outcome, error)
    manifest["malformed"].append(
        {
            "file": fname,
            "reason": reason,
            "description": description,
            "base": base,
            "members": members,
            "scipy": outcome,
            "scipy_error": error,
        }
    )


def malformed_files():
    # The base of most variations: the valid 13 x 11 CSR, float64, int32, stored.
    base_name = "csr_float64_int32_stored.npz"
    base, dense = saved[base_name]
    nnz = base.nnz
    assert nnz == 30 and base.indptr[1] == 0 and base.indptr[2] > 0

    def vary(fname, reason, description, expect=None, compressed=False, src=base_name, **changes):
        members = scipy_members(saved[src][0])
        for k, v in changes.items():
            if v is None:
                del members[k]
            else:
                members[k] = v
        save_members(fname, members, compressed)
        record_malformed(fname, reason, description, src, expect)

    ip = base.indptr.copy()
    ip[2], ip[3] = ip[3], ip[2]
    assert ip[2] > ip[3]
    vary("indptr_not_monotonic.npz", "indptr_not_monotonic",
         "indptr decreases between rows 2 and 3 (rows swapped their ends).", "raises_at_check_format", indptr=ip)

    ip = base.indptr.copy()
    ip[0] = 1
    vary("indptr_first_nonzero.npz", "indptr_first_nonzero", "indptr[0] is 1 instead of 0.",
         "raises_at_load", indptr=ip)

    ip = base.indptr.copy()
    ip[-1] = nnz + 5
    vary("indptr_last_exceeds_nnz.npz", "indptr_last_exceeds_nnz",
         "indptr[-1] is 35 but data and indices hold 30 entries.", "raises_at_load", indptr=ip)

    ip = base.indptr.copy()
    ip[6] = 1000
    assert np.all(np.diff(ip[:7]) >= 0) and ip[-1] == nnz
    vary("indptr_entry_exceeds_nnz.npz", "indptr_entry_exceeds_nnz",
         "indptr[6] is 1000 (data holds 30 entries) while indptr[-1] is right: the rank owning rows 0..6 "
         "sees a non-decreasing indptr that points past the member.", "raises_at_check_format", indptr=ip)

    ip = np.minimum(base.indptr, nnz - 2)
    assert ip[-1] == nnz - 2
    vary("indptr_last_below_nnz.npz", "indptr_last_below_nnz",
         "indptr[-1] is 28 but data and indices hold 30 entries (scipy drops the last two).",
         "loads_silently", indptr=ip)

    ind = base.indices.copy()
    ind[7] = 11
    vary("index_out_of_range.npz", "index_out_of_range",
         "A column index equals the number of columns (11).", "raises_at_check_format", indices=ind)
    vary("index_out_of_range_deflated.npz", "index_out_of_range",
         "A column index equals the number of columns (11), in a deflated file.", "raises_at_check_format",
         compressed=True, indices=ind)

    ind = saved["csc_float64_int32_stored.npz"][0].indices.copy()
    ind[-1] = 1000
    vary("csc_index_out_of_range.npz", "index_out_of_range",
         "A CSC row index is 1000, far beyond the 13 rows.", "raises_at_check_format",
         src="csc_float64_int32_stored.npz", indices=ind)

    ind = base.indices.copy()
    ind[3] = -1
    vary("negative_index.npz", "negative_index", "A column index is -1.", "raises_at_check_format", indices=ind)

    vary("data_shorter_than_indices.npz", "data_indices_length_mismatch",
         "data holds 29 entries, indices 30 (indptr[-1] is 30).", "raises_at_load", data=base.data[:-1])
    vary("indices_shorter_than_data.npz", "data_indices_length_mismatch",
         "indices holds 29 entries, data 30 (indptr[-1] is 30).", "raises_at_load", indices=base.indices[:-1])

    vary("shape_indptr_mismatch.npz", "shape_indptr_mismatch",
         "shape says 12 rows but indptr has 14 entries (13 rows).", "raises_at_load",
         shape=np.array([12, 11], dtype=np.int64))
    vary("shape_not_2d.npz", "shape_not_2d", "shape has 3 entries (13, 11, 1).", "raises_at_load",
         shape=np.array([13, 11, 1], dtype=np.int64))
    vary("negative_shape.npz", "negative_shape", "shape is (13, -11).", "raises_at_load",
         shape=np.array([13, -11], dtype=np.int64))

    for member in MEMBER_ORDER:
        vary("missing_%s.npz" % member, "missing_member:%s" % member, "The member %s is absent." % member,
             "raises_at_load", **{member: None})

    vary("unknown_format.npz", "unknown_format:xyz", "format is b'xyz', not a scipy format.", "raises_at_load",
         format=np.array(b"xyz"))

    # Formats scipy has but the reader rejects, written by save_npz itself. A bsr file has the
    # same member names as a csr one (`data` is 3-D: blocks): only `format` tells them apart.
    dense_even = random_dense((12, 10), 24, "float64")
    for fname, a, d in [
        ("unsupported_coo.npz", base.tocoo(), dense),
        ("unsupported_dia.npz", base.todia(), dense),
        ("unsupported_bsr.npz", sp.csr_matrix(dense_even).tobsr(blocksize=(2, 2)), dense_even),
        ("unsupported_bsr_1x1.npz", base.tobsr(blocksize=(1, 1)), dense),
    ]:
        sp.save_npz(path(fname), a, compressed=False)
        back = sp.load_npz(path(fname))
        assert back.format == a.format and np.array_equal(back.toarray(), d)
        with np.load(path(fname)) as z:
            layout = ", ".join("%s %s%s" % (k, z[k].dtype.str, list(z[k].shape)) for k in z.files)
        record_malformed(fname, "unsupported_format:%s" % a.format,
                         "A valid scipy %s file (members %s): the reader asks for .tocsr()." % (a.format, layout),
                         None, "loads_silently")

    vary("index_dtype_int8.npz", "index_dtype:int8", "indices and indptr are int8.", None,
         indices=base.indices.astype(np.int8), indptr=base.indptr.astype(np.int8))
    vary("index_dtype_float64.npz", "index_dtype:float64", "indices and indptr are float64.", None,
         indices=base.indices.astype(np.float64), indptr=base.indptr.astype(np.float64))
    vary("index_dtype_mismatch.npz", "index_dtype_mismatch", "indices are int32 but indptr is int64.", None,
         indptr=base.indptr.astype(np.int64))

    vary("data_dtype_unicode.npz", "data_dtype:<U3", "data is a 1-D array of strings ('<U3').", None,
         data=np.array(["abc"] * nnz))
    vary("data_dtype_int64.npz", "data_dtype:int64", "data is int64, not one of the four float types.",
         "loads_silently", data=np.arange(1, nnz + 1, dtype=np.int64))
    vary("data_dtype_object.npz", "data_dtype:object", "data is a pickled object array.", "raises_at_load",
         data=np.array([1.5] * nnz, dtype=object))
    vary("data_not_1d.npz", "data_not_1d", "data is 2-D (15 x 2) with 30 entries.", None,
         data=base.data.reshape(15, 2))

    # A stored file with one byte of the `data` member's array flipped: the CRC-32 no longer matches.
    raw = bytearray(open(path(base_name), "rb").read())
    offset = {m["name"]: m["data_offset"] for m in members_of(bytes(raw))}["data"]
    raw[offset + 3] ^= 0x40
    with open(path("bad_crc.npz"), "wb") as f:
        f.write(raw)
    with np.load(path("bad_crc.npz")) as z:
        assert np.array_equal(z["indices"], base.indices)
        try:
            z["data"]
            raise AssertionError("bad_crc.npz: no CRC error")
        except zipfile.BadZipFile as e:
            assert "Bad CRC-32" in str(e), e
    record_malformed("bad_crc.npz", "bad_crc",
                     "One byte of the stored data member's array is flipped: its CRC-32 does not match.",
                     base_name, "raises_at_load")

    raw = open(path(base_name), "rb").read()
    with open(path("truncated.npz"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    record_malformed("truncated.npz", "truncated", "The stored file cut in half: no central directory.",
                     base_name, "raises_at_load")


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".npz") or f == "manifest.json":
            os.remove(path(f))
    valid_files()
    malformed_files()

    names = [e["file"] for e in manifest["valid"] + manifest["malformed"]]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(f for f in os.listdir(OUT) if f.endswith(".npz"))
    for f in names:
        assert os.path.getsize(path(f)) < 4096, f
    with open(path("manifest.json"), "w") as f:
        # One file a line: readable in a diff.
        f.write('{\n "valid": [\n')
        f.write(",\n".join("  " + json.dumps(e) for e in manifest["valid"]))
        f.write('\n ],\n "malformed": [\n')
        f.write(",\n".join("  " + json.dumps(e) for e in manifest["malformed"]))
        f.write("\n ]\n}\n")
    total = sum(os.path.getsize(path(f)) for f in names)
    print("wrote %d valid and %d malformed files (%d bytes) and manifest.json in %s"
          % (len(manifest["valid"]), len(manifest["malformed"]), total, os.path.normpath(OUT)))
    for e in manifest["malformed"]:
        print("  %-34s %-30s %-24s %s" % (e["file"], e["reason"], e["scipy"], e["scipy_error"] or ""))


if __name__ == "__main__":
    main()
