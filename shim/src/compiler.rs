//! Precompilation of wasm-layer images. `containerd-shim-wasm` calls this in
//! the shim process the first time an image's layers are run and stores the
//! result in containerd's content store; later starts load the artifact and
//! skip compilation. (Plain images, whose rootfs holds the `.wasm` file, have
//! the node's compile cache instead: `cache.rs`.)

use std::hash::Hash;
use std::sync::OnceLock;

use anyhow::Result;
use containerd_shim_wasm::sandbox::context::WasmBinaryType;
use containerd_shim_wasm::sandbox::context::WasmLayer;
use containerd_shim_wasm::shim::Compiler;
use wasmtime::Engine;

use crate::engine;
use crate::settings::Settings;

/// Made when `containerd-shim-wasm` first asks for it (only images with
/// wasm layers do): every shim process, and every container process cloned
/// from it, would otherwise carry an engine and its pool reservation that
/// most never use.
#[derive(Default)]
pub struct Precompiler {
    /// Made once; a failure is kept too, so the cache key and `compile`
    /// always agree on whether there is an engine.
    engine: OnceLock<Result<Engine, String>>,
}

impl Precompiler {
    /// The memory bound does not change compiled code, so the default is
    /// as good as any container's own setting here.
    fn engine(&self) -> Result<&Engine> {
        let made = self
            .engine
            .get_or_init(|| engine::new(Settings::default().max_memory_bytes).map_err(|e| format!("{e:#}")));
        made.as_ref().map_err(|e| anyhow::anyhow!("precompilation disabled: {e}"))
    }
}

impl Compiler for Precompiler {
    /// An artifact is reused only by the same shim version with an engine
    /// whose compiled code is compatible (same wasmtime, same settings, same
    /// CPU features). Without an engine nothing can be compiled: the key
    /// then says so, and `compile` reports why.
    fn cache_key(&self) -> impl Hash {
        (env!("CARGO_PKG_VERSION"), self.engine().ok().map(Engine::precompile_compatibility_hash))
    }

    async fn compile(&self, layers: &[WasmLayer]) -> Result<Vec<Option<Vec<u8>>>> {
        let engine = self.engine()?;
        let compiled = layers.iter().map(|layer| compile_layer(engine, layer)).collect();
        engine::release_compile_memory();
        Ok(compiled)
    }
}

/// `None` leaves the layer as it is: already precompiled, not Wasm, or not
/// compilable. In the last case the container's start compiles the raw
/// bytes again and reports the error where the user sees it.
fn compile_layer(engine: &Engine, layer: &WasmLayer) -> Option<Vec<u8>> {
    let bytes = &layer.layer;
    if Engine::detect_precompiled(bytes).is_some() {
        return None;
    }
    let compiled = match WasmBinaryType::from_bytes(bytes)? {
        WasmBinaryType::Component => engine.precompile_component(bytes),
        WasmBinaryType::Module => engine.precompile_module(bytes),
    };
    match compiled {
        Ok(artifact) => {
            log::info!("precompiled layer {} ({} bytes)", layer.config.digest(), artifact.len());
            Some(artifact)
        }
        Err(e) => {
            log::warn!("layer {} does not compile: {e:#}", layer.config.digest());
            None
        }
    }
}
