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

use anyhow::{Context, Result, bail};
use e2e::containerd::Containerd;
use e2e::http;
use e2e::node::FakeNode;
use e2e::standin::StandIn;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest, CreateContainerRequest,
    ImageSpec, KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use node_installer::cri::{self, RuntimeClient};

const HANDLER: &str = "wasmtime-custom";
const APP: &str = "localhost/wasmtime-custom/app:latest";
const TEST_HTTP: &str = "localhost/wasmtime-custom/test-http:latest";
const BUSYBOX: &str = "localhost/wasmtime-custom/busybox:latest";

/// A node whose containerd got the runtime from the node installer, with
/// the images the pods use.
fn installed_node(version: &'static str) -> Result<(FakeNode, Containerd)> {
    let (node, containerd) = e2e::node::installed(version)?;
    // Images for CRI live in the k8s.io namespace.
    for archive in ["pause.tar", "busybox.tar", "app.tar", "test-http.tar"] {
        let path = e2e::containerd::images_dir().join(archive).display().to_string();
        containerd.ctr_ok(&["-n", "k8s.io", "images", "import", &path])?;
    }
    Ok((node, containerd))
}

fn sandbox_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the kubelet asks for a pod without `shareProcessNamespace`: network
/// and IPC shared by the pod, a PID namespace per container.
fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str, env: &[(&str, String)], command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..Default::default() }),
        command: command.iter().map(|c| c.to_string()).collect(),
        envs: env.iter().map(|(k, v)| KeyValue { key: k.to_string(), value: v.clone() }).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn start_container(
    client: &mut RuntimeClient,
    pod: &str,
    sandbox: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String> {
    let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let id = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer {name}"))?
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest { container_id: id.clone() })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    Ok(id)
}

/// Waits for the container to exit; its exit code.
async fn exit_code(client: &mut RuntimeClient, id: &str, timeout: Duration) -> Result<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = client
            .container_status(ContainerStatusRequest { container_id: id.into(), verbose: false })
            .await?
            .into_inner()
            .status
            .context("no container status")?;
        if status.state == ContainerState::ContainerExited as i32 {
            return Ok(status.exit_code);
        }
        if Instant::now() > deadline {
            bail!("container {id} still runs after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
) -> Result<(String, std::thread::JoinHandle<Result<http::Response>>)> {
    let listen = format!("0.0.0.0:{port}");
    let config = container_config(name, TEST_HTTP, &[("WASMTIME_CUSTOM_LISTEN", listen)], &[]);
    let id = start_container(client, pod.pod, pod.sandbox, config).await?;
    wait_http(pod.ip, port).await?;
    let ip = pod.ip.to_string();
    let request =
        std::thread::spawn(move || http::request_to(&ip, port, "GET", &format!("/sleep?ms={ms}"), ""));
    wait_for_log_line(&pod.logs.join(format!("{name}.log")), &format!("] sleeping {ms} ms")).await?;
    Ok((id, request))
}

/// Waits until the CRI log file at `path` has a line containing `text`.
async fn wait_for_log_line(path: &Path, text: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(path).unwrap_or_default().contains(text) {
        if Instant::now() > deadline {
            bail!("{text:?} did not appear in {} within 10 s", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn wait_http(ip: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {ip}:{port} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
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

async fn the_kubelet_path(version: &'static str) -> Result<()> {
    let (node, containerd) = installed_node(version)?;
    let result = drive(version, &node).await;
    result.map_err(|e| {
        let log = containerd.log();
        let tail: Vec<&str> = log.lines().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
        e.context(format!("containerd {version}'s log ends with:\n{}", tail.join("\n")))
    })
}

async fn drive(version: &'static str, node: &FakeNode) -> Result<()> {
    let socket = node.socket();
    let mut client = cri::connect(&socket).await?;

    // Status: ready, and the handler is known.
    let health = cri::wait_healthy(&socket, Some(HANDLER), Duration::from_secs(30)).await?;
    println!("containerd {version}: Status ready, handlers {:?}", health.handlers);

    // The pod sandbox, run by the wasmtime-custom shim (its pause container is Linux).
    let logs = tempfile::tempdir()?;
    let sandbox = sandbox_config("wasm-pod", logs.path());
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: HANDLER.into(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("no sandbox status")?;
    let ip = status.network.context("the pod has no network status")?.ip;
    assert!(ip.starts_with(&node.gateway()[..node.gateway().len() - 1]), "pod IP {ip} from the CNI subnet");
    println!("containerd {version}: RunPodSandbox {pod} with IP {ip}");

    // The app, with Dapr's stand-in on the host side of the pod network.
    let dapr = StandIn::start_on(&node.gateway())?;
    let app = start_container(
        &mut client,
        &pod,
        &sandbox,
        container_config(
            "app",
            APP,
            &[("WASMTIME_CUSTOM_LISTEN", "0.0.0.0:8080".into()), ("DAPR_URL", dapr.url())],
            &[],
        ),
    )
    .await?;
    wait_http(&ip, 8080).await?;
    let health = http::request_to(&ip, 8080, "GET", "/healthz", "")?;
    assert_eq!((health.status, health.body.as_str()), (200, "Healthy"));
    let sent =
        http::request_to(&ip, 8080, "POST", "/q-order-ingress", r#"{"orderId":7,"delivery":"Standard"}"#)?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(dapr.take_calls().len(), 1);
    println!(
        "containerd {version}: app container {app}: GET /healthz 200 from the host, POST /q-order-ingress 200"
    );
    let refused = http::request_to(&ip, 8080, "POST", "/q-order-ingress", "{")?;
    assert_eq!(refused.status, 400);
    let refused_id = refused.header("x-request-id").context("request id")?.to_string();

    // A native sidecar in the same pod reaches the app on localhost.
    let sidecar = start_container(
        &mut client,
        &pod,
        &sandbox,
        container_config(
            "sidecar",
            BUSYBOX,
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
    let state = node.root().join("run/containerd/state");
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
    the_kubelet_path("1.7").await
}

#[tokio::test(flavor = "current_thread")]
async fn kubelet_path_on_containerd_2_1() -> Result<()> {
    the_kubelet_path("2.1").await
}
