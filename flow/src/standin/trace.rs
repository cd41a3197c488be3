//! W3C trace context (`traceparent`, `tracestate`) carried from an app's
//! binding call to the deliveries of the message it published, so that one
//! order is one trace from its ingress delivery to its blob write.
//!
//! Dapr would put a span of its own between the call and the delivery. The
//! stand-in exports no spans, so it passes the caller's context through
//! unchanged: the receiver's server span then has the distributor's client
//! span as its parent. A message with no valid context behind it (the
//! ingress queue's, or a call's malformed one) starts a new trace, as Dapr's
//! input binding does; its queue keeps that context, so every redelivery of
//! the message carries the same one.

use std::num::{NonZeroU64, NonZeroU128};

use hyper::HeaderMap;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Length of a version 00 `traceparent`; later versions start with the
/// same fields.
const TRACEPARENT_LEN: usize = 55;

/// A message's trace context: what each of its deliveries carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// Valid, in version 00's form.
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// The context a call carries: `None` unless it has exactly one valid
    /// `traceparent`. Its `tracestate` counts only with a valid
    /// `traceparent` (the spec says to ignore it otherwise); several
    /// `tracestate` headers are one list, joined as HTTP list headers are.
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let (Some(value), None) = (values.next(), values.next()) else { return None };
        let traceparent = parse_traceparent(value.to_str().ok()?)?;
        let states: Option<Vec<&str>> = headers.get_all(TRACESTATE).iter().map(|v| v.to_str().ok()).collect();
        let tracestate = states.map(|states| states.join(",")).filter(|state| !state.trim().is_empty());
        Some(TraceContext { traceparent, tracestate })
    }

    /// A new trace: random trace and span ids (never all zero), sampled.
    pub fn start() -> TraceContext {
        let trace_id: NonZeroU128 = rand::random();
        let span_id: NonZeroU64 = rand::random();
        TraceContext { traceparent: format!("00-{trace_id:032x}-{span_id:016x}-01"), tracestate: None }
    }

    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
}

/// A valid `traceparent` in version 00's form, or `None` if `value` is
/// malformed: a field of the wrong length or not lowercase hex, version
/// `ff`, an all-zero trace or parent id, or (version 00) anything after the
/// flags. A later version may add fields after a `-`; only the four fields
/// this version knows are kept, under version 00 (what the stand-in speaks).
pub fn parse_traceparent(value: &str) -> Option<String> {
    let (known, rest) = value.split_at_checked(TRACEPARENT_LEN)?;
    let mut fields = known.split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    let hex = |field: &str, len: usize| {
        field.len() == len && field.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |field: &str| field.bytes().any(|b| b != b'0');
    let fields_valid = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && nonzero(trace_id)
        && hex(parent_id, 16)
        && nonzero(parent_id)
        && hex(flags, 2);
    let ends_right = rest.is_empty() || (version != "00" && rest.starts_with('-'));
    (fields_valid && ends_right).then(|| format!("00-{trace_id}-{parent_id}-{flags}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use hyper::header::HeaderValue;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_valid_traceparent_is_kept_as_it_is() {
        assert_eq!(parse_traceparent(VALID).as_deref(), Some(VALID));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(parse_traceparent(unsampled).as_deref(), Some(unsampled));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let malformed = [
            ("empty", String::new()),
            ("too short", VALID[..54].to_string()),
            ("too long", format!("{VALID}0")),
            ("version 00 with more fields", format!("{VALID}-00")),
            ("non-hex trace id", VALID.replace("4bf9", "4bg9")),
            ("uppercase hex", VALID.replace("4bf9", "4BF9")),
            ("non-hex flags", VALID.replace("-01", "-0x")),
            ("version ff", VALID.replacen("00", "ff", 1)),
            ("all-zero trace id", format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32))),
            ("all-zero parent id", format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16))),
            ("short trace id", "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01".to_string()),
            ("wrong separator", VALID.replace('-', "_")),
            ("multi-byte character", format!("{}é", &VALID[..54])),
        ];
        for (what, value) in malformed {
            assert_eq!(parse_traceparent(&value), None, "{what}: {value:?}");
        }
    }

    #[test]
    fn a_later_version_keeps_the_fields_version_00_knows() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(later).as_deref(), Some(VALID));
        assert_eq!(parse_traceparent(&format!("{later}-what-follows")).as_deref(), Some(VALID));
        assert_eq!(parse_traceparent(&format!("{later}what-follows")), None, "no '-' after the flags");
    }

    #[test]
    fn a_calls_traceparent_and_tracestate_are_its_context() {
        let context = TraceContext::from_headers(&headers(&[
            (TRACEPARENT, VALID),
            (TRACESTATE, "congo=t61rcWkgMzE"),
            (TRACESTATE, "rojo=00f067aa0ba902b7"),
        ]))
        .expect("a valid traceparent");
        assert_eq!(context.traceparent(), VALID);
        assert_eq!(context.tracestate(), Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
        let without_state = TraceContext::from_headers(&headers(&[(TRACEPARENT, VALID)])).unwrap();
        assert_eq!(without_state.tracestate(), None);
    }

    #[test]
    fn a_call_without_one_valid_traceparent_has_no_context_and_its_tracestate_is_dropped() {
        let version_ff = VALID.replacen("00", "ff", 1);
        for pairs in [
            vec![],
            vec![(TRACESTATE, "congo=t61rcWkgMzE")],
            vec![(TRACEPARENT, version_ff.as_str()), (TRACESTATE, "congo=t61rcWkgMzE")],
            vec![(TRACEPARENT, VALID), (TRACEPARENT, VALID)],
        ] {
            assert_eq!(TraceContext::from_headers(&headers(&pairs)), None, "{pairs:?}");
        }
    }

    #[test]
    fn a_new_trace_is_valid_sampled_and_its_own() {
        let mut trace_ids = HashSet::new();
        for _ in 0..1000 {
            let context = TraceContext::start();
            let traceparent = context.traceparent();
            assert_eq!(parse_traceparent(traceparent).as_deref(), Some(traceparent));
            assert!(traceparent.ends_with("-01"), "sampled: {traceparent}");
            assert_eq!(context.tracestate(), None);
            assert!(trace_ids.insert(traceparent[3..35].to_string()), "a trace id came twice");
        }
    }
}
