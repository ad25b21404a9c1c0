//! Test matrices: the 7-point Laplacian on a 3-D grid, the problem the
//! examples and benchmarks solve (and PETSc's tutorials use), built in
//! memory or streamed one row at a time (for [`halo::stats`](crate::halo::stats)
//! on grids too large to hold).

use faer::sparse::{SparseRowMat, SymbolicSparseRowMat};

/// The grid: `nx × ny × nz` points, numbered `x + nx·(y + ny·z)`, or block
/// by block when `blocks` is `(bx, by, bz)` (the grid cut into `bx·by·bz`
/// boxes, each box's points numbered together, boxes in the same order): a
/// contiguous split of that numbering into `bx·by·bz` parts gives each part
/// one box, as a 3-D domain decomposition does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Points along x, y and z.
    pub n: [usize; 3],
    /// Boxes along x, y and z (`[1, 1, 1]`: the natural order, slabs along z).
    pub blocks: [usize; 3],
}

impl Grid {
    /// An `n × n × n` grid in the natural order.
    pub fn cube(n: usize) -> Self {
        Grid { n: [n; 3], blocks: [1; 3] }
    }

    /// The number of points.
    pub fn len(&self) -> usize {
        self.n.iter().product()
    }

    /// Whether the grid has no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The start and length of box `b` along axis `a` (the first `n mod
    /// blocks` boxes one point longer).
    fn cut(&self, a: usize, b: usize) -> (usize, usize) {
        let (q, r) = (self.n[a] / self.blocks[a], self.n[a] % self.blocks[a]);
        (b * q + b.min(r), q + usize::from(b < r))
    }

    /// The box along axis `a` that holds coordinate `p`.
    fn box_of(&self, a: usize, p: usize) -> usize {
        let (q, r) = (self.n[a] / self.blocks[a], self.n[a] % self.blocks[a]);
        if p < r * (q + 1) { p / (q + 1) } else { r + (p - r * (q + 1)) / q }
    }

    /// The number of the point `(x, y, z)`.
    ///
    /// # Panics
    /// If it is not on the grid.
    pub fn index(&self, p: [usize; 3]) -> usize {
        assert!((0..3).all(|a| p[a] < self.n[a]), "point {p:?} not on the grid {:?}", self.n);
        let [nx, ny, _] = self.n;
        if self.blocks == [1; 3] {
            return p[0] + nx * (p[1] + ny * p[2]);
        }
        let b: [usize; 3] = core::array::from_fn(|a| self.box_of(a, p[a]));
        let [(sx, lx), (sy, ly), (sz, lz)] = [self.cut(0, b[0]), self.cut(1, b[1]), self.cut(2, b[2])];
        // Boxes before: whole layers of boxes (along z), rows of boxes (y), boxes (x).
        let before = sz * nx * ny + sy * nx * lz + sx * ly * lz;
        before + (p[0] - sx) + lx * ((p[1] - sy) + ly * (p[2] - sz))
    }

    /// The point numbered `i`.
    ///
    /// # Panics
    /// If `i` is not below [`len`](Self::len).
    pub fn point(&self, i: usize) -> [usize; 3] {
        assert!(i < self.len(), "point {i} of a grid of {}", self.len());
        let [nx, ny, _] = self.n;
        if self.blocks == [1; 3] {
            return [i % nx, (i / nx) % ny, i / (nx * ny)];
        }
        let bz = self.box_of(2, i / (nx * ny));
        let (sz, lz) = self.cut(2, bz);
        let rest = i - sz * nx * ny;
        let by = self.box_of(1, rest / (nx * lz));
        let (sy, ly) = self.cut(1, by);
        let rest = rest - sy * nx * lz;
        let bx = self.box_of(0, rest / (ly * lz));
        let (sx, lx) = self.cut(0, bx);
        let rest = rest - sx * ly * lz;
        [sx + rest % lx, sy + (rest / lx) % ly, sz + rest / (lx * ly)]
    }

    /// The columns of row `i` of the 7-point Laplacian (`i` itself and its
    /// neighbours), appended to `cols` in increasing order.
    pub fn laplacian_row(&self, i: usize, cols: &mut Vec<usize>) {
        let p = self.point(i);
        let start = cols.len();
        for a in 0..3 {
            if p[a] > 0 {
                let mut q = p;
                q[a] -= 1;
                cols.push(self.index(q));
            }
            if p[a] + 1 < self.n[a] {
                let mut q = p;
                q[a] += 1;
                cols.push(self.index(q));
            }
        }
        cols.push(i);
        cols[start..].sort_unstable();
    }
}

/// The 7-point Laplacian of `grid` (6 on the diagonal, −1 for each
/// neighbour, Dirichlet boundary): symmetric positive definite, as CSR with
/// `u32` indices.
///
/// # Panics
/// If the grid has `2³²` points or more.
pub fn laplacian_3d(grid: Grid) -> SparseRowMat<u32, f64> {
    let n = grid.len();
    assert!(n < u32::MAX as usize / 8, "laplacian_3d: a grid of {n} points does not fit u32 indices");
    let (mut ptr, mut idx, mut val) = (Vec::with_capacity(n + 1), Vec::with_capacity(7 * n), Vec::with_capacity(7 * n));
    let mut cols = Vec::with_capacity(7);
    ptr.push(0u32);
    for i in 0..n {
        cols.clear();
        grid.laplacian_row(i, &mut cols);
        for &c in &cols {
            idx.push(c as u32);
            val.push(if c == i { 6.0 } else { -1.0 });
        }
        ptr.push(idx.len() as u32);
    }
    let symbolic = SymbolicSparseRowMat::new_checked(n, n, ptr, None, idx);
    SparseRowMat::new(symbolic, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_numbering_is_a_permutation_and_rows_are_symmetric() {
        for grid in [Grid::cube(4), Grid { n: [5, 3, 4], blocks: [2, 1, 3] }] {
            let n = grid.len();
            let mut seen = vec![false; n];
            for i in 0..n {
                assert_eq!(grid.index(grid.point(i)), i);
                seen[grid.index(grid.point(i))] = true;
            }
            assert!(seen.iter().all(|&s| s));
            let a = laplacian_3d(grid).to_dense();
            assert_eq!(a, a.transpose());
            assert!((0..n).all(|i| a[(i, i)] == 6.0));
            assert_eq!((0..n).map(|i| (0..n).filter(|&j| a[(i, j)] != 0.0).count()).max(), Some(7));
        }
    }
}
