//! An input binding delivering its queue to an app, as Dapr does: first
//! Dapr's start-up probe (`OPTIONS` on the route every 100 ms until 2xx or
//! 405), then a `POST` of each message to the route, at most `concurrency`
//! at a time. A 2xx acknowledges the message; any other answer, no
//! connection, or no answer within `delivery_timeout` fails it (the queue
//! decides between redelivery and dead letter). Each `POST` carries its
//! message's trace context as `traceparent` and `tracestate` headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use super::queue::Delivery;
use super::state::StandInState;
use super::trace::{TRACEPARENT, TRACESTATE, TraceContext};
use crate::bindings::InputBinding;

/// How often the start-up probe asks.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Delivers `binding`'s queue to the app at `app_url` (`http://host:port`)
/// for as long as the task runs. If the app never answers the probe, the
/// reason is recorded as fatal and nothing is delivered.
pub async fn deliver(state: Arc<StandInState>, binding: InputBinding, app_url: String) {
    let client = AppClient::new(state.options.delivery_timeout);
    let url = format!("{app_url}{}", binding.route);
    if let Err(reason) = probe(&client, &binding, &url, state.options.probe_timeout).await {
        state.stats.fatal(reason);
        return;
    }
    let slots = Arc::new(Semaphore::new(state.options.concurrency.max(1)));
    loop {
        // Never closed: the semaphore lives as long as this loop.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let delivery = match state.next_delivery(binding.queue).await {
            Ok(delivery) => delivery,
            Err(e) => {
                state.stats.fatal(format!("input binding {}: {e:#}", binding.name));
                return;
            }
        };
        let (state, client, url) = (state.clone(), client.clone(), url.clone());
        tokio::spawn(async move {
            deliver_one(&state, &client, binding, &url, delivery).await;
            drop(slot);
        });
    }
}

/// Dapr's start-up probe: `OPTIONS url` until 2xx or 405, for at most `timeout`.
async fn probe(
    client: &AppClient,
    binding: &InputBinding,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.send(Method::OPTIONS, url, Bytes::new(), None).await {
            Ok((status, _)) if status.is_success() || status == StatusCode::METHOD_NOT_ALLOWED => {
                return Ok(());
            }
            Ok((status, body)) => format!("{status}: {body}"),
            Err(reason) => reason,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "input binding {}: the app never answered the OPTIONS probe of {url} with 2xx within {timeout:?} \
                 (last: {last}); is it running and listening there?",
                binding.name
            ));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// One delivery, settled on its queue.
async fn deliver_one(
    state: &StandInState,
    client: &AppClient,
    binding: InputBinding,
    url: &str,
    delivery: Delivery,
) {
    let started = Instant::now();
    match client.send(Method::POST, url, delivery.body, Some(&delivery.trace)).await {
        Ok((status, _)) if status.is_success() => {
            state.acknowledge(binding.queue, delivery.id, started.elapsed())
        }
        Ok((status, body)) => {
            state.fail(binding.queue, delivery.id, format!("{url} answered {status}: {}", body.trim()))
        }
        Err(reason) => state.fail(binding.queue, delivery.id, reason),
    }
}

/// Keep-alive connections to the apps, every exchange bounded in time.
#[derive(Clone)]
struct AppClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl AppClient {
    fn new(timeout: Duration) -> AppClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // Idle connections are closed before the apps' servers close them
        // (30 s), so no delivery goes out on a closing one.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(20))
            .build(connector);
        AppClient { client, timeout }
    }

    /// One HTTP exchange, carrying `trace` if given; `Err` when there is no
    /// answer.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
        trace: Option<&TraceContext>,
    ) -> Result<(StatusCode, String), String> {
        let mut request = Request::builder().method(method).uri(url).header(CONTENT_TYPE, "application/json");
        if let Some(trace) = trace {
            request = request.header(TRACEPARENT, trace.traceparent());
            if let Some(tracestate) = trace.tracestate() {
                request = request.header(TRACESTATE, tracestate);
            }
        }
        let request = request.body(Full::new(body)).map_err(|e| format!("invalid request to {url}: {e}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| error_chain(url, &e))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| error_chain(url, &e))?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("{url}: no answer within {:?}", self.timeout)))
    }
}

/// `url: error: cause: cause...`, the whole chain on one line.
fn error_chain(url: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{url}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
