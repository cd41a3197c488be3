use containerd_shim_wasm::shim::Cli as _;

fn main() {
    // containerd-shim-wasm knows `-v` and stops with a panic on any other
    // flag it does not know; answer the usual `--version` as a CLI should.
    // containerd's own arguments all start with `-`, so `serve` is free.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") => println!("containerd-shim-wasmtime-custom-v1 {}", env!("CARGO_PKG_VERSION")),
        Some("serve") => std::process::exit(wasmtime_custom::serve_main(&args[1..])),
        _ => wasmtime_custom::WasmtimeCustom::run(None),
    }
}
