//! The knobs a container sets through its environment, parsed and checked
//! once, before anything starts (a bad value fails the start, not a request).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub use crate::outbound::OutboundPolicy;

/// Serving settings of one container. Every field is read from the
/// container's environment (`ctr run --env`, a pod's `env:`); the README
/// lists them with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `WASMTIME_CUSTOM_LISTEN`: where a `wasi:http/proxy` component is served.
    /// Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// `WASMTIME_CUSTOM_GRACE_SECONDS`: after SIGTERM, how long in-flight
    /// requests may take before the shim exits anyway. Default 25 s: under
    /// Kubernetes' default `terminationGracePeriodSeconds` of 30 s, so the
    /// shim ends on its own terms (and logs what it cut) before the SIGKILL.
    pub grace: Duration,
    /// `WASMTIME_CUSTOM_REQUEST_TIMEOUT_SECONDS`: the longest one request may
    /// run, waiting or computing; past it the caller gets a 504 and the
    /// instance is dropped. Default 60 s.
    pub request_timeout: Duration,
    /// `WASMTIME_CUSTOM_MAX_MEMORY_MB`: the most linear memory one instance
    /// (one request) may grow to. Default 128 MiB.
    pub max_memory_bytes: usize,
    /// `WASMTIME_CUSTOM_METRICS_LISTEN`: where Prometheus metrics are served
    /// (`GET /metrics`, OpenMetrics text). Default: off.
    pub metrics_listen: Option<SocketAddr>,
    /// `WASMTIME_CUSTOM_MAX_CONCURRENT_REQUESTS`: the most requests one
    /// container handles at once (each holds an instance). Default 256.
    pub max_concurrent_requests: usize,
    /// `WASMTIME_CUSTOM_QUEUE_TIMEOUT_MS`: how long a request beyond that
    /// limit waits for a slot before it is answered 503 with `Retry-After`,
    /// without instantiating anything. Default 1000 ms.
    pub queue_timeout: Duration,
    /// `WASMTIME_CUSTOM_MAX_BODY_BYTES`: the largest request body; a larger
    /// one is answered 413. Default 10 MiB.
    pub max_body_bytes: u64,
    /// `WASMTIME_CUSTOM_ALLOWED_OUTBOUND_HOSTS`: where the guest may send
    /// HTTP requests. Default: anywhere.
    pub outbound: OutboundPolicy,
    /// `WASMTIME_CUSTOM_SHUTDOWN_DELAY_SECONDS`: after SIGTERM, how long the
    /// server keeps accepting (answering with `Connection: close`) before it
    /// drains, for load balancers that still send traffic to a terminating
    /// pod. Default 0.
    pub shutdown_delay: Duration,
    /// Where spans go, from the standard `OTEL_*` variables.
    pub traces: TraceSettings,
}

/// OpenTelemetry export, set with the standard variables of the container's
/// environment (the shim's own environment is not the container's). An
/// empty value counts as unset, as the specification says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceSettings {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the OTLP/HTTP traces URL as is.
    pub traces_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL.
    pub base_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`.
    traces_protocol: Option<String>,
    protocol: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`
    /// (`key=value,...`, for example a collector's token).
    traces_headers: Option<HashMap<String, String>>,
    base_headers: Option<HashMap<String, String>>,
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    pub disabled: bool,
    /// `OTEL_SERVICE_NAME`, default `wasmtime-custom`.
    pub service_name: String,
}

impl TraceSettings {
    /// Where spans are sent: the traces URL, else the base URL +
    /// `/v1/traces`, as the OpenTelemetry specification says. None: spans
    /// are not exported (trace context is still propagated).
    pub fn endpoint(&self) -> Option<String> {
        if self.disabled {
            return None;
        }
        self.traces_endpoint.clone().or_else(|| {
            self.base_endpoint.as_ref().map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        })
    }

    /// The headers sent with every export.
    pub fn headers(&self) -> HashMap<String, String> {
        self.traces_headers.clone().or_else(|| self.base_headers.clone()).unwrap_or_default()
    }

    /// Checks what is in effect (a base setting overridden by the traces
    /// one does not matter): only OTLP over plain HTTP with protobuf is spoken.
    fn check(&self) -> Result<()> {
        let Some(endpoint) = self.endpoint() else { return Ok(()) };
        let key = if self.traces_endpoint.is_some() { OTLP_TRACES_ENDPOINT } else { OTLP_ENDPOINT };
        url(key, &endpoint)?;
        let protocol = self.traces_protocol.as_ref().map(|p| (OTLP_TRACES_PROTOCOL, p));
        if let Some((key, value)) = protocol.or(self.protocol.as_ref().map(|p| (OTLP_PROTOCOL, p)))
            && value != "http/protobuf"
        {
            bail!(
                "{key}={value:?}: this shim exports spans over OTLP/HTTP with protobuf only; set it to \
                 http/protobuf or remove it"
            );
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            grace: Duration::from_secs(25),
            request_timeout: Duration::from_secs(60),
            max_memory_bytes: 128 << 20,
            metrics_listen: None,
            max_concurrent_requests: 256,
            queue_timeout: Duration::from_millis(1000),
            max_body_bytes: 10 << 20,
            outbound: OutboundPolicy::AllowAll,
            shutdown_delay: Duration::ZERO,
            traces: TraceSettings { service_name: "wasmtime-custom".into(), ..TraceSettings::default() },
        }
    }
}

pub const LISTEN: &str = "WASMTIME_CUSTOM_LISTEN";
pub const GRACE_SECONDS: &str = "WASMTIME_CUSTOM_GRACE_SECONDS";
pub const REQUEST_TIMEOUT_SECONDS: &str = "WASMTIME_CUSTOM_REQUEST_TIMEOUT_SECONDS";
pub const MAX_MEMORY_MB: &str = "WASMTIME_CUSTOM_MAX_MEMORY_MB";
pub const METRICS_LISTEN: &str = "WASMTIME_CUSTOM_METRICS_LISTEN";
pub const MAX_CONCURRENT_REQUESTS: &str = "WASMTIME_CUSTOM_MAX_CONCURRENT_REQUESTS";
pub const QUEUE_TIMEOUT_MS: &str = "WASMTIME_CUSTOM_QUEUE_TIMEOUT_MS";
pub const MAX_BODY_BYTES: &str = "WASMTIME_CUSTOM_MAX_BODY_BYTES";
pub const ALLOWED_OUTBOUND_HOSTS: &str = "WASMTIME_CUSTOM_ALLOWED_OUTBOUND_HOSTS";
pub const SHUTDOWN_DELAY_SECONDS: &str = "WASMTIME_CUSTOM_SHUTDOWN_DELAY_SECONDS";
const KNOWN: [&str; 10] = [
    LISTEN,
    GRACE_SECONDS,
    REQUEST_TIMEOUT_SECONDS,
    MAX_MEMORY_MB,
    METRICS_LISTEN,
    MAX_CONCURRENT_REQUESTS,
    QUEUE_TIMEOUT_MS,
    MAX_BODY_BYTES,
    ALLOWED_OUTBOUND_HOSTS,
    SHUTDOWN_DELAY_SECONDS,
];

const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

impl Settings {
    /// Reads the settings from `KEY=VALUE` pairs (the OCI spec's env list).
    /// Unknown `WASMTIME_CUSTOM_*` names are refused, as a typo would
    /// otherwise silently keep a default.
    pub fn from_env(env: &[String]) -> Result<Settings> {
        let mut settings = Settings::default();
        for entry in env {
            let Some((key, value)) = entry.split_once('=') else { continue };
            let value = value.trim();
            if key.starts_with("OTEL_") {
                read_otel(&mut settings.traces, key, value)?;
                continue;
            }
            if !key.starts_with("WASMTIME_CUSTOM_") {
                continue;
            }
            match key {
                LISTEN => {
                    settings.listen = value.parse().with_context(|| {
                        format!("{LISTEN}={value:?} is not an IP:port address such as 0.0.0.0:8080")
                    })?;
                }
                GRACE_SECONDS => settings.grace = Duration::from_secs(seconds(key, value)?),
                REQUEST_TIMEOUT_SECONDS => {
                    let secs = seconds(key, value)?;
                    if secs == 0 {
                        bail!("{key}=0 would fail every request; use a positive number of seconds");
                    }
                    settings.request_timeout = Duration::from_secs(secs);
                }
                MAX_MEMORY_MB => {
                    let mb: usize =
                        value.parse().ok().filter(|mb| (1..=4096).contains(mb)).with_context(|| {
                            format!("{key}={value:?} must be a whole number of MiB from 1 to 4096")
                        })?;
                    settings.max_memory_bytes = mb << 20;
                }
                METRICS_LISTEN => {
                    let address: SocketAddr = value.parse().with_context(|| {
                        format!("{key}={value:?} is not an IP:port address such as 0.0.0.0:9090")
                    })?;
                    settings.metrics_listen = Some(address);
                }
                MAX_CONCURRENT_REQUESTS => {
                    settings.max_concurrent_requests =
                        value.parse().ok().filter(|n| (1..=MAX_INSTANCES).contains(n)).with_context(
                            || format!("{key}={value:?} must be a whole number from 1 to {MAX_INSTANCES}"),
                        )?;
                }
                QUEUE_TIMEOUT_MS => {
                    let ms: u64 = value.parse().ok().filter(|ms| *ms <= 60_000).with_context(|| {
                        format!("{key}={value:?} must be a whole number of milliseconds from 0 to 60000")
                    })?;
                    settings.queue_timeout = Duration::from_millis(ms);
                }
                MAX_BODY_BYTES => {
                    settings.max_body_bytes = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("{key}={value:?} must be a positive number of bytes"))?;
                }
                ALLOWED_OUTBOUND_HOSTS => {
                    settings.outbound =
                        OutboundPolicy::parse(value).with_context(|| format!("{key}={value:?}"))?;
                }
                SHUTDOWN_DELAY_SECONDS => settings.shutdown_delay = Duration::from_secs(seconds(key, value)?),
                _ => bail!("unknown setting {key}; known ones are {}", KNOWN.join(", ")),
            }
        }
        if settings.metrics_listen == Some(settings.listen) {
            bail!(
                "{METRICS_LISTEN} and {LISTEN} are both {}; give metrics a port of their own",
                settings.listen
            );
        }
        settings.traces.check()?;
        Ok(settings)
    }
}

/// The most instances the engine's pool holds (wasmtime's default), so the
/// most requests that can ever run at once.
pub const MAX_INSTANCES: usize = 1000;

/// Reads one `OTEL_*` variable; what is in effect is checked once all are
/// read (`TraceSettings::check`). Other `OTEL_*` variables are left to the
/// SDK's defaults.
fn read_otel(traces: &mut TraceSettings, key: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    match key {
        OTLP_TRACES_ENDPOINT => traces.traces_endpoint = Some(value.to_string()),
        OTLP_ENDPOINT => traces.base_endpoint = Some(value.to_string()),
        OTLP_TRACES_PROTOCOL => traces.traces_protocol = Some(value.to_string()),
        OTLP_PROTOCOL => traces.protocol = Some(value.to_string()),
        OTLP_TRACES_HEADERS => traces.traces_headers = Some(headers(key, value)?),
        OTLP_HEADERS => traces.base_headers = Some(headers(key, value)?),
        SDK_DISABLED => traces.disabled |= value.eq_ignore_ascii_case("true"),
        TRACES_EXPORTER => match value {
            "none" => traces.disabled = true,
            "otlp" => {}
            _ => bail!("{key}={value:?}: spans can be exported with otlp only (or none)"),
        },
        SERVICE_NAME => traces.service_name = value.to_string(),
        _ => {}
    }
    Ok(())
}

/// `key=value,key2=value2`, values percent-encoded as the specification says
/// (only `%20`-style escapes of the value are decoded).
fn headers(key: &str, value: &str) -> Result<HashMap<String, String>> {
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (name, text) = pair.split_once('=').with_context(|| {
                format!("{key}: {pair:?} is not name=value (use name=value,name2=value2)")
            })?;
            Ok((name.trim().to_string(), percent_decoded(text.trim())))
        })
        .collect()
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The exporter speaks plain HTTP only: a container's root filesystem has
/// no CA certificates to check a collector's TLS with, and a collector in
/// the cluster (or on the node) is reached over plain HTTP anyway.
fn url<'a>(key: &str, value: &'a str) -> Result<&'a str> {
    if value.starts_with("https://") {
        bail!(
            "{key}={value:?}: spans are exported over plain http:// only; point it at a collector in the \
             cluster, such as http://otel-collector.observability:4318"
        );
    }
    if !value.starts_with("http://") || value.len() <= "http://".len() {
        bail!("{key}={value:?} must be an http:// URL such as http://otel-collector:4318");
    }
    Ok(value)
}

fn seconds(key: &str, value: &str) -> Result<u64> {
    value.parse().with_context(|| format!("{key}={value:?} must be a whole number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[&str]) -> Vec<String> {
        pairs.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_traces_settings_win_over_the_base_ones_in_any_order() {
        let settings = Settings::from_env(&env(&[
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://a:4318/custom",
            "OTEL_EXPORTER_OTLP_ENDPOINT=https://b:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS=x=1",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS=authorization=Bearer%20t0k,tenant=a",
        ]))
        .unwrap();
        assert_eq!(settings.traces.endpoint().as_deref(), Some("http://a:4318/custom"));
        let headers = settings.traces.headers();
        assert_eq!(headers.get("authorization").map(String::as_str), Some("Bearer t0k"));
        assert_eq!(headers.get("tenant").map(String::as_str), Some("a"));
        assert!(!headers.contains_key("x"));
    }

    #[test]
    fn export_is_off_when_disabled_and_empty_values_count_as_unset() {
        for off in ["OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none"] {
            let settings =
                Settings::from_env(&env(&["OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318", off])).unwrap();
            assert_eq!(settings.traces.endpoint(), None, "{off}");
        }
        let settings =
            Settings::from_env(&env(&["OTEL_EXPORTER_OTLP_ENDPOINT=", "OTEL_SERVICE_NAME="])).unwrap();
        assert_eq!(settings.traces, Settings::default().traces);
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let settings = Settings::from_env(&env(&["PATH=/bin", "DAPR_URL=http://x"])).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8080");
    }

    #[test]
    fn every_knob_is_read() {
        let settings = Settings::from_env(&env(&[
            "WASMTIME_CUSTOM_LISTEN=127.0.0.1:9000",
            "WASMTIME_CUSTOM_GRACE_SECONDS=3",
            "WASMTIME_CUSTOM_REQUEST_TIMEOUT_SECONDS=7",
            "WASMTIME_CUSTOM_MAX_MEMORY_MB=64",
            "WASMTIME_CUSTOM_METRICS_LISTEN=0.0.0.0:9090",
            "WASMTIME_CUSTOM_MAX_CONCURRENT_REQUESTS=8",
            "WASMTIME_CUSTOM_QUEUE_TIMEOUT_MS=250",
            "WASMTIME_CUSTOM_MAX_BODY_BYTES=1024",
            "WASMTIME_CUSTOM_ALLOWED_OUTBOUND_HOSTS=http://127.0.0.1:3500",
            "WASMTIME_CUSTOM_SHUTDOWN_DELAY_SECONDS=2",
            "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318/",
            "OTEL_SERVICE_NAME=distributor",
        ]))
        .unwrap();
        assert_eq!(settings.metrics_listen, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(settings.max_concurrent_requests, 8);
        assert_eq!(settings.queue_timeout, Duration::from_millis(250));
        assert_eq!(settings.max_body_bytes, 1024);
        assert!(settings.outbound.allows(&"http://127.0.0.1:3500/v1.0".parse().unwrap()));
        assert!(!settings.outbound.allows(&"http://127.0.0.1:3501/".parse().unwrap()));
        assert_eq!(settings.shutdown_delay, Duration::from_secs(2));
        assert_eq!(settings.traces.endpoint().as_deref(), Some("http://collector:4318/v1/traces"));
        assert_eq!(settings.traces.service_name, "distributor");
        assert_eq!(settings.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(settings.grace, Duration::from_secs(3));
        assert_eq!(settings.request_timeout, Duration::from_secs(7));
        assert_eq!(settings.max_memory_bytes, 64 << 20);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (entry, needle) in [
            ("WASMTIME_CUSTOM_LISTEN=8080", "WASMTIME_CUSTOM_LISTEN"),
            ("WASMTIME_CUSTOM_GRACE_SECONDS=soon", "WASMTIME_CUSTOM_GRACE_SECONDS"),
            ("WASMTIME_CUSTOM_REQUEST_TIMEOUT_SECONDS=0", "WASMTIME_CUSTOM_REQUEST_TIMEOUT_SECONDS=0"),
            ("WASMTIME_CUSTOM_MAX_MEMORY_MB=0", "WASMTIME_CUSTOM_MAX_MEMORY_MB"),
            ("WASMTIME_CUSTOM_LISEN=0.0.0.0:1", "unknown setting WASMTIME_CUSTOM_LISEN"),
            ("WASMTIME_CUSTOM_METRICS_LISTEN=9090", "WASMTIME_CUSTOM_METRICS_LISTEN"),
            ("WASMTIME_CUSTOM_METRICS_LISTEN=0.0.0.0:8080", "give metrics a port of their own"),
            ("WASMTIME_CUSTOM_MAX_CONCURRENT_REQUESTS=0", "from 1 to 1000"),
            ("WASMTIME_CUSTOM_QUEUE_TIMEOUT_MS=-1", "WASMTIME_CUSTOM_QUEUE_TIMEOUT_MS"),
            ("WASMTIME_CUSTOM_MAX_BODY_BYTES=10MB", "WASMTIME_CUSTOM_MAX_BODY_BYTES"),
            ("WASMTIME_CUSTOM_ALLOWED_OUTBOUND_HOSTS=dapr:3500", "scheme://host[:port]"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT=collector:4318", "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318 OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
                "with protobuf only",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=https://c:4318/v1/traces", "plain http:// only"),
            ("OTEL_TRACES_EXPORTER=zipkin", "otlp only"),
            ("OTEL_EXPORTER_OTLP_HEADERS=token", "not name=value"),
        ] {
            let entries: Vec<&str> = entry.split(' ').collect();
            let err = format!("{:#}", Settings::from_env(&env(&entries)).unwrap_err());
            assert!(err.contains(needle), "{entry}: {err}");
        }
    }
}
