//! The process's log output: events are formatted on the thread that emits them and
//! written to stderr by one writer thread, never by a worker.
//!
//! A worker that wrote its own lines would make a `write(2)` per closed connection on its
//! loop, under the process-wide stderr lock, and would stop serving every connection it
//! holds as soon as the reader of stderr (journald, a pipe to `tee`, a terminal scrolled
//! back) stops reading: the pipe fills after ~64 KiB, about 250 connection lines. So
//! lines go through a bounded queue to a writer thread. When the queue is full the line
//! is dropped and counted (`lakegate_log_lines_dropped_total`), as HAProxy drops what its
//! syslog socket cannot take; a slow log never slows the data path. The writer batches
//! what has queued up into one `write(2)`.
//!
//! `tracing-appender` (tokio-rs/tracing) provides the queue and the writer thread; its
//! drop counter is read here at scrape time. A panic's message goes through the same
//! queue (the default hook would write stderr from the panicking worker itself).

use std::io::{BufWriter, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines that may wait for the writer. A connection line is ~330 bytes, so a full queue
/// of them holds ~2.6 MiB; the longest lines (a request for a 1,024-byte key whose
/// control characters are escaped six bytes each) are ~6.5 KiB, so the bound is ~53 MiB.
/// At the peak handshake rate of one worker (~4,000/s) the queue covers a two-second
/// stall of the reader before lines are dropped.
pub const QUEUED_LINES: usize = 8192;

/// What the writer thread may gather into one `write(2)`.
const WRITE_BATCH: usize = 64 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// stderr, counting the writes that fail (a closed pipe, a journald restart): the writer
/// thread drops what it could not write, so the count is what says lines were lost.
/// Dropped by the writer thread as it ends, after the `BufWriter` around it has written
/// out what it held: then it tells [`Guard::close`] (tracing-appender's own guard returns
/// after ~1.1 s whether or not the writer got through).
struct Stderr {
    done: std::sync::mpsc::Sender<()>,
}

impl Drop for Stderr {
    fn drop(&mut self) {
        // A writer thread unwinding from a panic has not written what was queued.
        if !std::thread::panicking() {
            let _ = self.done.send(());
        }
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write(buf).inspect_err(|_| {
            WRITE_ERRORS.fetch_add(1, Relaxed);
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Keeps the writer thread; [`Guard::close`] writes what is queued so the last lines
/// before exit are not lost.
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard {
    guard: WorkerGuard,
    written: std::sync::mpsc::Receiver<()>,
}

impl Guard {
    /// Write out what is queued and stop the writer, waiting at most `limit`. Returns
    /// whether everything was written, which only the writer thread knows: it says so
    /// when it ends. False means stderr is stalled (or failing), and the caller must not
    /// write it itself: that write could block the exit for good. False also comes,
    /// after the whole `limit`, when the queue was full at the close (tracing-appender
    /// gives up queueing its stop after 100 ms) or a write to stderr failed (the writer
    /// then never sees the stop); lines were lost then, and are counted.
    /// tracing-appender's guard is dropped on a thread of its own: when the queue is
    /// full it reports on stdout, which may be the same stalled stream.
    #[must_use = "false: stderr is stalled, do not write it"]
    pub fn close(self, limit: Duration) -> bool {
        let Guard { guard, written } = self;
        let started = std::thread::Builder::new()
            .name("lakegate-log-close".into())
            .spawn(move || drop(guard));
        started.is_ok() && written.recv_timeout(limit).is_ok()
    }
}

/// Install the process's subscriber: the `LAKEGATE_LOG` filter (default `info`), text or
/// JSON lines, to stderr through the writer thread.
pub fn init(json: bool) -> Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (done, written) = std::sync::mpsc::channel();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("lakegate-log")
        .finish(BufWriter::with_capacity(WRITE_BATCH, Stderr { done }));
    let _ = DROPPED.set(writer.error_counter());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    if json {
        b.json().init();
    } else {
        b.init();
    }
    std::panic::set_hook(Box::new(log_panic));
    Guard { guard, written }
}

/// The panic hook: the message, the thread and the place, as an ERROR line through the
/// queue (a panicking connection task is caught by the runtime and its worker goes on).
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    let thread = std::thread::current();
    let location = info.location().map(ToString::to_string).unwrap_or_default();
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        tracing::error!(thread = thread.name().unwrap_or("-"), %location, %backtrace, "panicked: {message}");
    } else {
        tracing::error!(thread = thread.name().unwrap_or("-"), %location, "panicked: {message}");
    }
}

/// Lines dropped because the writer's queue was full (0 before [`init`], and in tests
/// that log to the test harness).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Writes to stderr that failed; what they held is lost.
pub fn write_errors() -> u64 {
    WRITE_ERRORS.load(Relaxed)
}

/// Lines a worker may log per second about peers that have not authenticated
/// ([`LineBudget`]).
pub const UNAUTHENTICATED_LINES_PER_SEC: u32 = 100;

/// A per-worker budget for log lines any peer can cause before it has proved who it is
/// (a failed handshake). Without it, a flood of bad handshakes fills the queue the
/// access log shares with it, and a slow reader then loses other clients' audit lines
/// to the attacker's. Every failure is still counted in `lakegate_handshakes_total`;
/// only its line is skipped, and the next line logged says how many were.
/// Sans-IO: the caller passes `now`.
#[derive(Debug, Clone, Copy)]
pub struct LineBudget {
    per_sec: u32,
    window: Option<std::time::Instant>,
    used: u32,
    skipped: u64,
}

impl LineBudget {
    /// At most `per_sec` lines in each second-long window.
    pub const fn new(per_sec: u32) -> Self {
        LineBudget {
            per_sec,
            window: None,
            used: 0,
            skipped: 0,
        }
    }

    /// `Some(n)`: log this line, saying `n` lines were skipped since the last one
    /// logged; `None`: skip it.
    pub fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.window {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        if self.used < self.per_sec {
            self.used += 1;
            Some(std::mem::take(&mut self.skipped))
        } else {
            self.skipped += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_flood_is_logged_at_the_budget_and_the_next_line_counts_what_was_skipped() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = LineBudget::new(3);
        assert_eq!(b.admit(ms(0)), Some(0));
        assert_eq!(b.admit(ms(1)), Some(0));
        assert_eq!(b.admit(ms(2)), Some(0));
        // The fourth within the second is skipped, and so is every later one in it.
        for i in 0..10 {
            assert_eq!(b.admit(ms(3 + i)), None);
        }
        assert_eq!(b.admit(ms(999)), None);
        // A new second: logged again, and the first line says 11 were skipped.
        assert_eq!(b.admit(ms(1000)), Some(11));
        assert_eq!(b.admit(ms(1001)), Some(0));
        // A clock that steps back does not open a new window early.
        assert_eq!(b.admit(ms(500)), Some(0));
        assert_eq!(b.admit(ms(1002)), None);
        // A quiet peer is always logged.
        let mut q = LineBudget::new(3);
        for s in 0..20 {
            assert_eq!(q.admit(ms(s * 1000)), Some(0));
        }
    }
}
