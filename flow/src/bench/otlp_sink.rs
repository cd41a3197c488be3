//! A sink for OTLP/HTTP trace exports: answers every export 200 and counts
//! them, so the observability rows measure the shim exporting spans for
//! real (to a collector that costs nothing).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub struct OtlpSink {
    url: String,
    exports: Arc<AtomicU64>,
}

impl OtlpSink {
    /// Serves on loopback from `runtime`'s threads.
    pub fn start(runtime: &tokio::runtime::Runtime) -> Result<OtlpSink> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the OTLP sink")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let exports = Arc::new(AtomicU64::new(0));
        let counted = exports.clone();
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            while let Ok((stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| accept(counted.clone(), request));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(OtlpSink { url, exports })
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Exports received so far.
    pub fn exports(&self) -> u64 {
        self.exports.load(Ordering::SeqCst)
    }
}

async fn accept(
    exports: Arc<AtomicU64>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read whole, as a collector would, then acknowledged.
    let _ = request.into_body().collect().await;
    exports.fetch_add(1, Ordering::SeqCst);
    Ok(Response::new(Full::new(Bytes::new())))
}
