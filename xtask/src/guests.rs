//! Test guests written as WAT, for cases a Rust build cannot make on purpose.

use anyhow::{Context, Result};

/// A core WASI (preview 1) module: prints a line and exits with code 3.
pub fn core_module() -> Result<Vec<u8>> {
    wat::parse_str(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write"
               (func $fd_write (param i32 i32 i32 i32) (result i32)))
             (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "hello from a core module\n")
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 16))
               (i32.store (i32.const 4) (i32.const 25))
               (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
               (call $proc_exit (i32.const 3))))"#,
    )
    .context("the core module's WAT does not parse")
}

/// A valid component that exports neither `wasi:http/incoming-handler` nor
/// `wasi:cli/run`.
pub fn no_export_component() -> Result<Vec<u8>> {
    wat::parse_str(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func (export "hello") (canon lift (core func $i "f"))))"#,
    )
    .context("the component's WAT does not parse")
}

/// Not WebAssembly at all: what a wrong `COPY` in a Dockerfile gives.
pub fn not_wasm() -> Vec<u8> {
    b"<html><body>this is not WebAssembly</body></html>\n".to_vec()
}
