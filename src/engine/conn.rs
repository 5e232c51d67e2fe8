//! What a connection carries from the handshake ([`super::driver`]) into its backend
//! shell ([`super::forward`], [`super::store`]): the TLS state, the pool buffers with
//! what they already hold, who the client is, and the per-connection log counters.
//! Data only, so the driver and the backends need not import each other.

use std::cell::Cell;
use std::time::Instant;

use rustls_pki_types::CertificateDer;

use crate::tls::conn::{OutBuf, SessionInfo, TlsConn};
use crate::tls::identity::Identity;

/// Buffers and state that carry over from the handshake into the data phase.
pub struct Established {
    /// The TLS connection.
    pub tls: TlsConn,
    /// Received TLS bytes not yet processed (a partial record), `inb[..used]`.
    pub inb: Vec<u8>,
    /// Bytes used in `inb`.
    pub used: usize,
    /// Plaintext already decrypted (sent by the client right after its Finished).
    pub plain: OutBuf,
    /// Outgoing TLS buffer (empty).
    pub out: OutBuf,
    /// Who the client is.
    pub identity: Identity,
    /// Version, suite, resumption.
    pub session: SessionInfo,
    /// The verified client chain (leaf first; from the ticket on resumption), kept to
    /// re-judge the connection when the policy changes.
    pub chain: Vec<CertificateDer<'static>>,
    /// When the connection was accepted, for `max_connection_age`.
    pub accepted: Instant,
    /// Unix seconds until which the admission holds without a new judgement
    /// ([`super::shared::Generation::valid_until`]); set once the connection is admitted.
    pub valid_until: i64,
}

/// Per-connection counters for the close log line.
#[derive(Default)]
pub struct ConnLog {
    /// TLS bytes from the client.
    pub bytes_in: Cell<u64>,
    /// TLS bytes to the client.
    pub bytes_out: Cell<u64>,
    /// The failed handshake was already counted (before its alert went out).
    pub failure_counted: Cell<bool>,
}
