//! What every row needs to run apps: a containerd with both images, an app
//! started detached and timed to its first 200, and both flavors taking
//! turns.

use std::time::{Duration, Instant};

use anyhow::Result;
use testbed::{Containerd, Paths, Run, Version};

use crate::model::Flavor;

pub const FLAVORS: [Flavor; 2] = [Flavor::Wasm, Flavor::Native];

/// Both subjects of a row (the flavors, or two components), the first one
/// changing with each repeat, so that neither always runs on a machine the
/// other just warmed (or heated).
pub fn in_turn<T: Copy>(repeat: usize, pair: [T; 2]) -> [T; 2] {
    if repeat.is_multiple_of(2) { pair } else { [pair[1], pair[0]] }
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

/// `ctr run -d` of `run` (serving on `port`) to the first 200 on /healthz,
/// in milliseconds; the container `id` is removed afterwards.
pub fn time_to_first_200(containerd: &Containerd, run: Run<'_>, id: &str, port: u16) -> Result<f64> {
    let started = Instant::now();
    containerd.run_detached(run)?;
    wait_for_first_200(port)?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    containerd.remove(id)?;
    Ok(elapsed)
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
        assert_eq!(in_turn(0, FLAVORS), [Flavor::Wasm, Flavor::Native]);
        assert_eq!(in_turn(1, FLAVORS), [Flavor::Native, Flavor::Wasm]);
        assert_eq!(in_turn(2, FLAVORS), in_turn(0, FLAVORS));
    }
}
