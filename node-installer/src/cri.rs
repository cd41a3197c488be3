//! A CRI client over containerd's socket: the kubelet's only way to talk to
//! containerd, so the installer's health check asks it what the kubelet
//! would ask, `uninstall` lists the pods on the runtime as the kubelet knows
//! them (and the tests drive pods through it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStateValue, ListContainersRequest, ListPodSandboxRequest,
    PodSandboxFilter, PodSandboxState, PodSandboxStateValue, StatusRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub type RuntimeClient = RuntimeServiceClient<Channel>;

/// Connects to the CRI gRPC service on `socket` (containerd's main socket).
pub async fn connect(socket: &Path) -> Result<RuntimeClient> {
    Ok(RuntimeServiceClient::new(channel(socket).await?))
}

/// A gRPC channel to containerd's socket, for any CRI service (runtime,
/// image).
pub async fn channel(socket: &Path) -> Result<Channel> {
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
    Ok(channel)
}

/// What CRI's `Status` says about the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The `RuntimeReady` condition.
    pub runtime_ready: bool,
    /// Runtime handlers containerd's CRI plugin knows, from the CRI
    /// `runtime_handlers` field (containerd 2) or its verbose config
    /// (containerd 1.x).
    pub handlers: Vec<String>,
}

/// Calls CRI `Status` (verbose) once.
pub async fn status(client: &mut RuntimeClient) -> Result<Health> {
    let response =
        client.status(StatusRequest { verbose: true }).await.context("CRI Status failed")?.into_inner();
    let runtime_ready = response
        .status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "RuntimeReady" && c.status));
    let mut handlers: Vec<String> = response.runtime_handlers.iter().map(|h| h.name.clone()).collect();
    if let Some(config) = response.info.get("config") {
        let config: serde_json::Value =
            serde_json::from_str(config).context("CRI Status config is not JSON")?;
        if let Some(runtimes) = config.pointer("/containerd/runtimes").and_then(|r| r.as_object()) {
            handlers.extend(runtimes.keys().cloned());
        }
    }
    handlers.sort();
    handlers.dedup();
    Ok(Health { runtime_ready, handlers })
}

/// Waits until containerd answers CRI `Status` with the runtime ready and,
/// if given, `handler` known. Fails after `timeout` with the last reason.
pub async fn wait_healthy(socket: &Path, handler: Option<&str>, timeout: Duration) -> Result<Health> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_problem;
    loop {
        // Each attempt is bounded too: a containerd that accepts the
        // connection but never answers must not stall the rollback.
        let remaining =
            deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(1));
        let attempt = tokio::time::timeout(remaining, async {
            let mut client = connect(socket).await?;
            status(&mut client).await
        });
        last_problem =
            match attempt.await.unwrap_or_else(|_| Err(anyhow::anyhow!("CRI Status did not answer"))) {
                Ok(health) if !health.runtime_ready => "the RuntimeReady condition is false".to_string(),
                Ok(health) => match handler {
                    Some(name) if !health.handlers.iter().any(|h| h == name) => format!(
                        "containerd runs but does not know the runtime handler {name} (it knows: {})",
                        health.handlers.join(", ")
                    ),
                    _ => return Ok(health),
                },
                Err(e) => format!("{e:#}"),
            };
        if tokio::time::Instant::now() >= deadline {
            bail!("containerd is not healthy after {}s: {last_problem}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A running pod, as CRI names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's Kubernetes namespace.
    pub namespace: String,
    pub name: String,
    /// The names of its running containers (its sandbox aside).
    pub containers: Vec<String>,
}

/// `namespace/name (containers: a, b)`.
impl std::fmt::Display for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if self.containers.is_empty() {
            write!(f, " (no running container)")
        } else {
            write!(f, " (containers: {})", self.containers.join(", "))
        }
    }
}

/// The ready pods whose runtime handler is `handler`, by namespace and
/// name, with their running containers (`ListPodSandbox`, `ListContainers`).
pub async fn pods_on(client: &mut RuntimeClient, handler: &str) -> Result<Vec<Pod>> {
    let ready = PodSandboxFilter {
        state: Some(PodSandboxStateValue { state: PodSandboxState::SandboxReady as i32 }),
        ..Default::default()
    };
    let sandboxes = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: Some(ready) })
        .await
        .context("CRI ListPodSandbox failed")?
        .into_inner()
        .items;
    let running = ContainerFilter {
        state: Some(ContainerStateValue { state: ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    };
    let containers = client
        .list_containers(ListContainersRequest { filter: Some(running) })
        .await
        .context("CRI ListContainers failed")?
        .into_inner()
        .containers;
    let mut pods: Vec<Pod> = sandboxes
        .into_iter()
        .filter(|sandbox| sandbox.runtime_handler == handler)
        .map(|sandbox| {
            let metadata = sandbox.metadata.unwrap_or_default();
            let mut names: Vec<String> = containers
                .iter()
                .filter(|c| c.pod_sandbox_id == sandbox.id)
                .filter_map(|c| Some(c.metadata.as_ref()?.name.clone()))
                .collect();
            names.sort();
            Pod { namespace: metadata.namespace, name: metadata.name, containers: names }
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(pods)
}
