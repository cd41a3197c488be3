//! The one wasmtime `Engine` configuration, shared by the precompiler (in the
//! shim process) and the runtime (in the container process): an artifact is
//! only loadable by an engine configured the same way.
//!
//! Also classifies what an image holds (HTTP component, command component,
//! core module) with errors that say what is wrong with it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use containerd_shim_wasm::sandbox::context::WasmBinaryType;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig, Precompiled};

/// Linear memory kept resident per pool slot between requests (see `new`).
const KEEP_RESIDENT_BYTES: usize = 2 << 20;
/// Table memory kept resident per pool slot between requests.
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// How often the engine's epoch advances (see [`start_epoch_ticker`]).
const EPOCH_TICK: Duration = Duration::from_millis(100);

/// Builds the engine. `max_memory_bytes` bounds one instance's linear memory
/// when the pooling allocator is in use (it has no effect on compiled code).
///
/// The pooling allocator reserves address space for many instances up front,
/// which makes per-request instantiation fast; hosts that refuse the
/// reservation (strict overcommit, small `ulimit -v`) get the on-demand
/// allocator instead, with a warning.
pub fn new(max_memory_bytes: usize) -> Result<Engine> {
    let mut pooling = PoolingAllocationConfig::default();
    pooling.max_memory_size(max_memory_bytes);
    // Every request gets a fresh instance, so a slot is reset after each one.
    // Resetting by `madvise` drops the pages and flushes the TLB of every
    // core the server's threads ran on (an IPI each time): under load that
    // was the largest cost of a request. Instead the pages a request touched
    // are found (PAGEMAP_SCAN, Linux 6.7+; else the low addresses are
    // assumed) and restored with `memset`/`memcpy` up to this many bytes,
    // staying resident for the next request; only memory beyond it is
    // `madvise`d. An instance of a typical HTTP component uses about 1 MiB.
    pooling.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
    pooling.table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
    pooling.pagemap_scan(wasmtime::Enabled::Auto);
    // Reuse the slots a component used before, least recently used first,
    // instead of warming new ones: the slots ever used (and the memory they
    // keep resident) stay as many as the most requests ever in flight at once.
    pooling.max_unused_warm_slots(0);
    match Engine::new(&config(Some(pooling))) {
        Ok(engine) => Ok(engine),
        Err(e) => {
            log::warn!("pooling allocator unavailable on this host ({e:#}); using on-demand allocation");
            Engine::new(&config(None))
                .map_err(anyhow::Error::from)
                .context("could not create the wasmtime engine")
        }
    }
}

fn config(pooling: Option<PoolingAllocationConfig>) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Guest code checks the epoch: a computing guest yields its thread at
    // every tick, so the HTTP server can stop a request past its timeout
    // (serve.rs) and a signal can stop a command that never calls the host
    // (run.rs).
    config.epoch_interruption(true);
    if let Some(pooling) = pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] for the life of the
/// process. The container process runs one guest workload, so it starts
/// this once (the precompiler in the shim process runs no guest code).
pub fn start_epoch_ticker(engine: &Engine) {
    let engine = engine.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(EPOCH_TICK);
            engine.increment_epoch();
        }
    });
}

/// Gives the memory the compiler freed back to the system. glibc keeps
/// freed heap for reuse, and the compiler's working set (several times the
/// Wasm's size) would otherwise stay in the container's resident memory
/// for its whole life, although a server never compiles again.
pub fn release_compile_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // takes glibc's own locks and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What an image's Wasm turned out to be.
pub enum Workload {
    /// A component exporting `wasi:http/incoming-handler`: served over HTTP.
    Http(Component),
    /// A component exporting `wasi:cli/run`: run once, exit with its code.
    Command(Component),
    /// A core module (WASIp1): its entry function is called once.
    Module(Module),
}

/// Compiled code, before it is known what it serves.
pub enum Compiled {
    Component(Component),
    Module(Module),
}

/// Compiles (or, for `precompiled` bytes, loads) `bytes` and classifies it.
/// `origin` names the file or layer in error messages.
pub fn load(engine: &Engine, bytes: &[u8], precompiled: bool, origin: &str) -> Result<Workload> {
    if precompiled {
        return load_precompiled(engine, bytes, origin);
    }
    let compiled = match kind(bytes, origin)? {
        WasmBinaryType::Component => Compiled::Component(
            Component::new(engine, bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| does_not_compile(origin, "component"))?,
        ),
        WasmBinaryType::Module => Compiled::Module(
            Module::new(engine, bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| does_not_compile(origin, "module"))?,
        ),
    };
    workload(engine, compiled, origin)
}

/// Compiles `bytes` to an artifact that [`load_file`] (or [`load`] with
/// `precompiled`) loads, with the same errors as [`load`].
pub fn precompile(engine: &Engine, bytes: &[u8], origin: &str) -> Result<Vec<u8>> {
    match kind(bytes, origin)? {
        WasmBinaryType::Component => engine
            .precompile_component(bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| does_not_compile(origin, "component")),
        WasmBinaryType::Module => engine
            .precompile_module(bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| does_not_compile(origin, "module")),
    }
}

/// Maps the artifact at `path` (from [`precompile`]) as compiled code: its
/// pages are the file's, shared by every process that maps it.
///
/// The caller vouches for the file: it was written by [`precompile`] with
/// an engine of this configuration (this process just wrote it, or its
/// checksum was checked through the same open file) and is never changed
/// in place.
pub fn load_file(engine: &Engine, path: &Path) -> Result<Compiled> {
    let kind = Engine::detect_precompiled_file(path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("could not read {}", path.display()))?
        .with_context(|| format!("{} is not a wasmtime artifact", path.display()))?;
    // SAFETY: see the doc comment: the file is this engine's artifact, and
    // entries are replaced by rename, never rewritten, so the mapping stays
    // valid; wasmtime checks the header, its version and the engine's
    // compatibility before use.
    let compiled = match kind {
        Precompiled::Component => Compiled::Component(unsafe { Component::deserialize_file(engine, path) }?),
        Precompiled::Module => Compiled::Module(unsafe { Module::deserialize_file(engine, path) }?),
    };
    Ok(compiled)
}

/// What `compiled` serves, or why it serves nothing this shim knows.
pub fn workload(engine: &Engine, compiled: Compiled, origin: &str) -> Result<Workload> {
    match compiled {
        Compiled::Component(component) => classify(engine, component, origin),
        Compiled::Module(module) => Ok(Workload::Module(module)),
    }
}

fn kind(bytes: &[u8], origin: &str) -> Result<WasmBinaryType> {
    match WasmBinaryType::from_bytes(bytes) {
        Some(kind) => Ok(kind),
        None => bail!(
            "{origin} is not WebAssembly: {}. The image's entrypoint must name a .wasm module or \
             component (or the image must carry a wasm layer)",
            describe_non_wasm(bytes)
        ),
    }
}

fn does_not_compile(origin: &str, what: &str) -> String {
    format!("{origin} is a WebAssembly {what} but it does not compile (truncated or corrupt?)")
}

fn load_precompiled(engine: &Engine, bytes: &[u8], origin: &str) -> Result<Workload> {
    let hint = "remove the cached artifact (ctr content ls | grep runwasi.io/precompiled) and start again";
    let compiled = load_artifact(engine, bytes)
        .with_context(|| format!("cached precompiled {origin} could not be loaded; {hint}"))?;
    workload(engine, compiled, origin)
}

/// Loads an artifact of [`precompile`] (or of `Precompiler`, the same
/// engine configuration) held in memory.
pub fn load_artifact(engine: &Engine, bytes: &[u8]) -> Result<Compiled> {
    // SAFETY: these bytes were produced by an engine of this very
    // configuration: just now in this process, or by `Precompiler::compile`
    // and stored in containerd's content store under a label keyed by this
    // shim's version and the engine's compatibility hash; wasmtime also
    // checks the artifact's header and version before use.
    match Engine::detect_precompiled(bytes) {
        Some(Precompiled::Component) => {
            Ok(Compiled::Component(unsafe { Component::deserialize(engine, bytes) }?))
        }
        Some(Precompiled::Module) => Ok(Compiled::Module(unsafe { Module::deserialize(engine, bytes) }?)),
        None => bail!("it is not a wasmtime artifact"),
    }
}

const HTTP_EXPORT: &str = "wasi:http/incoming-handler@0.2";
const RUN_EXPORT: &str = "wasi:cli/run@0.2";

fn classify(engine: &Engine, component: Component, origin: &str) -> Result<Workload> {
    let exports: Vec<String> =
        component.component_type().exports(engine).map(|(name, _)| name.to_string()).collect();
    if exports.iter().any(|name| name.starts_with(HTTP_EXPORT)) {
        Ok(Workload::Http(component))
    } else if exports.iter().any(|name| name.starts_with(RUN_EXPORT)) {
        Ok(Workload::Command(component))
    } else {
        let found = if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") };
        bail!(
            "{origin} exports neither wasi:http/incoming-handler (an HTTP service) nor wasi:cli/run \
             (a command); it exports {found}. Build it for the wasi:http/proxy world or as a WASI command"
        )
    }
}

/// A short, human guess at what a non-Wasm file is.
fn describe_non_wasm(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let kind = if bytes.is_empty() {
        "the file is empty"
    } else if bytes.starts_with(b"\x7fELF") {
        "it is a Linux (ELF) executable"
    } else if bytes.starts_with(b"#!") {
        "it is a script"
    } else if bytes.starts_with(b"\0asm") {
        "it has the Wasm magic number but an unknown version or is truncated"
    } else if std::str::from_utf8(bytes).is_ok() {
        "it is a text file"
    } else {
        "it does not start with the Wasm magic number 00 61 73 6d"
    };
    if bytes.is_empty() { kind.to_string() } else { format!("{kind} (first bytes: {})", head.join(" ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        new(16 << 20).unwrap()
    }

    fn error(bytes: &[u8]) -> String {
        match load(&engine(), bytes, false, "/app.wasm") {
            Ok(_) => panic!("loaded {bytes:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn non_wasm_files_are_named_as_such() {
        assert!(
            error(b"\x7fELF\x02\x01")
                .contains("/app.wasm is not WebAssembly: it is a Linux (ELF) executable")
        );
        assert!(error(b"hello world\n").contains("it is a text file"));
        assert!(error(b"").contains("the file is empty"));
    }

    #[test]
    fn truncated_module_does_not_compile() {
        let module = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let err = error(&module[..module.len() - 3]);
        assert!(err.contains("is a WebAssembly module but it does not compile"), "{err}");
    }

    #[test]
    fn component_without_known_exports_is_refused_with_its_exports() {
        let bytes = wat::parse_str(
            r#"(component
                 (core module $m (func (export "f")))
                 (core instance $i (instantiate $m))
                 (func (export "hello") (canon lift (core func $i "f"))))"#,
        )
        .unwrap();
        let err = error(&bytes);
        assert!(err.contains("exports neither wasi:http/incoming-handler"), "{err}");
        assert!(err.contains("it exports hello"), "{err}");
    }

    #[test]
    fn core_module_and_precompiled_round_trip() {
        let engine = engine();
        let bytes = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        assert!(matches!(load(&engine, &bytes, false, "m").unwrap(), Workload::Module(_)));
        let artifact = engine.precompile_module(&bytes).unwrap();
        assert!(matches!(load(&engine, &artifact, true, "m").unwrap(), Workload::Module(_)));
        let err = format!("{:#}", load(&engine, &bytes, true, "m").err().unwrap());
        assert!(err.contains("is not a wasmtime artifact"), "{err}");
    }
}
