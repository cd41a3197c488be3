//! The stand-in's state, shared by its HTTP API (which publishes onto the
//! queues and writes blobs) and its input bindings (which take messages off
//! the queues and settle them): the queues, the record, the blob store.
//!
//! Lock order: the queues, then the record. A message is settled and its
//! figures recorded under the queues' lock, so once nothing is pending the
//! record holds everything that happened.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::Notify;

use super::blobs::BlobStore;
use super::options::StandInOptions;
use super::queue::{Delivery, Failed, MessageId, Queue};
use super::stats::Stats;
use super::trace::TraceContext;
use crate::bindings::{INGRESS, INPUTS};

pub struct StandInState {
    pub options: StandInOptions,
    /// One lock for all queues: a sample of `pending` is consistent across
    /// them (a message is published downstream before it is acknowledged
    /// upstream, so the sum never dips to 0 while work remains).
    queues: Mutex<BTreeMap<&'static str, Queue>>,
    /// Per queue: wakes its input binding when a message may be due.
    wakers: BTreeMap<&'static str, Notify>,
    pub stats: Stats,
    pub blobs: BlobStore,
}

impl StandInState {
    /// A queue for each input binding, empty.
    pub fn new(options: StandInOptions, blobs: BlobStore) -> StandInState {
        let retry = options.retry();
        let names = INPUTS.map(|binding| binding.queue);
        StandInState {
            queues: Mutex::new(BTreeMap::from(names.map(|name| (name, Queue::new(name, retry))))),
            wakers: BTreeMap::from(names.map(|name| (name, Notify::new()))),
            stats: Stats::new(names),
            options,
            blobs,
        }
    }

    fn queues(&self) -> MutexGuard<'_, BTreeMap<&'static str, Queue>> {
        // Nothing panics while holding this lock (the queue's methods are
        // plain bookkeeping), so a poisoned lock's queues are still whole.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the stand-in has `queue`, under its `'static` name.
    pub fn queue_name(&self, queue: &str) -> Option<&'static str> {
        self.wakers.get_key_value(queue).map(|(name, _)| *name)
    }

    /// Puts `body` on `queue`; `order_id` is the body's `orderId`, if any.
    /// Its deliveries carry `trace`, or (`None`) the context of a new trace.
    pub fn publish(
        &self,
        queue: &str,
        body: Bytes,
        order_id: Option<u64>,
        trace: Option<TraceContext>,
    ) -> Result<()> {
        let name = self.queue_name(queue).with_context(|| format!("the stand-in has no queue {queue}"))?;
        if self.options.sink && name != INGRESS.queue {
            self.stats.sunk(name);
            return Ok(());
        }
        self.stats.published(name, order_id);
        let trace = trace.unwrap_or_else(TraceContext::start);
        let now = Instant::now();
        self.queues().get_mut(name).context("every queue name has its queue")?.publish(body, trace, now);
        self.wakers[name].notify_one();
        Ok(())
    }

    /// The next message of `queue` to deliver, waiting until one is due.
    pub async fn next_delivery(&self, queue: &'static str) -> Result<Delivery> {
        let waker = self.wakers.get(queue).with_context(|| format!("the stand-in has no queue {queue}"))?;
        loop {
            let (delivery, due) = {
                let mut queues = self.queues();
                let messages = queues.get_mut(queue).context("every queue name has its queue")?;
                (messages.take(Instant::now()), messages.next_due())
            };
            if let Some(delivery) = delivery {
                return Ok(delivery);
            }
            // A publish or a failure in between left a wake-up behind
            // (`notify_one` keeps one for the next wait), so none is missed.
            match due {
                Some(due) => {
                    let _ = tokio::time::timeout_at(due.into(), waker.notified()).await;
                }
                None => waker.notified().await,
            }
        }
    }

    /// The app acknowledged the delivery `id` of `queue`.
    pub fn acknowledge(&self, queue: &'static str, id: MessageId, round_trip: Duration) {
        let mut queues = self.queues();
        if let Some(acknowledged) = queues.get_mut(queue).and_then(|q| q.acknowledge(id, Instant::now())) {
            self.stats.delivered(queue, acknowledged.waited, round_trip);
        }
    }

    /// The delivery `id` of `queue` failed with `error`.
    pub fn fail(&self, queue: &'static str, id: MessageId, error: String) {
        let mut queues = self.queues();
        match queues.get_mut(queue).and_then(|q| q.fail(id, error, Instant::now())) {
            Some(Failed::Redelivery { .. }) => {
                self.stats.redelivered(queue);
                drop(queues);
                // Its input binding may be asleep with nothing due.
                self.wakers[queue].notify_one();
            }
            Some(Failed::DeadLettered(letter)) => self.stats.dead_lettered(letter),
            None => {}
        }
    }

    /// Messages on a queue or out for delivery.
    pub fn pending(&self) -> i64 {
        self.queues().values().map(|queue| queue.counts().pending).sum::<u64>() as i64
    }
}
