//! The container's stdout and stderr, written without ever blocking the
//! caller.
//!
//! Both are pipes (FIFOs) that containerd, the kubelet's log copier or `ctr`
//! reads. When nobody reads them fast enough (a detached `ctr run`, a log
//! copier that falls behind, containerd restarting), a plain `write` blocks
//! once the pipe is full, and a serving thread that blocks stops answering
//! every request. So lines go into a queue per stream, bounded in bytes,
//! that a thread of its own writes out; a line that does not fit is dropped
//! and counted, and that thread says how many were dropped once it can write
//! again (at most every [`WARN_EVERY`]).
//!
//! The shim's own messages about requests go the same way, and their copy
//! for the shim log (`log::`, which writes to containerd's log pipe) is
//! written by the same thread, never by a serving thread.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

/// The most bytes waiting per stream; beyond it lines are dropped.
const QUEUE_BYTES: usize = 4 << 20;
/// The longest gap between two reports of dropped lines.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long [`flush`] waits for the queues to empty at exit.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
}

/// What the writer thread does with one queued item.
enum Item {
    /// Bytes for the stream (whole lines).
    Bytes(Vec<u8>),
    /// A shim message: a line for the stream and the same for the shim log.
    Message { line: String, level: log::Level },
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Bytes(bytes) => bytes.len(),
            Item::Message { line, .. } => line.len(),
        }
    }

    fn lines(&self) -> u64 {
        match self {
            Item::Bytes(bytes) => bytes.iter().filter(|b| **b == b'\n').count().max(1) as u64,
            Item::Message { .. } => 1,
        }
    }
}

struct Stream {
    sender: Sender<Item>,
    queued: AtomicUsize,
    dropped: AtomicU64,
}

impl Stream {
    fn start(target: Target) -> Stream {
        let (sender, receiver) = mpsc::channel();
        let stream = Stream { sender, queued: AtomicUsize::new(0), dropped: AtomicU64::new(0) };
        let name = match target {
            Target::Stdout => "stdout-writer",
            Target::Stderr => "stderr-writer",
        };
        // Without its thread the stream would only drop lines; a process
        // that cannot start a thread cannot serve either.
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || drain(target, receiver))
            .expect("start the output writer thread");
        stream
    }

    fn push(&self, item: Item) {
        let len = item.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.dropped.fetch_add(item.lines(), Ordering::Relaxed);
            return;
        }
        if self.sender.send(item).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
        }
    }
}

static STDOUT: OnceLock<Stream> = OnceLock::new();
static STDERR: OnceLock<Stream> = OnceLock::new();

fn cell(target: Target) -> &'static OnceLock<Stream> {
    match target {
        Target::Stdout => &STDOUT,
        Target::Stderr => &STDERR,
    }
}

/// The stream of `target`, with its writer thread started on first use.
fn stream(target: Target) -> &'static Stream {
    cell(target).get_or_init(|| Stream::start(target))
}

/// Queues whole lines for `target`; never blocks.
pub fn write(target: Target, bytes: Vec<u8>) {
    if !bytes.is_empty() {
        stream(target).push(Item::Bytes(bytes));
    }
}

/// A message of the shim about a request or its own state: `line` on the
/// container's stderr (what `kubectl logs` shows) and, at `level`, in the
/// shim log. Never blocks.
pub fn message(level: log::Level, line: String) {
    stream(Target::Stderr).push(Item::Message { line, level });
}

/// Lines of `target` dropped so far (for the metrics).
pub fn dropped_lines(target: Target) -> u64 {
    cell(target).get().map_or(0, |stream| stream.dropped.load(Ordering::Relaxed))
}

/// Waits (a little) for the queued lines to be written, at exit.
pub fn flush() {
    let deadline = Instant::now() + FLUSH_WAIT;
    // A stream never used has nothing queued (and no thread to start now).
    for stream in [Target::Stdout, Target::Stderr].into_iter().filter_map(|target| cell(target).get()) {
        while stream.queued.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The writer thread of one stream: writes each item out (blocking here is
/// what this thread is for), and reports dropped lines.
fn drain(target: Target, receiver: Receiver<Item>) {
    let mut reported = 0;
    let mut last_report: Option<Instant> = None;
    for item in receiver {
        let len = item.len();
        let written = match &item {
            Item::Bytes(bytes) => write_out(target, bytes),
            Item::Message { line, level } => {
                log::log!(*level, "{line}");
                write_out(target, format!("{line}\n").as_bytes())
            }
        };
        let stream = stream(target);
        stream.queued.fetch_sub(len, Ordering::AcqRel);
        if let Err(e) = written {
            log::warn!("could not write the container's {target:?}: {e}");
        }
        let dropped = stream.dropped.load(Ordering::Relaxed);
        if dropped > reported && last_report.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            let line = format!(
                "wasmtime-custom: {} line(s) of output dropped so far ({} since the last report): the \
                 container's {target:?} was not read fast enough\n",
                dropped,
                dropped - reported
            );
            log::warn!("{}", line.trim_end());
            let _ = write_out(target, line.as_bytes());
            reported = dropped;
            last_report = Some(Instant::now());
        }
    }
}

fn write_out(target: Target, bytes: &[u8]) -> io::Result<()> {
    match target {
        Target::Stdout => {
            let mut out = io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()
        }
        Target::Stderr => io::stderr().lock().write_all(bytes),
    }
}
