//! The installer's view of its own Kubernetes Node: a label says the runtime is ready.
//!
//! The `RuntimeClass` for wasmtime-custom selects nodes by [`READY_LABEL`], so the
//! scheduler only places Wasm pods on nodes where the shim is installed, registered in
//! containerd's config and healthy. The installer puts the label on once that is true
//! ([`mark_ready`]) and takes it off before it removes the shim ([`unmark`]), so that no
//! pod is scheduled on a node that cannot run it. [`VERSION_ANNOTATION`] records which
//! shim version is on the node, for operators and for upgrades.
//!
//! Both are changed with a JSON merge patch on `/api/v1/nodes/{name}` that names only
//! these two keys: other labels and annotations (owned by the kubelet, the cloud provider
//! or other controllers) are left as they are, and no read-modify-write race is possible.
//! The ServiceAccount needs `get` and `patch` on `nodes` (node-installer/deploy).

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

/// Label put on a node once the runtime is installed and healthy; the RuntimeClass selects on it.
pub const READY_LABEL: &str = "wasmtime-custom.io/runtime";
pub const READY_VALUE: &str = "ready";
/// Annotation with the installed shim version.
pub const VERSION_ANNOTATION: &str = "wasmtime-custom.io/version";

/// What to tell the operator when the ServiceAccount lacks the RBAC rules.
const RBAC_HINT: &str = "the installer's ServiceAccount may not get/patch nodes: apply node-installer/deploy \
     (ClusterRole with nodes get/patch, bound to the installer's ServiceAccount) and check that the \
     DaemonSet runs as that ServiceAccount";

/// The Kubernetes Node the installer runs on, with the client that labels it.
#[derive(Clone)]
pub struct KubeNode {
    pub name: String,
    pub client: kube::Client,
}

impl KubeNode {
    /// Node `name`, reached through [`client`]'s configuration. Nothing is
    /// sent yet: a missing configuration fails here, before the node changes.
    pub async fn connect(name: String) -> anyhow::Result<KubeNode> {
        Ok(KubeNode { client: client().await?, name })
    }
}

// `kube::Client` has no `Debug`; the name is what identifies the node.
impl std::fmt::Debug for KubeNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeNode").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Adds READY_LABEL=READY_VALUE and VERSION_ANNOTATION=version to the node (a JSON merge patch on /api/v1/nodes/{name}).
pub async fn mark_ready(client: &kube::Client, node: &str, version: &str) -> anyhow::Result<()> {
    let patch = json!({
        "metadata": {
            "labels": { READY_LABEL: READY_VALUE },
            "annotations": { VERSION_ANNOTATION: version },
        }
    });
    merge_patch(client, node, &patch)
        .await
        .map_err(|err| explain(err, node, &format!("label node {node:?} {READY_LABEL}={READY_VALUE}")))
}

/// Removes the label and the annotation (merge patch with nulls). A node that no longer exists is not an error (log nothing, return Ok).
pub async fn unmark(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let patch = json!({
        "metadata": {
            "labels": { READY_LABEL: null },
            "annotations": { VERSION_ANNOTATION: null },
        }
    });
    match merge_patch(client, node, &patch).await {
        Ok(()) => Ok(()),
        // Nothing to unmark: the node (and its label) is already gone.
        Err(kube::Error::Api(status)) if is_not_found(&status) => Ok(()),
        Err(err) => Err(explain(err, node, &format!("remove the {READY_LABEL} label from node {node:?}"))),
    }
}

/// Whether the node carries READY_LABEL=READY_VALUE, and its VERSION_ANNOTATION value.
pub async fn readiness(client: &kube::Client, node: &str) -> anyhow::Result<(bool, Option<String>)> {
    let found = Api::<Node>::all(client.clone())
        .get(node)
        .await
        .map_err(|err| explain(err, node, &format!("read node {node:?}")))?;
    let ready = found
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(READY_LABEL))
        .is_some_and(|value| value == READY_VALUE);
    let version =
        found.metadata.annotations.and_then(|mut annotations| annotations.remove(VERSION_ANNOTATION));
    Ok((ready, version))
}

/// The client the installer uses: in-cluster service account config, or KUBECONFIG (kube::Client::try_default), with an error message that says which was tried and what to do.
pub async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.context(
        "no Kubernetes API configuration found: tried KUBECONFIG (or ~/.kube/config), then the in-cluster \
         ServiceAccount (KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT and the token under \
         /var/run/secrets/kubernetes.io/serviceaccount); run the installer as the DaemonSet of \
         node-installer/deploy (with automountServiceAccountToken) or set KUBECONFIG when running it by hand",
    )
}

/// Sends `patch` as a JSON merge patch (`application/merge-patch+json`) to the node.
async fn merge_patch(client: &kube::Client, node: &str, patch: &Value) -> Result<(), kube::Error> {
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}

// `Status::is_not_found`/`is_forbidden` in kube-core 5 only look at `reason`; an answer
// whose body is not a Kubernetes Status (a proxy in between) only has the HTTP code.
fn is_not_found(status: &kube::core::Status) -> bool {
    status.reason == "NotFound" || status.code == 404
}

fn is_forbidden(status: &kube::core::Status) -> bool {
    status.reason == "Forbidden" || status.code == 403
}

/// `err` from trying to `doing`, with what it means for the installer and what to do.
fn explain(err: kube::Error, node: &str, doing: &str) -> anyhow::Error {
    let what_to_do = match &err {
        kube::Error::Api(status) if is_forbidden(status) => RBAC_HINT.to_string(),
        kube::Error::Api(status) if is_not_found(status) => format!(
            "there is no node named {node:?}: NODE_NAME must be the node the installer runs on \
             (the DaemonSet sets it from spec.nodeName)"
        ),
        kube::Error::Api(status) if status.reason == "Unauthorized" || status.code == 401 => {
            "the API server rejected the installer's credentials: check that the ServiceAccount token is \
             mounted and not expired (restart the pod), or the KUBECONFIG in use"
                .to_string()
        }
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => {
            "the API server is overloaded or failing: retry later and check the control plane's health"
                .to_string()
        }
        kube::Error::Api(_) => "the API server refused the request: see its answer below".to_string(),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            "could not reach the API server: check the node's network to it (KUBERNETES_SERVICE_HOST, \
             network policies, API server allowlists) and retry"
                .to_string()
        }
        _ => "retry; if it persists, check the API server and the installer's Kubernetes configuration"
            .to_string(),
    };
    anyhow::Error::new(err).context(format!("could not {doing}: {what_to_do}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_server_stand_in::*;

    #[tokio::test]
    async fn mark_ready_merge_patches_exactly_the_label_and_the_version_annotation() {
        let server = ApiServerStandIn::start(
            200,
            node_json(json!({ READY_LABEL: READY_VALUE }), json!({ VERSION_ANNOTATION: "1.2.3" })),
        )
        .await;

        mark_ready(&server.client(), NODE, "1.2.3").await.expect("mark_ready");

        assert_only_a_merge_patch_of_the_node(
            &server,
            json!({
                "metadata": {
                    "labels": { "wasmtime-custom.io/runtime": "ready" },
                    "annotations": { "wasmtime-custom.io/version": "1.2.3" },
                }
            }),
        );
    }

    #[tokio::test]
    async fn unmark_merge_patches_nulls_for_the_label_and_the_annotation() {
        let server = ApiServerStandIn::start(200, node_json(json!({}), json!({}))).await;

        unmark(&server.client(), NODE).await.expect("unmark");

        assert_only_a_merge_patch_of_the_node(
            &server,
            json!({
                "metadata": {
                    "labels": { "wasmtime-custom.io/runtime": null },
                    "annotations": { "wasmtime-custom.io/version": null },
                }
            }),
        );
    }

    #[tokio::test]
    async fn unmark_of_a_node_that_no_longer_exists_is_ok() {
        let server =
            ApiServerStandIn::start(404, status_json(404, "NotFound", "nodes \"wasm-node-1\" not found"))
                .await;

        unmark(&server.client(), NODE).await.expect("a missing node has nothing to unmark");

        assert_eq!(only_request(&server).method, "PATCH");
    }

    #[tokio::test]
    async fn forbidden_names_the_node_and_says_to_apply_the_rbac() {
        let server = ApiServerStandIn::start(
            403,
            status_json(
                403,
                "Forbidden",
                "nodes \"wasm-node-1\" is forbidden: User \"system:serviceaccount:x:y\" cannot patch resource \"nodes\"",
            ),
        )
        .await;

        let err = mark_ready(&server.client(), NODE, "1.2.3").await.expect_err("403 must fail");

        let text = format!("{err:#}");
        assert!(text.contains("\"wasm-node-1\""), "{text}");
        assert!(text.contains("apply node-installer/deploy"), "{text}");
        assert!(text.contains("nodes get/patch"), "{text}");
        // The API server's own words are kept.
        assert!(text.contains("cannot patch resource"), "{text}");
    }

    #[tokio::test]
    async fn forbidden_unmark_is_an_error_too() {
        let server = ApiServerStandIn::start(403, status_json(403, "Forbidden", "forbidden")).await;

        let err = unmark(&server.client(), NODE).await.expect_err("403 must fail");

        let text = format!("{err:#}");
        assert!(text.contains("\"wasm-node-1\""), "{text}");
        assert!(text.contains("apply node-installer/deploy"), "{text}");
    }

    #[tokio::test]
    async fn readiness_reads_the_label_and_the_version_annotation() {
        let server = ApiServerStandIn::start(
            200,
            node_json(
                json!({ READY_LABEL: READY_VALUE, "kubernetes.io/os": "linux" }),
                json!({ VERSION_ANNOTATION: "1.2.3" }),
            ),
        )
        .await;

        let readiness = readiness(&server.client(), NODE).await.expect("readiness");

        assert_eq!(readiness, (true, Some("1.2.3".to_string())));
        let request = only_request(&server);
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/api/v1/nodes/wasm-node-1");
    }

    #[tokio::test]
    async fn readiness_of_an_unmarked_node_is_false_without_version() {
        let server =
            ApiServerStandIn::start(200, node_json(json!({ READY_LABEL: "installing" }), json!({}))).await;

        let readiness = readiness(&server.client(), NODE).await.expect("readiness");

        assert_eq!(readiness, (false, None));
    }

    #[tokio::test]
    async fn readiness_of_a_missing_node_says_which_node() {
        let server =
            ApiServerStandIn::start(404, status_json(404, "NotFound", "nodes \"wasm-node-1\" not found"))
                .await;

        let err = readiness(&server.client(), NODE).await.expect_err("404 must fail");

        let text = format!("{err:#}");
        assert!(text.contains("\"wasm-node-1\""), "{text}");
        assert!(text.contains("NODE_NAME"), "{text}");
    }
}
