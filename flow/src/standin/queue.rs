//! One queue with Service Bus's delivery semantics, as plain in-process
//! code: no sockets, no tasks, and time is an argument, so every rule here
//! is tested without waiting.
//!
//! A message is published, handed out for delivery, and then either
//! acknowledged (gone for good) or failed. A failed message is redelivered
//! after a backoff that doubles from `backoff` up to `max_backoff`; the
//! failure that makes `max_attempts` is the last: the message is
//! dead-lettered with that failure's error. Every published message ends
//! exactly once, acknowledged or dead-lettered; until then it is pending.
//! A message keeps the trace context it was published with, so each of its
//! deliveries carries the same one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::trace::TraceContext;

/// When a queue redelivers, and when it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Failed deliveries of one message before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first redelivery; it doubles with each failure.
    pub backoff: Duration,
    /// The longest delay before a redelivery.
    pub max_backoff: Duration,
}

impl Retry {
    /// The delay before redelivering a message that failed `failures` times.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// A message's identity within its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u64);

/// A message handed out for delivery. It stays out (not handed out again)
/// until it is acknowledged or failed.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: MessageId,
    pub body: Bytes,
    pub trace: TraceContext,
}

/// What acknowledging a delivery settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acknowledged {
    /// From being published to the acknowledgement, redeliveries included.
    pub waited: Duration,
}

/// What failing a delivery did with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// It is handed out again once `due` has come.
    Redelivery { due: Instant },
    /// It failed `max_attempts` times and is given up on.
    DeadLettered(DeadLetter),
}

/// A message given up on after `max_attempts` failed deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub queue: String,
    pub body: String,
    pub attempts: u32,
    pub last_error: String,
}

/// How many messages a queue has seen, and where they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub published: u64,
    pub acknowledged: u64,
    pub dead_lettered: u64,
    /// Waiting to be handed out, waiting for a redelivery, or out for delivery.
    pub pending: u64,
}

struct Message {
    id: MessageId,
    body: Bytes,
    trace: TraceContext,
    failures: u32,
    published: Instant,
}

/// One queue: messages waiting, waiting for their redelivery, and out for
/// delivery.
pub struct Queue {
    name: &'static str,
    retry: Retry,
    next_id: u64,
    /// Due now, in the order they became due.
    ready: VecDeque<Message>,
    /// Failed, by the time their redelivery is due.
    waiting: BTreeMap<(Instant, MessageId), Message>,
    /// Handed out, neither acknowledged nor failed yet.
    out: HashMap<MessageId, Message>,
    acknowledged: u64,
    dead_lettered: u64,
}

impl Queue {
    pub fn new(name: &'static str, retry: Retry) -> Queue {
        Queue {
            name,
            retry,
            next_id: 0,
            ready: VecDeque::new(),
            waiting: BTreeMap::new(),
            out: HashMap::new(),
            acknowledged: 0,
            dead_lettered: 0,
        }
    }

    /// Puts `body` at the end of the queue; each of its deliveries carries `trace`.
    pub fn publish(&mut self, body: Bytes, trace: TraceContext, now: Instant) -> MessageId {
        let id = MessageId(self.next_id);
        self.next_id += 1;
        self.ready.push_back(Message { id, body, trace, failures: 0, published: now });
        id
    }

    /// Hands out the next message that is due at `now`, if any.
    pub fn take(&mut self, now: Instant) -> Option<Delivery> {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
        let message = self.ready.pop_front()?;
        let delivery = Delivery { id: message.id, body: message.body.clone(), trace: message.trace.clone() };
        self.out.insert(message.id, message);
        Some(delivery)
    }

    /// When the earliest message waiting for its redelivery becomes due
    /// (`None`: none is waiting).
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.keys().next().map(|(due, _)| *due)
    }

    /// Settles a delivery: the message is gone for good. `None` if `id` is
    /// not out for delivery (never handed out, or settled already); then
    /// nothing changes.
    pub fn acknowledge(&mut self, id: MessageId, now: Instant) -> Option<Acknowledged> {
        let message = self.out.remove(&id)?;
        self.acknowledged += 1;
        Some(Acknowledged { waited: now.saturating_duration_since(message.published) })
    }

    /// A delivery failed with `error`: the message is redelivered after its
    /// backoff, or dead-lettered if this was its last attempt. `None` if `id`
    /// is not out for delivery; then nothing changes.
    pub fn fail(&mut self, id: MessageId, error: String, now: Instant) -> Option<Failed> {
        let mut message = self.out.remove(&id)?;
        message.failures += 1;
        if message.failures >= self.retry.max_attempts {
            self.dead_lettered += 1;
            return Some(Failed::DeadLettered(DeadLetter {
                queue: self.name.to_string(),
                body: String::from_utf8_lossy(&message.body).into_owned(),
                attempts: message.failures,
                last_error: error,
            }));
        }
        let due = now + self.retry.delay(message.failures);
        self.waiting.insert((due, id), message);
        Some(Failed::Redelivery { due })
    }

    pub fn counts(&self) -> Counts {
        Counts {
            published: self.next_id,
            acknowledged: self.acknowledged,
            dead_lettered: self.dead_lettered,
            pending: (self.ready.len() + self.waiting.len() + self.out.len()) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn retry(max_attempts: u32) -> Retry {
        Retry { max_attempts, backoff: 100 * MS, max_backoff: 700 * MS }
    }

    fn body(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<u128> = (1..=6).map(|failures| retry(10).delay(failures).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700, 700]);
        assert_eq!(retry(10).delay(u32::MAX), 700 * MS);
    }

    #[test]
    fn each_redelivery_of_a_message_waits_twice_as_long_up_to_the_cap() {
        let t0 = Instant::now();
        let mut queue = Queue::new("q", retry(10));
        queue.publish(body("m"), TraceContext::start(), t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for attempt in 1..=6 {
            let delivery = queue.take(now).expect("the message is due");
            let Some(Failed::Redelivery { due }) = queue.fail(delivery.id, "503".into(), now) else {
                panic!("attempt {attempt} of 10 is not the last")
            };
            waits.push((due - now).as_millis());
            now = due;
        }
        assert_eq!(waits, [100, 200, 400, 700, 700, 700]);
    }

    #[test]
    fn a_failed_message_is_redelivered_once_its_backoff_has_passed_and_not_before() {
        let t0 = Instant::now();
        let mut queue = Queue::new("q", retry(10));
        let id = queue.publish(body("order 1"), TraceContext::start(), t0);
        assert_eq!(queue.take(t0).map(|d| d.id), Some(id));
        assert!(queue.take(t0).is_none(), "out for delivery: not handed out twice");
        assert_eq!(queue.fail(id, "503".into(), t0), Some(Failed::Redelivery { due: t0 + 100 * MS }));
        assert_eq!(queue.next_due(), Some(t0 + 100 * MS));
        assert!(queue.take(t0 + 99 * MS).is_none(), "redelivered before its backoff");
        assert_eq!(queue.counts().pending, 1, "a message waiting for its redelivery is pending");
        let again = queue.take(t0 + 100 * MS).expect("due after its backoff");
        assert_eq!((again.id, &again.body[..]), (id, &b"order 1"[..]));
        assert_eq!(queue.next_due(), None);
    }

    #[test]
    fn every_delivery_of_a_message_carries_the_trace_context_it_was_published_with() {
        let t0 = Instant::now();
        let mut queue = Queue::new("q", retry(10));
        let (first, second) = (TraceContext::start(), TraceContext::start());
        let a = queue.publish(body("a"), first.clone(), t0);
        let b = queue.publish(body("b"), second.clone(), t0);
        let mut now = t0;
        let mut seen = Vec::new();
        while seen.len() < 6 {
            let Some(delivery) = queue.take(now) else {
                now = queue.next_due().expect("none out, so one waits for its redelivery");
                continue;
            };
            assert!(matches!(queue.fail(delivery.id, "503".into(), now), Some(Failed::Redelivery { .. })));
            seen.push((delivery.id, delivery.trace));
        }
        for (id, trace) in &seen {
            assert_eq!(trace, if *id == a { &first } else { &second }, "{id:?}");
        }
        assert_eq!(seen.iter().filter(|(id, _)| *id == b).count(), 3, "each delivered three times");
    }

    #[test]
    fn a_redelivery_goes_behind_the_messages_already_due() {
        let t0 = Instant::now();
        let mut queue = Queue::new("q", retry(10));
        let a = queue.publish(body("a"), TraceContext::start(), t0);
        let first = queue.take(t0).unwrap();
        queue.fail(first.id, "503".into(), t0);
        let b = queue.publish(body("b"), TraceContext::start(), t0 + 50 * MS);
        let later = t0 + 200 * MS;
        assert_eq!(queue.take(later).map(|d| d.id), Some(b));
        assert_eq!(queue.take(later).map(|d| d.id), Some(a));
    }

    #[test]
    fn a_message_is_dead_lettered_after_exactly_max_attempts_with_the_last_error() {
        let t0 = Instant::now();
        let mut queue = Queue::new("q-order-ingress", retry(3));
        queue.publish(body("poison"), TraceContext::start(), t0);
        let mut now = t0;
        for attempt in 1..=2 {
            let delivery = queue.take(now).unwrap();
            match queue.fail(delivery.id, format!("400 on attempt {attempt}"), now) {
                Some(Failed::Redelivery { due }) => now = due,
                other => panic!("attempt {attempt} of 3 ended with {other:?}"),
            }
        }
        let last = queue.take(now).unwrap();
        let expected = DeadLetter {
            queue: "q-order-ingress".into(),
            body: "poison".into(),
            attempts: 3,
            last_error: "400 on attempt 3".into(),
        };
        assert_eq!(queue.fail(last.id, "400 on attempt 3".into(), now), Some(Failed::DeadLettered(expected)));
        assert!(queue.take(now + Duration::from_secs(3600)).is_none(), "a dead letter is never redelivered");
        assert_eq!(queue.counts(), Counts { published: 1, acknowledged: 0, dead_lettered: 1, pending: 0 });
    }

    #[test]
    fn one_attempt_means_the_first_failure_dead_letters() {
        let t0 = Instant::now();
        let mut queue = Queue::new("q", retry(1));
        queue.publish(body("m"), TraceContext::start(), t0);
        let delivery = queue.take(t0).unwrap();
        assert!(matches!(queue.fail(delivery.id, "e".into(), t0), Some(Failed::DeadLettered(_))));
    }

    #[test]
    fn an_acknowledged_message_is_never_redelivered_nor_settled_twice() {
        let t0 = Instant::now();
        let mut queue = Queue::new("q", retry(10));
        let id = queue.publish(body("m"), TraceContext::start(), t0);
        let first = queue.take(t0).unwrap();
        queue.fail(first.id, "503".into(), t0 + 5 * MS);
        let second = queue.take(t0 + 105 * MS).unwrap();
        assert_eq!(
            queue.acknowledge(second.id, t0 + 120 * MS),
            Some(Acknowledged { waited: 120 * MS }),
            "the wait runs from publishing, redeliveries included"
        );
        assert!(queue.take(t0 + Duration::from_secs(3600)).is_none());
        assert_eq!(queue.next_due(), None);
        assert_eq!(queue.acknowledge(id, t0 + 130 * MS), None, "acknowledged twice");
        assert_eq!(
            queue.fail(id, "late failure".into(), t0 + 130 * MS),
            None,
            "failed after its acknowledgement"
        );
        assert!(queue.take(t0 + Duration::from_secs(3600)).is_none());
        assert_eq!(queue.counts(), Counts { published: 1, acknowledged: 1, dead_lettered: 0, pending: 0 });
    }

    #[test]
    fn a_message_never_handed_out_cannot_be_settled() {
        let t0 = Instant::now();
        let mut queue = Queue::new("q", retry(10));
        let id = queue.publish(body("m"), TraceContext::start(), t0);
        assert_eq!(queue.acknowledge(id, t0), None);
        assert_eq!(queue.fail(id, "e".into(), t0), None);
        assert_eq!(queue.take(t0).map(|d| d.id), Some(id));
    }

    /// Many messages, failing by a fixed rule, some settled twice on
    /// purpose, time advancing only to the next due redelivery: each ends
    /// exactly once, acknowledged or dead-lettered.
    #[test]
    fn every_published_message_ends_acknowledged_or_dead_lettered_exactly_once() {
        let t0 = Instant::now();
        let mut queue = Queue::new("q", retry(4));
        let mut now = t0;
        let mut published = Vec::new();
        for i in 0..200u64 {
            published.push(queue.publish(Bytes::from(i.to_string()), TraceContext::start(), now));
            now += MS;
        }
        let (mut acknowledged, mut dead) = (BTreeSet::new(), BTreeSet::new());
        let mut attempts: HashMap<MessageId, u32> = HashMap::new();
        let mut steps = 0;
        while queue.counts().pending > 0 {
            steps += 1;
            assert!(steps < 10_000, "the queue does not drain");
            let Some(delivery) = queue.take(now) else {
                now = queue.next_due().expect("pending, none out, so one waits for its redelivery");
                continue;
            };
            let n: u64 = std::str::from_utf8(&delivery.body).unwrap().parse().unwrap();
            let attempt = attempts.entry(delivery.id).or_default();
            *attempt += 1;
            // Every third message always fails; the others fail until their n % 4 + 1-th attempt.
            let succeeds = !n.is_multiple_of(3) && *attempt > (n % 4) as u32;
            if succeeds {
                assert!(queue.acknowledge(delivery.id, now).is_some());
                assert!(acknowledged.insert(delivery.id), "acknowledged twice");
                assert!(queue.acknowledge(delivery.id, now).is_none(), "a second acknowledgement counted");
            } else {
                match queue.fail(delivery.id, format!("failure {attempt}"), now) {
                    Some(Failed::DeadLettered(letter)) => {
                        assert_eq!((letter.attempts, letter.last_error.as_str()), (4, "failure 4"));
                        assert!(dead.insert(delivery.id), "dead-lettered twice");
                        assert!(queue.fail(delivery.id, "again".into(), now).is_none());
                    }
                    Some(Failed::Redelivery { .. }) => {}
                    None => panic!("a delivery out could not be failed"),
                }
            }
        }
        assert!(acknowledged.is_disjoint(&dead));
        let ended: BTreeSet<MessageId> = acknowledged.union(&dead).copied().collect();
        assert_eq!(ended, published.iter().copied().collect(), "a message was lost");
        assert_eq!(dead.len(), 67, "the messages 0, 3, ..., 198 always fail");
        assert_eq!(
            queue.counts(),
            Counts { published: 200, acknowledged: 133, dead_lettered: 67, pending: 0 }
        );
    }
}
