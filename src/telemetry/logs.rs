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
//! drop counter is read here at scrape time.

use std::io::{BufWriter, IsTerminal};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines that may wait for the writer. At ~250 bytes a line, 2 MiB of memory at most;
/// at the peak handshake rate of one worker (~4,000/s) it covers a two-second stall of
/// the reader before lines are dropped.
pub const QUEUED_LINES: usize = 8192;

/// What the writer thread may gather into one `write(2)`.
const WRITE_BATCH: usize = 64 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread; dropping it writes what is queued (waiting at most ~1.1 s
/// for a stalled reader) so the last lines before exit are not lost.
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard(#[allow(dead_code)] WorkerGuard);

/// Install the process's subscriber: the `LAKEGATE_LOG` filter (default `info`), text or
/// JSON lines, to stderr through the writer thread.
pub fn init(json: bool) -> Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("lakegate-log")
        .finish(BufWriter::with_capacity(WRITE_BATCH, std::io::stderr()));
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
    Guard(guard)
}

/// Lines dropped because the writer's queue was full (0 before [`init`], and in tests
/// that log to the test harness).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
