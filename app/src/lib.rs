//! The order service: one WASI HTTP component that serves the distributor and
//! both receivers (its contract: `app/CONTRACT.md`).
//!
//! The decisions (which route, is the order valid, which binding, what to
//! answer) live in [`order`] and [`routes`] as plain Rust with no WASI in
//! them, so they are unit-tested natively. Only `component` touches
//! `wasi:http`, and it is compiled for Wasm alone.

pub mod order;
pub mod routes;

#[cfg(target_arch = "wasm32")]
mod component;
