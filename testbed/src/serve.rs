//! A small HTTP/1.1 server on this host, for the stand-ins that tests and
//! the benchmark put next to the apps (a Dapr recorder, an OTLP receiver or
//! sink): bound at once, served by hyper from a runtime of the caller's.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Serves `handler` on `ip` (port chosen by the kernel) from `runtime`'s
/// threads until the runtime is dropped; returns the bound address.
///
/// The port is bound here, before anything runs on the runtime, so the
/// caller may be inside another async runtime (where blocking on this one
/// would not be allowed) and the port is open when this returns.
pub fn serve_http<H, F>(
    runtime: &tokio::runtime::Runtime,
    ip: &str,
    what: &str,
    handler: H,
) -> Result<SocketAddr>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener =
        std::net::TcpListener::bind((ip, 0)).with_context(|| format!("bind the {what} on {ip}"))?;
    listener.set_nonblocking(true).with_context(|| format!("set up the {what}'s listener"))?;
    let address = listener.local_addr()?;
    runtime.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let answer = handler(request);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(address)
}
