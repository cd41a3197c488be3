//! Running it in production, under real containerd: the metrics a scrape
//! sees, the guard rails (concurrency, body size, outbound allow-list),
//! overload at the descriptor limit, and a drain under load (one order's
//! trace is followed in `flow/tests/flow.rs`, through the flow's stand-in).
//! Needs the release shim and `cargo xtask images`.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::dapr_recorder::DaprRecorder;
use support::http;
use testbed::{Containerd, Run, Version, free_port};

mod support;

const TEST_HTTP: &str = "localhost/wasmtime-custom/test-http:latest";

/// Scrapes `GET /metrics` and parses it with a Prometheus text-format parser.
fn scrape(port: u16) -> Result<prometheus_parse::Scrape> {
    let reply = http::get(port, "/metrics")?;
    ensure!(reply.status == 200, "scrape answered {}: {}", reply.status, reply.body);
    let content_type = reply.header("content-type").unwrap_or_default();
    ensure!(content_type.starts_with("application/openmetrics-text"), "content-type {content_type}");
    let lines = reply.body.lines().map(|line| Ok(line.to_string()));
    prometheus_parse::Scrape::parse(lines).context("parse the scrape")
}

/// The value of sample `name` with `labels`; a missing sample fails,
/// except for a labelled counter that has not counted yet (`absent_is_zero`:
/// such a series appears at its first increment).
fn value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
    absent_is_zero: bool,
) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found {
        None if absent_is_zero => 0.0,
        None => panic!("no sample {name}{labels:?} in the scrape:\n{scrape:#?}"),
        Some(s) => match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        },
    }
}

/// A sample that must be in the scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels, false)
}

/// A labelled counter: 0 until its first increment.
fn counted(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels, true)
}

#[test]
fn metrics_under_load_agree_with_what_was_sent() -> Result<()> {
    let containerd = Containerd::start(Version::V2_1)?;
    containerd.import("test-http.tar", &[])?;
    let dapr = DaprRecorder::start()?;
    let (port, metrics_port) = (free_port()?, free_port()?);
    let mut guest = containerd.run(
        Run::new(TEST_HTTP, "metrics")
            .listen(port)
            .env("WASMTIME_CUSTOM_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("WASMTIME_CUSTOM_ALLOWED_OUTBOUND_HOSTS", dapr.url())
            .env("WASMTIME_CUSTOM_MAX_BODY_BYTES", 1000),
    )?;
    guest.wait_listening(port)?;
    let at_start = scrape(metrics_port)?;
    assert_eq!(counted(&at_start, "wasmtime_custom_requests_total", &[("class", "2xx")]), 0.0);
    assert_eq!(sample(&at_start, "wasmtime_custom_draining", &[]), 0.0);

    // 4 clients x 100 requests, scraped while they run.
    let load_done = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    for _ in 0..100 {
                        let reply = http::get(port, "/")?;
                        ensure!(reply.status == 200, "{}", reply.body);
                    }
                    Ok(())
                })
            })
            .collect();
        let mut last = 0.0;
        let mut scrapes = 0;
        while !load_done.load(Ordering::SeqCst) {
            let seen = counted(&scrape(metrics_port)?, "wasmtime_custom_requests_total", &[("class", "2xx")]);
            assert!(seen >= last, "a counter went down: {last} -> {seen}");
            last = seen;
            scrapes += 1;
            if clients.iter().all(|c| c.is_finished()) {
                load_done.store(true, Ordering::SeqCst);
            }
        }
        for client in clients {
            client.join().expect("client thread")?;
        }
        assert!(scrapes >= 2, "only {scrapes} scrape(s) happened during the load");
        Ok(())
    })?;

    for _ in 0..3 {
        assert_eq!(http::get(port, "/trap")?.status, 500);
    }
    for _ in 0..2 {
        assert_eq!(http::post(port, "/body", &"x".repeat(2000))?.status, 413);
    }
    let metadata = format!("/fetch?url={}/v1.0/metadata", dapr.url());
    for _ in 0..5 {
        assert_eq!(http::get(port, &metadata)?.body, "status 200");
    }
    for _ in 0..2 {
        let denied = http::get(port, "/fetch?url=http://127.0.0.1:1/")?;
        assert!(denied.body.contains("HttpRequestDenied"), "{}", denied.body);
    }

    let end = scrape(metrics_port)?;
    let expect = [
        ("wasmtime_custom_requests_total", vec![("class", "2xx")], 407.0),
        ("wasmtime_custom_requests_total", vec![("class", "4xx")], 2.0),
        ("wasmtime_custom_requests_total", vec![("class", "5xx")], 3.0),
        ("wasmtime_custom_traps_total", vec![], 3.0),
        ("wasmtime_custom_body_too_large_total", vec![], 2.0),
        ("wasmtime_custom_outgoing_requests_total", vec![("class", "2xx")], 5.0),
        ("wasmtime_custom_outgoing_requests_total", vec![("class", "denied")], 2.0),
        ("wasmtime_custom_timeouts_total", vec![], 0.0),
        ("wasmtime_custom_requests_in_flight", vec![], 0.0),
        ("wasmtime_custom_request_duration_seconds_count", vec![], 412.0),
        // Every request but the two 413s got an instance.
        ("wasmtime_custom_instantiation_seconds_count", vec![], 410.0),
        ("wasmtime_custom_log_lines_dropped_total", vec![("stream", "stdout")], 0.0),
    ];
    for (name, labels, want) in expect {
        assert_eq!(sample(&end, name, &labels), want, "{name}{labels:?} in:\n{end:#?}");
    }
    guest.signal("SIGTERM")?;
    assert_eq!(guest.wait(Duration::from_secs(30))?, 0, "{}", guest.output());
    Ok(())
}

#[test]
fn guard_rails_answer_before_any_instance_is_made() -> Result<()> {
    let containerd = Containerd::start(Version::V1_7)?;
    containerd.import("test-http.tar", &[])?;
    let dapr = DaprRecorder::start()?;
    let (port, metrics_port) = (free_port()?, free_port()?);
    let mut guest = containerd.run(
        Run::new(TEST_HTTP, "guard-rails")
            .listen(port)
            .env("WASMTIME_CUSTOM_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("WASMTIME_CUSTOM_MAX_CONCURRENT_REQUESTS", 2)
            .env("WASMTIME_CUSTOM_QUEUE_TIMEOUT_MS", 300)
            .env("WASMTIME_CUSTOM_MAX_BODY_BYTES", 1000)
            .env("WASMTIME_CUSTOM_ALLOWED_OUTBOUND_HOSTS", format!("{},https://*.example.com", dapr.url())),
    )?;
    guest.wait_listening(port)?;

    // Concurrency: two slow requests hold both slots; a third waits 300 ms
    // and is told to come back, without an instance being made for it.
    let sleepers: Vec<_> =
        (0..2).map(|_| std::thread::spawn(move || http::get(port, "/sleep?ms=3000"))).collect();
    testbed::poll::until("both slow requests in the guest", Duration::from_secs(10), || {
        (guest.output().matches("] sleeping 3000 ms").count() == 2).then_some(())
    })?;
    let instances = || -> Result<f64> {
        Ok(sample(&scrape(metrics_port)?, "wasmtime_custom_instantiation_seconds_count", &[]))
    };
    let made = instances()?;
    assert_eq!(made, 2.0, "the two slow requests' instances");
    let asked = Instant::now();
    let shed = http::get(port, "/")?;
    let waited = asked.elapsed();
    assert_eq!((shed.status, shed.header("retry-after")), (503, Some("1")), "{}", shed.body);
    assert!(shed.body.contains("too many requests"), "{}", shed.body);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "answered after {waited:?}"
    );
    assert_eq!(instances()?, made, "the refused request made an instance");
    let unavailable = sample(
        &scrape(metrics_port)?,
        "wasmtime_custom_unavailable_total",
        &[("reason", "concurrency_limit")],
    );
    assert_eq!(unavailable, 1.0);
    for sleeper in sleepers {
        assert_eq!(sleeper.join().expect("sleeper thread")?.status, 200);
    }
    assert_eq!(http::get(port, "/")?.status, 200, "slots are given back");

    // Body size: a declared length over the limit is refused unread; a
    // chunked body that grows over it is refused too; a small one passes.
    let declared = http::post(port, "/body", &"x".repeat(1001))?;
    assert_eq!((declared.status, declared.header("connection")), (413, Some("close")), "{}", declared.body);
    assert_eq!(http::post(port, "/body", &"x".repeat(1000))?.body, "1000");
    assert_eq!(chunked_post(port, "/body", 3000)?, 413);
    assert_eq!(chunked_post(port, "/body", 900)?, 200);

    // Allow-list: the allowed destination is reached, any other is denied
    // with the wasi:http error, logged with the request's id.
    let allowed = http::get(port, &format!("/fetch?url={}/v1.0/metadata", dapr.url()))?;
    assert_eq!(allowed.body, "status 200");
    let denied = http::get(port, "/fetch?url=http://127.0.0.1:9/secret")?;
    assert!(denied.body.contains("HttpRequestDenied"), "{}", denied.body);
    let id = denied.header("x-request-id").context("request id")?.to_string();
    guest.wait_for_line(
        &format!("[req={id}] wasmtime-custom: outgoing request to http://127.0.0.1:9/secret denied"),
        Duration::from_secs(5),
    )?;

    // Trace context on outgoing requests: the caller's trace is continued
    // with a new parent; a guest's own traceparent goes out untouched.
    dapr.take_traceparents();
    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    http::call(
        "GET",
        &http::local(port, &format!("/fetch?url={}/v1.0/metadata", dapr.url())),
        "",
        &[("traceparent", incoming)],
    )?;
    let own = "00-11111111111111111111111111111111-2222222222222222-01";
    http::get(port, &format!("/fetch?url={}/v1.0/metadata&traceparent={own}", dapr.url()))?;
    let seen: Vec<Option<String>> = dapr.take_traceparents().into_iter().map(|(_, t)| t).collect();
    let continued = seen[0].as_deref().context("no traceparent on the outgoing request")?;
    assert!(continued.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{continued}");
    assert!(
        !continued.contains("b7ad6b7169203331"),
        "the parent must be the shim's client span: {continued}"
    );
    assert_eq!(seen[1].as_deref(), Some(own));

    guest.signal("SIGTERM")?;
    assert_eq!(guest.wait(Duration::from_secs(30))?, 0, "{}", guest.output());
    Ok(())
}

/// POSTs `length` bytes with chunked framing (no Content-Length) and
/// returns the status.
fn chunked_post(port: u16, path: &str, length: usize) -> Result<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in "y".repeat(length).as_bytes().chunks(500) {
        request.extend(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend(piece);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    stream.write_all(&request)?;
    let mut answer = String::new();
    // The server may close before reading everything; what it sent is read first.
    let _ = stream.read_to_string(&mut answer);
    let status = answer.split_whitespace().nth(1).context("no status line")?;
    status.parse().with_context(|| format!("status in {answer:?}"))
}

/// An HTTP/1.1 client on one connection (kept alive), driven by a task.
async fn client(stream: tokio::net::TcpStream) -> Result<SendRequest<Empty<Bytes>>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `GET path` with no body.
fn get(path: &str) -> Result<Request<Empty<Bytes>>> {
    Ok(Request::get(path).header("host", "127.0.0.1").body(Empty::new())?)
}

/// One request on a connection of its own; the status and body, or why
/// none came.
async fn one_request(stream: tokio::net::TcpStream, path: &str) -> Result<(u16, String)> {
    let response = client(stream).await?.send_request(get(path)?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn more_connections_than_descriptors_each_get_an_answer() -> Result<()> {
    // 1100 connections at once against a 1024-descriptor limit: the process
    // runs out of descriptors for certain, and must still answer everyone.
    const CONNECTIONS: usize = 1100;
    // This side holds the sockets too.
    rlimit::increase_nofile_limit(4096).context("raise this test's descriptor limit")?;
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-http.tar", &[])?;
    let port = free_port()?;
    let id = format!("connections-{}", std::process::id());
    // As a user would: `ctr run -d`, containerd's default limit of 1024
    // descriptors, nobody reading the log.
    containerd.run_detached(Run::new(TEST_HTTP, &id).listen(port))?;
    testbed::poll::until("the detached container to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })?;
    let pid = containerd.task_pid(&id)?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let open_files =
        limits.lines().find(|l| l.starts_with("Max open files")).context("no open files limit")?;
    assert_eq!(open_files.split_whitespace().nth(3), Some("1024"), "{open_files}");

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let answers = runtime.block_on(async {
        // Every connection is open before any request is sent.
        let mut streams = Vec::new();
        for _ in 0..CONNECTIONS {
            streams.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
        }
        let requests: Vec<_> =
            streams.into_iter().map(|stream| tokio::spawn(one_request(stream, "/sleep?ms=200"))).collect();
        let mut answers = Vec::new();
        for request in requests {
            let answer = tokio::time::timeout(Duration::from_secs(60), request).await;
            answers.push(match answer {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(anyhow::anyhow!("no answer within 60 s")),
            });
        }
        Ok::<_, anyhow::Error>(answers)
    })?;
    let count = |status: u16, text: &str| {
        answers.iter().filter(|a| matches!(a, Ok((s, body)) if *s == status && body.contains(text))).count()
    };
    let (ok, no_slot, no_descriptor) =
        (count(200, "slept"), count(503, "too many requests"), count(503, "no descriptor"));
    eprintln!(
        "{CONNECTIONS} connections: {ok} answered 200, {no_slot} 503 for want of a slot, {no_descriptor} 503 for want of a descriptor"
    );
    let other: Vec<String> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, _)) | Ok((503, _))))
        .take(5)
        .map(|a| format!("{a:?}"))
        .collect();
    assert!(other.is_empty(), "connections without a 200 or 503, e.g. {other:?}");
    assert_eq!(ok + no_slot + no_descriptor, CONNECTIONS);
    assert!(ok > 0, "nothing was served");
    assert!(no_descriptor > 0, "the process never ran out of descriptors: the test proves nothing");
    assert_eq!(http::get(port, "/")?.status, 200, "the server answers normally afterwards");
    containerd.remove(&id)
}

/// Keeps sending on one connection, made before the signal, until an
/// answer says `Connection: close`; fails on any request that gets no answer.
async fn until_closed(port: u16) -> Result<u32> {
    let mut sender = client(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?).await?;
    for n in 1.. {
        let response = sender.send_request(get("/")?).await.with_context(|| format!("request {n} failed"))?;
        ensure!(response.status() == 200, "request {n} answered {}", response.status());
        let closing = response.headers().get("connection").is_some_and(|v| v == "close");
        response.into_body().collect().await.with_context(|| format!("body of request {n}"))?;
        if closing {
            return Ok(n);
        }
    }
    unreachable!("the loop only ends by returning")
}

#[test]
fn a_drain_under_load_fails_no_request_of_a_connection_made_before_it() -> Result<()> {
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-http.tar", &[])?;
    for delay in [0, 2] {
        let (port, metrics_port) = (free_port()?, free_port()?);
        let mut guest = containerd.run(
            Run::new(TEST_HTTP, &format!("drain-{delay}"))
                .listen(port)
                .env("WASMTIME_CUSTOM_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
                .env("WASMTIME_CUSTOM_SHUTDOWN_DELAY_SECONDS", delay),
        )?;
        guest.wait_listening(port)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let signalled = runtime.block_on(async {
            let clients: Vec<_> = (0..32).map(|_| tokio::spawn(until_closed(port))).collect();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let signalled = Instant::now();
            guest.signal("SIGTERM")?;
            for client in clients {
                let sent =
                    tokio::time::timeout(Duration::from_secs(30), client).await??.with_context(|| {
                        format!("delay {delay}s: a connection made before the drain lost a request")
                    })?;
                ensure!(sent >= 2, "delay {delay}s: a client sent only {sent} request(s)");
            }
            if delay > 0 {
                // Near the end of the delay a new connection is still
                // served, and told to close.
                tokio::time::sleep_until((signalled + Duration::from_millis(delay * 1000 - 500)).into())
                    .await;
                let answer = new_connection_answer(port).await?;
                assert_eq!(answer, (200, Some("close".to_string())));
                let draining = tokio::task::spawn_blocking(move || {
                    scrape(metrics_port).map(|s| sample(&s, "wasmtime_custom_draining", &[]))
                })
                .await??;
                assert_eq!(draining, 1.0, "the metrics say the pod is draining");
            }
            Ok::<_, anyhow::Error>(signalled)
        })?;
        assert_eq!(guest.wait(Duration::from_secs(30))?, 0, "{}", guest.output());
        let took = signalled.elapsed();
        assert!(took >= Duration::from_secs(delay), "delay {delay}s: exited {took:?} after the signal");
    }
    Ok(())
}

/// The status and `Connection` header of one request on a new connection.
async fn new_connection_answer(port: u16) -> Result<(u16, Option<String>)> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let response = client(stream).await?.send_request(get("/")?).await?;
    let closing = response.headers().get("connection").and_then(|v| v.to_str().ok()).map(str::to_string);
    Ok((response.status().as_u16(), closing))
}
