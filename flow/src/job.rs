//! The main job: the order flow on one machine. A private containerd on a
//! fake node gets the shim from the node installer; three containers of the
//! app (distributor, receiver-express, receiver-standard) run on it, each on
//! its own port of the host network; the Dapr stand-in connects them; N
//! orders are released at once and followed until every blob is written,
//! then checked one by one against what was sent.
//!
//! The same job runs the native baseline: the same three roles from the
//! native image under runc, on the same containerd, stand-in and data.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use app::order::Order;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tempfile::TempDir;
use testbed::{Container, Containerd, InstalledNode, Paths, Version};

use crate::bindings::INGRESS;
use crate::model::{Flavor, FlowOptions, Role};
use crate::orders;
use crate::report::{self, AppExit, FlowRun, Report};
use crate::standin::{DaprStandIn, Progress};

/// A private containerd on a fake node, with the shim installed by the node
/// installer and both app images imported.
pub struct Node {
    installed: InstalledNode,
}

impl Node {
    /// With the shim, the node installer, the images and containerd 1.7 from `paths`.
    pub fn start(paths: &Paths) -> Result<Node> {
        let installed = InstalledNode::start(paths, Version::V1_7)
            .context("set up containerd 1.7 with the shim through the node installer")?;
        installed.containerd.import("app.tar", &[])?;
        installed.containerd.import("app-native.tar", &[])?;
        Ok(Node { installed })
    }

    pub fn containerd(&self) -> &Containerd {
        &self.installed.containerd
    }
}

/// Flows started by this process, for unique container ids.
static FLOWS: AtomicUsize = AtomicUsize::new(0);

/// One running flow: the stand-in and the three apps, orders generated.
pub struct Flow<'a> {
    node: &'a Node,
    flavor: Flavor,
    options: FlowOptions,
    runtime: tokio::runtime::Runtime,
    standin: DaprStandIn,
    apps: BTreeMap<Role, RunningApp<'a>>,
    orders: Vec<Order>,
    poison: Vec<Vec<u8>>,
    released: Option<Instant>,
    _outbox: TempDir,
}

/// One role's container, while it runs.
struct RunningApp<'a> {
    id: String,
    port: u16,
    container: Option<Container<'a>>,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy)]
pub enum Waited {
    /// The condition held.
    Reached(Progress),
    /// The flow's timeout struck first.
    TimedOut(Progress),
}

impl Waited {
    /// The progress if the condition held; an error if the timeout struck first.
    pub fn reached(self) -> Result<Progress> {
        match self {
            Waited::Reached(progress) => Ok(progress),
            Waited::TimedOut(progress) => {
                bail!("the flow's timeout struck first; progress then: {progress:?}")
            }
        }
    }
}

impl<'a> Flow<'a> {
    /// Starts the stand-in and the three apps of `flavor`, and generates the
    /// orders; nothing is released yet.
    pub fn start(node: &'a Node, flavor: Flavor, options: FlowOptions) -> Result<Flow<'a>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("start the stand-in's runtime")?;
        let outbox = tempfile::Builder::new().prefix("wtc-outbox-").tempdir().context("create the outbox")?;
        let standin =
            runtime.block_on(DaprStandIn::start(options.standin.clone(), "127.0.0.1", outbox.path()))?;
        let orders = orders::generate(options.orders, options.seed);
        let poison = orders::poison(options.poison);
        let mut flow = Flow {
            node,
            flavor,
            options,
            runtime,
            standin,
            apps: BTreeMap::new(),
            orders,
            poison,
            released: None,
            _outbox: outbox,
        };
        // Unique on this host: the shim keeps container state under
        // /run/containerd/wasmtime-custom/<namespace>/<id>, whichever containerd asks.
        let run =
            format!("{}-{}-{}", std::process::id(), FLOWS.fetch_add(1, Ordering::SeqCst), flavor.slug());
        for role in Role::ALL {
            let app = RunningApp {
                id: format!("flow-{run}-{}", role.name()),
                port: testbed::free_port()?,
                container: None,
            };
            flow.apps.insert(role, app);
            flow.start_app(role)?;
        }
        for role in Role::ALL {
            let url = format!("http://127.0.0.1:{}", flow.apps[&role].port);
            let _guard = flow.runtime.enter();
            flow.standin.deliver(role.input(), url)?;
        }
        Ok(flow)
    }

    /// Starts `role`'s container (again) and waits until it listens.
    pub fn start_app(&mut self, role: Role) -> Result<()> {
        let app = self.apps.get_mut(&role).context("every role has an app")?;
        // Each app's spans are named by its role (the shim reads this; the
        // native app ignores it).
        let mut run =
            self.flavor.run(&app.id, app.port, &self.standin.url()).env("OTEL_SERVICE_NAME", role.name());
        for (name, value) in &self.options.app_env {
            run = run.env(name, value);
        }
        let mut container =
            self.node.containerd().run(run).with_context(|| format!("start {}", role.name()))?;
        container.wait_listening(app.port).with_context(|| format!("start {}", role.name()))?;
        app.container = Some(container);
        Ok(())
    }

    /// Kills `role`'s container, as a crash or an eviction would.
    pub fn kill_app(&mut self, role: Role) -> Result<()> {
        let app = self.apps.get_mut(&role).context("every role has an app")?;
        if let Some(mut container) = app.container.take() {
            container.signal("SIGKILL")?;
            container.wait(Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Puts every order (and the poison) on the ingress queue at once.
    pub fn release(&mut self) -> Result<()> {
        let mut bodies: Vec<Vec<u8>> = self
            .orders
            .iter()
            .map(|order| serde_json::to_vec(order).context("serialise an order"))
            .collect::<Result<_>>()?;
        bodies.extend(self.poison.iter().cloned());
        self.released = Some(Instant::now());
        for body in bodies {
            self.standin.publish(INGRESS.queue, body)?;
        }
        Ok(())
    }

    pub fn progress(&self) -> Progress {
        self.standin.progress()
    }

    /// Waits until `done` says so or the flow's timeout strikes (the
    /// `Waited` says which), drawing progress; fails when the stand-in
    /// cannot deliver at all.
    pub fn wait_until(&self, mut done: impl FnMut(&Progress) -> bool) -> Result<Waited> {
        let released = self.released.context("release the orders first")?;
        let bar = Bar::new(self.options.progress, self.orders.len());
        loop {
            let progress = self.progress();
            if done(&progress) {
                bar.finish(&progress, released.elapsed());
                return Ok(Waited::Reached(progress));
            }
            bar.draw(&progress, released.elapsed());
            if let Some(fatal) = self.standin.fatal() {
                bar.finish(&progress, released.elapsed());
                bail!("the flow cannot run: {fatal}");
            }
            if released.elapsed() > self.options.timeout {
                bar.finish(&progress, released.elapsed());
                return Ok(Waited::TimedOut(progress));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until nothing is pending any more (every message acknowledged
    /// or dead-lettered) or the timeout, checks every blob, and stops the apps.
    pub fn finish(mut self) -> Result<Report> {
        let waited = self.wait_until(|p| p.pending == 0)?;
        let released = self.released.context("release the orders first")?;
        let record = self.standin.record();
        let timed_out = matches!(waited, Waited::TimedOut(_));
        let mut apps = Vec::new();
        for role in Role::ALL {
            if let Some(app) = self.apps.get_mut(&role)
                && let Some(mut container) = app.container.take()
            {
                // An app that crashed has no task left to signal; its exit
                // code and output still belong in the report.
                let _ = container.signal("SIGTERM");
                let code = container.wait(Duration::from_secs(30))?;
                apps.push(AppExit { role: role.name(), code, output: container.output() });
            }
        }
        let verification =
            report::verify(&self.orders, &self.poison, &record, |outbox| self.standin.outbox(outbox))?;
        Ok(Report::new(FlowRun {
            flavor: self.flavor,
            containerd: self.node.containerd().version().name(),
            options: &self.options,
            released,
            record: &record,
            verification,
            timed_out,
            apps,
        }))
    }
}

/// The progress bar on stderr: drawn only when asked for and stderr is a
/// terminal (never into a CI log); its last state stays on screen.
struct Bar {
    bar: ProgressBar,
    /// The figures after the blob count, as the next draw shows them.
    figures: Arc<Mutex<String>>,
}

impl Bar {
    fn new(enabled: bool, total: usize) -> Bar {
        // Redrawn at most 10 times a second: enough to watch, and no flood
        // of escape codes on a slow terminal.
        let target = if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        let figures = Arc::new(Mutex::new(String::new()));
        let bar = ProgressBar::with_draw_target(Some(total as u64), target).with_style(Bar::style(&figures));
        Bar { bar, figures }
    }

    fn style(figures: &Arc<Mutex<String>>) -> ProgressStyle {
        let figures = figures.clone();
        // A constant template, parsed in a unit test: it cannot fail here.
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} blobs  {figures}")
            .expect("the bar's template parses")
            .progress_chars("#.")
            .with_key("figures", move |_: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = out.write_str(&figures.lock().unwrap_or_else(PoisonError::into_inner));
            })
    }

    /// Shows `progress` (one draw, when the rate allows).
    fn draw(&self, progress: &Progress, elapsed: Duration) {
        *self.figures.lock().unwrap_or_else(PoisonError::into_inner) = format!(
            "{:.1} s  redeliveries {}  dead letters {}  pending {}",
            elapsed.as_secs_f64(),
            progress.redeliveries,
            progress.dead_letters,
            progress.pending
        );
        self.bar.set_position(progress.blobs as u64);
    }

    /// The last state, drawn now and left on screen as it is.
    fn finish(&self, progress: &Progress, elapsed: Duration) {
        self.draw(progress, elapsed);
        self.bar.abandon();
    }
}

/// Runs the whole job once: node, apps, release, report.
pub fn run_once(paths: &Paths, flavor: Flavor, options: FlowOptions) -> Result<Report> {
    let node = Node::start(paths)?;
    run_on(&node, flavor, options)
}

/// Runs the flow on a node that is up already.
pub fn run_on(node: &Node, flavor: Flavor, options: FlowOptions) -> Result<Report> {
    let mut flow = Flow::start(node, flavor, options)?;
    flow.release()?;
    flow.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_bar_shows_blobs_time_and_failures_on_one_line() {
        let bar = Bar::new(false, 300);
        let progress = Progress { blobs: 150, dead_letters: 1, redeliveries: 2, pending: 3 };
        bar.finish(&progress, Duration::from_millis(4100));
        assert_eq!(bar.bar.position(), 150, "the last state is kept, not filled up");
        assert_eq!(*bar.figures.lock().unwrap(), "4.1 s  redeliveries 2  dead letters 1  pending 3");
        assert!(bar.bar.is_finished());
    }
}
