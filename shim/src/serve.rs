//! Serves a `wasi:http/proxy` component over HTTP/1.1 with keep-alive.
//!
//! Every request gets a fresh instance in its own store (built in
//! [`Server::new_store`]) from a pre-instantiated component, so one request's
//! trap or leak cannot touch the next. At most
//! `WASMTIME_CUSTOM_MAX_CONCURRENT_REQUESTS` requests hold an instance at
//! once; the others wait a bounded time, then get a 503 without one.
//!
//! On SIGTERM or SIGINT the server keeps serving for the shutdown delay (if
//! any), then stops accepting and drains: every response from then on says
//! `Connection: close`, so a client's next request on a kept-alive
//! connection is answered rather than cut; connections left idle are closed
//! after a short linger; in-flight requests finish within the grace period.
//! A second signal or the end of the grace period ends it at once.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use log::Level;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error as HttpError, WasiHttpView};

use crate::guest_calls::{GuestCalls, OnBehalfOf};
use crate::guest_setup::GuestSetup;
use crate::logs::{TaggedOutput, Target};
use crate::metrics::{self, Metrics};
use crate::outbound::OutboundPolicy;
use crate::outgoing::OutgoingHttp;
use crate::output;
use crate::settings::Settings;
use crate::signals::Signals;
use crate::store_state::StoreState;
use crate::traces::{RequestSpan, Traces};

/// Exit code when the server was stopped before every request finished
/// (second signal, or grace period over): 128 + SIGTERM.
pub const EXIT_CUT_SHORT: i32 = 143;

/// The response header carrying the id that tags the request's log lines.
const REQUEST_ID_HEADER: &str = "x-request-id";

/// During a drain, how long a connection may stay idle before it is
/// closed. A client that keeps sending gets its next answer (with
/// `Connection: close`) well within it; one that sends nothing loses
/// nothing when it is closed.
const LINGER: Duration = Duration::from_secs(2);

/// What a 503 tells the caller to wait before retrying, in seconds.
const RETRY_AFTER_SECONDS: &str = "1";

pub async fn serve(
    engine: &Engine,
    component: &Component,
    setup: &GuestSetup,
    settings: &Settings,
    mut signals: Signals,
) -> Result<i32> {
    let mut linker = Linker::<StoreState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .context("the component imports something this shim does not provide")?;
    let pre = ProxyPre::new(pre)
        .map_err(anyhow::Error::from)
        .context("the component's wasi:http/incoming-handler export is not usable")?;

    // Everything that can be checked is checked before listening: a broken
    // container fails its start instead of its first request. That includes
    // one instantiation (the memory limit, the instance pool), the span
    // exporter and the metrics port.
    let traces = Arc::new(Traces::new(&settings.traces)?);
    let server = Arc::new(Server::new(pre, setup, settings, traces.clone()));
    let mut store = server.new_store("start-up", None)?;
    server
        .pre
        .instantiate_async(&mut store)
        .await
        .map_err(anyhow::Error::from)
        .context("the component cannot be instantiated (see WASMTIME_CUSTOM_MAX_MEMORY_MB)")?;
    drop(store);
    if let Some(address) = settings.metrics_listen {
        let listener = metrics::bind(address).await?;
        tokio::spawn(metrics::serve(listener, server.metrics.clone()));
        output::message(Level::Info, format!("wasmtime-custom: metrics on http://{address}/metrics"));
    }
    let listener = TcpListener::bind(settings.listen).await.with_context(|| {
        format!("could not listen on {} (set {} to a free address)", settings.listen, crate::settings::LISTEN)
    })?;
    output::message(Level::Info, format!("wasmtime-custom: serving on http://{}", settings.listen));

    let mut acceptor = Acceptor::new(listener, server.clone());
    let stopped_by = tokio::select! {
        () = acceptor.run() => unreachable!("the accept loop only ends when dropped"),
        signal = signals.next() => signal,
    };
    server.draining.store(true, Ordering::SeqCst);
    server.metrics.draining.set(1);
    if !settings.shutdown_delay.is_zero() {
        output::message(
            Level::Info,
            format!(
                "wasmtime-custom: {}: serving {}s more (shutdown delay), each answer closing its connection",
                stopped_by.name(),
                settings.shutdown_delay.as_secs()
            ),
        );
        tokio::select! {
            () = acceptor.run() => unreachable!("the accept loop only ends when dropped"),
            () = tokio::time::sleep(settings.shutdown_delay) => {}
            second = signals.next() => output::message(
                Level::Info,
                format!("wasmtime-custom: second signal ({}): shutdown delay cut short", second.name()),
            ),
        }
    }
    let graceful = acceptor.stop().await;
    let in_flight = server.in_flight.load(Ordering::SeqCst);
    output::message(
        Level::Info,
        format!(
            "wasmtime-custom: {}: stopped accepting; {in_flight} request(s) in flight, waiting up to {}s \
             for them",
            stopped_by.name(),
            settings.grace.as_secs()
        ),
    );
    let cut_short = |why: &str| {
        let left = server.in_flight.load(Ordering::SeqCst);
        output::message(
            Level::Warn,
            format!("wasmtime-custom: {why}; exiting with {left} request(s) unfinished"),
        );
        EXIT_CUT_SHORT
    };
    let drained_by = Instant::now() + settings.grace;
    let drain = async {
        // Connections in use get their next answer with `Connection: close`
        // and end by themselves; the rest are closed after the linger.
        let lingered = Instant::now() + LINGER;
        while graceful.count() > 0 && Instant::now() < lingered {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        graceful.shutdown().await;
        // A guest may still run after its response went out (streaming, or
        // work after `finish`): every instance gives its slot back at its end.
        let all = u32::try_from(settings.max_concurrent_requests).unwrap_or(u32::MAX);
        let _ = server.slots.acquire_many(all).await;
    };
    let code = tokio::select! {
        () = drain => {
            output::message(Level::Info, "wasmtime-custom: all requests finished; exiting".into());
            0
        }
        _ = tokio::time::sleep_until(drained_by.into()) => cut_short("grace period over"),
        second = signals.next() => cut_short(&format!("second signal ({})", second.name())),
    };
    // Spans still queued are sent within what is left of the grace period
    // (at least a moment); a drain cut short sends none: it ends at once.
    if code == 0 {
        let left = drained_by.saturating_duration_since(Instant::now()).max(Duration::from_millis(500));
        let _ = tokio::task::spawn_blocking(move || traces.shutdown(left)).await;
    }
    Ok(code)
}

/// The accept loop: hands each connection to hyper, watched for the drain.
struct Acceptor {
    listener: TcpListener,
    server: Arc<Server>,
    graceful: GracefulShutdown,
    http: http1::Builder,
    /// A descriptor kept in reserve: when the process runs out, it is given
    /// up to accept one waiting connection and answer it 503, instead of
    /// leaving every waiting client hanging until a descriptor frees up.
    spare: Option<std::fs::File>,
    /// When the last "out of descriptors" warning was logged.
    warned: Option<Instant>,
}

impl Acceptor {
    fn new(listener: TcpListener, server: Arc<Server>) -> Acceptor {
        let mut http = http1::Builder::new();
        // The timer bounds how long a client may take to send a request's
        // head, so a half-sent request cannot hold a drain open.
        http.keep_alive(true).timer(TokioTimer::new());
        let spare = std::fs::File::open("/").ok();
        Acceptor { listener, server, graceful: GracefulShutdown::new(), http, spare, warned: None }
    }

    /// Accepts until the future is dropped.
    async fn run(&mut self) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _peer)) => {
                    self.serve(stream);
                    // Re-armed whenever a descriptor is free, so the next
                    // time the process runs out it can answer again.
                    if self.spare.is_none() {
                        self.spare = std::fs::File::open("/").ok();
                    }
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    self.shed_one(&e).await;
                }
                Err(e) => {
                    output::message(Level::Warn, format!("wasmtime-custom: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn serve(&self, stream: tokio::net::TcpStream) {
        let server = self.server.clone();
        let service = service_fn(move |request| server.clone().handle(request));
        let connection = self.graceful.watch(self.http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("connection ended with an error: {e}");
            }
        });
    }

    /// Out of descriptors: answers one waiting connection 503 with the
    /// spare descriptor, so clients are told rather than left waiting.
    async fn shed_one(&mut self, error: &std::io::Error) {
        if self.warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            self.warned = Some(Instant::now());
            output::message(
                Level::Warn,
                format!(
                    "wasmtime-custom: accept failed: {error}; answering waiting connections 503 until \
                     descriptors free up (raise the container's RLIMIT_NOFILE or lower \
                     WASMTIME_CUSTOM_MAX_CONCURRENT_REQUESTS)"
                ),
            );
        }
        if self.spare.is_none() {
            self.spare = std::fs::File::open("/").ok();
        }
        if self.spare.take().is_some()
            && let Ok(Ok((stream, _))) =
                tokio::time::timeout(Duration::from_millis(10), self.listener.accept()).await
        {
            self.server.metrics.unavailable(metrics::TOO_MANY_CONNECTIONS);
            tokio::spawn(refuse(stream));
        }
        // Whatever happened, give the connections being answered time to
        // end (and free their descriptors) before trying again.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    /// Stops accepting; the connections stay, watched by the returned
    /// handle. Connections the kernel has already completed are taken and
    /// served first (with `Connection: close`, as draining answers are):
    /// closing the listener over them would reset them.
    async fn stop(self) -> GracefulShutdown {
        while let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_millis(1), self.listener.accept()).await
        {
            self.serve(stream);
        }
        self.graceful
    }
}

/// EMFILE (the process's limit) or ENFILE (the system's).
fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(24) | Some(23))
}

/// Answers a connection 503 without reading more than its request head,
/// and closes it only after the client has had the answer.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = "no descriptor free to serve this connection; retry\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: {RETRY_AFTER_SECONDS}\r\nconnection: close\r\n\
         content-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut head = [0u8; 4096];
    // Reading the head first: closing a socket with unread input sends a
    // reset, which can destroy the answer before the client reads it. A
    // client that sends nothing for a second is answered all the same.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut head)).await;
    let exchange = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut head).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), exchange).await;
}

struct Server {
    pre: ProxyPre<StoreState>,
    setup: GuestSetup,
    settings: Settings,
    /// Random per process, so ids from different replicas do not collide.
    id_prefix: String,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    /// One pool of outgoing connections for all requests.
    outgoing: OutgoingHttp,
    outbound: Arc<OutboundPolicy>,
    /// A permit per request allowed to hold an instance.
    slots: Arc<Semaphore>,
    /// Set at SIGTERM: every answer then closes its connection.
    draining: AtomicBool,
    metrics: Arc<Metrics>,
    traces: Arc<Traces>,
}

/// Why a request got no answer from the guest.
enum Failure {
    /// The request could not be handed to the guest (no Host header, ...).
    BadRequest(String),
    /// The body is larger than `WASMTIME_CUSTOM_MAX_BODY_BYTES`.
    BodyTooLarge(u64),
    /// Every slot stayed busy for the whole queue timeout.
    Overloaded(Duration),
    /// No instance could be made (instance pool exhausted, out of memory).
    Unavailable(String),
    /// The guest trapped or panicked.
    Trap(String),
    /// The guest returned without answering, or answered with an error.
    Guest(String),
    /// Past the request timeout.
    Timeout(Duration),
}

impl Server {
    fn new(
        pre: ProxyPre<StoreState>,
        setup: &GuestSetup,
        settings: &Settings,
        traces: Arc<Traces>,
    ) -> Server {
        let random = RandomState::new().build_hasher().finish();
        Server {
            pre,
            setup: setup.clone(),
            settings: settings.clone(),
            id_prefix: format!("{:08x}", random as u32),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            outgoing: OutgoingHttp::new(),
            outbound: Arc::new(settings.outbound.clone()),
            slots: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            draining: AtomicBool::new(false),
            metrics: Arc::new(Metrics::new()),
            traces,
        }
    }

    /// The caller's `x-request-id` when it is a sane token, else a new one.
    fn request_id<B>(&self, request: &Request<B>) -> String {
        let given = request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
        match given {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 64
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
            {
                id.to_string()
            }
            _ => format!("{}-{}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// The one place a request's world is built: its WASI context with
    /// tagged output, its outgoing calls (allow-list, trace context,
    /// metrics), its memory limit and its CPU deadline.
    fn new_store(&self, request_id: &str, span: Option<Arc<RequestSpan>>) -> Result<Store<StoreState>> {
        let wasi = self.setup.context(|output| {
            output
                .stdout(TaggedOutput::new(request_id, Target::Stdout))
                .stderr(TaggedOutput::new(request_id, Target::Stderr));
        });
        let on_behalf_of =
            span.map(|span| OnBehalfOf { id: request_id.to_string(), traces: self.traces.clone(), span });
        let calls = GuestCalls::new(
            self.outgoing.clone(),
            self.outbound.clone(),
            Some(self.metrics.clone()),
            on_behalf_of,
        );
        let state = StoreState::new(wasi, calls, self.settings.max_memory_bytes);
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        // At every epoch tick a computing guest yields its worker thread, so
        // one busy request cannot stall the others, the probes or a drain;
        // past the request timeout it is stopped.
        let deadline = Instant::now() + self.settings.request_timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, Infallible> {
        let arrived = Instant::now();
        // Counted until the response head is out, also when the client goes
        // away and this future is dropped.
        let _in_flight = InFlight::enter(&self.in_flight, &self.metrics);
        let id = self.request_id(&request);
        let span = Arc::new(self.traces.start_request(request.method(), request.uri(), request.headers()));
        span.set_request_id(&id);
        let mut response = match self.admit_and_run(&id, request, span.clone()).await {
            Ok(response) => response,
            Err(failure) => {
                count(&self.metrics, &failure);
                failure.into_response(&id)
            }
        };
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        if self.draining.load(Ordering::SeqCst) {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        self.metrics.answered(response.status(), arrived.elapsed());
        span.finish(response.status());
        Ok(response)
    }

    /// The guard rails, in order: body size (nothing read), a slot (nothing
    /// instantiated while waiting), then the guest.
    async fn admit_and_run(
        &self,
        id: &str,
        request: Request<Incoming>,
        span: Arc<RequestSpan>,
    ) -> Result<Response<HyperOutgoingBody>, Failure> {
        let max_body = self.settings.max_body_bytes;
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max_body) {
            return Err(Failure::BodyTooLarge(max_body));
        }
        let wait = self.settings.queue_timeout;
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(wait, self.slots.clone().acquire_owned())
                .await
                .map_err(|_| Failure::Overloaded(wait))?
                // The semaphore is never closed.
                .map_err(|_| Failure::Overloaded(wait))?,
        };
        let too_large = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| BodyLimit::new(body, max_body, too_large.clone()));
        let answer = self.run_guest(id, request, permit, span).await;
        // A body that turned out too large (no or a false Content-Length)
        // is a 413 whatever the guest made of the error it got.
        if too_large.load(Ordering::SeqCst) {
            return Err(Failure::BodyTooLarge(max_body));
        }
        answer
    }

    async fn run_guest(
        &self,
        id: &str,
        request: Request<BodyLimit>,
        permit: OwnedSemaphorePermit,
        span: Arc<RequestSpan>,
    ) -> Result<Response<HyperOutgoingBody>, Failure> {
        let timeout = self.settings.request_timeout;
        let mut store = self.new_store(id, Some(span)).map_err(|e| Failure::Unavailable(format!("{e:#}")))?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| Failure::BadRequest(format!("{e:#}")))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| Failure::Unavailable(format!("{e:#}")))?;
        let pre = self.pre.clone();
        let metrics = self.metrics.clone();
        // The guest runs in its own task: it may keep streaming the body
        // after it has handed over the response head. The task holds the
        // slot for as long as the instance lives.
        let task = tokio::spawn(async move {
            let mut held = Held { store, _slot: permit };
            let store = &mut held.store;
            let started = Instant::now();
            let proxy = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(|e| Failure::Unavailable(format!("{e:#}")))?;
            metrics.instantiation.observe(started.elapsed().as_secs_f64());
            let call = proxy.wasi_http_incoming_handler().call_handle(&mut *store, request, out);
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(())) => Ok(()),
                // The epoch deadline (see `new_store`) stops a guest that computes too long.
                Ok(Err(e)) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
                    Err(Failure::Timeout(timeout))
                }
                Ok(Err(e)) => Err(Failure::Trap(format!("{e:?}"))),
                Err(_) => Err(Failure::Timeout(timeout)),
            }
        });
        // Aborted if this request is given up (timeout, client gone) before
        // the guest answered; kept running while it streams the body.
        let abort = AbortOnDrop(Some(task.abort_handle()));
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(Ok(response))) => {
                abort.disarm();
                let id = id.to_string();
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    if let Ok(Err(failure)) = task.await {
                        count(&metrics, &failure);
                        failure.log(&id, "after the response head was sent");
                    }
                });
                Ok(response)
            }
            Ok(Ok(Err(code))) => Err(Failure::Guest(format!("the handler answered with error {code:?}"))),
            // The guest dropped its response-outparam: the task says why.
            Ok(Err(_)) => match task.await {
                Ok(Ok(())) => Err(Failure::Guest("the handler returned without setting a response".into())),
                Ok(Err(failure)) => Err(failure),
                Err(e) => Err(Failure::Guest(format!("the handler's task failed: {e}"))),
            },
            Err(_) => Err(Failure::Timeout(timeout)),
        }
    }
}

/// Counts a failure in the metrics that name it.
fn count(metrics: &Metrics, failure: &Failure) {
    match failure {
        Failure::BodyTooLarge(_) => {
            metrics.body_too_large.inc();
        }
        Failure::Overloaded(_) => metrics.unavailable(metrics::OVERLOADED),
        Failure::Unavailable(_) => metrics.unavailable(metrics::INSTANTIATION_FAILED),
        Failure::Trap(_) => {
            metrics.traps.inc();
        }
        Failure::Timeout(_) => {
            metrics.timeouts.inc();
        }
        Failure::BadRequest(_) | Failure::Guest(_) => {}
    }
}

/// A request body that fails (`HTTP-request-body-size`) once more than
/// `max` bytes have come, and says so through `exceeded`.
struct BodyLimit {
    body: Incoming,
    left: u64,
    max: u64,
    exceeded: Arc<AtomicBool>,
}

impl BodyLimit {
    fn new(body: Incoming, max: u64, exceeded: Arc<AtomicBool>) -> BodyLimit {
        BodyLimit { body, left: max, max, exceeded }
    }
}

impl Body for BodyLimit {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                if len > self.left {
                    self.exceeded.store(true, Ordering::SeqCst);
                    return Poll::Ready(Some(Err(HttpError::HttpRequestBodySize(Some(self.max)))));
                }
                self.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request's instance and its concurrency slot. The fields drop in this
/// order, also when the task is aborted: the pool slot is free before the
/// next request is admitted.
struct Held {
    store: Store<StoreState>,
    _slot: OwnedSemaphorePermit,
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize, &'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize, metrics: &'a Metrics) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        metrics.in_flight.inc();
        InFlight(counter, metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        self.1.in_flight.dec();
    }
}

/// Aborts a task when dropped, unless disarmed.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

impl Failure {
    /// The status, what the caller is told, and the details for the log.
    fn describe(self) -> (StatusCode, &'static str, String) {
        match self {
            Failure::BadRequest(detail) => (StatusCode::BAD_REQUEST, "bad request", detail),
            Failure::BodyTooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
                format!("over {max} bytes (WASMTIME_CUSTOM_MAX_BODY_BYTES)"),
            ),
            Failure::Overloaded(waited) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests at once; retry",
                format!(
                    "no slot free within {} ms (WASMTIME_CUSTOM_MAX_CONCURRENT_REQUESTS)",
                    waited.as_millis()
                ),
            ),
            Failure::Unavailable(detail) => {
                (StatusCode::SERVICE_UNAVAILABLE, "no instance available to handle the request", detail)
            }
            Failure::Trap(detail) | Failure::Guest(detail) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "the handler failed", detail)
            }
            Failure::Timeout(after) => (
                StatusCode::GATEWAY_TIMEOUT,
                "the handler did not answer in time",
                format!("stopped after {}s", after.as_secs()),
            ),
        }
    }

    /// Logs a failure the caller cannot be told about any more.
    fn log(self, id: &str, when: &str) {
        let (_, public, detail) = self.describe();
        output::message(Level::Error, format!("[req={id}] wasmtime-custom: {public} {when}: {detail}"));
    }

    fn into_response(self, id: &str) -> Response<HyperOutgoingBody> {
        let shed = matches!(self, Failure::Overloaded(_));
        let unread = matches!(self, Failure::BodyTooLarge(_));
        let (status, public, detail) = self.describe();
        // The details (a trap's backtrace) go to the log, not to the caller.
        output::message(Level::Error, format!("[req={id}] wasmtime-custom: {public}: {detail}"));
        let body = format!("{public} (request id {id}; see the container log)\n");
        let body = Full::new(Bytes::from(body)).map_err(|never: Infallible| match never {}).boxed_unsync();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        if shed || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        if unread {
            // The body was not read: the connection cannot carry another request.
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
