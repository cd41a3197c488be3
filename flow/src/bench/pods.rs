//! The pod rows, through CRI as the kubelet runs pods. One fake node runs
//! containerd 1.7 with CRI and both runtime handlers: runc (its default,
//! for the native app) and wasmtime-custom (from the node installer, for
//! the Wasm app). For each runtime, N pods of pause + app, each on the
//! node's network with its app on a port of its own, are started at once,
//! as a Deployment scaled to N: scale-out is the time from the first
//! `RunPodSandbox` until every app answered 200 on /healthz; density is then
//! the PSS of every process of those pods (each pod's shims and their
//! descendants, pause and app included, found the same way for both
//! runtimes) per pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use testbed::kubelet::{self, RuntimeClient};
use testbed::{InstalledNode, Paths, Version, free_port};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use super::apps::{FLAVORS, in_turn, wait_for_first_200};
use super::density::{pss_kib, shims_of, tree_of};
use super::options::BenchOptions;
use super::table::Row;
use crate::model::{Flavor, NATIVE_IMAGE};

/// The Wasm app as a pod runs it: the component in a plain image for amd64
/// and arm64 nodes (`app.tar`), compiled through the node's compile cache.
const WASM_POD_IMAGE: &str = "localhost/wasmtime-custom/app:latest";
/// The pods' Kubernetes namespace.
const NAMESPACE: &str = "bench";
/// Nothing listens there; /healthz never calls Dapr.
const NO_DAPR: &str = "http://127.0.0.1:1";

/// A running pod of the bench, its app having answered 200.
struct Pod {
    sandbox: String,
    app: String,
}

pub fn rows(paths: &Paths, options: &BenchOptions) -> Result<Vec<Row>> {
    let node = node_with_images(paths)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime of the CRI calls")?;
    measure(&node, &runtime, options)
        .map_err(|e| e.context(format!("containerd 1.7's log ends with:\n{}", node.containerd.log_tail(40))))
}

/// How the pod rows were measured.
pub fn note(options: &BenchOptions) -> String {
    format!(
        "pods (CRI): the kubelet's CRI calls on containerd 1.7, the native app under runc (the default \
         handler) and the Wasm app (app.tar) under the wasmtime-custom handler; {0} pods of pause + app on \
         the node's network, all started at once after one warm-up pod each (the Wasm then comes from the \
         compile cache); scale-out: from the first RunPodSandbox until every app answered 200 on /healthz; \
         density: then the total PSS of every process of the {0} pods (each pod's shims, found by -id <pod \
         or container id>, and all their descendants: pause, app) divided by {0}; {1} samples each, pods \
         removed between samples",
        options.instances, options.repeats
    )
}

/// A fake node whose containerd got the wasmtime-custom handler from the
/// node installer, with the pause image and both apps' images for CRI.
fn node_with_images(paths: &Paths) -> Result<InstalledNode> {
    let node = InstalledNode::start(paths, Version::V1_7)
        .context("set up containerd 1.7 with CRI and the shim through the node installer")?;
    // Images for CRI live in the k8s.io namespace.
    for archive in ["pause.tar", "app.tar", "app-native.tar"] {
        node.containerd.import_into("k8s.io", archive, &[])?;
    }
    Ok(node)
}

fn measure(node: &InstalledNode, runtime: &Runtime, options: &BenchOptions) -> Result<Vec<Row>> {
    let client = runtime.block_on(kubelet::connect(&node.node.socket()))?;
    let logs = tempfile::Builder::new().prefix("wtc-pod-logs-").tempdir().context("create the pods' logs")?;
    // One pod of each first: the Wasm is compiled into the node's cache and
    // each image has run once, as on a node that already ran the app.
    for flavor in FLAVORS {
        let (pods, _) = runtime.block_on(scale_out(&client, flavor, "warm-up", 1, logs.path()))?;
        runtime.block_on(delete(&client, pods))?;
    }
    // Samples by flavor: milliseconds to all 200, MiB per pod.
    let (mut times, mut pss): (HashMap<Flavor, Vec<f64>>, HashMap<Flavor, Vec<f64>>) = Default::default();
    for repeat in 0..options.repeats {
        for flavor in in_turn(repeat, FLAVORS) {
            let sample = format!("s{repeat}");
            let (pods, ms) =
                runtime.block_on(scale_out(&client, flavor, &sample, options.instances, logs.path()))?;
            let census = runtime.block_on(census(&client, &pods))?;
            eprintln!("  {} pods: {} at once to all 200 in {ms:.0} ms", flavor.slug(), pods.len());
            census.report(flavor, pods.len());
            times.entry(flavor).or_default().push(ms);
            pss.entry(flavor).or_default().push(census.total_kib() as f64 / 1024.0 / pods.len() as f64);
            runtime.block_on(delete(&client, pods))?;
        }
    }
    let n = options.instances;
    Ok(vec![
        Row::new(
            format!("scale-out, {n} pods at once to all 200 (CRI)"),
            "ms",
            times.remove(&Flavor::Wasm).unwrap_or_default(),
            times.remove(&Flavor::Native).unwrap_or_default(),
        ),
        Row::new(
            format!("density, PSS per pod, {n} pods pause+app (CRI)"),
            "MiB",
            pss.remove(&Flavor::Wasm).unwrap_or_default(),
            pss.remove(&Flavor::Native).unwrap_or_default(),
        ),
    ])
}

/// The runtime handler, image and environment of `flavor`'s pod whose app
/// listens on `port` of the node's network (the settings `Flavor::run`
/// gives each app under ctr).
fn app(flavor: Flavor, port: u16) -> (&'static str, &'static str, Vec<(&'static str, String)>) {
    let dapr = ("DAPR_URL", NO_DAPR.to_string());
    match flavor {
        Flavor::Wasm => (
            kubelet::HANDLER,
            WASM_POD_IMAGE,
            vec![("WASMTIME_CUSTOM_LISTEN", format!("127.0.0.1:{port}")), dapr],
        ),
        Flavor::Native => {
            (kubelet::DEFAULT_HANDLER, NATIVE_IMAGE, vec![("LISTEN_ADDR", format!("127.0.0.1:{port}")), dapr])
        }
    }
}

/// Starts `count` pods of `flavor` at once, each in a task of its own, and
/// waits until every app answered 200; the pods and the milliseconds from
/// the first `RunPodSandbox` to the last first 200.
async fn scale_out(
    client: &RuntimeClient,
    flavor: Flavor,
    sample: &str,
    count: usize,
    logs: &Path,
) -> Result<(Vec<Pod>, f64)> {
    let mut ports = BTreeSet::new();
    while ports.len() < count {
        ports.insert(free_port().context("find a free port")?);
    }
    let mut folders = Vec::new();
    for i in 0..count {
        let name = format!("{}-{sample}-{i}", flavor.slug());
        let folder = logs.join(&name);
        std::fs::create_dir_all(&folder).with_context(|| format!("create {}", folder.display()))?;
        folders.push((name, folder));
    }
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for ((name, folder), port) in folders.into_iter().zip(ports) {
        tasks.spawn(start_pod(client.clone(), flavor, name, folder, port));
    }
    let (mut pods, mut last) = (Vec::new(), 0.0_f64);
    while let Some(joined) = tasks.join_next().await {
        let pod = joined.context("a pod's task panicked")??;
        last = last.max(started.elapsed().as_secs_f64() * 1000.0);
        pods.push(pod);
    }
    Ok((pods, last))
}

/// One pod as the kubelet starts it (`RunPodSandbox`, `CreateContainer`,
/// `StartContainer`), then its app's first 200.
async fn start_pod(
    mut client: RuntimeClient,
    flavor: Flavor,
    name: String,
    logs: PathBuf,
    port: u16,
) -> Result<Pod> {
    let (handler, image, env) = app(flavor, port);
    let mut sandbox_config = kubelet::sandbox_config(NAMESPACE, &name, &logs);
    kubelet::host_network_pod(&mut sandbox_config);
    let sandbox = kubelet::run_sandbox(&mut client, handler, &sandbox_config).await?;
    let mut config = kubelet::container_config("app", kubelet::image(image), &env, &[]);
    kubelet::host_network_container(&mut config);
    let app = kubelet::start_container(&mut client, &sandbox, &sandbox_config, config)
        .await
        .with_context(|| format!("pod {name}"))?;
    // The poll blocks: on a thread of its own, not on the runtime's.
    tokio::task::spawn_blocking(move || wait_for_first_200(port))
        .await
        .context("the wait for a 200 panicked")?
        .with_context(|| format!("pod {name}"))?;
    Ok(Pod { sandbox, app })
}

/// Deletes the pods at once, as the kubelet does when a Deployment is
/// scaled to zero.
async fn delete(client: &RuntimeClient, pods: Vec<Pod>) -> Result<()> {
    let mut tasks = JoinSet::new();
    for pod in pods {
        let mut client = client.clone();
        tasks.spawn(async move { kubelet::delete_pod(&mut client, &pod.sandbox).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a pod's deletion panicked")??;
    }
    Ok(())
}

/// What a process of a pod is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A shim containerd started for the pod or its container (`-id <id>`).
    Shim,
    /// A process forked from a shim that still runs the shim's program
    /// (its command line names the same `-id`): for wasmtime-custom,
    /// containerd-shim-wasm's zygote and the process it forks to hold each
    /// container.
    ShimFork,
    /// The sandbox's process and its descendants.
    Pause,
    /// The app container's process and its descendants.
    App,
    /// Another descendant of a shim, by its command name.
    Other(String),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Shim => f.write_str("shim"),
            Kind::ShimFork => f.write_str("shim fork"),
            Kind::Pause => f.write_str("pause"),
            Kind::App => f.write_str("app"),
            Kind::Other(comm) => write!(f, "other ({comm})"),
        }
    }
}

/// One process of a pod.
struct Process {
    pid: u32,
    parent: u32,
    kind: Kind,
    comm: String,
    pss_kib: u64,
}

/// Every process of a sample's pods.
struct Census {
    pods: Vec<Vec<Process>>,
}

/// Every process of every pod, by kind, with its PSS. The pause and app
/// pids come from CRI's verbose status; the shims from their `-id`.
async fn census(client: &RuntimeClient, pods: &[Pod]) -> Result<Census> {
    let mut client = client.clone();
    let mut roots = Vec::new();
    for pod in pods {
        let pause = kubelet::sandbox_pid(&mut client, &pod.sandbox).await?;
        let app = kubelet::container_pid(&mut client, &pod.app).await?;
        roots.push((pod, pause, app));
    }
    let mut census = Census { pods: Vec::new() };
    for (pod, pause, app) in roots {
        let mut shims = shims_of(&pod.sandbox)?;
        shims.extend(shims_of(&pod.app)?);
        let (pause_tree, app_tree) = (tree_of(pause), tree_of(app));
        let mut pids: BTreeSet<u32> = shims.iter().flat_map(|shim| tree_of(*shim)).collect();
        pids.extend(&pause_tree);
        pids.extend(&app_tree);
        let processes = pids
            .into_iter()
            .filter_map(|pid| {
                // A process gone since it was found has no PSS left to count.
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_string();
                let parent = parent_of(pid)?;
                let kind = if pause_tree.contains(&pid) {
                    Kind::Pause
                } else if app_tree.contains(&pid) {
                    Kind::App
                } else if shims.contains(&pid) && shims.contains(&parent) {
                    Kind::ShimFork
                } else if shims.contains(&pid) {
                    Kind::Shim
                } else {
                    Kind::Other(comm.clone())
                };
                Some(Process { pid, parent, kind, comm, pss_kib: pss_kib(pid)? })
            })
            .collect();
        census.pods.push(processes);
    }
    Ok(census)
}

/// The parent of `pid`, from `/proc/<pid>/stat` (`None`: it is gone).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: the fields after it
    // are state, then parent.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

impl Census {
    fn total_kib(&self) -> u64 {
        self.pods.iter().flatten().map(|p| p.pss_kib).sum()
    }

    /// Progress lines: the totals, what a pod holds on average by kind, and
    /// the first pod's processes one by one.
    fn report(&self, flavor: Flavor, pods: usize) {
        let processes: usize = self.pods.iter().map(Vec::len).sum();
        let total = self.total_kib() as f64 / 1024.0;
        eprintln!(
            "  {} pods: {processes} processes, total PSS {total:.1} MiB, {:.2} MiB per pod",
            flavor.slug(),
            total / pods as f64
        );
        let mut kinds: BTreeMap<&Kind, (usize, u64)> = BTreeMap::new();
        for process in self.pods.iter().flatten() {
            let tally = kinds.entry(&process.kind).or_default();
            tally.0 += 1;
            tally.1 += process.pss_kib;
        }
        let per_pod: Vec<String> = kinds
            .iter()
            .map(|(kind, (count, kib))| {
                format!(
                    "{kind} {:.2} processes {:.2} MiB ({:.2} MiB each)",
                    *count as f64 / pods as f64,
                    *kib as f64 / 1024.0 / pods as f64,
                    *kib as f64 / 1024.0 / *count as f64
                )
            })
            .collect();
        eprintln!("  {} per pod: {}", flavor.slug(), per_pod.join("; "));
        if let Some(first) = self.pods.first() {
            let listed: Vec<String> = first
                .iter()
                .map(|p| {
                    let mib = p.pss_kib as f64 / 1024.0;
                    format!("{} (parent {}) {} [{}] {mib:.2} MiB", p.pid, p.parent, p.kind, p.comm)
                })
                .collect();
            eprintln!("  {} first pod: {}", flavor.slug(), listed.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flavor_runs_on_its_handler_and_listens_on_its_own_port_of_the_node() {
        let (handler, image, env) = app(Flavor::Wasm, 4100);
        assert_eq!((handler, image), ("wasmtime-custom", WASM_POD_IMAGE));
        assert!(env.contains(&("WASMTIME_CUSTOM_LISTEN", "127.0.0.1:4100".into())), "{env:?}");
        let (handler, image, env) = app(Flavor::Native, 4101);
        assert_eq!((handler, image), ("", NATIVE_IMAGE));
        assert!(env.contains(&("LISTEN_ADDR", "127.0.0.1:4101".into())), "{env:?}");
    }

    #[test]
    fn the_parent_is_read_after_the_command_name() {
        assert_eq!(parent_of(std::process::id()), Some(std::os::unix::process::parent_id()));
        assert_eq!(parent_of(u32::MAX), None);
    }
}
