//! Precompilation of wasm-layer images. `containerd-shim-wasm` calls this in
//! the shim process the first time an image's layers are run and stores the
//! result in containerd's content store; later starts load the artifact and
//! skip compilation. (Plain images whose rootfs holds the `.wasm` file are
//! compiled at every start.)

use std::hash::Hash;

use anyhow::Result;
use containerd_shim_wasm::sandbox::context::WasmBinaryType;
use containerd_shim_wasm::sandbox::context::WasmLayer;
use containerd_shim_wasm::shim::Compiler;
use wasmtime::Engine;

use crate::engine;
use crate::settings::Settings;

pub struct Precompiler {
    engine: Engine,
}

impl Precompiler {
    pub fn new() -> Result<Precompiler> {
        // The memory bound does not change compiled code, so the default is
        // as good as any container's own setting here.
        Ok(Precompiler { engine: engine::new(Settings::default().max_memory_bytes)? })
    }
}

impl Compiler for Precompiler {
    /// An artifact is reused only by the same shim version with an engine
    /// whose compiled code is compatible (same wasmtime, same settings, same CPU features).
    fn cache_key(&self) -> impl Hash {
        (env!("CARGO_PKG_VERSION"), self.engine.precompile_compatibility_hash())
    }

    async fn compile(&self, layers: &[WasmLayer]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(layers.iter().map(|layer| self.compile_layer(layer)).collect())
    }
}

impl Precompiler {
    /// `None` leaves the layer as it is: already precompiled, not Wasm, or not
    /// compilable. In the last case the container's start compiles the raw
    /// bytes again and reports the error where the user sees it.
    fn compile_layer(&self, layer: &WasmLayer) -> Option<Vec<u8>> {
        let bytes = &layer.layer;
        if Engine::detect_precompiled(bytes).is_some() {
            return None;
        }
        let compiled = match WasmBinaryType::from_bytes(bytes)? {
            WasmBinaryType::Component => self.engine.precompile_component(bytes),
            WasmBinaryType::Module => self.engine.precompile_module(bytes),
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
}
