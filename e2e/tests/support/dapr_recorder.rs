//! A stand-in for Dapr's HTTP API (there is no Dapr here) that records
//! every call: bindings are answered with a status the test sets, and
//! `GET /v1.0/metadata` with a fixed document. It serves HTTP/1.1 with
//! hyper, keep-alive and any body framing, as daprd does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

/// What the recorder answers `GET /v1.0/metadata` with.
pub const METADATA: &str = r#"{"id":"dapr-recorder","components":[]}"#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: String,
}

impl Call {
    pub fn post(path: &str, body: impl Into<String>) -> Call {
        Call { method: "POST".into(), path: path.into(), body: body.into() }
    }
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<Call>>,
    /// The path and `traceparent` header of every call, in order.
    traceparents: Mutex<Vec<(String, Option<String>)>>,
    status: AtomicU16,
}

pub struct DaprRecorder {
    address: SocketAddr,
    shared: Arc<Shared>,
    /// Serves on its own threads; dropping it closes the port and every connection.
    runtime: Option<tokio::runtime::Runtime>,
}

impl DaprRecorder {
    /// On loopback.
    pub fn start() -> Result<DaprRecorder> {
        DaprRecorder::start_on("127.0.0.1")
    }

    /// On `ip` of this host (e.g. a pod network's gateway, for pods).
    pub fn start_on(ip: &str) -> Result<DaprRecorder> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("start the recorder's runtime")?;
        let shared = Arc::new(Shared { status: AtomicU16::new(200), ..Shared::default() });
        let serving = shared.clone();
        let address = testbed::serve_http(&runtime, ip, "Dapr recorder", move |request| {
            answer(serving.clone(), request)
        })?;
        Ok(DaprRecorder { address, shared, runtime: Some(runtime) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The status binding calls get from now on.
    pub fn answer_bindings_with(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Every call so far, and forgets them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.shared.calls.lock().expect("recorder lock"))
    }

    /// The path and `traceparent` of every call so far, and forgets them.
    pub fn take_traceparents(&self) -> Vec<(String, Option<String>)> {
        std::mem::take(&mut *self.shared.traceparents.lock().expect("recorder lock"))
    }

    /// Closes the port and every open connection: later calls are refused.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for DaprRecorder {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let traceparent = request.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string);
    shared.traceparents.lock().expect("recorder lock").push((path.clone(), traceparent));
    let body = match request.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(e) => format!("<the body could not be read: {e}>"),
    };
    let (status, answer) = if method == Method::GET && path == "/v1.0/metadata" {
        (200, METADATA)
    } else {
        let status = shared.status.load(Ordering::SeqCst);
        (status, if status < 300 { "" } else { "the recorder was told to fail" })
    };
    shared.calls.lock().expect("recorder lock").push(Call { method: method.to_string(), path, body });
    let mut response = Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    response
}
