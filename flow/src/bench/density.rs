//! The density rows: N running instances of each kind, the total PSS of all
//! their processes (shim processes and the container's) per instance, idle
//! and after a wrk burst on each.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, Result};
use testbed::Containerd;
use testbed::free_port;

use super::apps::{FLAVORS, start, wait_for_first_200};
use super::options::BenchOptions;
use super::table::Row;
use super::wrk::{self, Load};
use crate::model::Flavor;

pub fn rows(containerd: &Containerd, options: &BenchOptions) -> Result<Vec<Row>> {
    let (mut idle, mut loaded) = (HashMap::new(), HashMap::new());
    for flavor in FLAVORS {
        let mut instances = Vec::new();
        for i in 0..options.instances {
            let (id, port) =
                (format!("bench-{}-dense-{}-{i}", std::process::id(), flavor.slug()), free_port()?);
            start(containerd, flavor, &id, port, "http://127.0.0.1:1")?;
            wait_for_first_200(port)?;
            instances.push((id, port));
        }
        let pss = |label: &str| -> Result<f64> {
            let mut pids = BTreeSet::new();
            for (id, _) in &instances {
                pids.extend(processes_of(containerd, id)?);
            }
            let total_mib = pids.iter().filter_map(|pid| pss_kib(*pid)).sum::<u64>() as f64 / 1024.0;
            eprintln!(
                "  {} {label}: {} processes for {} instances, total PSS {total_mib:.1} MiB",
                flavor.slug(),
                pids.len(),
                options.instances
            );
            Ok(total_mib / options.instances as f64)
        };
        idle.insert(flavor, pss("idle")?);
        // A burst of concurrent requests on every instance: memory a runtime
        // keeps after load (warm instance slots, buffers) shows up here.
        let burst = Load { connections: options.connections, seconds: 1 };
        for (_, port) in &instances {
            wrk::measure(burst, &format!("http://127.0.0.1:{port}/healthz"), None)?;
        }
        loaded.insert(flavor, pss("after a burst")?);
        for (id, _) in &instances {
            containerd.remove(id)?;
        }
    }
    let row = |label: &str, figures: &HashMap<Flavor, f64>| {
        Row::new(
            format!("density, PSS per instance, {} {label}", options.instances),
            "MiB",
            vec![figures[&Flavor::Wasm]],
            vec![figures[&Flavor::Native]],
        )
    };
    Ok(vec![row("idle", &idle), row("after a wrk burst", &loaded)])
}

/// How the density rows were measured.
pub fn note(options: &BenchOptions) -> String {
    format!(
        "density: total PSS (/proc/<pid>/smaps_rollup) of every process of {0} running instances (shim \
         processes and the container's), divided by {0}; idle after one request, then after a 1 s wrk burst \
         (-c{1}) on each",
        options.instances, options.connections
    )
}

/// The shim's processes for container `id` and the container's task with
/// its descendants.
fn processes_of(containerd: &Containerd, id: &str) -> Result<BTreeSet<u32>> {
    let mut pids = shims_of(id)?;
    pids.extend(tree_of(containerd.task_pid(id)?));
    Ok(pids)
}

/// The shim processes serving container or pod `id`: containerd starts a
/// shim with `-id <id>` (under CRI, a pod's shim is named by its sandbox id).
pub fn shims_of(id: &str) -> Result<BTreeSet<u32>> {
    let mut pids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").context("list /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
        if args.windows(2).any(|pair| pair[0] == b"-id" && pair[1] == id.as_bytes()) {
            pids.insert(pid);
        }
    }
    Ok(pids)
}

/// `pid` and all its descendants.
pub fn tree_of(pid: u32) -> BTreeSet<u32> {
    let mut todo = vec![pid];
    let mut tree = BTreeSet::new();
    while let Some(pid) = todo.pop() {
        if tree.insert(pid) {
            todo.extend(children(pid));
        }
    }
    tree
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// The proportional set size of `pid`, in KiB (`None`: it is gone).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup.lines().find_map(|line| line.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kills and reaps the child when the test ends, however it ends.
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_live_process_has_a_pss_and_a_gone_one_has_none() {
        assert!(pss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        assert_eq!(pss_kib(u32::MAX), None);
    }

    #[test]
    fn children_are_found_from_any_thread_of_the_parent() {
        let child = Child(std::process::Command::new("sleep").arg("30").spawn().unwrap());
        let found = children(std::process::id());
        assert!(found.contains(&child.0.id()), "{found:?}");
    }
}
