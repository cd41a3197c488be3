//! The benchmark's table: rows of Wasm and native figures (medians of
//! their samples, and the ratio), rendered as text and serialised as JSON
//! with every sample.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub wasm: f64,
    pub native: f64,
    /// Wasm / native.
    pub ratio: f64,
    /// Every sample behind the medians.
    pub wasm_samples: Vec<f64>,
    pub native_samples: Vec<f64>,
}

impl Row {
    pub fn new(name: impl Into<String>, unit: &'static str, wasm: Vec<f64>, native: Vec<f64>) -> Row {
        let (w, n) = (median(&wasm), median(&native));
        Row {
            name: name.into(),
            unit,
            wasm: w,
            native: n,
            ratio: if n != 0.0 { w / n } else { f64::NAN },
            wasm_samples: wasm,
            native_samples: native,
        }
    }
}

/// The whole table: what ran, where, the rows, and how each was measured.
#[derive(Debug, Serialize)]
pub struct Table {
    pub command: String,
    pub machine: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Table {
    /// A table for this process's command line on this machine.
    pub fn new(rows: Vec<Row>, notes: Vec<String>) -> Table {
        Table { command: std::env::args().collect::<Vec<_>>().join(" "), machine: machine(), rows, notes }
    }

    pub fn render(&self) -> String {
        let mut out = format!("machine: {}\ncommand: {}\n\n", self.machine, self.command);
        out.push_str(&format!("{:<56} {:>12} {:>12} {:>12}  unit\n", "row", "wasm", "native", "wasm/native"));
        for row in &self.rows {
            out.push_str(&format!(
                "{:<56} {:>12} {:>12} {:>12.2}  {}\n",
                row.name,
                figure(row.wasm),
                figure(row.native),
                row.ratio,
                row.unit
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }

    /// Prints the table and writes it to `out` as `bench.txt` and `bench.json`.
    pub fn publish(&self, out: &Path) -> Result<()> {
        let table = self.render();
        print!("{table}");
        std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
        let (text, json) = (out.join("bench.txt"), out.join("bench.json"));
        std::fs::write(&text, &table).with_context(|| format!("write {}", text.display()))?;
        std::fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("write {}", json.display()))?;
        println!("written to {}/bench.txt and bench.json", out.display());
        Ok(())
    }
}

pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Large figures without decimals, small ones with two.
fn figure(value: f64) -> String {
    if value >= 100.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name").map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_row_holds_the_medians_their_ratio_and_every_sample() {
        let row = Row::new("cold start", "ms", vec![300.0, 100.0, 200.0], vec![50.0, 150.0]);
        assert_eq!((row.wasm, row.native, row.ratio), (200.0, 100.0, 2.0));
        assert_eq!(row.wasm_samples, [300.0, 100.0, 200.0]);
        assert!(Row::new("x", "ms", vec![1.0], vec![0.0]).ratio.is_nan());
    }

    #[test]
    fn the_table_renders_one_line_per_row_then_the_notes() {
        let table = Table {
            command: "order-flow bench".into(),
            machine: "2 cores".into(),
            rows: vec![Row::new("GET /healthz, requests/s", "req/s", vec![20336.4], vec![1.5])],
            notes: vec!["HTTP: wrk".into()],
        };
        let expected = format!(
            "machine: 2 cores\ncommand: order-flow bench\n\n{:<56} {:>12} {:>12} {:>12}  unit\n\
             {:<56} {:>12} {:>12} {:>12}  req/s\nnote: HTTP: wrk\n",
            "row", "wasm", "native", "wasm/native", "GET /healthz, requests/s", "20336", "1.50", "13557.60"
        );
        assert_eq!(table.render(), expected);
    }
}
