//! A private containerd for one test (own config, root, state and socket in
//! a temp dir, via `scripts/containerd.sh`), and containers run in it with
//! `ctr run` in the foreground, as a user at a terminal would.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// The runtime name containerd maps to `containerd-shim-wasmtime-custom-v1`.
pub const RUNTIME: &str = "io.containerd.wasmtime-custom.v1";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e is a workspace member").to_path_buf()
}

/// Where `cargo xtask images` writes the image archives.
pub fn images_dir() -> PathBuf {
    workspace_root().join("target/images")
}

/// The folder holding containerd `version`'s binaries (containerd, ctr,
/// containerd-shim-runc-v2), where `scripts/containerd.sh` keeps them.
pub fn bin_dir(version: &str) -> Result<PathBuf> {
    let output =
        Command::new(script()).args(["bin", version]).output().context("run scripts/containerd.sh bin")?;
    if !output.status.success() {
        bail!("no containerd {version}: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

fn script() -> PathBuf {
    workspace_root().join("scripts/containerd.sh")
}

pub struct Containerd {
    dir: TempDir,
    pub version: &'static str,
}

impl Containerd {
    /// Starts containerd `version` ("1.6", "1.7" or "2.1") with the shim
    /// from `target/release` on its PATH.
    pub fn start(version: &'static str) -> Result<Containerd> {
        Containerd::start_with(version, &[])
    }

    /// Starts containerd `version` on a config of the caller's (which sets
    /// its own root, state and `socket`), with `shim_dir` first on its PATH.
    pub fn start_with_config(
        version: &'static str,
        config: &Path,
        socket: &Path,
        shim_dir: &Path,
    ) -> Result<Containerd> {
        Containerd::start_with(
            version,
            &[
                ("CONTAINERD_CONFIG_FILE", config.as_os_str()),
                ("CONTAINERD_SOCKET", socket.as_os_str()),
                ("WASMTIME_CUSTOM_SHIM_DIR", shim_dir.as_os_str()),
            ],
        )
    }

    fn start_with(version: &'static str, env: &[(&str, &std::ffi::OsStr)]) -> Result<Containerd> {
        // Under /tmp: the socket path must stay short (108 bytes at most).
        let dir = tempfile::Builder::new().prefix("wtc-e2e-").tempdir_in("/tmp")?;
        let output = Command::new(script())
            .arg("start")
            .arg(dir.path())
            .arg(version)
            .envs(env.iter().copied())
            .output()
            .context("run scripts/containerd.sh")?;
        if !output.status.success() {
            bail!(
                "containerd {version} did not start (run scripts/test.sh, which builds the shim and \
                 installs containerd): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Containerd { dir, version })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The shell command that restarts this containerd (its tasks keep running).
    pub fn restart_command(&self) -> String {
        format!("{} restart {}", script().display(), self.dir().display())
    }

    /// containerd's process id now.
    pub fn pid(&self) -> Result<String> {
        let pid = std::fs::read_to_string(self.dir().join("containerd.pid")).context("containerd.pid")?;
        Ok(pid.trim().to_string())
    }

    /// Runs this containerd's own `ctr` with `args`.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_command(args).output().context("run ctr")
    }

    /// Like [`Containerd::ctr`], failing with ctr's stderr unless it succeeds.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.ctr(args)?;
        if !output.status.success() {
            bail!("ctr {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(script());
        command.arg("ctr").arg(self.dir()).args(args);
        command
    }

    /// `ctr image import` of an archive from `target/images`.
    pub fn import(&self, archive: &str, extra: &[&str]) -> Result<()> {
        let path = images_dir().join(archive);
        if !path.exists() {
            bail!("{} is missing; build the images with `cargo xtask images`", path.display());
        }
        let path = path.display().to_string();
        let mut args = vec!["images", "import"];
        args.extend_from_slice(extra);
        args.push(&path);
        self.ctr_ok(&args).map(drop)
    }

    /// containerd's own log, shims' log lines included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr run --rm --net-host --runtime io.containerd.wasmtime-custom.v1`
    /// (or the runtime `run` names) in the foreground, its output captured.
    pub fn run(&self, run: Run<'_>) -> Result<Container<'_>> {
        let args = run.ctr_args(&["run", "--rm"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self
            .ctr_command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn ctr run")?;
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().context("ctr stdout")?),
            Box::new(child.stderr.take().context("ctr stderr")?),
        ];
        for mut stream in streams {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buffer = [0; 4096];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    output.lock().expect("output lock").push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            }));
        }
        Ok(Container { containerd: self, id: run.id.to_string(), child, output, readers, exit: None })
    }
}

impl Containerd {
    /// `ctr run -d`: starts the container and returns once its task runs
    /// (nothing of its output is kept).
    pub fn run_detached(&self, run: Run<'_>) -> Result<()> {
        let args = run.ctr_args(&["run", "-d"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr_ok(&args).map(drop)
    }

    /// The process id of container `id`'s task (`ctr tasks ls`).
    pub fn task_pid(&self, id: &str) -> Result<u32> {
        let list = self.ctr_ok(&["tasks", "ls"])?;
        list.lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(id)).then(|| words.next()?.parse().ok()).flatten()
            })
            .with_context(|| format!("no task {id} in `ctr tasks ls`:\n{list}"))
    }

    /// Kills container `id`'s task and deletes the task and the container.
    pub fn remove(&self, id: &str) -> Result<()> {
        // The task may have ended already; deleting it is what must succeed.
        let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        crate::wait_for(&format!("task {id} to be deleted"), Duration::from_secs(30), || {
            self.ctr(&["tasks", "delete", id]).ok().filter(|o| o.status.success())
        })?;
        self.ctr_ok(&["containers", "delete", id]).map(drop)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir()).status();
    }
}

/// What to run.
pub struct Run<'a> {
    image: &'a str,
    id: &'a str,
    runtime: &'a str,
    env: Vec<String>,
    args: Vec<&'a str>,
    platform: Option<&'a str>,
    privileged: bool,
    mounts: Vec<String>,
}

impl<'a> Run<'a> {
    pub fn new(image: &'a str, id: &'a str) -> Run<'a> {
        Run {
            image,
            id,
            runtime: RUNTIME,
            env: Vec::new(),
            args: Vec::new(),
            platform: None,
            privileged: false,
            mounts: Vec::new(),
        }
    }

    /// Another runtime than wasmtime-custom (e.g. `io.containerd.runc.v2`).
    pub fn runtime(mut self, runtime: &'a str) -> Run<'a> {
        self.runtime = runtime;
        self
    }

    pub fn privileged(mut self) -> Run<'a> {
        self.privileged = true;
        self
    }

    /// Bind-mounts the host folder `source` at `target`, read-write.
    pub fn bind(mut self, source: &Path, target: &str) -> Run<'a> {
        self.mounts.push(format!("type=bind,src={},dst={target},options=rbind:rw", source.display()));
        self
    }

    pub fn env(mut self, key: &str, value: impl std::fmt::Display) -> Run<'a> {
        self.env.push(format!("{key}={value}"));
        self
    }

    /// Serve on 127.0.0.1:`port` (the container shares the host network).
    pub fn listen(self, port: u16) -> Run<'a> {
        self.env("WASMTIME_CUSTOM_LISTEN", format!("127.0.0.1:{port}"))
    }

    pub fn arg(mut self, arg: &'a str) -> Run<'a> {
        self.args.push(arg);
        self
    }

    pub fn args(mut self, args: &[&'a str]) -> Run<'a> {
        self.args.extend_from_slice(args);
        self
    }

    pub fn platform(mut self, platform: &'a str) -> Run<'a> {
        self.platform = Some(platform);
        self
    }

    /// `ctr` arguments: `command` (e.g. `run --rm`), the options, image, id, args.
    fn ctr_args(&self, command: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = command.iter().map(|word| word.to_string()).collect();
        args.extend(["--net-host".into(), "--runtime".into(), self.runtime.into()]);
        if let Some(platform) = self.platform {
            args.extend(["--platform".into(), platform.into()]);
        }
        if self.privileged {
            args.push("--privileged".into());
        }
        for mount in &self.mounts {
            args.extend(["--mount".into(), mount.clone()]);
        }
        for env in &self.env {
            args.extend(["--env".into(), env.clone()]);
        }
        args.extend([self.image.to_string(), self.id.to_string()]);
        args.extend(self.args.iter().map(|arg| arg.to_string()));
        args
    }
}

/// A running `ctr run`; killed if dropped while still running.
pub struct Container<'a> {
    containerd: &'a Containerd,
    pub id: String,
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<i32>,
}

impl Container<'_> {
    /// stdout and stderr so far (what `ctr run` printed).
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// `ctr tasks kill -s SIGNAL`.
    pub fn signal(&self, signal: &str) -> Result<()> {
        self.containerd.ctr_ok(&["tasks", "kill", "-s", signal, &self.id]).map(drop)
    }

    /// Waits until something accepts connections on `port`; fails at once,
    /// with the container's output, if the container exits first.
    pub fn wait_listening(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let output = self.finish_output();
                bail!("{} exited ({status}) before listening on {port}; output:\n{output}", self.id);
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {port} within 30 s; output:\n{}", self.id, self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the container to exit and returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Result<i32> {
        if let Some(code) = self.exit {
            return Ok(code);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.finish_output();
                let code = status.code().context("ctr was killed by a signal")?;
                self.exit = Some(code);
                return Ok(code);
            }
            if Instant::now() > deadline {
                bail!("{} still runs after {timeout:?}; output:\n{}", self.id, self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish_output(&mut self) -> String {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.output()
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.containerd.ctr(&["tasks", "kill", "-s", "SIGKILL", &self.id]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
