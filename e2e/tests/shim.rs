//! The shim under a real, private containerd, driven with `ctr` as a user
//! would. Needs the release shim and `cargo xtask images` (scripts/test.sh
//! does both).

use std::time::{Duration, Instant};

use anyhow::Result;
use support::dapr_recorder::{Call, DaprRecorder, METADATA};
use support::http;
use testbed::{Containerd, Run, Version, free_port};

mod support;

const APP: &str = "localhost/wasmtime-custom/app:latest";
const APP_WASM: &str = "localhost/wasmtime-custom/app:wasm";
const TEST_HTTP: &str = "localhost/wasmtime-custom/test-http:latest";
/// The large component: CPython and a handler, about 18 MB of Wasm.
const PYTHON_HTTP: &str = "localhost/wasmtime-custom/python-http:latest";

const EXPRESS: &str = r#"{"orderId":42,"orderGuid":"0b6c","firstName":"Ada","delivery":"express","items":[{"orderItemId":1,"sku":"4f1c2a9e-77b1","quantity":2}]}"#;
const EXPRESS_OUT: &str = r#"{"orderId":42,"orderGuid":"0b6c","firstName":"Ada","delivery":"Express","items":[{"orderItemId":1,"sku":"4f1c2a9e-77b1","quantity":2}]}"#;

/// Waits until a `/sleep` request reached the guest (it prints a line first).
fn wait_in_flight(guest: &testbed::Container<'_>) -> Result<()> {
    guest.wait_for_line("] sleeping ", Duration::from_secs(10))
}

#[test]
fn plain_images_compile_once_per_node_then_start_from_the_cache_on_containerd_1_6() -> Result<()> {
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-http.tar", &[])?;

    // Four containers of a Wasm new to the node, started at once: one
    // compiles it, the others wait for that compile and load its code.
    let ports = (0..4).map(|_| free_port()).collect::<std::io::Result<Vec<_>>>()?;
    let mut guests = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        guests.push(containerd.run(Run::new(TEST_HTTP, &format!("cache-{i}")).listen(*port))?);
    }
    for (guest, port) in guests.iter_mut().zip(&ports) {
        guest.wait_listening(*port)?;
        assert_eq!(http::get(*port, "/")?.status, 200);
        guest.wait_for_line("compile cache", Duration::from_secs(10))?;
    }
    let said = |text: &str| guests.iter().filter(|guest| guest.output().contains(text)).count();
    assert_eq!(said("kept in the node's compile cache for the next containers"), 1);
    assert_eq!(said("loaded from the node's compile cache"), 3);
    drop(guests);
    let entries = cache_entries(&containerd)?;
    assert_eq!(entries.len(), 1, "{entries:?}");

    // A damaged entry is found before it is loaded: discarded, compiled
    // again, served.
    let whole = std::fs::read(&entries[0])?;
    let mut damaged = whole.clone();
    damaged[whole.len() / 2] ^= 0x55;
    std::fs::write(&entries[0], damaged)?;
    let port = free_port()?;
    let mut guest = containerd.run(Run::new(TEST_HTTP, "cache-damaged").listen(port))?;
    guest.wait_listening(port)?;
    assert_eq!(http::get(port, "/")?.status, 200);
    guest.wait_for_line("kept in the node's compile cache", Duration::from_secs(10))?;
    assert!(
        guest.output().contains("discarded: its content does not match its checksum"),
        "{}",
        guest.output()
    );
    assert_eq!(std::fs::read(&entries[0])?, whole, "the entry is whole again");
    Ok(())
}

#[test]
fn a_large_python_component_compiles_once_then_starts_from_the_cache() -> Result<()> {
    let containerd = Containerd::start(Version::V1_7)?;
    containerd.import("python-http.tar", &[])?;
    let start = |id: &str| -> Result<(testbed::Container<'_>, Duration)> {
        let port = free_port()?;
        let started = Instant::now();
        let mut guest = containerd.run(Run::new(PYTHON_HTTP, id).listen(port))?;
        guest.wait_listening(port)?;
        let health = http::get(port, "/healthz")?;
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        assert_eq!(http::get(port, "/nope")?.status, 404);
        Ok((guest, started.elapsed()))
    };
    let (first, _) = start("python-first")?;
    first.wait_for_line("kept in the node's compile cache", Duration::from_secs(10))?;
    drop(first);
    let (second, took) = start("python-second")?;
    second.wait_for_line("loaded from the node's compile cache", Duration::from_secs(10))?;
    // Compiling it takes seconds here; its compiled code is mapped instead.
    assert!(took < Duration::from_secs(3), "second start took {took:?}");
    Ok(())
}

/// The compiled entries in `containerd`'s compile cache.
fn cache_entries(containerd: &Containerd) -> Result<Vec<std::path::PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(containerd.compile_cache())? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "cwasm") {
            entries.push(path);
        }
    }
    Ok(entries)
}

#[test]
fn app_serves_the_order_contract_on_containerd_1_6() -> Result<()> {
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("app.tar", &[])?;
    let mut dapr = DaprRecorder::start()?;
    let port = free_port()?;
    let mut app = containerd.run(Run::new(APP, "app").listen(port).env("DAPR_URL", dapr.url()))?;
    app.wait_listening(port)?;

    let health = http::get(port, "/healthz")?;
    assert_eq!((health.status, health.body.as_str()), (200, "Healthy"));
    for route in ["/q-order-ingress", "/q-order-express-in", "/q-order-standard-in"] {
        assert_eq!(http::call("OPTIONS", &http::local(port, route), "", &[])?.status, 200, "OPTIONS {route}");
    }
    assert!(dapr.take_calls().is_empty(), "probes must not call Dapr");

    // Distributor: exactly one call, to the right binding, byte for byte.
    let sent = http::post(port, "/q-order-ingress", EXPRESS)?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let expected = format!(r#"{{"data":{EXPRESS_OUT},"operation":"create"}}"#);
    assert_eq!(dapr.take_calls(), [Call::post("/v1.0/bindings/q-order-express-out", expected)]);

    // Receivers: each writes to its own outbox, with the blob named by the order.
    for (route, binding) in
        [("/q-order-express-in", "express-outbox"), ("/q-order-standard-in", "standard-outbox")]
    {
        assert_eq!(http::post(port, route, EXPRESS)?.status, 200);
        let expected =
            format!(r#"{{"data":{EXPRESS_OUT},"operation":"create","metadata":{{"blobName":"42"}}}}"#);
        assert_eq!(dapr.take_calls(), [Call::post(&format!("/v1.0/bindings/{binding}"), expected)]);
    }

    // A malformed order: 400, nothing sent.
    for bad in ["{not json", r#"{"orderId":1,"delivery":"Drone"}"#, r#"{"delivery":"Express"}"#] {
        let refused = http::post(port, "/q-order-ingress", bad)?;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.body);
        assert!(refused.body.starts_with("invalid order"), "{}", refused.body);
    }
    assert!(dapr.take_calls().is_empty(), "a malformed order must not be forwarded");

    // Dapr's metadata is proxied as is.
    let metadata = http::get(port, "/dapr-metadata")?;
    assert_eq!((metadata.status, metadata.body.as_str()), (200, METADATA));
    dapr.take_calls();

    assert_eq!(http::get(port, "/nope")?.status, 404);
    let wrong = http::get(port, "/q-order-ingress")?;
    assert_eq!((wrong.status, wrong.header("allow")), (405, Some("OPTIONS, POST")));

    // The binding fails: 502, so that Dapr redelivers; never a silent 200.
    dapr.answer_bindings_with(500);
    let failed = http::post(port, "/q-order-ingress", EXPRESS)?;
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert!(failed.body.contains("q-order-express-out answered 500"), "{}", failed.body);

    // Dapr is down: 503.
    dapr.stop();
    let down = http::post(port, "/q-order-standard-in", EXPRESS)?;
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.body.contains("could not be reached"), "{}", down.body);

    // The guest's log line of that request carries its request id.
    let id = down.header("x-request-id").expect("every response has a request id").to_string();
    testbed::poll::until("the 503's log line", Duration::from_secs(5), || {
        app.output()
            .lines()
            .any(|l| l.starts_with(&format!("[req={id}] POST /q-order-standard-in -> 503")))
            .then_some(())
    })?;

    app.signal("SIGTERM")?;
    assert_eq!(app.wait(Duration::from_secs(30))?, 0, "{}", app.output());
    Ok(())
}

#[test]
fn serve_mode_answers_the_order_contract_without_containerd() -> Result<()> {
    let paths = testbed::Paths::from_env()?;
    let dapr = DaprRecorder::start()?;
    let port = free_port()?;
    let mut shim = std::process::Command::new(paths.shim()?)
        .arg("serve")
        .arg(paths.image("app.wasm")?)
        .env_clear()
        .env("WASMTIME_CUSTOM_LISTEN", format!("127.0.0.1:{port}"))
        .env("DAPR_URL", dapr.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    testbed::poll::until("serve to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })?;
    let health = http::get(port, "/healthz")?;
    assert_eq!((health.status, health.body.as_str()), (200, "Healthy"));
    let sent = http::post(port, "/q-order-ingress", EXPRESS)?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let expected = format!(r#"{{"data":{EXPRESS_OUT},"operation":"create"}}"#);
    assert_eq!(dapr.take_calls(), [Call::post("/v1.0/bindings/q-order-express-out", expected)]);
    // Stopped like a container: SIGTERM drains and exits 0.
    std::process::Command::new("kill").arg("-TERM").arg(shim.id().to_string()).status()?;
    let status = testbed::poll::until_ok("serve to exit", Duration::from_secs(30), || Ok(shim.try_wait()?))?;
    assert_eq!(status.code(), Some(0));
    // A file that cannot be read is refused with the reason, as a broken image is.
    let refused = std::process::Command::new(paths.shim()?)
        .args(["serve", "/nonexistent.wasm"])
        .env_clear()
        .output()?;
    assert_eq!(refused.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("could not read /nonexistent.wasm"));
    Ok(())
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_exits_0() -> Result<()> {
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-http.tar", &[])?;
    let port = free_port()?;
    let mut guest = containerd.run(Run::new(TEST_HTTP, "drain").listen(port))?;
    guest.wait_listening(port)?;

    let slow = std::thread::spawn(move || http::get(port, "/sleep?ms=3000"));
    wait_in_flight(&guest)?;
    let signalled = Instant::now();
    guest.signal("SIGTERM")?;
    testbed::poll::until("the drain to start", Duration::from_secs(5), || {
        guest.output().contains("SIGTERM: stopped accepting").then_some(())
    })?;
    assert!(http::get(port, "/healthz").is_err(), "a draining server must not accept new connections");

    let answer = slow.join().expect("request thread")?;
    assert_eq!((answer.status, answer.body.as_str()), (200, "slept 3000 ms"));
    assert_eq!(guest.wait(Duration::from_secs(20))?, 0, "{}", guest.output());
    assert!(signalled.elapsed() < Duration::from_secs(10), "drain took {:?}", signalled.elapsed());
    assert!(guest.output().contains("1 request(s) in flight"), "{}", guest.output());
    Ok(())
}

#[test]
fn grace_period_and_second_signal_end_a_drain_at_once() -> Result<()> {
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-http.tar", &[])?;

    // The grace period runs out before the request ends.
    let port = free_port()?;
    let mut guest =
        containerd.run(Run::new(TEST_HTTP, "grace").listen(port).env("WASMTIME_CUSTOM_GRACE_SECONDS", 1))?;
    guest.wait_listening(port)?;
    let _slow = std::thread::spawn(move || http::get(port, "/sleep?ms=20000"));
    wait_in_flight(&guest)?;
    let signalled = Instant::now();
    guest.signal("SIGTERM")?;
    assert_eq!(guest.wait(Duration::from_secs(10))?, 143, "{}", guest.output());
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert!(
        guest.output().contains("grace period over; exiting with 1 request(s) unfinished"),
        "{}",
        guest.output()
    );

    // A second signal does not wait for the 25 s default grace period.
    let port = free_port()?;
    let mut guest = containerd.run(Run::new(TEST_HTTP, "twice").listen(port))?;
    guest.wait_listening(port)?;
    let _slow = std::thread::spawn(move || http::get(port, "/sleep?ms=20000"));
    wait_in_flight(&guest)?;
    guest.signal("SIGTERM")?;
    testbed::poll::until("the drain to start", Duration::from_secs(5), || {
        guest.output().contains("stopped accepting").then_some(())
    })?;
    guest.signal("SIGINT")?;
    assert_eq!(guest.wait(Duration::from_secs(10))?, 143, "{}", guest.output());
    assert!(guest.output().contains("second signal (SIGINT)"), "{}", guest.output());
    Ok(())
}

#[test]
fn a_trap_fails_one_request_and_the_server_keeps_serving() -> Result<()> {
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-http.tar", &[])?;
    let port = free_port()?;
    let mut guest = containerd.run(
        Run::new(TEST_HTTP, "trap")
            .listen(port)
            .env("WASMTIME_CUSTOM_REQUEST_TIMEOUT_SECONDS", 2)
            .env("GREETING", "hi"),
    )?;
    guest.wait_listening(port)?;

    let trapped = http::get(port, "/trap")?;
    assert_eq!(trapped.status, 500, "{}", trapped.body);
    let trap_id = trapped.header("x-request-id").unwrap().to_string();
    assert!(trapped.body.contains(&trap_id), "{}", trapped.body);
    assert_eq!(http::get(port, "/")?.status, 200);

    // Every request gets fresh guest memory, also in a pool slot a trapped
    // instance used: the shim keeps slots resident and restores them itself.
    let counts: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(move || {
                    (0..25).map(|_| http::get(port, "/count").map(|r| r.body)).collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("no panic")).collect::<Result<_>>()
    })?;
    assert!(counts.iter().all(|count| count == "1"), "a request saw another's memory: {counts:?}");

    // A guest that computes forever is stopped at the request timeout.
    let started = Instant::now();
    let spun = http::get(port, "/spin")?;
    assert_eq!(spun.status, 504, "{}", spun.body);
    assert!(started.elapsed() < Duration::from_secs(10), "timeout took {:?}", started.elapsed());
    assert_eq!(http::get(port, "/")?.status, 200);

    // Guest output reaches the container's log, tagged with the request id,
    // and the container's environment reaches the guest.
    let logged = http::get(port, "/log")?;
    let id = logged.header("x-request-id").unwrap().to_string();
    assert_eq!(http::get(port, "/env?name=GREETING")?.body, "hi");
    // A caller's sane x-request-id is kept (and tags the log); anything else is replaced.
    let given = http::call("GET", &http::local(port, "/log"), "", &[("x-request-id", "trace-42.a_b:c")])?;
    assert_eq!(given.header("x-request-id"), Some("trace-42.a_b:c"));
    let odd = http::call("GET", &http::local(port, "/"), "", &[("x-request-id", "a b;<script>")])?;
    let replaced = odd.header("x-request-id").unwrap();
    assert!(replaced != "a b;<script>" && !replaced.is_empty(), "{replaced}");
    testbed::poll::until("tagged guest output", Duration::from_secs(5), || {
        let output = guest.output();
        (output.contains(&format!("[req={id}] hello from the guest on stdout\n"))
            && output.contains(&format!("[req={id}] hello from the guest on stderr\n"))
            && output.contains("[req=trace-42.a_b:c] hello from the guest on stdout\n")
            && output.contains(&format!("[req={trap_id}] wasmtime-custom: the handler failed")))
        .then_some(())
    })
    .map_err(|e| e.context(guest.output()))?;

    guest.signal("SIGTERM")?;
    assert_eq!(guest.wait(Duration::from_secs(30))?, 0);
    Ok(())
}

#[test]
fn a_container_whose_log_nobody_reads_keeps_answering_requests_that_log() -> Result<()> {
    // `ctr run -d`: ctr goes away, nobody reads the container's stdout and
    // stderr pipes, and they fill after about a thousand lines.
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-http.tar", &[])?;
    let port = free_port()?;
    let id = format!("unread-log-{}", std::process::id());
    containerd.run_detached(Run::new(TEST_HTTP, &id).listen(port))?;
    testbed::poll::until("the detached container to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })?;
    // Each request writes a line to stdout and one to stderr: 6,000 lines,
    // several times what the pipes hold.
    let started = Instant::now();
    for n in 0..3000 {
        let logged = http::get(port, "/log")?;
        assert_eq!(logged.status, 200, "request {n}: {}", logged.body);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(120), "3000 logging requests took {took:?}");
    assert_eq!(http::get(port, "/healthz")?.status, 200, "the server answers afterwards");
    containerd.remove(&id)
}

#[test]
fn broken_images_fail_to_start_with_their_cause() -> Result<()> {
    let containerd = Containerd::start(Version::V1_6)?;
    for archive in ["test-not-wasm.tar", "test-truncated.tar", "test-no-export.tar", "test-http.tar"] {
        containerd.import(archive, &[])?;
    }
    for (image, cause) in [
        ("test-not-wasm", "/app.wasm is not WebAssembly: it is a text file"),
        ("test-truncated", "/app.wasm is a WebAssembly component but it does not compile"),
        ("test-no-export", "exports neither wasi:http/incoming-handler (an HTTP service) nor wasi:cli/run"),
    ] {
        let mut broken =
            containerd.run(Run::new(&format!("localhost/wasmtime-custom/{image}:latest"), image))?;
        let code = broken.wait(Duration::from_secs(30))?;
        assert_eq!(code, 126, "{image}: {}", broken.output());
        assert!(broken.output().contains(cause), "{image}: {}", broken.output());
        assert!(containerd.log().contains(cause), "{image}: the cause is not in containerd's log");
    }
    // containerd and other containers are unaffected.
    containerd.ctr_ok(&["version"])?;
    let port = free_port()?;
    let mut healthy = containerd.run(Run::new(TEST_HTTP, "after").listen(port))?;
    healthy.wait_listening(port)?;
    assert_eq!(http::get(port, "/")?.status, 200);
    Ok(())
}

#[test]
fn commands_and_core_modules_exit_with_their_code() -> Result<()> {
    let containerd = Containerd::start(Version::V1_6)?;
    containerd.import("test-command.tar", &[])?;
    containerd.import("test-module.tar", &[])?;

    let command = "localhost/wasmtime-custom/test-command:latest";
    let mut run =
        containerd.run(Run::new(command, "command").env("GREETING", "hi").arg("/app.wasm").arg("7"))?;
    // WASIp2's stable `exit` carries only success or failure: Rust's
    // `exit(7)` arrives as failure, exit code 1. (Core modules keep theirs.)
    assert_eq!(run.wait(Duration::from_secs(30))?, 1, "{}", run.output());
    assert!(
        run.output().contains(r#"hello from a command: args=["7"] GREETING=Some("hi")"#),
        "{}",
        run.output()
    );

    let mut run = containerd.run(Run::new(command, "command-ok"))?;
    assert_eq!(run.wait(Duration::from_secs(30))?, 0, "{}", run.output());

    let mut run = containerd.run(Run::new("localhost/wasmtime-custom/test-module:latest", "module"))?;
    assert_eq!(run.wait(Duration::from_secs(30))?, 3, "{}", run.output());
    assert!(run.output().contains("hello from a core module"), "{}", run.output());
    Ok(())
}

#[test]
fn wasm_layer_image_on_containerd_1_7_reuses_its_precompiled_artifact() -> Result<()> {
    let containerd = Containerd::start(Version::V1_7)?;
    containerd.import("app-wasm.tar", &["--all-platforms"])?;
    let mut first_200 = Vec::new();
    for start in ["first", "second"] {
        let port = free_port()?;
        let begun = Instant::now();
        let mut app = containerd.run(Run::new(APP_WASM, start).platform("wasip1/wasm").listen(port))?;
        app.wait_listening(port)?;
        assert_eq!(http::get(port, "/healthz")?.status, 200);
        first_200.push(begun.elapsed());
        app.signal("SIGTERM")?;
        assert_eq!(app.wait(Duration::from_secs(30))?, 0, "{}", app.output());
        // Compiled once, on the first start only.
        assert_eq!(
            containerd.log().matches("precompiling layers for image").count(),
            1,
            "after the {start} start"
        );
    }
    // The artifact is in the content store, labelled for this shim.
    let content = containerd.ctr_ok(&["content", "ls"])?;
    assert!(content.contains("runwasi.io/precompiled/wasmtime-custom/"), "{content}");
    println!("ctr run to first 200: first start {:?}, cached start {:?}", first_200[0], first_200[1]);
    Ok(())
}
