//! The container's Prometheus metrics, and the listener that serves them
//! (`WASMTIME_CUSTOM_METRICS_LISTEN`, off by default).
//!
//! Counting is always on (a few atomic additions per request); only the
//! listener is optional. Every name starts with `wasmtime_custom_`; the
//! README lists them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::Level;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::output::{self, Target};

/// `class="2xx"`, ... for responses; outgoing requests also have
/// `class="error"` (no response) and `class="denied"` (allow-list).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Class {
    class: &'static str,
}

/// Why a request was answered without an instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stream {
    stream: &'static str,
}

pub const OVERLOADED: &str = "concurrency_limit";
pub const INSTANTIATION_FAILED: &str = "instantiation_failed";
pub const TOO_MANY_CONNECTIONS: &str = "out_of_file_descriptors";

/// Every metric of one container.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Class, Counter>,
    pub request_duration: Histogram,
    pub in_flight: Gauge,
    pub instantiation: Histogram,
    pub traps: Counter,
    pub timeouts: Counter,
    pub unavailable: Family<Reason, Counter>,
    pub body_too_large: Counter,
    pub outgoing: Family<Class, Counter>,
    pub draining: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wasmtime_custom");
        let metrics = Metrics {
            requests: Family::default(),
            // 0.5 ms to about 65 s (past the default request timeout).
            request_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            in_flight: Gauge::default(),
            // 10 us to about 160 ms.
            instantiation: Histogram::new(exponential_buckets(0.00001, 2.0, 15)),
            traps: Counter::default(),
            timeouts: Counter::default(),
            unavailable: Family::default(),
            body_too_large: Counter::default(),
            outgoing: Family::default(),
            draining: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests answered, by status class", metrics.requests.clone());
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its response head",
            Unit::Seconds,
            metrics.request_duration.clone(),
        );
        registry.register("requests_in_flight", "Requests being handled now", metrics.in_flight.clone());
        registry.register_with_unit(
            "instantiation",
            "Time to instantiate the component for one request",
            Unit::Seconds,
            metrics.instantiation.clone(),
        );
        registry.register("traps", "Requests whose guest trapped", metrics.traps.clone());
        registry.register(
            "timeouts",
            "Requests stopped at the request timeout (504)",
            metrics.timeouts.clone(),
        );
        registry.register(
            "unavailable",
            "Requests answered 503 without an instance, by reason",
            metrics.unavailable.clone(),
        );
        registry.register(
            "body_too_large",
            "Requests answered 413 (WASMTIME_CUSTOM_MAX_BODY_BYTES)",
            metrics.body_too_large.clone(),
        );
        registry.register(
            "outgoing_requests",
            "Requests the guests sent, by status class; error: no response; denied: not on the allow-list",
            metrics.outgoing.clone(),
        );
        registry.register(
            "draining",
            "1 once SIGTERM was received (shutdown delay or drain), else 0",
            metrics.draining.clone(),
        );
        registry.register_collector(Box::new(DroppedLines));
        Metrics { registry, ..metrics }
    }

    /// Counts an answered request.
    pub fn answered(&self, status: StatusCode, took: Duration) {
        self.requests.get_or_create(&Class { class: class_of(status) }).inc();
        self.request_duration.observe(took.as_secs_f64());
    }

    pub fn unavailable(&self, reason: &'static str) {
        self.unavailable.get_or_create(&Reason { reason }).inc();
    }

    /// Counts an outgoing request by its outcome.
    pub fn outgoing(&self, class: &'static str) {
        self.outgoing.get_or_create(&Class { class }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The output module's count of dropped lines, read at each scrape.
#[derive(Debug)]
struct DroppedLines;

impl Collector for DroppedLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "log_lines_dropped",
            "Output lines dropped because the container's log was not read fast enough",
            None,
            MetricType::Counter,
        )?;
        for (target, stream) in [(Target::Stdout, "stdout"), (Target::Stderr, "stderr")] {
            let count = ConstCounter::new(output::dropped_lines(target));
            count.encode(family.encode_family(&Stream { stream })?)?;
        }
        Ok(())
    }
}

pub fn class_of(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Binds the metrics listener: before the app's listener, so a taken port
/// fails the container's start.
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| {
        format!(
            "could not listen for metrics on {address} (set {} to a free address, or remove it)",
            crate::settings::METRICS_LISTEN
        )
    })
}

/// Serves `GET /metrics` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new());
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    warned = Some(std::time::Instant::now());
                    output::message(Level::Warn, format!("wasmtime-custom: metrics accept failed: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let service = service_fn(move |request| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(scrape(&metrics, &request)) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("metrics connection ended with an error: {e}");
            }
        });
    }
}

fn scrape(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from_static(b"metrics are at GET /metrics\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
