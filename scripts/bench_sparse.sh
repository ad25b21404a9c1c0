#!/usr/bin/env bash
# The sparse suite side by side in one run: this crate's kernels, faer's product and the
# bandwidth bound (`cargo bench --bench sparse`), and Intel MKL on the same matrices
# (scripts/bench_mkl.py, which reads the files the bench writes), matrix by matrix, the two
# alternating for ROUNDS rounds; the medians over rounds go to bench-results/sparse.csv and a
# summary table to stdout (scripts/bench_sparse_merge.py).
#
# Usage: scripts/bench_sparse.sh   (everything: about 3 h on 2 cores; ROUNDS=1 DTYPES=f64, about 8 min a matrix)
# Settings (environment): ROUNDS (2), MATRICES (stencil2d,stencil3d,powerlaw,random,banded,lsq),
# DTYPES (f64,c64), KS (1,4,16,64), LAYOUTS (col,row), THREADS (1,2), BUDGET (seconds of products
# per figure, 0.3), MKL_VENV (the virtual environment with mkl, numpy and scipy; made when missing,
# default ~/.cache/lazylinop-bench-venv), OUT (bench-results/sparse.csv).
# Without MKL (no network, no wheel) the suite still runs and reports MKL as absent.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-2}
matrices=${MATRICES:-stencil2d,stencil3d,powerlaw,random,banded,lsq}
common=(--dtypes "${DTYPES:-f64,c64}" --ks "${KS:-1,4,16,64}" --layouts "${LAYOUTS:-col,row}"
    --threads "${THREADS:-1,2}" --budget "${BUDGET:-0.3}")
venv=${MKL_VENV:-$HOME/.cache/lazylinop-bench-venv}
out=${OUT:-bench-results/sparse.csv}

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import numpy, scipy' 2>/dev/null; then
    echo "== making $venv (pip install mkl numpy scipy)" >&2
    python3 -m venv "$venv" && "$venv/bin/pip" install -q mkl numpy scipy ||
        echo "could not install MKL's wheel: the suite runs without MKL" >&2
fi
mkl=()
if "$venv/bin/python" -c 'import numpy, scipy' 2>/dev/null; then
    mkl=("$venv/bin/python" scripts/bench_mkl.py)
fi

cargo bench --bench sparse --no-run
bin=$(cargo bench --bench sparse --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "could not find the bench binary" >&2; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "== $(date -u +%FT%TZ), $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq 1 "$rounds"); do
    for m in ${matrices//,/ }; do
        echo "== round $round: $m" >&2
        "$bin" --matrices "$m" --out "$dir" "${common[@]}" --csv "$dir/part.$round.$m.rust.csv" >/dev/null
        if [ ${#mkl[@]} -gt 0 ]; then
            "${mkl[@]}" "$dir" --matrices "$m" "${common[@]}" >"$dir/part.$round.$m.mkl.csv"
        fi
        rm -f "$dir/$m".*.npz
    done
done
mkdir -p "$(dirname "$out")"
python3 scripts/bench_sparse_merge.py "$out" "$dir"/part.*.csv
