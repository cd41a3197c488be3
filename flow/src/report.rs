//! What a flow run proves: every blob checked against the order it came
//! from, and the figures of the run (time, throughput, latency per hop,
//! redeliveries, dead letters), printed as a report and serialisable as JSON.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use app::order::Order;
use serde::Serialize;

use crate::bindings::{EXPRESS_IN, OUTBOXES, STANDARD_IN};
use crate::model::{Flavor, FlowOptions, Role};
use crate::standin::{DeadLetter, Record};

/// The outcome of checking the outboxes against the orders.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Orders whose blob is in their outbox with the order as its content.
    pub delivered: u32,
    /// Orders with no blob in any outbox.
    pub lost: Vec<u32>,
    /// Blobs that exist but are not right (content, outbox), with the reason.
    pub wrong: Vec<String>,
    /// Files in an outbox that belong to no order (partial writes included).
    pub unexpected_blobs: Vec<String>,
    /// Poison messages that ended as dead letters.
    pub poison_dead_lettered: u32,
    /// Messages on the express and standard queues that are not one of the
    /// generated orders: poison that got past the distributor.
    pub poison_forwarded: u32,
}

/// Checks every outbox file against `orders`: `outbox_dir` maps an outbox
/// binding to its folder.
pub fn verify(
    orders: &[Order],
    poison: &[Vec<u8>],
    record: &Record,
    outbox_dir: impl Fn(&str) -> PathBuf,
) -> Result<Verification> {
    let mut blobs: HashMap<(String, String), Vec<u8>> = HashMap::new();
    for outbox in OUTBOXES {
        let dir = outbox_dir(outbox);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            blobs.insert((outbox.to_string(), name), bytes);
        }
    }
    let mut verification = Verification::default();
    for order in orders {
        let name = order.order_id.to_string();
        let home = format!("{}-outbox", order.delivery.slug());
        let expected = serde_json::to_value(order).context("an order serialises")?;
        let mut found_in = Vec::new();
        for outbox in OUTBOXES {
            if let Some(bytes) = blobs.remove(&(outbox.to_string(), name.clone())) {
                found_in.push((outbox, bytes));
            }
        }
        match found_in.as_slice() {
            [] => verification.lost.push(order.order_id),
            [(outbox, bytes)] if *outbox == home => {
                match serde_json::from_slice::<serde_json::Value>(bytes) {
                    Ok(content) if content == expected => verification.delivered += 1,
                    _ => verification.wrong.push(format!(
                        "order {name}: the blob in {outbox} is not the order: {}",
                        String::from_utf8_lossy(bytes)
                    )),
                }
            }
            [(outbox, _)] => {
                verification.wrong.push(format!("order {name}: written to {outbox}, not {home}"))
            }
            _ => verification.wrong.push(format!("order {name}: written to both outboxes")),
        }
    }
    verification.unexpected_blobs =
        blobs.into_keys().map(|(outbox, name)| format!("{outbox}/{name}")).collect();
    verification.unexpected_blobs.sort();
    let poison_bodies: Vec<String> = poison.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
    verification.poison_dead_lettered =
        record.dead_letters.iter().filter(|letter| poison_bodies.contains(&letter.body)).count() as u32;
    let known = 1..=orders.len() as u64;
    verification.poison_forwarded = [EXPRESS_IN.queue, STANDARD_IN.queue]
        .iter()
        .filter_map(|queue| record.queues.get(queue))
        .flat_map(|stats| &stats.order_ids)
        .filter(|id| !id.is_some_and(|id| known.contains(&id)))
        .count() as u32;
    Ok(verification)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(samples: &[Duration]) -> Percentiles {
        let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        sorted.sort_by(f64::total_cmp);
        // Nearest rank.
        let at = |p: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
            sorted[rank.min(sorted.len()) - 1]
        };
        Percentiles { p50_ms: at(50.0), p90_ms: at(90.0), p99_ms: at(99.0), max_ms: at(100.0) }
    }
}

/// One hop of the flow: a queue and the app its input binding delivers to.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub hop: String,
    pub published: u64,
    pub delivered: u64,
    pub redeliveries: u64,
    /// From being put on the queue to the app's 2xx (waiting included).
    pub queue_to_ack: Percentiles,
    /// The successful delivery's HTTP round trip.
    pub round_trip: Percentiles,
}

/// An app's end: its exit code and output.
#[derive(Debug, Clone)]
pub struct AppExit {
    pub role: &'static str,
    pub code: i32,
    pub output: String,
}

/// What one flow run produced, for its report.
#[derive(Debug)]
pub struct FlowRun<'a> {
    pub flavor: Flavor,
    /// The containerd version the apps ran on.
    pub containerd: &'static str,
    pub options: &'a FlowOptions,
    /// When the orders were released.
    pub released: Instant,
    /// What the stand-in saw.
    pub record: &'a Record,
    pub verification: Verification,
    /// The flow had not settled when the timeout struck.
    pub timed_out: bool,
    pub apps: Vec<AppExit>,
}

/// The report of one flow run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub flavor: Flavor,
    pub runtime: &'static str,
    pub containerd: &'static str,
    pub orders: u32,
    pub poison: u32,
    pub concurrency: usize,
    pub max_attempts: u32,
    /// From the release to the last blob written.
    pub seconds: f64,
    pub orders_per_second: f64,
    pub hops: Vec<Hop>,
    /// From the release to each order's blob.
    pub release_to_blob: Percentiles,
    pub redeliveries: u64,
    pub dead_letters: Vec<DeadLetter>,
    pub blob_writes: u64,
    /// Writes of a blob that existed already: a redelivery after the
    /// receiver's acknowledgement was lost (the blob is the same).
    pub blob_rewrites: u64,
    /// Blob writes the stand-in refused on purpose (an injected outage).
    pub failed_blob_writes: u64,
    /// TCP connections the apps opened to the Dapr stand-in.
    pub standin_connections: u64,
    pub verification: Verification,
    pub refused_calls: Vec<String>,
    /// The flow had not settled when the timeout struck.
    pub timed_out: bool,
    /// Each app's exit code and output (printed when the run failed).
    #[serde(skip)]
    pub apps: Vec<AppExit>,
}

impl Report {
    pub fn new(run: FlowRun<'_>) -> Report {
        let FlowRun { flavor, containerd, options, released, record, verification, timed_out, apps } = run;
        let blob_times: Vec<Duration> =
            record.blobs.values().map(|written| written.saturating_duration_since(released)).collect();
        let seconds = blob_times.iter().max().copied().unwrap_or_default().as_secs_f64();
        let hops = Role::ALL
            .iter()
            .filter_map(|role| {
                let queue = role.input().queue;
                let stats = record.queues.get(queue)?;
                Some(Hop {
                    hop: format!("{queue} -> {}", role.name()),
                    published: stats.published,
                    delivered: stats.delivered,
                    redeliveries: stats.redeliveries,
                    queue_to_ack: Percentiles::of(&stats.waits),
                    round_trip: Percentiles::of(&stats.round_trips),
                })
            })
            .collect::<Vec<_>>();
        Report {
            flavor,
            runtime: flavor.describe(),
            containerd,
            orders: options.orders,
            poison: options.poison,
            concurrency: options.standin.concurrency,
            max_attempts: options.standin.max_attempts,
            seconds,
            orders_per_second: if seconds > 0.0 { f64::from(verification.delivered) / seconds } else { 0.0 },
            redeliveries: hops.iter().map(|hop| hop.redeliveries).sum(),
            hops,
            release_to_blob: Percentiles::of(&blob_times),
            dead_letters: record.dead_letters.clone(),
            blob_writes: record.blob_writes,
            blob_rewrites: record.blob_writes.saturating_sub(record.blobs.len() as u64),
            failed_blob_writes: record.failed_blob_writes,
            standin_connections: record.connections,
            verification,
            refused_calls: record.refused_calls.clone(),
            timed_out,
            apps,
        }
    }

    /// Orders that did not arrive intact.
    pub fn missing(&self) -> usize {
        self.verification.lost.len() + self.verification.wrong.len()
    }

    /// Every order delivered intact, poison dead-lettered and nothing else.
    pub fn ok(&self) -> bool {
        let v = &self.verification;
        self.missing() == 0
            && v.unexpected_blobs.is_empty()
            && v.poison_forwarded == 0
            && v.poison_dead_lettered == self.poison
            && self.refused_calls.is_empty()
            && !self.timed_out
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "order flow: {} orders (+{} poison) through the {}, containerd {}",
            self.orders, self.poison, self.runtime, self.containerd
        ));
        line(format!(
            "  released at once; last blob written after {:.2} s: {:.0} orders/s \
             (stand-in concurrency {} per queue, {} attempts before dead-lettering)",
            self.seconds, self.orders_per_second, self.concurrency, self.max_attempts
        ));
        line(format!(
            "  {:<38} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "hop (queue -> app)",
            "published",
            "delivered",
            "redelivered",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "rtt p50"
        ));
        for hop in &self.hops {
            let p = hop.queue_to_ack;
            line(format!(
                "  {:<38} {:>9} {:>9} {:>11} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.2}",
                hop.hop,
                hop.published,
                hop.delivered,
                hop.redeliveries,
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.max_ms,
                hop.round_trip.p50_ms
            ));
        }
        let p = self.release_to_blob;
        line(format!(
            "  {:<38} {:>9} {:>9} {:>11} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            "release -> blob written", "", self.blob_writes, "", p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
        ));
        line(
            "  (latency per hop: from being put on the queue to the app's 2xx, waiting included; \
              rtt: the successful delivery's HTTP round trip)"
                .to_string(),
        );
        line(format!(
            "  connections the apps opened to the Dapr stand-in: {} (for {} binding calls)",
            self.standin_connections,
            self.hops[1..].iter().map(|hop| hop.published).sum::<u64>() + self.blob_writes
        ));
        line(format!(
            "  blob writes: {} ({} rewrites of a blob already written; {} refused on purpose)",
            self.blob_writes, self.blob_rewrites, self.failed_blob_writes
        ));
        line(format!("  redeliveries: {}", self.redeliveries));
        line(format!("  dead letters: {}", self.dead_letters.len()));
        for letter in self.dead_letters.iter().take(5) {
            line(format!(
                "    {} after {} attempts: {:.80}  (last error: {:.160})",
                letter.queue, letter.attempts, letter.body, letter.last_error
            ));
        }
        let v = &self.verification;
        if self.poison > 0 {
            line(format!(
                "  poison: {} of {} dead-lettered, {} forwarded past the distributor",
                v.poison_dead_lettered, self.poison, v.poison_forwarded
            ));
        }
        for call in self.refused_calls.iter().take(5) {
            line(format!("  the stand-in refused a call: {call}"));
        }
        if self.timed_out {
            line("  TIMED OUT: messages were still pending".to_string());
        }
        if !v.unexpected_blobs.is_empty() {
            line(format!(
                "  unexpected blobs: {:?}",
                &v.unexpected_blobs[..v.unexpected_blobs.len().min(10)]
            ));
        }
        for wrong in v.wrong.iter().take(10) {
            line(format!("  WRONG: {wrong:.200}"));
        }
        if self.missing() == 0 {
            line(format!("  {} of {} orders delivered, 0 lost", v.delivered, self.orders));
        } else {
            line(format!(
                "  LOST: {} of {} orders did not arrive intact ({} missing, {} wrong); first missing ids: {:?}",
                self.missing(),
                self.orders,
                v.lost.len(),
                v.wrong.len(),
                &v.lost[..v.lost.len().min(10)]
            ));
        }
        out
    }

    /// The apps' output, for a failed run.
    pub fn app_outputs(&self) -> String {
        let mut out = String::new();
        for AppExit { role, code, output } in &self.apps {
            let tail: Vec<&str> = output.lines().rev().take(20).collect();
            out.push_str(&format!("--- {role} (exit {code}), last lines:\n"));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&samples);
        assert_eq!((p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&[]).max_ms, 0.0);
    }

    #[test]
    fn a_report_takes_its_figures_from_the_record() {
        let released = Instant::now();
        let ms = Duration::from_millis;
        let mut record = Record::default();
        for (queue, published, redeliveries) in
            [("q-order-ingress", 4, 1), ("q-order-express", 2, 0), ("q-order-standard", 2, 2)]
        {
            let stats = record.queues.entry(queue).or_default();
            stats.published = published;
            stats.delivered = published;
            stats.redeliveries = redeliveries;
            stats.waits = vec![ms(10); published as usize];
            stats.round_trips = vec![ms(2); published as usize];
        }
        for (id, at) in [("1", 1000), ("2", 1500), ("3", 2000), ("4", 500)] {
            record.blobs.insert(("express-outbox".into(), id.into()), released + ms(at));
        }
        record.blob_writes = 5;
        record.connections = 3;
        let options = FlowOptions {
            orders: 4,
            seed: 1,
            poison: 0,
            standin: crate::standin::StandInOptions::default(),
            timeout: Duration::from_secs(1),
            progress: false,
            app_env: Vec::new(),
        };
        let verification = Verification { delivered: 4, ..Verification::default() };
        let run = |timed_out| FlowRun {
            flavor: Flavor::Wasm,
            containerd: "1.7",
            options: &options,
            released,
            record: &record,
            verification: verification.clone(),
            timed_out,
            apps: Vec::new(),
        };
        let report = Report::new(run(false));
        assert_eq!((report.seconds, report.orders_per_second), (2.0, 2.0), "up to the last blob");
        assert_eq!((report.blob_writes, report.blob_rewrites, report.redeliveries), (5, 1, 3));
        let hops: Vec<&str> = report.hops.iter().map(|hop| hop.hop.as_str()).collect();
        assert_eq!(
            hops,
            [
                "q-order-ingress -> distributor",
                "q-order-express -> receiver-express",
                "q-order-standard -> receiver-standard"
            ]
        );
        assert_eq!((report.hops[0].queue_to_ack.p50_ms, report.hops[0].round_trip.p50_ms), (10.0, 2.0));
        assert_eq!(report.release_to_blob.max_ms, 2000.0);
        assert!(report.ok(), "{}", report.render());
        assert!(
            report
                .render()
                .contains("connections the apps opened to the Dapr stand-in: 3 (for 9 binding calls)")
        );
        let late = Report::new(run(true));
        assert!(!late.ok());
        assert!(late.render().contains("TIMED OUT: messages were still pending"));
    }

    fn outbox(root: &std::path::Path, order: &Order) -> PathBuf {
        root.join(format!("{}-outbox", order.delivery.slug())).join(order.order_id.to_string())
    }

    #[test]
    fn verify_finds_lost_wrong_misplaced_and_stray_blobs() {
        let root = tempfile::tempdir().unwrap();
        for outbox in OUTBOXES {
            std::fs::create_dir_all(root.path().join(outbox)).unwrap();
        }
        let orders = orders::generate(5, 1);
        // 1: right; 2: lost; 3: wrong content; 4: in the other outbox; 5: right.
        for order in [&orders[0], &orders[4]] {
            std::fs::write(outbox(root.path(), order), serde_json::to_vec(order).unwrap()).unwrap();
        }
        std::fs::write(outbox(root.path(), &orders[2]), b"{}").unwrap();
        let other = if orders[3].delivery.slug() == "express" { "standard-outbox" } else { "express-outbox" };
        std::fs::write(root.path().join(other).join("4"), serde_json::to_vec(&orders[3]).unwrap()).unwrap();
        std::fs::write(root.path().join("express-outbox/.9.0.partial"), b"{").unwrap();

        let v = verify(&orders, &[], &Record::default(), |o| root.path().join(o)).unwrap();
        assert_eq!(v.delivered, 2);
        assert_eq!(v.lost, [2]);
        assert_eq!(v.wrong.len(), 2, "{:?}", v.wrong);
        assert!(v.wrong[0].starts_with("order 3: the blob"), "{:?}", v.wrong);
        assert!(v.wrong[1].contains(&format!("written to {other}")), "{:?}", v.wrong);
        assert_eq!(v.unexpected_blobs, ["express-outbox/.9.0.partial"]);
    }
}
