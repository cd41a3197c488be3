//! What every row needs to run apps: a containerd with both images, an app
//! started detached and timed to its first 200, and both flavors taking
//! turns.

use std::time::Duration;

use anyhow::Result;
use testbed::{Containerd, Paths, Version};

use crate::model::Flavor;

pub const FLAVORS: [Flavor; 2] = [Flavor::Wasm, Flavor::Native];

/// Both flavors, the first one changing with each repeat, so that neither
/// always runs on a machine the other just warmed (or heated).
pub fn in_turn(repeat: usize) -> [Flavor; 2] {
    if repeat.is_multiple_of(2) { FLAVORS } else { [Flavor::Native, Flavor::Wasm] }
}

/// A private containerd 1.7 with both app images imported.
pub fn containerd_with_images(paths: &Paths) -> Result<Containerd> {
    let containerd = Containerd::start_in(paths, Version::V1_7)?;
    containerd.import("app.tar", &[])?;
    containerd.import("app-native.tar", &[])?;
    Ok(containerd)
}

/// Starts one app of `flavor` detached, answering on `port`.
pub fn start(containerd: &Containerd, flavor: Flavor, id: &str, port: u16, dapr: &str) -> Result<()> {
    containerd.run_detached(flavor.run(id, port, dapr))
}

/// Polls `GET /healthz` until it answers 200, for at most 30 s. The poll
/// interval bounds how precisely a cold start is timed.
pub fn wait_for_first_200(port: u16) -> Result<()> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    testbed::poll::until(&format!("a 200 from {url}"), Duration::from_secs(30), || {
        agent.get(&url).call().ok().filter(|r| r.status() == 200).map(drop)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flavors_take_turns_going_first() {
        assert_eq!(in_turn(0), [Flavor::Wasm, Flavor::Native]);
        assert_eq!(in_turn(1), [Flavor::Native, Flavor::Wasm]);
        assert_eq!(in_turn(2), in_turn(0));
    }
}
