//! Deterministic OCI image archives (OCI image layout in a tar), written
//! without Docker: the same input always gives the same bytes and digests
//! (no timestamps, fixed owners and modes, sorted entries).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The layer type runwasi-based shims read straight from the content store.
pub const WASM_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";

/// Where the Wasm file sits in a plain image, and the image's entrypoint.
pub const ENTRYPOINT: &str = "/app.wasm";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The blobs of one image archive, by digest.
#[derive(Default)]
struct Blobs(BTreeMap<String, Vec<u8>>);

impl Blobs {
    /// Stores `bytes` and returns its descriptor.
    fn add(&mut self, media_type: &str, bytes: Vec<u8>) -> Value {
        let digest = sha256(&bytes);
        let descriptor = json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() });
        self.0.insert(digest, bytes);
        descriptor
    }

    fn add_json(&mut self, media_type: &str, value: &Value) -> Value {
        // Serialising a `Value` cannot fail.
        self.add(media_type, serde_json::to_vec(value).expect("JSON value serialises"))
    }
}

/// One entry of a plain image's single layer.
pub enum Entry {
    File { path: String, mode: u32, bytes: Vec<u8> },
    Symlink { path: String, target: String },
    Dir { path: String },
}

/// The plain image of a Wasm app: a one-file rootfs with the Wasm at
/// [`ENTRYPOINT`], for `linux/{arch}`. Works with every containerd version.
pub fn plain_wasm_image(name: &str, arch: &str, wasm: &[u8]) -> Result<Vec<u8>> {
    let entry =
        Entry::File { path: ENTRYPOINT.trim_start_matches('/').into(), mode: 0o644, bytes: wasm.to_vec() };
    plain_image(name, arch, &[entry], &[ENTRYPOINT])
}

/// A plain Linux image of one layer holding `entries`.
///
/// One platform manifest, not a multi-arch index: `containerd-shim-wasm`
/// reads the image's top object as a manifest, and an index there makes it
/// log a misleading "serde failed" warning at every start.
pub fn plain_image(name: &str, arch: &str, entries: &[Entry], entrypoint: &[&str]) -> Result<Vec<u8>> {
    let mut blobs = Blobs::default();
    let layer_tar = layer(entries)?;
    let diff_id = sha256(&layer_tar);
    let layer = blobs.add(TAR_LAYER, layer_tar);
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Entrypoint": entrypoint },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let config = blobs.add_json(CONFIG, &config);
    let manifest = json!({ "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer] });
    let mut top = blobs.add_json(MANIFEST, &manifest);
    top["platform"] = json!({ "architecture": arch, "os": "linux" });
    top["annotations"] = name_annotations(name);
    archive(blobs, top)
}

/// The wasm-layer image: the Wasm as a single layer of media type
/// [`WASM_LAYER`], platform `wasip1/wasm`. containerd >= 1.7.7 imports it
/// without unpacking, and the shim can cache a precompiled artifact for it.
pub fn wasm_layer_image(name: &str, wasm: &[u8]) -> Result<Vec<u8>> {
    let mut blobs = Blobs::default();
    let layer = blobs.add(WASM_LAYER, wasm.to_vec());
    let config = json!({
        "architecture": "wasm",
        "os": "wasip1",
        // A wasm layer is no rootfs layer: `diff_ids` stays empty, and the
        // label keeps configs of different images apart.
        "config": {
            "Entrypoint": [ENTRYPOINT],
            "Labels": { "io.wasmtime-custom.wasm-layer": layer["digest"] },
        },
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let config = blobs.add_json(CONFIG, &config);
    let manifest = json!({ "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer] });
    let mut top = blobs.add_json(MANIFEST, &manifest);
    top["platform"] = json!({ "architecture": "wasm", "os": "wasip1" });
    top["annotations"] = name_annotations(name);
    archive(blobs, top)
}

/// `ctr image import` names the image after `io.containerd.image.name`.
fn name_annotations(name: &str) -> Value {
    let tag = name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    json!({ "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag })
}

fn archive(blobs: Blobs, top: Value) -> Result<Vec<u8>> {
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": [top] });
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    append(&mut tar, "index.json", &serde_json::to_vec(&index)?)?;
    append_dir(&mut tar, "blobs/")?;
    append_dir(&mut tar, "blobs/sha256/")?;
    for (digest, bytes) in &blobs.0 {
        let hex = digest.trim_start_matches("sha256:");
        append(&mut tar, &format!("blobs/sha256/{hex}"), bytes)?;
    }
    tar.into_inner().context("could not finish the image archive")
}

fn layer(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        match entry {
            Entry::File { path, mode, bytes } => {
                let header = header(path, bytes.len(), *mode, tar::EntryType::Regular)?;
                tar.append(&header, bytes.as_slice()).with_context(|| format!("could not add {path}"))?;
            }
            Entry::Symlink { path, target } => {
                let mut header = header(path, 0, 0o777, tar::EntryType::Symlink)?;
                header.set_link_name(target).with_context(|| format!("bad link target {target}"))?;
                header.set_cksum();
                tar.append(&header, std::io::empty()).with_context(|| format!("could not add {path}"))?;
            }
            Entry::Dir { path } => append_dir(&mut tar, path)?,
        }
    }
    tar.into_inner().context("could not finish the layer")
}

fn header(path: &str, size: usize, mode: u32, kind: tar::EntryType) -> Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path).with_context(|| format!("bad path {path}"))?;
    header.set_size(size as u64);
    header.set_mode(mode);
    header.set_entry_type(kind);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    Ok(header)
}

fn append(tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) -> Result<()> {
    let header = header(path, bytes.len(), 0o644, tar::EntryType::Regular)?;
    tar.append(&header, bytes).with_context(|| format!("could not add {path}"))
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let header = header(path, 0, 0o755, tar::EntryType::Directory)?;
    tar.append(&header, std::io::empty()).with_context(|| format!("could not add {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut tar = tar::Archive::new(archive);
        tar.entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let path = entry.path().unwrap().display().to_string();
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
                (path, bytes)
            })
            .collect()
    }

    fn json_blob(files: &BTreeMap<String, Vec<u8>>, digest: &Value) -> Value {
        let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
        serde_json::from_slice(&files[&format!("blobs/sha256/{hex}")]).unwrap()
    }

    #[test]
    fn same_input_gives_the_same_archive() {
        let a = plain_wasm_image("localhost/x:latest", "amd64", b"\0asm\x01\0\0\0").unwrap();
        let b = plain_wasm_image("localhost/x:latest", "amd64", b"\0asm\x01\0\0\0").unwrap();
        assert_eq!(sha256(&a), sha256(&b));
        let c = wasm_layer_image("localhost/x:wasm", b"\0asm\x01\0\0\0").unwrap();
        let d = wasm_layer_image("localhost/x:wasm", b"\0asm\x01\0\0\0").unwrap();
        assert_eq!(sha256(&c), sha256(&d));
        assert_ne!(
            sha256(&a),
            sha256(&plain_wasm_image("localhost/x:latest", "amd64", b"\0asm\x01\0\0\x01").unwrap())
        );
    }

    #[test]
    fn every_blob_is_stored_under_its_digest() {
        for archive in
            [plain_wasm_image("n:t", "amd64", b"abc").unwrap(), wasm_layer_image("n:t", b"abc").unwrap()]
        {
            for (path, bytes) in entries(&archive) {
                if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                    assert_eq!(sha256(&bytes), format!("sha256:{hex}"));
                }
            }
        }
    }

    #[test]
    fn wasm_layer_image_has_one_wasm_layer_for_wasip1() {
        let files = entries(&wasm_layer_image("localhost/app:wasm", b"\0asm").unwrap());
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let top = &index["manifests"][0];
        assert_eq!(top["platform"], json!({ "architecture": "wasm", "os": "wasip1" }));
        assert_eq!(top["annotations"]["io.containerd.image.name"], "localhost/app:wasm");
        let manifest = json_blob(&files, &top["digest"]);
        assert_eq!(manifest["layers"][0]["mediaType"], WASM_LAYER);
        assert_eq!(manifest["layers"][0]["digest"], sha256(b"\0asm"));
        let config = json_blob(&files, &manifest["config"]["digest"]);
        assert_eq!(config["rootfs"]["diff_ids"], json!([]));
    }

    #[test]
    fn plain_image_puts_the_wasm_at_the_entrypoint() {
        let files = entries(&plain_wasm_image("localhost/app:latest", "arm64", b"\0asm").unwrap());
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let top = &index["manifests"][0];
        assert_eq!(top["platform"], json!({ "architecture": "arm64", "os": "linux" }));
        let manifest = json_blob(&files, &top["digest"]);
        let layer = json_blob_raw(&files, &manifest["layers"][0]["digest"]);
        assert_eq!(entries(&layer)["app.wasm"], b"\0asm");
        let config = json_blob(&files, &manifest["config"]["digest"]);
        assert_eq!(config["config"]["Entrypoint"], json!(["/app.wasm"]));
        assert_eq!(config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"]);
    }

    fn json_blob_raw(files: &BTreeMap<String, Vec<u8>>, digest: &Value) -> Vec<u8> {
        let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
        files[&format!("blobs/sha256/{hex}")].clone()
    }
}
