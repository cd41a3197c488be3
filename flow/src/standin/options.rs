//! How the stand-in delivers, fails and stores: one struct, set once when
//! the stand-in starts.

use std::time::Duration;

use super::queue::Retry;

/// How the stand-in delivers.
#[derive(Debug, Clone)]
pub struct StandInOptions {
    /// Deliveries in flight per input binding.
    pub concurrency: usize,
    /// Failed deliveries of one message before it is dead-lettered (Service
    /// Bus's `MaxDeliveryCount`).
    pub max_attempts: u32,
    /// Delay before the first redelivery; it doubles with each failure.
    pub backoff: Duration,
    /// The longest delay between two deliveries of a message.
    pub max_backoff: Duration,
    /// A delivery without an answer after this long has failed.
    pub delivery_timeout: Duration,
    /// How long an input binding probes its route before giving up.
    pub probe_timeout: Duration,
    /// The first this many blob writes answer 503, as a storage outage
    /// would (the receivers must answer 5xx, and the queue redeliver).
    pub failing_blob_writes: u64,
    /// Queue outputs are acknowledged and counted but not kept or delivered
    /// (for measuring the distributor alone).
    pub sink: bool,
}

impl Default for StandInOptions {
    fn default() -> StandInOptions {
        StandInOptions {
            concurrency: 32,
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            delivery_timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(60),
            failing_blob_writes: 0,
            sink: false,
        }
    }
}

impl StandInOptions {
    /// When the queues redeliver and when they give up.
    pub fn retry(&self) -> Retry {
        Retry { max_attempts: self.max_attempts, backoff: self.backoff, max_backoff: self.max_backoff }
    }
}
