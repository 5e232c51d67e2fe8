//! The worker's receive buffer ring: a connection that waits for its client's next
//! bytes lends the kernel no buffer of its own. It arms one buffer-select receive
//! (`IORING_OP_RECV` with `IOSQE_BUFFER_SELECT`) on the worker's provided buffer ring;
//! the kernel picks a ring buffer only when bytes are there, the connection moves them
//! into a pool buffer it takes at that moment, and the ring buffer goes straight back.
//! After that first read of a burst, the connection reads into its own record buffer,
//! where records are opened in place (`tls::record`), until it is quiet again.
//!
//! Why single-shot and not multishot receive: a connection switches between the ring
//! (while it waits) and its own buffer (while it streams). Ending a multishot receive
//! is a cancellation, and bytes the kernel put in a ring buffer between the switch and
//! the cancel's completion would be lost; a single-shot receive completes exactly once.
//! Streaming through ring buffers instead would cut every record that straddles two
//! buffers and cost a carry copy at each boundary.
//!
//! A connection that waits with the start of a record it cannot open yet (the client
//! paused mid-record, or sends a handshake flight in pieces) keeps only those bytes: a
//! [`Carry`] of exactly their length, taken from the worker's [`CARRY_BUDGET`] (or, in a
//! handshake, the separate [`HANDSHAKE_CARRY_BUDGET`]) for as
//! long as the wait lasts, instead of the 65 KiB pool buffer they sat in. When the
//! rest arrives, the carry goes first into the pool buffer the new bytes land in. The
//! carried bytes are copied twice (out and back), at most one record per wait, never
//! in a connection that streams (it reads straight into its own buffer). With the
//! budget spent, a connection waits holding its buffer as before, and that is counted
//! (`lakegate_recv_carry_full_total`).
//!
//! An empty ring is a normal state under a burst of wake-ups (thousands of connections
//! each wanting a buffer at once): the receive ends with `ENOBUFS`. The connection
//! counts it (`lakegate_recv_ring_empty_total`) and re-arms only once a buffer has come
//! back to the ring (or after 1 ms, as a buffer may have come back before it queued):
//! re-arming at once would spin on `ENOBUFS` (benches/uring/README.md measured 6 M
//! wasted completions for 2,000 connections without this gate, 30 k with it).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use super::io::Stream;
use super::pool::Pool;
use crate::telemetry::Counter;

/// Is this the error a receive gets from an empty ring? compio-driver 0.12.5 turns a
/// CQE's `-ENOBUFS` into `ErrorKind::ResourceBusy` with no raw errno (its iour
/// `create_result`); a receive has no other way to end in `ResourceBusy` (recv does not
/// return EBUSY). Checked by `tests/ring.rs`: without this, those receives were
/// "client read error" closes.
fn is_empty_ring(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ResourceBusy || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// Buffers in each worker's ring.
pub const BUFFERS: u16 = 64;

/// Bytes per ring buffer: one full TLS record (16 KiB of plaintext plus its overhead
/// fits in two; a burst's first read needs only to be some bytes). 64 × 16 KiB = 1 MiB
/// per worker, for any number of connections.
pub const BUFFER_LEN: usize = 16 * 1024;

/// Bytes all of one worker's waiting established connections may carry at once:
/// 1,000 maximal partial records.
pub const CARRY_BUDGET: usize = 16 * 1024 * 1024;

/// Bytes all of one worker's unfinished handshakes may carry at once, apart from
/// [`CARRY_BUDGET`]: clients no one has authenticated yet cannot spend what
/// authenticated ones wait with. 4 MiB: a few bytes each for many thousand paused
/// handshakes, or some hundred whole certificate flights.
pub const HANDSHAKE_CARRY_BUDGET: usize = 4 * 1024 * 1024;

/// Whose budget a carry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// A connection in its handshake (not authenticated yet).
    Handshake,
    /// An established connection.
    Established,
}

/// Longest carry: what fits before a ring buffer's bytes in a pool buffer. A partial
/// TLS record is shorter (at most 5 + 16,384 + 256 bytes).
const MAX_CARRY: usize = super::pool::BUF_SIZE - BUFFER_LEN;

/// The start of a record a waiting connection keeps (see the module's text); its bytes
/// go back to the worker's budget when it is dropped.
pub struct Carry<'a> {
    budget: &'a Cell<usize>,
    bytes: Vec<u8>,
}

impl Carry<'_> {
    /// How many bytes are carried.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is carried.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Put the carried bytes back at the start of `buf` (the buffer the rest landed
    /// in, after them) and give their budget back.
    pub fn restore(self, buf: &mut [u8]) {
        if let Some(to) = buf.get_mut(..self.bytes.len()) {
            to.copy_from_slice(&self.bytes);
        }
    }
}

impl Drop for Carry<'_> {
    fn drop(&mut self) {
        let left = self.budget.get().saturating_sub(self.bytes.len());
        self.budget.set(left);
    }
}

/// How long a connection that met an empty ring waits before it re-arms anyway.
const RETRY: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Waiter {
    woken: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// A place in the queue, given up when the wait ends or is dropped unwoken.
struct Queued<'a> {
    ring: &'a RecvRing,
    me: Rc<Waiter>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.me.woken.get() {
            self.ring
                .waiters
                .borrow_mut()
                .retain(|w| !Rc::ptr_eq(w, &self.me));
        }
    }
}

/// The re-arm gate of one worker's ring: connections that met `ENOBUFS` queue here
/// and are woken one per buffer given back. Per worker, no lock, no atomic.
#[derive(Default)]
pub struct RecvRing {
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    /// Bytes in this worker's live [`Carry`]s of established connections.
    carried: Cell<usize>,
    /// Bytes in this worker's live [`Carry`]s of handshakes.
    carried_handshake: Cell<usize>,
}

impl RecvRing {
    /// Keep `bytes` while their connection waits, or `None` when `budget` has no room
    /// for them or they are longer than a buffer can take in front of a ring buffer's
    /// bytes (the connection then keeps its buffer).
    pub fn carry(&self, bytes: &[u8], budget: Budget) -> Option<Carry<'_>> {
        let (used, limit) = match budget {
            Budget::Handshake => (&self.carried_handshake, HANDSHAKE_CARRY_BUDGET),
            Budget::Established => (&self.carried, CARRY_BUDGET),
        };
        let now = used.get();
        if bytes.len() > MAX_CARRY || now + bytes.len() > limit {
            return None;
        }
        used.set(now + bytes.len());
        Some(Carry {
            budget: used,
            bytes: bytes.to_vec(),
        })
    }

    /// A ring buffer went back: wake the longest waiter.
    fn recycled(&self) {
        if let Some(w) = self.waiters.borrow_mut().pop_front() {
            w.woken.set(true);
            if let Some(k) = w.waker.borrow_mut().take() {
                k.wake();
            }
        }
    }

    /// Wait for a buffer to come back, or [`RETRY`]. A wait that is dropped (the
    /// connection timed out or is draining) leaves the queue, so a buffer given back
    /// wakes a connection that still wants one.
    async fn wait(&self) {
        let queued = Queued {
            ring: self,
            me: Rc::new(Waiter::default()),
        };
        self.waiters.borrow_mut().push_back(queued.me.clone());
        let woken = std::future::poll_fn(|cx| {
            if queued.me.woken.get() {
                Poll::Ready(())
            } else {
                *queued.me.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        tokio::select! {
            () = woken => {}
            () = compio::time::sleep(RETRY) => {}
        }
    }

    /// Wait for `s` to have bytes, holding no buffer; then take a pool buffer and put
    /// them in it from `at` on (the room before is for a [`Carry`] the caller holds
    /// and restores). Returns how many (0: the peer closed) and the buffer (empty on
    /// error or EOF: no pool buffer is taken then). `empty` counts `ENOBUFS`.
    pub async fn receive(
        &self,
        s: &Stream,
        pool: &Pool,
        empty: &Counter,
        at: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        loop {
            match s.recv_ring().await {
                Ok(Some(got)) if !got.is_empty() => {
                    let mut buf = pool.take();
                    let n = got.len();
                    // A carry is at most MAX_CARRY, so `at + n` fits a pool buffer.
                    buf[at..at + n].copy_from_slice(&got);
                    drop(got);
                    self.recycled();
                    return (Ok(n), buf);
                }
                Ok(Some(got)) => {
                    drop(got);
                    self.recycled();
                    return (Ok(0), Vec::new());
                }
                Ok(None) => return (Ok(0), Vec::new()),
                Err(e) if is_empty_ring(&e) => {
                    empty.inc();
                    self.wait().await;
                }
                Err(e) => return (Err(e), Vec::new()),
            }
        }
    }
}
