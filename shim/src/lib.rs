//! `containerd-shim-wasmtime-custom-v1`: a containerd shim that runs
//! WebAssembly with an embedded wasmtime.
//!
//! containerd plumbing (task API, container set-up, content store) is
//! runwasi's `containerd-shim-wasm`; this crate only says how to compile and
//! run Wasm. See `ARCHITECTURE.md` for the map.

use containerd_shim_wasm::shim::{Compiler, Shim, Version, version};

mod cache;
mod compile_command;
mod compiler;
mod engine;
mod guest_calls;
mod guest_setup;
mod logs;
mod metrics;
mod outbound;
mod outgoing;
mod output;
mod run;
mod sandbox;
mod serve;
mod settings;
mod signals;
mod standalone;
mod store_state;
mod traces;

pub use cache::open_at_start as open_compile_cache;
pub use compile_command::main as compile_main;
pub use compiler::Precompiler;
pub use sandbox::WasmtimeSandbox;
pub use standalone::main as serve_main;

/// The shim: runtime `io.containerd.wasmtime-custom.v1`.
pub struct WasmtimeCustom;

impl Shim for WasmtimeCustom {
    type Sandbox = WasmtimeSandbox;

    fn name() -> &'static str {
        "wasmtime-custom"
    }

    fn version() -> Version {
        version!()
    }

    async fn compiler() -> Option<impl Compiler> {
        Some(Precompiler::default())
    }
}
