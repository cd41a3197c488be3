//! The state of one wasmtime `Store` of a component: one HTTP request's
//! instance, or one command run. Holds the guest's WASI and WASI HTTP
//! contexts, its resource table and its memory limit. (A core module's store
//! needs only WASIp1; `run.rs` has its own small state for it.)

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::guest_calls::GuestCalls;

/// What one store of a component carries.
pub struct StoreState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    /// Outgoing HTTP: allow-list, trace context, count, connection pool.
    pub calls: GuestCalls,
    pub table: ResourceTable,
    pub limits: StoreLimits,
}

impl StoreState {
    pub fn new(wasi: WasiCtx, calls: GuestCalls, max_memory_bytes: usize) -> StoreState {
        StoreState {
            wasi,
            http: WasiHttpCtx::new(),
            calls,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(max_memory_bytes).build(),
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.calls }
    }
}
