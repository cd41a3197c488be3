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
//! | `/fetch?url=U[&traceparent=T]` | GETs `U` (with header `traceparent: T` if given); 200 with `status N` or `error <code>` |
//! | `/body` | reads the whole request body; 200 with its length, or `error <code>` |
//! | anything else | 200 `ok` |

#[cfg(target_arch = "wasm32")]
mod component {
    use wasi::exports::http::incoming_handler::Guest;
    use wasi::http::outgoing_handler;
    use wasi::http::types::{
        Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
        Scheme,
    };

    struct TestGuest;

    /// Lives in the data segment: 0 in a fresh instance.
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    wasi::http::proxy::export!(TestGuest);

    fn query<'a>(query: &'a str, name: &str) -> Option<&'a str> {
        query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }

    /// GET `url` (plain `http://host:port/path`, no escaping needed here).
    fn fetch(url: &str, traceparent: Option<&str>) -> String {
        let Some(rest) = url.strip_prefix("http://") else { return "error only http:// URLs".into() };
        let (authority, path) =
            rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        let headers = Fields::new();
        if let Some(value) = traceparent {
            headers.append("traceparent", value.as_bytes()).expect("traceparent is a valid header");
        }
        let request = OutgoingRequest::new(headers);
        let _ = request.set_method(&Method::Get);
        let _ = request.set_scheme(Some(&Scheme::Http));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some(&path));
        let response = match outgoing_handler::handle(request, None) {
            Ok(future) => {
                future.subscribe().block();
                match future.get() {
                    Some(Ok(Ok(response))) => Ok(response.status()),
                    Some(Ok(Err(code))) => Err(code),
                    _ => return "error no response".into(),
                }
            }
            Err(code) => Err(code),
        };
        match response {
            Ok(status) => format!("status {status}"),
            Err(code) => format!("error {code:?}"),
        }
    }

    /// Reads the request body to its end.
    fn read_body(request: IncomingRequest) -> String {
        let body = request.consume().expect("first call to consume()");
        let stream = body.stream().expect("first call to stream()");
        let mut length = 0usize;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => length += chunk.len(),
                Err(wasi::io::streams::StreamError::Closed) => break,
                Err(wasi::io::streams::StreamError::LastOperationFailed(e)) => {
                    let code = wasi::http::types::http_error_code(&e);
                    return format!("error {code:?}");
                }
            }
        }
        length.to_string()
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
                "/fetch" => fetch(query(args, "url").unwrap_or(""), query(args, "traceparent")),
                "/body" => read_body(request),
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
