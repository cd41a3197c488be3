//! End-to-end tests only (in `tests/`): the shim under private containerds
//! driven with `ctr` (`shim.rs`, `signals.rs`), the node installer on a fake
//! node (`installer.rs`), and the kubelet's CRI calls (`cri.rs`). Their
//! shared helpers are in `tests/support/`; the local node they run on is
//! the `testbed` crate.
