//! The control plane: runs the appliance (`serve`), and above the engine, the admin
//! endpoint, reload and the systemd notify protocol.
//!
//! Owns: process start (the blocking pool, the listeners, one worker thread per core),
//! signals, the reload triggers (SIGHUP, `POST /reload`, the CRL/JWKS file timer), the
//! systemd READY/RELOADING/STOPPING/WATCHDOG states, and the drain at shutdown. Must
//! not touch a connection: it starts the workers and talks to them only through
//! [`Shared`] (the generation it swaps in, the draining flag) and the stop/cut channels.
//! Nothing below imports this module.

pub mod admin;
pub mod reload;
pub mod systemd;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::engine::shared::{Generation, Shared};
use crate::engine::{blocking, listener, worker};
use crate::telemetry::Telemetry;

/// A failure that ends `serve` with exit code 2 (configuration errors are reported
/// before the engine starts, with exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    /// A worker thread ended while the appliance was serving.
    #[error("a worker exited unexpectedly")]
    WorkerDied,
    /// The admin listener could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Run the appliance until SIGTERM/SIGINT and the drain that follows. `config_path`
/// is re-read on SIGHUP and `POST /reload`.
pub fn serve(gen: Generation, config_path: PathBuf) -> Result<(), ServeError> {
    let cfg = gen.config.clone();
    let gen_store = gen.store.clone();
    let cores = cfg.server.cores.clone();
    let telemetry = Arc::new(Telemetry::new(cores.len(), gen.suites.clone()));
    let blocking = blocking::BlockingPool::start(blocking::THREADS, blocking::QUEUE)
        .map_err(ServeError::Thread)?;
    {
        let pool = blocking.clone();
        let _ = telemetry
            .blocking_queued
            .set(Box::new(move || pool.queued()));
    }
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(gen),
        telemetry: telemetry.clone(),
        active: AtomicUsize::new(0),
        ready_workers: AtomicUsize::new(0),
        workers: cores.len(),
        draining: AtomicBool::new(false),
        heartbeats: (0..cores.len()).map(|_| AtomicU64::new(0)).collect(),
        blocking,
    });
    let reloader = Arc::new(reload::Reloader::new(config_path, shared.clone()));

    // Once per process, before any upload can start: a temporary that exists now was
    // left by a crash. (Never on reload, when in-flight uploads own theirs.)
    if let Some(store) = &gen_store {
        match store.clean_stale_temporaries() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                removed = n,
                "removed stale temporaries of interrupted uploads"
            ),
            Err(e) => tracing::warn!(error = %e, "could not clean stale temporaries"),
        }
    }
    if gen_store.is_some() {
        let _ = telemetry
            .list_cache
            .set(Box::new(crate::backend::store::Store::list_cache_snapshot));
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("lg-mpu-sweep".into())
            .spawn(move || sweep_uploads(&sh))
            .map_err(ServeError::Thread)?;
    }
    let listeners =
        listener::bind(cfg.server.listen, &cores, cfg.server.steer_by_cpu).map_err(|source| {
            ServeError::Listen {
                addr: cfg.server.listen,
                source,
            }
        })?;
    let bound = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(cfg.server.listen);

    if let Some(addr) = cfg.admin.listen {
        let l = std::net::TcpListener::bind(addr)
            .map_err(|source| ServeError::Admin { addr, source })?;
        let sh = shared.clone();
        let rl = reloader.clone();
        std::thread::Builder::new()
            .name("lg-admin".into())
            .spawn(move || {
                // Without it /healthz goes unanswered and the load balancer takes us
                // out, which is the right outcome for an appliance nobody can watch.
                if let Err(e) = admin::run(l, sh, rl) {
                    tracing::error!(error = %e, "admin endpoint stopped");
                }
            })
            .map_err(ServeError::Thread)?;
    }

    // Signals are taken on their own thread and handled on this one, off the workers.
    let (sig_tx, sig_rx) = crossbeam_channel::unbounded::<i32>();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(ServeError::Thread)?;
    std::thread::Builder::new()
        .name("lg-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig_tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .map_err(ServeError::Thread)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Turns true at the drain deadline: workers cut what is still open and count it.
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<usize>();
    for (id, (l, core)) in listeners.into_iter().zip(cores.iter().copied()).enumerate() {
        let sh = shared.clone();
        let rx = stop_rx.clone();
        let cut = cut_rx.clone();
        let done = done_tx.clone();
        let sqpoll = cfg.server.sqpoll;
        std::thread::Builder::new()
            .name(format!("lg-worker-{id}"))
            .spawn(move || {
                if let Err(e) = worker::run(id, core, sh, l, sqpoll, rx, cut) {
                    tracing::error!(worker = id, error = %e, "worker failed");
                }
                let _ = done.send(id);
            })
            .map_err(ServeError::Thread)?;
    }
    drop(done_tx);

    // READY=1 only once every worker accepts, so systemd (and anything ordered after
    // us) never sees a half-started appliance.
    let mut failed = false;
    while shared.ready_workers.load(Ordering::SeqCst) < cores.len() {
        if let Ok(id) = done_rx.recv_timeout(Duration::from_millis(5)) {
            tracing::error!(worker = id, "worker exited during start");
            failed = true;
            break;
        }
    }
    let mut finished = 0;
    if !failed {
        tracing::info!(listen = %bound, workers = cores.len(), cores = ?cores, "lakegate serving");
        systemd::ready(&format!("serving {} workers on {bound}", cores.len()));
        let watchdog = systemd::watchdog_interval();
        let wd_tick = match watchdog {
            Some(d) => crossbeam_channel::tick(d),
            None => crossbeam_channel::never(),
        };
        let crl_tick = crossbeam_channel::tick(cfg.tls.crl_refresh);
        loop {
            crossbeam_channel::select! {
                recv(sig_rx) -> sig => match sig {
                    Ok(signal_hook::consts::SIGHUP) => {
                        let _ = reloader.reload("SIGHUP");
                    }
                    Ok(sig) => {
                        tracing::info!(signal = sig, "draining: no new connections");
                        break;
                    }
                    Err(_) => break,
                },
                recv(crl_tick) -> _ => reloader.refresh_crls(),
                recv(wd_tick) -> _ => {
                    // Pet the watchdog only while every worker's loop still turns: a
                    // wedged worker should get us restarted, not hidden.
                    let stale = stalled_workers(&shared, watchdog.unwrap_or_default() * 2);
                    if stale.is_empty() {
                        systemd::watchdog();
                    } else {
                        tracing::error!(workers = ?stale, "workers stalled; not petting the watchdog");
                    }
                }
                recv(done_rx) -> id => {
                    // A worker gone while serving leaves its share of the reuseport
                    // group dead: stop and let the supervisor restart us whole.
                    tracing::error!(worker = ?id.ok(), "worker exited unexpectedly; stopping");
                    failed = true;
                    finished += 1;
                    break;
                }
            }
        }
    }
    systemd::stopping();
    shared.draining.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + cfg.server.drain_timeout;
    while finished < cores.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(_) => finished += 1,
            Err(_) => {
                // Requests still in flight are cut now (each worker counts its own in
                // lakegate_drain_cut_connections_total); a short grace lets them
                // remove their temporaries before the process ends.
                tracing::warn!(
                    open = shared.active.load(Ordering::Relaxed),
                    "drain deadline passed; cutting remaining connections"
                );
                let _ = cut_tx.send(true);
                // Workers stop waiting for their connections 0.5 s after the cut.
                let grace = Instant::now() + Duration::from_secs(2);
                while finished < cores.len() {
                    let left = grace.saturating_duration_since(Instant::now());
                    match done_rx.recv_timeout(left.max(Duration::from_millis(1))) {
                        Ok(_) => finished += 1,
                        Err(_) => break,
                    }
                }
                break;
            }
        }
    }
    tracing::info!("stopped");
    if failed {
        return Err(ServeError::WorkerDied);
    }
    Ok(())
}

/// Remove multipart uploads abandoned for longer than `[backend] multipart_expiry`: at
/// start, then every quarter of that (at least every second, at most every hour), off
/// the worker threads, under the running configuration; counted in
/// `lakegate_multipart_uploads_expired_total`.
fn sweep_uploads(shared: &Shared) {
    loop {
        if shared.draining.load(Ordering::Relaxed) {
            return;
        }
        let gen = shared.current.load_full();
        let expiry = match &gen.config.backend {
            crate::config::Backend::Store {
                multipart_expiry, ..
            } => *multipart_expiry,
            crate::config::Backend::Forward { .. } | crate::config::Backend::S3(_) => return,
        };
        if let Some(store) = &gen.store {
            match store.sweep_uploads(expiry, std::time::SystemTime::now()) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(expired = n, ?expiry, "removed abandoned multipart uploads");
                    let mut c = shared
                        .telemetry
                        .control
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    c.multipart_expired += n as u64;
                }
                Err(e) => tracing::warn!(error = %e, "multipart upload sweep failed"),
            }
        }
        drop(gen);
        let every = (expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        std::thread::sleep(every);
    }
}

/// Workers whose heartbeat is older than `limit` (at least 3 s).
fn stalled_workers(shared: &Shared, limit: Duration) -> Vec<usize> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let limit = limit.as_secs().max(3);
    shared
        .heartbeats
        .iter()
        .enumerate()
        .filter(|(_, hb)| now.saturating_sub(hb.load(Ordering::Relaxed)) > limit)
        .map(|(i, _)| i)
        .collect()
}
