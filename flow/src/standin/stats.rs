//! What the stand-in saw, for the report and the progress bar: per queue,
//! messages published, delivered and redelivered with each acknowledged
//! message's wait and round trip (the per-hop latencies); dead letters;
//! blobs and when each was first written; connections; refused calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::queue::DeadLetter;

/// Figures of one queue and the input binding that delivers it.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// Messages put on the queue.
    pub published: u64,
    /// Messages the app acknowledged with 2xx.
    pub delivered: u64,
    /// Deliveries that failed and were scheduled again.
    pub redeliveries: u64,
    /// Per acknowledged message: from being put on the queue to the 2xx.
    pub waits: Vec<Duration>,
    /// Per acknowledged message: the successful delivery's round trip.
    pub round_trips: Vec<Duration>,
    /// `orderId` of each message put on the queue (`None`: the body has none).
    pub order_ids: Vec<Option<u64>>,
}

/// What the stand-in saw, for the report.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub queues: BTreeMap<&'static str, QueueStats>,
    pub dead_letters: Vec<DeadLetter>,
    /// Per blob (binding, name): when it was first written.
    pub blobs: HashMap<(String, String), Instant>,
    /// Blob writes, a rewrite of the same blob included.
    pub blob_writes: u64,
    /// Blob writes refused on purpose (`StandInOptions::failing_blob_writes`).
    pub failed_blob_writes: u64,
    /// TCP connections the apps opened to the stand-in.
    pub connections: u64,
    /// Calls to the stand-in's API it refused (malformed, unknown binding).
    pub refused_calls: Vec<String>,
    /// Set when an input binding cannot deliver at all.
    pub fatal: Option<String>,
}

impl Record {
    fn queue(&mut self, queue: &'static str) -> &mut QueueStats {
        self.queues.entry(queue).or_default()
    }
}

/// A progress sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub blobs: usize,
    pub dead_letters: usize,
    pub redeliveries: u64,
    /// Messages on a queue or in delivery; 0 once everything was acknowledged
    /// or dead-lettered.
    pub pending: i64,
}

/// Refused calls kept: enough to see what went wrong without growing
/// without bound.
const REFUSED_CALLS_KEPT: usize = 100;

/// The record, shared by the stand-in's server and its deliveries.
pub struct Stats(Mutex<Record>);

impl Stats {
    /// A record with (empty) figures for each of `queues`.
    pub fn new(queues: impl IntoIterator<Item = &'static str>) -> Stats {
        let mut record = Record::default();
        for queue in queues {
            record.queues.insert(queue, QueueStats::default());
        }
        Stats(Mutex::new(record))
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        // Every update under this lock is a few counters and pushes: a
        // panic elsewhere cannot leave it half done, so a poisoned lock's
        // record is still right.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of everything seen so far.
    pub fn snapshot(&self) -> Record {
        self.record().clone()
    }

    /// The progress figures; `pending` comes from the queues.
    pub fn progress(&self, pending: i64) -> Progress {
        let record = self.record();
        Progress {
            blobs: record.blobs.len(),
            dead_letters: record.dead_letters.len(),
            redeliveries: record.queues.values().map(|q| q.redeliveries).sum(),
            pending,
        }
    }

    /// A message was put on `queue`; `order_id` is its `orderId`, if any.
    pub fn published(&self, queue: &'static str, order_id: Option<u64>) {
        let mut record = self.record();
        let stats = record.queue(queue);
        stats.published += 1;
        stats.order_ids.push(order_id);
    }

    /// A message for `queue` was acknowledged and dropped (a sink).
    pub fn sunk(&self, queue: &'static str) {
        self.record().queue(queue).published += 1;
    }

    /// A message of `queue` was acknowledged by its app.
    pub fn delivered(&self, queue: &'static str, waited: Duration, round_trip: Duration) {
        let mut record = self.record();
        let stats = record.queue(queue);
        stats.delivered += 1;
        stats.waits.push(waited);
        stats.round_trips.push(round_trip);
    }

    /// A delivery of `queue` failed, and the message will be delivered again.
    pub fn redelivered(&self, queue: &'static str) {
        self.record().queue(queue).redeliveries += 1;
    }

    pub fn dead_lettered(&self, letter: DeadLetter) {
        self.record().dead_letters.push(letter);
    }

    pub fn connection(&self) {
        self.record().connections += 1;
    }

    /// The blob `name` was written into `outbox` (again, perhaps).
    pub fn blob_written(&self, outbox: &str, name: String, now: Instant) {
        let mut record = self.record();
        record.blob_writes += 1;
        record.blobs.entry((outbox.to_string(), name)).or_insert(now);
    }

    /// A blob write was refused on purpose (an injected outage).
    pub fn blob_write_failed_on_purpose(&self) {
        self.record().failed_blob_writes += 1;
    }

    /// A call to the API was refused: `reason` is what the caller was told.
    pub fn refused(&self, reason: String) {
        let mut record = self.record();
        if record.refused_calls.len() < REFUSED_CALLS_KEPT {
            record.refused_calls.push(reason);
        }
    }

    /// Deliveries cannot happen at all, for `reason`.
    pub fn fatal(&self, reason: String) {
        self.record().fatal = Some(reason);
    }

    pub fn fatal_reason(&self) -> Option<String> {
        self.record().fatal.clone()
    }
}

/// The `orderId` of a message, if it has one.
pub fn order_id(message: &serde_json::Value) -> Option<u64> {
    message.get("orderId").and_then(serde_json::Value::as_u64)
}
