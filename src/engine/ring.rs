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
}

impl RecvRing {
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
    /// them at its start. Returns how many (0: the peer closed) and the buffer (empty
    /// on error or EOF: no pool buffer is taken then). `empty` counts `ENOBUFS`.
    pub async fn receive(
        &self,
        s: &Stream,
        pool: &Pool,
        empty: &Counter,
    ) -> (io::Result<usize>, Vec<u8>) {
        loop {
            match s.recv_ring().await {
                Ok(Some(got)) if !got.is_empty() => {
                    let mut buf = pool.take();
                    let n = got.len();
                    buf[..n].copy_from_slice(&got);
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
