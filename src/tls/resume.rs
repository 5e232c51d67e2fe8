//! Resumption under the current policy: a ticket is honoured only if the client chain it
//! carries would pass a full handshake *now*, and only while the full handshake that
//! first authenticated the client is younger than `tls.ticket_lifetime`.
//!
//! rustls resumes a session from whatever its ticketer decrypts, skipping client
//! certificate verification: a ticket minted before a revocation, a CA removal, or the
//! certificate's own expiry would resume forever (each resumption hands out a fresh
//! ticket). [`VerifyingTicketer`] wraps the real ticketer (in-process or the fleet's
//! key file) and, when a ticket is opened, re-runs the generation's client verifier on
//! the chain inside it (anchors, CRLs and their staleness policy, EKU, time) and checks
//! the authentication time lakegate sealed beside the session (a chain this worker has
//! verified under this generation reuses those signature checks only; see
//! [`crate::tls::verify`]). A ticket that fails
//! decrypts to `None`, which rustls treats as "no ticket": the client gets a normal
//! full handshake and is asked for its certificate again.
//!
//! The authentication time travels inside the sealed ticket (`session ‖ auth_time ‖
//! magic`). rustls's unbuffered API cannot set per-connection resumption data, so the
//! rustls adapter tells the ticketer which connection it is working for through
//! [`TicketCtx`], a thread-local it sets around each call into rustls on the worker's
//! thread (tickets are sealed and opened synchronously inside those calls).
//!
//! Owns: the ticket wrapper and the parse of rustls's session encoding (pinned to rustls
//! 0.23.x; a test fails if that encoding moves). Must not touch: sockets, the runtime,
//! configuration parsing.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use rustls::server::ProducesTickets;
use rustls::time_provider::TimeProvider;
use rustls_pki_types::CertificateDer;

pub use crate::reason::ResumeRefusal;
use crate::tls::policy::FailReason;
use crate::tls::verify::ClientVerifier;

/// What the ticketer knows of the connection it is working for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TicketCtx {
    /// Unix seconds of the full handshake that authenticated this client: set when a
    /// ticket was opened (the original time carries over), `None` on a full handshake
    /// (then "now" is the authentication time).
    pub auth_time: Option<u64>,
    /// The last ticket this connection offered that was refused, and why.
    pub refused: Option<ResumeRefusal>,
    /// Tickets sealed for this connection so far.
    pub issued: u8,
}

thread_local! {
    /// The connection the worker's thread is processing, while it is inside rustls.
    static CURRENT: Cell<Option<TicketCtx>> = const { Cell::new(None) };
}

/// Make `ctx` the context of the calls into rustls that follow on this thread.
pub fn enter(ctx: TicketCtx) {
    CURRENT.with(|c| c.set(Some(ctx)));
}

/// End the context and return it as the ticketer left it.
pub fn leave() -> Option<TicketCtx> {
    CURRENT.with(Cell::take)
}

fn update(f: impl FnOnce(&mut TicketCtx)) {
    CURRENT.with(|c| {
        if let Some(mut ctx) = c.get() {
            f(&mut ctx);
            c.set(Some(ctx));
        }
    });
}

/// Ends a sealed ticket's plaintext: version 1 of lakegate's trailer.
const MAGIC: &[u8; 4] = b"LGT1";
const TRAILER: usize = 8 + MAGIC.len();

/// A ticketer that honours a ticket only under the current policy. One per
/// configuration generation (it holds that generation's verifier); `inner`, which holds
/// the keys, is shared across generations so a reload does not cut every session.
pub struct VerifyingTicketer {
    inner: Arc<dyn ProducesTickets>,
    verifier: Arc<ClientVerifier>,
    lifetime_secs: u64,
    time: Arc<dyn TimeProvider>,
}

impl fmt::Debug for VerifyingTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingTicketer")
            .field("inner", &self.inner)
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl VerifyingTicketer {
    /// Wrap `inner`: tickets open only if their chain passes `verifier` at the time
    /// `time` gives and their authentication is younger than `lifetime_secs`.
    pub fn new(
        inner: Arc<dyn ProducesTickets>,
        verifier: Arc<ClientVerifier>,
        lifetime_secs: u64,
        time: Arc<dyn TimeProvider>,
    ) -> Self {
        VerifyingTicketer {
            inner,
            verifier,
            lifetime_secs,
            time,
        }
    }

    fn now(&self) -> Option<u64> {
        self.time.current_time().map(|t| t.as_secs())
    }

    /// Open and judge a ticket; the plaintext rustls expects, or why not.
    pub fn open(&self, cipher: &[u8]) -> Result<Vec<u8>, Option<ResumeRefusal>> {
        // A ticket that does not decrypt under our keys is not a refusal of ours to
        // count: rustls just does a full handshake.
        let mut plain = self.inner.decrypt(cipher).ok_or(None)?;
        let split = plain
            .len()
            .checked_sub(TRAILER)
            .ok_or(Some(ResumeRefusal::Malformed))?;
        let (_, trailer) = plain.split_at(split);
        if &trailer[8..] != MAGIC {
            return Err(Some(ResumeRefusal::Malformed));
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&trailer[..8]);
        let auth_time = u64::from_be_bytes(t);
        plain.truncate(split);
        let now = self.now().ok_or(Some(ResumeRefusal::Malformed))?;
        // A ticket from the future is as suspect as an old one.
        if auth_time > now + 60 || now.saturating_sub(auth_time) > self.lifetime_secs {
            return Err(Some(ResumeRefusal::TooOld));
        }
        let chain = session_client_chain(&plain).ok_or(Some(ResumeRefusal::Malformed))?;
        let (leaf, intermediates) = chain.split_first().ok_or(Some(ResumeRefusal::Malformed))?;
        let at = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
        // The same verifier as a full handshake: chain, CRLs, time, EKU, identity rules
        // (a chain this worker verified under this generation skips only the signature
        // arithmetic already done).
        self.verifier
            .verify_resumed(leaf, intermediates, at)
            .map_err(|e| Some(ResumeRefusal::Chain(FailReason::of(&e))))?;
        update(|c| c.auth_time = Some(auth_time));
        Ok(plain)
    }
}

impl ProducesTickets for VerifyingTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        // What the client is told; the real bound is the authentication time.
        let ours = u32::try_from(self.lifetime_secs).unwrap_or(u32::MAX);
        self.inner.lifetime().min(ours)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        // No context means a call from outside the adapter's scope: issue no ticket
        // rather than one with an invented authentication time.
        let ctx = CURRENT.with(Cell::get)?;
        let auth_time = match ctx.auth_time {
            // A resumed session gets one new ticket, as OpenSSL does: its client spent
            // one to get here, so one refills it. rustls would send a full handshake's
            // count (two) on every resumption, each a seal and a record of work for a
            // ticket that only piles up in the client's cache.
            Some(_) if ctx.issued >= 1 => return None,
            Some(t) => t,
            None => self.now()?,
        };
        let mut sealed = Vec::with_capacity(plain.len() + TRAILER);
        sealed.extend_from_slice(plain);
        sealed.extend_from_slice(&auth_time.to_be_bytes());
        sealed.extend_from_slice(MAGIC);
        let ticket = self.inner.encrypt(&sealed)?;
        update(|c| c.issued = c.issued.saturating_add(1));
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        match self.open(cipher) {
            Ok(plain) => Some(plain),
            Err(why) => {
                if let Some(r) = why {
                    update(|c| c.refused = Some(r));
                }
                None
            }
        }
    }
}

/// The client certificate chain inside rustls 0.23's encoded `ServerSessionValue`
/// (`msgs/persist.rs`): `sni?`, version, suite, master secret, EMS flag, then the
/// chain as a u24-length list of u24-length certificates. `None` if malformed or if the
/// session has no client chain (lakegate always requires one).
fn session_client_chain(b: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let mut r = Reader(b);
    if r.u8()? == 1 {
        let n = r.u8()?;
        r.take(usize::from(n))?;
    }
    r.take(2)?; // version
    r.take(2)?; // cipher suite
    let ms = r.u8()?;
    r.take(usize::from(ms))?;
    r.u8()?; // extended master secret
    if r.u8()? != 1 {
        return None;
    }
    let list_len = r.u24()?;
    let mut list = Reader(r.take(list_len)?);
    let mut chain = Vec::new();
    while !list.0.is_empty() {
        let n = list.u24()?;
        chain.push(CertificateDer::from(list.take(n)?.to_vec()));
    }
    Some(chain)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    };
    use rustls::RootCertStore;
    use rustls_pki_types::UnixTime;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Debug)]
    struct Clock(AtomicU64);
    impl TimeProvider for Clock {
        fn current_time(&self) -> Option<UnixTime> {
            Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                self.0.load(Ordering::Relaxed),
            )))
        }
    }

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    fn leaf(ca: &Ca, spiffe: &[&str]) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.subject_alt_names = spiffe
            .iter()
            .map(|s| SanType::URI((*s).try_into().unwrap()))
            .collect();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn verifier(ca: &Ca) -> Arc<ClientVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        Arc::new(
            ClientVerifier::new(
                &rustls::crypto::aws_lc_rs::default_provider(),
                roots,
                &[ca.cert.der().clone()],
                vec![],
                false,
            )
            .unwrap(),
        )
    }

    /// rustls's ServerSessionValue encoding, as `persist.rs` writes it (TLS 1.3, no SNI).
    fn session(chain: &[CertificateDer<'_>]) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&[0x03, 0x04, 0x13, 0x01]);
        v.push(32);
        v.extend_from_slice(&[7u8; 32]);
        v.push(0);
        v.push(1);
        let mut list = Vec::new();
        for c in chain {
            list.extend_from_slice(&(c.len() as u32).to_be_bytes()[1..]);
            list.extend_from_slice(c);
        }
        v.extend_from_slice(&(list.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&list);
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    const NOW: u64 = 1_800_000_000;

    fn ticketer(ca: &Ca, clock: Arc<Clock>) -> VerifyingTicketer {
        let inner = crate::tls::tickets::FileTicketer::parse(
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .unwrap();
        VerifyingTicketer::new(Arc::new(inner), verifier(ca), 3600, clock)
    }

    fn seal(t: &VerifyingTicketer, plain: &[u8], ctx: TicketCtx) -> Vec<u8> {
        enter(ctx);
        let sealed = t.encrypt(plain).expect("sealed");
        leave();
        sealed
    }

    fn open(t: &VerifyingTicketer, sealed: &[u8]) -> (Option<Vec<u8>>, TicketCtx) {
        enter(TicketCtx::default());
        let out = t.decrypt(sealed);
        (out, leave().unwrap())
    }

    #[test]
    fn a_ticket_with_a_good_chain_opens_and_keeps_its_authentication_time() {
        let ca = ca("lab CA");
        let clock = Arc::new(Clock(AtomicU64::new(NOW)));
        let t = ticketer(&ca, clock.clone());
        let plain = session(&[leaf(&ca, &["spiffe://lake.example/a"])]);
        let sealed = seal(&t, &plain, TicketCtx::default());
        clock.0.store(NOW + 100, Ordering::Relaxed);
        let (out, ctx) = open(&t, &sealed);
        assert_eq!(out.as_deref(), Some(plain.as_slice()));
        assert_eq!(ctx.auth_time, Some(NOW), "the original time carries over");
        assert_eq!(ctx.refused, None);
        // A ticket issued on that resumption keeps NOW, so it cannot extend the chain.
        let resealed = seal(&t, &plain, ctx);
        clock.0.store(NOW + 3601, Ordering::Relaxed);
        let (out, ctx) = open(&t, &resealed);
        assert_eq!(out, None);
        assert_eq!(ctx.refused, Some(ResumeRefusal::TooOld));
    }

    /// Seal `n` tickets in one connection's context, as rustls does after its Finished.
    fn seal_n(t: &VerifyingTicketer, plain: &[u8], ctx: TicketCtx, n: usize) -> usize {
        enter(ctx);
        let sealed = (0..n).filter(|_| t.encrypt(plain).is_some()).count();
        assert_eq!(leave().unwrap().issued as usize, sealed);
        sealed
    }

    #[test]
    fn a_resumed_session_gets_one_new_ticket_and_a_full_handshake_all_it_asks() {
        let ca = ca("lab CA");
        let clock = Arc::new(Clock(AtomicU64::new(NOW)));
        let t = ticketer(&ca, clock);
        let plain = session(&[leaf(&ca, &["spiffe://lake.example/a"])]);
        assert_eq!(seal_n(&t, &plain, TicketCtx::default(), 3), 3, "full");
        let (_, resumed) = open(&t, &seal(&t, &plain, TicketCtx::default()));
        assert!(resumed.auth_time.is_some());
        assert_eq!(seal_n(&t, &plain, resumed, 2), 1, "resumed");
    }

    #[test]
    fn a_forged_ticket_around_a_self_signed_leaf_is_refused() {
        // Whoever holds the ticket key can seal anything; the chain must still verify.
        let ca = ca("lab CA");
        let clock = Arc::new(Clock(AtomicU64::new(NOW)));
        let t = ticketer(&ca, clock);
        let rogue = self::ca("rogue");
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.subject_alt_names = vec![SanType::URI("spiffe://lake.example/a".try_into().unwrap())];
        let key = KeyPair::generate().unwrap();
        let self_signed = p.self_signed(&key).unwrap().der().clone();
        for chain in [
            vec![self_signed],
            vec![leaf(&rogue, &["spiffe://lake.example/a"])],
        ] {
            let sealed = seal(&t, &session(&chain), TicketCtx::default());
            let (out, ctx) = open(&t, &sealed);
            assert_eq!(out, None);
            assert_eq!(
                ctx.refused,
                Some(ResumeRefusal::Chain(FailReason::UnknownCa))
            );
        }
    }

    #[test]
    fn a_cached_chain_is_judged_again_on_every_resumption() {
        // The first resumption leaves this worker a verdict on the chain; the ones after
        // reuse its signature checks, never its time or identity checks.
        let ca = ca("lab CA");
        let clock = Arc::new(Clock(AtomicU64::new(NOW)));
        let t = ticketer(&ca, clock.clone());
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        p.subject_alt_names = vec![SanType::URI("spiffe://lake.example/a".try_into().unwrap())];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW as i64 + 200).unwrap();
        let key = KeyPair::generate().unwrap();
        let alice = p.signed_by(&key, &ca.issuer).unwrap().der().clone();
        let sealed = seal(&t, &session(&[alice]), TicketCtx::default());
        let before = crate::tls::verify::stats();
        for dt in [10, 20] {
            clock.0.store(NOW + dt, Ordering::Relaxed);
            assert!(open(&t, &sealed).0.is_some());
        }
        let after = crate::tls::verify::stats();
        assert_eq!(after.cache_hits - before.cache_hits, 1);
        // Past the leaf's notAfter, well within the ticket lifetime.
        clock.0.store(NOW + 201, Ordering::Relaxed);
        let (out, ctx) = open(&t, &sealed);
        assert_eq!(out, None);
        assert_eq!(ctx.refused, Some(ResumeRefusal::Chain(FailReason::Expired)));
        assert_eq!(crate::tls::verify::stats().cache_hits - after.cache_hits, 1);
        // A forged ticket around a self-signed leaf with the same subject and SPIFFE ID
        // hashes differently: no verdict, and the real check refuses it.
        clock.0.store(NOW + 30, Ordering::Relaxed);
        let forged = p
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone();
        let (out, ctx) = open(&t, &seal(&t, &session(&[forged]), TicketCtx::default()));
        assert_eq!(out, None);
        assert_eq!(
            ctx.refused,
            Some(ResumeRefusal::Chain(FailReason::UnknownCa))
        );
    }

    #[test]
    fn a_ticket_is_judged_by_the_current_generation() {
        let old_ca = ca("old CA");
        let new_ca = ca("new CA");
        let clock = Arc::new(Clock(AtomicU64::new(NOW)));
        let old = ticketer(&old_ca, clock.clone());
        let plain = session(&[leaf(&old_ca, &["spiffe://lake.example/a"])]);
        let sealed = seal(&old, &plain, TicketCtx::default());
        // Same keys, the new generation trusts only the new CA.
        let new = ticketer(&new_ca, clock);
        assert_eq!(open(&new, &sealed).0, None);
        assert!(open(&old, &sealed).0.is_some());
    }

    #[test]
    fn two_spiffe_ids_malformed_and_untrailered_tickets_are_refused() {
        let ca = ca("lab CA");
        let clock = Arc::new(Clock(AtomicU64::new(NOW)));
        let t = ticketer(&ca, clock);
        let two = leaf(&ca, &["spiffe://lake.example/a", "spiffe://lake.example/b"]);
        let (out, ctx) = open(&t, &seal(&t, &session(&[two]), TicketCtx::default()));
        assert_eq!(out, None);
        assert_eq!(
            ctx.refused,
            Some(ResumeRefusal::Chain(FailReason::InvalidIdentity))
        );
        // Sealed by the bare key-file ticketer: no authentication time.
        let bare = crate::tls::tickets::FileTicketer::parse(
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .unwrap();
        let raw = bare
            .encrypt(&session(&[leaf(&ca, &["spiffe://lake.example/a"])]))
            .unwrap();
        let (out, ctx) = open(&t, &raw);
        assert_eq!(out, None);
        assert_eq!(ctx.refused, Some(ResumeRefusal::Malformed));
        // Truncated sessions never panic and never open while the chain is cut (the
        // tail after the chain is rustls's to parse).
        let good = session(&[leaf(&ca, &["spiffe://lake.example/a"])]);
        for n in 0..good.len() - 15 {
            let sealed = seal(&t, &good[..n], TicketCtx::default());
            assert_eq!(open(&t, &sealed).0, None, "prefix {n}");
        }
        // Without a context (outside the adapter), no ticket is issued at all.
        assert!(t.encrypt(&good).is_none());
    }
}
