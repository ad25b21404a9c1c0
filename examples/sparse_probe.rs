use faer::dyn_stack::{MemBuffer, MemStack};
use faer::sparse::{SparseColMat, Triplet};
use faer::{Mat, Par};
use lazylinop::prelude::*;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let k: usize = args.get(1).map_or(16, |s| s.parse().unwrap());
    let fmt = args.get(2).cloned().unwrap_or("csr".into());
    let n = 20000;
    let mut state = 12345u64;
    let triplets: Vec<_> = (0..n).flat_map(|j| (0..40).map(|t| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; Triplet::new((state % n as u64) as usize, j, 1.0 / (1.0 + t as f64)) }).collect::<Vec<_>>()).collect();
    let csc = SparseColMat::<usize, f64>::try_new_from_triplets(n, n, &triplets).unwrap();
    let csr = csc.to_row_major().unwrap();
    let x = lazylinop::random::mat::<f64>(n, k, 1);
    let mut out = Mat::zeros(n, k);
    {
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            if fmt == "csr" { faer::sparse::linalg::matmul::sparse_dense_matmul(out.as_mut(), faer::Accum::Replace, csr.as_ref(), x.as_ref(), 1.0, Par::Seq) } else { faer::sparse::linalg::matmul::sparse_dense_matmul(out.as_mut(), faer::Accum::Replace, csc.as_ref(), x.as_ref(), 1.0, Par::Seq) }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{fmt} k={k} faer: best {:.3} ms", best * 1e3);
    }
    for par in [Par::Seq, Par::rayon(2), Par::Seq, Par::rayon(2)] {
        let op: &dyn Fn(faer::MatMut<f64>, &mut MemStack) = if fmt == "csr" { &|o, s| Sparse::new(&csr).apply(o, x.as_ref(), par, s) } else { &|o, s| Sparse::new(&csc).apply(o, x.as_ref(), par, s) };
        let req = if fmt == "csr" { Sparse::new(&csr).apply_scratch(k, par) } else { Sparse::new(&csc).apply_scratch(k, par) };
        let mut buf = MemBuffer::new(req);
        let mut best = f64::INFINITY;
        for _ in 0..20 {
            let t = Instant::now();
            op(out.as_mut(), MemStack::new(&mut buf));
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{fmt} k={k} {par:?}: best {:.3} ms", best * 1e3);
    }
}
