//! Guests' outgoing HTTP (`wasi:http/outgoing-handler`) over one connection
//! pool per container, shared by all its requests.
//!
//! wasmtime-wasi-http's default sender opens a new TCP connection for every
//! outgoing request and closes it after the response. A service that calls
//! its Dapr sidecar on every request (the order app does) then pays a
//! connect per request, and under load fills the host's ephemeral ports with
//! TIME_WAIT sockets. Plain HTTP therefore goes through a keep-alive pool
//! here, with the same timeouts and error codes as the default sender; HTTPS
//! keeps wasmtime-wasi-http's own sender (TLS with the webpki roots), one
//! connection per request.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Each of the three timeouts when the guest sets none: wasmtime-wasi-http's
/// default sender waits this long too.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Idle pooled connections are closed after this long: below the 30 s after
/// which hyper servers (Dapr's included) close an idle keep-alive connection,
/// so a request is not sent on a connection the server is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The container's pool of connections, shared by all its stores.
#[derive(Clone)]
pub struct OutgoingHttp {
    client: Client<HttpConnector, WasiBody>,
}

impl OutgoingHttp {
    pub fn new() -> OutgoingHttp {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // One connect timeout for the pool: a guest that sets its own
        // timeouts gets the default sender (see `send_request`).
        connector.set_connect_timeout(Some(DEFAULT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        OutgoingHttp { client }
    }
}

pub type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
pub type ResponseFuture =
    Box<dyn Future<Output = Result<(hyper::Response<WasiBody>, IoFuture), Error>> + Send>;

impl OutgoingHttp {
    /// Sends a guest's request (`WasiHttpHooks::send_request`'s arguments).
    pub fn send(
        &self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> ResponseFuture {
        // wasmtime-wasi-http's p2 caller passes a future that is already
        // done; nothing waits on it.
        drop(fut);
        let plain_http = request.uri().scheme() == Some(&hyper::http::uri::Scheme::HTTP);
        let own_timeouts = options.is_some_and(|o| {
            o.connect_timeout.is_some() || o.first_byte_timeout.is_some() || o.between_bytes_timeout.is_some()
        });
        if !plain_http || own_timeouts {
            return Box::new(async move {
                let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
                Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as IoFuture))
            });
        }
        let client = self.client.clone();
        Box::new(async move {
            // The connect timeout is the connector's; this bounds the wait
            // for the response head once connected as well.
            let response = tokio::time::timeout(DEFAULT_TIMEOUT.saturating_mul(2), client.request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?
                .map_err(classify)?;
            let response = response.map(|body| BetweenBytes::new(body, DEFAULT_TIMEOUT).boxed_unsync());
            // The pool's connection task owns the I/O; its errors reach the
            // guest through the response body.
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// The `wasi:http` error for a failed pooled request, as wasmtime-wasi-http's
/// own sender would report it.
fn classify(error: hyper_util::client::legacy::Error) -> Error {
    let mut source = error.source();
    while let Some(cause) = source {
        if error.is_connect()
            && let Some(io) = cause.downcast_ref::<io::Error>()
        {
            if io.kind() == io::ErrorKind::TimedOut {
                return Error::ConnectionTimeout;
            }
            return Error::Connect(io::Error::new(io.kind(), io.to_string()));
        }
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            return from_hyper(hyper);
        }
        source = cause.source();
    }
    if error.is_connect() {
        return Error::ConnectionRefused;
    }
    Error::InternalError(Some(format!("outgoing request failed: {error}")))
}

/// hyper's error kinds in `wasi:http` terms (hyper's errors cannot be moved
/// out of the client's error, so they are mapped by kind).
fn from_hyper(error: &hyper::Error) -> Error {
    if error.is_incomplete_message() {
        Error::HttpResponseIncomplete
    } else if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() {
        Error::HttpProtocolError
    } else if error.is_timeout() {
        Error::ConnectionReadTimeout
    } else if error.is_canceled() || error.is_closed() {
        Error::ConnectionTerminated
    } else {
        Error::InternalError(Some(error.to_string()))
    }
}

/// A response body that fails with `ConnectionReadTimeout` when no frame
/// arrives for `timeout`.
struct BetweenBytes {
    body: Incoming,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl BetweenBytes {
    fn new(body: Incoming, timeout: Duration) -> BetweenBytes {
        BetweenBytes { body, timeout, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }
}

impl Body for BetweenBytes {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + self.timeout;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(from_hyper(&e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
