//! A local node on this machine, for the main job (`order-flow`) and for the
//! tests: a private containerd (its own config, root, state and socket in a
//! temp dir), optionally on a fake node root that gets the shim from the
//! node installer; the project's image archives imported into it;
//! containers run with its `ctr`, as a user at a terminal would; pods run
//! with the kubelet's CRI calls ([`kubelet`]); and a small HTTP server for
//! the stand-ins next to them.
//!
//! Every path (binaries, images, containerd versions) is found at run time
//! ([`paths`]), never from where the crate was compiled, so a program built
//! on it runs from any folder. Nothing here skips: a missing part is an
//! error that says what to build or install.

pub mod containerd;
pub mod kubelet;
pub mod node;
pub mod paths;
pub mod poll;
pub mod registry;
pub mod run;
pub mod serve;
pub mod tool;

pub use containerd::{Containerd, RUNC, RUNTIME};
pub use node::{FakeNode, InstalledNode};
pub use paths::{Paths, Version};
pub use registry::Registry;
pub use run::{Container, Run};
pub use serve::serve_http;

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    // Binding port 0 asks the kernel for a free one; it stays free after the
    // listener is dropped unless another process races for it.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
