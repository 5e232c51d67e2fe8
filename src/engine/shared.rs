//! State shared by every worker: the current generation of configuration (swapped
//! whole on reload), telemetry handles, and lifecycle flags. Read once per connection,
//! never per byte.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::ProducesTickets;
use rustls::ServerConfig;

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::authz::Policy;
use crate::config::{Backend, Config, CrlStale};
use crate::telemetry::Telemetry;
use crate::tls::identity::Identity;
use crate::tls::policy::CrlInfo;
use crate::tls::policy::FailReason;

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
    /// The upstream (credentials, endpoints and their health), when the backend is `s3`.
    pub s3: Option<Arc<crate::backend::s3::Upstream>>,
    /// Not-after of the server certificate, unix seconds.
    pub server_cert_not_after: i64,
    /// What the CRL files said when this generation was built.
    pub crls: Vec<CrlInfo>,
    /// The client verifier of this generation, for re-judging open connections.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The in-process ticketer, handed to the next generation.
    pub ticketer: Option<Arc<dyn ProducesTickets>>,
    /// The credential of mutating admin requests, re-read from `[admin] token_file`
    /// with every generation; `None` refuses them.
    pub admin_token: Option<Arc<crate::authz::admin::AdminToken>>,
    /// `[tokens]`: the token policy and the keys read from its JWKS file with this
    /// generation (a changed file makes a new generation); `None` without `[tokens]`.
    pub tokens: Option<Arc<crate::authz::token::TokenGate>>,
}

impl Generation {
    /// Whether the client `chain` still passes this generation's verification at `now`
    /// (anchors, CRLs and their staleness policy, validity, identity rules) and, in
    /// forward mode, whether its rules still admit the relay: what an open connection
    /// is re-judged by after a reload or a CRL refresh. The store checks its `[[authz]]`
    /// per request instead, so it gets a 403 rather than a cut connection.
    pub fn still_admits(
        &self,
        chain: &[CertificateDer<'static>],
        identity: &Identity,
        now: UnixTime,
    ) -> Result<(), FailReason> {
        let (leaf, intermediates) = chain.split_first().ok_or(FailReason::NoClientCert)?;
        self.verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| FailReason::of(&e))?;
        if matches!(self.config.backend, Backend::Forward { .. })
            && !self.authz.admits_anything(identity, true)
        {
            return Err(FailReason::Unauthorized);
        }
        Ok(())
    }

    /// Until when (Unix seconds) a connection admitted with `chain` stays admitted
    /// without being judged again: the earliest not-after in the chain (an
    /// intermediate may expire before the leaf) and, under `crl_stale = "refuse"`, the
    /// earliest CRL nextUpdate, since a CRL goes stale by time alone. 0 (judge now) if
    /// a certificate cannot be read.
    pub fn valid_until(&self, chain: &[CertificateDer<'static>]) -> i64 {
        let mut until = i64::MAX;
        for cert in chain {
            match x509_parser::parse_x509_certificate(cert) {
                Ok((_, x)) => until = until.min(x.validity().not_after.timestamp()),
                Err(_) => return 0,
            }
        }
        if self.config.tls.crl_stale == CrlStale::Refuse {
            for next in self.crls.iter().filter_map(|c| c.next_update) {
                until = until.min(next);
            }
        }
        until
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
    /// The store's blocking pool (hashing, listing, commit), shared by all workers;
    /// see [`super::blocking`].
    pub blocking: super::blocking::BlockingPool,
}
