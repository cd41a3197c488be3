//! Offline checks of the order flow's AKS manifests: the kustomization in
//! `app/deploy` (Namespace, Deployments, Services, Dapr Components) and the
//! Dapr Shared Helm values in `app/deploy/dapr-shared`.
//!
//! No cluster is contacted. The tests need `kubectl` (for `kubectl
//! kustomize`) and `kubernetes-validate` on `PATH`, and fail (they do not
//! skip) when either is missing: `scripts/install-prerequisites.sh` installs
//! both. Dapr's Components are not Kubernetes built-ins, so they are checked
//! here field by field rather than by `kubernetes-validate`.
//!
//! The Dapr wiring is checked against the app itself: which routes it serves
//! and which bindings it calls come from `app::routes::plan`, so renaming a
//! route or a binding in the code without the manifests fails here.
//!
//! The YAML is read with the line-based helpers of `e2e::manifests`, shared
//! with `node-installer/tests/manifests.rs`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use e2e::manifests::{
    child, child_opt, describe, documents, field, items, kustomize, run_tool, scalars, significant_lines,
    unquote,
};

use app::routes::{DaprUrl, Plan, plan};

/// Kubernetes release the objects are validated against, as for the node installer.
const K8S_VERSION: &str = "1.31.0";

const NAMESPACE: &str = "orders";
const APP_IDS: [&str; 3] = ["distributor", "receiver-express", "receiver-standard"];
/// Each app id's input route (shared/APP-CONTRACT.md).
const INPUT_ROUTES: [(&str, &str); 3] = [
    ("distributor", "/q-order-ingress"),
    ("receiver-express", "/q-order-express-in"),
    ("receiver-standard", "/q-order-standard-in"),
];
/// Every output binding the app calls (shared/APP-CONTRACT.md).
const OUTPUT_BINDINGS: [&str; 4] =
    ["q-order-express-out", "q-order-standard-out", "express-outbox", "standard-outbox"];
const SERVICE_BUS: &str = "bindings.azure.servicebusqueues";
const BLOB_STORAGE: &str = "bindings.azure.blobstorage";
/// The Secret the Components read; `deploy/secrets.env.example` lists its keys.
const SECRET: &str = "order-bindings";

#[test]
fn kustomization_renders_the_whole_flow() {
    let docs = documents(rendered());
    for (kind, count) in [("Namespace", 1), ("Deployment", 3), ("Service", 3), ("Component", 7)] {
        let found = docs.iter().filter(|d| field(d, "kind").as_deref() == Some(kind)).count();
        assert_eq!(
            found, count,
            "`kubectl kustomize app/deploy` renders {found} {kind}(s), expected {count}"
        );
    }
    assert_eq!(
        docs.len(),
        14,
        "app/deploy renders objects beyond the Namespace, Deployments, Services and Components"
    );
    for doc in &docs {
        let meta = child(doc, "metadata");
        let expected = if field(doc, "kind").as_deref() == Some("Namespace") { "name" } else { "namespace" };
        assert_eq!(
            field(&meta, expected).as_deref(),
            Some(NAMESPACE),
            "{} must be in namespace {NAMESPACE}: Dapr Shared, installed there, loads only its own \
             namespace's Components",
            name(doc)
        );
    }
}

#[test]
fn kubernetes_objects_pass_schema_validation() {
    let objects: Vec<String> = documents(rendered())
        .into_iter()
        .filter(|doc| field(doc, "kind").as_deref() != Some("Component"))
        .map(|doc| doc.join("\n"))
        .collect();
    assert_eq!(objects.len(), 7, "expected the Namespace, 3 Deployments and 3 Services to validate");

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let file = dir.join("app-deploy.yaml");
    fs::write(&file, objects.join("\n---\n") + "\n")
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    let args = ["--strict".into(), "-k".into(), K8S_VERSION.into(), file.display().to_string()];
    let output = run_tool("kubernetes-validate", &args);
    assert!(
        output.status.success(),
        "kubernetes-validate rejects app/deploy for Kubernetes {K8S_VERSION}; fix the fields it names:\n{}",
        describe(&output)
    );
}

#[test]
fn deployments_run_the_app_under_wasmtime_custom() {
    let images: BTreeSet<String> = APP_IDS
        .iter()
        .map(|app_id| {
            let pod = pod_spec(&object("Deployment", app_id));
            assert_eq!(
                field(&pod, "runtimeClassName").as_deref(),
                Some("wasmtime-custom"),
                "{app_id}: without runtimeClassName wasmtime-custom, runc would try to run the wasm image"
            );
            let app = container(&pod, app_id);

            let port = items(&child(&app, "ports"))
                .into_iter()
                .find(|p| field(p, "name").as_deref() == Some("http"));
            let port = port.unwrap_or_else(|| panic!("{app_id}: no container port named http"));
            assert_eq!(field(&port, "containerPort").as_deref(), Some("8080"), "{app_id}: port http");
            assert_eq!(
                env(&app, "WASMTIME_CUSTOM_LISTEN").as_deref(),
                Some("0.0.0.0:8080"),
                "{app_id}: the shim must listen on the container port, on all addresses of the pod"
            );

            for probe in ["readinessProbe", "livenessProbe"] {
                let get = child(&child(&app, probe), "httpGet");
                assert_eq!(field(&get, "path").as_deref(), Some("/healthz"), "{app_id}: {probe} path");
                assert_eq!(field(&get, "port").as_deref(), Some("http"), "{app_id}: {probe} port");
            }

            let dapr_url = env(&app, "DAPR_URL").unwrap_or_else(|| panic!("{app_id}: DAPR_URL is not set"));
            DaprUrl::parse(Some(&dapr_url)).unwrap_or_else(|e| panic!("{app_id}: the app refuses {e}"));

            let limits = child(&child(&app, "resources"), "limits");
            assert!(
                field(&limits, "memory").is_some() && field(&limits, "cpu").is_some(),
                "{app_id}: the app container needs cpu and memory limits"
            );
            let security = child(&app, "securityContext");
            assert_eq!(
                field(&security, "allowPrivilegeEscalation").as_deref(),
                Some("false"),
                "{app_id}: allowPrivilegeEscalation"
            );
            let pod_security = child_opt(&pod, "securityContext").unwrap_or_default();
            assert!(
                field(&security, "runAsNonRoot").is_none() && field(&pod_security, "runAsNonRoot").is_none(),
                "{app_id}: runAsNonRoot would stop the kubelet from starting a wasm image (it declares no user)"
            );
            field(&app, "image").unwrap_or_else(|| panic!("{app_id}: no image"))
        })
        .collect();
    assert_eq!(images.len(), 1, "the three Deployments must run the same image, found {images:?}");
}

#[test]
fn timeouts_let_requests_finish_within_the_shutdown_grace() {
    for app_id in APP_IDS {
        let pod = pod_spec(&object("Deployment", app_id));
        let app = container(&pod, app_id);
        let seconds = |value: Option<String>, what: &str| -> u64 {
            value
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{app_id}: {what} is not set to seconds"))
        };
        let request = seconds(env(&app, "WASMTIME_CUSTOM_REQUEST_TIMEOUT_SECONDS"), "the request timeout");
        let drain = seconds(env(&app, "WASMTIME_CUSTOM_GRACE_SECONDS"), "WASMTIME_CUSTOM_GRACE_SECONDS");
        let kill = seconds(field(&pod, "terminationGracePeriodSeconds"), "terminationGracePeriodSeconds");
        assert!(
            request < drain && drain < kill,
            "{app_id}: need request timeout ({request}) < shim drain ({drain}) < terminationGracePeriodSeconds \
             ({kill}), so in-flight requests end before the kubelet's SIGKILL"
        );
        let input = components().into_iter().find(|c| c.is_input() && c.scopes == [app_id]);
        let input = input.unwrap_or_else(|| panic!("no input binding scoped to {app_id}"));
        let handler = seconds(input.value("handlerTimeoutInSec"), "handlerTimeoutInSec");
        assert!(
            request < handler,
            "{app_id}: the shim's request timeout ({request}) must be below {}'s handlerTimeoutInSec \
             ({handler}), so a hung request is answered (and redelivered) before Dapr gives up on it",
            input.name
        );
    }
}

#[test]
fn services_expose_each_deployment_on_port_80() {
    for app_id in APP_IDS {
        let service = object("Service", app_id);
        let spec = child(&service, "spec");
        let labels = child(
            &child(&child(&child(&object("Deployment", app_id), "spec"), "template"), "metadata"),
            "labels",
        );
        for selector in child(&spec, "selector") {
            let (key, value) = selector.trim().split_once(':').expect("selector lines are key: value");
            assert_eq!(
                field(&labels, key),
                Some(unquote(value.trim())),
                "Service {app_id}: selector {key} does not match the Deployment's pod labels"
            );
        }
        let ports = items(&child(&spec, "ports"));
        assert_eq!(ports.len(), 1, "Service {app_id}: one port");
        assert_eq!(field(&ports[0], "port").as_deref(), Some("80"), "Service {app_id}: port");
        assert_eq!(field(&ports[0], "targetPort").as_deref(), Some("http"), "Service {app_id}: targetPort");
    }
}

#[test]
fn components_are_bindings_scoped_to_app_ids() {
    let secret_keys = secret_keys();
    for c in components() {
        assert_eq!(c.api_version.as_deref(), Some("dapr.io/v1alpha1"), "{}", c.name);
        assert!(c.kind == SERVICE_BUS || c.kind == BLOB_STORAGE, "{}: unexpected type {}", c.name, c.kind);
        assert_eq!(c.version.as_deref(), Some("v1"), "{}", c.name);
        assert!(
            !c.scopes.is_empty() && c.scopes.iter().all(|s| APP_IDS.contains(&s.as_str())),
            "{}: scopes {:?} must name app ids of this flow (unscoped, every daprd of the namespace loads it)",
            c.name,
            c.scopes
        );
        let direction = c.value("direction");
        assert!(
            matches!(direction.as_deref(), Some("input" | "output")),
            "{}: direction {direction:?}",
            c.name
        );
        assert_eq!(c.is_input(), c.value("route").is_some(), "{}: a route exactly on input bindings", c.name);
        let target = if c.kind == SERVICE_BUS { "queueName" } else { "containerName" };
        assert!(c.value(target).is_some(), "{}: no {target}", c.name);

        for entry in &c.metadata {
            if let Some(reference) = child_opt(entry, "secretKeyRef") {
                assert_eq!(field(&reference, "name").as_deref(), Some(SECRET), "{}", c.name);
                let key = field(&reference, "key").unwrap_or_default();
                assert!(
                    secret_keys.contains(&key),
                    "{}: secret key {key:?} is not in app/deploy/secrets.env.example {secret_keys:?}",
                    c.name
                );
            }
        }
    }
}

#[test]
fn every_route_and_binding_of_the_app_is_wired() {
    let components = components();
    let mut called = BTreeSet::new();
    for (app_id, route) in INPUT_ROUTES {
        let input = components.iter().find(|c| c.value("route").as_deref() == Some(route));
        let input = input.unwrap_or_else(|| panic!("no input binding has the route {route}"));
        assert_eq!(input.scopes, [app_id], "{}: delivers to {route}, an endpoint of {app_id}", input.name);
        match plan("OPTIONS", route, b"") {
            Plan::Reply(reply) if (200..300).contains(&reply.status) => {}
            other => panic!("the app must answer Dapr's OPTIONS probe of {route} with 2xx, plans {other:?}"),
        }
        for delivery in ["Express", "Standard"] {
            let order = format!(r#"{{"orderId":1,"delivery":"{delivery}"}}"#);
            let Plan::Call(call) = plan("POST", route, order.as_bytes()) else {
                panic!("the app does not call a binding for a {delivery} order on {route}")
            };
            let output = components.iter().find(|c| c.name == call.binding && !c.is_input());
            let output = output.unwrap_or_else(|| {
                panic!("{route} calls {}, which no output Component defines", call.binding)
            });
            assert_eq!(output.scopes, [app_id], "{}: called by {app_id} only", output.name);
            called.insert(call.binding);
        }
    }
    assert_eq!(called, BTreeSet::from(OUTPUT_BINDINGS.map(String::from)), "bindings the app calls");

    // A queue written by one binding is read by another, and both agree on the
    // settings the queue is created with (whichever daprd finds it missing).
    for output in components.iter().filter(|c| c.kind == SERVICE_BUS && !c.is_input()) {
        let queue = output.value("queueName");
        let input = components.iter().find(|c| c.is_input() && c.value("queueName") == queue);
        let input =
            input.unwrap_or_else(|| panic!("{} writes {queue:?}, which no input binding reads", output.name));
        for key in ["maxDeliveryCount", "lockDurationInSec"] {
            assert_eq!(output.value(key), input.value(key), "{key} of {} and {}", output.name, input.name);
        }
    }
}

#[test]
fn dapr_shared_values_match_the_deployments() {
    let dir = deploy_dir().join("dapr-shared");
    let mut app_ids = BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let Some(stem) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".values.yaml"))
        else {
            continue;
        };
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let values = significant_lines(&text);
        let shared = child(&values, "shared");
        let app_id = field(&shared, "appId").unwrap_or_else(|| panic!("{}: no shared.appId", path.display()));
        assert_eq!(app_id, stem, "{}: named after its app id", path.display());
        assert!(APP_IDS.contains(&app_id.as_str()), "{app_id}: no Deployment of that name");

        // The chart names the Service `<appId>-dapr`, Dapr's HTTP API on 3500.
        let app = container(&pod_spec(&object("Deployment", &app_id)), &app_id);
        let dapr = DaprUrl::parse(env(&app, "DAPR_URL").as_deref()).expect("DAPR_URL parses");
        assert!(
            in_namespace(&dapr.authority, &format!("{app_id}-dapr"), Some("3500")),
            "{app_id}: DAPR_URL must point at the Service {app_id}-dapr:3500 of its Dapr Shared release, \
             not {}",
            dapr.authority
        );
        assert_eq!(
            field(&values, "fullnameOverride"),
            Some(format!("{app_id}-dapr")),
            "{app_id}: the release's Deployment is named like its Service"
        );

        // daprd's --app-channel-address and --app-port: the app's Service.
        let remote = field(&shared, "remoteURL").unwrap_or_default();
        assert!(
            in_namespace(&remote, &app_id, None),
            "{app_id}: remoteURL {remote:?} is not Service {app_id}"
        );
        let service_port =
            field(&items(&child(&child(&object("Service", &app_id), "spec"), "ports"))[0], "port");
        assert_eq!(field(&shared, "remotePort"), service_port, "{app_id}: remotePort is the Service's port");

        assert_eq!(field(&shared, "strategy").as_deref(), Some("deployment"), "{app_id}: shared.strategy");
        let replicas = field(&child(&shared, "deployment"), "replicas").and_then(|r| r.parse::<u32>().ok());
        assert!(replicas.is_some_and(|r| r > 0), "{app_id}: shared.deployment.replicas must be fixed");
        let health = child(&child(&shared, "daprd"), "appHealth");
        assert_eq!(field(&health, "enabled").as_deref(), Some("true"), "{app_id}: app health check");
        assert_eq!(
            field(&health, "checkPath").as_deref(),
            Some("/healthz"),
            "{app_id}: the chart reads checkPath"
        );
        app_ids.insert(app_id);
    }
    assert_eq!(app_ids, BTreeSet::from(APP_IDS.map(String::from)), "one values file per app id");
}

// ---- the rendered objects ----

/// A Dapr Component, as far as the checks need it.
struct Component {
    name: String,
    api_version: Option<String>,
    kind: String,
    version: Option<String>,
    scopes: Vec<String>,
    /// The `spec.metadata` items.
    metadata: Vec<Vec<String>>,
}

impl Component {
    /// The plain `value` of a metadata entry.
    fn value(&self, key: &str) -> Option<String> {
        let entry = self.metadata.iter().find(|m| field(m, "name").as_deref() == Some(key))?;
        field(entry, "value")
    }

    fn is_input(&self) -> bool {
        self.value("direction").as_deref() == Some("input")
    }
}

fn components() -> Vec<Component> {
    documents(rendered())
        .into_iter()
        .filter(|doc| field(doc, "kind").as_deref() == Some("Component"))
        .map(|doc| {
            let spec = child(&doc, "spec");
            Component {
                name: name(&doc),
                api_version: field(&doc, "apiVersion"),
                kind: field(&spec, "type").unwrap_or_default(),
                version: field(&spec, "version"),
                scopes: child_opt(&doc, "scopes").map(|s| scalars(&s)).unwrap_or_default(),
                metadata: items(&child(&spec, "metadata")),
            }
        })
        .collect()
}

/// The one rendered object of `kind` named `name`.
fn object(kind: &str, wanted: &str) -> Vec<String> {
    let mut found = documents(rendered())
        .into_iter()
        .filter(|doc| field(doc, "kind").as_deref() == Some(kind) && name(doc) == wanted);
    let doc = found.next().unwrap_or_else(|| panic!("app/deploy renders no {kind} {wanted}"));
    assert!(found.next().is_none(), "app/deploy renders two {kind}s named {wanted}");
    doc
}

fn name(doc: &[String]) -> String {
    field(&child(doc, "metadata"), "name").unwrap_or_default()
}

fn pod_spec(deployment: &[String]) -> Vec<String> {
    child(&child(&child(deployment, "spec"), "template"), "spec")
}

/// The pod's only container.
fn container(pod: &[String], app_id: &str) -> Vec<String> {
    let mut containers = items(&child(pod, "containers"));
    assert_eq!(containers.len(), 1, "{app_id}: the pod must hold the app container only (no sidecar)");
    containers.remove(0)
}

fn env(container: &[String], key: &str) -> Option<String> {
    let entry = items(&child_opt(container, "env")?)
        .into_iter()
        .find(|e| field(e, "name").as_deref() == Some(key))?;
    field(&entry, "value")
}

/// Whether `host[:port]` names the Service `service` of the flow's namespace,
/// short (`service`) or qualified (`service.orders[.svc[.cluster.local]]`).
fn in_namespace(authority: &str, service: &str, port: Option<&str>) -> bool {
    let (host, found_port) = authority.split_once(':').map_or((authority, None), |(h, p)| (h, Some(p)));
    let qualified = [
        String::new(),
        format!(".{NAMESPACE}"),
        format!(".{NAMESPACE}.svc"),
        format!(".{NAMESPACE}.svc.cluster.local"),
    ];
    found_port == port && qualified.iter().any(|suffix| host == format!("{service}{suffix}"))
}

/// The keys of `deploy/secrets.env.example`.
fn secret_keys() -> BTreeSet<String> {
    let path = deploy_dir().join("secrets.env.example");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    significant_lines(&text)
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .collect()
}

// ---- files and tools ----

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `kubectl kustomize app/deploy`, rendered once per test run.
fn rendered() -> &'static str {
    static RENDERED: OnceLock<String> = OnceLock::new();
    RENDERED.get_or_init(|| kustomize(&deploy_dir()))
}
