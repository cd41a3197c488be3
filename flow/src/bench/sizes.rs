//! The size rows: the image archives, and the runtime binaries a node needs
//! (the shim against containerd-shim-runc-v2 plus runc).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use testbed::{Paths, Version};

use super::table::Row;

pub fn rows(paths: &Paths) -> Result<Vec<Row>> {
    let size = |path: &Path| -> Result<f64> {
        Ok(std::fs::metadata(path).with_context(|| format!("size of {}", path.display()))?.len() as f64)
    };
    let shim = paths.shim()?;
    let runc_shim = paths.containerd_bins(Version::V1_7)?.join("containerd-shim-runc-v2");
    let runc = which("runc")?;
    Ok(vec![
        Row::new(
            "size, image archive",
            "bytes",
            vec![size(&paths.image("app.tar")?)?],
            vec![size(&paths.image("app-native.tar")?)?],
        ),
        Row::new(
            "size, runtime binaries on the node",
            "bytes",
            vec![size(&shim)?],
            vec![size(&runc_shim)? + size(&runc)?],
        ),
    ])
}

/// How the size rows were measured.
pub fn note() -> String {
    "size: app.tar vs app-native.tar; containerd-shim-wasmtime-custom-v1 vs containerd-shim-runc-v2 \
     plus runc"
        .to_string()
}

/// `program`'s path on `PATH`.
fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_finds_a_program_on_path_and_names_a_missing_one() {
        assert!(which("sh").unwrap().ends_with("sh"));
        let missing = which("no-such-program-here").unwrap_err().to_string();
        assert_eq!(missing, "no-such-program-here is not on PATH");
    }
}
