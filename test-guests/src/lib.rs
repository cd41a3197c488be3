//! A `wasi:http/proxy` component that misbehaves on request, for the shim's
//! end-to-end tests (never shipped):
//!
//! | route | does |
//! |---|---|
//! | `/sleep?ms=N` | prints `sleeping N ms`, waits N ms, then 200 `slept N ms` |
//! | `/trap` | panics, which traps the instance |
//! | `/spin` | computes forever (until the shim's request timeout) |
//! | `/log` | writes one line to stdout and one to stderr, then 200 |
//! | `/env?name=X` | 200 with the value of environment variable X |
//! | `/count` | 200 with a counter kept in linear memory, after adding 1: always `1` when every request gets fresh memory |
//! | anything else | 200 `ok` |

#[cfg(target_arch = "wasm32")]
mod component {
    use wasi::exports::http::incoming_handler::Guest;
    use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

    struct TestGuest;

    /// Lives in the data segment: 0 in a fresh instance.
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    wasi::http::proxy::export!(TestGuest);

    fn query<'a>(query: &'a str, name: &str) -> Option<&'a str> {
        query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }

    impl Guest for TestGuest {
        fn handle(request: IncomingRequest, out: ResponseOutparam) {
            let target = request.path_with_query().unwrap_or_default();
            let (path, args) = target.split_once('?').unwrap_or((&target, ""));
            let body = match path {
                "/sleep" => {
                    let ms: u64 = query(args, "ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
                    // Tests wait for this line to know the request is in flight.
                    println!("sleeping {ms} ms");
                    wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                    format!("slept {ms} ms")
                }
                "/trap" => panic!("the test guest was asked to trap"),
                "/spin" => {
                    let mut n: u64 = 0;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                "/log" => {
                    println!("hello from the guest on stdout");
                    eprintln!("hello from the guest on stderr");
                    "logged".to_string()
                }
                "/env" => std::env::var(query(args, "name").unwrap_or("")).unwrap_or_default(),
                "/count" => (COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1).to_string(),
                _ => "ok".to_string(),
            };
            let response = OutgoingResponse::new(Fields::new());
            let outgoing = response.body().expect("first call to body()");
            ResponseOutparam::set(out, Ok(response));
            let stream = outgoing.write().expect("first call to write()");
            stream.blocking_write_and_flush(body.as_bytes()).expect("body fits in one write");
            drop(stream);
            OutgoingBody::finish(outgoing, None).expect("body finished once");
        }
    }
}
