//! The node installer of wasmtime-custom: puts the shim on a node, registers
//! it in containerd's config without disturbing anything else, restarts
//! containerd only when needed and safely, and marks the node ready.
//! `main.rs` is the command line; see `install` for the order of steps.

pub mod binary;
pub mod config;
pub mod cri;
pub mod dump;
pub mod in_use;
pub mod install;
pub mod layout;
pub mod node;
pub mod node_root;
pub mod state;
pub mod system;

#[cfg(test)]
mod api_server_stand_in;
