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
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use app::order::Order;
use e2e::containerd::{Container, Containerd, Run};
use e2e::node::FakeNode;
use tempfile::TempDir;

use crate::orders;
use crate::report::{self, Report};
use crate::standin::{self, InputBinding, Progress, StandIn};

/// The Wasm image: the app component as a wasm layer, precompiled once.
pub const WASM_IMAGE: &str = "localhost/wasmtime-custom/app:wasm";
/// The native baseline's image: `order-app-native` and the libraries it loads.
pub const NATIVE_IMAGE: &str = "localhost/wasmtime-custom/app-native:latest";
/// containerd's own runtime for Linux containers.
pub const RUNC: &str = "io.containerd.runc.v2";

/// What the three apps run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// The app component on the wasmtime-custom shim.
    Wasm,
    /// The native baseline under runc.
    Native,
}

impl Flavor {
    pub fn slug(self) -> &'static str {
        match self {
            Flavor::Wasm => "wasm",
            Flavor::Native => "native",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Flavor::Wasm => "Wasm component on wasmtime-custom (io.containerd.wasmtime-custom.v1)",
            Flavor::Native => "native Rust server under runc (io.containerd.runc.v2)",
        }
    }

    /// `ctr run` settings for one app listening on `port`, talking to `dapr_url`.
    pub fn run<'a>(self, id: &'a str, port: u16, dapr_url: &str) -> Run<'a> {
        match self {
            Flavor::Wasm => {
                Run::new(WASM_IMAGE, id).platform("wasip1/wasm").listen(port).env("DAPR_URL", dapr_url)
            }
            Flavor::Native => Run::new(NATIVE_IMAGE, id)
                .runtime(RUNC)
                .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
                .env("DAPR_URL", dapr_url),
        }
    }
}

/// The three deployments of the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Distributor,
    ReceiverExpress,
    ReceiverStandard,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Distributor, Role::ReceiverExpress, Role::ReceiverStandard];

    pub fn name(self) -> &'static str {
        match self {
            Role::Distributor => "distributor",
            Role::ReceiverExpress => "receiver-express",
            Role::ReceiverStandard => "receiver-standard",
        }
    }

    /// The input binding that delivers to this role.
    pub fn input(self) -> InputBinding {
        match self {
            Role::Distributor => standin::INGRESS,
            Role::ReceiverExpress => standin::EXPRESS_IN,
            Role::ReceiverStandard => standin::STANDARD_IN,
        }
    }
}

/// A private containerd on a fake node, with the shim installed by the node
/// installer and both app images imported.
pub struct Node {
    pub containerd: Containerd,
    _node: FakeNode,
}

impl Node {
    pub fn start() -> Result<Node> {
        let (node, containerd) = e2e::node::installed("1.7")
            .context("set up containerd 1.7 with the shim through the node installer")?;
        containerd.import("app-wasm.tar", &["--all-platforms"])?;
        containerd.import("app-native.tar", &[])?;
        Ok(Node { containerd, _node: node })
    }
}

/// How to run the flow.
#[derive(Debug, Clone)]
pub struct Options {
    pub orders: u32,
    /// Seed of the generated orders: the same seed gives the same orders.
    pub seed: u64,
    /// Invalid messages put on the ingress queue with the orders.
    pub poison: u32,
    pub standin: standin::Settings,
    /// The longest the flow may take once released.
    pub timeout: Duration,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Flows started by this process, for unique container ids.
static FLOWS: AtomicUsize = AtomicUsize::new(0);

/// One running flow: the stand-in and the three apps, orders generated.
pub struct Flow<'a> {
    node: &'a Node,
    flavor: Flavor,
    options: Options,
    runtime: tokio::runtime::Runtime,
    standin: StandIn,
    apps: BTreeMap<Role, App<'a>>,
    orders: Vec<Order>,
    poison: Vec<Vec<u8>>,
    released: Option<Instant>,
    _outbox: TempDir,
}

struct App<'a> {
    id: String,
    port: u16,
    container: Option<Container<'a>>,
}

impl<'a> Flow<'a> {
    /// Starts the stand-in and the three apps of `flavor`, and generates the
    /// orders; nothing is released yet.
    pub fn start(node: &'a Node, flavor: Flavor, options: Options) -> Result<Flow<'a>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("start the stand-in's runtime")?;
        let outbox = tempfile::Builder::new().prefix("wtc-outbox-").tempdir().context("create the outbox")?;
        let standin =
            runtime.block_on(StandIn::start(options.standin.clone(), "127.0.0.1", outbox.path()))?;
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
            let app =
                App { id: format!("flow-{run}-{}", role.name()), port: e2e::free_port(), container: None };
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
        let run = self.flavor.run(&app.id, app.port, &self.standin.url());
        let mut container =
            self.node.containerd.run(run).with_context(|| format!("start {}", role.name()))?;
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
            self.standin.publish(standin::INGRESS.queue, body)?;
        }
        Ok(())
    }

    pub fn progress(&self) -> Progress {
        self.standin.progress()
    }

    /// Waits until `done` says so, drawing progress; fails on the timeout or
    /// when the stand-in cannot deliver at all.
    pub fn wait_until(&self, mut done: impl FnMut(&Progress) -> bool) -> Result<Progress> {
        let released = self.released.context("release the orders first")?;
        let mut bar = Bar::new(self.options.progress, self.orders.len());
        loop {
            let progress = self.progress();
            if done(&progress) {
                bar.finish(&progress, released.elapsed());
                return Ok(progress);
            }
            bar.draw(&progress, released.elapsed());
            if let Some(fatal) = self.standin.fatal() {
                bar.finish(&progress, released.elapsed());
                bail!("the flow cannot run: {fatal}");
            }
            if released.elapsed() > self.options.timeout {
                bar.finish(&progress, released.elapsed());
                return Ok(progress);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until nothing is pending any more (every message acknowledged
    /// or dead-lettered) or the timeout, checks every blob, and stops the apps.
    pub fn finish(mut self) -> Result<Report> {
        let progress = self.wait_until(|p| p.pending == 0)?;
        let released = self.released.context("release the orders first")?;
        let record = self.standin.record();
        let timed_out = progress.pending != 0;
        let mut outputs = Vec::new();
        for role in Role::ALL {
            if let Some(app) = self.apps.get_mut(&role)
                && let Some(mut container) = app.container.take()
            {
                // An app that crashed has no task left to signal; its exit
                // code and output still belong in the report.
                let _ = container.signal("SIGTERM");
                let code = container.wait(Duration::from_secs(30))?;
                outputs.push((role.name(), code, container.output()));
            }
        }
        let verification =
            report::verify(&self.orders, &self.poison, &record, |outbox| self.standin.outbox(outbox))?;
        Ok(Report::new(
            self.flavor,
            &self.node.containerd,
            &self.options,
            released,
            &record,
            verification,
            timed_out,
            outputs,
        ))
    }
}

/// A one-line progress bar, redrawn in place on a terminal and printed every
/// few seconds otherwise (CI logs).
struct Bar {
    enabled: bool,
    terminal: bool,
    total: usize,
    last: Option<Instant>,
}

impl Bar {
    fn new(enabled: bool, total: usize) -> Bar {
        Bar { enabled, terminal: std::io::stderr().is_terminal(), total, last: None }
    }

    fn draw(&mut self, progress: &Progress, elapsed: Duration) {
        let every = if self.terminal { Duration::from_millis(100) } else { Duration::from_secs(5) };
        if self.last.is_some_and(|last| last.elapsed() < every) {
            return;
        }
        self.show(progress, elapsed);
    }

    /// The last state, always shown, and the end of the line.
    fn finish(&mut self, progress: &Progress, elapsed: Duration) {
        self.show(progress, elapsed);
        if self.enabled && self.terminal {
            eprintln!();
        }
    }

    fn show(&mut self, progress: &Progress, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        self.last = Some(Instant::now());
        const WIDTH: usize = 30;
        let filled = (progress.blobs * WIDTH).checked_div(self.total).unwrap_or(WIDTH).min(WIDTH);
        let line = format!(
            "[{}{}] {}/{} blobs  {:.1} s  redeliveries {}  dead letters {}  pending {}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            progress.blobs,
            self.total,
            elapsed.as_secs_f64(),
            progress.redeliveries,
            progress.dead_letters,
            progress.pending
        );
        let mut stderr = std::io::stderr();
        let _ = if self.terminal { write!(stderr, "\r{line}\x1b[K") } else { writeln!(stderr, "{line}") };
    }
}

/// Runs the whole job once: node, apps, release, report.
pub fn run_once(flavor: Flavor, options: Options) -> Result<Report> {
    let node = Node::start()?;
    run_on(&node, flavor, options)
}

/// Runs the flow on a node that is up already.
pub fn run_on(node: &Node, flavor: Flavor, options: Options) -> Result<Report> {
    let mut flow = Flow::start(node, flavor, options)?;
    flow.release()?;
    flow.finish()
}
