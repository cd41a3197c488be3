use containerd_shim_wasm::shim::Cli as _;

fn main() {
    // containerd-shim-wasm knows `-v` and stops with a panic on any other
    // flag it does not know; answer the usual `--version` as a CLI should.
    // containerd's own arguments all start with `-`, so `serve` and `compile`
    // are free.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") => println!("containerd-shim-wasmtime-custom-v1 {}", env!("CARGO_PKG_VERSION")),
        Some("serve") => std::process::exit(wasmtime_custom::serve_main(&args[1..])),
        Some("compile") => std::process::exit(wasmtime_custom::compile_main(&args[1..])),
        _ => {
            // Before anything else: the containers this process starts reach
            // the node's compile cache through the folder opened here.
            wasmtime_custom::open_compile_cache();
            wasmtime_custom::WasmtimeCustom::run(None)
        }
    }
}
