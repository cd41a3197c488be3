//! The local bindings stand-in for Dapr: the subset of Dapr's HTTP API that
//! the order app uses, with in-memory queues in place of Service Bus and
//! folders in place of Blob Storage. It is a stand-in (there is no Dapr
//! here), and it behaves the way the app's contract relies on Dapr behaving:
//! an input binding probes its route, then delivers its queue's messages
//! with bounded concurrency; a failed delivery is redelivered after a
//! backoff, and dead-lettered with its last error after `max_attempts`;
//! nothing is dropped silently; blobs are written atomically; a message's
//! deliveries carry the W3C trace context of the call that published it, or
//! start a new trace.
//!
//! - [`queue`]: one queue's rules (publish, hand out, acknowledge, fail,
//!   redeliver, dead-letter), plain code with time as an input.
//! - `delivery`: an input binding: the probe, bounded concurrent `POST`s.
//! - `api`: Dapr's HTTP API: output bindings, metadata.
//! - `blobs`: the outbox folders, blob names, atomic writes.
//! - `stats`: what the stand-in saw: the record and progress.
//! - `state`: what the API and the deliveries share.
//! - `options`: [`StandInOptions`].
//! - `trace`: W3C trace context, from a binding call to its deliveries.

mod api;
mod blobs;
mod delivery;
mod options;
pub mod queue;
mod state;
mod stats;
mod trace;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::task::JoinHandle;

use self::blobs::BlobStore;
pub use self::options::StandInOptions;
pub use self::queue::DeadLetter;
use self::state::StandInState;
use self::stats::order_id;
pub use self::stats::{Progress, QueueStats, Record};
use crate::bindings::InputBinding;

/// The running stand-in, on the tokio runtime it was started on. Dropping it
/// stops accepting and delivering (messages waiting for a redelivery stay
/// where they are); deliveries already under way end with that runtime.
pub struct DaprStandIn {
    address: SocketAddr,
    state: Arc<StandInState>,
    /// Queues an input binding delivers already.
    delivered: BTreeSet<&'static str>,
    tasks: Vec<JoinHandle<()>>,
}

impl DaprStandIn {
    /// Listens on `ip` (a free port) and keeps blobs under `outbox_root`.
    pub async fn start(options: StandInOptions, ip: &str, outbox_root: &Path) -> Result<DaprStandIn> {
        let blobs = BlobStore::create(outbox_root, options.failing_blob_writes)?;
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("bind the Dapr stand-in on {ip}"))?;
        let address = listener.local_addr().context("the stand-in's address")?;
        let state = Arc::new(StandInState::new(options, blobs));
        let server = tokio::spawn(api::serve(listener, state.clone()));
        Ok(DaprStandIn { address, state, delivered: BTreeSet::new(), tasks: vec![server] })
    }

    /// The `DAPR_URL` for the apps.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Puts a message on `queue`, as a producer outside the flow would: no
    /// trace context comes with it, so its delivery starts a new trace.
    pub fn publish(&self, queue: &str, body: Vec<u8>) -> Result<()> {
        let order_id = serde_json::from_slice::<serde_json::Value>(&body).ok().as_ref().and_then(order_id);
        self.state.publish(queue, Bytes::from(body), order_id, None)
    }

    /// Starts delivering `binding`'s queue to the app at `app_url`
    /// (`http://host:port`), once the app answers the probe. Must be called
    /// within the stand-in's tokio runtime.
    pub fn deliver(&mut self, binding: InputBinding, app_url: String) -> Result<()> {
        let queue = self.state.queue_name(binding.queue).with_context(|| {
            format!("input binding {}: the stand-in has no queue {}", binding.name, binding.queue)
        })?;
        if !self.delivered.insert(queue) {
            anyhow::bail!("{} is delivered already", binding.name);
        }
        self.tasks.push(tokio::spawn(delivery::deliver(self.state.clone(), binding, app_url)));
        Ok(())
    }

    pub fn progress(&self) -> Progress {
        self.state.stats.progress(self.state.pending())
    }

    /// Why deliveries cannot happen at all, if they cannot.
    pub fn fatal(&self) -> Option<String> {
        self.state.stats.fatal_reason()
    }

    /// Everything seen so far.
    pub fn record(&self) -> Record {
        self.state.stats.snapshot()
    }

    /// The folder holding `outbox`'s blobs.
    pub fn outbox(&self, outbox: &str) -> PathBuf {
        self.state.blobs.folder(outbox)
    }
}

impl Drop for DaprStandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::sync::mpsc;

    use super::trace::{TRACEPARENT, TRACESTATE, parse_traceparent};
    use super::*;
    use crate::bindings::{EXPRESS_IN, INGRESS, QUEUE_OUTPUTS};

    /// A delivery the test app received.
    #[derive(Debug)]
    struct Received {
        route: String,
        order_id: u64,
        traceparent: Option<String>,
        tracestate: Option<String>,
    }

    /// An app on a local port: it answers the probe, reports every
    /// delivery, and fails the first delivery of each message (by body), so
    /// that each message is delivered twice.
    async fn app() -> (String, mpsc::UnboundedReceiver<Received>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (sender, receiver) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(HashSet::new()));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (sender, seen) = (sender.clone(), seen.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let (sender, seen) = (sender.clone(), seen.clone());
                    async move {
                        if request.method() == Method::OPTIONS {
                            return Ok::<_, Infallible>(answer(StatusCode::OK));
                        }
                        let header =
                            |name| request.headers().get(name).map(|v| v.to_str().unwrap().to_string());
                        let (traceparent, tracestate) = (header(TRACEPARENT), header(TRACESTATE));
                        let route = request.uri().path().to_string();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let order_id = message["orderId"].as_u64().unwrap();
                        let first = seen.lock().unwrap().insert(body);
                        // The test may have all it waits for and be gone.
                        let _ = sender.send(Received { route, order_id, traceparent, tracestate });
                        Ok(answer(if first { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }))
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new();
                tokio::spawn(async move { connection.serve_connection(TokioIo::new(stream), service).await });
            }
        });
        (url, receiver)
    }

    fn answer(status: StatusCode) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        response
    }

    /// A stand-in that redelivers at once.
    async fn standin(outbox: &Path) -> DaprStandIn {
        let options = StandInOptions {
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(5),
            probe_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(10),
            ..StandInOptions::default()
        };
        DaprStandIn::start(options, "127.0.0.1", outbox).await.unwrap()
    }

    /// The next `count` deliveries, by order id in the order they came.
    async fn deliveries(
        app: &mut mpsc::UnboundedReceiver<Received>,
        count: usize,
    ) -> BTreeMap<u64, Vec<Received>> {
        let mut by_order: BTreeMap<u64, Vec<Received>> = BTreeMap::new();
        for n in 0..count {
            let received = tokio::time::timeout(Duration::from_secs(10), app.recv())
                .await
                .unwrap_or_else(|_| panic!("delivery {} of {count} did not come within 10 s", n + 1))
                .expect("the app runs");
            by_order.entry(received.order_id).or_default().push(received);
        }
        by_order
    }

    /// An app's call of the output binding `binding` with `headers`; the
    /// stand-in's answer.
    async fn call(
        standin: &DaprStandIn,
        binding: &str,
        order_id: u64,
        headers: &[(&str, &str)],
    ) -> StatusCode {
        let body = serde_json::json!({ "data": { "orderId": order_id }, "operation": "create" });
        let mut request = Request::post(format!("{}/v1.0/bindings/{binding}", standin.url()))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        Client::builder(TokioExecutor::new()).build_http().request(request).await.unwrap().status()
    }

    fn trace_id(traceparent: &str) -> &str {
        &traceparent[3..35]
    }

    #[tokio::test]
    async fn each_ingress_message_starts_a_trace_of_its_own_that_its_redelivery_keeps() {
        let outbox = tempfile::tempdir().unwrap();
        let (url, mut app) = app().await;
        let mut standin = standin(outbox.path()).await;
        for order_id in 1..=5 {
            standin.publish(INGRESS.queue, format!(r#"{{"orderId":{order_id}}}"#).into_bytes()).unwrap();
        }
        standin.deliver(INGRESS, url).unwrap();
        let mut trace_ids = HashSet::new();
        for (order_id, deliveries) in deliveries(&mut app, 10).await {
            assert_eq!(deliveries.len(), 2, "order {order_id}: failed once, then acknowledged");
            let traceparent =
                deliveries[0].traceparent.clone().expect("an ingress delivery has a traceparent");
            assert_eq!(parse_traceparent(&traceparent), Some(traceparent.clone()), "valid as it is");
            assert_eq!(deliveries[1].traceparent.as_ref(), Some(&traceparent), "the redelivery keeps it");
            assert!(deliveries.iter().all(|d| d.route == INGRESS.route && d.tracestate.is_none()));
            assert!(trace_ids.insert(trace_id(&traceparent).to_string()), "order {order_id} shares a trace");
        }
        assert_eq!(trace_ids.len(), 5);
    }

    #[tokio::test]
    async fn a_calls_trace_context_reaches_its_deliveries_and_a_malformed_one_is_replaced() {
        let outbox = tempfile::tempdir().unwrap();
        let (url, mut app) = app().await;
        let mut standin = standin(outbox.path()).await;
        standin.deliver(EXPRESS_IN, url).unwrap();
        let express_out = QUEUE_OUTPUTS.iter().find(|output| output.queue == EXPRESS_IN.queue).unwrap().name;
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let version_ff = "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
        let calls = [
            (1, vec![(TRACEPARENT, valid), (TRACESTATE, state)]),
            (2, vec![(TRACEPARENT, version_ff), (TRACESTATE, state)]),
            (3, vec![(TRACEPARENT, "00-not-a-traceparent")]),
            (4, vec![]),
        ];
        for (order_id, headers) in &calls {
            assert_eq!(call(&standin, express_out, *order_id, headers).await, StatusCode::NO_CONTENT);
        }
        let deliveries = deliveries(&mut app, 2 * calls.len()).await;
        for delivery in &deliveries[&1] {
            assert_eq!(delivery.route, EXPRESS_IN.route);
            assert_eq!(delivery.traceparent.as_deref(), Some(valid), "passed through unchanged");
            assert_eq!(delivery.tracestate.as_deref(), Some(state), "passed through unchanged");
        }
        for order_id in [2, 3, 4] {
            let [first, again] = &deliveries[&order_id][..] else {
                panic!("order {order_id}: not two deliveries")
            };
            let traceparent = first.traceparent.clone().expect("a new trace");
            assert_eq!(parse_traceparent(&traceparent), Some(traceparent.clone()), "order {order_id}");
            assert_ne!(trace_id(&traceparent), trace_id(valid), "order {order_id}: a new trace");
            assert_eq!(first.tracestate, None, "order {order_id}: no state without a valid traceparent");
            assert_eq!(
                again.traceparent.as_ref(),
                Some(&traceparent),
                "order {order_id}: the redelivery keeps it"
            );
        }
    }
}
