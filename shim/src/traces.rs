//! W3C trace context and OpenTelemetry spans for the served requests.
//!
//! Every request gets a server span: it continues the caller's
//! `traceparent` when there is a valid one, else it starts a trace. Every
//! request the guest sends gets a client span, child of that server span,
//! and carries the client span's `traceparent` unless the guest set one
//! itself (its own context is left alone). Propagation always happens;
//! spans are exported over OTLP/HTTP only when an `OTEL_EXPORTER_OTLP_*`
//! endpoint is set in the container's environment.

use std::time::Duration;

use anyhow::{Context as _, Result};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Uri};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, SpanRef, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, Tracer};

use crate::settings::TraceSettings;

pub const TRACEPARENT: &str = "traceparent";

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The container's tracer.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: Tracer,
    propagator: TraceContextPropagator,
    exporting: bool,
}

impl Traces {
    pub fn new(settings: &TraceSettings) -> Result<Traces> {
        // Only the container's settings count: the empty builder does not
        // read OTEL_* from the shim's own environment (containerd's).
        let resource = Resource::builder_empty().with_service_name(settings.service_name.clone()).build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        let endpoint = settings.endpoint();
        if let Some(endpoint) = &endpoint {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_headers(settings.headers())
                .build()
                .with_context(|| format!("cannot export spans to {endpoint}"))?;
            // Spans are queued (bounded, dropped when full) and sent by a
            // thread of the processor's own: a slow collector never holds a
            // request.
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();
        let tracer = provider.tracer("wasmtime-custom");
        Ok(Traces {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            exporting: endpoint.is_some(),
        })
    }

    /// Starts the server span of an incoming request.
    pub fn start_request(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> RequestSpan {
        let parent = self.propagator.extract(&HeaderReader(headers));
        let span = self
            .tracer
            .span_builder(format!("{method} {}", uri.path()))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.path", uri.path().to_string()),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestSpan { context: parent.with_span(span) }
    }

    /// Starts the client span of a request the guest sends on behalf of
    /// `request`, and gives the request its trace context unless it has one.
    pub fn start_outgoing(
        &self,
        request: &RequestSpan,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
    ) -> Span {
        let span = self
            .tracer
            .span_builder(format!("{method}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.full", uri.to_string()),
            ])
            .start_with_context(&self.tracer, &request.context);
        if !headers.contains_key(TRACEPARENT) {
            let context = request.context.with_remote_span_context(span.span_context().clone());
            self.propagator.inject_context(&context, &mut HeaderWriter(headers));
        }
        span
    }

    /// Sends what is queued, at exit. Blocks for up to `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        if self.exporting
            && let Err(e) = self.provider.shutdown_with_timeout(timeout)
        {
            log::warn!("spans not exported at exit: {e}");
        }
    }
}

/// The server span of one request.
pub struct RequestSpan {
    context: Context,
}

impl RequestSpan {
    fn span(&self) -> SpanRef<'_> {
        self.context.span()
    }

    pub fn set_request_id(&self, id: &str) {
        self.span().set_attribute(KeyValue::new("wasmtime_custom.request_id", id.to_string()));
    }

    /// Ends the span with the response's status.
    pub fn finish(&self, status: StatusCode) {
        let span = self.span();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        if status.is_server_error() {
            span.set_status(Status::error(status.to_string()));
        }
        span.end();
    }
}

/// Ends a client span with the outcome of its request.
pub fn finish_outgoing(mut span: Span, status: Result<StatusCode, String>) {
    match status {
        Ok(status) => {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
            // For the caller, any 4xx or 5xx answer is a failed call.
            if status.is_client_error() || status.is_server_error() {
                span.set_status(Status::error(status.to_string()));
            }
        }
        Err(error) => span.set_status(Status::error(error)),
    }
    span.end();
}

struct HeaderReader<'a>(&'a HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderWriter<'a>(&'a mut HeaderMap);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traces() -> Traces {
        Traces::new(&TraceSettings::default()).unwrap()
    }

    fn parts(traceparent: &HeaderValue) -> Vec<String> {
        traceparent.to_str().unwrap().split('-').map(str::to_string).collect()
    }

    #[test]
    fn an_incoming_traceparent_is_continued_by_outgoing_requests() {
        let traces = traces();
        let mut incoming = HeaderMap::new();
        incoming.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let request = traces.start_request(&Method::POST, &"/q".parse().unwrap(), &incoming);
        let mut outgoing = HeaderMap::new();
        let span =
            traces.start_outgoing(&request, &Method::POST, &"http://x/y".parse().unwrap(), &mut outgoing);
        let sent = parts(&outgoing[TRACEPARENT]);
        assert_eq!(sent[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
        assert_eq!(sent[2], span.span_context().span_id().to_string(), "parent is the client span");
        assert_ne!(sent[2], "00f067aa0ba902b7");
        assert_ne!(span.span_context().span_id(), request.span().span_context().span_id());
    }

    #[test]
    fn without_a_valid_traceparent_a_trace_starts() {
        let traces = traces();
        let mut incoming = HeaderMap::new();
        incoming.insert(TRACEPARENT, HeaderValue::from_static("00-zz-00f067aa0ba902b7-01"));
        let request = traces.start_request(&Method::GET, &"/".parse().unwrap(), &incoming);
        let mut outgoing = HeaderMap::new();
        let _span =
            traces.start_outgoing(&request, &Method::GET, &"http://x/".parse().unwrap(), &mut outgoing);
        let sent = parts(&outgoing[TRACEPARENT]);
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[1], request.span().span_context().trace_id().to_string());
        assert_ne!(sent[1], "0".repeat(32));
    }

    #[test]
    fn a_guests_own_traceparent_is_left_alone() {
        let traces = traces();
        let request = traces.start_request(&Method::GET, &"/".parse().unwrap(), &HeaderMap::new());
        let own = HeaderValue::from_static("00-11111111111111111111111111111111-2222222222222222-00");
        let mut outgoing = HeaderMap::new();
        outgoing.insert(TRACEPARENT, own.clone());
        let _span =
            traces.start_outgoing(&request, &Method::GET, &"http://x/".parse().unwrap(), &mut outgoing);
        assert_eq!(outgoing[TRACEPARENT], own);
        assert!(!outgoing.contains_key("tracestate"));
    }
}
