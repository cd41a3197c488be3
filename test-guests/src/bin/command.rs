//! A WASI command for the shim's tests: prints its arguments and one
//! environment variable, then exits with the code given as first argument (WASIp2 reports any
//! non-zero code as failure, which a host sees as 1).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello from a command: args={:?} GREETING={:?}", &args[1..], std::env::var("GREETING").ok());
    let code = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    std::process::exit(code);
}
