//! What happens to a request a guest sends before it leaves the container:
//! the allow-list (`outbound.rs`), the trace context (`traces.rs`) and the
//! count (`metrics.rs`); then it goes out through the container's
//! connection pool (`outgoing.rs`).

use std::sync::Arc;

use hyper::Request;
use log::Level;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::metrics::{self, Metrics};
use crate::outbound::OutboundPolicy;
use crate::outgoing::{IoFuture, OutgoingHttp, ResponseFuture};
use crate::output;
use crate::traces::{self, RequestSpan, Traces};

/// The hooks of one store: shared parts of the container plus, for an HTTP
/// request, its id and span.
pub struct GuestCalls {
    pool: OutgoingHttp,
    policy: Arc<OutboundPolicy>,
    metrics: Option<Arc<Metrics>>,
    request: Option<OnBehalfOf>,
}

/// The incoming request a guest's calls are made for.
pub struct OnBehalfOf {
    pub id: String,
    pub traces: Arc<Traces>,
    pub span: Arc<RequestSpan>,
}

impl GuestCalls {
    pub fn new(
        pool: OutgoingHttp,
        policy: Arc<OutboundPolicy>,
        metrics: Option<Arc<Metrics>>,
        request: Option<OnBehalfOf>,
    ) -> GuestCalls {
        GuestCalls { pool, policy, metrics, request }
    }

    fn count(&self, class: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.outgoing(class);
        }
    }
}

impl WasiHttpHooks for GuestCalls {
    fn send_request(
        &mut self,
        mut request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> ResponseFuture {
        if !self.policy.allows(request.uri()) {
            self.count("denied");
            let tag = self.request.as_ref().map(|r| format!("[req={}] ", r.id)).unwrap_or_default();
            // Without the query, which may carry secrets.
            let uri = request.uri();
            let target = format!(
                "{}://{}{}",
                uri.scheme_str().unwrap_or("?"),
                uri.authority().map_or("?", |a| a.as_str()),
                uri.path()
            );
            output::message(
                Level::Warn,
                format!(
                    "{tag}wasmtime-custom: outgoing request to {target} denied: not in {}",
                    crate::settings::ALLOWED_OUTBOUND_HOSTS
                ),
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let span = self.request.as_ref().map(|on| {
            let (method, uri) = (request.method().clone(), request.uri().clone());
            on.traces.start_outgoing(&on.span, &method, &uri, request.headers_mut())
        });
        let sent = self.pool.send(request, options, fut);
        let metrics = self.metrics.clone();
        Box::new(async move {
            let result = Box::into_pin(sent).await;
            let (class, status) = match &result {
                Ok((response, _)) => (metrics::class_of(response.status()), Ok(response.status())),
                Err(e) => ("error", Err(e.to_string())),
            };
            if let Some(metrics) = metrics {
                metrics.outgoing(class);
            }
            if let Some(span) = span {
                traces::finish_outgoing(span, status);
            }
            result
        })
    }
}
