//! The knobs a container sets through its environment, parsed and checked
//! once, before anything starts (a bad value fails the start, not a request).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            grace: Duration::from_secs(25),
            request_timeout: Duration::from_secs(60),
            max_memory_bytes: 128 << 20,
        }
    }
}

pub const LISTEN: &str = "WASMTIME_CUSTOM_LISTEN";
pub const GRACE_SECONDS: &str = "WASMTIME_CUSTOM_GRACE_SECONDS";
pub const REQUEST_TIMEOUT_SECONDS: &str = "WASMTIME_CUSTOM_REQUEST_TIMEOUT_SECONDS";
pub const MAX_MEMORY_MB: &str = "WASMTIME_CUSTOM_MAX_MEMORY_MB";

impl Settings {
    /// Reads the settings from `KEY=VALUE` pairs (the OCI spec's env list).
    /// Unknown `WASMTIME_CUSTOM_*` names are refused, as a typo would
    /// otherwise silently keep a default.
    pub fn from_env(env: &[String]) -> Result<Settings> {
        let mut settings = Settings::default();
        for entry in env {
            let Some((key, value)) = entry.split_once('=') else { continue };
            if !key.starts_with("WASMTIME_CUSTOM_") {
                continue;
            }
            let value = value.trim();
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
                _ => bail!(
                    "unknown setting {key}; known ones are {LISTEN}, {GRACE_SECONDS}, \
                     {REQUEST_TIMEOUT_SECONDS}, {MAX_MEMORY_MB}"
                ),
            }
        }
        Ok(settings)
    }
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
        ]))
        .unwrap();
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
        ] {
            let err = format!("{:#}", Settings::from_env(&env(&[entry])).unwrap_err());
            assert!(err.contains(needle), "{entry}: {err}");
        }
    }
}
