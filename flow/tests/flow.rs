//! The order flow end to end: the app on the wasmtime-custom shim (and the
//! native baseline on runc) under a real containerd 1.7 that got the shim
//! from the node installer, connected by the Dapr stand-in. Every blob is
//! read back and compared with the order it came from.

use std::time::Duration;

use anyhow::Result;
use flow::job::{self, Flow, Node};
use flow::model::{Flavor, FlowOptions, Role};
use flow::report::Report;
use flow::standin::StandInOptions;
use testbed::Paths;

use support::otlp_receiver::{OtlpReceiver, ReceivedSpan};

mod support;

fn options(orders: u32) -> FlowOptions {
    FlowOptions {
        orders,
        seed: 42,
        poison: 0,
        standin: StandInOptions::default(),
        timeout: Duration::from_secs(300),
        progress: false,
        app_env: Vec::new(),
    }
}

fn assert_exactly_once(report: &Report) {
    let text = report.render();
    assert!(report.ok(), "{text}\n{}", report.app_outputs());
    assert_eq!(report.verification.delivered, report.orders, "{text}");
    let ingress = &report.hops[0];
    assert_eq!(ingress.published, u64::from(report.orders + report.poison), "{text}");
    let forwarded: u64 = report.hops[1..].iter().map(|hop| hop.published).sum();
    assert_eq!(forwarded, u64::from(report.orders), "each order is put on exactly one queue once: {text}");
    assert!(text.contains(&format!("{0} of {0} orders delivered, 0 lost", report.orders)), "{text}");
}

#[test]
fn three_hundred_orders_land_exactly_once_through_the_shim() -> Result<()> {
    let node = Node::start(&Paths::from_env()?)?;
    let report = job::run_on(&node, Flavor::Wasm, options(300))?;
    assert_exactly_once(&report);
    assert_eq!(report.blob_writes, 300, "no blob is written twice when nothing fails");
    assert_eq!((report.redeliveries, report.dead_letters.len()), (0, 0), "{}", report.render());
    // 600 binding calls; the shim's outgoing HTTP keeps connections open
    // (at most one per request in flight), it does not connect per call.
    assert!(report.standin_connections <= 200, "{}", report.render());
    Ok(())
}

#[test]
fn native_baseline_delivers_the_same_orders_under_runc() -> Result<()> {
    let node = Node::start(&Paths::from_env()?)?;
    let report = job::run_on(&node, Flavor::Native, options(300))?;
    assert_exactly_once(&report);
    Ok(())
}

#[test]
fn poison_messages_are_dead_lettered_after_the_retry_limit_and_never_forwarded() -> Result<()> {
    let node = Node::start(&Paths::from_env()?)?;
    let mut options = options(100);
    options.poison = 4;
    options.standin.max_attempts = 3;
    options.standin.backoff = Duration::from_millis(10);
    let report = job::run_on(&node, Flavor::Wasm, options)?;
    let text = report.render();
    assert_exactly_once(&report);
    assert_eq!(report.verification.poison_dead_lettered, 4, "{text}");
    assert_eq!(report.verification.poison_forwarded, 0, "{text}");
    assert_eq!(report.dead_letters.len(), 4, "only the poison is dead-lettered: {text}");
    for letter in &report.dead_letters {
        assert_eq!((letter.queue.as_str(), letter.attempts), ("q-order-ingress", 3), "{letter:?}");
        assert!(
            letter.last_error.contains("400") && letter.last_error.contains("invalid order"),
            "{letter:?}"
        );
    }
    assert_eq!(report.redeliveries, 4 * 2, "two redeliveries each before the third failure: {text}");
    assert!(text.contains("dead letters: 4") && text.contains("poison: 4 of 4 dead-lettered"), "{text}");
    Ok(())
}

#[test]
fn a_receiver_killed_mid_run_gets_its_orders_redelivered_and_none_is_lost() -> Result<()> {
    let node = Node::start(&Paths::from_env()?)?;
    let mut options = options(1500);
    // Slow enough that the kill lands while orders are still flowing.
    options.standin.concurrency = 2;
    // However long the restart takes on a loaded machine, no order may run
    // out of attempts meanwhile: this test is about redelivery, not dead letters.
    options.standin.max_attempts = 10_000;
    options.standin.max_backoff = Duration::from_millis(500);
    let mut flow = Flow::start(&node, Flavor::Wasm, options)?;
    flow.release()?;
    flow.wait_until(|p| p.blobs >= 100)?.reached()?;
    flow.kill_app(Role::ReceiverExpress)?;
    let down = flow.wait_until(|p| p.redeliveries >= 3)?.reached()?;
    assert!(down.redeliveries >= 3, "deliveries to the killed receiver must fail and be redelivered");
    assert!(down.blobs < 1500, "the flow ended before the receiver was killed; nothing was tested");
    flow.start_app(Role::ReceiverExpress)?;
    let report = flow.finish()?;
    assert!(report.redeliveries < 10_000, "{}", report.render());
    assert_exactly_once(&report);
    let express = &report.hops[1];
    assert!(express.redeliveries >= 3, "{}", report.render());
    assert!(report.dead_letters.is_empty(), "{}", report.render());
    Ok(())
}

#[test]
fn a_blob_storage_outage_is_answered_5xx_and_redelivered_not_lost() -> Result<()> {
    let node = Node::start(&Paths::from_env()?)?;
    let mut options = options(200);
    options.standin.failing_blob_writes = 40;
    options.standin.backoff = Duration::from_millis(20);
    let report = job::run_on(&node, Flavor::Wasm, options)?;
    let text = report.render();
    assert_exactly_once(&report);
    assert_eq!(report.failed_blob_writes, 40, "{text}");
    // Each refused write made a receiver answer 502, and its queue redeliver.
    let receivers: u64 = report.hops[1..].iter().map(|hop| hop.redeliveries).sum();
    assert_eq!(receivers, 40, "{text}");
    assert_eq!(report.hops[0].redeliveries, 0, "{text}");
    Ok(())
}

#[test]
fn each_order_is_one_trace_from_the_ingress_delivery_to_the_blob_write() -> Result<()> {
    const ORDERS: u32 = 6;
    let collector = OtlpReceiver::start()?;
    let node = Node::start(&Paths::from_env()?)?;
    let mut options = options(ORDERS);
    options.app_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector.url())];
    let report = job::run_on(&node, Flavor::Wasm, options)?;
    assert_exactly_once(&report);
    assert_eq!(report.redeliveries, 0, "{}", report.render());
    // The apps have exited: every span was sent. Per order: the
    // distributor's server and client spans, a receiver's server and client;
    // and one per app for the stand-in's probe.
    let spans = testbed::poll::until("every order's spans", Duration::from_secs(15), || {
        let spans = collector.spans();
        (spans.len() >= 4 * ORDERS as usize + 3).then_some(spans)
    })?;
    // The stand-in probes each input route with OPTIONS before its first
    // delivery, as Dapr does: one trace of one span per app.
    let (probes, spans): (Vec<&ReceivedSpan>, Vec<&ReceivedSpan>) =
        spans.iter().partition(|s| s.name.starts_with("OPTIONS "));
    assert_eq!(probes.len(), 3, "{probes:#?}");
    let mut traces: std::collections::BTreeMap<&str, Vec<&ReceivedSpan>> = Default::default();
    for span in spans.iter().copied() {
        traces.entry(span.trace_id.as_str()).or_default().push(span);
    }
    assert_eq!(traces.len(), ORDERS as usize, "one trace per order: {spans:#?}");
    let (server, client) = (2, 3);
    for (trace, spans) in &traces {
        let find = |service: &str, kind: i32| {
            let found: Vec<&&ReceivedSpan> =
                spans.iter().filter(|s| s.service.starts_with(service) && s.kind == kind).collect();
            assert_eq!(found.len(), 1, "trace {trace}: one kind-{kind} span of {service}: {spans:#?}");
            *found[0]
        };
        let distributor_in = find("distributor", server);
        let distributor_out = find("distributor", client);
        let receiver_in = find("receiver-", server);
        let receiver_out = find("receiver-", client);
        assert_eq!(spans.len(), 4, "trace {trace}: {spans:#?}");
        // The ingress delivery's context comes from the stand-in (which
        // exports no span of its own): the distributor continues it.
        assert!(!distributor_in.parent_span_id.is_empty(), "{distributor_in:#?}");
        assert!(spans.iter().all(|s| s.span_id != distributor_in.parent_span_id));
        assert_eq!(distributor_in.name, "POST /q-order-ingress");
        assert_eq!(distributor_out.parent_span_id, distributor_in.span_id);
        assert!(distributor_out.attribute("url.full").is_some_and(|u| u.contains("/v1.0/bindings/q-order-")));
        // Through the queue: the stand-in carried the binding call's context
        // to the delivery, as Dapr does.
        assert_eq!(receiver_in.parent_span_id, distributor_out.span_id);
        assert_eq!(receiver_in.service, receiver_out.service);
        assert_eq!(receiver_out.parent_span_id, receiver_in.span_id);
        assert!(receiver_out.attribute("url.full").is_some_and(|u| u.ends_with("-outbox")));
        assert_eq!(receiver_in.attribute("http.response.status_code"), Some("200"));
    }
    let (trace, spans) = traces.iter().next().expect("six traces");
    eprintln!("one order's trace, {trace}:");
    for span in spans {
        eprintln!(
            "  {:<17} {:<28} span {} parent {} kind {}",
            span.service, span.name, span.span_id, span.parent_span_id, span.kind
        );
    }
    Ok(())
}
