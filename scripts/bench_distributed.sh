#!/usr/bin/env bash
# The distributed benchmarks of BENCHMARKS.md, side by side with PETSc in one run:
# the 7-point Laplacian on an N³ grid (scipy CSR, int32, written once), under
# `mpirun -n 1` and `-n 2`, alternating this crate and PETSc 3.18 (petsc4py)
# round by round:
#   - products: examples/dist_product (distributed, local kernel, exchange
#     alone, replicated; vector memory) against PETSc's MatMult (k = 1) and
#     MatMatMult with 16 dense columns, medians of 200 (a product takes well
#     under a millisecond: with fewer, the host's noise set the median);
#   - solvers: examples/dist_cg (CG, fused CG, Jacobi CG, CG on 16 RHS at once,
#     the replicated faer CG, iteration counts of CG and GMRES(30), peak RSS)
#     against KSPCG (none, jacobi) and PETSc's iteration counts.
# Every figure is appended to bench-results/distributed.csv (replaced), as
#   source,name,rows,ranks,k,what,variant,value
# (seconds, iterations, bytes or a ratio), then summarized; scripts/plots.py
# draws docs/plots/distributed_*.svg from it.
# Installs OpenMPI (scripts/install-deps.sh) and Debian's python3-petsc4py when missing.
# Usage: scripts/bench_distributed.sh [N (60)] [rounds (2)]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-60}
rounds=${2:-2}

scripts/install-deps.sh
petsc=/usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-real/lib/python3/dist-packages
if ! PYTHONPATH=$petsc /usr/bin/python3 -c "import petsc4py, scipy, mpi4py" 2>/dev/null; then
    echo "installing python3-petsc4py (apt-get)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-petsc4py python3-scipy python3-mpi4py >/dev/null
fi
export PYTHONPATH=$petsc OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

cargo build --release --features mpi --example dist_product --example dist_cg
bin=target/release/examples
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
file=$dir/laplace$n.npz
mkdir -p bench-results
csv=$PWD/bench-results/distributed.csv
echo "source,name,rows,ranks,k,what,variant,value" >"$csv"
run() { timeout -k 10 1800 mpirun --oversubscribe -n "$@"; }

# Writes the matrix (rank 0), a short product run that is not recorded.
LAZYLINOP_MATRIX=$file run 1 "$bin/dist_product" laplace "$n" 1 >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    for p in 1 2; do
        echo "== round $round, $p rank(s)"
        LAZYLINOP_BENCH_CSV=$csv run "$p" -x LAZYLINOP_BENCH_CSV "$bin/dist_product" "$file" 200
        run "$p" -x PYTHONPATH /usr/bin/python3 scripts/bench_petsc.py product "$file" 200 "$csv"
        LAZYLINOP_BENCH_CSV=$csv run "$p" -x LAZYLINOP_BENCH_CSV "$bin/dist_cg" "$file" 100
        for pc in none jacobi; do
            run "$p" -x PYTHONPATH /usr/bin/python3 scripts/bench_petsc.py cg "$file" 100 "$pc" "$csv"
        done
        if [ "$round" -eq 1 ]; then
            run "$p" -x PYTHONPATH /usr/bin/python3 scripts/bench_petsc.py counts "$file" "$csv"
        fi
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# The summary: medians over the rounds, ratios to PETSc in the same run.
/usr/bin/python3 - "$csv" <<'EOF'
import csv, statistics, sys
from collections import defaultdict
v = defaultdict(list)
for r in csv.DictReader(open(sys.argv[1])):
    v[(r["source"], int(r["ranks"]), int(r["k"]), r["what"], r["variant"])].append(float(r["value"]))
get = lambda *key: statistics.median(v[key]) if key in v else float("nan")
ms = lambda t: f"{t * 1e3:.3f}"
print("\n| ranks | k | distributed | local kernel + exchange | replicated (Gather::All) | PETSc | PETSc / distributed | vector memory / ((rows + ghosts)·k·8) |")
print("|---|---|---|---|---|---|---|---|")
for p in (1, 2):
    for k in (1, 16):
        d = get("lazylinop", p, k, "product", "distributed")
        ke = get("lazylinop", p, k, "product", "kernel") + get("lazylinop", p, k, "product", "exchange")
        r = get("lazylinop", p, k, "product", "replicated")
        pe = get("petsc", p, k, "product", "petsc")
        mem = get("lazylinop", p, k, "memory_ratio", "distributed")
        print(f"| {p} | {k} | {ms(d)} | {ms(ke)} | {ms(r)} | {ms(pe)} | {pe / d:.2f} | {mem:.2f} |")
print("\n| ranks | CG | fused CG | Jacobi CG | PETSc CG | PETSc Jacobi CG | PETSc / CG | CG, 16 RHS at once, per RHS | per RHS / PETSc CG | replicated faer CG | peak RSS (MB): ours / PETSc |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for p in (1, 2):
    c = get("lazylinop", p, 1, "cg_none", "lazylinop")
    pc = get("petsc", p, 1, "cg_none", "petsc")
    b = get("lazylinop", p, 16, "cg16_none", "lazylinop") / 16
    print(f"| {p} | {ms(c)} | {ms(get('lazylinop', p, 1, 'cg_fused', 'lazylinop'))} | {ms(get('lazylinop', p, 1, 'cg_jacobi', 'lazylinop'))} "
          f"| {ms(pc)} | {ms(get('petsc', p, 1, 'cg_jacobi', 'petsc'))} | {pc / c:.2f} | {ms(b)} | {b / pc:.2f} "
          f"| {ms(get('lazylinop', p, 1, 'cg_replicated', 'lazylinop'))} "
          f"| {get('lazylinop', p, 1, 'peak_rss', 'lazylinop') / 2**20:.0f} / {get('petsc', p, 1, 'cg_none_rss', 'petsc') / 2**20:.0f} |")
c1, c2 = get("lazylinop", 1, 1, "cg_none", "lazylinop"), get("lazylinop", 2, 1, "cg_none", "lazylinop")
p1, p2 = get("petsc", 1, 1, "cg_none", "petsc"), get("petsc", 2, 1, "cg_none", "petsc")
print(f"\nCG, 2 ranks over 1: ours {c1 / c2:.2f}x, PETSc {p1 / p2:.2f}x")
print("\n| iterations to 1e-8 | ranks | ours | PETSc |\n|---|---|---|---|")
for key in ("cg_none", "cg_jacobi", "gmres30_none", "gmres30_jacobi"):
    for p in (1, 2):
        print(f"| {key} | {p} | {get('lazylinop', p, 1, key + '_iterations', 'lazylinop'):.0f} | {get('petsc', p, 1, key + '_iterations', 'petsc'):.0f} |")
EOF
