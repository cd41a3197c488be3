//! Routing and status codes: what each request asks for and what to answer,
//! decided without doing any I/O.

use crate::order::{self, BindingCall, Delivery, Order};

/// A finished answer to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Plain-text body.
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply { status, body: body.into(), allow: None }
    }

    fn method_not_allowed(allow: &'static str) -> Reply {
        Reply { status: 405, body: format!("method not allowed; use {allow}"), allow: Some(allow) }
    }
}

/// What handling a request takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Answer at once; nothing is sent anywhere.
    Reply(Reply),
    /// `GET {DAPR_URL}/v1.0/metadata`, and relay its status and body.
    ProxyMetadata,
    /// `POST {DAPR_URL}/v1.0/bindings/{binding}`, then answer with [`after_binding`].
    Call(BindingCall),
}

const BINDING_ROUTE_METHODS: &str = "OPTIONS, POST";

/// Decides what a request needs. `path` may carry a query string, which no
/// route uses.
pub fn plan(method: &str, path: &str, body: &[u8]) -> Plan {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    match (path, method) {
        ("/healthz", "GET") => Plan::Reply(Reply::text(200, "Healthy")),
        ("/healthz", _) => Plan::Reply(Reply::method_not_allowed("GET")),
        ("/dapr-metadata", "GET") => Plan::ProxyMetadata,
        ("/dapr-metadata", _) => Plan::Reply(Reply::method_not_allowed("GET")),
        ("/q-order-ingress" | "/q-order-express-in" | "/q-order-standard-in", "OPTIONS") => {
            // Dapr probes every input-binding route at start-up and delivers
            // only when the probe answers 2xx.
            Plan::Reply(Reply::text(200, ""))
        }
        ("/q-order-ingress", "POST") => with_order(body, order::distribute),
        ("/q-order-express-in", "POST") => with_order(body, |o| order::store(o, Delivery::Express)),
        ("/q-order-standard-in", "POST") => with_order(body, |o| order::store(o, Delivery::Standard)),
        ("/q-order-ingress" | "/q-order-express-in" | "/q-order-standard-in", _) => {
            Plan::Reply(Reply::method_not_allowed(BINDING_ROUTE_METHODS))
        }
        _ => Plan::Reply(Reply::text(404, format!("no route for {path}"))),
    }
}

fn with_order(body: &[u8], next: impl FnOnce(&Order) -> BindingCall) -> Plan {
    match Order::parse(body) {
        Ok(order) => Plan::Call(next(&order)),
        // A poison message: refuse it so that the queue redelivers and finally
        // dead-letters it; it is never forwarded.
        Err(reason) => Plan::Reply(Reply::text(400, reason)),
    }
}

/// What the output binding did with a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingResult {
    /// It answered with this status and body.
    Answered { status: u16, body: String },
    /// It could not be reached (connection refused, DNS, timeout, ...).
    Unreachable(String),
}

/// The answer once the output binding has been called. Anything but a 2xx
/// from the binding becomes a 5xx here, so that Dapr redelivers the message
/// instead of it being lost.
pub fn after_binding(call: &BindingCall, result: &BindingResult) -> Reply {
    let binding = &call.binding;
    match result {
        BindingResult::Answered { status, .. } if (200..300).contains(status) => {
            Reply::text(200, format!("sent to {binding}"))
        }
        BindingResult::Answered { status, body } => {
            Reply::text(502, format!("output binding {binding} answered {status}: {body}"))
        }
        BindingResult::Unreachable(reason) => {
            Reply::text(503, format!("output binding {binding} could not be reached: {reason}"))
        }
    }
}

/// Where Dapr's HTTP API is, split as `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaprUrl {
    pub https: bool,
    /// `host[:port]`.
    pub authority: String,
    /// Path prefix without a trailing slash (usually empty).
    pub base_path: String,
}

/// The default of `DAPR_URL`: the sidecar's (or Dapr Shared's) HTTP port.
pub const DEFAULT_DAPR_URL: &str = "http://localhost:3500";

impl DaprUrl {
    /// Parses `DAPR_URL` (`http://host:port[/prefix]`); `None` means the default.
    pub fn parse(value: Option<&str>) -> Result<DaprUrl, String> {
        let value = value.map(str::trim).filter(|v| !v.is_empty()).unwrap_or(DEFAULT_DAPR_URL);
        let (https, rest) = if let Some(rest) = value.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = value.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("DAPR_URL {value:?} must start with http:// or https://"));
        };
        let (authority, base_path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            return Err(format!("DAPR_URL {value:?} has no host"));
        }
        let base_path = base_path.trim_end_matches('/');
        let base_path = if base_path.is_empty() { String::new() } else { format!("/{base_path}") };
        Ok(DaprUrl { https, authority: authority.to_string(), base_path })
    }

    /// Path and query of Dapr's metadata endpoint.
    pub fn metadata_path(&self) -> String {
        format!("{}/v1.0/metadata", self.base_path)
    }

    /// Path of an output binding's endpoint.
    pub fn binding_path(&self, binding: &str) -> String {
        format!("{}/v1.0/bindings/{binding}", self.base_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(plan: Plan) -> Reply {
        match plan {
            Plan::Reply(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn healthz_answers_healthy() {
        assert_eq!(reply(plan("GET", "/healthz", b"")), Reply::text(200, "Healthy"));
        assert_eq!(reply(plan("GET", "/healthz?probe=1", b"")).status, 200);
    }

    #[test]
    fn binding_routes_accept_daprs_options_probe() {
        for route in ["/q-order-ingress", "/q-order-express-in", "/q-order-standard-in"] {
            assert_eq!(reply(plan("OPTIONS", route, b"")).status, 200, "{route}");
        }
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let r = reply(plan("GET", "/q-order-ingress", b""));
        assert_eq!((r.status, r.allow), (405, Some("OPTIONS, POST")));
        let r = reply(plan("POST", "/healthz", b""));
        assert_eq!((r.status, r.allow), (405, Some("GET")));
        assert_eq!(reply(plan("DELETE", "/dapr-metadata", b"")).status, 405);
    }

    #[test]
    fn unknown_route_is_404() {
        assert_eq!(reply(plan("GET", "/nope", b"")).status, 404);
        assert_eq!(reply(plan("POST", "/q-order-ingress/extra", b"{}")).status, 404);
    }

    #[test]
    fn dapr_metadata_is_proxied() {
        assert_eq!(plan("GET", "/dapr-metadata", b""), Plan::ProxyMetadata);
    }

    #[test]
    fn ingress_sends_to_the_delivery_queue() {
        let Plan::Call(call) = plan("POST", "/q-order-ingress", br#"{"orderId":9,"delivery":"express"}"#)
        else {
            panic!("expected a binding call")
        };
        assert_eq!(call.binding, "q-order-express-out");
    }

    #[test]
    fn receivers_write_to_their_own_outbox() {
        let body = br#"{"orderId":9,"delivery":"Standard"}"#;
        for (route, binding) in
            [("/q-order-express-in", "express-outbox"), ("/q-order-standard-in", "standard-outbox")]
        {
            let Plan::Call(call) = plan("POST", route, body) else { panic!("expected a call") };
            assert_eq!(call.binding, binding);
            assert!(String::from_utf8(call.body).unwrap().ends_with(r#""metadata":{"blobName":"9"}}"#));
        }
    }

    #[test]
    fn malformed_order_is_400_and_sends_nothing() {
        for body in [&b"{"[..], br#"{"orderId":1,"delivery":"Drone"}"#, br#"{"delivery":"Express"}"#] {
            for route in ["/q-order-ingress", "/q-order-express-in", "/q-order-standard-in"] {
                let r = reply(plan("POST", route, body));
                assert_eq!(r.status, 400);
                assert!(r.body.starts_with("invalid order: "), "{}", r.body);
            }
        }
    }

    fn call() -> BindingCall {
        BindingCall { binding: "q-order-express-out".into(), body: vec![] }
    }

    #[test]
    fn binding_2xx_is_200() {
        let result = BindingResult::Answered { status: 204, body: String::new() };
        assert_eq!(after_binding(&call(), &result).status, 200);
    }

    #[test]
    fn binding_failure_is_never_200() {
        let result = BindingResult::Answered { status: 500, body: "queue full".into() };
        let r = after_binding(&call(), &result);
        assert_eq!(r.status, 502);
        assert_eq!(r.body, "output binding q-order-express-out answered 500: queue full");
        let r = after_binding(&call(), &BindingResult::Unreachable("connection refused".into()));
        assert_eq!(r.status, 503);
        assert!(r.body.contains("connection refused"));
    }

    #[test]
    fn dapr_url_defaults_and_parses() {
        let url = DaprUrl::parse(None).unwrap();
        assert_eq!(
            url,
            DaprUrl { https: false, authority: "localhost:3500".into(), base_path: String::new() }
        );
        assert_eq!(url.binding_path("x"), "/v1.0/bindings/x");
        let url = DaprUrl::parse(Some("https://dapr.example:443/prefix/")).unwrap();
        assert!(url.https);
        assert_eq!(url.metadata_path(), "/prefix/v1.0/metadata");
        assert_eq!(DaprUrl::parse(Some("  ")).unwrap().authority, "localhost:3500");
        assert!(DaprUrl::parse(Some("localhost:3500")).unwrap_err().contains("http://"));
        assert!(DaprUrl::parse(Some("http:///x")).is_err());
    }
}
