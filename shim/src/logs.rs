//! Guest output of HTTP requests, tagged with the request id.
//!
//! Each request gets its own stdout and stderr streams. Bytes are cut into
//! whole lines, each line is prefixed with `[req=<id>] ` and handed to the
//! container's stdout or stderr in one piece (`output.rs`, which never
//! blocks), so lines of concurrent requests never interleave mid-line. A
//! last line without a newline is written when the request's instance goes
//! away.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::output;
pub use crate::output::Target;

/// A line longer than this is written in pieces, each tagged.
const MAX_LINE: usize = 16 * 1024;

/// The `StdoutStream` given to a request's WASI context.
#[derive(Clone)]
pub struct TaggedOutput {
    prefix: Arc<str>,
    target: Target,
}

impl TaggedOutput {
    pub fn new(request_id: &str, target: Target) -> TaggedOutput {
        TaggedOutput { prefix: format!("[req={request_id}] ").into(), target }
    }
}

impl IsTerminal for TaggedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TaggedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter { output: self.clone(), pending: Vec::new() })
    }
}

struct LineWriter {
    output: TaggedOutput,
    /// The start of a line whose newline has not come yet.
    pending: Vec<u8>,
}

impl LineWriter {
    /// Hands every complete line in `pending` to the container's output;
    /// with `all`, the rest too.
    fn emit(&mut self, all: bool) {
        let out = take_lines(&mut self.pending, self.output.prefix.as_bytes(), all);
        output::write(self.output.target, out);
    }
}

/// Removes the complete lines from `pending` (all of it with `all`) and
/// returns them, each prefixed and ending in a newline.
fn take_lines(pending: &mut Vec<u8>, prefix: &[u8], all: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest: &[u8] = pending;
    loop {
        let cut = match rest.iter().position(|b| *b == b'\n') {
            Some(newline) if newline < MAX_LINE => newline + 1,
            _ if rest.len() >= MAX_LINE => MAX_LINE,
            _ if all && !rest.is_empty() => rest.len(),
            _ => break,
        };
        let (line, tail) = rest.split_at(cut);
        out.extend_from_slice(prefix);
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
        rest = tail;
    }
    let consumed = pending.len() - rest.len();
    pending.drain(..consumed);
    out
}

impl AsyncWrite for LineWriter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.pending.extend_from_slice(buf);
        this.emit(false);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A flush does not end a line: keep a partial line until its newline
        // so that it still gets a single prefix.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().emit(true);
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_are_prefixed_and_partial_ones_wait() {
        let mut pending = b"hello\nwor".to_vec();
        assert_eq!(take_lines(&mut pending, b"[req=1] ", false), b"[req=1] hello\n");
        assert_eq!(pending, b"wor");
        pending.extend_from_slice(b"ld\n\nbye");
        assert_eq!(take_lines(&mut pending, b"[req=1] ", false), b"[req=1] world\n[req=1] \n");
        assert_eq!(take_lines(&mut pending, b"[req=1] ", true), b"[req=1] bye\n");
        assert!(pending.is_empty());
    }

    #[test]
    fn overlong_lines_are_split_and_each_piece_tagged() {
        let mut pending = vec![b'x'; MAX_LINE + 10];
        let out = take_lines(&mut pending, b"> ", false);
        assert_eq!(out.len(), 2 + MAX_LINE + 1);
        assert_eq!(pending.len(), 10);
    }
}
