//! The main job of wasmtime-custom: the reference order flow (ingress queue
//! -> distributor -> express/standard queues -> receivers -> blob outboxes)
//! through the shim under a real containerd on this machine, with a local
//! stand-in for Dapr's bindings; and the Wasm vs native benchmark.
//!
//! - [`standin`]: the local bindings stand-in for Dapr (queues, redelivery,
//!   dead letters, blob outboxes, metadata).
//! - [`orders`]: the reference test data, reproducible from a seed.
//! - [`job`]: one flow run: node, apps, release, wait.
//! - [`report`]: checking every blob, and the report.
//! - [`bench`]: the benchmark, Wasm on the shim against native on runc.

pub mod bench;
pub mod job;
pub mod orders;
pub mod report;
pub mod standin;
