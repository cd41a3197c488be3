//! The benchmark's own options (the flow's come with them from the command line).

use std::path::PathBuf;

/// How much to measure, and where to write it.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Cold starts per row.
    #[arg(long, default_value_t = 10)]
    pub starts: usize,
    /// Runs of each wrk measurement and of the full flow; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 5)]
    pub wrk_seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Running instances of each kind for the density row.
    #[arg(long, default_value_t = 20)]
    pub instances: usize,
    /// Where `bench.txt` and `bench.json` are written.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}
