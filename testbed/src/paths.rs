//! Where the local node's parts are, found at run time: the shim and the
//! node installer, the image archives, and the private containerd versions.
//!
//! Each has an environment variable; without it, the default is beside the
//! running executable, which is how a build lays them out (`cargo build
//! --release` puts `order-flow`, the shim and the installer in
//! `target/release/`, `cargo xtask images` writes `target/images/`, and
//! `scripts/install-prerequisites.sh` unpacks containerd 1.7 and 2.1 under
//! `target/containerd/`). A test executable lives one level deeper, in
//! `target/release/deps/`, and looks one level up.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Folder holding `containerd-shim-wasmtime-custom-v1` and
/// `wasmtime-custom-node-installer`.
pub const BIN_DIR_ENV: &str = "WASMTIME_CUSTOM_BIN_DIR";
/// Folder holding the image archives (`app-wasm.tar`, ...).
pub const IMAGES_ENV: &str = "WASMTIME_CUSTOM_IMAGES";
/// Folder holding the unpacked containerd 1.7 (`trixie/`) and 2.1 (`sid/`).
pub const CONTAINERD_DIR_ENV: &str = "WASMTIME_CUSTOM_CONTAINERD_DIR";

/// The shim's binary name: containerd finds runtime
/// `io.containerd.wasmtime-custom.v1` under it on its PATH.
pub const SHIM: &str = "containerd-shim-wasmtime-custom-v1";
/// The node installer's binary name.
pub const INSTALLER: &str = "wasmtime-custom-node-installer";

/// The containerd versions a local node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// Debian 12's own containerd (1.6.20), from `/usr/bin`.
    V1_6,
    /// containerd 1.7.x from Debian trixie, unpacked privately.
    V1_7,
    /// containerd 2.1.x from Debian sid (config version 3), unpacked privately.
    V2_1,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1_6 => "1.6",
            Version::V1_7 => "1.7",
            Version::V2_1 => "2.1",
        }
    }

    pub fn parse(text: &str) -> Result<Version> {
        Ok(match text {
            "1.6" => Version::V1_6,
            "1.7" => Version::V1_7,
            "2.1" => Version::V2_1,
            other => bail!("unknown containerd version {other:?}: use 1.6, 1.7 or 2.1"),
        })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where everything is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub bin_dir: PathBuf,
    pub images: PathBuf,
    pub containerd_dir: PathBuf,
}

impl Paths {
    /// From the environment variables, each defaulting to its place beside
    /// the running executable.
    pub fn from_env() -> Result<Paths> {
        let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
        Paths::new(var(BIN_DIR_ENV), var(IMAGES_ENV), var(CONTAINERD_DIR_ENV))
    }

    /// The folders given, and the others where a build puts them: the
    /// binaries beside the running executable, `images` and `containerd`
    /// next to the binaries' folder.
    pub fn new(
        bin_dir: Option<PathBuf>,
        images: Option<PathBuf>,
        containerd_dir: Option<PathBuf>,
    ) -> Result<Paths> {
        let bin_dir = match bin_dir {
            Some(dir) => dir,
            None => beside_executable()?,
        };
        Ok(Paths {
            images: images.unwrap_or_else(|| sibling_of(&bin_dir, "images")),
            containerd_dir: containerd_dir.unwrap_or_else(|| sibling_of(&bin_dir, "containerd")),
            bin_dir,
        })
    }

    /// The shim binary; an error says how to build it.
    pub fn shim(&self) -> Result<PathBuf> {
        self.binary(SHIM, "cargo build --release -p containerd-shim-wasmtime-custom")
    }

    /// The node installer binary; an error says how to build it.
    pub fn installer(&self) -> Result<PathBuf> {
        self.binary(INSTALLER, "cargo build --release -p node-installer")
    }

    fn binary(&self, name: &str, build: &str) -> Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if !path.is_file() {
            bail!(
                "{} is missing: build it ({build}) or point {BIN_DIR_ENV} at the folder that holds it",
                path.display()
            );
        }
        Ok(path)
    }

    /// An image archive; an error says how to build it.
    pub fn image(&self, archive: &str) -> Result<PathBuf> {
        let path = self.images.join(archive);
        if !path.is_file() {
            bail!(
                "{} is missing: build the images (`cargo xtask images`; `cargo xtask installer-image` for \
                 node-installer.tar) or point {IMAGES_ENV} at the folder that holds them",
                path.display()
            );
        }
        Ok(path)
    }

    /// `cargo xtask dist`'s folder of one node architecture (`amd64`,
    /// `arm64`), next to the binaries' folder; an error says how to fill it.
    pub fn dist(&self, arch: &str) -> Result<PathBuf> {
        let dir = sibling_of(&self.bin_dir, "dist").join(arch);
        if !dir.is_dir() {
            bail!("{} is missing: build both architectures with `cargo xtask dist`", dir.display());
        }
        Ok(dir)
    }

    /// Debian trixie's `qemu-aarch64` (qemu-user 10), unpacked next to the
    /// binaries' folder by scripts/install-prerequisites.sh.
    pub fn qemu_aarch64(&self) -> Result<PathBuf> {
        let path = sibling_of(&self.bin_dir, "debian").join("qemu-trixie/root/usr/bin/qemu-aarch64");
        if !path.is_file() {
            bail!("{} is missing: run scripts/install-prerequisites.sh", path.display());
        }
        Ok(path)
    }

    /// The folder holding containerd `version`'s binaries (`containerd`,
    /// `ctr`, `containerd-shim-runc-v2`).
    pub fn containerd_bins(&self, version: Version) -> Result<PathBuf> {
        let dir = match version {
            Version::V1_6 => PathBuf::from("/usr/bin"),
            Version::V1_7 => self.containerd_dir.join("trixie/root/usr/bin"),
            Version::V2_1 => self.containerd_dir.join("sid/root/usr/bin"),
        };
        if !dir.join("containerd").is_file() {
            bail!(
                "containerd {version} is not in {}: run scripts/install-prerequisites.sh (it installs 1.6 \
                 and unpacks 1.7 and 2.1 under target/containerd), or point {CONTAINERD_DIR_ENV} at the \
                 folder holding trixie/ and sid/",
                dir.display()
            );
        }
        Ok(dir)
    }
}

/// The folder of the running executable; for a test executable in cargo's
/// `deps/` folder, the folder above it.
fn beside_executable() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find the running executable")?;
    let dir = exe.parent().context("the executable has a folder")?;
    Ok(if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().context("deps/ has a parent")?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

fn sibling_of(dir: &Path, name: &str) -> PathBuf {
    dir.parent().map(|parent| parent.join(name)).unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_layout_is_found_around_the_binaries() {
        let release = Path::new("/x/target/release");
        assert_eq!(sibling_of(release, "images"), Path::new("/x/target/images"));
        assert_eq!(sibling_of(release, "containerd"), Path::new("/x/target/containerd"));
    }

    #[test]
    fn missing_parts_say_how_to_get_them() {
        let paths = Paths::new(Some("/nonexistent/release".into()), None, None).unwrap();
        assert_eq!(paths.images, Path::new("/nonexistent/images"));
        let shim = paths.shim().unwrap_err().to_string();
        assert!(shim.contains("cargo build --release -p containerd-shim-wasmtime-custom"), "{shim}");
        let image = paths.image("app.tar").unwrap_err().to_string();
        assert!(image.contains("cargo xtask images") && image.contains(IMAGES_ENV), "{image}");
        let err = Version::parse("1.8").unwrap_err().to_string();
        assert!(err.contains("use 1.6, 1.7 or 2.1"), "{err}");
    }

    #[test]
    fn test_executables_look_above_deps() {
        // This test runs from target/<profile>/deps.
        let dir = beside_executable().unwrap();
        assert_ne!(dir.file_name().unwrap(), "deps");
    }
}
