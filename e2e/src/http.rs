//! A minimal HTTP/1.1 client for the tests: one request per connection,
//! `Content-Length` or chunked responses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub fn get(port: u16, path: &str) -> Result<Response> {
    request(port, "GET", path, "")
}

pub fn post(port: u16, path: &str, body: &str) -> Result<Response> {
    request(port, "POST", path, body)
}

pub fn request(port: u16, method: &str, path: &str, body: &str) -> Result<Response> {
    request_to("127.0.0.1", port, method, path, body)
}

/// A request to `host` (an IP address), e.g. a pod's.
pub fn request_to(host: &str, port: u16, method: &str, path: &str, body: &str) -> Result<Response> {
    request_with(host, port, method, path, body, &[])
}

/// A request with extra `headers`.
pub fn request_with(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let mut stream = TcpStream::connect((host, port)).with_context(|| format!("connect to {host}:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("read the response")?;
    parse(&raw).with_context(|| format!("{method} {path}: bad response {:?}", String::from_utf8_lossy(&raw)))
}

fn parse(raw: &[u8]) -> Result<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("no status line")?;
    let status = status_line.split(' ').nth(1).context("no status code")?.parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Ok(Response { status, headers, body: String::from_utf8(body)? })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n").context("no chunk size line")?;
        let size_field = std::str::from_utf8(&rest[..end])?;
        let size = usize::from_str_radix(size_field.split(';').next().unwrap_or("").trim(), 16)?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            bail!("chunk shorter than its size {size}");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_sized_bodies() {
        let r =
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
        let r = parse(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nX-Request-Id: a-1\r\n\r\nno").unwrap();
        assert_eq!((r.status, r.body.as_str(), r.header("x-request-id")), (404, "no", Some("a-1")));
    }
}
