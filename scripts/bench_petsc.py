"""The PETSc anchor of the distributed benchmarks: the same scipy `.npz` file,
PETSc 3.18 through petsc4py (Debian's python3-petsc4py), run under mpirun.

    mpirun -n 2 -x PYTHONPATH /usr/bin/python3 scripts/bench_petsc.py product FILE [reps] [csv]
    mpirun -n 2 -x PYTHONPATH /usr/bin/python3 scripts/bench_petsc.py cg FILE ITERS [pc] [csv]
    mpirun -n 2 -x PYTHONPATH /usr/bin/python3 scripts/bench_petsc.py counts FILE [csv]

with PYTHONPATH=/usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-real/lib/python3/dist-packages
(scripts/bench_distributed.sh sets it). Each rank reads its rows of the CSR
matrix (PETSc's default split: equal rows). `product` times MatMult (k = 1)
and MatMatMult with a dense 16-column matrix; `cg` times KSPCG with a fixed
number of iterations (tolerance 0), without preconditioner (`none`) or with
`jacobi`. `counts` gives the iterations to a relative residual of 1e-8 of
KSPCG and of KSPGMRES(30), each without preconditioner and with Jacobi, the
residual unpreconditioned (CG's norm type UNPRECONDITIONED, GMRES's
preconditioner on the right), as this crate's solvers measure it. Figures: the median over runs of the slowest rank; CSV lines
`petsc,name,rows,ranks,k,what,variant,seconds` appended to `csv` on rank 0.
"""

import os
import resource
import sys
import time

import numpy as np
import scipy.sparse
from mpi4py import MPI
from petsc4py import PETSc

comm = PETSc.COMM_WORLD
mpi = comm.tompi4py()
rank, size = comm.getRank(), comm.getSize()


def load(path):
    a = scipy.sparse.load_npz(path).tocsr()
    n = a.shape[0]
    lo, hi = rank * n // size, (rank + 1) * n // size
    rows = a[lo:hi]
    m = PETSc.Mat().createAIJ(
        size=((hi - lo, n), (hi - lo, a.shape[1])),
        csr=(rows.indptr.astype(PETSc.IntType), rows.indices.astype(PETSc.IntType), rows.data),
        comm=comm,
    )
    m.assemble()
    del a, rows
    return m, n


def timed(f, reps):
    f()
    times = []
    for _ in range(reps):
        mpi.Barrier()
        t = time.perf_counter()
        f()
        times.append(mpi.allreduce(time.perf_counter() - t, op=MPI.MAX))
    return float(np.median(times))


def emit(csv, name, n, k, what, variant, t):
    if rank == 0 and csv:
        with open(csv, "a") as f:
            f.write(f"petsc,{name},{n},{size},{k},{what},{variant},{t:.9f}\n")


def product(path, reps, csv):
    a, n = load(path)
    name = os.path.splitext(os.path.basename(path))[0].replace("lazylinop-", "").replace("-", "")
    x, y = a.createVecs()
    x.set(1.0)
    t1 = timed(lambda: a.mult(x, y), reps)
    nloc = a.getLocalSize()[1]
    b = PETSc.Mat().createDense(size=((nloc, n), (None, 16)), comm=comm)
    b.setUp()
    b.getDenseArray()[:] = 1.0
    b.assemble()
    c = a.matMult(b)
    t16 = timed(lambda: a.matMult(b, c), reps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peaks = mpi.gather(rss)
    if rank == 0:
        print(f"PETSc {PETSc.Sys.getVersion()}, {size} rank(s), {n} rows: MatMult {t1 * 1e3:.3f} ms, "
              f"MatMatMult (16 dense columns) {t16 * 1e3:.3f} ms; peak RSS per rank {[p // 2**20 for p in peaks]} MB")
    emit(csv, name, n, 1, "product", "petsc", t1)
    emit(csv, name, n, 16, "product", "petsc", t16)


def cg(path, iters, pc, csv):
    a, n = load(path)
    name = os.path.splitext(os.path.basename(path))[0].replace("lazylinop-", "").replace("-", "")
    x, b = a.createVecs()
    b.set(1.0)
    ksp = PETSc.KSP().create(comm=comm)
    ksp.setOperators(a)
    ksp.setType("cg")
    ksp.getPC().setType(pc)
    ksp.setTolerances(rtol=1e-300, atol=0.0, max_it=iters)
    ksp.setConvergenceTest(lambda *args: 0)  # exactly `iters` iterations
    ksp.setFromOptions()

    def solve():
        x.set(0.0)
        ksp.solve(b, x)

    t = timed(solve, 3)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peaks = mpi.gather(rss)
    if rank == 0:
        print(f"PETSc KSPCG pc={pc}, {size} rank(s), {n} rows: {ksp.getIterationNumber()} iterations, "
              f"{t / iters * 1e3:.3f} ms per iteration; peak RSS per rank {[p // 2**20 for p in peaks]} MB")
    emit(csv, name, n, 1, f"cg_{pc}", "petsc", t / iters)
    emit(csv, name, n, 1, f"cg_{pc}_rss", "petsc", max(peaks) if rank == 0 else 0)


def counts(path, csv):
    a, n = load(path)
    name = os.path.splitext(os.path.basename(path))[0].replace("lazylinop-", "").replace("-", "")
    x, b = a.createVecs()
    b.set(1.0)
    found = []
    for kind, pc in [("cg", "none"), ("cg", "jacobi"), ("gmres", "none"), ("gmres", "jacobi")]:
        ksp = PETSc.KSP().create(comm=comm)
        ksp.setOperators(a)
        ksp.setType(kind)
        ksp.getPC().setType(pc)
        if kind == "cg":
            ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        else:
            ksp.setGMRESRestart(30)
            ksp.setPCSide(PETSc.PC.Side.RIGHT)
        ksp.setTolerances(rtol=1e-8, atol=0.0, max_it=10000)
        x.set(0.0)
        ksp.solve(b, x)
        its = ksp.getIterationNumber()
        key = f"{kind}{'30' if kind == 'gmres' else ''}_{pc}_iterations"
        found.append((key, its, ksp.getConvergedReason()))
        emit(csv, name, n, 1, key, "petsc", its)
    if rank == 0:
        print(f"PETSc iterations to 1e-8, {size} rank(s), {n} rows: " + ", ".join(f"{k} {i} (reason {r})" for k, i, r in found))


if __name__ == "__main__":
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "product":
        product(path, int(sys.argv[3]) if len(sys.argv) > 3 else 20, sys.argv[4] if len(sys.argv) > 4 else None)
    elif cmd == "cg":
        cg(path, int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "none", sys.argv[5] if len(sys.argv) > 5 else None)
    elif cmd == "counts":
        counts(path, sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        sys.exit(f"unknown command {cmd}")
