//! The engine: workers pinned one per core, their listeners, buffers, and the io_uring
//! shell that feeds the sans-IO TLS core. The only module that knows tokio-uring.

pub mod driver;
pub mod forward;
pub mod io;
pub mod listener;
pub mod pool;
pub mod shared;
pub mod store;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::authz::{Policy, Rule};
use crate::config::Config;
use crate::telemetry::Telemetry;
use crate::tls::policy;
use shared::{Generation, Shared};

/// A failure that ends `serve` with exit code 2 (configuration errors are reported
/// before the engine starts, with exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
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
    /// The admin listener could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Build one generation (TLS policy + authz + store) from a loaded config.
pub fn build_generation(cfg: Config) -> Result<(Generation, i64), policy::PolicyError> {
    let pol = policy::build(&cfg)?;
    let store = match &cfg.backend {
        crate::config::Backend::Store { root, fsync } => Some(Arc::new(
            crate::backend::store::Store::new(root, *fsync == crate::config::Fsync::Always)
                .map_err(|e| policy::PolicyError {
                    file: cfg.path.display().to_string(),
                    key: "backend.root",
                    message: format!("{}: {e}", root.display()),
                })?,
        )),
        crate::config::Backend::Forward { .. } => None,
    };
    let rules = cfg
        .authz
        .iter()
        .map(|r| Rule::new(&r.identity, r.buckets.clone(), r.access.clone()))
        .collect();
    let suites = pol.summary.suites.clone();
    Ok((
        Generation {
            config: Arc::new(cfg),
            tls: pol.server_config,
            authz: Arc::new(Policy::new(rules)),
            suites,
            store,
        },
        pol.server_cert_not_after,
    ))
}

/// Run the appliance until SIGTERM/SIGINT and the drain that follows.
pub fn serve(gen: Generation, cert_not_after: i64) -> Result<(), EngineError> {
    let cfg = gen.config.clone();
    let gen_store = gen.store.clone();
    let cores = cfg.server.cores.clone();
    let telemetry = Arc::new(Telemetry::new(cores.len(), gen.suites.clone()));
    telemetry
        .server_cert_not_after
        .store(cert_not_after, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(gen),
        telemetry: telemetry.clone(),
        active: AtomicUsize::new(0),
        ready_workers: AtomicUsize::new(0),
        workers: cores.len(),
        draining: AtomicBool::new(false),
    });

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
    let listeners =
        listener::bind(cfg.server.listen, &cores, cfg.server.steer_by_cpu).map_err(|source| {
            EngineError::Listen {
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
            .map_err(|source| EngineError::Admin { addr, source })?;
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("lg-admin".into())
            .spawn(move || crate::telemetry::admin::run(l, sh))
            .map_err(EngineError::Thread)?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<usize>();
    for (id, (l, core)) in listeners.into_iter().zip(cores.iter().copied()).enumerate() {
        let sh = shared.clone();
        let rx = stop_rx.clone();
        let done = done_tx.clone();
        let sqpoll = cfg.server.sqpoll;
        std::thread::Builder::new()
            .name(format!("lg-worker-{id}"))
            .spawn(move || {
                if let Err(e) = worker::run(id, core, sh, l, sqpoll, rx) {
                    tracing::error!(worker = id, error = %e, "worker failed");
                }
                let _ = done.send(id);
            })
            .map_err(EngineError::Thread)?;
    }
    drop(done_tx);
    tracing::info!(listen = %bound, workers = cores.len(), cores = ?cores, "lakegate serving");

    // Signals are taken on this thread, off the worker cores.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(EngineError::Thread)?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "draining: no new connections");
    }
    shared.draining.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + cfg.server.drain_timeout;
    let mut finished = 0;
    while finished < cores.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(_) => finished += 1,
            Err(_) => {
                tracing::warn!(
                    open = shared.active.load(Ordering::Relaxed),
                    "drain deadline passed; closing remaining connections"
                );
                break;
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}
