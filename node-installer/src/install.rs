//! The three subcommands: `install`, `uninstall`, `status`.
//!
//! Order of `install`, each step only if the ones before succeeded: read the
//! installer's state (`state`); find the config; work out the edit and check
//! it with the node's own containerd (`config dump`); put the shim binary in
//! place (checked to run on the node; renamed over an older version, whose
//! running shims keep their inode); write the config atomically, with a
//! backup; restart containerd only if the config changed (an upgrade of the
//! binary alone restarts nothing); check containerd's health over CRI and
//! roll back byte for byte if it is not healthy; only then label the node.
//!
//! Order of `uninstall`: unlabel the node first, so that no new Wasm pod is
//! scheduled here; then find what still runs on the runtime (`in_use`) and
//! stop, naming it, unless told to go ahead; only then take the runtime out
//! of the config, restart containerd (rolled back like `install`), and
//! remove the binary once no process runs it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::{self, EditInputs, Runtime};
use crate::layout::{self, ConfigKind, Layout, Overrides};
use crate::node::{self, KubeNode};
use crate::node_root::NodeRoot;
use crate::state::{self, State};
use crate::system::{self, Restart};
use crate::{binary, cri, dump, in_use};

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
    /// The Kubernetes Node to label when done (unlabel first, on uninstall).
    pub kube_node: Option<KubeNode>,
    pub dry_run: bool,
}

/// What `uninstall` does when Wasm pods, or other containers on the
/// runtime, still run on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhileInUse {
    /// Stop before anything but the node's label changes, naming them.
    Refuse,
    /// Go ahead (`--force`), naming them: nothing stops them, but nothing
    /// of theirs can start again on this node.
    Proceed,
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

/// The node's layout, printed with the reason it was chosen.
fn detect(options: &Options) -> Result<Layout> {
    let layout = layout::detect(&options.node_root, &options.overrides)?;
    println!("containerd config: {layout}");
    Ok(layout)
}

fn current(options: &Options, layout: Layout) -> Result<Current> {
    let node_root = &options.node_root;
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
    let now = current(options, detect(options)?)?;
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

    if let Some(kube_node) = &options.kube_node {
        node::mark_ready(&kube_node.client, &kube_node.name, &binary.version).await?;
        println!("node {} labelled {}={}", kube_node.name, node::READY_LABEL, node::READY_VALUE);
    }
    Ok(())
}

pub async fn uninstall(options: &Options, while_in_use: WhileInUse) -> Result<()> {
    let node_root = &options.node_root;
    let _lock = if options.dry_run { None } else { Some(system::lock(node_root)?) };
    let state = state::read(node_root)?;
    // Unlabel first: the RuntimeClass selects on the label, so from now on
    // no new Wasm pod is scheduled here, and what runs can only wind down.
    if let (Some(kube_node), false) = (&options.kube_node, options.dry_run) {
        node::unmark(&kube_node.client, &kube_node.name).await?;
        println!(
            "node {}: label {} removed; no new Wasm pod is scheduled here",
            kube_node.name,
            node::READY_LABEL
        );
    }
    let layout = detect(options)?;
    check_in_use(options, &layout, while_in_use).await?;
    let now = current(options, layout)?;
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
    // The runtime is gone already: a cache that cannot be removed (a shim
    // still writing under --force) is worth a warning, not a failure.
    match binary::remove_compile_cache(node_root) {
        Ok(Some(bytes)) => {
            println!(
                "removed the compile cache {} ({:.1} MiB)",
                binary::COMPILE_CACHE,
                bytes as f64 / 1048576.0
            )
        }
        Ok(None) => {}
        Err(e) => eprintln!("warning: {e:#}; remove {} by hand", binary::COMPILE_CACHE),
    }
    state::remove(node_root)?;
    Ok(())
}

/// Prints what is installed; `Ok(true)` when everything is in place and healthy.
pub async fn status(options: &Options) -> Result<bool> {
    let node_root = &options.node_root;
    let layout = detect(options)?;
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
    if let Some(kube_node) = &options.kube_node {
        let (ready, version) = node::readiness(&kube_node.client, &kube_node.name).await?;
        println!(
            "node {}: {}={} {}",
            kube_node.name,
            node::READY_LABEL,
            if ready { node::READY_VALUE } else { "(absent)" },
            version.unwrap_or_default()
        );
        ok &= ready;
    }
    Ok(ok)
}

/// Finds what still runs on the runtime (see `in_use`) and stops the
/// uninstall, naming it, unless `while_in_use` says to go ahead. Not knowing
/// (containerd does not answer) counts as in use.
async fn check_in_use(options: &Options, layout: &Layout, while_in_use: WhileInUse) -> Result<()> {
    let name = &options.runtime_name;
    let shim = options.install_dir.join(SHIM_NAME);
    let socket = options.socket(layout);
    let (problem, what_to_do) = match in_use::find(&options.node_root, &socket, name, &shim).await {
        Ok(in_use) if in_use.is_empty() => {
            println!("nothing runs on {name} here: no Wasm pod, no shim process");
            return Ok(());
        }
        Ok(in_use) => (
            format!("{name} is still in use on this node: {in_use}"),
            "The runtime stays registered and the shim in place, so they keep running. Delete these pods or \
             their workloads (or let them finish), then run uninstall again (the uninstall DaemonSet retries \
             by itself); or pass --force to remove the runtime while they run: nothing stops them, but \
             nothing of theirs can start again on this node",
        ),
        Err(e) => (
            format!("could not tell whether anything still runs on {name}: {e:#}"),
            "Check that containerd runs and answers on its socket (see --socket), then run uninstall again \
             (the uninstall DaemonSet retries by itself); or pass --force to remove the runtime regardless",
        ),
    };
    if options.dry_run {
        println!("dry run: {problem}; uninstall would stop here unless given --force");
        return Ok(());
    }
    match while_in_use {
        WhileInUse::Proceed => {
            println!(
                "{problem}; going ahead (--force), stopping nothing; the shim binary stays while a shim runs it"
            );
            Ok(())
        }
        WhileInUse::Refuse if options.kube_node.is_some() => bail!(
            "{problem}. Nothing was changed but the node's label (no new Wasm pod is scheduled here). {what_to_do}"
        ),
        WhileInUse::Refuse => bail!("{problem}. Nothing was changed. {what_to_do}"),
    }
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

    use serde_json::json;
    use tempfile::{NamedTempFile, TempDir};

    use super::*;
    use crate::api_server_stand_in::*;
    use crate::node::{READY_LABEL, VERSION_ANNOTATION};

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

    /// A node root in a temp folder with containerd's config, a containerd
    /// binary (an empty file: every run here stops before running it) and
    /// the shim an earlier install put there; options for it.
    struct Scratch {
        root: TempDir,
        options: Options,
        _new_shim: NamedTempFile,
    }

    impl Scratch {
        fn new() -> Scratch {
            let root = tempfile::tempdir().unwrap();
            let new_shim = NamedTempFile::new().unwrap();
            std::fs::write(new_shim.path(), "a new shim").unwrap();
            let options = Options {
                node_root: NodeRoot::new(root.path()),
                overrides: Overrides::default(),
                shim: new_shim.path().to_path_buf(),
                install_dir: "/usr/local/bin".into(),
                runtime_name: "wasmtime-custom".into(),
                restart_command: Some("exit 0".into()),
                health_timeout: Duration::from_secs(1),
                kube_node: None,
                dry_run: false,
            };
            let scratch = Scratch { root, options, _new_shim: new_shim };
            scratch.put("/etc/containerd/config.toml", "version = 2\n");
            scratch.put("/usr/bin/containerd", "");
            scratch.put("/usr/local/bin/containerd-shim-wasmtime-custom-v1", "the shim installed before");
            scratch
        }

        fn put(&self, path: &str, text: &str) {
            let local = self.root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            std::fs::write(local, text).unwrap();
        }

        /// The node's files, but for the lock every run takes first: it
        /// coordinates runs, and is no change to the node's setup.
        fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
            let mut files = tree(self.root.path());
            files.remove(&self.root.path().join("run/wasmtime-custom-node-installer.lock"));
            files.remove(&self.root.path().join("run"));
            files
        }

        fn label_through(&mut self, server: &ApiServerStandIn) {
            self.options.kube_node = Some(KubeNode { name: NODE.into(), client: server.client() });
        }
    }

    #[tokio::test]
    async fn a_corrupt_state_file_stops_install_and_uninstall_before_anything_changes() {
        let scratch = Scratch::new();
        scratch.put(state::PATH, "{\"config\": \"/etc/containerd/config.toml\", \"crea");
        let before = scratch.files();

        let errors = [
            install(&scratch.options).await.unwrap_err(),
            uninstall(&scratch.options, WhileInUse::Refuse).await.unwrap_err(),
        ];

        for err in errors {
            let err = format!("{err:#}");
            assert!(err.contains(state::PATH) && err.contains("is not a state the installer wrote"), "{err}");
            assert!(err.contains("nothing was changed"), "{err}");
        }
        assert_eq!(scratch.files(), before, "a run that stops at the state file changes nothing on the node");
    }

    #[tokio::test]
    async fn uninstall_changes_nothing_on_the_node_when_its_label_cannot_be_removed() {
        let server = ApiServerStandIn::start(
            403,
            status_json(
                403,
                "Forbidden",
                "nodes \"wasm-node-1\" is forbidden: cannot patch resource \"nodes\"",
            ),
        )
        .await;
        let mut scratch = Scratch::new();
        scratch.label_through(&server);
        let before = scratch.files();

        // Even told to go ahead whatever runs: a node that may still get
        // Wasm pods keeps its runtime.
        let err = uninstall(&scratch.options, WhileInUse::Proceed).await.unwrap_err();

        let err = format!("{err:#}");
        assert!(err.contains("could not remove the wasmtime-custom.io/runtime label"), "{err}");
        assert!(err.contains("cannot patch resource"), "{err}");
        assert_eq!(only_request(&server).method, "PATCH");
        assert_eq!(scratch.files(), before, "the config and the shim are as they were");
    }

    #[tokio::test]
    async fn uninstall_unlabels_the_node_first_then_stops_when_it_cannot_tell_what_still_runs() {
        let server = ApiServerStandIn::start(200, node_json(json!({}), json!({}))).await;
        let mut scratch = Scratch::new();
        scratch.label_through(&server);
        let before = scratch.files();

        // containerd's socket, /run/containerd/containerd.sock, is not there.
        let err = uninstall(&scratch.options, WhileInUse::Refuse).await.unwrap_err();

        assert_only_a_merge_patch_of_the_node(
            &server,
            json!({ "metadata": { "labels": { READY_LABEL: null }, "annotations": { VERSION_ANNOTATION: null } } }),
        );
        let err = format!("{err:#}");
        assert!(err.contains("could not tell whether anything still runs on wasmtime-custom"), "{err}");
        assert!(err.contains("could not connect to containerd's socket"), "{err}");
        assert!(err.contains("Nothing was changed but the node's label"), "{err}");
        assert!(err.contains("Check that containerd runs") && err.contains("pass --force"), "{err}");
        assert_eq!(scratch.files(), before, "the config and the shim are as they were");
    }
}
