//! HTTP for the tests, through `ureq`: one connection per request (nothing
//! pooled, so a test sees exactly the connections it opens), and every
//! status returned as a value rather than an error.

use std::time::Duration;

use anyhow::{Context, Result};
use ureq::http::{HeaderMap, Request};

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// `method url` with a JSON `body` (may be empty) and extra `headers`.
pub fn call(method: &str, url: &str, body: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into();
    let mut request = Request::builder().method(method).uri(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body.to_string()).with_context(|| format!("build {method} {url}"))?;
    let mut response = agent.run(request).with_context(|| format!("{method} {url}"))?;
    let body =
        response.body_mut().read_to_string().with_context(|| format!("read the answer to {method} {url}"))?;
    Ok(Reply { status: response.status().as_u16(), headers: response.headers().clone(), body })
}

/// `GET http://127.0.0.1:port{path}`.
pub fn get(port: u16, path: &str) -> Result<Reply> {
    call("GET", &local(port, path), "", &[])
}

/// `POST http://127.0.0.1:port{path}` with a JSON body.
pub fn post(port: u16, path: &str, body: &str) -> Result<Reply> {
    call("POST", &local(port, path), body, &[])
}

pub fn local(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}
