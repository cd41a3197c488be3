//! What a Linux binary needs at run time, read from its ELF headers rather
//! than with `ldd` (which cannot look into a binary of another
//! architecture): its architecture, its program interpreter, the shared
//! libraries it loads, and the newest glibc symbol version it asks for.
//! Libraries are found in the architecture's Debian multiarch folders of
//! this machine (for arm64: `libc6:arm64` and friends from multiarch).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use goblin::elf::Elf;
use goblin::elf::header::{EM_AARCH64, EM_X86_64};
use oci_spec::image::Arch;

/// One binary's run-time needs.
pub struct Needs {
    pub arch: Arch,
    pub interpreter: Option<String>,
    /// `DT_NEEDED` sonames, in the binary's order.
    pub libraries: Vec<String>,
    /// The newest `GLIBC_x.y` among its version needs.
    pub glibc: Option<(u32, u32)>,
}

pub fn read(path: &Path) -> Result<Needs> {
    let bytes = std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let elf = Elf::parse(&bytes).with_context(|| format!("{} is not an ELF binary", path.display()))?;
    let arch = match elf.header.e_machine {
        EM_X86_64 => Arch::Amd64,
        EM_AARCH64 => Arch::ARM64,
        other => bail!("{}: ELF machine {other} is neither x86_64 nor aarch64", path.display()),
    };
    let mut glibc = None;
    if let Some(verneed) = &elf.verneed {
        for need in verneed.iter() {
            for aux in need.iter() {
                let name = elf.dynstrtab.get_at(aux.vna_name).unwrap_or_default();
                glibc = glibc.max(glibc_version(name));
            }
        }
    }
    Ok(Needs {
        arch,
        interpreter: elf.interpreter.map(str::to_string),
        libraries: elf.libraries.iter().map(|l| l.to_string()).collect(),
        glibc,
    })
}

/// `GLIBC_2.34` -> (2, 34).
fn glibc_version(name: &str) -> Option<(u32, u32)> {
    let (major, minor) = name.strip_prefix("GLIBC_")?.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The multiarch folder name of `arch` (`x86_64-linux-gnu`, ...).
fn multiarch(arch: &Arch) -> Result<&'static str> {
    match arch {
        Arch::Amd64 => Ok("x86_64-linux-gnu"),
        Arch::ARM64 => Ok("aarch64-linux-gnu"),
        other => bail!("no multiarch folder known for {other}"),
    }
}

/// Everything `binary` loads, as (path in an image, file on this machine):
/// its interpreter at the path the binary names, and every library it
/// needs, directly or through another library, under `lib/<multiarch>/`.
pub fn runtime_files(binary: &Path) -> Result<Vec<(String, PathBuf)>> {
    let needs = read(binary)?;
    let folder = multiarch(&needs.arch)?;
    let search = [PathBuf::from("/lib").join(folder), PathBuf::from("/usr/lib").join(folder)];
    let mut files = Vec::new();
    if let Some(interpreter) = &needs.interpreter {
        files.push((interpreter.trim_start_matches('/').to_string(), PathBuf::from(interpreter)));
    }
    let mut seen = BTreeSet::new();
    let mut pending = needs.libraries;
    while let Some(soname) = pending.pop() {
        if !seen.insert(soname.clone()) {
            continue;
        }
        let source =
            search.iter().map(|dir| dir.join(&soname)).find(|path| path.is_file()).with_context(|| {
                format!(
                    "{} needs {soname}, which is not in {} or {} (for arm64: apt-get install {}:arm64)",
                    binary.display(),
                    search[0].display(),
                    search[1].display(),
                    debian_package(&soname)
                )
            })?;
        let library = read(&source)?;
        if library.arch != needs.arch {
            bail!("{} is {} but {} is {}", source.display(), library.arch, binary.display(), needs.arch);
        }
        pending.extend(library.libraries);
        files.push((format!("lib/{folder}/{soname}"), source));
    }
    Ok(files)
}

/// The Debian package that usually ships `soname` (for the error message).
fn debian_package(soname: &str) -> &'static str {
    match soname {
        s if s.starts_with("libseccomp") => "libseccomp2",
        s if s.starts_with("libgcc_s") => "libgcc-s1",
        _ => "libc6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_are_read_from_their_names() {
        assert_eq!(glibc_version("GLIBC_2.34"), Some((2, 34)));
        assert_eq!(glibc_version("GLIBC_2.2.5"), Some((2, 2)));
        assert_eq!(glibc_version("GCC_3.0"), None);
        assert!(Some((2, 34)) > Some((2, 4)));
    }

    #[test]
    fn this_machines_ls_needs_libc_and_its_interpreter() {
        let needs = read(Path::new("/bin/ls")).unwrap();
        assert!(needs.libraries.iter().any(|l| l == "libc.so.6"), "{:?}", needs.libraries);
        assert!(needs.interpreter.is_some());
        assert!(needs.glibc.is_some_and(|v| v >= (2, 2)));
        let files = runtime_files(Path::new("/bin/ls")).unwrap();
        assert!(files.iter().any(|(path, _)| path.ends_with("/libc.so.6")), "{files:?}");
    }
}
