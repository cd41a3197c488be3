//! The images through a real OCI registry, as a cluster gets them: the
//! archives pushed to a registry on loopback with the README's `skopeo`
//! command, pulled by the kubelet's CRI `PullImage` on a node whose
//! containerd got the runtime from the node installer, an arm64 node's
//! view of the multi-platform images, and pods from the pulled wasm-layer
//! image, the second reusing the artifact the shim precompiled for the
//! first. On containerd 1.7 and 2.1.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use node_installer::cri::{self, RuntimeClient};
use serde_json::Value;
use support::http;
use testbed::{Containerd, InstalledNode, Paths, Registry, Version, kubelet, poll, tool};
use tonic::transport::Channel;

mod support;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The label the shim puts on a wasm layer's content, naming its artifact.
const PRECOMPILED: &str = "runwasi.io/precompiled/wasmtime-custom/";
/// What the shim logs each time it compiles an image's wasm layers.
const PRECOMPILING: &str = "precompiling layers for image";
/// A namespace of containerd's that stands in for an arm64 node: its
/// content is only what that node's pull fetched (the k8s.io namespace
/// already holds what this node's CRI pulled).
const ARM64_NODE: &str = "arm64-node";

type ImageClient = ImageServiceClient<Channel>;

/// An archive of `target/images` and where the README has users push it.
struct Image {
    archive: &'static str,
    name: &'static str,
    tag: &'static str,
    /// Published for amd64 and arm64 nodes alike: an index with both.
    multi_platform: bool,
}

impl Image {
    fn name_tag(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

const APP_WASM: Image =
    Image { archive: "app-wasm.tar", name: "wasmtime-custom/app", tag: "wasm", multi_platform: false };
const IMAGES: [Image; 3] = [
    APP_WASM,
    Image { archive: "app.tar", name: "wasmtime-custom/app", tag: "latest", multi_platform: true },
    Image {
        archive: "node-installer.tar",
        name: "wasmtime-custom/node-installer",
        tag: "latest",
        multi_platform: true,
    },
];

/// This machine's architecture as OCI platforms name it.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// containerd's CRI image service on `socket` (the kubelet's second client).
async fn image_client(socket: &Path) -> Result<ImageClient> {
    Ok(ImageServiceClient::new(cri::channel(socket).await?))
}

/// The descriptor an OCI archive's `index.json` names: its media type and
/// digest (an index for a multi-platform image, else a manifest).
fn archive_top(archive: &Path) -> Result<(String, String)> {
    let text = tool::run("tar", &["-xOf", &archive.display().to_string(), "index.json"])?;
    let index: Value =
        serde_json::from_str(&text).with_context(|| format!("{}'s index.json", archive.display()))?;
    let top = &index["manifests"][0];
    let field = |name: &str| {
        top[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{}: index.json has no {name}", archive.display()))
    };
    Ok((field("mediaType")?, field("digest")?))
}

/// The `(os/architecture, digest)` of every manifest an index lists.
fn platforms(index: &Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let platform = &m["platform"];
            let os_arch = format!(
                "{}/{}",
                platform["os"].as_str().unwrap_or("?"),
                platform["architecture"].as_str().unwrap_or("?")
            );
            (os_arch, m["digest"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn json(bytes: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(bytes).with_context(|| format!("{what} is not JSON"))
}

fn config_digest(manifest: &Value) -> Result<String> {
    manifest["config"]["digest"].as_str().map(str::to_string).context("the manifest names no config")
}

/// Pushes `image`, pulls it through CRI as the kubelet does and checks what
/// the node resolved; for an index, also what an arm64 node resolves.
/// Returns what is wrong with the image as published, if anything (a
/// multi-platform image that is not an index with linux/arm64), so the rest
/// of the path is still tested.
async fn push_and_pull(
    version: Version,
    registry: &Registry,
    containerd: &Containerd,
    images: &mut ImageClient,
    paths: &Paths,
    image: &Image,
) -> Result<Option<String>> {
    let archive = paths.image(image.archive)?;
    let reference = registry.push(&archive, &image.name_tag())?;

    // The registry serves the archive's index or manifest under its own digest.
    let (archive_type, archive_digest) = archive_top(&archive)?;
    let served = registry.manifest(image.name, image.tag)?;
    assert_eq!(
        (served.media_type.as_str(), served.digest.as_str()),
        (archive_type.as_str(), archive_digest.as_str()),
        "{reference}: the registry serves what the archive holds (skopeo --preserve-digests)"
    );
    let top = json(&served.body, &reference)?;

    // PullImage as the kubelet sends it, then ImageStatus.
    let spec = ImageSpec { image: reference.clone(), ..Default::default() };
    let pulled = images
        .pull_image(PullImageRequest { image: Some(spec.clone()), ..Default::default() })
        .await
        .with_context(|| format!("CRI PullImage {reference}"))?
        .into_inner()
        .image_ref;
    let status = images
        .image_status(ImageStatusRequest { image: Some(spec), verbose: false })
        .await
        .with_context(|| format!("CRI ImageStatus {reference}"))?
        .into_inner()
        .image
        .with_context(|| format!("ImageStatus: {reference} is not on the node after PullImage"))?;
    assert!(status.repo_tags.contains(&reference), "{reference} in {:?}", status.repo_tags);
    let by_digest = format!("{}/{}@{}", registry.host(), image.name, served.digest);
    assert!(status.repo_digests.contains(&by_digest), "{by_digest} in {:?}", status.repo_digests);
    assert_eq!(status.id, pulled, "{reference}: PullImage and ImageStatus name one image");

    // The image id is the config of the manifest this node resolved.
    let host_platform = format!("linux/{}", host_architecture());
    let resolved = match served.media_type.as_str() {
        INDEX => {
            let listed = platforms(&top);
            let (_, digest) = listed
                .iter()
                .find(|(platform, _)| *platform == host_platform)
                .with_context(|| format!("{reference}: the index has no {host_platform}: {listed:?}"))?;
            json(&registry.manifest(image.name, digest)?.body, digest)?
        }
        MANIFEST => top.clone(),
        other => bail!("{reference}: the registry serves a {other}, neither an OCI index nor a manifest"),
    };
    assert_eq!(
        status.id,
        config_digest(&resolved)?,
        "{reference}: the image id is the resolved manifest's config"
    );
    println!(
        "containerd {version}: PullImage {reference} ({}): image {}, {} bytes",
        served.media_type, status.id, status.size
    );

    if !image.multi_platform {
        return Ok(None);
    }
    let listed = if served.media_type == INDEX { platforms(&top) } else { Vec::new() };
    let Some((_, arm64)) = listed.iter().find(|(platform, _)| platform == "linux/arm64") else {
        let what = if listed.is_empty() {
            format!("a single manifest ({})", served.media_type)
        } else {
            format!("an index of {:?} only", listed.iter().map(|(platform, _)| platform).collect::<Vec<_>>())
        };
        return Ok(Some(format!(
            "{} (pushed as {reference}) is {what}, not an OCI index listing linux/arm64: Arm64 nodes \
             (AKS's D2pds_v5) cannot pull it. Rebuild the archives (`cargo xtask images && cargo xtask \
             installer-image`) with an index of linux/amd64 and linux/arm64.",
            image.archive
        )));
    };
    arm64_node_resolves(version, containerd, &reference, arm64, &listed)?;
    println!("containerd {version}: an arm64 node's pull of {reference} resolves linux/arm64 {arm64}");
    Ok(None)
}

/// `ctr images pull --platform linux/arm64` as on an arm64 node: it fetches
/// the index's linux/arm64 manifest, whose config says arm64, and no other
/// platform's manifest.
fn arm64_node_resolves(
    version: Version,
    containerd: &Containerd,
    reference: &str,
    arm64: &str,
    listed: &[(String, String)],
) -> Result<()> {
    let mut pull = vec!["-n", ARM64_NODE, "images", "pull", "--platform", "linux/arm64", "--plain-http"];
    // ctr 2.x also fetches every other platform's manifest and config unless
    // told not to; 1.7 fetches only the platform asked for.
    if version == Version::V2_1 {
        pull.push("--skip-metadata");
    }
    pull.push(reference);
    containerd.ctr_ok(&pull)?;
    let content = containerd.ctr_ok(&["-n", ARM64_NODE, "content", "ls", "-q"])?;
    let fetched: Vec<&str> = content.lines().map(str::trim).collect();
    for (platform, digest) in listed {
        assert_eq!(
            fetched.contains(&digest.as_str()),
            platform == "linux/arm64",
            "{reference}: whether an arm64 node fetched the {platform} manifest {digest}"
        );
    }
    let get = |digest: &str| -> Result<Value> {
        json(containerd.ctr_ok(&["-n", ARM64_NODE, "content", "get", digest])?.as_bytes(), digest)
    };
    let config = get(&config_digest(&get(arm64)?)?)?;
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("arm64")),
        "{reference}: the config of its linux/arm64 manifest"
    );
    Ok(())
}

/// A pod with one container, `app`, and the pod's IP.
struct Pod {
    id: String,
    container: String,
    ip: String,
}

/// Runs a pod as the kubelet does from a pod spec whose one container is
/// `reference` listening on port 8080.
async fn run_app_pod(
    runtime: &mut RuntimeClient,
    images: &mut ImageClient,
    name: &str,
    reference: &str,
    logs: &Path,
) -> Result<Pod> {
    let (id, sandbox) = kubelet::run_pod(runtime, "default", name, logs).await?;
    let ip = kubelet::pod_ip(runtime, &id).await?;
    // The kubelet's IfNotPresent: ImageStatus finds the pulled image, and
    // the container is created from its id, with the user's reference beside it.
    let spec = ImageSpec { image: reference.into(), ..Default::default() };
    let image_id = images
        .image_status(ImageStatusRequest { image: Some(spec), verbose: false })
        .await
        .with_context(|| format!("CRI ImageStatus {reference}"))?
        .into_inner()
        .image
        .with_context(|| format!("{reference} is not on the node"))?
        .id;
    let image = ImageSpec { image: image_id, user_specified_image: reference.into(), ..Default::default() };
    let mut config =
        kubelet::container_config("app", image, &[("WASMTIME_CUSTOM_LISTEN", "0.0.0.0:8080".into())], &[]);
    // Both pods log into one folder.
    config.log_path = format!("{name}-app.log");
    let container = kubelet::start_container(runtime, &id, &sandbox, config).await?;
    Ok(Pod { id, container, ip })
}

/// Waits until the pod's app answers `GET /healthz` with 200 `Healthy`.
async fn wait_healthy_app(pod: &Pod) -> Result<()> {
    let url = format!("http://{}:8080/healthz", pod.ip);
    poll::until_async(
        &format!("the app to listen on {}:8080", pod.ip),
        Duration::from_secs(30),
        async || Ok(tokio::net::TcpStream::connect((pod.ip.as_str(), 8080)).await.ok().map(drop)),
    )
    .await?;
    let health = http::call("GET", &url, "", &[])?;
    assert_eq!((health.status, health.body.as_str()), (200, "Healthy"), "GET {url}");
    Ok(())
}

async fn remove_pod(runtime: &mut RuntimeClient, pod: &Pod) -> Result<()> {
    runtime.stop_container(StopContainerRequest { container_id: pod.container.clone(), timeout: 5 }).await?;
    runtime.remove_container(RemoveContainerRequest { container_id: pod.container.clone() }).await?;
    runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
    Ok(())
}

/// The precompiled artifacts in the k8s.io content store (each carries a
/// `<label>/original` naming the layer it was compiled from), and whether
/// the wasm layer `layer` carries the label naming its artifact.
fn precompiled(containerd: &Containerd, layer: &str) -> Result<(usize, bool)> {
    let content = containerd.ctr_ok(&["-n", "k8s.io", "content", "ls"])?;
    let artifacts = content.lines().filter(|l| l.contains(PRECOMPILED) && l.contains("/original=")).count();
    let labelled = content
        .lines()
        .filter(|l| l.starts_with(layer))
        .any(|l| l.split(',').any(|label| label.contains(PRECOMPILED) && !label.contains("/original=")));
    Ok((artifacts, labelled))
}

async fn pulled_from_a_registry(version: Version) -> Result<()> {
    let paths = Paths::from_env()?;
    let registry = Registry::start()?;
    let installed = InstalledNode::start(&paths, version)?;
    // The sandbox image stays a local one: the node's config pins it.
    installed.containerd.import_into("k8s.io", "pause.tar", &[])?;
    let unpublishable = drive(version, &installed, &registry, &paths).await.map_err(|e| {
        e.context(format!(
            "containerd {version}'s log ends with:\n{}\n\nthe registry's log ends with:\n{}",
            installed.containerd.log_tail(200),
            last_lines(&registry.log(), 40)
        ))
    })?;
    // Last, so that the rest of the path is tested either way.
    ensure!(unpublishable.is_empty(), "{}", unpublishable.join("\n"));
    Ok(())
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Pushes and pulls every image, then runs the pods; returns what is wrong
/// with the images as published.
async fn drive(
    version: Version,
    installed: &InstalledNode,
    registry: &Registry,
    paths: &Paths,
) -> Result<Vec<String>> {
    let socket = installed.node.socket();
    let mut runtime = cri::connect(&socket).await?;
    cri::wait_healthy(&socket, Some(kubelet::HANDLER), Duration::from_secs(30)).await?;
    let mut images = image_client(&socket).await?;
    let containerd = &installed.containerd;

    let mut unpublishable = Vec::new();
    for image in &IMAGES {
        if let Some(problem) = push_and_pull(version, registry, containerd, &mut images, paths, image).await?
        {
            unpublishable.push(problem);
        }
    }

    // Pods from the pulled wasm-layer image: the first compiles, the second reuses.
    let reference = registry.reference(&APP_WASM.name_tag());
    let manifest = json(&registry.manifest(APP_WASM.name, APP_WASM.tag)?.body, &reference)?;
    let layer = manifest["layers"][0]["digest"].as_str().context("app:wasm has no layer")?.to_string();
    let logs = tempfile::tempdir()?;
    let mut pods = Vec::new();
    let mut to_healthy = Vec::new();
    for name in ["wasm-pod-1", "wasm-pod-2"] {
        let begun = Instant::now();
        let pod = run_app_pod(&mut runtime, &mut images, name, &reference, logs.path()).await?;
        wait_healthy_app(&pod).await?;
        to_healthy.push(begun.elapsed());
        pods.push(pod);
        let (artifacts, labelled) = precompiled(containerd, &layer)?;
        let compiles = containerd.log().matches(PRECOMPILING).count();
        assert!(labelled, "after {name}: the wasm layer {layer} names its artifact ({PRECOMPILED}...)");
        assert_eq!((artifacts, compiles), (1, 1), "after {name}: one artifact, compiled once");
    }
    println!(
        "containerd {version}: pods from the pulled {reference}: GET /healthz 200 Healthy; RunPodSandbox to \
         200: first {:?} (compiled, 1 artifact labelled on layer {layer}), second {:?} (reused, still 1)",
        to_healthy[0], to_healthy[1]
    );

    for pod in &pods {
        remove_pod(&mut runtime, pod).await?;
    }
    Ok(unpublishable)
}

#[tokio::test(flavor = "current_thread")]
async fn images_pulled_from_a_registry_run_on_containerd_1_7() -> Result<()> {
    pulled_from_a_registry(Version::V1_7).await
}

#[tokio::test(flavor = "current_thread")]
async fn images_pulled_from_a_registry_run_on_containerd_2_1() -> Result<()> {
    pulled_from_a_registry(Version::V2_1).await
}
