//! Offline checks of the Kubernetes manifests that deploy wasmtime-custom:
//! the node installer's kustomization (`node-installer/deploy`), the
//! `RuntimeClass.yaml` at the workspace root and the example pod under
//! `node-installer/deploy/examples`.
//!
//! No cluster is contacted. The tests need two tools on `PATH`, and fail (they
//! do not skip) when either is missing:
//! - `kubectl`, for `kubectl kustomize`;
//! - `kubernetes-validate` (PyPI), which checks objects against the OpenAPI
//!   schemas of a Kubernetes release.
//!
//! `scripts/install-prerequisites.sh` installs both.
//!
//! The YAML is inspected with the line-based helpers of `e2e::manifests`
//! rather than a YAML crate.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use e2e::manifests::{
    child, describe, documents, field, items, kustomize, run_tool, scalars, significant_lines,
};

/// Kubernetes release the manifests are validated against; an older release
/// than the newest, so that no field the clusters may lack slips in.
/// (kubernetes-validate 1.37.0 bundles the schemas of 1.25 to 1.37.)
const K8S_VERSION: &str = "1.31.0";

#[test]
fn kustomization_renders() {
    let rendered = rendered();
    for kind in
        ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "DaemonSet"]
    {
        assert!(
            documents(rendered).iter().any(|doc| field(doc, "kind").as_deref() == Some(kind)),
            "`kubectl kustomize node-installer/deploy` renders no {kind}: \
             add its file to the `resources:` of node-installer/deploy/kustomization.yaml"
        );
    }
}

#[test]
fn manifests_are_valid_kubernetes_objects() {
    let root = workspace_root();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let rendered_file = dir.join("node-installer.yaml");
    fs::write(&rendered_file, rendered())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", rendered_file.display()));

    let files = [rendered_file, root.join("RuntimeClass.yaml"), root.join(EXAMPLE_POD)];
    let mut args = vec!["--strict".into(), "-k".into(), K8S_VERSION.into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let output = run_tool("kubernetes-validate", &args);
    assert!(
        output.status.success(),
        "kubernetes-validate rejects the manifests for Kubernetes {K8S_VERSION}; fix the fields it names:\n{}",
        describe(&output)
    );
}

#[test]
fn runtime_class_selects_only_ready_wasm_nodes() {
    let path = workspace_root().join("RuntimeClass.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let runtime_class = significant_lines(&text);

    assert_eq!(field(&runtime_class, "kind").as_deref(), Some("RuntimeClass"));
    assert_eq!(
        field(&runtime_class, "handler").as_deref(),
        Some("wasmtime-custom"),
        "the handler must be the runtime name the installer registers in containerd"
    );

    let scheduling = child(&runtime_class, "scheduling");
    let node_selector = child(&scheduling, "nodeSelector");
    assert_eq!(
        field(&node_selector, "kubernetes.azure.com/agentpool").as_deref(),
        Some("wasm"),
        "wasm pods must be scheduled on the wasm node pool only"
    );
    assert_eq!(
        field(&node_selector, "wasmtime-custom.io/runtime").as_deref(),
        Some("ready"),
        "wasm pods must wait for nodes the installer has marked ready"
    );
    assert!(
        tolerates_wasm_pool(&child(&scheduling, "tolerations")),
        "the RuntimeClass must tolerate the dedicated pool's taint workload=wasm:NoSchedule"
    );
}

#[test]
fn daemonset_installs_through_the_host_root() {
    let daemonset = document(rendered(), "DaemonSet");
    let spec = child(&daemonset, "spec");
    let pod = child(&child(&spec, "template"), "spec");

    assert_eq!(
        field(&pod, "hostPID").as_deref(),
        Some("true"),
        "the installer restarts containerd through the host's PID 1: it needs hostPID"
    );
    assert_eq!(
        field(&child(&child(&spec, "updateStrategy"), "rollingUpdate"), "maxUnavailable").as_deref(),
        Some("1"),
        "each install restarts containerd: update one node at a time"
    );
    assert!(
        tolerates_wasm_pool(&child(&pod, "tolerations")),
        "the installer must run on the tainted wasm pool"
    );

    let installer = items(&child(&pod, "initContainers"))
        .into_iter()
        .find(|c| field(c, "name").as_deref() == Some("installer"))
        .expect("the DaemonSet has no init container named `installer`");
    assert_eq!(
        field(&child(&installer, "securityContext"), "privileged").as_deref(),
        Some("true"),
        "the installer writes to the host and enters PID 1's namespaces: it must be privileged"
    );
    assert_eq!(scalars(&child(&installer, "args")), ["install", "--host-root", "/mnt/node-root"]);

    let mount = items(&child(&installer, "volumeMounts"))
        .into_iter()
        .find(|m| field(m, "mountPath").as_deref() == Some("/mnt/node-root"))
        .expect("the installer mounts nothing at /mnt/node-root");
    let volume_name = field(&mount, "name").expect("the /mnt/node-root mount has no volume name");
    let volume = items(&child(&pod, "volumes"))
        .into_iter()
        .find(|v| field(v, "name").as_deref() == Some(volume_name.as_str()))
        .unwrap_or_else(|| panic!("the pod has no volume `{volume_name}` for /mnt/node-root"));
    let host_path = child(&volume, "hostPath");
    assert_eq!(field(&host_path, "path").as_deref(), Some("/"), "/mnt/node-root must be the host's `/`");
    assert_eq!(field(&host_path, "type").as_deref(), Some("Directory"));
}

#[test]
fn installer_may_only_get_and_patch_nodes() {
    let role = document(rendered(), "ClusterRole");
    let rules = items(&child(&role, "rules"));
    assert_eq!(rules.len(), 1, "the ClusterRole must hold a single rule, on nodes");
    assert_eq!(scalars(&child(&rules[0], "apiGroups")), [""], "nodes are in the core API group");
    assert_eq!(scalars(&child(&rules[0], "resources")), ["nodes"]);
    assert_eq!(scalars(&child(&rules[0], "verbs")), ["get", "patch"]);
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

/// `kubectl kustomize node-installer/deploy`, rendered once per test run.
fn rendered() -> &'static str {
    static RENDERED: OnceLock<String> = OnceLock::new();
    RENDERED.get_or_init(|| kustomize(&workspace_root().join("node-installer/deploy")))
}

/// The single document of the given `kind` in `stream`.
fn document(stream: &str, kind: &str) -> Vec<String> {
    let mut found = documents(stream).into_iter().filter(|doc| field(doc, "kind").as_deref() == Some(kind));
    let doc = found.next().unwrap_or_else(|| panic!("no {kind} in the rendered manifests"));
    assert!(found.next().is_none(), "more than one {kind} in the rendered manifests");
    doc
}

/// Whether a `tolerations` block tolerates the dedicated wasm pool's taint,
/// workload=wasm:NoSchedule.
fn tolerates_wasm_pool(tolerations: &[String]) -> bool {
    items(tolerations).iter().any(|t| {
        field(t, "key").as_deref() == Some("workload")
            && field(t, "operator").as_deref() == Some("Equal")
            && field(t, "value").as_deref() == Some("wasm")
            && field(t, "effect").as_deref() == Some("NoSchedule")
    })
}
