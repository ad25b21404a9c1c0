#!/usr/bin/env python3
"""Writes the `.npz` fixtures of `tests/npz.rs` into `tests/data/npz/`, with real numpy.

Run it from the crate root: `pip install numpy && python3 scripts/make_npz_fixtures.py`.
CI has no numpy: the generated files are committed (they total well under 200 KB).

Values
------
Every valid 2-D array holds a deterministic formula that the Rust test recomputes,
so its values are checked independently of the reader under test. With `s` the
array's `seed` (listed in `manifest.json`), entry (i, j) is

    real part: s * 100000 + i * 1000 + j + 0.5
    imag part: -(i + 2 * j) - s            (complex dtypes only)

All these values are exact in float32 (they stay below 2**22).

Manifest
--------
`manifest.json` lists, for each valid array: its file, member name (without
`.npy`), shape, dtype (numpy name), order as numpy wrote it in the header ("C" or
"F": numpy writes 1-row and 1-column arrays in C order even when asked for
Fortran order), whether the member is deflated, whether it is big-endian, its
seed, its index in the zip, and, for stored members, the offset of its array
data in the file (so the test knows independently whether a zero-copy view is
possible). `first_member` gives each archive's first member (the default one).
"""

import io
import json
import os
import struct
import zipfile

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "npz")
SHAPES = [(7, 5), (1, 3), (0, 4), (13, 1), (33, 17), (4, 0)]
DTYPES = ["float32", "float64", "complex64", "complex128"]

manifest = {"arrays": [], "first_member": {}}
next_seed = [1]


def values(shape, dtype, seed):
    i, j = np.indices(shape, dtype=np.float64)
    re = seed * 100000 + i * 1000 + j + 0.5
    if np.dtype(dtype).kind == "c":
        return (re + 1j * (-(i + 2 * j) - seed)).astype(dtype)
    return re.astype(dtype)


def new_array(shape, dtype, order="C"):
    seed = next_seed[0]
    next_seed[0] += 1
    a = values(shape, dtype, seed)
    a = np.asfortranarray(a) if order == "F" else np.ascontiguousarray(a)
    return a, seed


def read_header(f):
    """(shape, fortran_order, dtype) of the .npy header at f, left at the start of the data."""
    major, _ = np.lib.format.read_magic(f)
    if major == 1:
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def data_offset(raw, name):
    """Offset in the archive bytes `raw` of member `name`'s array data, or None when deflated."""
    zf = zipfile.ZipFile(io.BytesIO(raw))
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    off = info.header_offset
    sig, = struct.unpack("<I", raw[off : off + 4])
    assert sig == 0x04034B50
    name_len, extra_len = struct.unpack("<HH", raw[off + 26 : off + 30])
    start = off + 30 + name_len + extra_len
    npy = io.BytesIO(raw[start:])
    read_header(npy)
    return start + npy.tell()


def record(fname, arrays, seeds, compressed):
    """Adds the manifest entries of the archive just written at `fname`."""
    raw = open(os.path.join(OUT, fname), "rb").read()
    zf = zipfile.ZipFile(io.BytesIO(raw))
    names = zf.namelist()
    manifest["first_member"][fname] = names[0][: -len(".npy")]
    for key, a in arrays.items():
        npy = io.BytesIO(zf.read(key + ".npy"))
        shape, fortran, dtype = read_header(npy)
        assert shape == a.shape and dtype == a.dtype
        manifest["arrays"].append(
            {
                "file": fname,
                "member": key,
                "shape": list(shape),
                "dtype": dtype.newbyteorder("=").name,
                "order": "F" if fortran else "C",
                "compressed": compressed,
                "big_endian": dtype.byteorder == ">",
                "seed": seeds[key],
                "zip_index": names.index(key + ".npy"),
                "data_offset": None if compressed else data_offset(raw, key + ".npy"),
            }
        )


def savez(fname, arrays, seeds, compressed=False):
    (np.savez_compressed if compressed else np.savez)(os.path.join(OUT, fname), **arrays)
    record(fname, arrays, seeds, compressed)


def npy_bytes(a):
    b = io.BytesIO()
    np.lib.format.write_array(b, a, allow_pickle=False)
    return b.getvalue()


def write_aligned(fname, arrays, seeds):
    """A stored archive whose members' array data start on 64-byte boundaries.

    np.savez does not align member data; here each member's local header gets an
    extra field (id 0xCAFE) padding its start to 64 bytes, and numpy pads the
    .npy header to a multiple of 64, so the array data is 64-byte aligned.
    """
    path = os.path.join(OUT, fname)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, a in arrays.items():
            name = key + ".npy"
            pos = zf.fp.tell() + 30 + len(name) + 4
            pad = (-pos) % 64
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.extra = struct.pack("<HH", 0xCAFE, pad) + b"\0" * pad
            zf.writestr(info, npy_bytes(a))
    record(fname, arrays, seeds, False)
    for e in manifest["arrays"]:
        if e["file"] == fname:
            assert e["data_offset"] % 64 == 0, e


def write_zip(fname, members, compression=zipfile.ZIP_STORED):
    """A hand-made archive: `members` maps member names to raw bytes."""
    with zipfile.ZipFile(os.path.join(OUT, fname), "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data, compress_type=compression)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))

    # One archive per dtype x order x compression, one member per odd shape.
    for dtype in DTYPES:
        for order in ["C", "F"]:
            for compressed in [False, True]:
                arrays, seeds = {}, {}
                for shape in SHAPES:
                    key = "m%dx%d" % shape
                    arrays[key], seeds[key] = new_array(shape, dtype, order)
                kind = "compressed" if compressed else "stored"
                savez("%s_%s_%s.npz" % (dtype, order.lower(), kind), arrays, seeds, compressed)

    # Several members, positional and named: numpy writes the named ones first.
    a0, s0 = new_array((3, 4), "float64")
    a1, s1 = new_array((5, 2), "float64")
    a2, s2 = new_array((2, 6), "float64")
    np.savez(os.path.join(OUT, "multi.npz"), a0, a1, named=a2)
    record("multi.npz", {"arr_0": a0, "arr_1": a1, "named": a2}, {"arr_0": s0, "arr_1": s1, "named": s2}, False)

    # Big-endian members, converted by the reader.
    arrays, seeds = {}, {}
    for key, shape, dtype, order in [
        ("f8c", (7, 5), ">f8", "C"),
        ("f8f", (7, 5), ">f8", "F"),
        ("f4c", (13, 3), ">f4", "C"),
        ("c8f", (6, 4), ">c8", "F"),
        ("c16c", (5, 3), ">c16", "C"),
    ]:
        a, seeds[key] = new_array(shape, dtype.replace(">", "<"), order)
        arrays[key] = a.astype(dtype, order="K")
    savez("bigendian.npz", arrays, seeds)
    savez("bigendian_compressed.npz", {"f8f": arrays["f8f"], "c16c": arrays["c16c"]},
          {"f8f": seeds["f8f"], "c16c": seeds["c16c"]}, compressed=True)

    # Stored members aligned on 64 bytes: the zero-copy path.
    arrays, seeds = {}, {}
    for key, shape, dtype, order in [
        ("f64c", (33, 17), "float64", "C"),
        ("f64f", (33, 17), "float64", "F"),
        ("f32c", (7, 5), "float32", "C"),
        ("f32f", (7, 5), "float32", "F"),
        ("c64c", (5, 3), "complex64", "C"),
        ("c128f", (6, 4), "complex128", "F"),
        ("c128c", (1, 3), "complex128", "C"),
        ("f64c0", (0, 4), "float64", "C"),
        ("f64f0", (4, 0), "float64", "F"),
    ]:
        arrays[key], seeds[key] = new_array(shape, dtype, order)
    a, seeds["f64be"] = new_array((7, 5), "float64")
    arrays["f64be"] = a.astype(">f8")
    write_aligned("aligned.npz", arrays, seeds)

    # Bad inputs.
    with open(os.path.join(OUT, "not_a_zip.txt"), "w") as f:
        f.write("this is a text file, not a zip archive\n" * 4)
    open(os.path.join(OUT, "empty_file.npz"), "wb").close()
    np.savez(os.path.join(OUT, "no_arrays.npz"))
    raw = open(os.path.join(OUT, "float64_c_stored.npz"), "rb").read()
    with open(os.path.join(OUT, "truncated.npz"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    np.savez(
        os.path.join(OUT, "unsupported.npz"),
        obj=np.array([[{"a": 1}, None]], dtype=object),
        i64=np.arange(6, dtype=np.int64).reshape(2, 3),
        str=np.array([["ab", "c"]]),
        bool=np.ones((2, 2), dtype=bool),
        f16=np.ones((2, 2), dtype=np.float16),
        rec=np.zeros((2, 2), dtype=[("x", "<f8"), ("y", "<f8")]),
    )
    np.savez(
        os.path.join(OUT, "ndim.npz"),
        d0=np.float64(1.5).reshape(()),
        d1=np.arange(4, dtype=np.float64),
        d3=np.zeros((2, 3, 4)),
    )
    # A header that lies: it says (100, 100) float64 but the member holds 10 values.
    liar = npy_bytes(np.zeros((100, 100)))[:128] + np.arange(10, dtype="<f8").tobytes()
    # A header that under-states: it says (2, 2) but the member holds 10 values.
    small = npy_bytes(np.zeros((2, 2)))[:128] + np.arange(10, dtype="<f8").tobytes()
    assert npy_bytes(np.zeros((2, 2)))[127:128] == b"\n"
    members = {
        "liar.npy": liar,
        "small.npy": small,
        "garbage.npy": b"this is not an npy header at all",
        "cut.npy": npy_bytes(np.zeros((3, 3)))[:40],
        "bad_dict.npy": b"\x93NUMPY\x01\x00\x16\x00{'descr': '<f8', oops}\n",
    }
    write_zip("bad_headers.npz", members)
    write_zip("bad_headers_compressed.npz", {"liar.npy": liar}, zipfile.ZIP_DEFLATED)
    a, _ = new_array((3, 3), "float64")
    write_zip("bzip2.npz", {"a.npy": npy_bytes(a)}, zipfile.ZIP_BZIP2)

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        # One array a line: small, and readable in a diff.
        f.write('{\n "first_member": %s,\n "arrays": [\n' % json.dumps(manifest["first_member"], sort_keys=True))
        f.write(",\n".join("  " + json.dumps(a) for a in manifest["arrays"]))
        f.write("\n ]\n}\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print("wrote %d files, %d bytes, in %s" % (len(os.listdir(OUT)), total, os.path.normpath(OUT)))


if __name__ == "__main__":
    main()
