//! A real OCI registry on loopback: the CNCF distribution registry
//! (Debian's `docker-registry`) serving plain HTTP on `127.0.0.1`, storing
//! in a temp dir, without authentication; images are pushed to it with
//! `skopeo`, the command the README gives users. Nodes then pull from it as
//! they pull from a cluster's registry.
//!
//! containerd needs no registry configuration for it (no `hosts.toml`, no
//! `config_path`): for a registry on a loopback address, CRI's pull on 1.7
//! and on 2.1 (where it goes through the transfer service) speaks plain
//! HTTP by itself (`ctr images pull` is told so with `--plain-http`).

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::{free_port, poll, tool};

/// How long the registry may take to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The media types a manifest request accepts: an image index (a list of
/// per-platform manifests) or a single image manifest, OCI or Docker.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A registry process of our own; killed when dropped.
pub struct Registry {
    dir: TempDir,
    port: u16,
    process: Child,
}

/// A manifest or index as the registry serves it.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    /// `Content-Type`: the document's media type.
    pub media_type: String,
    /// `Docker-Content-Digest`: the digest clients resolve the tag to.
    pub digest: String,
    pub body: Vec<u8>,
}

impl Registry {
    /// Starts `docker-registry serve` on a free loopback port with a config
    /// of its own (storage in a temp dir, no auth); returns once `GET /v2/`
    /// answers 200.
    pub fn start() -> Result<Registry> {
        // Through the one tool runner first, so a missing registry says how to install it.
        tool::run("docker-registry", &["--version"])?;
        let dir = tempfile::Builder::new().prefix("wtc-registry-").tempdir().context("create a temp dir")?;
        let port = free_port().context("find a free port for the registry")?;
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_text(&dir.path().join("storage"), port))
            .with_context(|| format!("write {}", config.display()))?;
        let log_path = dir.path().join("registry.log");
        let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let process = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("share the registry's log file")?)
            .stderr(log)
            .spawn()
            .context("start docker-registry")?;
        let mut registry = Registry { dir, port, process };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let url = self.url("/v2/");
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().into();
        poll::until_ok(&format!("the registry to answer GET {url}"), START_TIMEOUT, || {
            if let Some(status) = self.process.try_wait().context("ask whether the registry runs")? {
                bail!("the registry exited at start ({status}); its log:\n{}", self.log());
            }
            Ok(agent.get(&url).call().is_ok().then_some(()))
        })
    }

    /// `127.0.0.1:PORT`, the registry part of its references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The reference of `name_tag` (`NAME:TAG`) in this registry:
    /// `127.0.0.1:PORT/NAME:TAG`.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.host())
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host())
    }

    /// Pushes the OCI archive at `archive` as `name_tag` (`NAME:TAG`) with
    /// the README's command; returns the image's reference. `--all` copies
    /// every platform of an index; `--preserve-digests` keeps every
    /// manifest and the index byte for byte (without it skopeo gzips the
    /// archive's uncompressed layers for a registry, and so rewrites the
    /// manifests and the index under new digests).
    pub fn push(&self, archive: &Path, name_tag: &str) -> Result<String> {
        let reference = self.reference(name_tag);
        tool::stdout(
            Command::new("skopeo")
                .args(["copy", "--all", "--preserve-digests", "--dest-tls-verify=false"])
                .arg(format!("oci-archive:{}", archive.display()))
                .arg(format!("docker://{reference}")),
        )
        .with_context(|| format!("push {} to the registry as {name_tag}", archive.display()))?;
        Ok(reference)
    }

    /// The manifest or index the registry serves for `name` at `reference`
    /// (a tag or a digest), as a client asking for any of them gets it.
    pub fn manifest(&self, name: &str, reference: &str) -> Result<ServedManifest> {
        let url = self.url(&format!("/v2/{name}/manifests/{reference}"));
        let mut response =
            ureq::get(&url).header("accept", MANIFEST_TYPES).call().with_context(|| format!("GET {url}"))?;
        let header = |name: &str| -> Result<String> {
            let value =
                response.headers().get(name).with_context(|| format!("GET {url}: no {name} header"))?;
            Ok(value.to_str().with_context(|| format!("GET {url}: {name} is not text"))?.to_string())
        };
        let media_type = header("content-type")?;
        let digest = header("docker-content-digest")?;
        let body =
            response.body_mut().read_to_vec().with_context(|| format!("read the answer to GET {url}"))?;
        Ok(ServedManifest { media_type, digest, body })
    }

    /// The registry's own log: warnings, errors and one access line per request.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn config_text(storage: &Path, port: u16) -> String {
    format!(
        "# Written by testbed: a registry on loopback, plain HTTP, no auth.\n\
         version: 0.1\n\
         # Warnings and errors, besides the access log (a line per request).\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        storage = storage.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_answers_on_loopback_until_dropped() {
        let registry = Registry::start().unwrap();
        let host = registry.host();
        assert!(host.starts_with("127.0.0.1:"), "{host}");
        assert_eq!(registry.reference("a/b:c"), format!("{host}/a/b:c"));
        let missing = registry.manifest("nothing/here", "latest").unwrap_err();
        assert!(format!("{missing:#}").contains("/v2/nothing/here/manifests/latest"), "{missing:#}");
        drop(registry);
        assert!(std::net::TcpStream::connect(&host).is_err(), "{host} still answers");
    }
}
