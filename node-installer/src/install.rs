//! The three subcommands: `install`, `uninstall`, `status`.
//!
//! Order of `install`, each step only if the ones before succeeded: read the
//! installer's state (`state`); find the config; work out the edit and check
//! it with the node's own containerd (`config dump`); put the shim binary in
//! place (checked to run on the node); write the config atomically, with a
//! backup; restart containerd only if the config changed; check containerd's
//! health over CRI and roll back byte for byte if it is not healthy; only
//! then label the node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::{self, EditInputs, Runtime};
use crate::layout::{self, ConfigKind, Layout, Overrides};
use crate::node_root::NodeRoot;
use crate::state::{self, State};
use crate::system::{self, Restart};
use crate::{binary, cri, dump, node};

/// The shim's file name; containerd derives it from the runtime type.
pub const SHIM_NAME: &str = "containerd-shim-wasmtime-custom-v1";
pub const RUNTIME_TYPE: &str = "io.containerd.wasmtime-custom.v1";

/// Everything a run needs, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_root: NodeRoot,
    pub overrides: Overrides,
    /// The shim to install, in the installer's view.
    pub shim: PathBuf,
    /// Folder on the node for the shim.
    pub install_dir: PathBuf,
    /// Runtime handler name (a RuntimeClass's `handler`).
    pub runtime_name: String,
    /// `--restart-command`, else the layout's systemd unit.
    pub restart_command: Option<String>,
    pub health_timeout: Duration,
    /// Label this Kubernetes node when done.
    pub node_name: Option<String>,
    pub dry_run: bool,
}

impl Options {
    fn runtime(&self) -> Runtime {
        Runtime {
            name: self.runtime_name.clone(),
            runtime_type: RUNTIME_TYPE.into(),
            runtime_path: self.install_dir.join(SHIM_NAME).display().to_string(),
        }
    }

    fn socket(&self, layout: &Layout) -> PathBuf {
        self.node_root.path(&layout.socket)
    }
}

/// How the config looks now, and what containerd makes of it.
struct Current {
    layout: Layout,
    restart: Restart,
    /// The file's text, or `None` if it does not exist yet.
    text: Option<String>,
    /// What the file starts as when the installer creates it.
    skeleton: String,
    /// What containerd reads (the rendered config for a template).
    effective: String,
    /// containerd's resolved config of `effective`.
    resolved: toml::Table,
    default_version: i64,
}

fn current(options: &Options) -> Result<Current> {
    let node_root = &options.node_root;
    let layout = layout::detect(node_root, &options.overrides)?;
    println!("containerd config: {layout}");
    // Known before anything changes: a node that cannot be restarted is
    // refused up front.
    let restart = match (&options.restart_command, &layout.unit) {
        (Some(command), _) => Restart::Command(command.clone()),
        (None, Some(unit)) => Restart::Systemd(unit.clone()),
        (None, None) => bail!(
            "no systemd unit found for {} (looked for its usual units); pass --restart-command",
            layout.distribution
        ),
    };
    let default_version = if containerd_major(node_root, &layout.containerd)? >= 2 { 3 } else { 2 };
    refuse_symlink(node_root, &layout.config)?;
    let text = read_optional(&node_root.path(&layout.config))?;
    let skeleton = match layout.kind {
        ConfigKind::Template { .. } => "{{ template \"base\" . }}\n".to_string(),
        _ => format!("version = {default_version}\n"),
    };
    let effective = match &layout.kind {
        ConfigKind::Template { rendered } => {
            read_optional(&node_root.path(rendered))?.with_context(|| {
                format!("{} has not generated {} yet", layout.distribution, rendered.display())
            })?
        }
        _ => text.clone().unwrap_or_else(|| skeleton.clone()),
    };
    let resolved = dump::dump_text(node_root, &layout.containerd, config_dir(&layout), &effective)
        .context("containerd does not accept its current config")?;
    Ok(Current { layout, restart, text, skeleton, effective, resolved, default_version })
}

pub async fn install(options: &Options) -> Result<()> {
    let node_root = &options.node_root;
    let _lock = if options.dry_run { None } else { Some(system::lock(node_root)?) };
    let state = state::read(node_root)?;
    let now = current(options)?;
    let runtime = options.runtime();
    let inputs = EditInputs {
        base_version: config::version_of(&now.effective)?.or(Some(now.default_version)),
        runc_defaults: dump::runc(&now.resolved),
        // A template's base lists runc itself; a k0s drop-in is merged into
        // k0s's own config, which does: neither may get runc written again.
        base_lists_runc: match now.layout.kind {
            ConfigKind::Template { .. } => config::lists_runc(&now.effective)?,
            ConfigKind::DropIn => true,
            ConfigKind::Plain => false,
        },
    };
    let original = now.text.clone().unwrap_or_else(|| now.skeleton.clone());
    let edit = config::install(&original, &runtime, &inputs)?;
    let candidate = match now.layout.kind {
        ConfigKind::Template { .. } => config::install(&now.effective, &runtime, &inputs)?.text,
        _ => edit.text.clone(),
    };
    let after = dump::dump_text(node_root, &now.layout.containerd, config_dir(&now.layout), &candidate)
        .context("containerd refuses the edited config; nothing was changed")?;
    dump::check_added(&now.resolved, &after, &runtime.name, &runtime.runtime_type, &runtime.runtime_path)
        .context("nothing was changed")?;
    println!(
        "checked with {} config dump: {} registered, everything else unchanged",
        now.layout.containerd.display(),
        runtime.name
    );

    let binary = binary::install(node_root, &options.shim, &options.install_dir, SHIM_NAME, options.dry_run)?;
    let binary_state = if binary.changed { "installed" } else { "already installed" };
    println!(
        "shim {binary_state}: {} (sha256 {}, version {})",
        binary.path.display(),
        binary.sha256,
        binary.version
    );

    // Created by this run, or by an earlier one (then uninstall removes it).
    let created = now.text.is_none() || state.is_some_and(|s| s.created(&now.layout.config));
    if options.dry_run {
        if edit.changed {
            print!(
                "{}",
                config::diff(
                    &now.layout.config.display().to_string(),
                    now.text.as_deref().unwrap_or(""),
                    &edit.text
                )
            );
            println!("dry run: nothing was changed; install would then run {}", now.restart);
        } else {
            println!("dry run: the config already registers {}; nothing to change", runtime.name);
        }
        return Ok(());
    }

    if edit.changed {
        if let Some(text) = &now.text {
            system::write_atomically(node_root, &backup_path(&now.layout.config), text)?;
        }
        system::write_atomically(node_root, &now.layout.config, &edit.text)?;
        println!("config updated at {} ({})", now.layout.config.display(), edit.places.join(", "));
        state::write(node_root, &State { config: now.layout.config.clone(), created })?;
        restart_or_roll_back(options, &now, Some(&runtime.name)).await?;
    } else {
        println!("the config already registers {}; containerd not restarted", runtime.name);
        let health =
            cri::wait_healthy(&options.socket(&now.layout), Some(&runtime.name), options.health_timeout)
                .await
                .context(
                    "the config registers the runtime but containerd does not know it; restart containerd",
                )?;
        println!("containerd is healthy and knows {} ({})", runtime.name, health.handlers.join(", "));
    }

    if let Some(name) = &options.node_name {
        node::mark_ready(&node::client().await?, name, &binary.version).await?;
        println!("node {name} labelled {}={}", node::READY_LABEL, node::READY_VALUE);
    }
    Ok(())
}

pub async fn uninstall(options: &Options) -> Result<()> {
    let node_root = &options.node_root;
    let _lock = if options.dry_run { None } else { Some(system::lock(node_root)?) };
    let state = state::read(node_root)?;
    // Unlabel first: no new wasm pod should be scheduled here from now on.
    if let (Some(name), false) = (&options.node_name, options.dry_run) {
        node::unmark(&node::client().await?, name).await?;
        println!("node {name}: label {} removed", node::READY_LABEL);
    }
    let now = current(options)?;
    if let Some(text) = &now.text {
        let edit = config::uninstall(text, &options.runtime())?;
        if edit.changed {
            let candidate = match now.layout.kind {
                ConfigKind::Template { .. } => config::uninstall(&now.effective, &options.runtime())?.text,
                _ => edit.text.clone(),
            };
            let after =
                dump::dump_text(node_root, &now.layout.containerd, config_dir(&now.layout), &candidate)
                    .context("containerd refuses the config without the runtime; nothing was changed")?;
            dump::check_removed(&now.resolved, &after, &options.runtime_name)
                .context("nothing was changed")?;
            if options.dry_run {
                print!("{}", config::diff(&now.layout.config.display().to_string(), text, &edit.text));
                println!("dry run: nothing was changed");
                return Ok(());
            }
            keep_first_backup(node_root, &now.layout.config, text)?;
            let created = state.is_some_and(|s| s.created(&now.layout.config));
            if created && edit.text == now.skeleton {
                system::remove_file(node_root, &now.layout.config)?;
                println!("removed {} (the installer had created it)", now.layout.config.display());
            } else {
                system::write_atomically(node_root, &now.layout.config, &edit.text)?;
                println!(
                    "config updated at {} (removed from {})",
                    now.layout.config.display(),
                    edit.places.join(", ")
                );
            }
            restart_or_roll_back(options, &now, None).await?;
            // containerd runs healthy on the config as it was before the
            // install: the installer's backup of it goes too.
            system::remove_file(node_root, &backup_path(&now.layout.config))?;
        } else {
            println!("the config does not register {}; containerd not restarted", options.runtime_name);
        }
    }
    if options.dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    if binary::remove(node_root, &options.install_dir.join(SHIM_NAME))? {
        println!("removed {}", options.install_dir.join(SHIM_NAME).display());
    }
    state::remove(node_root)?;
    Ok(())
}

/// Prints what is installed; `Ok(true)` when everything is in place and healthy.
pub async fn status(options: &Options) -> Result<bool> {
    let node_root = &options.node_root;
    let layout = layout::detect(node_root, &options.overrides)?;
    println!("containerd config: {layout}");
    let text = read_optional(&node_root.path(&layout.config))?.unwrap_or_default();
    let places = config::registered_at(&text, &options.runtime_name)?;
    let mut ok = !places.is_empty();
    println!("registered in the config: {}", if ok { places.join(", ") } else { "no".into() });
    let shim = options.install_dir.join(SHIM_NAME);
    match std::fs::read(node_root.path(&shim)) {
        Ok(bytes) => match binary::version_on_node(node_root, &shim) {
            Ok(version) => println!(
                "shim: {} (sha256 {}, version {version})",
                shim.display(),
                binary::sha256_hex(&bytes)
            ),
            Err(e) => {
                ok = false;
                println!("shim: {} does not run: {e:#}", shim.display());
            }
        },
        Err(_) => {
            ok = false;
            println!("shim: {} is missing", shim.display());
        }
    }
    match cri::wait_healthy(&options.socket(&layout), Some(&options.runtime_name), Duration::from_secs(5))
        .await
    {
        Ok(_) => println!("containerd: healthy, knows {}", options.runtime_name),
        Err(e) => {
            ok = false;
            println!("containerd: {e:#}");
        }
    }
    if let Some(name) = &options.node_name {
        let (ready, version) = node::readiness(&node::client().await?, name).await?;
        println!(
            "node {name}: {}={} {}",
            node::READY_LABEL,
            if ready { node::READY_VALUE } else { "(absent)" },
            version.unwrap_or_default()
        );
        ok &= ready;
    }
    Ok(ok)
}

/// Restarts containerd and waits for it to be healthy (knowing `handler`,
/// if given); if it is not, puts the config back byte for byte, restarts
/// again, and fails with what went wrong.
async fn restart_or_roll_back(options: &Options, now: &Current, handler: Option<&str>) -> Result<()> {
    let node_root = &options.node_root;
    let socket = options.socket(&now.layout);
    println!("restarting containerd: {}", now.restart);
    let problem = match system::restart(&now.restart) {
        Err(e) => e,
        Ok(()) => match cri::wait_healthy(&socket, handler, options.health_timeout).await {
            Ok(health) => {
                println!("containerd is healthy ({})", health.handlers.join(", "));
                return Ok(());
            }
            Err(e) => e,
        },
    };
    eprintln!("containerd is not healthy after the change ({problem:#}); rolling back");
    let restored = match &now.text {
        Some(text) => system::write_atomically(node_root, &now.layout.config, text),
        None => system::remove_file(node_root, &now.layout.config),
    };
    restored.with_context(|| {
        format!(
            "ROLLBACK FAILED: {} still holds the new config and containerd is not healthy; \
             restore {} by hand and restart containerd",
            now.layout.config.display(),
            backup_path(&now.layout.config).display()
        )
    })?;
    system::restart(&now.restart)
        .context("the config was rolled back, but restarting containerd again failed")?;
    cri::wait_healthy(&socket, None, options.health_timeout)
        .await
        .context("the config was rolled back, but containerd is still not healthy")?;
    bail!(
        "containerd was not healthy with the new config, so {} was restored byte for byte and containerd \
         restarted on it; the cause: {problem:#}",
        now.layout.config.display()
    )
}

/// A config that is a symlink would be read through the installer's own
/// filesystem (an absolute link does not point into the node root), and
/// replacing it would cut the link: refuse, naming the target.
fn refuse_symlink(node_root: &NodeRoot, config: &Path) -> Result<()> {
    let local = node_root.path(config);
    if local.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        let target = std::fs::read_link(&local).unwrap_or_default();
        bail!(
            "{} is a symbolic link (to {}); pass the real file with --config",
            config.display(),
            target.display()
        );
    }
    Ok(())
}

fn config_dir(layout: &Layout) -> &Path {
    layout.config.parent().unwrap_or(Path::new("/"))
}

fn backup_path(config: &Path) -> PathBuf {
    PathBuf::from(format!("{}.wasmtime-custom.bak", config.display()))
}

/// Keeps the config as it was before the installer first changed it: an
/// existing backup is never overwritten by a later run.
fn keep_first_backup(node_root: &NodeRoot, config: &Path, text: &str) -> Result<()> {
    let backup = backup_path(config);
    if node_root.path(&backup).exists() {
        return Ok(());
    }
    system::write_atomically(node_root, &backup, text)?;
    system::copy_mode(&node_root.path(config), &node_root.path(&backup))
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

/// The major version of the node's containerd (`containerd --version`).
fn containerd_major(node_root: &NodeRoot, containerd: &Path) -> Result<u32> {
    let output = node_root.run(containerd, &["--version"])?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "containerd github.com/containerd/containerd 1.7.24 ..." or "... v2.1.9 ..."
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.trim_start_matches('v').split('.').next()?.parse().ok())
        .with_context(|| format!("could not read containerd's version from {:?}", text.trim()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every file under `dir` with its bytes (folders by their paths).
    fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.insert(path.clone(), Vec::new());
                found.extend(tree(&path));
            } else {
                found.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
        found
    }

    #[tokio::test]
    async fn a_corrupt_state_file_stops_install_and_uninstall_before_anything_changes() {
        let root = tempfile::tempdir().unwrap();
        let put = |path: &str, text: &str| {
            let local = root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            std::fs::write(local, text).unwrap();
        };
        put("/etc/containerd/config.toml", "version = 2\n");
        put("/usr/bin/containerd", "");
        put("/usr/local/bin/containerd-shim-wasmtime-custom-v1", "the shim installed before");
        put(state::PATH, "{\"config\": \"/etc/containerd/config.toml\", \"crea");
        let shim = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(shim.path(), "a new shim").unwrap();
        let options = Options {
            node_root: NodeRoot::new(root.path()),
            overrides: Overrides::default(),
            shim: shim.path().to_path_buf(),
            install_dir: "/usr/local/bin".into(),
            runtime_name: "wasmtime-custom".into(),
            restart_command: Some("exit 0".into()),
            health_timeout: Duration::from_secs(1),
            node_name: None,
            dry_run: false,
        };
        // The lock every run takes first coordinates runs; it is no change
        // to the node's setup.
        let lock = root.path().join("run/wasmtime-custom-node-installer.lock");
        let before = tree(root.path());

        let errors = [install(&options).await.unwrap_err(), uninstall(&options).await.unwrap_err()];

        for err in errors {
            let err = format!("{err:#}");
            assert!(err.contains(state::PATH) && err.contains("is not a state the installer wrote"), "{err}");
            assert!(err.contains("nothing was changed"), "{err}");
        }
        let mut after = tree(root.path());
        assert!(after.remove(&lock).is_some() && after.remove(&root.path().join("run")).is_some());
        assert_eq!(after, before, "a run that stops at the state file changes nothing on the node");
    }
}
