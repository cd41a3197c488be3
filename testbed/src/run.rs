//! Containers run with `ctr run` on a [`Containerd`]: in the foreground with
//! their output captured ([`Containerd::run`], as a user at a terminal
//! would), or detached ([`Containerd::run_detached`]).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::containerd::{Containerd, RUNTIME};
use crate::poll;

/// What to run: image, container id, runtime, and `ctr run`'s options.
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
    /// `image` as container `id` on the wasmtime-custom runtime, on the
    /// host's network.
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

    /// Another runtime than wasmtime-custom (e.g. [`crate::RUNC`]).
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

    /// Appends to the container's arguments (`ctr run IMAGE ID ARGS...`
    /// replaces the image's entrypoint: name the program first).
    pub fn arg(mut self, arg: &'a str) -> Run<'a> {
        self.args.push(arg);
        self
    }

    /// Like [`Run::arg`], several at once.
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

impl Containerd {
    /// `ctr run --rm` in the foreground, its output captured.
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
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().context("ctr stdout")?),
            Box::new(child.stderr.take().context("ctr stderr")?),
        ];
        let readers = streams.into_iter().map(|stream| capture(stream, output.clone())).collect();
        Ok(Container { containerd: self, id: run.id.to_string(), child, output, readers, exit: None })
    }

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
        poll::until(&format!("task {id} to be deleted"), Duration::from_secs(30), || {
            self.ctr(&["tasks", "delete", id]).ok().filter(|o| o.status.success())
        })?;
        self.ctr_ok(&["containers", "delete", id]).map(drop)
    }
}

/// Appends what `stream` yields to `output`, on a thread of its own.
fn capture(mut stream: Box<dyn Read + Send>, output: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0; 4096];
        while let Ok(n) = stream.read(&mut buffer) {
            if n == 0 {
                break;
            }
            output.lock().expect("output lock").push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    })
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

    /// Waits until the container's output has a line containing `text`.
    pub fn wait_for_line(&self, text: &str, timeout: Duration) -> Result<()> {
        poll::until(&format!("a line with {text:?} from {}", self.id), timeout, || {
            self.output().lines().any(|line| line.contains(text)).then_some(())
        })
        .map_err(|e| e.context(format!("{}'s output so far:\n{}", self.id, self.output())))
    }

    /// Waits until something accepts connections on 127.0.0.1:`port`;
    /// fails at once, with the container's output, if the container exits first.
    pub fn wait_listening(&mut self, port: u16) -> Result<()> {
        let what = format!("{} to listen on {port}", self.id);
        poll::until_ok(&what, Duration::from_secs(30), || {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Some(()));
            }
            if let Some(status) = self.child.try_wait()? {
                let output = self.finish_output();
                bail!("{} exited ({status}) before listening on {port}; output:\n{output}", self.id);
            }
            Ok(None)
        })
        .map_err(|e| e.context(format!("{}'s output so far:\n{}", self.id, self.output())))
    }

    /// Waits for the container to exit and returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Result<i32> {
        if let Some(code) = self.exit {
            return Ok(code);
        }
        let status =
            poll::until_ok(&format!("{} to exit", self.id), timeout, || Ok(self.child.try_wait()?))
                .map_err(|e| e.context(format!("{}'s output so far:\n{}", self.id, self.output())))?;
        self.finish_output();
        let code = status.code().context("ctr was killed by a signal")?;
        self.exit = Some(code);
        Ok(code)
    }

    /// All of the output, once ctr has exited.
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
            let _ = poll::until("ctr run to end", Duration::from_secs(10), || {
                (!matches!(self.child.try_wait(), Ok(None))).then_some(())
            });
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
