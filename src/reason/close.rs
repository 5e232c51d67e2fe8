//! Why an established connection ended: one enum, mapped here once to the phrase the
//! `connection closed` log line has always carried (`close=...`) and to a bounded
//! metric label (`lakegate_connections_closed_total{reason}`).
//!
//! Owns: the set of close reasons and their two spellings. Must not touch: sockets,
//! the clock, counters (the shell counts with [`Close::index`]).
//!
//! Handshake failures are not here: they are [`FailReason`]s, counted in
//! `lakegate_handshakes_total`. A connection ended by the running policy carries the
//! policy's reason ([`Close::Policy`]) and is also counted by it in
//! `lakegate_connections_closed_by_policy_total`.

use super::FailReason;

/// Why an established connection (forward relay or object-API cycle) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Close {
    /// Both sides finished cleanly (close_notify or EOF passed on).
    Closed,
    /// The client asked for it (`Connection: close`) or a response said so.
    ClosedByRequest,
    /// The appliance is draining and the connection was between requests.
    Draining,
    /// Still open when the drain deadline passed (`server.drain_timeout`).
    DrainDeadline,
    /// Nothing moved in either direction for `server.idle_timeout`.
    IdleTimeout,
    /// The request head was not complete within `request_head_timeout`.
    HeadTimeout,
    /// The body arrived slower than `min_body_rate`.
    BodyTooSlow,
    /// A request head that does not parse (answered 400 / 431).
    BadRequestHead,
    /// The client closed with part of a request head buffered.
    EofInsideHead,
    /// The client closed (TCP EOF) between requests.
    ClientEof,
    /// Forward: the client's TCP EOF came without close_notify (passed on as a
    /// half-close, recorded as possibly truncated).
    ClientEofWithoutCloseNotify,
    /// The client sent close_notify before the end of a request body.
    TruncatedBodyCloseNotify,
    /// The client's TCP EOF came before the end of a request body.
    TruncatedBodyEof,
    /// A read from the client failed.
    ClientReadError,
    /// A write to the client failed.
    ClientWriteError,
    /// The client did not take our bytes within the idle timeout.
    ClientWriteTimeout,
    /// A TLS record that does not fit the receive buffer.
    RecordTooLarge,
    /// The client's TLS records failed (bad record, alert).
    TlsFromClient,
    /// Our own record protection failed.
    TlsEncrypt,
    /// Store / s3: the running policy no longer admits the connection.
    NoLongerAdmitted,
    /// Forward: the running policy no longer admits the relay (`Some`), or it reached
    /// `max_connection_age` (`None`).
    Policy(Option<FailReason>),
    /// Forward: the upstream could not be connected.
    UpstreamUnreachable,
    /// Forward: the PROXY header or early plaintext could not be written upstream.
    UpstreamPrefixWrite,
    /// Forward: a write to the upstream failed.
    UpstreamWriteError,
    /// Forward: the upstream did not take our bytes within the idle timeout.
    UpstreamWriteTimeout,
    /// Forward: a read from the upstream failed.
    UpstreamReadError,
    /// s3: the upstream stalled inside a response body.
    UpstreamBodyTimeout,
    /// s3: the upstream closed inside a response body.
    UpstreamClosedInBody,
    /// Forward: the PROXY v2 header could not be encoded.
    ProxyHeader,
    /// The generation has no backend for this connection's mode.
    NoBackend,
    /// A stored object ended before its recorded size.
    ObjectShort,
    /// A stored object could not be read.
    ObjectRead,
}

impl Close {
    /// Every metric label, in index order: the label set of
    /// `lakegate_connections_closed_total` is exactly this, whatever the traffic.
    pub const LABELS: [&'static str; 29] = [
        "closed",
        "closed_by_request",
        "draining",
        "drain_deadline",
        "idle_timeout",
        "head_timeout",
        "body_too_slow",
        "bad_request_head",
        "eof_inside_head",
        "client_eof",
        "client_eof_without_close_notify",
        "truncated_body",
        "client_read_error",
        "client_write_error",
        "client_write_timeout",
        "record_too_large",
        "tls_error",
        "tls_encrypt_error",
        "no_longer_admitted",
        "max_connection_age",
        "upstream_unreachable",
        "upstream_write_error",
        "upstream_write_timeout",
        "upstream_read_error",
        "upstream_body_timeout",
        "upstream_closed_in_body",
        "proxy_header_error",
        "no_backend",
        "object_read_error",
    ];

    /// The index of [`Close::label`] in [`Close::LABELS`] (a counter slot).
    pub fn index(self) -> usize {
        match self {
            Close::Closed => 0,
            Close::ClosedByRequest => 1,
            Close::Draining => 2,
            Close::DrainDeadline => 3,
            Close::IdleTimeout => 4,
            Close::HeadTimeout => 5,
            Close::BodyTooSlow => 6,
            Close::BadRequestHead => 7,
            Close::EofInsideHead => 8,
            Close::ClientEof => 9,
            Close::ClientEofWithoutCloseNotify => 10,
            Close::TruncatedBodyCloseNotify | Close::TruncatedBodyEof => 11,
            Close::ClientReadError => 12,
            Close::ClientWriteError => 13,
            Close::ClientWriteTimeout => 14,
            Close::RecordTooLarge => 15,
            Close::TlsFromClient => 16,
            Close::TlsEncrypt => 17,
            Close::NoLongerAdmitted | Close::Policy(Some(_)) => 18,
            Close::Policy(None) => 19,
            Close::UpstreamUnreachable => 20,
            Close::UpstreamPrefixWrite | Close::UpstreamWriteError => 21,
            Close::UpstreamWriteTimeout => 22,
            Close::UpstreamReadError => 23,
            Close::UpstreamBodyTimeout => 24,
            Close::UpstreamClosedInBody => 25,
            Close::ProxyHeader => 26,
            Close::NoBackend => 27,
            Close::ObjectShort | Close::ObjectRead => 28,
        }
    }

    /// The bounded metric label (snake_case, one of [`Close::LABELS`]).
    pub fn label(self) -> &'static str {
        Close::LABELS[self.index()]
    }

    /// The phrase of the `close` field on the `connection closed` log line (and of
    /// the `reason` of an aborted upload), as it has read since the first release:
    /// operators grep for these.
    pub fn as_str(self) -> &'static str {
        match self {
            Close::Closed => "closed",
            Close::ClosedByRequest => "closed by request",
            Close::Draining => "draining",
            Close::DrainDeadline => "drain deadline",
            Close::IdleTimeout => "idle timeout",
            Close::HeadTimeout => "request head timeout",
            Close::BodyTooSlow => "request body too slow",
            Close::BadRequestHead => "bad request head",
            Close::EofInsideHead => "eof inside request head",
            Close::ClientEof => "client eof",
            Close::ClientEofWithoutCloseNotify => "client eof without close_notify",
            Close::TruncatedBodyCloseNotify => "truncated body (close_notify before the end)",
            Close::TruncatedBodyEof => "truncated body (eof without close_notify)",
            Close::ClientReadError => "client read error",
            Close::ClientWriteError => "client write error",
            Close::ClientWriteTimeout => "client write timeout",
            Close::RecordTooLarge => "record larger than buffer",
            Close::TlsFromClient => "tls error from client",
            Close::TlsEncrypt => "tls encrypt error",
            Close::NoLongerAdmitted => "no longer admitted",
            Close::Policy(None) => "max connection age",
            Close::Policy(Some(FailReason::Unauthorized)) => "no longer authorized",
            Close::Policy(Some(FailReason::Revoked)) => "certificate revoked",
            Close::Policy(Some(FailReason::Expired)) => "certificate expired",
            Close::Policy(Some(_)) => "certificate no longer trusted",
            Close::UpstreamUnreachable => "upstream unreachable",
            Close::UpstreamPrefixWrite => "upstream write failed",
            Close::UpstreamWriteError => "upstream write error",
            Close::UpstreamWriteTimeout => "upstream write timeout",
            Close::UpstreamReadError => "upstream read error",
            Close::UpstreamBodyTimeout => "upstream body timeout",
            Close::UpstreamClosedInBody => "upstream closed inside the body",
            Close::ProxyHeader => "proxy header error",
            Close::NoBackend => "no store",
            Close::ObjectShort => "object shorter than its size",
            Close::ObjectRead => "object read error",
        }
    }

    /// Whether the connection ended the way a well-behaved pair of peers ends it.
    /// A forward relay that did not end cleanly has both sockets shut at once.
    pub fn is_clean(self) -> bool {
        matches!(self, Close::Closed)
    }
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant once (the policy one with each reason it is spelt for).
    const EVERY: [Close; 40] = [
        Close::Closed,
        Close::ClosedByRequest,
        Close::Draining,
        Close::DrainDeadline,
        Close::IdleTimeout,
        Close::HeadTimeout,
        Close::BodyTooSlow,
        Close::BadRequestHead,
        Close::EofInsideHead,
        Close::ClientEof,
        Close::ClientEofWithoutCloseNotify,
        Close::TruncatedBodyCloseNotify,
        Close::TruncatedBodyEof,
        Close::ClientReadError,
        Close::ClientWriteError,
        Close::ClientWriteTimeout,
        Close::RecordTooLarge,
        Close::TlsFromClient,
        Close::TlsEncrypt,
        Close::NoLongerAdmitted,
        Close::Policy(None),
        Close::Policy(Some(FailReason::Unauthorized)),
        Close::Policy(Some(FailReason::Revoked)),
        Close::Policy(Some(FailReason::Expired)),
        Close::Policy(Some(FailReason::UnknownCa)),
        Close::UpstreamUnreachable,
        Close::UpstreamPrefixWrite,
        Close::UpstreamWriteError,
        Close::UpstreamWriteTimeout,
        Close::UpstreamReadError,
        Close::UpstreamBodyTimeout,
        Close::UpstreamClosedInBody,
        Close::ProxyHeader,
        Close::NoBackend,
        Close::ObjectShort,
        Close::ObjectRead,
        Close::Policy(Some(FailReason::BadSignature)),
        Close::Policy(Some(FailReason::InvalidIdentity)),
        Close::Policy(Some(FailReason::Protocol)),
        Close::Policy(Some(FailReason::CrlStale)),
    ];

    #[test]
    fn every_label_is_used_and_labels_are_metric_safe() {
        let mut used = [false; Close::LABELS.len()];
        for c in EVERY {
            used[c.index()] = true;
            assert_eq!(c.label(), Close::LABELS[c.index()]);
        }
        assert!(used.iter().all(|u| *u), "a label no variant maps to");
        for l in Close::LABELS {
            assert!(
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{l}"
            );
        }
        let mut sorted = Close::LABELS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), Close::LABELS.len(), "duplicate label");
    }

    /// The log phrases are an interface (tests/operate.rs greps `close="draining"`,
    /// operators grep the rest): they must read exactly as before the enum.
    #[test]
    fn log_phrases_are_the_historic_ones() {
        assert_eq!(Close::Draining.to_string(), "draining");
        assert_eq!(Close::IdleTimeout.as_str(), "idle timeout");
        assert_eq!(Close::DrainDeadline.as_str(), "drain deadline");
        assert_eq!(Close::NoBackend.as_str(), "no store");
        assert_eq!(Close::UpstreamUnreachable.as_str(), "upstream unreachable");
        assert_eq!(Close::Policy(None).as_str(), "max connection age");
        assert_eq!(
            Close::Policy(Some(FailReason::CrlStale)).as_str(),
            "certificate no longer trusted"
        );
        assert_eq!(
            Close::Policy(Some(FailReason::CrlStale)).label(),
            "no_longer_admitted"
        );
        assert_eq!(Close::Policy(None).label(), "max_connection_age");
        // Distinct variants keep distinct phrases, even where they share a label.
        // (The first 36 of EVERY are one per phrase; the tail repeats policy reasons.)
        let mut phrases: Vec<_> = EVERY[..36].iter().map(|c| c.as_str()).collect();
        phrases.sort_unstable();
        phrases.dedup();
        assert_eq!(phrases.len(), 36);
    }
}
