#!/usr/bin/env python3
"""Intel MKL's sparse products on the matrices the Rust bench wrote, for the side-by-side suite.

Run by scripts/bench_sparse.sh (which makes the virtual environment: `pip install mkl numpy scipy`);
MKL is loaded at run time from the `mkl` wheel (`lib/libmkl_rt.so.3` under the environment's
prefix, or the path in $MKL_RT), never linked into the crate.

    bench_mkl.py DIR --ks 1,4,16,64 --threads 1,2 --layouts col,row --budget 0.3 > mkl.csv

For each `DIR/<matrix>.<dtype>.npz` (CSR, int32 indices, written by `cargo bench --bench sparse --
--out DIR`) it measures, through MKL's inspector-executor API, `A·X` and `Aᵀ·X` (the matrix named
`<matrix>_t`), with `mkl_sparse_set_mv_hint` / `mkl_sparse_set_mm_hint` and `mkl_sparse_optimize`
once per operation and layout, then `mkl_sparse_?_mv` (k = 1) or `mkl_sparse_?_mm` (layout 101
row-major, 102 column-major), on 1 and 2 threads (`MKL_Set_Num_Threads`). Rows are printed in the
suite's CSV format (kernel `mkl`; gflops from 2·nnz·k flops, 8·nnz·k for complex; gbytes_per_s from
the same compulsory bytes as the Rust bench's `bound` rows). Each figure is the median of repeated
products filling `--budget` seconds (at least 5), after one warm-up product.

Exits 0 and prints nothing but a note on stderr when MKL cannot be loaded.
"""

import argparse
import ctypes
import glob
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

# sparse_operation_t, sparse_matrix_type_t, sparse_layout_t, sparse_status_t.
NON_TRANSPOSE, TRANSPOSE = 10, 11
GENERAL = 20
ROW_MAJOR, COL_MAJOR = 101, 102
EXPECTED_CALLS = 1000


class Descr(ctypes.Structure):
    """struct matrix_descr."""

    _fields_ = [("type", ctypes.c_int), ("mode", ctypes.c_int), ("diag", ctypes.c_int)]


class Complex16(ctypes.Structure):
    """MKL_Complex16, passed by value as alpha and beta."""

    _fields_ = [("real", ctypes.c_double), ("imag", ctypes.c_double)]


def load_mkl():
    path = os.environ.get("MKL_RT") or os.path.join(sys.prefix, "lib", "libmkl_rt.so.3")
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        print(f"bench_mkl.py: MKL not loaded ({e}); no mkl rows", file=sys.stderr)
        return None
    vp, i = ctypes.c_void_p, ctypes.c_int
    for t, scalar in (("d", ctypes.c_double), ("z", Complex16)):
        getattr(lib, f"mkl_sparse_{t}_create_csr").argtypes = [ctypes.POINTER(vp), i, i, i, vp, vp, vp, vp]
        getattr(lib, f"mkl_sparse_{t}_mv").argtypes = [i, scalar, vp, Descr, vp, scalar, vp]
        getattr(lib, f"mkl_sparse_{t}_mm").argtypes = [i, scalar, vp, Descr, i, vp, i, i, scalar, vp, i]
    lib.mkl_sparse_set_mv_hint.argtypes = [vp, i, Descr, i]
    lib.mkl_sparse_set_mm_hint.argtypes = [vp, i, Descr, i, i, i]
    lib.mkl_sparse_optimize.argtypes = [vp]
    lib.mkl_sparse_destroy.argtypes = [vp]
    lib.MKL_Set_Num_Threads.argtypes = [i]
    lib.MKL_Set_Dynamic.argtypes = [i]
    return lib


def check(status, what):
    if status != 0:
        raise RuntimeError(f"{what}: sparse_status_t {status}")


def compulsory_bytes(a, k, itemsize, transpose):
    """The bytes a product must move: the matrix once (values, int32 indices and offsets), the
    operand read once and the output written once (the Rust bench's `bound`)."""
    m, n = a.shape
    if transpose:
        m, n = n, m
    return a.nnz * (itemsize + 4) + (a.shape[0] + 1) * 4 + (n + m) * k * itemsize


def median_time(run, budget):
    run()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget and len(times) < 10000):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_matrix(lib, path, ks, threads, layouts, budget, out):
    base = os.path.basename(path)[: -len(".npz")]
    name, dtype = base.rsplit(".", 1)
    a = sp.load_npz(path).tocsr()
    np_dtype = {"f64": np.float64, "c64": np.complex128}[dtype]
    a.data = np.ascontiguousarray(a.data, dtype=np_dtype)
    a.indices = np.ascontiguousarray(a.indices, dtype=np.int32)
    a.indptr = np.ascontiguousarray(a.indptr, dtype=np.int32)
    t = "d" if dtype == "f64" else "z"
    one, zero = (1.0, 0.0) if t == "d" else (Complex16(1.0, 0.0), Complex16(0.0, 0.0))
    flops_per_entry = 2 if t == "d" else 8
    itemsize = a.data.itemsize
    descr = Descr(GENERAL, 0, 0)
    rng = np.random.default_rng(1)
    m, n = a.shape
    ip = a.indptr.ctypes.data
    for transpose in (False, True):
        op = TRANSPOSE if transpose else NON_TRANSPOSE
        rows, cols = (n, m) if transpose else (m, n)
        label = name + ("_t" if transpose else "")
        for layout in layouts:
            for k in ks:
                order = "C" if layout == "row" else "F"
                x = np.asarray(rng.standard_normal((cols, k)), dtype=np_dtype, order=order)
                if t == "z":
                    x = x + 1j * np.asarray(rng.standard_normal((cols, k)), order=order)
                    x = np.asarray(x, dtype=np_dtype, order=order)
                y = np.zeros((rows, k), dtype=np_dtype, order=order)
                want = (a.T if transpose else a) @ x
                mkl_layout = ROW_MAJOR if layout == "row" else COL_MAJOR
                for nt in threads:
                    # The thread count first: `mkl_sparse_optimize` plans for the count set when it
                    # runs, and a later MKL_Set_Num_Threads does not change an optimized handle's
                    # (measured: "1 thread" set after it ran on 2). Then a fresh handle per
                    # (operation, layout, k, threads): hints and optimization for exactly this call.
                    lib.MKL_Set_Num_Threads(nt)
                    h = ctypes.c_void_p()
                    check(getattr(lib, f"mkl_sparse_{t}_create_csr")(
                        ctypes.byref(h), 0, m, n, ip, ip + 4, a.indices.ctypes.data, a.data.ctypes.data
                    ), "create_csr")
                    if k == 1:
                        check(lib.mkl_sparse_set_mv_hint(h, op, descr, EXPECTED_CALLS), "set_mv_hint")
                        mv = getattr(lib, f"mkl_sparse_{t}_mv")

                        def run():
                            check(mv(op, one, h, descr, x.ctypes.data, zero, y.ctypes.data), "mv")
                    else:
                        check(lib.mkl_sparse_set_mm_hint(h, op, descr, mkl_layout, k, EXPECTED_CALLS),
                              "set_mm_hint")
                        mm = getattr(lib, f"mkl_sparse_{t}_mm")
                        ldx, ldy = (k, k) if layout == "row" else (cols, rows)

                        def run():
                            check(mm(op, one, h, descr, mkl_layout, x.ctypes.data, k, ldx, zero,
                                     y.ctypes.data, ldy), "mm")

                    check(lib.mkl_sparse_optimize(h), "optimize")
                    y[:] = 0
                    run()
                    err = np.abs(y - want).max() / max(np.abs(want).max(), 1e-300)
                    if not err < 1e-10:
                        raise RuntimeError(f"{label} {dtype} k={k} {layout}: MKL's result is off by {err}")
                    s = median_time(run, budget)
                    flops = flops_per_entry * a.nnz * k
                    bytes_ = compulsory_bytes(a, k, itemsize, transpose)
                    print(
                        f"{label},{dtype},{rows},{cols},{a.nnz},{k},{layout},{nt},mkl,"
                        f"{s:.6e},{flops / s * 1e-9:.4f},{bytes_ / s * 1e-9:.4f}",
                        file=out,
                        flush=True,
                    )
                    lib.mkl_sparse_destroy(h)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--ks", default="1,4,16,64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--layouts", default="col,row")
    p.add_argument("--matrices", default="", help="comma-separated names (default: every file in DIR)")
    p.add_argument("--dtypes", default="f64,c64")
    p.add_argument("--budget", type=float, default=0.3, help="seconds of products per figure")
    args = p.parse_args()
    lib = load_mkl()
    if lib is None:
        return
    lib.MKL_Set_Dynamic(0)
    ints = lambda s: [int(v) for v in s.split(",") if v]
    names = set(args.matrices.split(",")) - {""}
    dtypes = args.dtypes.split(",")
    for path in sorted(glob.glob(os.path.join(args.dir, "*.npz"))):
        name, dtype = os.path.basename(path)[: -len(".npz")].rsplit(".", 1)
        if (names and name not in names) or dtype not in dtypes:
            continue
        bench_matrix(lib, path, ints(args.ks), ints(args.threads), args.layouts.split(","), args.budget, sys.stdout)


if __name__ == "__main__":
    main()
