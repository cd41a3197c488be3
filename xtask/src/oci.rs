//! Deterministic OCI image archives (OCI image layout in a tar), written
//! without Docker: the same input always gives the same bytes and digests
//! (no timestamps, fixed owners and modes, sorted entries, canonical JSON).
//!
//! Every OCI document (the layout marker, `index.json`, manifests, configs
//! and their descriptors) is an `oci-spec` image type. An archive is built in
//! two steps: [`Blobs::add_image`] stores one platform's image and returns
//! its manifest's descriptor, and [`archive`] names one such descriptor in
//! `index.json` and writes the layout. An image for several platforms fits
//! the same two steps: the descriptors of its platform manifests go into an
//! image index blob, whose descriptor is the one `archive` names.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, Config, ConfigBuilder, Descriptor, DescriptorBuilder, Digest,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, OciLayoutBuilder, Os,
    Platform, PlatformBuilder, RootFsBuilder, SCHEMA_VERSION,
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The layer type runwasi-based shims read straight from the content store.
pub const WASM_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";

/// Where the Wasm file sits in a plain image, and the image's entrypoint.
pub const ENTRYPOINT: &str = "/app.wasm";

/// `ctr image import` names the image after this annotation of its
/// `index.json` entry.
const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// The config label of a wasm-layer image that holds its layer's digest.
const WASM_LAYER_LABEL: &str = "io.wasmtime-custom.wasm-layer";

/// The `imageLayoutVersion` of the `oci-layout` file.
const LAYOUT_VERSION: &str = "1.0.0";

/// The OS of wasm-layer images, as runwasi-based shims and containerd's
/// `--platform wasip1/wasm` name it (oci-spec has no variant for it).
const WASIP1: &str = "wasip1";

/// The SHA-256 digest of `bytes` (`sha256:<hex>`).
pub fn sha256(bytes: &[u8]) -> Digest {
    // Infallible: 64 lowercase hex digits after `sha256:` is exactly what a
    // SHA-256 digest must be.
    Digest::try_from(format!("sha256:{:x}", Sha256::digest(bytes)))
        .expect("a SHA-256 in hex is a valid digest")
}

/// `document` as canonical JSON, as the image spec asks of every `+json`
/// blob: no whitespace, and the keys of every object sorted. oci-spec keeps
/// annotations and labels in `HashMap`s, which iterate in a different order
/// in every process; sorting makes the bytes, and so the digests, depend on
/// the content alone.
fn canonical_json(document: &impl Serialize) -> Result<Vec<u8>> {
    fn sorted(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let map: BTreeMap<String, Value> =
                    map.into_iter().map(|(key, value)| (key, sorted(value))).collect();
                Value::Object(map.into_iter().collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    let value = serde_json::to_value(document).context("could not serialise an OCI document")?;
    serde_json::to_vec(&sorted(value)).context("could not serialise an OCI document")
}

/// The blobs of one image layout, by digest (sorted, so that the archive
/// lists them in one order).
#[derive(Default)]
struct Blobs(BTreeMap<String, Vec<u8>>);

impl Blobs {
    /// Stores `bytes` and returns its descriptor.
    fn add(&mut self, media_type: MediaType, bytes: Vec<u8>) -> Result<Descriptor> {
        let digest = sha256(&bytes);
        let descriptor = DescriptorBuilder::default()
            .media_type(media_type)
            .digest(digest.clone())
            .size(bytes.len() as u64)
            .build()
            .context("could not build a descriptor")?;
        self.0.insert(digest.to_string(), bytes);
        Ok(descriptor)
    }

    /// Stores `document` as canonical JSON and returns its descriptor.
    fn add_json(&mut self, media_type: MediaType, document: &impl Serialize) -> Result<Descriptor> {
        self.add(media_type, canonical_json(document)?)
    }

    /// Stores one platform's image, its config and its manifest, and returns
    /// the manifest's descriptor with the platform on it: what an index
    /// lists. The config's OS and architecture are the platform's, so the
    /// two cannot disagree. `diff_ids` are those of the rootfs layers among
    /// `layers`.
    fn add_image(
        &mut self,
        platform: Platform,
        config: Config,
        diff_ids: Vec<String>,
        layers: Vec<Descriptor>,
    ) -> Result<Descriptor> {
        let rootfs = RootFsBuilder::default()
            .typ("layers")
            .diff_ids(diff_ids)
            .build()
            .context("could not build the image's rootfs")?;
        let config = ImageConfigurationBuilder::default()
            .architecture(platform.architecture().clone())
            .os(platform.os().clone())
            .config(config)
            .rootfs(rootfs)
            .build()
            .context("could not build the image config")?;
        let config = self.add_json(MediaType::ImageConfig, &config)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageManifest)
            .config(config)
            .layers(layers)
            .build()
            .context("could not build the image manifest")?;
        let mut manifest = self.add_json(MediaType::ImageManifest, &manifest)?;
        manifest.set_platform(Some(platform));
        Ok(manifest)
    }

    /// Stores a Linux image for `arch` whose one layer holds `entries`, and
    /// returns its manifest's descriptor.
    fn add_linux_image(&mut self, arch: Arch, entries: &[Entry], entrypoint: &[&str]) -> Result<Descriptor> {
        let layer = layer(entries)?;
        let diff_id = sha256(&layer).to_string();
        let layer = self.add(MediaType::ImageLayer, layer)?;
        let config = ConfigBuilder::default()
            .entrypoint(entrypoint.iter().map(|arg| arg.to_string()).collect::<Vec<_>>())
            .build()
            .context("could not build the image's run config")?;
        let platform = PlatformBuilder::default()
            .architecture(arch)
            .os(Os::Linux)
            .build()
            .context("could not build the image's platform")?;
        self.add_image(platform, config, vec![diff_id], vec![layer])
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
pub fn plain_wasm_image(name: &str, arch: Arch, wasm: &[u8]) -> Result<Vec<u8>> {
    plain_image(name, arch, &[wasm_file(wasm)], &[ENTRYPOINT])
}

/// The plain image of a Wasm app for every node a cluster may have: an
/// image index with a `linux/amd64` and a `linux/arm64` manifest, both with
/// the same one-file rootfs (the Wasm is the same for every architecture;
/// only the index tells containerd that either platform may run it).
pub fn plain_wasm_image_all(name: &str, wasm: &[u8]) -> Result<Vec<u8>> {
    let file = [wasm_file(wasm)];
    multi_arch_image(name, &[(Arch::Amd64, &file[..]), (Arch::ARM64, &file[..])], &[ENTRYPOINT])
}

fn wasm_file(wasm: &[u8]) -> Entry {
    Entry::File { path: ENTRYPOINT.trim_start_matches('/').into(), mode: 0o644, bytes: wasm.to_vec() }
}

/// A plain Linux image of one layer holding `entries`: one platform
/// manifest (the test images and the native baseline).
pub fn plain_image(name: &str, arch: Arch, entries: &[Entry], entrypoint: &[&str]) -> Result<Vec<u8>> {
    let mut blobs = Blobs::default();
    let manifest = blobs.add_linux_image(arch, entries, entrypoint)?;
    archive(name, blobs, manifest)
}

/// A Linux image for several architectures: one single-layer manifest per
/// `(arch, entries)`, listed by an image index; containerd picks the entry
/// of the node's architecture. (`containerd-shim-wasm` logs a harmless
/// "serde failed" warning when it reads an index as a manifest.)
pub fn multi_arch_image(name: &str, platforms: &[(Arch, &[Entry])], entrypoint: &[&str]) -> Result<Vec<u8>> {
    let mut blobs = Blobs::default();
    let manifests = platforms
        .iter()
        .map(|(arch, entries)| blobs.add_linux_image(arch.clone(), entries, entrypoint))
        .collect::<Result<Vec<_>>>()?;
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .context("could not build the image index")?;
    let index = blobs.add_json(MediaType::ImageIndex, &index)?;
    archive(name, blobs, index)
}

/// The wasm-layer image: the Wasm as a single layer of media type
/// [`WASM_LAYER`], platform `wasip1/wasm`. containerd >= 1.7.7 imports it
/// without unpacking, and the shim can cache a precompiled artifact for it.
pub fn wasm_layer_image(name: &str, wasm: &[u8]) -> Result<Vec<u8>> {
    let mut blobs = Blobs::default();
    let layer = blobs.add(MediaType::Other(WASM_LAYER.into()), wasm.to_vec())?;
    // A wasm layer is no rootfs layer: `diff_ids` stays empty, and the label
    // keeps configs of different images apart.
    let labels = HashMap::from([(WASM_LAYER_LABEL.to_string(), layer.digest().to_string())]);
    let config = ConfigBuilder::default()
        .entrypoint(vec![ENTRYPOINT.to_string()])
        .labels(labels)
        .build()
        .context("could not build the image's run config")?;
    let platform = PlatformBuilder::default()
        .architecture(Arch::Wasm)
        .os(Os::Other(WASIP1.into()))
        .build()
        .context("could not build the image's platform")?;
    let manifest = blobs.add_image(platform, config, Vec::new(), vec![layer])?;
    archive(name, blobs, manifest)
}

/// The image layout holding `blobs`, as a tar, with `top` as the one entry
/// of `index.json`, named `name` for `ctr image import` (and with its tag as
/// the OCI ref name).
fn archive(name: &str, blobs: Blobs, mut top: Descriptor) -> Result<Vec<u8>> {
    let tag = name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    top.set_annotations(Some(HashMap::from([
        (CONTAINERD_IMAGE_NAME.to_string(), name.to_string()),
        (ANNOTATION_REF_NAME.to_string(), tag.to_string()),
    ])));
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![top])
        .build()
        .context("could not build index.json")?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version(LAYOUT_VERSION)
        .build()
        .context("could not build oci-layout")?;
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "oci-layout", &canonical_json(&layout)?)?;
    append(&mut tar, "index.json", &canonical_json(&index)?)?;
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
    use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, OciLayout};

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

    /// The blob `descriptor` points at, checked against its size.
    fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, descriptor: &Descriptor) -> &'a [u8] {
        let bytes = &files[&format!("blobs/sha256/{}", descriptor.digest().digest())];
        assert_eq!(bytes.len() as u64, descriptor.size(), "size of {}", descriptor.digest());
        bytes
    }

    fn index(files: &BTreeMap<String, Vec<u8>>) -> ImageIndex {
        ImageIndex::from_reader(files["index.json"].as_slice()).unwrap()
    }

    fn manifest(files: &BTreeMap<String, Vec<u8>>, descriptor: &Descriptor) -> ImageManifest {
        ImageManifest::from_reader(blob(files, descriptor)).unwrap()
    }

    fn config(files: &BTreeMap<String, Vec<u8>>, descriptor: &Descriptor) -> ImageConfiguration {
        ImageConfiguration::from_reader(blob(files, descriptor)).unwrap()
    }

    fn wasm_os() -> Os {
        Os::Other(WASIP1.into())
    }

    #[test]
    fn same_input_gives_the_same_archive() {
        let a = plain_wasm_image("localhost/x:latest", Arch::Amd64, b"\0asm\x01\0\0\0").unwrap();
        let b = plain_wasm_image("localhost/x:latest", Arch::Amd64, b"\0asm\x01\0\0\0").unwrap();
        assert_eq!(sha256(&a), sha256(&b));
        let c = wasm_layer_image("localhost/x:wasm", b"\0asm\x01\0\0\0").unwrap();
        let d = wasm_layer_image("localhost/x:wasm", b"\0asm\x01\0\0\0").unwrap();
        assert_eq!(sha256(&c), sha256(&d));
        assert_ne!(
            sha256(&a),
            sha256(&plain_wasm_image("localhost/x:latest", Arch::Amd64, b"\0asm\x01\0\0\x01").unwrap())
        );
    }

    #[test]
    fn annotation_and_label_order_does_not_change_the_bytes() {
        // Every `HashMap` iterates in its own random order: without sorting,
        // two annotations would come out swapped in about half the builds.
        let first = wasm_layer_image("localhost/x:wasm", b"\0asm").unwrap();
        for _ in 0..32 {
            assert!(wasm_layer_image("localhost/x:wasm", b"\0asm").unwrap() == first);
        }
    }

    #[test]
    fn every_blob_is_stored_under_its_digest() {
        for archive in
            [plain_wasm_image("n:t", Arch::Amd64, b"abc").unwrap(), wasm_layer_image("n:t", b"abc").unwrap()]
        {
            for (path, bytes) in entries(&archive) {
                if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                    assert_eq!(sha256(&bytes).digest(), hex);
                }
            }
        }
    }

    #[test]
    fn wasm_layer_image_has_one_wasm_layer_for_wasip1() {
        let files = entries(&wasm_layer_image("localhost/app:wasm", b"\0asm").unwrap());
        let index = index(&files);
        let top = &index.manifests()[0];
        let platform = top.platform().as_ref().unwrap();
        assert_eq!((platform.architecture(), platform.os()), (&Arch::Wasm, &wasm_os()));
        let annotations = top.annotations().as_ref().unwrap();
        assert_eq!(annotations[CONTAINERD_IMAGE_NAME], "localhost/app:wasm");
        assert_eq!(annotations[ANNOTATION_REF_NAME], "wasm");
        let manifest = manifest(&files, top);
        assert_eq!(manifest.layers()[0].media_type().as_ref(), WASM_LAYER);
        assert_eq!(manifest.layers()[0].digest(), &sha256(b"\0asm"));
        let config = config(&files, manifest.config());
        assert_eq!((config.architecture(), config.os()), (&Arch::Wasm, &wasm_os()));
        assert!(config.rootfs().diff_ids().is_empty());
    }

    #[test]
    fn plain_image_puts_the_wasm_at_the_entrypoint() {
        let files = entries(&plain_wasm_image("localhost/app:latest", Arch::ARM64, b"\0asm").unwrap());
        let index = index(&files);
        let top = &index.manifests()[0];
        let platform = top.platform().as_ref().unwrap();
        assert_eq!((platform.architecture(), platform.os()), (&Arch::ARM64, &Os::Linux));
        let annotations = top.annotations().as_ref().unwrap();
        assert_eq!(annotations[CONTAINERD_IMAGE_NAME], "localhost/app:latest");
        assert_eq!(annotations[ANNOTATION_REF_NAME], "latest");
        let manifest = manifest(&files, top);
        let layer = blob(&files, &manifest.layers()[0]);
        assert_eq!(entries(layer)["app.wasm"], b"\0asm");
        let config = config(&files, manifest.config());
        assert_eq!(config.config().as_ref().unwrap().entrypoint(), &Some(vec!["/app.wasm".to_string()]));
        assert_eq!(config.rootfs().diff_ids(), &[manifest.layers()[0].digest().to_string()]);
    }

    #[test]
    fn the_app_for_all_nodes_is_an_index_of_amd64_and_arm64_with_the_same_wasm() {
        let files = entries(&plain_wasm_image_all("localhost/app:latest", b"\0asm").unwrap());
        let layout = index(&files);
        let top = &layout.manifests()[0];
        assert_eq!(top.media_type(), &MediaType::ImageIndex);
        assert!(top.platform().is_none());
        let all: ImageIndex = serde_json::from_slice(blob(&files, top)).unwrap();
        let mut layers = Vec::new();
        for (descriptor, arch) in all.manifests().iter().zip([Arch::Amd64, Arch::ARM64]) {
            let platform = descriptor.platform().as_ref().unwrap();
            assert_eq!((platform.architecture(), platform.os()), (&arch, &Os::Linux));
            let manifest = manifest(&files, descriptor);
            assert_eq!(config(&files, manifest.config()).architecture(), &arch);
            layers.push(manifest.layers()[0].digest().clone());
        }
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0], layers[1], "one layer, stored once, for both");
    }

    #[test]
    fn every_document_parses_back_as_its_oci_spec_type_unchanged() {
        // Parsed with oci-spec's types and written again, each document gives
        // its own bytes back: nothing in it is unknown to the spec's types,
        // and nothing they know is lost.
        fn round_trips<T: Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
            let document: T = serde_json::from_slice(bytes).unwrap();
            assert_eq!(
                String::from_utf8(canonical_json(&document).unwrap()).unwrap(),
                std::str::from_utf8(bytes).unwrap()
            );
            document
        }
        let layer = [
            Entry::Dir { path: "bin/".into() },
            Entry::Symlink { path: "bin/sh".into(), target: "x".into() },
        ];
        for archive in [
            plain_image("localhost/x:latest", Arch::Amd64, &layer, &["/bin/sh", "-c"]).unwrap(),
            wasm_layer_image("localhost/x:wasm", b"\0asm").unwrap(),
        ] {
            let files = entries(&archive);
            let layout: OciLayout = round_trips(&files["oci-layout"]);
            assert_eq!(layout.image_layout_version(), LAYOUT_VERSION);
            let index: ImageIndex = round_trips(&files["index.json"]);
            assert_eq!(index.media_type(), &Some(MediaType::ImageIndex));
            for top in index.manifests() {
                assert_eq!(top.media_type(), &MediaType::ImageManifest);
                let manifest: ImageManifest = round_trips(blob(&files, top));
                assert_eq!(manifest.media_type(), &Some(MediaType::ImageManifest));
                assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
                let config: ImageConfiguration = round_trips(blob(&files, manifest.config()));
                let platform = top.platform().as_ref().unwrap();
                assert_eq!((config.architecture(), config.os()), (platform.architecture(), platform.os()));
                for layer in manifest.layers() {
                    blob(&files, layer);
                }
            }
        }
    }

    #[test]
    fn documents_are_canonical_json_with_only_the_fields_set() {
        // The exact bytes: keys sorted, no whitespace, and no empty optional
        // field (no `created`, `history`, `urls`, `subject`, manifest
        // annotations, ...), so the digests depend on the content alone.
        let files = entries(&wasm_layer_image("localhost/app:wasm", b"\0asm").unwrap());
        let index = index(&files);
        let top = &index.manifests()[0];
        let manifest = manifest(&files, top);
        let (config, layer) = (manifest.config(), &manifest.layers()[0]);
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
        assert_eq!(text(&files["oci-layout"]), r#"{"imageLayoutVersion":"1.0.0"}"#);
        assert_eq!(
            text(&files["index.json"]),
            format!(
                r#"{{"manifests":[{{"annotations":{{"io.containerd.image.name":"localhost/app:wasm","org.opencontainers.image.ref.name":"wasm"}},"digest":"{}","mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{{"architecture":"wasm","os":"wasip1"}},"size":{}}}],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}}"#,
                top.digest(),
                top.size()
            )
        );
        assert_eq!(
            text(blob(&files, top)),
            format!(
                r#"{{"config":{{"digest":"{}","mediaType":"application/vnd.oci.image.config.v1+json","size":{}}},"layers":[{{"digest":"{}","mediaType":"{WASM_LAYER}","size":4}}],"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}}"#,
                config.digest(),
                config.size(),
                layer.digest()
            )
        );
        assert_eq!(
            text(blob(&files, config)),
            format!(
                r#"{{"architecture":"wasm","config":{{"Entrypoint":["/app.wasm"],"Labels":{{"io.wasmtime-custom.wasm-layer":"{}"}}}},"os":"wasip1","rootfs":{{"diff_ids":[],"type":"layers"}}}}"#,
                layer.digest()
            )
        );
    }
}
