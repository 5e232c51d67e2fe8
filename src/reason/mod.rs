//! Bounded label sets: why a handshake, a resumption or a bearer token was refused,
//! why a connection ended ([`Close`]), the S3 error a request was answered with
//! ([`s3::Code`]) and what the filesystem said when a store operation failed
//! ([`store::Fault`]), each variant with the one metric label it maps to.
//!
//! Owns: the enums and their label strings, nothing else. Plain types with no logic
//! beyond the label, so telemetry (a leaf) can size its counters and render them
//! without importing the layers that decide the reasons; those layers (`tls`,
//! `authz`) classify their errors into these types and re-export them where they
//! always were. Must not import anything from the crate outside `reason`.

use std::fmt;

mod close;
pub mod s3;
pub mod store;
pub use close::Close;

/// Why a handshake failed, as the fixed set of `reason` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The client presented no certificate.
    NoClientCert,
    /// The client certificate does not chain to `client_ca`.
    UnknownCa,
    /// The client certificate is expired (or not yet valid).
    Expired,
    /// The client certificate is revoked by a CRL.
    Revoked,
    /// A signature in the chain or handshake did not verify.
    BadSignature,
    /// No protocol version in common.
    UnsupportedVersion,
    /// The client stalled past `handshake_timeout`.
    Timeout,
    /// Any other protocol violation or I/O failure during the handshake.
    Protocol,
    /// Handshake succeeded but no authz rule admits the identity.
    Unauthorized,
    /// The issuer's CRL is past its nextUpdate and `crl_stale = "refuse"`.
    CrlStale,
    /// The certificate verified, but its names break the rules for identities (two
    /// SPIFFE IDs, a malformed one, an unreadable CN).
    InvalidIdentity,
}

impl FailReason {
    /// All reasons, in label order.
    pub const ALL: [FailReason; 11] = [
        FailReason::NoClientCert,
        FailReason::UnknownCa,
        FailReason::Expired,
        FailReason::Revoked,
        FailReason::BadSignature,
        FailReason::UnsupportedVersion,
        FailReason::Timeout,
        FailReason::Protocol,
        FailReason::Unauthorized,
        FailReason::CrlStale,
        FailReason::InvalidIdentity,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::NoClientCert => "no_client_cert",
            FailReason::UnknownCa => "unknown_ca",
            FailReason::Expired => "expired",
            FailReason::Revoked => "revoked",
            FailReason::BadSignature => "bad_signature",
            FailReason::UnsupportedVersion => "unsupported_version",
            FailReason::Timeout => "timeout",
            FailReason::Protocol => "protocol",
            FailReason::Unauthorized => "unauthorized",
            FailReason::CrlStale => "crl_stale",
            FailReason::InvalidIdentity => "invalid_identity",
        }
    }
}

/// Why a ticket was not honoured; the label of `lakegate_tls_resumptions_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeRefusal {
    /// The full handshake behind the ticket is older than `tls.ticket_lifetime`.
    TooOld,
    /// The ticket has no authentication time (sealed by another version or forged).
    Malformed,
    /// The chain in the ticket no longer passes verification, for this reason.
    Chain(FailReason),
}

impl ResumeRefusal {
    /// Every label value, in order.
    pub const LABELS: [&'static str; 8] = [
        "too_old",
        "malformed",
        "unknown_ca",
        "expired",
        "revoked",
        "crl_stale",
        "bad_signature",
        "invalid_identity",
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeRefusal::TooOld => "too_old",
            ResumeRefusal::Malformed => "malformed",
            ResumeRefusal::Chain(FailReason::Expired) => "expired",
            ResumeRefusal::Chain(FailReason::Revoked) => "revoked",
            ResumeRefusal::Chain(FailReason::CrlStale) => "crl_stale",
            ResumeRefusal::Chain(FailReason::BadSignature) => "bad_signature",
            ResumeRefusal::Chain(FailReason::InvalidIdentity) => "invalid_identity",
            ResumeRefusal::Chain(_) => "unknown_ca",
        }
    }

    /// Index of [`Self::as_str`] in [`Self::LABELS`].
    pub fn index(self) -> usize {
        let s = self.as_str();
        Self::LABELS.iter().position(|l| *l == s).unwrap_or(0)
    }
}

impl fmt::Display for ResumeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bounded `reason` label of `lakegate_tokens_total{result="failed"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenReason {
    /// No bearer token where one is required.
    Missing,
    /// Not a well-formed JWS/JWT (or a forbidden algorithm, `crit`, a second header).
    Malformed,
    /// The signature does not verify, or the algorithm does not fit the key.
    BadSignature,
    /// No key in the JWK set has the token's `kid`.
    UnknownKey,
    /// Past `exp` (plus leeway).
    Expired,
    /// Before `nbf`, or `iat` in the future (beyond leeway).
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not name the configured audience.
    WrongAudience,
    /// `cert_bound = true` and no `cnf.x5t#S256`.
    Unbound,
    /// `cnf.x5t#S256` is not the connection's certificate.
    BindingMismatch,
    /// Valid, but its scopes do not grant this request.
    InsufficientScope,
}

impl TokenReason {
    /// Every reason, in label order.
    pub const ALL: [TokenReason; 11] = [
        TokenReason::Missing,
        TokenReason::Malformed,
        TokenReason::BadSignature,
        TokenReason::UnknownKey,
        TokenReason::Expired,
        TokenReason::NotYetValid,
        TokenReason::WrongIssuer,
        TokenReason::WrongAudience,
        TokenReason::Unbound,
        TokenReason::BindingMismatch,
        TokenReason::InsufficientScope,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenReason::Missing => "missing",
            TokenReason::Malformed => "malformed",
            TokenReason::BadSignature => "bad_signature",
            TokenReason::UnknownKey => "unknown_key",
            TokenReason::Expired => "expired",
            TokenReason::NotYetValid => "not_yet_valid",
            TokenReason::WrongIssuer => "wrong_issuer",
            TokenReason::WrongAudience => "wrong_audience",
            TokenReason::Unbound => "unbound",
            TokenReason::BindingMismatch => "binding_mismatch",
            TokenReason::InsufficientScope => "insufficient_scope",
        }
    }

    /// Index in [`TokenReason::ALL`].
    pub fn index(self) -> usize {
        TokenReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}
