//! The benchmarks' output files: CSV tables in `bench-results/`, which `scripts/plots.py` draws
//! into `docs/plots/`. Included by path (`#[path]`) by the benchmarks that write one.

use std::io;
use std::path::PathBuf;

/// Writes `rows` into `bench-results/{name}` under `header`, replacing the file's rows whose
/// first `key` columns equal a new row's and keeping the others, so that a run of some cases
/// (a filtered bench, one rank count) updates only those. A file with another header is
/// replaced whole. Rows are sorted; values must not hold commas or newlines. Returns the path.
pub fn merge(name: &str, header: &[&str], key: usize, rows: Vec<Vec<String>>) -> io::Result<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/bench-results"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    let head = header.join(",");
    let mut lines: Vec<String> = match std::fs::read_to_string(&path) {
        Ok(text) if text.lines().next() == Some(head.as_str()) => text.lines().skip(1).map(String::from).collect(),
        _ => Vec::new(),
    };
    let key_of = |line: &str| line.split(',').take(key).map(String::from).collect::<Vec<_>>();
    let new: Vec<String> = rows
        .into_iter()
        .map(|row| {
            assert_eq!(
                row.len(),
                header.len(),
                "a row of {name} has {} values for {} columns",
                row.len(),
                header.len()
            );
            assert!(row.iter().all(|v| !v.contains([',', '\n'])), "a value of {name} holds a comma: {row:?}");
            row.join(",")
        })
        .collect();
    lines.retain(|old| !new.iter().any(|n| key_of(n) == key_of(old)));
    lines.extend(new);
    lines.sort();
    let mut text = head;
    for line in lines {
        text.push('\n');
        text.push_str(&line);
    }
    text.push('\n');
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Seconds since the Unix epoch, marking the run a row comes from.
pub fn run_id() -> String {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string()
}
