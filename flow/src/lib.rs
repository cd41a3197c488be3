//! The main job of wasmtime-custom: the reference order flow (ingress queue
//! -> distributor -> express/standard queues -> receivers -> blob outboxes)
//! through the shim under a real containerd on this machine, with a local
//! stand-in for Dapr's bindings; and the Wasm vs native benchmark.
//!
//! From the bottom up (each module uses only those above it in this list):
//! - [`bindings`]: the app's Dapr bindings by name (queues, routes, outboxes).
//! - [`orders`]: the reference test data, reproducible from a seed.
//! - [`standin`]: the local bindings stand-in for Dapr ([`standin::DaprStandIn`]:
//!   queues, redelivery, dead letters, blob outboxes, metadata).
//! - [`model`]: what the apps run as, their roles, how to run a flow.
//! - [`report`]: checking every blob, and the report.
//! - [`job`]: one flow run: node, apps, release, wait.
//! - [`bench`](mod@bench): the benchmark, Wasm on the shim against native on runc.

pub mod bench;
pub mod bindings;
pub mod job;
pub mod model;
pub mod orders;
pub mod report;
pub mod standin;
