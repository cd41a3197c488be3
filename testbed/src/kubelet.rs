//! The CRI calls the kubelet makes for a pod, made here instead (there is no
//! kubelet on a fake node): its connection to containerd's socket, the pod
//! and container configs it sends, and the run/create/start/status/delete
//! steps. The end-to-end tests and the benchmark's pod rows drive pods
//! through these.
//!
//! The connection is the kubelet's own, not the node installer's
//! (`node_installer::cri`, whose tests depend on this crate): both dial the
//! same socket and give the same client type, so a client from either
//! works with every call here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
    ImageSpec, KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The runtime handler the node installer registers (the RuntimeClass's).
pub const HANDLER: &str = "wasmtime-custom";
/// The runtime handler of a pod without a RuntimeClass: containerd's
/// default runtime (runc on a fake node).
pub const DEFAULT_HANDLER: &str = "";

/// A CRI runtime client over containerd's socket.
pub type RuntimeClient = RuntimeServiceClient<Channel>;

/// Connects to the CRI runtime service on containerd's `socket`, as the
/// kubelet does on start (its `--container-runtime-endpoint`).
pub async fn connect(socket: &Path) -> Result<RuntimeClient> {
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("could not connect to containerd's socket {}", socket.display()))?;
    Ok(RuntimeServiceClient::new(channel))
}

/// What the kubelet asks for a pod without `shareProcessNamespace`: network
/// and IPC shared by the pod, a PID namespace per container.
pub fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Pod `namespace/name`, its containers logging under `logs`.
pub fn sandbox_config(namespace: &str, name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: namespace.into(),
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

/// Container `name` of `image`, logging to `<name>.log` in the pod's folder.
pub fn container_config(
    name: &str,
    image: ImageSpec,
    env: &[(&str, String)],
    command: &[&str],
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(image),
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

/// Puts a pod's sandbox on the node's network, as the kubelet asks for a
/// pod with `hostNetwork: true` (its containers: [`host_network_container`]).
/// Such a pod shares the node's UTS namespace too, so the kubelet sends no
/// hostname (runc refuses to set one there).
pub fn host_network_pod(sandbox: &mut PodSandboxConfig) {
    sandbox.hostname.clear();
    let context = sandbox.linux.get_or_insert_default().security_context.get_or_insert_default();
    context.namespace_options.get_or_insert_with(kubelet_namespaces).network = NamespaceMode::Node as i32;
}

/// The container side of [`host_network_pod`]: the kubelet gives every
/// container the pod's namespace options.
pub fn host_network_container(container: &mut ContainerConfig) {
    let context = container.linux.get_or_insert_default().security_context.get_or_insert_default();
    context.namespace_options.get_or_insert_with(kubelet_namespaces).network = NamespaceMode::Node as i32;
}

/// An image by reference, as a pod spec names it.
pub fn image(reference: &str) -> ImageSpec {
    ImageSpec { image: reference.into(), ..Default::default() }
}

/// `RunPodSandbox` of `namespace/name` with the wasmtime-custom handler; the
/// pod's id and config.
pub async fn run_pod(
    client: &mut RuntimeClient,
    namespace: &str,
    name: &str,
    logs: &Path,
) -> Result<(String, PodSandboxConfig)> {
    let sandbox = sandbox_config(namespace, name, logs);
    let pod = run_sandbox(client, HANDLER, &sandbox).await?;
    Ok((pod, sandbox))
}

/// `RunPodSandbox` of `sandbox` with runtime `handler` (the pod's
/// RuntimeClass, or [`DEFAULT_HANDLER`]); the pod's id.
pub async fn run_sandbox(
    client: &mut RuntimeClient,
    handler: &str,
    sandbox: &PodSandboxConfig,
) -> Result<String> {
    let name = sandbox.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    Ok(client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {name}"))?
        .into_inner()
        .pod_sandbox_id)
}

/// `CreateContainer` then `StartContainer`; the container's id.
pub async fn start_container(
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

/// The pod's IP, from `PodSandboxStatus`.
pub async fn pod_ip(client: &mut RuntimeClient, pod: &str) -> Result<String> {
    Ok(client
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: false })
        .await
        .context("PodSandboxStatus")?
        .into_inner()
        .status
        .and_then(|status| status.network)
        .context("the pod has no network status")?
        .ip)
}

/// The host pid of the pod's sandbox (its pause process), from the verbose
/// `PodSandboxStatus` (what `crictl inspectp` shows).
pub async fn sandbox_pid(client: &mut RuntimeClient, pod: &str) -> Result<u32> {
    let info = client
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: true })
        .await
        .with_context(|| format!("PodSandboxStatus {pod}"))?
        .into_inner()
        .info;
    pid_in(&info).with_context(|| format!("the verbose PodSandboxStatus of {pod}"))
}

/// The host pid of a running container's process, from the verbose
/// `ContainerStatus` (what `crictl inspect` shows).
pub async fn container_pid(client: &mut RuntimeClient, container: &str) -> Result<u32> {
    let info = client
        .container_status(ContainerStatusRequest { container_id: container.into(), verbose: true })
        .await
        .with_context(|| format!("ContainerStatus {container}"))?
        .into_inner()
        .info;
    pid_in(&info).with_context(|| format!("the verbose ContainerStatus of {container}"))
}

/// The `pid` in the JSON that containerd puts under `info` in a verbose status.
fn pid_in(info: &HashMap<String, String>) -> Result<u32> {
    let text = info.get("info").context("no \"info\" entry")?;
    let json: serde_json::Value = serde_json::from_str(text).context("\"info\" is not JSON")?;
    let pid = json["pid"].as_u64().with_context(|| format!("no pid in {text}"))?;
    u32::try_from(pid).with_context(|| format!("pid {pid} does not fit a pid"))
}

/// Stops and removes the pod and its containers, as the kubelet does when
/// the pod is deleted.
pub async fn delete_pod(client: &mut RuntimeClient, pod: &str) -> Result<()> {
    let containers = client
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() }),
        })
        .await?
        .into_inner()
        .containers;
    for container in containers {
        client
            .stop_container(StopContainerRequest { container_id: container.id.clone(), timeout: 10 })
            .await?;
        client.remove_container(RemoveContainerRequest { container_id: container.id }).await?;
    }
    client.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.into() }).await?;
    client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.into() }).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_network_pod_shares_the_node_network_and_keeps_the_rest() {
        let mut sandbox = sandbox_config("default", "p", Path::new("/logs"));
        host_network_pod(&mut sandbox);
        let mut container = container_config("app", image("i"), &[], &[]);
        host_network_container(&mut container);
        let expected = NamespaceOption { network: NamespaceMode::Node as i32, ..kubelet_namespaces() };
        let pod_namespaces = sandbox.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        let container_namespaces =
            container.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!((pod_namespaces, container_namespaces), (expected.clone(), expected));
        assert_eq!(sandbox.hostname, "");
    }

    #[test]
    fn the_pid_is_read_from_the_verbose_info() {
        let info = [("info".to_string(), r#"{"pid":4242,"processStatus":"running"}"#.to_string())].into();
        assert_eq!(pid_in(&info).unwrap(), 4242);
        let none = [("info".to_string(), "{}".to_string())].into();
        assert!(pid_in(&none).unwrap_err().to_string().contains("no pid"));
    }
}
