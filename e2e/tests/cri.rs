//! The kubelet's path, driven through containerd's CRI plugin exactly as the
//! kubelet would (there is no kubelet here): a pod sandbox with runtime
//! handler `wasmtime-custom` on a private containerd whose config the node
//! installer wrote, with a real network namespace and IP from CNI; the app
//! container in it; a native sidecar reaching it on localhost; the CRI log
//! file; graceful and forced stops; and a clean removal. On containerd 1.7
//! and 2.1.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_cri::v1::{
    ContainerState, ContainerStatusRequest, PodSandboxConfig, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, StopContainerRequest, StopPodSandboxRequest,
};
use node_installer::cri::{self, RuntimeClient};
use support::dapr_recorder::DaprRecorder;
use support::http;
use testbed::kubelet::{HANDLER, container_config, image, run_pod, start_container};
use testbed::{FakeNode, InstalledNode, Paths, Version, poll};

mod support;

const APP: &str = "localhost/wasmtime-custom/app:latest";
const TEST_HTTP: &str = "localhost/wasmtime-custom/test-http:latest";
const BUSYBOX: &str = "localhost/wasmtime-custom/busybox:latest";

/// A node whose containerd got the runtime from the node installer, with
/// the images the pods use.
fn installed_node(version: Version) -> Result<InstalledNode> {
    let installed = InstalledNode::start(&Paths::from_env()?, version)?;
    // Images for CRI live in the k8s.io namespace.
    for archive in ["pause.tar", "busybox.tar", "app.tar", "test-http.tar"] {
        installed.containerd.import_into("k8s.io", archive, &[])?;
    }
    Ok(installed)
}

/// Waits for the container to exit; its exit code.
async fn exit_code(client: &mut RuntimeClient, id: &str, timeout: Duration) -> Result<i32> {
    poll::until_async(&format!("container {id} to exit"), timeout, async || {
        let status = client
            .container_status(ContainerStatusRequest { container_id: id.into(), verbose: false })
            .await?
            .into_inner()
            .status
            .context("no container status")?;
        Ok((status.state == ContainerState::ContainerExited as i32).then_some(status.exit_code))
    })
    .await
}

/// The pod the test works in.
struct PodContext<'a> {
    pod: &'a str,
    sandbox: &'a PodSandboxConfig,
    ip: &'a str,
    logs: &'a Path,
}

/// Starts a test-http container `name` serving on `port` in the pod and
/// sends it `/sleep?ms=...`; returns once the guest is sleeping, with the
/// container id and the request's thread.
async fn sleeping_container(
    client: &mut RuntimeClient,
    pod: &PodContext<'_>,
    name: &str,
    port: u16,
    ms: u64,
) -> Result<(String, std::thread::JoinHandle<Result<http::Reply>>)> {
    let listen = format!("0.0.0.0:{port}");
    let config = container_config(name, image(TEST_HTTP), &[("WASMTIME_CUSTOM_LISTEN", listen)], &[]);
    let id = start_container(client, pod.pod, pod.sandbox, config).await?;
    wait_listening(pod.ip, port).await?;
    let url = format!("http://{}:{port}/sleep?ms={ms}", pod.ip);
    let request = std::thread::spawn(move || http::call("GET", &url, "", &[]));
    wait_for_log_line(&pod.logs.join(format!("{name}.log")), &format!("] sleeping {ms} ms")).await?;
    Ok((id, request))
}

/// Waits until the CRI log file at `path` has a line containing `text`.
async fn wait_for_log_line(path: &Path, text: &str) -> Result<()> {
    let what = format!("{text:?} in {}", path.display());
    poll::until_async(&what, Duration::from_secs(10), async || {
        Ok(std::fs::read_to_string(path).unwrap_or_default().contains(text).then_some(()))
    })
    .await
}

async fn wait_listening(ip: &str, port: u16) -> Result<()> {
    poll::until_async(&format!("something to listen on {ip}:{port}"), Duration::from_secs(30), async || {
        Ok(tokio::net::TcpStream::connect((ip, port)).await.ok().map(drop))
    })
    .await
}

/// What is left on the host that names `id`: processes, mounts, network
/// namespaces (under containerd's state folder) and cgroups.
fn leftovers(id: &str, state: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
                && String::from_utf8_lossy(&cmdline).contains(id)
            {
                found.push(format!("process {}", entry.file_name().to_string_lossy()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    found.extend(mounts.lines().filter(|l| l.contains(id)).map(|l| format!("mount {l}")));
    let netns = state.join("netns");
    if let Ok(entries) = std::fs::read_dir(&netns) {
        found.extend(entries.flatten().map(|e| format!("netns {}", e.path().display())));
    }
    let output = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-type", "d", "-name", &format!("*{id}*")])
        .output();
    if let Ok(output) = output {
        found.extend(String::from_utf8_lossy(&output.stdout).lines().map(|l| format!("cgroup {l}")));
    }
    found
}

async fn the_kubelet_path(version: Version) -> Result<()> {
    let installed = installed_node(version)?;
    let result = drive(version, &installed.node).await;
    result.map_err(|e| {
        e.context(format!("containerd {version}'s log ends with:\n{}", installed.containerd.log_tail(400)))
    })
}

async fn drive(version: Version, node: &FakeNode) -> Result<()> {
    let socket = node.socket();
    let mut client = cri::connect(&socket).await?;

    // Status: ready, and the handler is known.
    let health = cri::wait_healthy(&socket, Some(HANDLER), Duration::from_secs(30)).await?;
    println!("containerd {version}: Status ready, handlers {:?}", health.handlers);

    // The pod sandbox, run by the wasmtime-custom shim (its pause container is Linux).
    let logs = tempfile::tempdir()?;
    let (pod, sandbox) = run_pod(&mut client, "default", "wasm-pod", logs.path()).await?;
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("no sandbox status")?;
    let ip = status.network.context("the pod has no network status")?.ip;
    assert!(ip.starts_with(&node.pod_subnet_prefix()), "pod IP {ip} from the CNI subnet");
    println!("containerd {version}: RunPodSandbox {pod} with IP {ip}");

    // The app, with Dapr's stand-in on the host side of the pod network.
    let dapr = DaprRecorder::start_on(&node.gateway())?;
    let app = start_container(
        &mut client,
        &pod,
        &sandbox,
        container_config(
            "app",
            image(APP),
            &[("WASMTIME_CUSTOM_LISTEN", "0.0.0.0:8080".into()), ("DAPR_URL", dapr.url())],
            &[],
        ),
    )
    .await?;
    wait_listening(&ip, 8080).await?;
    let app_url = |path: &str| format!("http://{ip}:8080{path}");
    let health = http::call("GET", &app_url("/healthz"), "", &[])?;
    assert_eq!((health.status, health.body.as_str()), (200, "Healthy"));
    let sent =
        http::call("POST", &app_url("/q-order-ingress"), r#"{"orderId":7,"delivery":"Standard"}"#, &[])?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(dapr.take_calls().len(), 1);
    println!(
        "containerd {version}: app container {app}: GET /healthz 200 from the host, POST /q-order-ingress 200"
    );
    let refused = http::call("POST", &app_url("/q-order-ingress"), "{", &[])?;
    assert_eq!(refused.status, 400);
    let refused_id = refused.header("x-request-id").context("request id")?.to_string();

    // A native sidecar in the same pod reaches the app on localhost.
    let sidecar = start_container(
        &mut client,
        &pod,
        &sandbox,
        container_config(
            "sidecar",
            image(BUSYBOX),
            &[],
            &["/bin/busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/healthz"],
        ),
    )
    .await?;
    assert_eq!(exit_code(&mut client, &sidecar, Duration::from_secs(30)).await?, 0);
    let sidecar_log = std::fs::read_to_string(logs.path().join("sidecar.log"))?;
    // `P`: a partial line (the body has no newline), as the kubelet logs it.
    assert!(sidecar_log.lines().any(|l| l.ends_with(" stdout P Healthy")), "{sidecar_log}");
    println!(
        "containerd {version}: native sidecar wget localhost:8080 exit 0, its log: {}",
        sidecar_log.trim()
    );

    // The app's CRI log file holds the guest's lines, tagged, in CRI format.
    let app_log = std::fs::read_to_string(logs.path().join("app.log"))?;
    let tagged = format!(" stderr F [req={refused_id}] POST /q-order-ingress -> 400");
    let line = app_log.lines().find(|l| l.contains(&tagged));
    println!(
        "containerd {version}: CRI log line: {}",
        line.with_context(|| format!("{tagged} not in:\n{app_log}"))?
    );

    // StopContainer with a timeout while a request is in flight: it finishes, exit 0.
    let pod_ctx = PodContext { pod: &pod, sandbox: &sandbox, ip: &ip, logs: logs.path() };
    let (slow, in_flight) = sleeping_container(&mut client, &pod_ctx, "slow", 8081, 2000).await?;
    client.stop_container(StopContainerRequest { container_id: slow.clone(), timeout: 20 }).await?;
    let answer = in_flight.join().expect("request thread")?;
    assert_eq!((answer.status, answer.body.as_str()), (200, "slept 2000 ms"));
    assert_eq!(exit_code(&mut client, &slow, Duration::from_secs(5)).await?, 0, "graceful stop exits 0");
    println!("containerd {version}: StopContainer(timeout 20) with a 2 s request in flight: 200, exit 0");

    // A container that does not finish by the deadline is killed at it.
    let (stuck, _never) = sleeping_container(&mut client, &pod_ctx, "stuck", 8082, 60_000).await?;
    let stopping = Instant::now();
    client.stop_container(StopContainerRequest { container_id: stuck.clone(), timeout: 2 }).await?;
    let took = stopping.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "stop took {took:?}");
    assert_eq!(exit_code(&mut client, &stuck, Duration::from_secs(5)).await?, 137, "killed at the deadline");
    println!(
        "containerd {version}: StopContainer(timeout 2) with a 60 s request in flight: took {took:?}, exit 137"
    );

    // Stop and remove everything: nothing of the pod is left on the host.
    for id in [&app, &sidecar, &slow, &stuck] {
        client.stop_container(StopContainerRequest { container_id: id.to_string(), timeout: 5 }).await?;
        client.remove_container(RemoveContainerRequest { container_id: id.to_string() }).await?;
    }
    client.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    let state = node.state_dir();
    let mut left: HashMap<&str, Vec<String>> = HashMap::new();
    for id in [&pod, &app, &sidecar, &slow, &stuck] {
        let found = leftovers(id, &state);
        if !found.is_empty() {
            left.insert(id, found);
        }
    }
    assert!(left.is_empty(), "left behind: {left:#?}");
    println!("containerd {version}: Stop/RemovePodSandbox: no process, mount, netns or cgroup left");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn kubelet_path_on_containerd_1_7() -> Result<()> {
    the_kubelet_path(Version::V1_7).await
}

#[tokio::test(flavor = "current_thread")]
async fn kubelet_path_on_containerd_2_1() -> Result<()> {
    the_kubelet_path(Version::V2_1).await
}

/// The kubelet's stop of a command (a Job's pod being deleted):
/// `StopContainer` with a generous timeout sends SIGTERM, and a command that
/// sleeps ends at once with 143, long before the timeout would have it killed.
#[tokio::test(flavor = "current_thread")]
async fn stop_container_ends_a_sleeping_command_at_once_with_143_on_containerd_1_7() -> Result<()> {
    const TEST_COMMAND: &str = "localhost/wasmtime-custom/test-command:latest";
    let installed = installed_node(Version::V1_7)?;
    installed.containerd.import_into("k8s.io", "test-command.tar", &[])?;
    let stop = async {
        let socket = installed.node.socket();
        let mut client = cri::connect(&socket).await?;
        cri::wait_healthy(&socket, Some(HANDLER), Duration::from_secs(30)).await?;
        let logs = tempfile::tempdir()?;
        let (pod, sandbox) = run_pod(&mut client, "default", "command-pod", logs.path()).await?;
        let config = container_config("sleeper", image(TEST_COMMAND), &[], &["/app.wasm", "sleep", "600000"]);
        let sleeper = start_container(&mut client, &pod, &sandbox, config).await?;
        let log = logs.path().join("sleeper.log");
        wait_for_log_line(&log, " stdout F sleeping 600000 ms").await?;

        let stopping = Instant::now();
        client.stop_container(StopContainerRequest { container_id: sleeper.clone(), timeout: 30 }).await?;
        let took = stopping.elapsed();
        assert!(took < Duration::from_secs(5), "StopContainer(timeout 30) took {took:?}");
        assert_eq!(
            exit_code(&mut client, &sleeper, Duration::from_secs(5)).await?,
            143,
            "stopped by SIGTERM"
        );
        let text = std::fs::read_to_string(&log)?;
        assert!(
            text.contains(" stderr F wasmtime-custom: SIGTERM stopped the guest (exit code 143)"),
            "{text}"
        );
        println!(
            "containerd 1.7: StopContainer(timeout 30) of a command sleeping 600 s: took {took:?}, exit 143"
        );

        client.remove_container(RemoveContainerRequest { container_id: sleeper }).await?;
        client.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
        Ok::<(), anyhow::Error>(())
    };
    stop.await.map_err(|e| {
        e.context(format!("containerd 1.7's log ends with:\n{}", installed.containerd.log_tail(400)))
    })
}
