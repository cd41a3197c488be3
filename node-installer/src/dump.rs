//! Checking a candidate config with the node's own containerd: `containerd
//! --config FILE config dump` parses it exactly as containerd will at its
//! next start, with every default filled in.

use std::path::Path;

use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, bail};

use crate::node_root::NodeRoot;

/// containerd's resolved config for `config` (a node path).
pub fn dump(node_root: &NodeRoot, containerd: &Path, config: &Path) -> Result<toml::Table> {
    let config_arg = config.to_str().context("config path is not UTF-8")?;
    let output = node_root
        .run(containerd, &["--config", config_arg, "config", "dump"])
        .with_context(|| format!("containerd refuses the config {}", config.display()))?;
    let text = String::from_utf8(output.stdout).context("`config dump` printed non-UTF-8")?;
    toml::from_str(&text).context("could not read containerd's `config dump` output")
}

/// Dumps `text` as a config: writes it to a scratch file in `dir` (a node
/// folder, so that the node's containerd can read it) and removes it again.
pub fn dump_text(node_root: &NodeRoot, containerd: &Path, dir: &Path, text: &str) -> Result<toml::Table> {
    // Not ending in `.toml`: drop-in folders (k0s) import `*.toml`. Mode
    // 0600: a config may hold registry credentials.
    let scratch = dir.join(format!(".wasmtime-custom-candidate-{}", std::process::id()));
    let local = node_root.path(&scratch);
    std::fs::create_dir_all(node_root.path(dir))
        .with_context(|| format!("could not create {}", dir.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&local)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
        .with_context(|| format!("could not write {}", local.display()))?;
    let dumped = dump(node_root, containerd, &scratch);
    // Best effort: a leftover scratch file is harmless and named as such.
    let _ = std::fs::remove_file(&local);
    dumped
}

/// The resolved CRI runtimes table of a dump (containerd 2 dumps the
/// version 3 layout whatever the file's version; 1.x dumps version 2).
pub fn runtimes(dump: &toml::Table) -> Option<&toml::Table> {
    let plugins = dump.get("plugins")?.as_table()?;
    ["io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"]
        .iter()
        .find_map(|plugin| plugins.get(*plugin)?.get("containerd")?.get("runtimes")?.as_table())
}

/// runc as a dump resolves it.
pub fn runc(dump: &toml::Table) -> Option<toml::Table> {
    runtimes(dump)?.get("runc")?.as_table().cloned()
}

/// Checks that `after` registers `name` with `runtime_type` and
/// `runtime_path`, and that, but for that entry, it equals `before`:
/// runc and everything else resolve exactly as they did.
pub fn check_added(
    before: &toml::Table,
    after: &toml::Table,
    name: &str,
    runtime_type: &str,
    runtime_path: &str,
) -> Result<()> {
    let entry = runtimes(after)
        .and_then(|r| r.get(name))
        .with_context(|| format!("containerd would not register the runtime {name} from this config"))?;
    let get = |key: &str| entry.get(key).and_then(toml::Value::as_str).unwrap_or_default();
    if get("runtime_type") != runtime_type || get("runtime_path") != runtime_path {
        bail!(
            "containerd would register {name} as type {:?} at {:?}, not {runtime_type:?} at {runtime_path:?}",
            get("runtime_type"),
            get("runtime_path")
        );
    }
    same_but_for(before, after, name)
}

/// Checks that `after` equals `before` without the runtime `name`.
pub fn check_removed(before: &toml::Table, after: &toml::Table, name: &str) -> Result<()> {
    if runtimes(after).is_some_and(|r| r.contains_key(name)) {
        bail!("containerd would still register the runtime {name}");
    }
    same_but_for(before, after, name)
}

/// Checks that `a` and `b` resolve to the same config but for the runtime `name`.
fn same_but_for(a: &toml::Table, b: &toml::Table, name: &str) -> Result<()> {
    let without = |dump: &toml::Table| {
        let mut dump = dump.clone();
        if let Some(runtimes) = runtimes_mut(&mut dump) {
            runtimes.remove(name);
        }
        dump
    };
    let (a, b) = (without(a), without(b));
    if a != b {
        let changed = changed_keys(&a, &b, "");
        bail!(
            "the edit would change more than the {name} runtime in containerd's resolved config: {}",
            changed.join(", ")
        );
    }
    Ok(())
}

fn runtimes_mut(dump: &mut toml::Table) -> Option<&mut toml::Table> {
    let plugins = dump.get_mut("plugins")?.as_table_mut()?;
    let plugin = ["io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"].into_iter().find(|p| {
        plugins.get(*p).and_then(|v| v.get("containerd")).and_then(|v| v.get("runtimes")).is_some()
    })?;
    plugins.get_mut(plugin)?.get_mut("containerd")?.get_mut("runtimes")?.as_table_mut()
}

/// Dotted paths of the keys whose values differ, for the error message.
fn changed_keys(a: &toml::Table, b: &toml::Table, prefix: &str) -> Vec<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .flat_map(|key| {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match (a.get(key), b.get(key)) {
                (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => changed_keys(x, y, &path),
                (x, y) if x == y => vec![],
                _ => vec![path],
            }
        })
        .collect()
}
