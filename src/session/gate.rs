//! The handshake gate, sans-IO: what a connection may do between accept and a
//! verified client identity. It holds the rustls adapter ([`TlsConn`]) and the one
//! deadline of the phase: `handshake_timeout` counted from accept, never moved by
//! bytes, so a client that trickles its ClientHello a byte at a time is cut at the
//! same instant as one that sends nothing.
//!
//! The shell reads into its buffer and calls [`Gate::on_read`] then
//! [`Gate::handle_received`]; it writes what lands in `out` (the server's flight, or
//! the alert of a refusal) before acting on a failure, so the client hears why. On
//! [`Outcome::Complete`] it calls [`Gate::finish`] for the identity.
//!
//! Must not touch: sockets, the clock, counters (a refused ticket and a failure are
//! reported in the [`Step`], for the shell to count), the authorization rules (judged
//! by the shell under the generation it runs).

use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;

use crate::tls::conn::{OutBuf, SessionInfo, TlsConn, TlsError};
use crate::tls::identity::Identity;
use crate::tls::policy::FailReason;
use crate::tls::resume::ResumeRefusal;

/// Why a handshake failed, with a detail for the log line.
pub type Failure = (FailReason, String);

/// What one batch of received bytes did.
#[derive(Debug)]
pub struct Step {
    /// Bytes of the input the TLS layer used; the shell keeps the rest.
    pub consumed: usize,
    /// The client's session ticket was refused (reported once per connection).
    pub ticket_refused: Option<ResumeRefusal>,
    /// Where the handshake stands.
    pub outcome: Outcome,
}

/// Where a handshake stands after a step.
#[derive(Debug)]
pub enum Outcome {
    /// Not finished: read more (until [`Gate::poll_timeout`]).
    NeedMore,
    /// Refused; `out` may hold the alert that says why.
    Failed(Failure),
    /// Finished: [`Gate::finish`] yields the identity.
    Complete,
}

/// A finished handshake.
pub struct Handshaken {
    /// The TLS connection, now carrying records.
    pub tls: TlsConn,
    /// Who the client is.
    pub identity: Identity,
    /// The verified client chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Version, suite, resumption.
    pub session: SessionInfo,
}

/// The handshake of one connection.
pub struct Gate {
    tls: TlsConn,
    deadline: Instant,
    ticket_reported: bool,
}

impl Gate {
    /// A handshake over `tls` for a connection accepted at `accepted`, due within
    /// `timeout`.
    pub fn new(tls: TlsConn, accepted: Instant, timeout: Duration) -> Gate {
        Gate {
            tls,
            deadline: Gate::deadline(accepted, timeout),
            ticket_reported: false,
        }
    }

    /// The handshake deadline of a connection accepted at `accepted`. Known before
    /// the gate exists: a connection that has sent nothing holds no TLS state yet,
    /// but its wait for a first byte is under this deadline too.
    pub fn deadline(accepted: Instant, timeout: Duration) -> Instant {
        accepted + timeout
    }

    /// When the handshake must be finished (the timer to arm): fixed at accept.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Whether the handshake is overdue at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The failure of a handshake still unfinished at its deadline.
    pub fn timed_out() -> Failure {
        (FailReason::Timeout, "handshake_timeout".into())
    }

    /// Before a read into a buffer of `cap` bytes holding `used`: a flight that fills
    /// the whole buffer without completing a message is refused, not waited on.
    pub fn room(&self, used: usize, cap: usize) -> Result<(), Failure> {
        if used >= cap {
            return Err((FailReason::Protocol, "handshake message too large".into()));
        }
        Ok(())
    }

    /// A read returned `n` bytes (`0`: the client closed its side).
    pub fn on_read(&self, n: usize) -> Result<(), Failure> {
        if n == 0 {
            return Self::on_first_read_closed();
        }
        Ok(())
    }

    /// The client closed before its first byte, when no gate exists yet: the same
    /// failure as a close later in the handshake.
    pub fn on_first_read_closed() -> Result<(), Failure> {
        Err((
            FailReason::Protocol,
            "client closed during handshake".into(),
        ))
    }

    /// Feed the received bytes `inb` (the whole unprocessed input); the server's
    /// flight or alert lands in `out`, early plaintext in `plain`.
    pub fn handle_received(
        &mut self,
        inb: &mut [u8],
        out: &mut OutBuf,
        plain: &mut OutBuf,
    ) -> Step {
        let (consumed, outcome) = match self.tls.handle_received(inb, out, plain) {
            Ok(p) if p.handshake_completed => (p.consumed, Outcome::Complete),
            Ok(p) => (p.consumed, Outcome::NeedMore),
            Err(TlsError::Rustls(e)) => (0, Outcome::Failed((FailReason::of(&e), e.to_string()))),
            Err(e) => (0, Outcome::Failed((FailReason::Protocol, e.to_string()))),
        };
        let ticket_refused = match (self.tls.resumption_refused(), self.ticket_reported) {
            (Some(r), false) => {
                self.ticket_reported = true;
                Some(r)
            }
            _ => None,
        };
        Step {
            consumed,
            ticket_refused,
            outcome,
        }
    }

    /// The identity of a completed handshake: a client must have presented a
    /// certificate whose names make a valid identity.
    pub fn finish(self) -> Result<Handshaken, Failure> {
        let leaf = self
            .tls
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or((
                FailReason::NoClientCert,
                "no client certificate".to_string(),
            ))?;
        // The verifier may have parsed these bytes on this thread (unless another
        // verification came between): take its result if so.
        let identity = crate::tls::verify::identity_of(leaf).map_err(|e| {
            (
                FailReason::InvalidIdentity,
                format!("client certificate: {e}"),
            )
        })?;
        // The connection keeps one copy of the chain, in `Handshaken::chain`: a copy
        // per connection costs ~0.9 KiB per certificate (memory per connection).
        let mut tls = self.tls;
        let chain = tls.take_peer_certificates();
        let session = tls.session_info();
        Ok(Handshaken {
            tls,
            identity,
            chain,
            session,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::ClientConnection;

    const S: Duration = Duration::from_secs(1);

    fn client(cc: std::sync::Arc<rustls::ClientConfig>) -> ClientConnection {
        ClientConnection::new(cc, ServerName::try_from("localhost").unwrap()).unwrap()
    }

    /// What the shell does: bytes appended to its buffer, the whole unprocessed input
    /// handed over, the consumed part dropped.
    struct Shell {
        inb: Vec<u8>,
        out: OutBuf,
        plain: OutBuf,
    }

    impl Shell {
        fn new() -> Shell {
            Shell {
                inb: Vec::new(),
                out: OutBuf::with_capacity(0),
                plain: OutBuf::with_capacity(0),
            }
        }

        fn feed(&mut self, gate: &mut Gate, bytes: &[u8]) -> Step {
            gate.on_read(bytes.len()).unwrap();
            self.inb.extend_from_slice(bytes);
            let step = gate.handle_received(&mut self.inb, &mut self.out, &mut self.plain);
            self.inb.drain(..step.consumed);
            step
        }
    }

    fn gate(sc: std::sync::Arc<rustls::ServerConfig>, at: Instant) -> Gate {
        Gate::new(TlsConn::new(sc).unwrap(), at, 10 * S)
    }

    /// Run a client against the gate until it decides; returns the last step.
    fn run(gate: &mut Gate, c: &mut ClientConnection, shell: &mut Shell) -> Step {
        for _ in 0..16 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            let step = shell.feed(gate, &wire);
            let flight = std::mem::take(&mut shell.out);
            let mut rd = flight.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                let _ = c.process_new_packets();
            }
            if !matches!(step.outcome, Outcome::NeedMore) {
                return step;
            }
        }
        panic!("no decision");
    }

    #[test]
    fn a_client_with_a_certificate_gets_through_with_its_identity() {
        let (sc, cc) = crate::tls::tests::lab_configs(true);
        let t0 = Instant::now();
        let mut g = gate(sc, t0);
        let mut c = client(cc);
        let mut shell = Shell::new();
        let step = run(&mut g, &mut c, &mut shell);
        assert!(matches!(step.outcome, Outcome::Complete), "{step:?}");
        assert!(step.ticket_refused.is_none());
        let Ok(done) = g.finish() else {
            panic!("no identity")
        };
        assert_eq!(
            done.identity.spiffe.as_deref(),
            Some("spiffe://lake.example/trainer/alice")
        );
        assert_eq!(done.chain.len(), 1);
        assert_eq!(done.session.version, "TLSv1.3");
    }

    #[test]
    fn a_client_without_a_certificate_is_refused_with_an_alert() {
        let (sc, cc) = crate::tls::tests::lab_configs(false);
        let mut g = gate(sc, Instant::now());
        let mut c = client(cc);
        let mut shell = Shell::new();
        // Run by hand to see the alert land in `out` with the failure.
        let mut failed = None;
        for _ in 0..16 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            let step = shell.feed(&mut g, &wire);
            if let Outcome::Failed(f) = step.outcome {
                assert!(!shell.out.is_empty(), "the alert that says why");
                failed = Some(f);
                break;
            }
            let flight = std::mem::take(&mut shell.out);
            let mut rd = flight.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                let _ = c.process_new_packets();
            }
        }
        assert_eq!(failed.map(|f| f.0), Some(FailReason::NoClientCert));
    }

    /// A ClientHello sent a byte a second: every prefix is "need more" (no flight, no
    /// failure, nothing consumed past what the record layer can take), and the gate
    /// is overdue at accept + handshake_timeout however the bytes keep coming.
    #[test]
    fn a_trickled_client_hello_needs_more_at_every_prefix_and_times_out() {
        let (sc, cc) = crate::tls::tests::lab_configs(true);
        let t0 = Instant::now();
        let mut g = gate(sc, t0);
        let mut c = client(cc);
        let mut hello = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut hello).unwrap();
        }
        assert!(hello.len() > 20);
        let mut shell = Shell::new();
        let mut timed_out_at = None;
        for (i, b) in hello[..hello.len() - 1].iter().enumerate() {
            let now = t0 + S * i as u32;
            if timed_out_at.is_none() && g.expired(now) {
                timed_out_at = Some(i);
            }
            let step = shell.feed(&mut g, std::slice::from_ref(b));
            assert!(
                matches!(step.outcome, Outcome::NeedMore),
                "prefix {i}: {step:?}"
            );
            assert!(shell.out.is_empty(), "prefix {i}: the server spoke early");
            assert_eq!(
                g.poll_timeout(),
                t0 + 10 * S,
                "bytes never move the deadline"
            );
        }
        assert_eq!(timed_out_at, Some(10));
        assert_eq!(Gate::timed_out().0, FailReason::Timeout);
        // The last byte completes the hello: the server's flight goes out.
        let step = shell.feed(&mut g, &hello[hello.len() - 1..]);
        assert!(matches!(step.outcome, Outcome::NeedMore));
        assert!(!shell.out.is_empty());
    }

    #[test]
    fn a_client_that_closes_or_overflows_the_buffer_is_a_protocol_failure() {
        let (sc, _) = crate::tls::tests::lab_configs(true);
        let g = gate(sc, Instant::now());
        assert_eq!(g.on_read(0).unwrap_err().0, FailReason::Protocol);
        assert!(g.on_read(1).is_ok());
        assert_eq!(g.room(64, 64).unwrap_err().0, FailReason::Protocol);
        assert!(g.room(63, 64).is_ok());
    }

    #[test]
    fn garbage_is_refused_not_waited_on() {
        let (sc, _) = crate::tls::tests::lab_configs(true);
        let mut g = gate(sc, Instant::now());
        let mut shell = Shell::new();
        let step = shell.feed(&mut g, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            matches!(step.outcome, Outcome::Failed((FailReason::Protocol, _))),
            "{step:?}"
        );
    }
}
