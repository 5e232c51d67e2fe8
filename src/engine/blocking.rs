//! The blocking pool: a few plain OS threads, shared by every worker, that run the store
//! work whose duration has no useful bound, so that it never runs on a worker's loop
//! (where it would stall every other connection of that worker).
//!
//! What goes here and what does not (the store backend's calls, `crate::backend::store`):
//! - here: hashing an object that has no current stored SHA-256 (seconds for GiB),
//!   directory listings (a walk of the whole bucket), a commit's xattr writes and its
//!   conditional rename (`If-Match` reads the current object under the commit lock),
//!   deletes (with the folder fsync), multipart records, assembly and copies, bucket
//!   create, delete and listing;
//! - on the worker's ring, as io_uring operations (`super::fsops`, called from
//!   `super::store::files` and `super::store::commit`): opening the bucket folder and
//!   the object (`openat2` beneath the bucket), its `statx`, its digest and metadata
//!   xattrs, creating and unlinking a temporary; and a commit's waits for the disk:
//!   the upload's fsync (a received part's too), the parent folders' mkdirs, the
//!   unconditional rename and the folders' fsyncs, in the store's order (attributes
//!   before the fsync, the fsync before the rename makes the object visible). Through
//!   the ring a cold lookup or an fsync waits in the kernel instead of on the worker,
//!   and none waits in this pool's queue behind a neighbour's hashing. The bytes go
//!   through the ring too (compio `read_at`/`write_at`).
//!
//! Shape: a bounded crossbeam channel of boxed jobs. A worker submits with `try_send`
//! (never waits: a full queue is the caller's 503 `SlowDown`, counted per worker in
//! `lakegate_blocking_pool_rejected_total`), and awaits the answer on a tokio oneshot,
//! which wakes its own runtime. No lock is taken on a worker: the channel is lock-free
//! on `try_send` and the oneshot is one atomic handoff, both touched once per file
//! operation, never per byte.

use std::panic::AssertUnwindSafe;

/// Threads in the pool. A few: the work is disk- or hash-bound, and each thread holds
/// one job at a time, so this caps how many slow jobs run at once for the appliance.
pub const THREADS: usize = 4;

/// The nice value of the pool's threads (workers keep 0); see [`lower_priority`].
pub const NICE: libc::c_int = 10;

/// Jobs that may wait for a thread; one more is refused (`SlowDown`). With
/// [`THREADS`] running, at most `THREADS + QUEUE` store jobs exist at once.
pub const QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool's submission side; cheap to share (`Arc` in [`super::shared::Shared`]).
#[derive(Clone)]
pub struct BlockingPool {
    tx: crossbeam_channel::Sender<Job>,
}

/// Why a job was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: the caller answers 503 `SlowDown`.
    Full,
    /// The pool's threads are gone (only at shutdown).
    Closed,
}

/// Why no answer came back from a submitted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The job panicked (caught on the pool thread, which keeps serving).
    Panicked,
}

impl BlockingPool {
    /// Start `threads` threads taking jobs from a queue of `queue` slots.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<BlockingPool> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("lg-blocking-{i}"))
                .spawn(move || {
                    lower_priority();
                    // Ends when every sender (the Shared block) is gone.
                    for job in rx {
                        // A panicking job must not take a pool thread with it; its
                        // caller sees its oneshot dropped and answers 500.
                        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                            tracing::error!("a blocking store job panicked");
                        }
                    }
                })?;
        }
        Ok(BlockingPool { tx })
    }

    /// Queue `f` without waiting; its result comes back on the answer. Called from a
    /// worker: never blocks. Refused, the job comes back untouched, to be offered again.
    pub fn try_submit<T: Send + 'static>(
        &self,
        job: Pending<T>,
    ) -> Result<Answer<T>, (Refused, Pending<T>)> {
        let Pending { job, answer } = job;
        match self.tx.try_send(job) {
            Ok(()) => Ok(answer),
            Err(crossbeam_channel::TrySendError::Full(job)) => {
                Err((Refused::Full, Pending { job, answer }))
            }
            Err(crossbeam_channel::TrySendError::Disconnected(job)) => {
                Err((Refused::Closed, Pending { job, answer }))
            }
        }
    }

    /// Jobs waiting for a thread now (not counting those running), for the gauge
    /// `lakegate_blocking_pool_queued`; read at scrape time only.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

/// A job not yet submitted, with the answer it will send.
pub struct Pending<T> {
    job: Job,
    answer: Answer<T>,
}

impl<T: Send + 'static> Pending<T> {
    /// Wrap `f` for [`BlockingPool::try_submit`].
    pub fn new<F: FnOnce() -> T + Send + 'static>(f: F) -> Pending<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The worker may have given up (connection cut at the drain deadline):
            // the result is then dropped here.
            let _ = tx.send(f());
        });
        Pending {
            job,
            answer: Answer(rx),
        }
    }
}

/// Give this pool thread a lower CPU priority than the workers (nice 10): when a
/// hash and a worker want the same core, the worker's small requests go first and
/// the hash takes what is left. Best effort: without it the pool still works.
fn lower_priority() {
    // SAFETY: setpriority takes three integers and touches no memory of this process.
    // On Linux, PRIO_PROCESS with `who = 0` names the calling thread only (each thread
    // has its own nice value), so the workers keep theirs.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the blocking pool's priority");
    }
}

/// The pending result of a submitted job.
pub struct Answer<T>(tokio::sync::oneshot::Receiver<T>);

impl<T> Answer<T> {
    /// Wait (asynchronously, on the worker's loop) for the job's result.
    pub async fn wait(self) -> Result<T, Lost> {
        self.0.await.map_err(|_| Lost::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn runs_jobs_and_returns_results() {
        let p = BlockingPool::start(2, 4).unwrap();
        let a = p.try_submit(Pending::new(|| 40 + 2)).ok().unwrap();
        assert_eq!(block_on(a.wait()), Ok(42));
    }

    #[test]
    fn full_queue_refuses_without_waiting() {
        let p = BlockingPool::start(1, 1).unwrap();
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        // One job occupies the only thread, one fills the queue, the next is refused.
        let running = p
            .try_submit(Pending::new(move || {
                let _ = started_tx.send(());
                let _ = hold_rx.recv();
                1
            }))
            .ok()
            .unwrap();
        started_rx.recv().unwrap();
        let queued = p.try_submit(Pending::new(|| 2)).ok().unwrap();
        assert_eq!(p.queued(), 1);
        assert_eq!(
            p.try_submit(Pending::new(|| 3)).err().map(|e| e.0),
            Some(Refused::Full)
        );
        hold_tx.send(()).unwrap();
        assert_eq!(block_on(running.wait()), Ok(1));
        assert_eq!(block_on(queued.wait()), Ok(2));
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_thread_survives() {
        let p = BlockingPool::start(1, 2).unwrap();
        let bad = p
            .try_submit(Pending::new(|| -> u8 { panic!("boom") }))
            .ok()
            .unwrap();
        assert_eq!(block_on(bad.wait()), Err(Lost::Panicked));
        let good = p.try_submit(Pending::new(|| 7u8)).ok().unwrap();
        assert_eq!(block_on(good.wait()), Ok(7));
    }
}
