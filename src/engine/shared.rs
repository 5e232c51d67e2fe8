//! State shared by every worker: the current generation of configuration (swapped
//! whole on reload), telemetry handles, and lifecycle flags. Read once per connection,
//! never per byte.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use crate::authz::Policy;
use crate::config::Config;
use crate::telemetry::Telemetry;

/// One immutable generation of configuration; open connections keep theirs.
pub struct Generation {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The rustls config for new handshakes.
    pub tls: Arc<ServerConfig>,
    /// The authorization rules.
    pub authz: Arc<Policy>,
    /// Suite names in the provider's order, for the session metrics.
    pub suites: Vec<String>,
    /// The object store, when the backend is `store`.
    pub store: Option<Arc<crate::backend::store::Store>>,
}

/// Process-wide state.
pub struct Shared {
    /// The current generation.
    pub current: ArcSwap<Generation>,
    /// Telemetry hub.
    pub telemetry: Arc<Telemetry>,
    /// Connections open across all workers, for `max_connections`; touched once per
    /// connection open and close, never on the byte path.
    pub active: AtomicUsize,
    /// Workers whose listener is accepting.
    pub ready_workers: AtomicUsize,
    /// Number of workers.
    pub workers: usize,
    /// Set on SIGTERM/SIGINT: stop accepting, finish open connections.
    pub draining: AtomicBool,
}
