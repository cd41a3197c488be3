//! A sink for OTLP/HTTP trace exports: answers every export 200 and counts
//! them, so the observability rows measure the shim exporting spans for
//! real (to a collector that costs nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

pub struct OtlpSink {
    url: String,
    exports: Arc<AtomicU64>,
}

impl OtlpSink {
    /// Serves on loopback from `runtime`'s threads.
    pub fn start(runtime: &tokio::runtime::Runtime) -> Result<OtlpSink> {
        let exports = Arc::new(AtomicU64::new(0));
        let counted = exports.clone();
        let address = testbed::serve_http(runtime, "127.0.0.1", "OTLP sink", move |request| {
            accept(counted.clone(), request)
        })?;
        let url = format!("http://{address}");
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

async fn accept(exports: Arc<AtomicU64>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    // Read whole, as a collector would, then acknowledged.
    let _ = request.into_body().collect().await;
    exports.fetch_add(1, Ordering::SeqCst);
    Response::new(Full::new(Bytes::new()))
}
