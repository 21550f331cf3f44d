//! The component benchmarks (`xds-bench`, `statsd-bench`), run as they are and their
//! tables kept whole, with the headline figures read out of them.

use std::path::Path;
use std::process::Command;

/// One component benchmark's output.
#[derive(Debug, Clone, Default)]
pub struct Component {
    /// Its markdown table and notes, as printed.
    pub table: String,
    /// Headline figures: (measure, value, target).
    pub headlines: Vec<(String, String, String)>,
}

/// Runs an example binary from `examples_dir` and returns its stdout.
fn run(examples_dir: &Path, name: &str) -> anyhow::Result<String> {
    let exe = examples_dir.join(name);
    anyhow::ensure!(exe.is_file(), "{} not found: build it with `cargo build --release --workspace --examples`", exe.display());
    let out = Command::new(&exe).output()?;
    anyhow::ensure!(out.status.success(), "{name} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cells of a markdown table row.
fn cells(line: &str) -> Vec<&str> {
    line.trim().trim_matches('|').split('|').map(str::trim).collect()
}

/// Reads the headline figures out of `xds-bench`'s table.
pub fn xds_headlines(table: &str) -> Vec<(String, String, String)> {
    table
        .lines()
        .map(cells)
        .filter(|c| c.len() == 7 && c[0] == "delta" && c[1] == "1000")
        .flat_map(|c| {
            [
                ("xDS change->ACK p99, 1,000 functions, delta".to_string(), c[3].to_string(), "<= 10 ms".to_string()),
                ("xDS bytes per endpoint change, 1,000 functions, delta".to_string(), c[5].to_string(), "flat in N".to_string()),
                ("control-plane RSS, 1,000 functions".to_string(), c[6].to_string(), "<= 50 MB".to_string()),
            ]
        })
        .collect()
}

/// Reads the headline figures out of `statsd-bench`'s table.
pub fn statsd_headlines(table: &str) -> Vec<(String, String, String)> {
    table
        .lines()
        .map(cells)
        .filter(|c| c.len() == 3 && (c[0].starts_with("lines parsed") || c[0].starts_with("highest achieved")))
        .map(|c| (format!("statsd: {}", c[0]), c[1].to_string(), format!(">= {}", c[2])))
        .collect()
}

/// Runs `xds-bench`.
pub fn xds(examples_dir: &Path) -> anyhow::Result<Component> {
    let table = run(examples_dir, "xds-bench")?;
    Ok(Component { headlines: xds_headlines(&table), table })
}

/// Runs `statsd-bench`.
pub fn statsd(examples_dir: &Path) -> anyhow::Result<Component> {
    let table = run(examples_dir, "statsd-bench")?;
    Ok(Component { headlines: statsd_headlines(&table), table })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headlines_come_from_the_tables() {
        let xds = "| ADS | functions | change->ACK p50 | p99 | max | bytes | RSS |\n|---|---:|\n| delta | 100 | 0.4 ms | 0.6 ms | 1 ms | 224 B | 8 MB |\n| delta | 1000 | 1.96 ms | 2.44 ms | 3.06 ms | 224 B | 14.4 MB |\n| SotW | 1000 | 7 ms | 11 ms | 51 ms | 107994 B | 14.7 MB |\n";
        let h = xds_headlines(xds);
        assert_eq!(h.len(), 3);
        assert_eq!((h[0].1.as_str(), h[1].1.as_str(), h[2].1.as_str()), ("2.44 ms", "224 B", "14.4 MB"));
        let statsd = "| measure | result | target |\n|---|---:|---:|\n| lines parsed and aggregated per second, one core | 5.49 million | 2 million |\n| asked 50000/s | 0 lost | x |\n| highest achieved send rate with zero loss | 399995 datagrams/s | 200,000 |\n";
        let h = statsd_headlines(statsd);
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].1.as_str(), h[0].2.as_str()), ("5.49 million", ">= 2 million"));
        assert_eq!(h[1].1, "399995 datagrams/s");
    }
}
