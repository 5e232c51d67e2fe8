//! A worker: one OS thread pinned to one core, running its own compio (io_uring) runtime and
//! accepting on its own listener of the reuseport group. Nothing here is shared with
//! other workers except the [`Shared`] block read once per connection.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;

use super::ctx::{Slot, Worker};
use super::pool::Pool;
use super::ring::{self, RecvRing};
use super::shared::Shared;
use crate::proto::s3::RequestId;

/// How long connections get, after the drain deadline has told them to stop, to
/// remove what they leave (an upload's temporary) before the worker stops waiting.
const CUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// 16 random bits per process, so that request ids of two runs differ.
fn process_random() -> u16 {
    static R: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *R.get_or_init(|| {
        let mut b = [0u8; 2];
        // A failed RNG only makes ids of two runs alike; they stay unique within one.
        let _ = aws_lc_rs::rand::fill(&mut b);
        u16::from_le_bytes(b)
    })
}

/// Run worker `id` on the current thread until drained. `listener` is this worker's
/// member of the reuseport group; `stop` turns true on SIGTERM.
pub fn run(
    id: usize,
    core: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    sqpoll: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut deadline: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    if !pinned {
        tracing::warn!(worker = id, core, "could not pin worker to its core");
    }
    if let Err(e) = short_slice() {
        tracing::debug!(worker = id, error = %e, "could not shorten the worker's time slice");
    }
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor
        .capacity(1024)
        .buffer_pool_size(std::num::NonZeroU16::new(ring::BUFFERS).expect("BUFFERS > 0"))
        .buffer_pool_buffer_len(ring::BUFFER_LEN);
    if sqpoll {
        proactor.sqpoll_idle(std::time::Duration::from_millis(50));
    } else {
        // Only this thread submits to its ring, and completions' task work runs when
        // the loop asks for events, not by interrupting it: fewer wakeups per I/O.
        // (SQPOLL has a kernel thread submitting, so it takes neither.)
        proactor.single_issuer(true).defer_taskrun(true);
    }
    let rt = compio::runtime::RuntimeBuilder::new()
        .with_proactor(proactor)
        .build()?;
    let stats = shared.telemetry.workers[id].clone();
    // A second descriptor of the listening socket, to stop it listening at the drain:
    // dropping the ring's listener closes its descriptor only once the cancelled
    // accept has completed, and until then the kernel keeps completing handshakes
    // into the backlog of a socket nobody accepts from.
    let closer = listener.try_clone()?;
    rt.block_on(async move {
        // The ring is registered lazily by compio; register it now, so a failure is the
        // worker's, at start, and not the first connection's.
        compio::runtime::Runtime::with_current(|rt| rt.buffer_pool())?;
        let listener = compio::net::TcpListener::from_std(listener)?;
        let (gen_tx, gen_rx) = tokio::sync::watch::channel(shared.current.load_full());
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        let w = Rc::new(Worker {
            id,
            core,
            shared: shared.clone(),
            stats,
            pool: Pool::new(256),
            ring: RecvRing::default(),
            attrs: Default::default(),
            hashing: Default::default(),
            open: Cell::new(0),
            drain: stop.clone(),
            cut: cut_rx,
            generation: gen_rx,
            request_id_prefix: RequestId::prefix(process_random(), id),
            request_seq: Cell::new(0),
            unauthenticated_lines: Cell::new(crate::telemetry::logs::LineBudget::new(
                crate::telemetry::logs::UNAUTHENTICATED_LINES_PER_SEC,
            )),
            upstream_idle: std::cell::RefCell::new(Vec::new()),
        });
        // The drain deadline: count what is still open on this worker (each of those is
        // cut), then tell them.
        let wc = w.clone();
        compio::runtime::spawn(async move {
            if deadline.wait_for(|d| *d).await.is_ok() {
                let open = wc.open.get();
                wc.stats.drain_cut.add(open as u64);
                if open > 0 {
                    tracing::warn!(worker = wc.id, open, "drain deadline passed; cutting open connections");
                }
                let _ = cut_tx.send(true);
            }
        }).detach();
        // The watchdog's proof that this loop still turns: one relaxed store a second.
        let sh = shared.clone();
        compio::runtime::spawn(async move {
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                sh.heartbeats[id].store(now, Ordering::Relaxed);
                // Per worker, once a second: tell this worker's open connections that
                // the policy changed, so they are re-judged without polling it.
                let cur = sh.current.load_full();
                if !Arc::ptr_eq(&cur, &gen_tx.borrow()) {
                    let _ = gen_tx.send(cur);
                }
                compio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }).detach();
        shared.ready_workers.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(worker = id, core, "accepting");
        // One multishot accept: each connection is a completion of the same request,
        // not a request of its own. After an error it ends, and the stream re-arms it.
        let mut incoming = listener.incoming();
        loop {
            let accepted = tokio::select! {
                a = incoming.next() => a,
                _ = stop.changed() => break,
            };
            let accepted = accepted
                .unwrap_or_else(|| Err(std::io::Error::other("multishot accept ended")))
                .and_then(|s| s.peer_addr().map(|p| (s, p)));
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning. (A
                    // connection reset before its address was read lands here too.)
                    tracing::warn!(worker = id, error = %e, "accept failed");
                    compio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            w.stats.connections_total.inc();
            let gen_max = shared.current.load().config.server.max_connections;
            if shared.active.fetch_add(1, Ordering::Relaxed) >= gen_max {
                shared.active.fetch_sub(1, Ordering::Relaxed);
                w.stats.connections_refused.inc();
                w.stats.connections_closed.inc();
                if let Some(skipped) = w.unauthenticated_line() {
                    tracing::warn!(worker = id, %peer, max = gen_max, skipped_before = skipped, "max_connections reached; refused");
                }
                drop(stream);
                continue;
            }
            w.open.set(w.open.get() + 1);
            let w2 = w.clone();
            compio::runtime::spawn(async move {
                // Released on drop, so a panicking connection task still gives back
                // its slot instead of shrinking max_connections for good.
                let slot = Slot(w2.clone());
                super::driver::serve(w2, stream, peer, slot).await;
            }).detach();
        }
        // shutdown(SHUT_RD) on a listening TCP socket moves it to CLOSE at once: it
        // leaves the reuseport group, its backlog is reset, and new connects to the
        // port are refused once every worker has done the same.
        if let Err(e) = socket2::SockRef::from(&closer).shutdown(std::net::Shutdown::Read) {
            tracing::warn!(worker = id, error = %e, "could not stop listening");
        }
        drop(closer);
        drop(incoming);
        drop(listener);
        shared.ready_workers.fetch_sub(1, Ordering::SeqCst);
        tracing::info!(worker = id, open = w.open.get(), "draining");
        let mut cut_since: Option<std::time::Instant> = None;
        while w.open.get() > 0 {
            if *w.cut.borrow() {
                let since = *cut_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= CUT_GRACE {
                    // Connections that did not wind up by themselves (a download to a
                    // client that does not read, a job on the blocking pool) end with
                    // the runtime.
                    tracing::warn!(worker = id, open = w.open.get(), "stopping with connections open");
                    break;
                }
            }
            compio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok::<(), std::io::Error>(())
    })
}

/// The time slice a worker asks of the scheduler: shorter than the kernel's default
/// (its base slice scaled by 1 + log2 CPUs: 1.4 ms on a 2-CPU machine, as read from
/// `/proc/<pid>/task/<tid>/sched`), so that since Linux 6.12 (EEVDF's `PREEMPT_SHORT`) a worker that
/// wakes for a request preempts a pool thread or another process running on its core
/// at once, instead of waiting out that task's slice. A worker's turn is tens of
/// microseconds per request, so it rarely uses a whole slice.
const WORKER_SLICE_NS: u64 = 300_000;

/// `struct sched_attr` of `sched_setattr(2)` (`SCHED_ATTR_SIZE_VER1`).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Give this thread [`WORKER_SLICE_NS`] as its custom slice, keeping its policy
/// (`SCHED_OTHER`) and its nice value. Older kernels ignore the slice of a
/// `SCHED_OTHER` thread; best effort either way.
fn short_slice() -> std::io::Result<()> {
    // SAFETY: getpriority takes three integers and reads no memory; on Linux,
    // PRIO_PROCESS with `who = 0` names the calling thread. -1 is also a valid nice
    // value, so errno is cleared first and checked after.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    let err = std::io::Error::last_os_error();
    if nice == -1 && err.raw_os_error() != Some(0) {
        return Err(err);
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: WORKER_SLICE_NS,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: `attr` is a fully initialised `struct sched_attr` of the size it says,
    // borrowed for the call, which only reads it; pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
