//! The local bindings stand-in for Dapr: the subset of Dapr's HTTP API that
//! the order app uses, with in-memory queues in place of Service Bus and
//! folders in place of Blob Storage. It is a stand-in (there is no Dapr
//! here), and it behaves the way the app's contract relies on Dapr behaving:
//! an input binding probes its route, then delivers its queue's messages
//! with bounded concurrency; a failed delivery is redelivered after a
//! backoff, and dead-lettered with its last error after `max_attempts`;
//! nothing is dropped silently; blobs are written atomically.
//!
//! - [`queue`]: one queue's rules (publish, hand out, acknowledge, fail,
//!   redeliver, dead-letter), plain code with time as an input.
//! - `delivery`: an input binding: the probe, bounded concurrent `POST`s.
//! - `api`: Dapr's HTTP API: output bindings, metadata.
//! - `blobs`: the outbox folders, blob names, atomic writes.
//! - `stats`: what the stand-in saw: the record and progress.
//! - `state`: what the API and the deliveries share.
//! - `options`: [`StandInOptions`].

mod api;
mod blobs;
mod delivery;
mod options;
pub mod queue;
mod state;
mod stats;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::task::JoinHandle;

use self::blobs::BlobStore;
pub use self::options::StandInOptions;
pub use self::queue::DeadLetter;
use self::state::StandInState;
use self::stats::order_id;
pub use self::stats::{Progress, QueueStats, Record};
use crate::bindings::InputBinding;

/// The running stand-in, on the tokio runtime it was started on. Dropping it
/// stops accepting and delivering (messages waiting for a redelivery stay
/// where they are); deliveries already under way end with that runtime.
pub struct DaprStandIn {
    address: SocketAddr,
    state: Arc<StandInState>,
    /// Queues an input binding delivers already.
    delivered: BTreeSet<&'static str>,
    tasks: Vec<JoinHandle<()>>,
}

impl DaprStandIn {
    /// Listens on `ip` (a free port) and keeps blobs under `outbox_root`.
    pub async fn start(options: StandInOptions, ip: &str, outbox_root: &Path) -> Result<DaprStandIn> {
        let blobs = BlobStore::create(outbox_root, options.failing_blob_writes)?;
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("bind the Dapr stand-in on {ip}"))?;
        let address = listener.local_addr().context("the stand-in's address")?;
        let state = Arc::new(StandInState::new(options, blobs));
        let server = tokio::spawn(api::serve(listener, state.clone()));
        Ok(DaprStandIn { address, state, delivered: BTreeSet::new(), tasks: vec![server] })
    }

    /// The `DAPR_URL` for the apps.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Puts a message on `queue`, as a producer outside the flow would.
    pub fn publish(&self, queue: &str, body: Vec<u8>) -> Result<()> {
        let order_id = serde_json::from_slice::<serde_json::Value>(&body).ok().as_ref().and_then(order_id);
        self.state.publish(queue, Bytes::from(body), order_id)
    }

    /// Starts delivering `binding`'s queue to the app at `app_url`
    /// (`http://host:port`), once the app answers the probe. Must be called
    /// within the stand-in's tokio runtime.
    pub fn deliver(&mut self, binding: InputBinding, app_url: String) -> Result<()> {
        let queue = self.state.queue_name(binding.queue).with_context(|| {
            format!("input binding {}: the stand-in has no queue {}", binding.name, binding.queue)
        })?;
        if !self.delivered.insert(queue) {
            anyhow::bail!("{} is delivered already", binding.name);
        }
        self.tasks.push(tokio::spawn(delivery::deliver(self.state.clone(), binding, app_url)));
        Ok(())
    }

    pub fn progress(&self) -> Progress {
        self.state.stats.progress(self.state.pending())
    }

    /// Why deliveries cannot happen at all, if they cannot.
    pub fn fatal(&self) -> Option<String> {
        self.state.stats.fatal_reason()
    }

    /// Everything seen so far.
    pub fn record(&self) -> Record {
        self.state.stats.snapshot()
    }

    /// The folder holding `outbox`'s blobs.
    pub fn outbox(&self, outbox: &str) -> PathBuf {
        self.state.blobs.folder(outbox)
    }
}

impl Drop for DaprStandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
