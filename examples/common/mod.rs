//! What the distributed examples share: the problem from the command line
//! and the process's memory as Linux reports it.

use std::path::PathBuf;

use lazylinop::gallery::{Grid, laplacian_3d};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

/// The matrix file, its name and the count argument (`count`, by default
/// `default`), from `[laplace [N] [count]]` or `FILE.npz [count]`: for the
/// Laplacian on an `N³` grid (60 by default), rank 0 writes the matrix with
/// `save_sparse` to the system's temporary directory, or to
/// `$LAZYLINOP_MATRIX` if set (for other tools to read the same file).
pub fn problem(world: &SimpleCommunicator, usage: &str, default: usize) -> (PathBuf, String, usize) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, what: &str, or: usize| {
        args.get(i).map_or(or, |a| a.parse().unwrap_or_else(|_| panic!("{what} {a:?}: usage: {usage}")))
    };
    match args.first().map(String::as_str) {
        None | Some("laplace") => {
            let n = number(1, "N", 60);
            let path = std::env::var_os("LAZYLINOP_MATRIX")
                .map_or_else(|| std::env::temp_dir().join(format!("lazylinop-laplace-{n}.npz")), PathBuf::from);
            if world.rank() == 0 {
                lazylinop::npz::save_sparse(&path, laplacian_3d(Grid::cube(n)).as_ref()).expect("write the matrix");
            }
            world.barrier();
            (path, format!("laplace{n}"), number(2, "count", default))
        }
        Some(file) => {
            let name = std::path::Path::new(file).file_stem().unwrap().to_string_lossy().into_owned();
            (file.into(), name, number(1, "count", default))
        }
    }
}

/// A size line of `/proc/self/status` (`VmRSS`: resident memory now,
/// `VmHWM`: its peak, `RssAnon`: the anonymous part of `VmRSS`), bytes; 0
/// where there is none.
pub fn status_bytes(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
