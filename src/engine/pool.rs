//! A per-worker pool of I/O buffers. Owned buffers go into io_uring operations and come
//! back; reusing them keeps allocation off the per-record path. Never shared between
//! workers, so it needs no lock.

use std::cell::RefCell;

use crate::tls::record::slots;

/// Size of one pooled buffer: four maximal TLS records.
pub const BUF_SIZE: usize = 64 * 1024 + 1024;

/// The pool; cheap to clone handles are not needed since connections get `&Pool`
/// through their worker.
#[derive(Default)]
pub struct Pool {
    free: RefCell<Vec<Vec<u8>>>,
    /// Record-slot buffers ([`slots::LEN`]) for the forward relay's downloads.
    slotted: RefCell<Vec<Vec<u8>>>,
    keep: usize,
}

impl Pool {
    /// A pool that keeps at most `keep` idle buffers (and `keep / 2` slot buffers).
    pub fn new(keep: usize) -> Self {
        Pool {
            free: RefCell::new(Vec::new()),
            slotted: RefCell::new(Vec::new()),
            keep,
        }
    }

    /// Take a record-slot buffer ([`slots::LEN`] initialised bytes): one buffer the
    /// size of two pooled ones, read into with a single `readv` of [`slots::COUNT`]
    /// records, where the copying path reads and seals through two.
    pub fn take_slotted(&self) -> Vec<u8> {
        match self.slotted.borrow_mut().pop() {
            Some(b) => b,
            None => vec![0; slots::LEN],
        }
    }

    /// Give a record-slot buffer back (dropped if that list is full or it shrank). The
    /// list keeps half as many buffers as the plain one, so at most as many bytes:
    /// together at most 2 × `keep` × 65 KiB idle per worker (33 MiB at 256).
    pub fn give_slotted(&self, b: Vec<u8>) {
        let mut free = self.slotted.borrow_mut();
        if free.len() < self.keep / 2 && b.len() == slots::LEN {
            free.push(b);
        }
    }

    /// Take a buffer of [`BUF_SIZE`] initialised bytes.
    pub fn take(&self) -> Vec<u8> {
        match self.free.borrow_mut().pop() {
            Some(b) => b,
            None => vec![0; BUF_SIZE],
        }
    }

    /// Give a buffer back (dropped if the pool is full or it was resized).
    pub fn give(&self, mut b: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep && b.capacity() >= BUF_SIZE {
            b.resize(BUF_SIZE, 0);
            free.push(b);
        }
    }
}
