#!/usr/bin/env python3
"""Merges the parts of a sparse suite run (scripts/bench_sparse.sh) into one CSV, and prints the
summary table of BENCHMARKS.md.

    bench_sparse_merge.py OUT PART.csv...

Each figure of OUT is the median, over the rounds, of the parts' seconds for the same
(matrix, dtype, k, layout, threads, kernel); gflops and gbytes_per_s follow from it. Standard
library only.

The summary: per matrix (`_t`: the transposed product, the scatter walk of the plain operator;
"prepared": `Prepared` over `BothWays`, which gathers), ratios of MKL's time to this crate's
(above 1: this crate is faster), each against MKL's better layout for the same case, the smallest
and the median over the dtypes run (and k = 4, 16, 64 for k >= 4): k = 1 (one column is
contiguous in both layouts) with this crate's share of the bandwidth bound (the bound's time over
this crate's, median); k >= 4 with this crate's operand row-major, then column-major; two threads
over one.
"""

import csv
import statistics
import sys

HEADER = "matrix,dtype,rows,cols,nnz,k,layout,threads,kernel,seconds,gflops,gbytes_per_s".split(",")
KERNELS = ["faer", "lazylinop", "lazylinop_prepared", "mkl", "bound"]


def read(paths):
    rows, order = {}, []
    for path in paths:
        with open(path, newline="") as f:
            for rec in csv.reader(f):
                if not rec or rec[0] == "matrix":
                    continue
                r = dict(zip(HEADER, rec))
                key = tuple(r[h] for h in HEADER[:9])
                s = float(r["seconds"])
                if key not in rows:
                    order.append(key)
                    rows[key] = {"seconds": [], "flops": float(r["gflops"]) * s, "bytes": float(r["gbytes_per_s"]) * s}
                rows[key]["seconds"].append(s)
    return rows, order


def main():
    out, parts = sys.argv[1], sys.argv[2:]
    rows, order = read(parts)
    # The suite's order (benches/sparse.rs), each matrix before its transpose; others after.
    suite = ["stencil2d", "stencil3d", "powerlaw", "random", "banded", "lsq"]
    names = sorted(dict.fromkeys(k[0] for k in order),
                   key=lambda n: (suite.index(n.removesuffix("_t")) if n.removesuffix("_t") in suite else 99, n))
    order.sort(key=lambda k: (names.index(k[0]), k[1], int(k[5]), k[6], int(k[7]), KERNELS.index(k[8])))
    t = {}
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        for key in order:
            r = rows[key]
            s = statistics.median(r["seconds"])
            t[key] = s
            w.writerow([*key, f"{s:.6e}", f"{r['flops'] / s:.4f}", f"{r['bytes'] / s:.4f}"])
    summary(t, names)


def summary(t, names):
    def get(m, d, k, lay, th, kern):
        return t.get((m, d, k, lay, th, kern))

    t = {(key[0], key[1], int(key[5]), key[6], int(key[7]), key[8]): s for key, s in t.items()}
    dtypes = sorted({key[1] for key in t}, key=lambda d: d != "f64")
    ks = sorted({key[2] for key in t if key[2] != 1})
    has_mkl = any(key[5] == "mkl" for key in t)

    def fmt(vals, pct=False):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        if pct:
            return f"{100 * statistics.median(vals):.0f}%"
        return f"{vals[0]:.2f}" if len(vals) == 1 else f"{min(vals):.2f}–{statistics.median(vals):.2f}"

    def ratio(a, b):
        return a / b if a is not None and b is not None else None

    def vs_mkl(m, kern, th, k_list, layout):
        """MKL's time (its better layout) over this crate's, per dtype and k."""
        vals = []
        for d in dtypes:
            for k in k_list:
                mkl = [get(m, d, k, lay, th, "mkl") for lay in ("col", "row")]
                mkl = min([v for v in mkl if v is not None], default=None)
                vals.append(ratio(mkl, get(m, d, k, layout, th, kern)))
        return fmt(vals) if has_mkl else "no MKL"

    print("| matrix | k=1 vs MKL, 1 / 2 threads | k=1, % of bound | k≥4 row-major vs MKL, 1 / 2 threads | "
          "k≥4 column-major vs MKL, 1 / 2 threads | 2 threads / 1, k=1; k≥4 |\n|---|---|---|---|---|---|")
    for m in names:
        kernels = ["lazylinop", "lazylinop_prepared"] if m.endswith("_t") else ["lazylinop"]
        cells = []
        for kern in kernels:
            k1 = [ratio(get(m, d, 1, "col", th, "bound"), get(m, d, 1, "col", th, kern)) for d in dtypes for th in (1, 2)]
            speed1 = [ratio(get(m, d, 1, "col", 1, kern), get(m, d, 1, "col", 2, kern)) for d in dtypes]
            speedk = [ratio(get(m, d, k, lay, 1, kern), get(m, d, k, lay, 2, kern))
                      for d in dtypes for k in ks for lay in ("col", "row")]
            cells.append([
                f"{vs_mkl(m, kern, 1, [1], 'col')} / {vs_mkl(m, kern, 2, [1], 'col')}",
                fmt(k1, pct=True),
                f"{vs_mkl(m, kern, 1, ks, 'row')} / {vs_mkl(m, kern, 2, ks, 'row')}",
                f"{vs_mkl(m, kern, 1, ks, 'col')} / {vs_mkl(m, kern, 2, ks, 'col')}",
                f"{fmt(speed1)}; {fmt(speedk)}",
            ])
        row = cells[0] if len(cells) == 1 else [f"{a} (prepared {b})" for a, b in zip(*cells)]
        print(f"| {m} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
