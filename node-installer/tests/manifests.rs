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
//! The YAML is inspected with a few line-based helpers rather than a YAML
//! crate: they understand just enough (indentation, `key:` blocks and `- `
//! list items) for the regular output of `kubectl kustomize` and for
//! hand-written manifests in the same style.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Kubernetes release the manifests are validated against; an older release
/// than the newest, so that no field the clusters may lack slips in.
/// (kubernetes-validate 1.37.0 bundles the schemas of 1.25 to 1.37.)
const K8S_VERSION: &str = "1.31.0";

const INSTALL_HINT: &str = "run scripts/install-prerequisites.sh to install it";

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
    let output = run("kubernetes-validate", &args);
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
    RENDERED.get_or_init(|| {
        let deploy = workspace_root().join("node-installer/deploy");
        let output = run("kubectl", &["kustomize".into(), deploy.display().to_string()]);
        assert!(
            output.status.success(),
            "`kubectl kustomize {}` failed; fix the kustomization:\n{}",
            deploy.display(),
            describe(&output)
        );
        String::from_utf8(output.stdout).expect("kubectl kustomize prints UTF-8")
    })
}

/// Runs `program` to completion; a missing program fails the test with the
/// way to install it.
fn run(program: &str, args: &[String]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("`{program}` is not installed (not found on PATH): {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot run `{program}`: {e}"),
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---- line-based YAML reading ----

/// The lines of `text` that carry data: no blank lines, no full-line comments.
fn significant_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The documents of a multi-document YAML stream.
fn documents(stream: &str) -> Vec<Vec<String>> {
    stream.split("\n---\n").map(significant_lines).filter(|doc| !doc.is_empty()).collect()
}

/// The single document of the given `kind` in `stream`.
fn document(stream: &str, kind: &str) -> Vec<String> {
    let mut found = documents(stream).into_iter().filter(|doc| field(doc, "kind").as_deref() == Some(kind));
    let doc = found.next().unwrap_or_else(|| panic!("no {kind} in the rendered manifests"));
    assert!(found.next().is_none(), "more than one {kind} in the rendered manifests");
    doc
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The value of `key` at the top level of `block` (the least indented lines).
fn field(block: &[String], key: &str) -> Option<String> {
    let top = block.iter().map(|l| indent(l)).min()?;
    block
        .iter()
        .filter(|l| indent(l) == top)
        .find_map(|l| Some(unquote(l.trim().strip_prefix(key)?.strip_prefix(':')?.trim())))
}

/// The lines nested under the top-level `key:` line of `block`, whether that
/// key starts a list item (`- key:`) or not. A list written at the key's own
/// indentation (`key:` then `- item`, kubectl's style) belongs to the key too.
fn child(block: &[String], key: &str) -> Vec<String> {
    let header = format!("{key}:");
    let top = block.iter().map(|l| indent(l)).min().unwrap_or(0);
    let (start, column) = block
        .iter()
        .enumerate()
        .filter(|(_, l)| indent(l) == top)
        .find_map(|(i, l)| {
            let text = l.trim_start();
            let text = text.strip_prefix("- ").map_or(text, str::trim_start);
            (text == header).then(|| (i, l.len() - text.len()))
        })
        .unwrap_or_else(|| panic!("no `{header}` block in:\n{}", block.join("\n")));
    block[start + 1..]
        .iter()
        .take_while(|l| indent(l) > column || (indent(l) == column && l.trim_start().starts_with("- ")))
        .cloned()
        .collect()
}

/// The items of a block sequence, each with its leading `- ` blanked out so
/// that the item's keys share one indentation.
fn items(block: &[String]) -> Vec<Vec<String>> {
    let Some(column) = block.iter().filter(|l| l.trim_start().starts_with("- ")).map(|l| indent(l)).min()
    else {
        return Vec::new();
    };
    let mut items: Vec<Vec<String>> = Vec::new();
    for line in block {
        if indent(line) == column && line.trim_start().starts_with("- ") {
            items.push(vec![line.replacen("- ", "  ", 1)]);
        } else if let Some(item) = items.last_mut() {
            item.push(line.clone());
        }
    }
    items
}

/// The values of a block sequence of scalars, e.g. `args` or `verbs`.
fn scalars(block: &[String]) -> Vec<String> {
    block.iter().filter_map(|l| l.trim().strip_prefix("- ")).map(|v| unquote(v.trim())).collect()
}

fn unquote(value: &str) -> String {
    value.trim_matches(|c| c == '"' || c == '\'').to_owned()
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
