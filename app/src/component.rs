//! The `wasi:http/proxy` glue: reads the request, runs the [`routes`] plan,
//! calls Dapr over outgoing `wasi:http`, and writes the answer.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

use crate::routes::{self, BindingResult, DaprUrl, Plan, Reply};

/// Orders are small; anything larger is not an order and is refused unread.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `blocking-write-and-flush` takes at most 4096 bytes a call.
const WRITE_CHUNK: usize = 4096;

struct Component;

wasi::http::proxy::export!(Component);

impl Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = method_name(&request.method());
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let answer = match read_request_body(&request) {
            Ok(body) => serve(&method, &path, &body),
            Err(reply) => Answer::from(reply),
        };
        if answer.status >= 400 {
            eprintln!("{method} {path} -> {}: {}", answer.status, String::from_utf8_lossy(&answer.body));
        }
        if let Err(e) = answer.send(out) {
            eprintln!("{method} {path}: could not write the response: {e}");
        }
    }
}

/// A response on its way out.
struct Answer {
    status: u16,
    content_type: String,
    allow: Option<&'static str>,
    body: Vec<u8>,
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Answer {
        Answer {
            status: reply.status,
            content_type: "text/plain; charset=utf-8".to_string(),
            allow: reply.allow,
            body: reply.body.into_bytes(),
        }
    }
}

fn serve(method: &str, path: &str, body: &[u8]) -> Answer {
    let plan = routes::plan(method, path, body);
    if let Plan::Reply(reply) = plan {
        return reply.into();
    }
    let dapr = match DaprUrl::parse(std::env::var("DAPR_URL").ok().as_deref()) {
        Ok(dapr) => dapr,
        Err(reason) => return Reply { status: 500, body: reason, allow: None }.into(),
    };
    match plan {
        Plan::ProxyMetadata => match send(&dapr, &Method::Get, &dapr.metadata_path(), &[]) {
            Ok(upstream) => upstream,
            Err(reason) => Reply {
                status: 503,
                body: format!("Dapr's metadata endpoint could not be reached: {reason}"),
                allow: None,
            }
            .into(),
        },
        Plan::Call(call) => {
            let result = match send(&dapr, &Method::Post, &dapr.binding_path(&call.binding), &call.body) {
                Ok(upstream) => BindingResult::Answered {
                    status: upstream.status,
                    body: String::from_utf8_lossy(&upstream.body).into_owned(),
                },
                Err(reason) => BindingResult::Unreachable(reason),
            };
            routes::after_binding(&call, &result).into()
        }
        Plan::Reply(_) => unreachable!("handled above"),
    }
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

fn read_request_body(request: &IncomingRequest) -> Result<Vec<u8>, Reply> {
    let fail = |reason: String| Reply { status: 400, body: reason, allow: None };
    let body = request.consume().map_err(|()| fail("request body already consumed".into()))?;
    read_all(&body).map_err(|e| match e {
        ReadError::TooLarge => Reply {
            status: 413,
            body: format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            allow: None,
        },
        ReadError::Failed(reason) => fail(format!("could not read the request body: {reason}")),
    })
}

enum ReadError {
    TooLarge,
    Failed(String),
}

fn read_all(body: &IncomingBody) -> Result<Vec<u8>, ReadError> {
    let stream: InputStream = body.stream().map_err(|()| ReadError::Failed("no body stream".into()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_BODY_BYTES {
                    return Err(ReadError::TooLarge);
                }
            }
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(ReadError::Failed(e.to_debug_string()));
            }
        }
    }
}

fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), String> {
    for chunk in bytes.chunks(WRITE_CHUNK) {
        stream.blocking_write_and_flush(chunk).map_err(|e| match e {
            StreamError::Closed => "stream closed".to_string(),
            StreamError::LastOperationFailed(e) => e.to_debug_string(),
        })?;
    }
    Ok(())
}

fn header_fields(headers: &[(&str, &[u8])]) -> Result<Fields, String> {
    let list: Vec<(String, Vec<u8>)> =
        headers.iter().map(|(name, value)| (name.to_string(), value.to_vec())).collect();
    Fields::from_list(&list).map_err(|e| format!("invalid header: {e:?}"))
}

impl Answer {
    fn send(self, out: ResponseOutparam) -> Result<(), String> {
        let length = self.body.len().to_string();
        let mut headers: Vec<(&str, &[u8])> =
            vec![("content-type", self.content_type.as_bytes()), ("content-length", length.as_bytes())];
        if let Some(allow) = self.allow {
            headers.push(("allow", allow.as_bytes()));
        }
        let response = OutgoingResponse::new(header_fields(&headers)?);
        response.set_status_code(self.status).map_err(|()| format!("invalid status {}", self.status))?;
        let body = response.body().map_err(|()| "response body already taken".to_string())?;
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().map_err(|()| "response body stream already taken".to_string())?;
        write_all(&stream, &self.body)?;
        drop(stream);
        OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))
    }
}

/// One request to Dapr's HTTP API; `Err` means it could not be completed.
fn send(dapr: &DaprUrl, method: &Method, path: &str, body: &[u8]) -> Result<Answer, String> {
    let length = body.len().to_string();
    let headers =
        header_fields(&[("content-type", b"application/json"), ("content-length", length.as_bytes())])?;
    let request = OutgoingRequest::new(headers);
    let scheme = if dapr.https { Scheme::Https } else { Scheme::Http };
    request.set_method(method).map_err(|()| "invalid method".to_string())?;
    request.set_scheme(Some(&scheme)).map_err(|()| "invalid scheme".to_string())?;
    request.set_authority(Some(&dapr.authority)).map_err(|()| format!("invalid host {}", dapr.authority))?;
    request.set_path_with_query(Some(path)).map_err(|()| format!("invalid path {path}"))?;
    let outgoing_body = request.body().map_err(|()| "request body already taken".to_string())?;

    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    let stream = outgoing_body.write().map_err(|()| "request body stream already taken".to_string())?;
    write_all(&stream, body)?;
    drop(stream);
    OutgoingBody::finish(outgoing_body, None).map_err(|e| format!("{e:?}"))?;

    let response = loop {
        match pending.get() {
            Some(result) => break result,
            None => pending.subscribe().block(),
        }
    };
    let response =
        response.map_err(|()| "response already taken".to_string())?.map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "application/json".to_string());
    let incoming = response.consume().map_err(|()| "response body already consumed".to_string())?;
    let body = read_all(&incoming).map_err(|e| match e {
        ReadError::TooLarge => format!("response body is larger than {MAX_BODY_BYTES} bytes"),
        ReadError::Failed(reason) => reason,
    })?;
    Ok(Answer { status, content_type, allow: None, body })
}
