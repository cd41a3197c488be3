//! The local bindings stand-in for Dapr: the subset of Dapr's HTTP API that
//! the order app uses, with in-memory queues in place of Service Bus and
//! folders in place of Blob Storage. It is a stand-in (there is no Dapr
//! here), and it behaves the way the app's contract relies on Dapr behaving:
//!
//! - An input binding delivers its queue's messages to one app route with
//!   `POST`, at most `concurrency` at a time, after the route answered
//!   Dapr's start-up `OPTIONS` probe with 2xx or 405.
//! - A delivery that gets a non-2xx answer, or no answer, is redelivered
//!   after a backoff (doubling from `backoff` up to `max_backoff`); after
//!   `max_attempts` failed deliveries the message is dead-lettered, with the
//!   last error. Nothing is dropped silently.
//! - `POST /v1.0/bindings/q-order-{express,standard}-out` puts `data` on the
//!   queue `q-order-{express,standard}`.
//! - `POST /v1.0/bindings/{express,standard}-outbox` writes `data` as the
//!   blob `metadata.blobName` into the binding's folder, atomically (a
//!   temporary file renamed into place), so a reader never sees half a blob.
//! - `GET /v1.0/metadata` describes the stand-in and its components.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

/// How the stand-in delivers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Deliveries in flight per input binding.
    pub concurrency: usize,
    /// Failed deliveries of one message before it is dead-lettered (Service
    /// Bus's `MaxDeliveryCount`).
    pub max_attempts: u32,
    /// Delay before the first redelivery; it doubles with each failure.
    pub backoff: Duration,
    /// The longest delay between two deliveries of a message.
    pub max_backoff: Duration,
    /// A delivery without an answer after this long has failed.
    pub delivery_timeout: Duration,
    /// How long an input binding probes its route before giving up.
    pub probe_timeout: Duration,
    /// The first this many blob writes answer 503, as a storage outage
    /// would (the receivers must answer 5xx, and the queue redeliver).
    pub failing_blob_writes: u64,
    /// Queue outputs are acknowledged and counted but not kept or delivered
    /// (for measuring the distributor alone).
    pub sink: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            concurrency: 32,
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            delivery_timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(60),
            failing_blob_writes: 0,
            sink: false,
        }
    }
}

/// An input binding: the queue it reads and the app route it delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputBinding {
    pub name: &'static str,
    pub queue: &'static str,
    pub route: &'static str,
}

/// The ingress queue, delivered to the distributor.
pub const INGRESS: InputBinding =
    InputBinding { name: "q-order-ingress", queue: "q-order-ingress", route: "/q-order-ingress" };
/// The express queue, delivered to receiver-express.
pub const EXPRESS_IN: InputBinding =
    InputBinding { name: "q-order-express-in", queue: "q-order-express", route: "/q-order-express-in" };
/// The standard queue, delivered to receiver-standard.
pub const STANDARD_IN: InputBinding =
    InputBinding { name: "q-order-standard-in", queue: "q-order-standard", route: "/q-order-standard-in" };

/// Output bindings onto a queue: (binding, queue).
const QUEUE_OUTPUTS: [(&str, &str); 2] =
    [("q-order-express-out", "q-order-express"), ("q-order-standard-out", "q-order-standard")];
/// Output bindings into a blob container (a folder here).
pub const OUTBOXES: [&str; 2] = ["express-outbox", "standard-outbox"];

/// Largest request body the stand-in reads.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Figures of one queue and the input binding that delivers it.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// Messages put on the queue.
    pub published: u64,
    /// Messages the app acknowledged with 2xx.
    pub delivered: u64,
    /// Deliveries that failed and were scheduled again.
    pub redeliveries: u64,
    /// Per acknowledged message: from being put on the queue to the 2xx.
    pub waits: Vec<Duration>,
    /// Per acknowledged message: the successful delivery's round trip.
    pub round_trips: Vec<Duration>,
    /// `orderId` of each message put on the queue (`None`: the body has none).
    pub order_ids: Vec<Option<u64>>,
}

/// A message given up on after `max_attempts` failed deliveries.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub queue: String,
    pub body: String,
    pub attempts: u32,
    pub last_error: String,
}

/// What the stand-in saw, for the report.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub queues: BTreeMap<&'static str, QueueStats>,
    pub dead_letters: Vec<DeadLetter>,
    /// Per blob (binding, name): when it was first written.
    pub blobs: HashMap<(String, String), Instant>,
    /// Blob writes, a rewrite of the same blob included.
    pub blob_writes: u64,
    /// Blob writes refused on purpose (`Settings::failing_blob_writes`).
    pub failed_blob_writes: u64,
    /// TCP connections the apps opened to the stand-in.
    pub connections: u64,
    /// Calls to the stand-in's API it refused (malformed, unknown binding).
    pub refused_calls: Vec<String>,
    /// Set when an input binding cannot deliver at all.
    pub fatal: Option<String>,
}

/// A progress sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub blobs: usize,
    pub dead_letters: usize,
    pub redeliveries: u64,
    /// Messages on a queue or in delivery; 0 once everything was acknowledged
    /// or dead-lettered.
    pub pending: i64,
}

struct Message {
    body: Bytes,
    failures: u32,
    enqueued: Instant,
}

struct Shared {
    settings: Settings,
    outbox_root: PathBuf,
    senders: BTreeMap<&'static str, UnboundedSender<Message>>,
    receivers: Mutex<HashMap<&'static str, UnboundedReceiver<Message>>>,
    record: Mutex<Record>,
    pending: AtomicI64,
    blob_sequence: AtomicU64,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The running stand-in, on the tokio runtime it was started on. Dropping it
/// stops accepting and delivering; deliveries and redeliveries already under
/// way end with that runtime.
pub struct StandIn {
    address: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl StandIn {
    /// Listens on `ip` (a free port) and keeps blobs under `outbox_root`.
    pub async fn start(settings: Settings, ip: &str, outbox_root: &Path) -> Result<StandIn> {
        for outbox in OUTBOXES {
            let dir = outbox_root.join(outbox);
            std::fs::create_dir_all(&dir).with_context(|| format!("create the outbox {}", dir.display()))?;
        }
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("bind the Dapr stand-in on {ip}"))?;
        let address = listener.local_addr().context("the stand-in's address")?;
        let (mut senders, mut receivers) = (BTreeMap::new(), HashMap::new());
        let mut record = Record::default();
        for queue in [INGRESS.queue, EXPRESS_IN.queue, STANDARD_IN.queue] {
            let (sender, receiver) = unbounded_channel();
            senders.insert(queue, sender);
            receivers.insert(queue, receiver);
            record.queues.insert(queue, QueueStats::default());
        }
        let shared = Arc::new(Shared {
            settings,
            outbox_root: outbox_root.to_path_buf(),
            senders,
            receivers: Mutex::new(receivers),
            record: Mutex::new(record),
            pending: AtomicI64::new(0),
            blob_sequence: AtomicU64::new(0),
            client: pooled_client(),
        });
        let server = tokio::spawn(accept(listener, shared.clone()));
        Ok(StandIn { address, shared, tasks: vec![server] })
    }

    /// The `DAPR_URL` for the apps.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Puts a message on `queue`, as a producer outside the flow would.
    pub fn publish(&self, queue: &str, body: Vec<u8>) -> Result<()> {
        let order_id = serde_json::from_slice::<serde_json::Value>(&body).ok().as_ref().and_then(order_id);
        self.shared.publish(queue, Bytes::from(body), order_id)
    }

    /// Starts delivering `binding`'s queue to the app at `app_url`
    /// (`http://host:port`), once the app answers the probe.
    pub fn deliver(&mut self, binding: InputBinding, app_url: String) -> Result<()> {
        let receiver = self
            .shared
            .receivers
            .lock()
            .expect("stand-in lock")
            .remove(binding.queue)
            .with_context(|| format!("{} is delivered already", binding.name))?;
        self.tasks.push(tokio::spawn(self.shared.clone().deliver_all(binding, app_url, receiver)));
        Ok(())
    }

    pub fn progress(&self) -> Progress {
        let record = self.shared.record();
        Progress {
            blobs: record.blobs.len(),
            dead_letters: record.dead_letters.len(),
            redeliveries: record.queues.values().map(|q| q.redeliveries).sum(),
            pending: self.shared.pending.load(Ordering::SeqCst),
        }
    }

    /// Why deliveries cannot happen at all, if they cannot.
    pub fn fatal(&self) -> Option<String> {
        self.shared.record().fatal.clone()
    }

    /// Everything seen so far.
    pub fn record(&self) -> Record {
        self.shared.record().clone()
    }

    /// The folder holding `outbox`'s blobs.
    pub fn outbox(&self, outbox: &str) -> PathBuf {
        self.shared.outbox_root.join(outbox)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true).timer(TokioTimer::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.record().connections += 1;
        let shared = shared.clone();
        let service = service_fn(move |request| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(shared.handle(request).await) }
        });
        tokio::spawn(http.serve_connection(TokioIo::new(stream), service));
    }
}

/// The body of a call to `POST /v1.0/bindings/{name}`.
#[derive(Deserialize)]
struct Invocation {
    data: serde_json::Value,
    operation: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

impl Shared {
    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().expect("stand-in lock")
    }

    /// Puts `body` on `queue`; `order_id` is the body's `orderId`, if any.
    fn publish(&self, queue: &str, body: Bytes, order_id: Option<u64>) -> Result<()> {
        let sender = self.senders.get(queue).with_context(|| format!("the stand-in has no queue {queue}"))?;
        if self.settings.sink && queue != INGRESS.queue {
            let mut record = self.record();
            let stats = record.queues.get_mut(queue).context("every queue has its figures")?;
            stats.published += 1;
            return Ok(());
        }
        {
            let mut record = self.record();
            let stats = record.queues.get_mut(queue).context("every queue has its figures")?;
            stats.published += 1;
            stats.order_ids.push(order_id);
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        sender
            .send(Message { body, failures: 0, enqueued: Instant::now() })
            .map_err(|_| anyhow::anyhow!("the queue {queue} is closed"))
    }

    async fn deliver_all(
        self: Arc<Self>,
        binding: InputBinding,
        app_url: String,
        mut receiver: UnboundedReceiver<Message>,
    ) {
        if let Err(reason) = self.probe(&binding, &app_url).await {
            self.record().fatal = Some(reason);
            return;
        }
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        while let Some(message) = receiver.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let shared = self.clone();
            let url = format!("{app_url}{}", binding.route);
            tokio::spawn(async move {
                shared.deliver_one(binding, &url, message).await;
                drop(slot);
            });
        }
    }

    /// Dapr's start-up probe: `OPTIONS route` until 2xx or 405.
    async fn probe(&self, binding: &InputBinding, app_url: &str) -> Result<(), String> {
        let url = format!("{app_url}{}", binding.route);
        let deadline = Instant::now() + self.settings.probe_timeout;
        loop {
            let last = match self.send(Method::OPTIONS, &url, Bytes::new()).await {
                Ok((status, _)) if status.is_success() || status == StatusCode::METHOD_NOT_ALLOWED => {
                    return Ok(());
                }
                Ok((status, body)) => format!("{status}: {body}"),
                Err(reason) => reason,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "input binding {}: the app never answered the OPTIONS probe of {url} with 2xx within {:?} \
                     (last: {last}); is it running and listening there?",
                    binding.name, self.settings.probe_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn deliver_one(&self, binding: InputBinding, url: &str, mut message: Message) {
        let started = Instant::now();
        let failure = match self.send(Method::POST, url, message.body.clone()).await {
            Ok((status, _)) if status.is_success() => None,
            Ok((status, body)) => Some(format!("{url} answered {status}: {}", body.trim())),
            Err(reason) => Some(reason),
        };
        let Some(error) = failure else {
            let mut record = self.record();
            if let Some(stats) = record.queues.get_mut(binding.queue) {
                stats.delivered += 1;
                stats.waits.push(message.enqueued.elapsed());
                stats.round_trips.push(started.elapsed());
            }
            drop(record);
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        message.failures += 1;
        if message.failures >= self.settings.max_attempts {
            self.record().dead_letters.push(DeadLetter {
                queue: binding.queue.to_string(),
                body: String::from_utf8_lossy(&message.body).into_owned(),
                attempts: message.failures,
                last_error: error,
            });
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if let Some(stats) = self.record().queues.get_mut(binding.queue) {
            stats.redeliveries += 1;
        }
        let delay = backoff(&self.settings, message.failures);
        let sender = self.senders[binding.queue].clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The receiving end lives as long as the stand-in.
            let _ = sender.send(message);
        });
    }

    /// One HTTP exchange; `Err` when there is no answer.
    async fn send(&self, method: Method, url: &str, body: Bytes) -> Result<(StatusCode, String), String> {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("invalid request to {url}: {e}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| error_chain(url, &e))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| error_chain(url, &e))?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(self.settings.delivery_timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("{url}: no answer within {:?}", self.settings.delivery_timeout)))
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return self.refuse(StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST", e.to_string()),
        };
        match (&method, path.as_str()) {
            (&Method::GET, "/v1.0/metadata") => json(StatusCode::OK, &self.metadata()),
            (&Method::GET, "/v1.0/healthz") => empty(StatusCode::NO_CONTENT),
            (&Method::POST, _) if path.starts_with("/v1.0/bindings/") => {
                self.invoke(&path["/v1.0/bindings/".len()..], &body).await
            }
            _ => self.refuse(
                StatusCode::NOT_FOUND,
                "ERR_NOT_FOUND",
                format!("{method} {path}: the stand-in serves only the bindings and metadata API"),
            ),
        }
    }

    async fn invoke(&self, binding: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let invocation: Invocation = match serde_json::from_slice(body) {
            Ok(invocation) => invocation,
            Err(e) => {
                let reason = format!("binding {binding}: the body is not {{\"data\", \"operation\"}}: {e}");
                return self.refuse(StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST", reason);
            }
        };
        if invocation.operation != "create" {
            let reason = format!(
                "binding {binding}: operation {:?} is not supported here; use \"create\"",
                invocation.operation
            );
            return self.refuse(StatusCode::BAD_REQUEST, "ERR_INVOKE_OUTPUT_BINDING", reason);
        }
        let data = Bytes::from(serde_json::to_vec(&invocation.data).expect("a JSON value serialises"));
        if let Some((_, queue)) = QUEUE_OUTPUTS.iter().find(|(name, _)| *name == binding) {
            return match self.publish(queue, data, order_id(&invocation.data)) {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(e) => {
                    self.refuse(StatusCode::INTERNAL_SERVER_ERROR, "ERR_INVOKE_OUTPUT_BINDING", e.to_string())
                }
            };
        }
        if OUTBOXES.contains(&binding) {
            return self.write_blob(binding, invocation.metadata.get("blobName"), data).await;
        }
        let reason = format!("output binding {binding} is not defined in the stand-in");
        self.refuse(StatusCode::NOT_FOUND, "ERR_INVOKE_OUTPUT_BINDING", reason)
    }

    async fn write_blob(&self, binding: &str, name: Option<&String>, data: Bytes) -> Response<Full<Bytes>> {
        let name = match name {
            Some(name) if valid_blob_name(name) => name.clone(),
            other => {
                let reason = format!(
                    "binding {binding}: metadata.blobName {other:?} is missing or is not a plain file name"
                );
                return self.refuse(StatusCode::BAD_REQUEST, "ERR_INVOKE_OUTPUT_BINDING", reason);
            }
        };
        let sequence = self.blob_sequence.fetch_add(1, Ordering::SeqCst);
        if sequence < self.settings.failing_blob_writes {
            self.record().failed_blob_writes += 1;
            let mut response = json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "errorCode": "ERR_INVOKE_OUTPUT_BINDING", "message": "injected outage" }),
            );
            response
                .headers_mut()
                .insert("x-stand-in", "injected-failure".parse().expect("a valid header value"));
            return response;
        }
        let dir = self.outbox_root.join(binding);
        let written = tokio::task::spawn_blocking({
            let name = name.clone();
            move || write_atomically(&dir, &name, sequence, &data)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|result| result.map_err(|e| format!("{e:#}")));
        if let Err(reason) = written {
            return self.refuse(StatusCode::INTERNAL_SERVER_ERROR, "ERR_INVOKE_OUTPUT_BINDING", reason);
        }
        let mut record = self.record();
        record.blob_writes += 1;
        record.blobs.entry((binding.to_string(), name)).or_insert_with(Instant::now);
        empty(StatusCode::NO_CONTENT)
    }

    fn refuse(&self, status: StatusCode, code: &str, message: String) -> Response<Full<Bytes>> {
        let mut record = self.record();
        // Enough to see what went wrong without growing without bound.
        if record.refused_calls.len() < 100 {
            record.refused_calls.push(format!("{status}: {message}"));
        }
        json(status, &serde_json::json!({ "errorCode": code, "message": message }))
    }

    fn metadata(&self) -> serde_json::Value {
        let binding = |name: &str, kind: &str| serde_json::json!({ "name": name, "type": kind, "version": "v1", "capabilities": [] });
        let mut components = Vec::new();
        for name in [INGRESS.name, EXPRESS_IN.name, STANDARD_IN.name, QUEUE_OUTPUTS[0].0, QUEUE_OUTPUTS[1].0]
        {
            components.push(binding(name, "bindings.azure.servicebusqueues"));
        }
        for name in OUTBOXES {
            components.push(binding(name, "bindings.azure.blobstorage"));
        }
        serde_json::json!({
            "id": "order-flow",
            "runtimeVersion": "stand-in",
            "components": components,
            "extended": { "standIn": "wasmtime-custom's local bindings stand-in for Dapr" },
        })
    }
}

/// Keep-alive connections to the apps; idle ones are closed before the
/// apps' servers close them (30 s), so no delivery goes out on a closing one.
fn pooled_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(20))
        .build(connector)
}

/// The delay before redelivering a message that failed `failures` times.
fn backoff(settings: &Settings, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    settings.backoff.saturating_mul(factor).min(settings.max_backoff)
}

/// The `orderId` of a message, if it has one.
fn order_id(message: &serde_json::Value) -> Option<u64> {
    message.get("orderId").and_then(serde_json::Value::as_u64)
}

/// A blob name the stand-in accepts: one path component, no tricks.
fn valid_blob_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.starts_with('.') && !name.contains(['/', '\0'])
}

fn write_atomically(dir: &Path, name: &str, sequence: u64, data: &[u8]) -> Result<()> {
    let temporary = dir.join(format!(".{name}.{sequence}.partial"));
    std::fs::write(&temporary, data).with_context(|| format!("write {}", temporary.display()))?;
    let target = dir.join(name);
    std::fs::rename(&temporary, &target).with_context(|| format!("rename into {}", target.display()))
}

fn error_chain(url: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{url}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, "application/json".parse().expect("a valid header value"));
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_are_plain_file_names() {
        for good in ["1", "10000", "order-7"] {
            assert!(valid_blob_name(good), "{good}");
        }
        for bad in ["", ".", "..", "../x", "a/b", ".hidden"] {
            assert!(!valid_blob_name(bad), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let settings = Settings {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            ..Settings::default()
        };
        let delays: Vec<u128> = (1..=6).map(|failures| backoff(&settings, failures).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700, 700]);
        assert_eq!(backoff(&settings, u32::MAX), Duration::from_millis(700));
    }
}
