//! The `[tls]` section as validated data: paths resolved, defaults filled in.
//!
//! Owns the types only; `config` parses the file into them and [`super::policy`]
//! builds the rustls configuration from them. Defined here rather than in `config` so
//! the TLS layer sits below the configuration file and never sees the rest of it.

use std::path::PathBuf;
use std::time::Duration;

/// The `[tls]` section, with paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Trust anchors for client certificates (PEM).
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM or DER).
    pub crl: Vec<PathBuf>,
    /// How often CRL files are checked for changes.
    pub crl_refresh: Duration,
    /// What to do with a client whose CRL is past its nextUpdate.
    pub crl_stale: CrlStale,
    /// Protocol versions allowed; never empty.
    pub versions: Vec<TlsVersion>,
    /// Cipher suite names; empty means the provider's AEAD defaults.
    pub cipher_suites: Vec<String>,
    /// Whether session tickets are issued.
    pub session_tickets: bool,
    /// Shared ticket key file, so a fleet resumes each other's sessions.
    pub ticket_key_file: Option<PathBuf>,
    /// Resumption is refused once the full handshake that authenticated the client is
    /// older than this, however many tickets were issued since.
    pub ticket_lifetime: Duration,
}

/// The policy for a CRL past its nextUpdate (its issuer should have replaced it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlStale {
    /// Keep using it, log and count it (`"serve"`, the default): a cron job that failed
    /// once should not take the fleet down.
    Serve,
    /// Refuse clients whose issuer's CRL is stale (`"refuse"`): fail closed.
    Refuse,
}

/// A TLS protocol version the server may negotiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (`"1.2"`), ECDHE + AEAD suites only.
    Tls12,
    /// TLS 1.3 (`"1.3"`).
    Tls13,
}
