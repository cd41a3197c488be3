//! The subset of Dapr's HTTP API the app calls, served to the apps:
//!
//! - `POST /v1.0/bindings/q-order-{express,standard}-out` puts `data` on the
//!   queue `q-order-{express,standard}`; 204. The call's trace context
//!   (`traceparent`, `tracestate`) goes with the message, and its
//!   deliveries carry it (see `trace`).
//! - `POST /v1.0/bindings/{express,standard}-outbox` writes `data` as the
//!   blob `metadata.blobName` of the outbox; 204.
//! - `GET /v1.0/metadata` describes the stand-in and its components.
//!
//! Anything else, a malformed body, an operation other than `create`, or an
//! unsafe blob name is refused with Dapr's error shape and the reason, and
//! recorded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;

use super::blobs::BlobError;
use super::state::StandInState;
use super::stats::order_id;
use super::trace::TraceContext;
use crate::bindings::{INPUTS, OUTBOXES, QUEUE_OUTPUTS};

/// Largest request body the stand-in reads.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Accepts the apps' connections and serves each, keep-alive, until the
/// task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<StandInState>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true).timer(TokioTimer::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        state.stats.connection();
        let state = state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, request).await) }
        });
        tokio::spawn(http.serve_connection(TokioIo::new(stream), service));
    }
}

/// The body of a call to `POST /v1.0/bindings/{name}`.
#[derive(Deserialize)]
struct Invocation {
    data: serde_json::Value,
    operation: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

async fn handle(state: &StandInState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    // A malformed context counts as none: its message starts a new trace.
    let trace = TraceContext::from_headers(request.headers());
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return refuse(state, StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST", e.to_string()),
    };
    match (&method, path.as_str()) {
        (&Method::GET, "/v1.0/metadata") => json(StatusCode::OK, &metadata()),
        (&Method::GET, "/v1.0/healthz") => empty(StatusCode::NO_CONTENT),
        (&Method::POST, _) if path.starts_with("/v1.0/bindings/") => {
            invoke(state, &path["/v1.0/bindings/".len()..], &body, trace).await
        }
        _ => refuse(
            state,
            StatusCode::NOT_FOUND,
            "ERR_NOT_FOUND",
            format!("{method} {path}: the stand-in serves only the bindings and metadata API"),
        ),
    }
}

/// An output binding's call, with the trace context it carries.
async fn invoke(
    state: &StandInState,
    binding: &str,
    body: &[u8],
    trace: Option<TraceContext>,
) -> Response<Full<Bytes>> {
    let invocation: Invocation = match serde_json::from_slice(body) {
        Ok(invocation) => invocation,
        Err(e) => {
            let reason = format!("binding {binding}: the body is not {{\"data\", \"operation\"}}: {e}");
            return refuse(state, StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST", reason);
        }
    };
    if invocation.operation != "create" {
        let reason = format!(
            "binding {binding}: operation {:?} is not supported here; use \"create\"",
            invocation.operation
        );
        return refuse(state, StatusCode::BAD_REQUEST, "ERR_INVOKE_OUTPUT_BINDING", reason);
    }
    // A `serde_json::Value` always serialises: its map keys are strings.
    let data = Bytes::from(serde_json::to_vec(&invocation.data).expect("a JSON value serialises"));
    if let Some(output) = QUEUE_OUTPUTS.iter().find(|output| output.name == binding) {
        return match state.publish(output.queue, data, order_id(&invocation.data), trace) {
            Ok(()) => empty(StatusCode::NO_CONTENT),
            Err(e) => {
                refuse(state, StatusCode::INTERNAL_SERVER_ERROR, "ERR_INVOKE_OUTPUT_BINDING", e.to_string())
            }
        };
    }
    if let Some(outbox) = OUTBOXES.iter().find(|outbox| **outbox == binding) {
        return write_blob(state, outbox, invocation.metadata.get("blobName"), data).await;
    }
    let reason = format!("output binding {binding} is not defined in the stand-in");
    refuse(state, StatusCode::NOT_FOUND, "ERR_INVOKE_OUTPUT_BINDING", reason)
}

async fn write_blob(
    state: &StandInState,
    outbox: &str,
    name: Option<&String>,
    data: Bytes,
) -> Response<Full<Bytes>> {
    match state.blobs.write(outbox, name.map(String::as_str), data).await {
        Ok(name) => {
            state.stats.blob_written(outbox, name, Instant::now());
            empty(StatusCode::NO_CONTENT)
        }
        Err(BlobError::InvalidName(name)) => {
            let reason = format!(
                "binding {outbox}: metadata.blobName {name:?} is missing or is not a plain file name"
            );
            refuse(state, StatusCode::BAD_REQUEST, "ERR_INVOKE_OUTPUT_BINDING", reason)
        }
        Err(BlobError::InjectedOutage) => {
            state.stats.blob_write_failed_on_purpose();
            let mut response = json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "errorCode": "ERR_INVOKE_OUTPUT_BINDING", "message": "injected outage" }),
            );
            response
                .headers_mut()
                .insert("x-stand-in", hyper::header::HeaderValue::from_static("injected-failure"));
            response
        }
        Err(BlobError::Failed(reason)) => {
            refuse(state, StatusCode::INTERNAL_SERVER_ERROR, "ERR_INVOKE_OUTPUT_BINDING", reason)
        }
    }
}

/// Dapr's error answer, the reason recorded.
fn refuse(state: &StandInState, status: StatusCode, code: &str, message: String) -> Response<Full<Bytes>> {
    state.stats.refused(format!("{status}: {message}"));
    json(status, &serde_json::json!({ "errorCode": code, "message": message }))
}

fn metadata() -> serde_json::Value {
    let binding = |name: &str, kind: &str| serde_json::json!({ "name": name, "type": kind, "version": "v1", "capabilities": [] });
    let mut components = Vec::new();
    for name in INPUTS.iter().map(|input| input.name).chain(QUEUE_OUTPUTS.iter().map(|output| output.name)) {
        components.push(binding(name, "bindings.azure.servicebusqueues"));
    }
    for name in OUTBOXES {
        components.push(binding(name, "bindings.azure.blobstorage"));
    }
    serde_json::json!({
        "id": "order-flow",
        "runtimeVersion": "stand-in",
        "components": components,
        "extended": { "standIn": "wasmtime-custom's local bindings stand-in for Dapr" },
    })
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
