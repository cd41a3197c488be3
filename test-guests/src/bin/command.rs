//! A WASI command for the shim's tests. What it does depends on its first
//! argument:
//!
//! | args | does |
//! |---|---|
//! | `sleep MS` | prints `sleeping MS ms`, waits MS ms, prints `slept MS ms`, exits 0 |
//! | `spin` | prints `spinning`, then computes forever without calling the host |
//! | `CODE` or nothing | prints its arguments and the environment variable `GREETING`, then exits with CODE (default 0; WASIp2 reports any non-zero code as failure, which a host sees as 1) |
//!
//! Tests wait for the first line to know the guest runs.

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sleep") => {
            let ms: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
            println!("sleeping {ms} ms");
            std::thread::sleep(Duration::from_millis(ms));
            println!("slept {ms} ms");
        }
        Some("spin") => {
            println!("spinning");
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        _ => {
            println!(
                "hello from a command: args={:?} GREETING={:?}",
                &args[1..],
                std::env::var("GREETING").ok()
            );
            let code = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
            std::process::exit(code);
        }
    }
}
