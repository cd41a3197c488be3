//! A private containerd: its own config, root, state, socket and log in a
//! temp dir, with the shim's folder first on its PATH. It never touches the
//! system's containerd, and it is stopped (tasks killed, mounts removed)
//! when dropped.
//!
//! containerd is (re)started by a small script written into its folder,
//! `launch.sh`: the same script is the restart command handed to the node
//! installer, so a restart by the installer and a start by this module are
//! one code path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::paths::{Paths, Version};
use crate::{poll, tool};

/// The runtime name containerd maps to `containerd-shim-wasmtime-custom-v1`.
pub const RUNTIME: &str = "io.containerd.wasmtime-custom.v1";
/// containerd's own runtime for Linux containers.
pub const RUNC: &str = "io.containerd.runc.v2";

/// How long containerd may take to answer after a (re)start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Containerd {
    dir: TempDir,
    version: Version,
    bins: PathBuf,
    socket: PathBuf,
    paths: Paths,
    compile_cache: PathBuf,
}

impl Containerd {
    /// Starts containerd `version` with the paths from the environment
    /// ([`Paths::from_env`]) and the shim's folder on its PATH.
    pub fn start(version: Version) -> Result<Containerd> {
        Containerd::start_in(&Paths::from_env()?, version)
    }

    /// Starts containerd `version` on a config of its own (CRI disabled:
    /// `ctr` drives it), with `paths`' shim folder first on its PATH.
    pub fn start_in(paths: &Paths, version: Version) -> Result<Containerd> {
        paths.shim()?;
        let dir = temp_dir()?;
        let config = dir.path().join("config.toml");
        let socket = dir.path().join("containerd.sock");
        std::fs::write(&config, plain_config(dir.path(), &socket))
            .with_context(|| format!("write {}", config.display()))?;
        let compile_cache = dir.path().join("wasmtime-custom-cache");
        Containerd::launch(paths, version, dir, &config, &socket, &paths.bin_dir, &compile_cache)
    }

    /// Starts containerd `version` on the caller's `config` (which sets its
    /// own root, state and grpc address `socket`), with `shim_dir` first on
    /// its PATH and the shim's compile cache in `compile_cache`.
    pub fn start_with_config(
        paths: &Paths,
        version: Version,
        config: &Path,
        socket: &Path,
        shim_dir: &Path,
        compile_cache: &Path,
    ) -> Result<Containerd> {
        Containerd::launch(paths, version, temp_dir()?, config, socket, shim_dir, compile_cache)
    }

    fn launch(
        paths: &Paths,
        version: Version,
        dir: TempDir,
        config: &Path,
        socket: &Path,
        shim_dir: &Path,
        compile_cache: &Path,
    ) -> Result<Containerd> {
        let bins = paths.containerd_bins(version)?;
        let script = launch_script(dir.path(), &bins, config, shim_dir, compile_cache);
        std::fs::write(dir.path().join("launch.sh"), script).context("write launch.sh")?;
        let containerd = Containerd {
            dir,
            version,
            bins,
            socket: socket.to_path_buf(),
            paths: paths.clone(),
            compile_cache: compile_cache.to_path_buf(),
        };
        containerd.restart()?;
        Ok(containerd)
    }

    /// Stops the containerd process (its shims and tasks keep running) and
    /// starts it again on the same config; returns once it answers.
    pub fn restart(&self) -> Result<()> {
        tool::stdout(Command::new("sh").arg(self.dir().join("launch.sh")))
            .with_context(|| format!("start containerd {}", self.version))?;
        poll::until_ok(
            &format!("containerd {} to answer on {}", self.version, self.socket.display()),
            START_TIMEOUT,
            || {
                if self.ctr(&["version"])?.status.success() {
                    return Ok(Some(()));
                }
                if !self.running() {
                    bail!(
                        "containerd {} exited at start; its log ends with:\n{}",
                        self.version,
                        self.log_tail(30)
                    );
                }
                Ok(None)
            },
        )
        .map_err(|e| e.context(format!("see {}", self.dir().join("containerd.log").display())))
    }

    /// The shell command that restarts this containerd (for the node
    /// installer's `--restart-command`); it returns without waiting.
    pub fn restart_command(&self) -> String {
        format!("sh {}", self.dir().join("launch.sh").display())
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// This containerd's folder (config, log, pid, launch script).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The shim's compile cache folder (`WASMTIME_CUSTOM_CACHE_DIR` in
    /// containerd's environment, which the shims inherit): private to this
    /// containerd, empty at its start.
    pub fn compile_cache(&self) -> &Path {
        &self.compile_cache
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's process id now (it changes with a restart).
    pub fn pid(&self) -> Result<u32> {
        let path = self.dir().join("containerd.pid");
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.trim().parse().with_context(|| format!("{} holds {text:?}, not a pid", path.display()))
    }

    fn running(&self) -> bool {
        self.pid().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Runs this containerd's own `ctr` with `args`.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        tool::output(&mut self.ctr_command(args))
    }

    /// Like [`Containerd::ctr`], failing with ctr's output unless it succeeds.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        tool::stdout(&mut self.ctr_command(args))
    }

    pub(crate) fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.bins.join("ctr"));
        command.arg("-a").arg(&self.socket).args(args);
        command
    }

    /// `ctr images import` of an archive from the images folder, into the
    /// default namespace; `extra` goes before the path (e.g. `--all-platforms`).
    pub fn import(&self, archive: &str, extra: &[&str]) -> Result<()> {
        self.import_into("default", archive, extra)
    }

    /// Like [`Containerd::import`], into `namespace` (`k8s.io` for CRI).
    pub fn import_into(&self, namespace: &str, archive: &str, extra: &[&str]) -> Result<()> {
        let path = self.paths.image(archive)?.display().to_string();
        let mut args = vec!["-n", namespace, "images", "import"];
        args.extend_from_slice(extra);
        args.push(&path);
        self.ctr_ok(&args).map(drop)
    }

    /// containerd's own log, its shims' lines included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills every task and removes every container, in every namespace.
    fn remove_everything(&self) {
        let list = |args: &[&str]| -> Vec<String> {
            self.ctr_ok(args).map(|out| out.lines().map(str::to_string).collect()).unwrap_or_default()
        };
        for namespace in list(&["namespaces", "ls", "-q"]) {
            let ns = namespace.as_str();
            for task in list(&["-n", ns, "tasks", "ls", "-q"]) {
                let _ = self.ctr(&["-n", ns, "tasks", "kill", "-s", "SIGKILL", &task]);
                let _ = self.ctr(&["-n", ns, "tasks", "delete", "-f", &task]);
            }
            for container in list(&["-n", ns, "containers", "ls", "-q"]) {
                let _ = self.ctr(&["-n", ns, "containers", "delete", &container]);
            }
        }
    }

    fn stop(&self) {
        if self.running() {
            self.remove_everything();
        }
        // A shim names its containerd's socket on its command line.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", "--"])
            .arg(format!("-address {}", self.socket.display()))
            .output();
        if let Ok(pid) = self.pid() {
            let _ = Command::new("kill").arg(pid.to_string()).output();
            let gone = poll::until("containerd to exit", Duration::from_secs(10), || {
                (!self.running()).then_some(())
            });
            if gone.is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
            }
        }
        unmount_under(self.dir());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Under /tmp: containerd's socket path must stay short (108 bytes at most).
fn temp_dir() -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix("wtc-containerd-")
        .tempdir_in("/tmp")
        .context("create a temp dir under /tmp")
}

fn plain_config(dir: &Path, socket: &Path) -> String {
    format!(
        "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
         # Kubernetes' CRI is not needed to drive containers with ctr.\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
         [grpc]\n  address = \"{socket}\"\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
    )
}

/// The script that stops this containerd if it runs and starts it again in
/// the background, logging to `containerd.log` and recording its pid.
fn launch_script(dir: &Path, bins: &Path, config: &Path, shim_dir: &Path, compile_cache: &Path) -> String {
    format!(
        r#"# Written by testbed: (re)starts a private containerd in the background.
dir='{dir}'
if [ -f "$dir/containerd.pid" ]; then
  pid=$(cat "$dir/containerd.pid")
  kill "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$pid" 2>/dev/null
fi
WASMTIME_CUSTOM_CACHE_DIR='{compile_cache}' PATH='{shim_dir}:{bins}':"$PATH" nohup '{bins}/containerd' --config '{config}' >>"$dir/containerd.log" 2>&1 &
echo $! >"$dir/containerd.pid"
"#,
        dir = dir.display(),
        bins = bins.display(),
        config = config.display(),
        shim_dir = shim_dir.display(),
        compile_cache = compile_cache.display(),
    )
}

/// Unmounts everything mounted under `dir` (rootfs, shm, netns), deepest first.
fn unmount_under(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_unstable_by(|a, b| b.cmp(a));
    for point in points {
        let _ = Command::new("umount").arg("-l").arg(point).output();
    }
}
