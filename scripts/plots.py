#!/usr/bin/env python3
"""Draws the plots of BENCHMARKS.md from the benchmarks' own output.

Reads the CSV files the benchmarks write into bench-results/ and writes SVG files into
docs/plots/, with Python's standard library only (no install needed):

    scripts/plots.py [--results DIR] [--out DIR]

One function per area turns the rows of one CSV file into plots; AREAS lists them. A missing
file is skipped. To add an area (bench-results/NAME.csv), write a function
`NAME(rows) -> [(file name, svg text)]` with `line_chart` and add it to AREAS.
"""

import argparse
import csv
import math
import sys
from collections import defaultdict
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Colours of the series, in order (the bound of the sparse plots is drawn dashed).
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def nice_ticks(lo, hi, count=5):
    """About `count` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= raw:
            step *= m
            break
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def fmt(v):
    return f"{v:g}"


def line_chart(title, subtitle, xlabel, ylabel, series, log2_x=False, ideal=False):
    """An SVG line chart (y from 0).

    series: list of dicts with "label", "points" [(x, y), ...] and optionally "dashed".
    log2_x: x on a base-2 logarithmic axis (ticks at the data's x values).
    ideal: a dotted y = x line (linear speedup).
    """
    width, height = 780, 440
    left, right, top, bottom = 70, 250, 58, 55
    pw, ph = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s["points"]]
    ys = [y for s in series for _, y in s["points"]]
    if not xs:
        return None
    tx = (lambda x: math.log2(x)) if log2_x else (lambda x: x)
    if log2_x:
        xticks = sorted(set(xs))
        x0, x1 = tx(min(xs)), tx(max(xs))
        if x0 == x1:
            x0, x1 = x0 - 1, x1 + 1
    else:
        xticks = nice_ticks(min(xs + ([1] if ideal else [])), max(xs))
        if all(float(x).is_integer() for x in xs):
            xticks = [t for t in xticks if float(t).is_integer()] or xticks
        x0, x1 = min(xticks), max(xticks)
    y_hi = max(ys + (xs if ideal else []))
    yticks = nice_ticks(0, y_hi)
    y0, y1 = min(yticks), max(yticks)

    def px(x):
        return left + (tx(x) - x0) / (x1 - x0) * pw

    def py(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15">{escape(title)}</text>',
        f'<text x="{left}" y="42" fill="#555">{escape(subtitle)}</text>',
    ]
    for t in yticks:
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    for t in xticks:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{fmt(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 15}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text x="18" y="{top + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {top + ph / 2})">{escape(ylabel)}</text>'
    )
    legend = []
    if ideal:
        lo, hi = max(x0, y0, 1), min(x1, y1)
        if hi > lo:
            out.append(
                f'<line x1="{px(lo):.1f}" y1="{py(lo):.1f}" x2="{px(hi):.1f}" y2="{py(hi):.1f}" '
                'stroke="#999" stroke-dasharray="2,3"/>'
            )
        legend.append(("linear speedup", "#999", "2,3"))
    for i, s in enumerate(series):
        colour = s.get("colour", COLOURS[i % len(COLOURS)])
        dash = "6,4" if s.get("dashed") else None
        pts = sorted(s["points"])
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{extra}/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        legend.append((s["label"], colour, dash))
    for i, (label, colour, dash) in enumerate(legend):
        y = top + 10 + 18 * i
        x = left + pw + 15
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2"{extra}/>')
        out.append(f'<text x="{x + 28}" y="{y + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def number(v):
    return float(v) if v not in ("", None) else None


def pmatmat(rows):
    """bench-results/pmatmat.csv (benches/pmatmat.rs): speedup over sequential faer against
    workers, one plot per dense or composite case, one line per parallel variant, each starting
    at the sequential anchor (1 worker, 1.0)."""
    plots = []
    cases = defaultdict(list)
    for r in rows:
        if r["case"].startswith(("dense_", "composite_")) and number(r["speedup"]) is not None:
            cases[r["case"]].append(r)
    for case, rs in sorted(cases.items()):
        variants = defaultdict(list)
        for r in rs:
            if r["variant"] not in ("seq", "faer_seq"):
                variants[r["variant"]].append((int(r["workers"]), number(r["speedup"])))
        series = [{"label": v, "points": [(1, 1.0)] + pts} for v, pts in sorted(variants.items())]
        svg = line_chart(
            f"pmatmat: {case}", "f64; each line from the sequential faer product of the same run",
            "workers", "speedup over sequential", series, ideal=True,
        )
        if svg:
            plots.append((f"pmatmat_{case}.svg", svg))
    return plots


def mpilop(rows):
    """bench-results/mpilop.csv (examples/bm_mpilop.rs --csv): steady speedup over one process
    (sequential faer for dense, the crate's sparse kernel for sparse) against ranks, one plot per
    case, one line per product and bcast_op."""
    plots = []
    cases = defaultdict(lambda: defaultdict(list))
    for r in rows:
        s = number(r["speedup"])
        if s is not None:
            label = f"{'L·X' if r['product'] == 'apply' else 'Lᴴ·Y'}, bcast_op {r['bcast_op']}"
            cases[r["case"]][label].append((int(r["ranks"]), s))
    for case, lines in sorted(cases.items()):
        series = [{"label": label, "points": pts} for label, pts in sorted(lines.items())]
        svg = line_chart(
            f"MpiLop: {case}", "steady products, against one process in the same run",
            "MPI ranks", "speedup over one process", series, ideal=True,
        )
        if svg:
            plots.append((f"mpilop_{case}.svg", svg))
    return plots


def sparse(rows):
    """bench-results/sparse.csv (benches/sparse.rs with scripts/bench_mkl.py): GFLOP/s against the
    number of columns k, one plot per matrix (A·X, and Aᵀ·X as `<matrix>_t`), f64 with row-major
    operands (MKL's better layout; this crate reads them in place), one line per kernel and
    thread count, the bandwidth bound dashed. The prepared kernel is drawn for Aᵀ·X only (on A·X
    it is the plain one); c64 and column-major figures stay in the CSV."""
    plots = []
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["dtype"] != "f64" or r["layout"] != "row":
            continue
        if r["kernel"] == "lazylinop_prepared" and not r["matrix"].endswith("_t"):
            continue
        groups[r["matrix"]][(r["kernel"], int(r["threads"]))].append((int(r["k"]), float(r["gflops"])))
    order = {k: i for i, k in enumerate(["lazylinop", "lazylinop_prepared", "mkl", "faer", "bound"])}
    for matrix, lines in sorted(groups.items()):
        shape = next(r for r in rows if r["matrix"] == matrix)
        series = []
        for kernel, threads in sorted(lines, key=lambda s: (order.get(s[0], 99), s[1])):
            name = "bound" if kernel == "bound" else kernel
            label = f"{name}, {threads} thread{'s' if threads > 1 else ''}"
            series.append({"label": label, "points": sorted(lines[(kernel, threads)]), "dashed": kernel == "bound"})
        svg = line_chart(
            f"sparse × dense: {matrix}, f64",
            f"{shape['rows']}×{shape['cols']}, {shape['nnz']} nonzeros, row-major operand",
            "columns k", "GFLOP/s", series, log2_x=True,
        )
        if svg:
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in matrix)
            plots.append((f"sparse_{safe}.svg", svg))
    return plots


def distributed(rows):
    """bench-results/distributed.csv (scripts/bench_distributed.sh): milliseconds against MPI
    ranks, this crate and PETSc from the same run (medians over its rounds): CG per iteration, and
    the product for each k."""
    values = defaultdict(list)
    for r in rows:
        values[(r["source"], r["name"], int(r["ranks"]), int(r["k"]), r["what"], r["variant"])].append(float(r["value"]))

    def median(v):
        v = sorted(v)
        return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2

    def line(label, source, name, k, what, variant, scale=1e3):
        pts = sorted((p, median(v) * scale) for (s, n, p, kk, w, var), v in values.items()
                     if (s, n, kk, w, var) == (source, name, k, what, variant))
        return {"label": label, "points": pts}

    plots = []
    for name in sorted({key[1] for key in values}):
        rows_of = next(r["rows"] for r in rows if r["name"] == name)
        cg = [
            line("CG", "lazylinop", name, 1, "cg_none", "lazylinop"),
            line("CG, fused", "lazylinop", name, 1, "cg_fused", "lazylinop"),
            line("CG, Jacobi", "lazylinop", name, 1, "cg_jacobi", "lazylinop"),
            line("CG, 16 RHS at once, per RHS", "lazylinop", name, 16, "cg16_none", "lazylinop", 1e3 / 16),
            line("faer CG, replicated", "lazylinop", name, 1, "cg_replicated", "lazylinop"),
            line("PETSc KSPCG", "petsc", name, 1, "cg_none", "petsc"),
            line("PETSc KSPCG, Jacobi", "petsc", name, 1, "cg_jacobi", "petsc"),
        ]
        svg = line_chart(f"CG: {name}", f"{rows_of} rows, f64; this crate and PETSc 3.18 in the same run",
                         "MPI ranks", "ms per iteration", [s for s in cg if s["points"]])
        if svg:
            plots.append((f"distributed_cg_{name}.svg", svg))
        for k in (1, 16):
            prod = [
                line("distributed (halo)", "lazylinop", name, k, "product", "distributed"),
                line("replicated (Gather::All)", "lazylinop", name, k, "product", "replicated"),
                line("PETSc " + ("MatMult" if k == 1 else "MatMatMult"), "petsc", name, k, "product", "petsc"),
            ]
            svg = line_chart(f"distributed product: {name}, k = {k}", f"{rows_of} rows, f64, same run",
                             "MPI ranks", "ms per product", [s for s in prod if s["points"]])
            if svg:
                plots.append((f"distributed_product_{name}_k{k}.svg", svg))
    return plots


# CSV file in the results directory -> the function drawing its plots.
AREAS = {
    "pmatmat.csv": pmatmat,
    "mpilop.csv": mpilop,
    "sparse.csv": sparse,
    "distributed.csv": distributed,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench-results", help="directory of the CSV files")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "plots", help="directory of the SVG files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, draw in AREAS.items():
        path = args.results / name
        if not path.exists():
            print(f"{path}: absent, skipped")
            continue
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for file_name, svg in draw(rows):
            (args.out / file_name).write_text(svg, encoding="utf-8")
            print(f"{path.name} -> {args.out / file_name}")
            written += 1
    if written == 0:
        sys.exit("no plot written: no benchmark output in " + str(args.results))


if __name__ == "__main__":
    main()
