//! A per-worker pool of I/O buffers. Owned buffers go into io_uring operations and come
//! back; reusing them keeps allocation off the per-record path. Never shared between
//! workers, so it needs no lock.

use std::cell::RefCell;

/// Size of one pooled buffer: four maximal TLS records.
pub const BUF_SIZE: usize = 64 * 1024 + 1024;

/// The pool; cheap to clone handles are not needed since connections get `&Pool`
/// through their worker.
#[derive(Default)]
pub struct Pool {
    free: RefCell<Vec<Vec<u8>>>,
    keep: usize,
}

impl Pool {
    /// A pool that keeps at most `keep` idle buffers.
    pub fn new(keep: usize) -> Self {
        Pool {
            free: RefCell::new(Vec::new()),
            keep,
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
