//! What a distributed product exchanges on thousands of ranks, computed in
//! one process without MPI (`lazylinop::halo::stats`): per rank, the ghost
//! entries it receives, its neighbours and the bytes per product, against
//! the all-gather the replicated product needs.
//!
//! ```text
//! cargo run --release --example halo_stats                     # the 7-point Laplacian on a 1000³ grid
//! cargo run --release --example halo_stats laplace 200 2 8 64  # a 200³ grid, 2, 8 and 64 parts
//! cargo run --release --example halo_stats file.npz 2 16 256   # a scipy sparse file, split as MpiLop splits it
//! ```
//!
//! For the grid, two splits for each number of parts `p`: slabs (the
//! natural numbering cut into `p` contiguous ranges: planes of the grid) and
//! boxes (the grid cut into `px × py × pz` boxes, numbered box by box, one
//! box per part: a 3-D domain decomposition).

use lazylinop::gallery::Grid;
use lazylinop::halo::{self, HaloStats};
use lazylinop::npz::SparseNpz;
use lazylinop::parallel::split;

/// The most even `px × py × pz = p` (the factors closest to `p^(1/3)`).
fn boxes(p: usize) -> [usize; 3] {
    let mut best = [p, 1, 1];
    for px in 1..=p {
        for py in 1..=p / px {
            if p.is_multiple_of(px * py) {
                let b = [px, py, p / (px * py)];
                if b.iter().max() < best.iter().max() {
                    best = b;
                }
            }
        }
    }
    best
}

fn report(what: &str, n: usize, stats: &[HaloStats]) {
    let p = stats.len();
    let max_ghosts = stats.iter().map(|s| s.ghosts).max().unwrap_or(0);
    let max_neighbours = stats.iter().map(HaloStats::neighbours).max().unwrap_or(0);
    let max_bytes = stats.iter().map(|s| s.bytes_received(1, 8).max(s.bytes_sent(1, 8))).max().unwrap_or(0);
    let total: usize = stats.iter().map(|s| s.bytes_received(1, 8)).sum();
    let widest = (0..p).map(|r| split::block(n, p, r).len()).max().unwrap_or(0);
    let allgather = (n - widest.min(n)) * 8;
    println!(
        "| {p} | {what} | {max_ghosts} | {max_neighbours} | {:.3} MB | {:.1} MB | {:.1} MB | {:.0}× |",
        max_bytes as f64 / 1e6,
        total as f64 / 1e6,
        allgather as f64 / 1e6,
        allgather as f64 / max_bytes.max(1) as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parts = |from: usize| -> Vec<usize> {
        let given: Vec<usize> =
            args[from.min(args.len())..].iter().map(|a| a.parse().expect("a number of parts")).collect();
        if given.is_empty() { vec![2, 8, 64, 512, 4096] } else { given }
    };
    println!(
        "| parts | split | ghosts per rank (max) | neighbours (max) | received or sent per rank per product (max, k = 1, f64) | received by all ranks | all-gather, received per rank | all-gather / halo |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    match args.first().map(String::as_str) {
        None | Some("laplace") => {
            let side: usize = args.get(1).map_or(1000, |a| a.parse().expect("usage: halo_stats laplace N [parts...]"));
            for p in parts(2) {
                let n = side * side * side;
                for (what, grid) in [("slabs", Grid::cube(side)), ("boxes", Grid { n: [side; 3], blocks: boxes(p) })] {
                    if what == "boxes" && grid.blocks[1] == 1 && grid.blocks[0] == 1 {
                        continue; // the same as slabs
                    }
                    let offsets = if what == "slabs" {
                        let mut o = vec![0];
                        o.extend((0..p).map(|r| split::block(n, p, r).end));
                        o
                    } else {
                        // Each box its own part, in the numbering's order.
                        let mut o = vec![0];
                        for bz in 0..grid.blocks[2] {
                            for by in 0..grid.blocks[1] {
                                for bx in 0..grid.blocks[0] {
                                    let len = |a: usize, b: usize| split::block(side, grid.blocks[a], b).len();
                                    o.push(o.last().unwrap() + len(0, bx) * len(1, by) * len(2, bz));
                                }
                            }
                        }
                        o
                    };
                    let label = if what == "slabs" { "slabs".to_owned() } else { format!("boxes {:?}", grid.blocks) };
                    let stats = halo::stats(&offsets, &offsets, |i, cols| grid.laplacian_row(i, cols));
                    report(&label, n, &stats);
                }
            }
        }
        Some(file) => {
            let npz = SparseNpz::open(file).expect("a scipy sparse file");
            for p in parts(1) {
                let stats = halo::stats_of_file(&npz, p).expect("the file's structure");
                report("nnz-balanced", npz.major(), &stats);
            }
        }
    }
}
