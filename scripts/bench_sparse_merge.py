#!/usr/bin/env python3
"""Merges the parts of a sparse suite run (scripts/bench_sparse.sh) into one CSV, and prints the
summary table of BENCHMARKS.md.

    bench_sparse_merge.py OUT PART.csv...

Each figure of OUT is the median, over the rounds, of the parts' seconds for the same
(matrix, dtype, k, layout, threads, kernel); gflops and gbytes_per_s follow from it. Standard
library only.

The summary: per matrix (`_t`: the transposed product, the scatter walk), ratios of MKL's time to
this crate's (above 1: this crate is faster) and this crate's share of the bandwidth bound (the
bound's time over this crate's). k = 1 on one and two threads (the column-major case: one column
is contiguous in both layouts); k >= 4: the smallest and the median over f64 and c64, k = 4, 16, 64
and both layouts of this crate, each against MKL's better layout for the same case; and two
threads over one. Each cell gives the plain operator, then the prepared one in parentheses.
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
    names = list(dict.fromkeys(k[0] for k in order))
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
        return next((s for key, s in t.items() if key[0] == m and key[1] == d and key[5] == str(k)
                     and key[6] == lay and key[7] == str(th) and key[8] == kern), None)

    dtypes = sorted({key[1] for key in t}, key=lambda d: d != "f64")
    ks = sorted({int(key[5]) for key in t if key[5] != "1"})
    layouts = sorted({key[6] for key in t})
    has_mkl = any(key[8] == "mkl" for key in t)

    def fmt(vals, pct=False):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        if pct:
            return f"{100 * statistics.median(vals):.0f}%"
        return f"{statistics.median(vals):.2f}" if len(vals) == 1 else f"{min(vals):.2f}–{statistics.median(vals):.2f}"

    def ratio(a, b):
        return a / b if a is not None and b is not None else None

    print(f"| matrix | k=1, 1 thread: vs MKL, % of bound | k=1, 2 threads | k=1, 2 thr / 1 | k≥4, 1 thread: vs MKL | "
          f"k≥4, 2 threads | k≥4, 2 thr / 1 |\n|---|---|---|---|---|---|---|")
    for m in names:
        cells = []
        for kern in ["lazylinop", "lazylinop_prepared"]:
            c = []
            for th in (1, 2):
                ours = [get(m, d, 1, "col", th, kern) for d in dtypes]
                mkl = [ratio(get(m, d, 1, "col", th, "mkl"), o) for d, o in zip(dtypes, ours)]
                bound = [ratio(get(m, d, 1, "col", th, "bound"), o) for d, o in zip(dtypes, ours)]
                c.append(f"{fmt(mkl) if has_mkl else 'no MKL'}, {fmt(bound, pct=True)}")
            c.append(fmt([ratio(get(m, d, 1, "col", 1, kern), get(m, d, 1, "col", 2, kern)) for d in dtypes]))
            for th in (1, 2):
                vals = []
                for d in dtypes:
                    for k in ks:
                        best = [get(m, d, k, lay, th, "mkl") for lay in layouts]
                        best = min([b for b in best if b is not None], default=None)
                        vals += [ratio(best, get(m, d, k, lay, th, kern)) for lay in layouts]
                c.append(fmt(vals) if has_mkl else "no MKL")
            c.append(fmt([ratio(get(m, d, k, lay, 1, kern), get(m, d, k, lay, 2, kern))
                          for d in dtypes for k in ks for lay in layouts]))
            cells.append(c)
        print(f"| {m} | " + " | ".join(f"{a} ({b})" for a, b in zip(*cells)) + " |")


if __name__ == "__main__":
    main()
