//! `order-flow`: the main job (`run`) and the benchmark (`bench`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use flow::bench::{self, BenchOptions};
use flow::job;
use flow::model::{Flavor, FlowOptions};
use flow::standin::StandInOptions;
use testbed::Paths;

#[derive(Parser)]
#[command(
    version,
    about = "The order flow through wasmtime-custom under a real containerd, and its benchmark"
)]
struct Cli {
    #[command(flatten)]
    parts: PartsArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the local node's parts are; by default where a build puts them.
#[derive(Args)]
struct PartsArgs {
    /// Folder holding containerd-shim-wasmtime-custom-v1 and
    /// wasmtime-custom-node-installer [default: this program's folder]
    #[arg(long, global = true, env = testbed::paths::BIN_DIR_ENV)]
    bin_dir: Option<PathBuf>,
    /// Folder holding the image archives (app.tar, app-native.tar)
    /// [default: `images` next to the binaries' folder]
    #[arg(long, global = true, env = testbed::paths::IMAGES_ENV)]
    images: Option<PathBuf>,
    /// Folder holding containerd 1.7 unpacked by
    /// scripts/install-prerequisites.sh (`trixie/`) [default: `containerd`
    /// next to the binaries' folder]
    #[arg(long, global = true, env = testbed::paths::CONTAINERD_DIR_ENV)]
    containerd_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the order flow once and prints its report; exits 1 if any order
    /// was lost or changed.
    Run {
        /// What the three apps run as.
        #[arg(long, value_enum, default_value_t = Flavor::Wasm)]
        flavor: Flavor,
        #[command(flatten)]
        flow: FlowArgs,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Compares the Wasm app on the shim with the native app on runc, row by
    /// row in one run; prints a table and writes it as JSON.
    Bench {
        #[command(flatten)]
        bench: BenchOptions,
        #[command(flatten)]
        flow: FlowArgs,
    },
}

#[derive(Args)]
struct FlowArgs {
    /// Orders to release at once.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    orders: u32,
    /// Seed of the generated orders (same seed, same orders).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Invalid messages to put on the ingress queue with the orders.
    #[arg(long, default_value_t = 0)]
    poison: u32,
    /// Deliveries in flight per input binding (queue).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Failed deliveries of a message before it is dead-lettered.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
    /// Delay before the first redelivery, in milliseconds; it doubles each time.
    #[arg(long, default_value_t = 100)]
    backoff_ms: u64,
    /// The longest delay between two deliveries of a message, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    max_backoff_ms: u64,
    /// Refuse the first N blob writes with 503, as a storage outage would.
    #[arg(long, default_value_t = 0)]
    fail_blob_writes: u64,
    /// The longest the flow may take once released, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Do not draw the progress bar (it is drawn only when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,
    /// More environment for every app container, NAME=VALUE (repeatable):
    /// for example OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 to send
    /// each order's trace to a local collector.
    #[arg(long = "app-env", value_name = "NAME=VALUE", value_parser = name_value)]
    app_env: Vec<(String, String)>,
}

fn name_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

impl FlowArgs {
    fn options(&self) -> FlowOptions {
        FlowOptions {
            orders: self.orders,
            seed: self.seed,
            poison: self.poison,
            standin: StandInOptions {
                concurrency: self.concurrency,
                max_attempts: self.max_attempts.max(1),
                backoff: Duration::from_millis(self.backoff_ms),
                max_backoff: Duration::from_millis(self.max_backoff_ms),
                failing_blob_writes: self.fail_blob_writes,
                ..StandInOptions::default()
            },
            timeout: Duration::from_secs(self.timeout_secs),
            progress: !self.no_progress,
            app_env: self.app_env.clone(),
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("order-flow: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let PartsArgs { bin_dir, images, containerd_dir } = cli.parts;
    let paths = Paths::new(bin_dir, images, containerd_dir)?;
    match cli.command {
        Command::Run { flavor, flow, json } => {
            let report = job::run_once(&paths, flavor, flow.options())?;
            print!("{}", report.render());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
                println!("  report written to {}", path.display());
            }
            if report.ok() {
                return Ok(ExitCode::SUCCESS);
            }
            eprint!("{}", report.app_outputs());
            eprintln!("order-flow: the run FAILED: see LOST / WRONG / TIMED OUT above");
            Ok(ExitCode::from(1))
        }
        Command::Bench { bench, flow } => {
            bench::run(&paths, &bench, flow.options())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
