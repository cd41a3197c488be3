//! Offline checks of the Kubernetes manifests that deploy wasmtime-custom:
//! the node installer's kustomizations (`node-installer/deploy` installs,
//! `node-installer/deploy/uninstall` uninstalls; both from
//! `node-installer/deploy/base`), the `RuntimeClass.yaml` at the workspace
//! root and the example pod under `node-installer/deploy/examples`.
//!
//! No cluster is contacted. The tests need two tools on `PATH`, and fail (they
//! do not skip) when either is missing:
//! - `kubectl`, for `kubectl kustomize`;
//! - `kubernetes-validate` (PyPI), which checks objects against the OpenAPI
//!   schemas of a Kubernetes release.
//!
//! `scripts/install-prerequisites.sh` installs both.
//!
//! The YAML is read with a YAML parser (`yaml_serde`), into the Kubernetes API
//! types of `k8s-openapi` where a check is about one kind of object.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Toleration};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use testbed::tool;
use yaml_serde::Value;

/// Kubernetes release the manifests are validated against; an older release
/// than the newest, so that no field the clusters may lack slips in.
/// (kubernetes-validate 1.37.0 bundles the schemas of 1.25 to 1.37.)
const K8S_VERSION: &str = "1.31.0";

#[test]
fn kustomizations_render() {
    for overlay in [Overlay::Install, Overlay::Uninstall] {
        let documents = documents(overlay.rendered());
        for kind in
            ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "DaemonSet"]
        {
            assert!(
                documents.iter().any(|doc| doc["kind"].as_str() == Some(kind)),
                "`kubectl kustomize {}` renders no {kind}: \
                 add its file to the `resources:` of node-installer/deploy/base/kustomization.yaml",
                overlay.dir()
            );
        }
    }
}

#[test]
fn manifests_are_valid_kubernetes_objects() {
    let root = workspace_root();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let mut files = vec![root.join("RuntimeClass.yaml"), root.join(EXAMPLE_POD)];
    for (overlay, name) in [(Overlay::Install, "install.yaml"), (Overlay::Uninstall, "uninstall.yaml")] {
        let rendered_file = dir.join(name);
        fs::write(&rendered_file, overlay.rendered())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", rendered_file.display()));
        files.push(rendered_file);
    }
    let output = run(Command::new("kubernetes-validate").args(["--strict", "-k", K8S_VERSION]).args(&files));
    assert!(
        output.status.success(),
        "kubernetes-validate rejects the manifests for Kubernetes {K8S_VERSION}; fix the fields it names:\n{}",
        tool::describe(&output)
    );
}

#[test]
fn runtime_class_selects_only_ready_wasm_nodes() {
    let path = workspace_root().join("RuntimeClass.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let value: Value =
        yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));

    assert_eq!(value["kind"].as_str(), Some("RuntimeClass"));
    let runtime_class: RuntimeClass = typed(value, "RuntimeClass.yaml");
    assert_eq!(
        runtime_class.handler, "wasmtime-custom",
        "the handler must be the runtime name the installer registers in containerd"
    );

    let scheduling = runtime_class.scheduling.expect("the RuntimeClass has no `scheduling`");
    let node_selector = scheduling.node_selector.expect("the RuntimeClass has no `scheduling.nodeSelector`");
    assert_eq!(
        node_selector.get("kubernetes.azure.com/agentpool").map(String::as_str),
        Some("wasm"),
        "wasm pods must be scheduled on the wasm node pool only"
    );
    assert_eq!(
        node_selector.get("wasmtime-custom.io/runtime").map(String::as_str),
        Some("ready"),
        "wasm pods must wait for nodes the installer has marked ready"
    );
    assert!(
        tolerates_wasm_pool(scheduling.tolerations.as_deref()),
        "the RuntimeClass must tolerate the dedicated pool's taint workload=wasm:NoSchedule"
    );
}

#[test]
fn daemonset_installs_through_the_host_root() {
    let daemonset: DaemonSet = document(Overlay::Install.rendered());
    let spec = daemonset.spec.expect("the DaemonSet has no spec");
    let pod = spec.template.spec.expect("the DaemonSet's pod template has no spec");

    assert_eq!(
        pod.host_pid,
        Some(true),
        "the installer restarts containerd through the node's PID 1: it needs hostPID"
    );
    assert_eq!(
        spec.update_strategy
            .and_then(|strategy| strategy.rolling_update)
            .and_then(|rolling_update| rolling_update.max_unavailable),
        Some(IntOrString::Int(1)),
        "each install restarts containerd: update one node at a time"
    );
    assert!(
        tolerates_wasm_pool(pod.tolerations.as_deref()),
        "the installer must run on the tainted wasm pool"
    );

    let installer = pod
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "installer")
        .expect("the DaemonSet has no init container named `installer`");
    assert_eq!(
        installer.security_context.and_then(|context| context.privileged),
        Some(true),
        "the installer writes to the node and enters PID 1's namespaces: it must be privileged"
    );
    assert_eq!(installer.args.unwrap_or_default(), ["install", "--host-root", "/mnt/node-root"]);

    let mount = installer
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.mount_path == "/mnt/node-root")
        .expect("the installer mounts nothing at /mnt/node-root");
    assert!(!mount.name.is_empty(), "the /mnt/node-root mount has no volume name");
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("the pod has no volume `{}` for /mnt/node-root", mount.name));
    let host_path = volume.host_path.expect("the /mnt/node-root volume is not a hostPath");
    assert_eq!(host_path.path, "/", "/mnt/node-root must be the node's `/`");
    assert_eq!(host_path.type_.as_deref(), Some("Directory"));
}

#[test]
fn uninstall_is_the_install_daemonset_running_uninstall_without_force() {
    let install = documents(Overlay::Install.rendered());
    let uninstall = documents(Overlay::Uninstall.rendered());
    // The same objects: applied over an install, the overlay changes the
    // DaemonSet in place (a rolling update, node by node) rather than adding
    // a second one; `kubectl delete -k` of it then removes everything.
    let identities = |documents: &[Value]| -> Vec<String> {
        documents
            .iter()
            .map(|doc| {
                let metadata = &doc["metadata"];
                let namespace = metadata["namespace"].as_str().unwrap_or("");
                format!(
                    "{}/{namespace}/{}",
                    doc["kind"].as_str().unwrap_or(""),
                    metadata["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(identities(&uninstall), identities(&install));

    let install: DaemonSet = document(Overlay::Install.rendered());
    let mut uninstall: DaemonSet = document(Overlay::Uninstall.rendered());
    // Refuses, naming them, while Wasm pods still run: the kubelet retries
    // until they are gone. `--force` is the operator's call, not a default.
    let args = installer(&mut uninstall).args.take().unwrap_or_default();
    assert_eq!(args, ["uninstall", "--host-root", "/mnt/node-root"]);
    // Everything else as the install has it: image, privileges, hostPID,
    // the node root, NODE_NAME, tolerations, one node at a time, and the
    // pause container that keeps the pod Running once the init container succeeded.
    let mut expected = install.clone();
    installer(&mut expected).args = None;
    assert_eq!(uninstall, expected, "the uninstall DaemonSet differs from the install one beyond its args");
}

#[test]
fn a_daemonset_pod_stays_running_after_its_run_instead_of_crash_looping() {
    for overlay in [Overlay::Install, Overlay::Uninstall] {
        let daemonset: DaemonSet = document(overlay.rendered());
        let pod = daemonset.spec.and_then(|spec| spec.template.spec).expect("the DaemonSet has a pod spec");
        // A DaemonSet's pods always restart: a main container that exited
        // after the install or uninstall would crash-loop.
        assert!(matches!(pod.restart_policy.as_deref(), None | Some("Always")));
        let [main] = &pod.containers[..] else {
            panic!("{}: the pod should have one main container, pause", overlay.dir());
        };
        assert!(
            main.image.as_deref().is_some_and(|image| image.starts_with("registry.k8s.io/pause:")),
            "{}: the main container must be pause, which runs until the pod is deleted",
            overlay.dir()
        );
        assert!(main.command.is_none() && main.args.is_none(), "pause runs as its image says");
    }
}

#[test]
fn installer_may_only_get_and_patch_nodes() {
    let role: ClusterRole = document(Overlay::Install.rendered());
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1, "the ClusterRole must hold a single rule, on nodes");
    assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]), "nodes are in the core API group");
    assert_eq!(rules[0].resources.as_deref(), Some(&["nodes".to_string()][..]));
    assert_eq!(rules[0].verbs, ["get", "patch"]);
}

// ---- files and tools ----

const EXAMPLE_POD: &str = "node-installer/deploy/examples/hello-pod.yaml";

/// The workspace root, parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives inside the workspace")
        .to_path_buf()
}

/// Runs a tool to completion; a tool that is not installed fails the test
/// with how to install it.
fn run(command: &mut Command) -> Output {
    tool::output(command).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The node installer's two kustomizations.
#[derive(Debug, Clone, Copy)]
enum Overlay {
    Install,
    Uninstall,
}

impl Overlay {
    /// Its folder, from the workspace root.
    fn dir(self) -> &'static str {
        match self {
            Overlay::Install => "node-installer/deploy",
            Overlay::Uninstall => "node-installer/deploy/uninstall",
        }
    }

    /// `kubectl kustomize` of it, rendered once per test run.
    fn rendered(self) -> &'static str {
        static INSTALL: OnceLock<String> = OnceLock::new();
        static UNINSTALL: OnceLock<String> = OnceLock::new();
        let cell = match self {
            Overlay::Install => &INSTALL,
            Overlay::Uninstall => &UNINSTALL,
        };
        cell.get_or_init(|| {
            let dir = workspace_root().join(self.dir());
            let output = run(Command::new("kubectl").arg("kustomize").arg(&dir));
            assert!(
                output.status.success(),
                "`kubectl kustomize {}` failed; fix the kustomization:\n{}",
                dir.display(),
                tool::describe(&output)
            );
            String::from_utf8(output.stdout).expect("kubectl kustomize prints UTF-8")
        })
    }
}

/// The documents of a multi-document YAML stream (empty ones left out).
fn documents(stream: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(stream)
        .map(|document| {
            <Value as serde::Deserialize>::deserialize(document)
                .unwrap_or_else(|e| panic!("the rendered manifests are not YAML: {e}\n{stream}"))
        })
        .filter(|document| !document.is_null())
        .collect()
}

/// The single document of `K`'s kind in `stream`, as a `K`.
fn document<K: k8s_openapi::Resource + DeserializeOwned>(stream: &str) -> K {
    let kind = K::KIND;
    let mut found = documents(stream).into_iter().filter(|doc| doc["kind"].as_str() == Some(kind));
    let doc = found.next().unwrap_or_else(|| panic!("no {kind} in the rendered manifests"));
    assert!(found.next().is_none(), "more than one {kind} in the rendered manifests");
    typed(doc, "the rendered manifests")
}

/// `value` as the Kubernetes type `K`, failing with where it came from.
fn typed<K: k8s_openapi::Resource + DeserializeOwned>(value: Value, source: &str) -> K {
    yaml_serde::from_value(value)
        .unwrap_or_else(|e| panic!("the {} of {source} does not read as one: {e}", K::KIND))
}

/// The DaemonSet's init container `installer`.
fn installer(daemonset: &mut DaemonSet) -> &mut Container {
    let pod = daemonset.spec.as_mut().and_then(|spec| spec.template.spec.as_mut());
    let init = pod.and_then(|pod| pod.init_containers.as_mut()).expect("the DaemonSet has init containers");
    init.iter_mut().find(|c| c.name == "installer").expect("the DaemonSet has no init container `installer`")
}

/// Whether `tolerations` tolerate the dedicated wasm pool's taint,
/// workload=wasm:NoSchedule.
fn tolerates_wasm_pool(tolerations: Option<&[Toleration]>) -> bool {
    tolerations.unwrap_or_default().iter().any(|t| {
        t.key.as_deref() == Some("workload")
            && t.operator.as_deref() == Some("Equal")
            && t.value.as_deref() == Some("wasm")
            && t.effect.as_deref() == Some("NoSchedule")
    })
}
