//! A stand-in for Dapr's HTTP API (no Dapr here): it records every call and
//! answers bindings with a status the test sets, and `GET /v1.0/metadata`
//! with a fixed document.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

/// What the stand-in answers `GET /v1.0/metadata` with.
pub const METADATA: &str = r#"{"id":"dapr-stand-in","components":[]}"#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: String,
}

pub struct StandIn {
    address: std::net::SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    /// On loopback.
    pub fn start() -> Result<StandIn> {
        StandIn::start_on("127.0.0.1")
    }

    /// On `ip` of this host (e.g. a pod network's gateway, for pods).
    pub fn start_on(ip: &str) -> Result<StandIn> {
        let listener = TcpListener::bind((ip, 0)).with_context(|| format!("bind the stand-in on {ip}"))?;
        let address = listener.local_addr()?;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (calls, status, stop) = (calls.clone(), status.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        // One at a time is plenty for these tests.
                        let _ = serve(stream, &calls, status.load(Ordering::SeqCst));
                    }
                }
            })
        };
        Ok(StandIn { address, calls, status, stop, thread: Some(thread) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The status binding calls get from now on.
    pub fn answer_bindings_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Every call so far, and forgets them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().expect("stand-in lock"))
    }

    /// Closes the port: later calls are refused.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(stream: TcpStream, calls: &Mutex<Vec<Call>>, status: u16) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (status, answer) = if method == "GET" && path == "/v1.0/metadata" {
        (200, METADATA)
    } else {
        (status, if status < 300 { "" } else { "stand-in told to fail" })
    };
    calls.lock().expect("stand-in lock").push(Call { method, path, body: String::from_utf8(body)? });
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    Ok(())
}
