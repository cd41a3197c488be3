//! The CRI calls the kubelet makes for a pod, as the tests make them (there
//! is no kubelet here): the pod and container configs it sends, and the
//! create/start/status/delete steps, over `node_installer::cri`'s client.

use std::path::Path;

use anyhow::{Context, Result};
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerMetadata, CreateContainerRequest, ImageSpec, KeyValue,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListContainersRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use node_installer::cri::RuntimeClient;

/// The runtime handler the node installer registers (the RuntimeClass's).
pub const HANDLER: &str = "wasmtime-custom";

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
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: HANDLER.into(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {name}"))?
        .into_inner()
        .pod_sandbox_id;
    Ok((pod, sandbox))
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
