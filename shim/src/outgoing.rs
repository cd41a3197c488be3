//! Guests' outgoing HTTP (`wasi:http/outgoing-handler`) over one connection
//! pool per container, shared by all its requests.
//!
//! wasmtime-wasi-http's default sender opens a new TCP connection for every
//! outgoing request and closes it after the response. A service that calls
//! its Dapr sidecar on every request (the order app does) then pays a
//! connect per request, and under load fills the host's ephemeral ports with
//! TIME_WAIT sockets. Plain HTTP therefore goes through a keep-alive pool
//! here; HTTPS keeps wasmtime-wasi-http's own sender (TLS with the webpki
//! roots), one connection per request.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// What a guest waits for when it sets no timeout of its own (the same as
/// wasmtime-wasi-http's default sender); the server's request timeout
/// bounds the whole request anyway.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Idle pooled connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The hooks of every store of a container: its pool of connections.
#[derive(Clone)]
pub struct OutgoingHttp {
    client: Client<HttpConnector, WasiBody>,
}

impl OutgoingHttp {
    pub fn new() -> OutgoingHttp {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(IDLE_TIMEOUT).build(connector);
        OutgoingHttp { client }
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (hyper::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutgoingHttp {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        // Only reports errors of a guest-built body's stream; the pool's
        // connection task owns the I/O, as wasmtime-wasi-http's sender does.
        drop(fut);
        if request.uri().scheme() != Some(&hyper::http::uri::Scheme::HTTP) {
            return Box::new(async move {
                let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
                Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
            });
        }
        let client = self.client.clone();
        Box::new(async move {
            let connect = options.and_then(|o| o.connect_timeout).unwrap_or(DEFAULT_TIMEOUT);
            let first_byte = options.and_then(|o| o.first_byte_timeout).unwrap_or(DEFAULT_TIMEOUT);
            let response = tokio::time::timeout(connect.saturating_add(first_byte), client.request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?
                .map_err(classify)?;
            let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// The `wasi:http` error for a failed pooled request: a connection failure
/// keeps its I/O cause (refused, unreachable, ...), anything else is an
/// HTTP protocol error with hyper's reason.
fn classify(error: hyper_util::client::legacy::Error) -> Error {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return Error::Connect(io::Error::new(io.kind(), io.to_string()));
        }
        source = cause.source();
    }
    if error.is_connect() {
        return Error::ConnectionRefused;
    }
    Error::InternalError(Some(format!("outgoing request failed: {error}")))
}
