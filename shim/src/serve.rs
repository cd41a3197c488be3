//! Serves a `wasi:http/proxy` component over HTTP/1.1 with keep-alive.
//!
//! Every request gets a fresh instance in its own store (built in
//! [`Server::new_store`]) from a pre-instantiated component, so one request's
//! trap or leak cannot touch the next. On SIGTERM or SIGINT the server stops
//! accepting, lets in-flight requests finish within the grace period, and
//! returns; a second signal or the end of the grace period ends it at once.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use log::Level;
use tokio::net::TcpListener;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::guest_setup::GuestSetup;
use crate::logs::{TaggedOutput, Target};
use crate::outgoing::OutgoingHttp;
use crate::output;
use crate::settings::Settings;
use crate::signals::Signals;
use crate::store_state::StoreState;

/// Exit code when the server was stopped before every request finished
/// (second signal, or grace period over): 128 + SIGTERM.
pub const EXIT_CUT_SHORT: i32 = 143;

/// The response header carrying the id that tags the request's log lines.
const REQUEST_ID_HEADER: &str = "x-request-id";

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
    // one instantiation (the memory limit, the instance pool).
    let server = Arc::new(Server::new(pre, setup, settings));
    let mut store = server.new_store("start-up")?;
    server
        .pre
        .instantiate_async(&mut store)
        .await
        .map_err(anyhow::Error::from)
        .context("the component cannot be instantiated (see WASMTIME_CUSTOM_MAX_MEMORY_MB)")?;
    drop(store);
    let listener = TcpListener::bind(settings.listen).await.with_context(|| {
        format!("could not listen on {} (set {} to a free address)", settings.listen, crate::settings::LISTEN)
    })?;
    output::message(Level::Info, format!("wasmtime-custom: serving on http://{}", settings.listen));

    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // The timer bounds how long a client may take to send a request's head,
    // so a half-sent request cannot hold a drain open.
    http.keep_alive(true).timer(TokioTimer::new());

    let stopped_by = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Usually out of file descriptors: back off briefly
                        // instead of spinning, and keep serving.
                        output::message(Level::Warn, format!("wasmtime-custom: accept failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let server = server.clone();
                let service = service_fn(move |request| server.clone().handle(request));
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        log::debug!("connection ended with an error: {e}");
                    }
                });
            }
            signal = signals.next() => break signal,
        }
    };

    drop(listener);
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
    let code = tokio::select! {
        _ = graceful.shutdown() => {
            output::message(Level::Info, "wasmtime-custom: all requests finished; exiting".into());
            0
        }
        _ = tokio::time::sleep(settings.grace) => cut_short("grace period over"),
        second = signals.next() => cut_short(&format!("second signal ({})", second.name())),
    };
    Ok(code)
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
}

/// Why a request got no answer from the guest.
enum Failure {
    /// The request could not be handed to the guest (no Host header, ...).
    BadRequest(String),
    /// No instance could be made (instance pool exhausted, out of memory).
    Unavailable(String),
    /// The guest trapped, panicked, or returned without answering.
    Guest(String),
    /// Past the request timeout.
    Timeout(Duration),
}

impl Server {
    fn new(pre: ProxyPre<StoreState>, setup: &GuestSetup, settings: &Settings) -> Server {
        let random = RandomState::new().build_hasher().finish();
        Server {
            pre,
            setup: setup.clone(),
            settings: settings.clone(),
            id_prefix: format!("{:08x}", random as u32),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            outgoing: OutgoingHttp::new(),
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
    /// tagged output, its memory limit and its CPU deadline.
    fn new_store(&self, request_id: &str) -> Result<Store<StoreState>> {
        let wasi = self.setup.context(|output| {
            output
                .stdout(TaggedOutput::new(request_id, Target::Stdout))
                .stderr(TaggedOutput::new(request_id, Target::Stderr));
        });
        let state = StoreState::new(wasi, self.outgoing.clone(), self.settings.max_memory_bytes);
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
        // Counted until the response head is out, also when the client goes
        // away and this future is dropped.
        let _in_flight = InFlight::enter(&self.in_flight);
        let id = self.request_id(&request);
        let mut response = match self.run_guest(&id, request).await {
            Ok(response) => response,
            Err(failure) => failure.into_response(&id),
        };
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        Ok(response)
    }

    async fn run_guest(
        &self,
        id: &str,
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, Failure> {
        let timeout = self.settings.request_timeout;
        let mut store = self.new_store(id).map_err(|e| Failure::Unavailable(format!("{e:#}")))?;
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
        // The guest runs in its own task: it may keep streaming the body
        // after it has handed over the response head.
        let task = tokio::spawn(async move {
            let proxy = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| Failure::Unavailable(format!("{e:#}")))?;
            let call = proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out);
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(())) => Ok(()),
                // The epoch deadline (see `new_store`) stops a guest that computes too long.
                Ok(Err(e)) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
                    Err(Failure::Timeout(timeout))
                }
                Ok(Err(e)) => Err(Failure::Guest(format!("{e:?}"))),
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
                tokio::spawn(async move {
                    if let Ok(Err(failure)) = task.await {
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

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
            Failure::Unavailable(detail) => {
                (StatusCode::SERVICE_UNAVAILABLE, "no instance available to handle the request", detail)
            }
            Failure::Guest(detail) => (StatusCode::INTERNAL_SERVER_ERROR, "the handler failed", detail),
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
        let (status, public, detail) = self.describe();
        // The details (a trap's backtrace) go to the log, not to the caller.
        output::message(Level::Error, format!("[req={id}] wasmtime-custom: {public}: {detail}"));
        let body = format!("{public} (request id {id}; see the container log)\n");
        let body = Full::new(Bytes::from(body)).map_err(|never: Infallible| match never {}).boxed_unsync();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response
    }
}
