//! The native baseline of the benchmark: the order service as a native Rust
//! HTTP server, run as an ordinary Linux container under runc (the "Rust web
//! server in a container" of the reference scenario).
//!
//! It shares the order logic with the Wasm component: every decision (route,
//! order validation, which binding, what to answer) comes from `app::routes`.
//! Only the I/O differs: hyper for serving and a pooled hyper client for
//! Dapr's HTTP API, as a native Rust service would normally be written.
//!
//! Settings (environment): `LISTEN_ADDR` (default `0.0.0.0:8080`),
//! `DAPR_URL` (default `http://localhost:3500`, plain HTTP only), and
//! `GRACE_SECONDS` (default 25: how long SIGTERM waits for requests in flight).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use app::routes::{self, BindingResult, DaprUrl, Plan, Reply};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::signal::unix::{SignalKind, signal};

/// Orders are small; anything larger is refused, as the component does.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One answer to Dapr may not take longer than this.
const DAPR_TIMEOUT: Duration = Duration::from_secs(30);

struct Settings {
    listen: SocketAddr,
    dapr: DaprUrl,
    grace: Duration,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let listen = var("LISTEN_ADDR").unwrap_or_else(|| "0.0.0.0:8080".into());
        let listen = listen.parse().with_context(|| format!("LISTEN_ADDR {listen:?} is not host:port"))?;
        let dapr = DaprUrl::parse(var("DAPR_URL").as_deref()).map_err(anyhow::Error::msg)?;
        if dapr.https {
            bail!("DAPR_URL: the native baseline speaks plain HTTP only (as the Dapr sidecar does)");
        }
        let grace = var("GRACE_SECONDS").unwrap_or_else(|| "25".into());
        let grace = grace.parse().with_context(|| format!("GRACE_SECONDS {grace:?} is not a number"))?;
        Ok(Settings { listen, dapr, grace: Duration::from_secs(grace) })
    }
}

struct Server {
    dapr: DaprUrl,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn main() -> ExitCode {
    let result = Settings::from_env().and_then(|settings| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("start the tokio runtime")?
            .block_on(serve(settings))
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("order-app-native: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Serves until SIGTERM or SIGINT, then drains: exit 0 when every request in
/// flight finished within the grace period, 143 otherwise.
async fn serve(settings: Settings) -> Result<ExitCode> {
    let mut terminate = signal(SignalKind::terminate()).context("watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watch SIGINT")?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listen on {}", settings.listen))?;
    eprintln!("order-app-native: serving on http://{}", settings.listen);
    let server = Arc::new(Server { dapr: settings.dapr, client: pooled_client() });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true).timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors, most likely: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let server = server.clone();
                let service = service_fn(move |request| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(request).await) }
                });
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(connection);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => Ok(ExitCode::SUCCESS),
        _ = tokio::time::sleep(settings.grace) => {
            eprintln!("order-app-native: requests still in flight after {:?}; exiting", settings.grace);
            Ok(ExitCode::from(143))
        }
    }
}

/// Keep-alive connections to Dapr, set up as the shim's outgoing pool is
/// (no Nagle delay; idle connections closed before the server closes them).
fn pooled_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(20))
        .build(connector)
}

impl Server {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().to_string();
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                let reply = Reply { status: 413, body: format!("could not read the body: {e}"), allow: None };
                return respond(&method, &path, reply);
            }
        };
        let reply = match routes::plan(&method, &path, &body) {
            Plan::Reply(reply) => reply,
            Plan::ProxyMetadata => {
                match self.send(Method::GET, self.dapr.metadata_path(), Bytes::new()).await {
                    Ok((status, body)) => Reply { status, body, allow: None },
                    Err(reason) => Reply {
                        status: 503,
                        body: format!("Dapr's metadata endpoint could not be reached: {reason}"),
                        allow: None,
                    },
                }
            }
            Plan::Call(call) => {
                let path = self.dapr.binding_path(&call.binding);
                let result = match self.send(Method::POST, path, Bytes::from(call.body.clone())).await {
                    Ok((status, body)) => BindingResult::Answered { status, body },
                    Err(reason) => BindingResult::Unreachable(reason),
                };
                routes::after_binding(&call, &result)
            }
        };
        respond(&method, &path, reply)
    }

    /// One request to Dapr's HTTP API; `Err` means it could not be completed.
    async fn send(&self, method: Method, path: String, body: Bytes) -> Result<(u16, String), String> {
        let uri = format!("http://{}{path}", self.dapr.authority);
        let request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("invalid request to {uri}: {e}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(DAPR_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {DAPR_TIMEOUT:?}")))
    }
}

/// The response for `reply`; failures are logged as the component logs them.
fn respond(method: &str, path: &str, reply: Reply) -> Response<Full<Bytes>> {
    if reply.status >= 400 {
        eprintln!("{method} {path} -> {}: {}", reply.status, reply.body);
    }
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("a valid header value"));
    if let Some(allow) = reply.allow {
        headers.insert(ALLOW, allow.parse().expect("the Allow lists are valid header values"));
    }
    response
}
