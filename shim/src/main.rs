use containerd_shim_wasm::shim::Cli as _;

fn main() {
    wasmtime_custom::WasmtimeCustom::run(None);
}
