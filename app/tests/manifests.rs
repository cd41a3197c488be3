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
//! route or a binding in the code without the manifests fails here (the
//! contract is `app/CONTRACT.md`).
//!
//! The YAML is read with `yaml_serde`; Kubernetes objects as `k8s-openapi`
//! types, Dapr Components as the struct below.

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use yaml_serde::Value;

use app::routes::{DaprUrl, Plan, plan};

/// Kubernetes release the objects are validated against, as for the node installer.
const K8S_VERSION: &str = "1.31.0";

const NAMESPACE: &str = "orders";
const APP_IDS: [&str; 3] = ["distributor", "receiver-express", "receiver-standard"];
/// Each app id's input route (app/CONTRACT.md).
const INPUT_ROUTES: [(&str, &str); 3] = [
    ("distributor", "/q-order-ingress"),
    ("receiver-express", "/q-order-express-in"),
    ("receiver-standard", "/q-order-standard-in"),
];
/// Every output binding the app calls (app/CONTRACT.md).
const OUTPUT_BINDINGS: [&str; 4] =
    ["q-order-express-out", "q-order-standard-out", "express-outbox", "standard-outbox"];
const SERVICE_BUS: &str = "bindings.azure.servicebusqueues";
const BLOB_STORAGE: &str = "bindings.azure.blobstorage";
/// The Secret the Components read; `deploy/secrets.env.example` lists its keys.
const SECRET: &str = "order-bindings";

#[test]
fn kustomization_renders_the_whole_flow() {
    let docs = rendered();
    for (kind, count) in [("Namespace", 1), ("Deployment", 3), ("Service", 3), ("Component", 7)] {
        let found = docs.iter().filter(|d| kind_of(d) == kind).count();
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
    for doc in docs {
        let meta = &doc["metadata"];
        let namespace = if kind_of(doc) == "Namespace" { &meta["name"] } else { &meta["namespace"] };
        assert_eq!(
            namespace.as_str(),
            Some(NAMESPACE),
            "{} {} must be in namespace {NAMESPACE}: Dapr Shared, installed there, loads only its own \
             namespace's Components",
            kind_of(doc),
            name_of(doc)
        );
    }
}

#[test]
fn kubernetes_objects_pass_schema_validation() {
    let objects: Vec<String> = rendered()
        .iter()
        .filter(|doc| kind_of(doc) != "Component")
        .map(|doc| yaml_serde::to_string(doc).expect("a parsed document serialises"))
        .collect();
    assert_eq!(objects.len(), 7, "expected the Namespace, 3 Deployments and 3 Services to validate");

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let file = dir.join("app-deploy.yaml");
    fs::write(&file, objects.join("---\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    let file = file.display().to_string();
    if let Err(e) = testbed::tool::run("kubernetes-validate", &["--strict", "-k", K8S_VERSION, &file]) {
        panic!(
            "kubernetes-validate rejects app/deploy for Kubernetes {K8S_VERSION}; fix the fields it names:\n{e:#}"
        );
    }
}

#[test]
fn deployments_run_the_app_under_wasmtime_custom() {
    let images: BTreeSet<String> = APP_IDS
        .iter()
        .map(|app_id| {
            let pod = pod_spec(&deployment(app_id));
            assert_eq!(
                pod.runtime_class_name.as_deref(),
                Some("wasmtime-custom"),
                "{app_id}: without runtimeClassName wasmtime-custom, runc would try to run the wasm image"
            );
            let app = container(&pod, app_id);

            let ports = app.ports.clone().unwrap_or_default();
            let port = ports.iter().find(|p| p.name.as_deref() == Some("http"));
            let port = port.unwrap_or_else(|| panic!("{app_id}: no container port named http"));
            assert_eq!(port.container_port, 8080, "{app_id}: port http");
            assert_eq!(
                env(&app, "WASMTIME_CUSTOM_LISTEN").as_deref(),
                Some("0.0.0.0:8080"),
                "{app_id}: the shim must listen on the container port, on all addresses of the pod"
            );

            for (probe, spec) in [("readinessProbe", &app.readiness_probe), ("livenessProbe", &app.liveness_probe)] {
                let get = spec.as_ref().and_then(|p| p.http_get.as_ref());
                let get = get.unwrap_or_else(|| panic!("{app_id}: no {probe}.httpGet"));
                assert_eq!(get.path.as_deref(), Some("/healthz"), "{app_id}: {probe} path");
                assert_eq!(get.port, IntOrString::String("http".into()), "{app_id}: {probe} port");
            }

            let dapr_url = env(&app, "DAPR_URL").unwrap_or_else(|| panic!("{app_id}: DAPR_URL is not set"));
            DaprUrl::parse(Some(&dapr_url)).unwrap_or_else(|e| panic!("{app_id}: the app refuses {e}"));
            assert_eq!(
                env(&app, "OTEL_SERVICE_NAME").as_deref(),
                Some(*app_id),
                "{app_id}: spans must carry the app id (the shim's default service name is the same for all three)"
            );

            let limits = app.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
            assert!(
                limits.contains_key("memory") && limits.contains_key("cpu"),
                "{app_id}: the app container needs cpu and memory limits"
            );
            let security = app.security_context.clone().unwrap_or_default();
            assert_eq!(security.allow_privilege_escalation, Some(false), "{app_id}: allowPrivilegeEscalation");
            let pod_non_root = pod.security_context.as_ref().and_then(|s| s.run_as_non_root);
            assert!(
                security.run_as_non_root.is_none() && pod_non_root.is_none(),
                "{app_id}: runAsNonRoot would stop the kubelet from starting a wasm image (it declares no user)"
            );
            app.image.clone().unwrap_or_else(|| panic!("{app_id}: no image"))
        })
        .collect();
    assert_eq!(images.len(), 1, "the three Deployments must run the same image, found {images:?}");
}

#[test]
fn timeouts_let_requests_finish_within_the_shutdown_grace() {
    for app_id in APP_IDS {
        let pod = pod_spec(&deployment(app_id));
        let app = container(&pod, app_id);
        let seconds = |value: Option<String>, what: &str| -> u64 {
            value
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{app_id}: {what} is not set to seconds"))
        };
        let request = seconds(env(&app, "WASMTIME_CUSTOM_REQUEST_TIMEOUT_SECONDS"), "the request timeout");
        let drain = seconds(env(&app, "WASMTIME_CUSTOM_GRACE_SECONDS"), "WASMTIME_CUSTOM_GRACE_SECONDS");
        // Unset, the shim does not delay its shutdown.
        let delay = env(&app, "WASMTIME_CUSTOM_SHUTDOWN_DELAY_SECONDS")
            .map_or(0, |v| seconds(Some(v), "WASMTIME_CUSTOM_SHUTDOWN_DELAY_SECONDS"));
        let sleep = pre_stop_sleep(&app, app_id);
        let kill = seconds(
            pod.termination_grace_period_seconds.map(|s| s.to_string()),
            "terminationGracePeriodSeconds",
        );
        assert!(
            request < drain,
            "{app_id}: need request timeout ({request}) < shim drain ({drain}), so a request running at SIGTERM \
             ends within the drain"
        );
        assert!(
            sleep + delay + drain < kill,
            "{app_id}: need preStop sleep ({sleep}) + WASMTIME_CUSTOM_SHUTDOWN_DELAY_SECONDS ({delay}) + shim \
             drain ({drain}) < terminationGracePeriodSeconds ({kill}): the hook counts against the grace period, \
             and the drain must end before the kubelet's SIGKILL"
        );
        let input = components().into_iter().find(|c| c.is_input() && c.scopes == [app_id]);
        let input = input.unwrap_or_else(|| panic!("no input binding scoped to {app_id}"));
        let handler = seconds(input.value("handlerTimeoutInSec"), "handlerTimeoutInSec");
        assert!(
            request < handler,
            "{app_id}: the shim's request timeout ({request}) must be below {}'s handlerTimeoutInSec \
             ({handler}), so a hung request is answered (and redelivered) before Dapr gives up on it",
            input.metadata.name
        );
    }
}

#[test]
fn scrape_annotations_point_at_the_shims_metrics_listener() {
    for app_id in APP_IDS {
        let deployment = deployment(app_id);
        let app = container(&pod_spec(&deployment), app_id);
        let listen = env(&app, "WASMTIME_CUSTOM_METRICS_LISTEN").unwrap_or_else(|| {
            panic!("{app_id}: WASMTIME_CUSTOM_METRICS_LISTEN is not set, so no metrics are served")
        });
        let listen: SocketAddr = listen.parse().unwrap_or_else(|e| {
            panic!("{app_id}: WASMTIME_CUSTOM_METRICS_LISTEN {listen:?} is not an IP:port: {e}")
        });
        assert!(
            listen.ip().is_unspecified(),
            "{app_id}: the metrics listener must take every address of the pod for Prometheus to reach it, not {listen}"
        );

        let ports = app.ports.clone().unwrap_or_default();
        let port_named = |name: &str| {
            let port = ports.iter().find(|p| p.name.as_deref() == Some(name));
            port.unwrap_or_else(|| panic!("{app_id}: no container port named {name}")).container_port
        };
        assert_eq!(
            port_named("metrics"),
            i32::from(listen.port()),
            "{app_id}: container port metrics must be WASMTIME_CUSTOM_METRICS_LISTEN's port"
        );
        assert_ne!(port_named("metrics"), port_named("http"), "{app_id}: metrics need a port of their own");

        let template = deployment.spec.map(|s| s.template).unwrap_or_default();
        let annotations = template.metadata.and_then(|m| m.annotations).unwrap_or_default();
        for (key, value) in [
            ("prometheus.io/scrape", "true".to_owned()),
            ("prometheus.io/port", listen.port().to_string()),
            ("prometheus.io/path", "/metrics".to_owned()),
        ] {
            assert_eq!(
                annotations.get(key),
                Some(&value),
                "{app_id}: pod annotation {key} must lead Prometheus to the shim's GET /metrics on {listen}"
            );
        }
    }
}

#[test]
fn guests_may_call_only_their_own_dapr() {
    for app_id in APP_IDS {
        let app = container(&pod_spec(&deployment(app_id)), app_id);
        let dapr_url = env(&app, "DAPR_URL").unwrap_or_else(|| panic!("{app_id}: DAPR_URL is not set"));
        let dapr =
            DaprUrl::parse(Some(&dapr_url)).unwrap_or_else(|e| panic!("{app_id}: the app refuses {e}"));
        let (scheme, default_port) = if dapr.https { ("https", 443) } else { ("http", 80) };
        // The shim's patterns always name the port; DAPR_URL may leave it to the scheme.
        let has_port = dapr.authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
        let expected = if has_port {
            format!("{scheme}://{}", dapr.authority)
        } else {
            format!("{scheme}://{}:{default_port}", dapr.authority)
        };
        assert_eq!(
            env(&app, "WASMTIME_CUSTOM_ALLOWED_OUTBOUND_HOSTS"),
            Some(expected),
            "{app_id}: the guest may call exactly its Dapr endpoint, the scheme://host:port of DAPR_URL \
             {dapr_url:?} (unset, it could call anything)"
        );
    }
}

#[test]
fn services_expose_each_deployment_on_port_80() {
    for app_id in APP_IDS {
        let spec = service(app_id).spec.unwrap_or_else(|| panic!("Service {app_id}: no spec"));
        let template = deployment(app_id).spec.map(|s| s.template).unwrap_or_default();
        let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        assert!(!selector.is_empty(), "Service {app_id}: no selector");
        for (key, value) in &selector {
            assert_eq!(
                labels.get(key),
                Some(value),
                "Service {app_id}: selector {key} does not match the Deployment's pod labels"
            );
        }
        let ports = spec.ports.unwrap_or_default();
        assert_eq!(ports.len(), 1, "Service {app_id}: one port");
        assert_eq!(ports[0].port, 80, "Service {app_id}: port");
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into())),
            "Service {app_id}: targetPort"
        );
    }
}

#[test]
fn components_are_bindings_scoped_to_app_ids() {
    let secret_keys = secret_keys();
    for c in components() {
        let name = &c.metadata.name;
        assert_eq!(c.api_version, "dapr.io/v1alpha1", "{name}");
        assert!(
            c.spec.kind == SERVICE_BUS || c.spec.kind == BLOB_STORAGE,
            "{name}: unexpected type {}",
            c.spec.kind
        );
        assert_eq!(c.spec.version, "v1", "{name}");
        assert!(
            !c.scopes.is_empty() && c.scopes.iter().all(|s| APP_IDS.contains(&s.as_str())),
            "{name}: scopes {:?} must name app ids of this flow (unscoped, every daprd of the namespace loads it)",
            c.scopes
        );
        let direction = c.value("direction");
        assert!(matches!(direction.as_deref(), Some("input" | "output")), "{name}: direction {direction:?}");
        assert_eq!(c.is_input(), c.value("route").is_some(), "{name}: a route exactly on input bindings");
        let target = if c.spec.kind == SERVICE_BUS { "queueName" } else { "containerName" };
        assert!(c.value(target).is_some(), "{name}: no {target}");

        for entry in &c.spec.metadata {
            if let Some(reference) = &entry.secret_key_ref {
                assert_eq!(reference.name, SECRET, "{name}");
                assert!(
                    secret_keys.contains(&reference.key),
                    "{name}: secret key {:?} is not in app/deploy/secrets.env.example {secret_keys:?}",
                    reference.key
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
        assert_eq!(
            input.scopes,
            [app_id],
            "{}: delivers to {route}, an endpoint of {app_id}",
            input.metadata.name
        );
        match plan("OPTIONS", route, b"") {
            Plan::Reply(reply) if (200..300).contains(&reply.status) => {}
            other => panic!("the app must answer Dapr's OPTIONS probe of {route} with 2xx, plans {other:?}"),
        }
        for delivery in ["Express", "Standard"] {
            let order = format!(r#"{{"orderId":1,"delivery":"{delivery}"}}"#);
            let Plan::Call(call) = plan("POST", route, order.as_bytes()) else {
                panic!("the app does not call a binding for a {delivery} order on {route}")
            };
            let output = components.iter().find(|c| c.metadata.name == call.binding && !c.is_input());
            let output = output.unwrap_or_else(|| {
                panic!("{route} calls {}, which no output Component defines", call.binding)
            });
            assert_eq!(output.scopes, [app_id], "{}: called by {app_id} only", output.metadata.name);
            called.insert(call.binding);
        }
    }
    assert_eq!(called, BTreeSet::from(OUTPUT_BINDINGS.map(String::from)), "bindings the app calls");

    // A queue written by one binding is read by another, and both agree on the
    // settings the queue is created with (whichever daprd finds it missing).
    for output in components.iter().filter(|c| c.spec.kind == SERVICE_BUS && !c.is_input()) {
        let queue = output.value("queueName");
        let input = components.iter().find(|c| c.is_input() && c.value("queueName") == queue);
        let input = input.unwrap_or_else(|| {
            panic!("{} writes {queue:?}, which no input binding reads", output.metadata.name)
        });
        for key in ["maxDeliveryCount", "lockDurationInSec"] {
            assert_eq!(
                output.value(key),
                input.value(key),
                "{key} of {} and {}",
                output.metadata.name,
                input.metadata.name
            );
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
        let values: Value =
            yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        let shared = &values["shared"];
        let app_id =
            scalar(&shared["appId"]).unwrap_or_else(|| panic!("{}: no shared.appId", path.display()));
        assert_eq!(app_id, stem, "{}: named after its app id", path.display());
        assert!(APP_IDS.contains(&app_id.as_str()), "{app_id}: no Deployment of that name");

        // The chart names the Service `<appId>-dapr`, Dapr's HTTP API on 3500.
        let app = container(&pod_spec(&deployment(&app_id)), &app_id);
        let dapr = DaprUrl::parse(env(&app, "DAPR_URL").as_deref()).expect("DAPR_URL parses");
        assert!(
            in_namespace(&dapr.authority, &format!("{app_id}-dapr"), Some("3500")),
            "{app_id}: DAPR_URL must point at the Service {app_id}-dapr:3500 of its Dapr Shared release, \
             not {}",
            dapr.authority
        );
        assert_eq!(
            scalar(&values["fullnameOverride"]),
            Some(format!("{app_id}-dapr")),
            "{app_id}: the release's Deployment is named like its Service"
        );

        // daprd's --app-channel-address and --app-port: the app's Service.
        let remote = scalar(&shared["remoteURL"]).unwrap_or_default();
        assert!(
            in_namespace(&remote, &app_id, None),
            "{app_id}: remoteURL {remote:?} is not Service {app_id}"
        );
        let service_port = service(&app_id).spec.and_then(|s| s.ports).map(|p| p[0].port.to_string());
        assert_eq!(scalar(&shared["remotePort"]), service_port, "{app_id}: remotePort is the Service's port");

        assert_eq!(scalar(&shared["strategy"]).as_deref(), Some("deployment"), "{app_id}: shared.strategy");
        let replicas = shared["deployment"]["replicas"].as_u64();
        assert!(replicas.is_some_and(|r| r > 0), "{app_id}: shared.deployment.replicas must be fixed");
        let health = &shared["daprd"]["appHealth"];
        assert_eq!(health["enabled"].as_bool(), Some(true), "{app_id}: app health check");
        assert_eq!(
            scalar(&health["checkPath"]).as_deref(),
            Some("/healthz"),
            "{app_id}: the chart reads checkPath"
        );
        app_ids.insert(app_id);
    }
    assert_eq!(app_ids, BTreeSet::from(APP_IDS.map(String::from)), "one values file per app id");
}

// ---- the rendered objects ----

/// A Dapr Component (`dapr.io/v1alpha1`), as far as the checks need it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Component {
    api_version: String,
    metadata: ComponentMeta,
    spec: ComponentSpec,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
struct ComponentMeta {
    name: String,
}

#[derive(Deserialize)]
struct ComponentSpec {
    #[serde(rename = "type")]
    kind: String,
    version: String,
    metadata: Vec<MetadataEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataEntry {
    name: String,
    value: Option<Value>,
    secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize)]
struct SecretKeyRef {
    name: String,
    key: String,
}

impl Component {
    /// The plain `value` of a metadata entry, as text.
    fn value(&self, key: &str) -> Option<String> {
        let entry = self.spec.metadata.iter().find(|m| m.name == key)?;
        scalar(entry.value.as_ref()?)
    }

    fn is_input(&self) -> bool {
        self.value("direction").as_deref() == Some("input")
    }
}

fn components() -> Vec<Component> {
    rendered()
        .iter()
        .filter(|doc| kind_of(doc) == "Component")
        .map(|doc| {
            yaml_serde::from_value(doc.clone())
                .unwrap_or_else(|e| panic!("Component {} does not read as one: {e}", name_of(doc)))
        })
        .collect()
}

/// A YAML scalar as text (strings, numbers, booleans), as Dapr reads metadata.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// The one rendered object of `kind` named `wanted`, as type `T`.
fn object<T: serde::de::DeserializeOwned>(kind: &str, wanted: &str) -> T {
    let mut found = rendered().iter().filter(|doc| kind_of(doc) == kind && name_of(doc) == wanted);
    let doc = found.next().unwrap_or_else(|| panic!("app/deploy renders no {kind} {wanted}"));
    assert!(found.next().is_none(), "app/deploy renders two {kind}s named {wanted}");
    yaml_serde::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{kind} {wanted} does not read as one: {e}"))
}

fn deployment(name: &str) -> Deployment {
    object("Deployment", name)
}

fn service(name: &str) -> Service {
    object("Service", name)
}

fn pod_spec(deployment: &Deployment) -> PodSpec {
    let spec = deployment.spec.as_ref().and_then(|s| s.template.spec.clone());
    spec.unwrap_or_else(|| panic!("Deployment {:?} has no pod spec", deployment.metadata.name))
}

/// The pod's only container.
fn container(pod: &PodSpec, app_id: &str) -> Container {
    assert_eq!(pod.containers.len(), 1, "{app_id}: the pod must hold the app container only (no sidecar)");
    pod.containers[0].clone()
}

/// The seconds of the container's preStop hook, which must be the kubelet's
/// sleep action (a wasm image has no shell for an exec hook).
fn pre_stop_sleep(container: &Container, app_id: &str) -> u64 {
    let hook = container.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
    let hook = hook.unwrap_or_else(|| {
        panic!(
            "{app_id}: no preStop hook, so SIGTERM comes while the Service may still send the pod requests"
        )
    });
    assert!(
        hook.exec.is_none() && hook.http_get.is_none() && hook.tcp_socket.is_none(),
        "{app_id}: the preStop hook must be a sleep only (a wasm image has no shell, and the app no hook route)"
    );
    let sleep = hook.sleep.as_ref().unwrap_or_else(|| panic!("{app_id}: the preStop hook is not a sleep"));
    u64::try_from(sleep.seconds).ok().filter(|&s| s > 0).unwrap_or_else(|| {
        panic!("{app_id}: preStop sleeps {} s; it must outlast the endpoint removal", sleep.seconds)
    })
}

fn env(container: &Container, key: &str) -> Option<String> {
    container.env.as_ref()?.iter().find(|e| e.name == key)?.value.clone()
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
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .collect()
}

// ---- files and tools ----

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `kubectl kustomize app/deploy`, rendered and parsed once per test run.
fn rendered() -> &'static [Value] {
    static RENDERED: OnceLock<Vec<Value>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let dir = deploy_dir().display().to_string();
        let text = testbed::tool::run("kubectl", &["kustomize", &dir])
            .unwrap_or_else(|e| panic!("`kubectl kustomize {dir}` failed; fix the kustomization:\n{e:#}"));
        yaml_serde::Deserializer::from_str(&text)
            .map(|doc| {
                Value::deserialize(doc).unwrap_or_else(|e| panic!("kubectl kustomize printed bad YAML: {e}"))
            })
            .filter(|doc| !doc.is_null())
            .collect()
    })
}
