//! State shared by every worker: the current generation of configuration (swapped
//! whole on reload), telemetry handles, and lifecycle flags. Read once per connection,
//! never per byte.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

use std::collections::HashMap;

use arc_swap::ArcSwap;
use rustls::server::ProducesTickets;
use rustls::ServerConfig;

use crate::authz::Policy;
use crate::config::Config;
use crate::telemetry::Telemetry;
use crate::tls::policy::CrlInfo;

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
    /// Not-after of the server certificate, unix seconds.
    pub server_cert_not_after: i64,
    /// What the CRL files said when this generation was built.
    pub crls: Vec<CrlInfo>,
    /// Revoked serial → the issuers that revoke it: a resumed session skips chain
    /// verification, so the driver checks its certificate here.
    pub revoked: HashMap<String, Vec<String>>,
    /// The in-process ticketer, handed to the next generation.
    pub ticketer: Option<Arc<dyn ProducesTickets>>,
    /// The credential of mutating admin requests, re-read from `[admin] token_file`
    /// with every generation; `None` refuses them.
    pub admin_token: Option<Arc<crate::telemetry::admin::AdminToken>>,
}

impl Generation {
    /// Whether a CRL of this generation revokes the certificate behind `identity`.
    pub fn is_revoked(&self, identity: &crate::tls::identity::Identity) -> bool {
        self.revoked
            .get(identity.serial.as_str())
            .is_some_and(|issuers| issuers.contains(&identity.issuer))
    }
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
    /// Per-worker liveness: unix seconds of each worker's last tick, for the systemd
    /// watchdog (written once a second by its worker, read by the main thread).
    pub heartbeats: Vec<AtomicU64>,
}
