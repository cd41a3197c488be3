//! The outbound allow-list: which `scheme://host:port` a guest may send HTTP
//! requests to (`WASMTIME_CUSTOM_ALLOWED_OUTBOUND_HOSTS`).
//!
//! A list of comma-separated patterns, each `scheme://host[:port]`, where a
//! whole part may be `*`, a host may start with `*.` (any subdomain), and a
//! missing port means the scheme's default (80, 443). A request matches
//! when one pattern matches all three parts. The host is compared as the
//! guest wrote it (no DNS lookup), case-insensitively.

use anyhow::{Result, bail};
use hyper::Uri;

/// Where a container's guests may send requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// The default: no list set, every destination allowed.
    AllowAll,
    /// Only these destinations.
    Only(Vec<Pattern>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    scheme: Part,
    host: Host,
    port: Part,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Any,
    Exactly(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Exactly(String),
    /// `*.example.com`: stored as `.example.com`.
    SubdomainOf(String),
}

impl OutboundPolicy {
    /// Parses the variable's value; an empty list denies everything.
    pub fn parse(value: &str) -> Result<OutboundPolicy> {
        let patterns = value
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(Pattern::parse)
            .collect::<Result<Vec<_>>>()?;
        Ok(OutboundPolicy::Only(patterns))
    }

    /// Whether a request to `uri` may be sent.
    pub fn allows(&self, uri: &Uri) -> bool {
        let OutboundPolicy::Only(patterns) = self else { return true };
        // User info is dialled by some senders as part of the host: never
        // let it past a comparison of the host alone.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return false;
        }
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else { return false };
        let scheme = scheme.to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        let Some(port) = uri.port_u16().or_else(|| default_port(&scheme)) else { return false };
        patterns.iter().any(|p| p.matches(&scheme, &host, port))
    }
}

impl Pattern {
    fn parse(entry: &str) -> Result<Pattern> {
        let Some((scheme, rest)) = entry.split_once("://") else {
            bail!(
                "{entry:?} is not scheme://host[:port] (for example http://127.0.0.1:3500 or https://*.example.com)"
            )
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "*" && scheme != "http" && scheme != "https" {
            bail!("{entry:?}: the scheme must be http, https or *");
        }
        if rest.contains('/') {
            bail!("{entry:?}: a pattern names a destination, not a path; remove everything after the port");
        }
        // An IPv6 address keeps its brackets, as in a URI: [::1]:8080.
        if !rest.starts_with('[') && rest.matches(':').count() > 1 {
            bail!("{entry:?}: write an IPv6 address in brackets, as in a URL: http://[fe80::1]:8080");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (rest, None),
        };
        let host = host.to_ascii_lowercase();
        let host = match host.as_str() {
            "" => bail!("{entry:?}: the host is missing (use * for any host)"),
            "*" => Host::Any,
            _ if host.starts_with("*.") => Host::SubdomainOf(host[1..].to_string()),
            _ if host.contains('*') => bail!("{entry:?}: * may stand for the whole host or start it as *."),
            _ => Host::Exactly(host.trim_start_matches('[').trim_end_matches(']').to_string()),
        };
        let port = match port {
            Some("*") => Part::Any,
            Some(port) => match port.parse::<u16>() {
                Ok(n) if n > 0 => Part::Exactly(n.to_string()),
                _ => bail!("{entry:?}: the port must be a number from 1 to 65535 or *"),
            },
            None => match default_port(&scheme) {
                Some(n) => Part::Exactly(n.to_string()),
                None => bail!("{entry:?}: with scheme * the port must be given (a number or *)"),
            },
        };
        let scheme = if scheme == "*" { Part::Any } else { Part::Exactly(scheme) };
        Ok(Pattern { scheme, host, port })
    }

    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let scheme_ok = matches!(&self.scheme, Part::Any) || self.scheme == Part::Exactly(scheme.to_string());
        let port_ok = matches!(&self.port, Part::Any) || self.port == Part::Exactly(port.to_string());
        let host_ok = match &self.host {
            Host::Any => true,
            Host::Exactly(name) => name == host,
            Host::SubdomainOf(suffix) => host.ends_with(suffix.as_str()),
        };
        scheme_ok && host_ok && port_ok
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &str, uri: &str) -> bool {
        OutboundPolicy::parse(list).unwrap().allows(&uri.parse().unwrap())
    }

    #[test]
    fn unset_allows_everything_and_empty_denies_everything() {
        assert!(OutboundPolicy::AllowAll.allows(&"https://example.com/x".parse().unwrap()));
        assert!(!allows("", "http://127.0.0.1:3500/v1.0/bindings/x"));
    }

    #[test]
    fn exact_destination_matches_scheme_host_and_port() {
        let list = "http://distributor-dapr:3500";
        assert!(allows(list, "http://distributor-dapr:3500/v1.0/bindings/q"));
        assert!(allows(list, "HTTP://Distributor-Dapr:3500/"));
        assert!(!allows(list, "https://distributor-dapr:3500/"));
        assert!(!allows(list, "http://distributor-dapr:3501/"));
        assert!(!allows(list, "http://distributor-dapr/"));
        assert!(!allows(list, "http://other:3500/"));
    }

    #[test]
    fn wildcards_and_default_ports() {
        assert!(allows("https://*.example.com", "https://api.example.com/"));
        assert!(allows("https://*.example.com", "https://api.example.com:443/"));
        assert!(!allows("https://*.example.com", "https://example.com/"));
        assert!(!allows("https://*.example.com", "https://api.example.com:8443/"));
        assert!(allows("*://*:*", "http://anything:1/"));
        assert!(allows("http://127.0.0.1:*, https://x.org", "http://127.0.0.1:9/"));
        assert!(allows("http://127.0.0.1:*, https://x.org", "https://x.org/"));
        assert!(allows("http://[::1]:8080", "http://[::1]:8080/"));
        assert!(!allows("http://good:80", "http://good:80@evil:80/"));
    }

    #[test]
    fn malformed_patterns_say_what_is_wrong() {
        for (entry, needle) in [
            ("distributor-dapr:3500", "scheme://host[:port]"),
            ("ftp://x", "scheme must be"),
            ("http://x:0", "port must be"),
            ("http://x:99999", "port must be"),
            ("http://x:3500/v1.0", "not a path"),
            ("http://ex*ample.com", "whole host"),
            ("*://x", "port must be given"),
            ("http://:80", "host is missing"),
            ("http://fe80::1", "in brackets"),
        ] {
            let err = format!("{:#}", OutboundPolicy::parse(entry).unwrap_err());
            assert!(err.contains(needle), "{entry}: {err}");
        }
    }
}
