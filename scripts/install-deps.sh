#!/usr/bin/env bash
# Installs what building and testing with the feature `mpi` needs, when it is
# missing: an MPI (OpenMPI from Debian's packages) and libclang (for rsmpi's
# bindgen); and rustfmt and clippy. Does nothing when all are there.
set -euo pipefail

need=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in openmpi-bin libopenmpi-dev libclang-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
    done
elif ! command -v mpirun >/dev/null 2>&1; then
    echo "no MPI found and no apt-get here: install an MPI (OpenMPI or MPICH) and libclang" >&2
    exit 1
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} (apt-get)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
