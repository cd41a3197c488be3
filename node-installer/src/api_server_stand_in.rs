//! A STAND-IN for the Kubernetes API server, shared by the unit tests that
//! label the node (`node.rs`) and the ones that check when `uninstall`
//! unlabels it (`install.rs`): there is no API server on this machine.

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The Node the tests label.
pub(crate) const NODE: &str = "wasm-node-1";

/// One request as the API server stand-in received it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    /// The path without the query string.
    pub(crate) path: String,
    pub(crate) content_type: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// A STAND-IN for the Kubernetes API server: there is no API server on this machine.
/// A real HTTP server (hyper; HTTP/1.1 or HTTP/2, any number of connections, any
/// body framing) on 127.0.0.1 that records every request and answers each with the
/// same status and JSON body.
pub(crate) struct ApiServerStandIn {
    url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    accepting: tokio::task::JoinHandle<()>,
}

/// What the stand-in answers, and where it records what it was asked.
#[derive(Clone)]
struct Answer {
    status: StatusCode,
    body: Bytes,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl ApiServerStandIn {
    pub(crate) async fn start(status: u16, body: Value) -> ApiServerStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Answer {
            status: StatusCode::from_u16(status).expect("an HTTP status"),
            body: Bytes::from(body.to_string()),
            requests: Arc::clone(&requests),
        };
        let accepting = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = answer.clone();
                // One task per connection: connections are served side by side.
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer.clone().answer(request));
                    // A connection the client breaks off just ends; the test then fails
                    // on the answer it did not get.
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ApiServerStandIn { url, requests, accepting }
    }

    pub(crate) fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("stand-in URL"));
        kube::Client::try_from(config).expect("client for the API server stand-in")
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for ApiServerStandIn {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Answer {
    /// Reads the whole request (whatever its framing), records it, then answers.
    async fn answer(self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes().to_vec();
        let content_type =
            parts.headers.get(CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        // Recorded before the answer goes out, so a test that got its
        // response always finds the request here.
        self.requests.lock().expect("requests lock").push(Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            content_type,
            body,
        });
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(CONTENT_TYPE, "application/json".parse().expect("a header value"));
        Ok(response)
    }
}

pub(crate) fn node_json(labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": NODE, "labels": labels, "annotations": annotations },
    })
}

pub(crate) fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": { "name": NODE, "kind": "nodes" },
        "code": code,
    })
}

pub(crate) fn only_request(server: &ApiServerStandIn) -> Recorded {
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "expected exactly one request, got {requests:#?}");
    requests[0].clone()
}

/// The server got exactly one request: a JSON merge patch of the test node whose
/// body is `expected`.
pub(crate) fn assert_only_a_merge_patch_of_the_node(server: &ApiServerStandIn, expected: Value) {
    let request = only_request(server);
    assert_eq!(request.method, "PATCH");
    assert_eq!(request.path, "/api/v1/nodes/wasm-node-1");
    assert_eq!(request.content_type.as_deref(), Some("application/merge-patch+json"));
    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(body, expected);
}
