use containerd_shim_wasm::shim::Cli as _;

fn main() {
    // containerd-shim-wasm knows `-v` and stops with a panic on any other
    // flag it does not know; answer the usual `--version` as a CLI should.
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("containerd-shim-wasmtime-custom-v1 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    wasmtime_custom::WasmtimeCustom::run(None);
}
