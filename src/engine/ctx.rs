//! A worker's context as its connections see it: the per-thread [`Worker`] block (pool,
//! counters, drain and generation signals, request ids, idle upstream connections) and
//! a connection's [`Slot`] in the counts. Apart from [`super::worker`], which runs the
//! loop that accepts and spawns [`super::driver`], so connection code imports this and
//! never the loop (no import circle).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::pool::Pool;
use super::ring::RecvRing;
use super::shared::{Generation, Shared};
use crate::proto::s3::RequestId;
use crate::telemetry::WorkerStats;

/// Per-worker state, owned by the worker's thread.
pub struct Worker {
    /// Worker index.
    pub id: usize,
    /// The core this worker is pinned to.
    pub core: usize,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// This worker's counters (it is their only writer).
    pub stats: Arc<WorkerStats>,
    /// I/O buffers.
    pub pool: Pool,
    /// The re-arm gate of this worker's receive buffer ring.
    pub ring: RecvRing,
    /// What this worker's store lookups found in objects' attributes.
    pub attrs: super::attrcache::AttrCache,
    /// Objects being hashed for this worker now, by their state: a request for one
    /// waits for that job instead of queueing another (`store::files`).
    pub hashing: std::cell::RefCell<
        std::collections::HashMap<
            super::attrcache::Key,
            Rc<tokio::sync::OnceCell<crate::backend::store::ObjectMeta>>,
        >,
    >,
    /// Connections open on this worker.
    pub open: Cell<usize>,
    /// Turns true when the appliance starts draining.
    pub drain: tokio::sync::watch::Receiver<bool>,
    /// Turns true when the drain deadline has passed: what is still open is cut. This
    /// worker's own channel (fed from the process-wide one by one task), so waiting
    /// on it touches nothing another worker touches.
    pub cut: tokio::sync::watch::Receiver<bool>,
    /// The generation this worker last saw installed; a relay waits on it to be
    /// re-judged after a reload or CRL refresh (within a second of the swap).
    pub generation: tokio::sync::watch::Receiver<Arc<Generation>>,
    /// This worker's request-id prefix (process random and worker index).
    pub request_id_prefix: u64,
    /// Requests this worker has numbered; a plain cell, as no other thread counts here.
    pub request_seq: Cell<u64>,
    /// How many lines about peers that have not authenticated this worker may still log
    /// this second.
    pub unauthenticated_lines: Cell<crate::telemetry::logs::LineBudget>,
    /// s3 backend: this worker's idle keep-alive connections to upstream endpoints.
    /// Never shared with another worker (a connection lives on this worker's ring).
    pub upstream_idle: std::cell::RefCell<Vec<IdleUpstream>>,
}

impl Worker {
    /// Whether a line about a peer that has not authenticated may be logged now, and
    /// how many such lines were skipped before it ([`crate::telemetry::logs::LineBudget`]).
    pub fn unauthenticated_line(&self) -> Option<u64> {
        let mut b = self.unauthenticated_lines.get();
        let r = b.admit(std::time::Instant::now());
        self.unauthenticated_lines.set(b);
        if r.is_none() {
            self.stats.unauthenticated_lines_skipped.inc();
        }
        r
    }

    /// Wait for bytes from `s` holding no buffer, then take a pool buffer holding them
    /// at its start ([`RecvRing::receive`]).
    pub async fn receive(&self, s: &super::io::Stream) -> (std::io::Result<usize>, Vec<u8>) {
        self.receive_after(s, 0).await
    }

    /// [`Worker::receive`] with the new bytes put after the first `at` of the buffer,
    /// for a connection that holds that many in a [`super::ring::Carry`] (see
    /// [`Worker::carry`]) and restores them there.
    pub async fn receive_after(
        &self,
        s: &super::io::Stream,
        at: usize,
    ) -> (std::io::Result<usize>, Vec<u8>) {
        self.ring
            .receive(s, &self.pool, &self.stats.recv_ring_empty, at)
            .await
    }

    /// How a connection waits for its client's next bytes: `Some(None)` holding
    /// nothing (no partial record), `Some(Some(carry))` holding only the partial record
    /// from `budget`, `None` when that budget is spent: it keeps its buffer.
    pub fn carry_partial(
        &self,
        partial: &[u8],
        budget: super::ring::Budget,
    ) -> Option<Option<super::ring::Carry<'_>>> {
        if partial.is_empty() {
            Some(None)
        } else {
            self.carry(partial, budget).map(Some)
        }
    }

    /// Keep `bytes`, the start of a record the connection cannot open yet, while it
    /// waits ([`super::ring::Carry`]); `None` when `budget` has no room (counted): the
    /// caller then waits holding its buffer.
    pub fn carry(
        &self,
        bytes: &[u8],
        budget: super::ring::Budget,
    ) -> Option<super::ring::Carry<'_>> {
        let carry = self.ring.carry(bytes, budget);
        match carry {
            Some(_) => self.stats.recv_carried.inc(),
            None => self.stats.recv_carry_full.inc(),
        }
        carry
    }
}

/// An idle keep-alive connection to an s3 upstream endpoint.
pub struct IdleUpstream {
    /// [`crate::backend::s3::Upstream::id`] of the backend it was opened for.
    pub backend: u64,
    /// The endpoint index.
    pub endpoint: usize,
    /// The connection.
    pub stream: compio::net::TcpStream,
    /// When it went idle.
    pub since: std::time::Instant,
}

impl Worker {
    /// Resolves once the drain deadline has passed; never before.
    pub async fn drain_deadline(&self) {
        let mut rx = self.cut.clone();
        if rx.wait_for(|cut| *cut).await.is_err() {
            // The sender lives as long as the worker: this only ends with it.
            std::future::pending::<()>().await;
        }
    }

    /// A fresh request id: unique across workers and runs without a shared counter.
    pub fn next_request_id(&self) -> RequestId {
        let seq = self.request_seq.get();
        self.request_seq.set(seq.wrapping_add(1));
        RequestId::new(self.request_id_prefix, seq)
    }
}

/// A connection's place in the worker's and the process's counts, given back on drop.
pub(super) struct Slot(pub(super) Rc<Worker>);

impl Drop for Slot {
    fn drop(&mut self) {
        let w = &self.0;
        w.open.set(w.open.get().saturating_sub(1));
        w.stats.connections_closed.inc();
        w.shared.active.fetch_sub(1, Ordering::Relaxed);
    }
}
