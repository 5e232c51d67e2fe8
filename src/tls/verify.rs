//! Client-certificate verification: webpki's chain, time, EKU and CRL checks (through
//! rustls's `WebPkiClientVerifier`), then lakegate's identity rules, with the public-key
//! operations that would give the same answer again remembered instead of redone.
//!
//! Two things repeat on the handshake path. webpki verifies a CRL's signature every
//! time it consults the CRL (rustls/webpki#81), and a client that comes back (a
//! resumption, or a new full handshake with the same certificate, as a job's many
//! connections are) has the very chain verified again that was verified a moment ago.
//! Both are signature checks of bytes already checked. So the verifier hands webpki the aws-lc-rs algorithms
//! wrapped in [`Remembered`], which answers "valid" without the arithmetic only for
//! an exact (algorithm, public key, message, signature) that aws-lc-rs has already
//! accepted:
//!
//! - each CRL's signature, checked once at load against the trust anchor that issued it
//!   ([`ClientVerifier::new`] refuses a CRL whose signature does not verify);
//! - per worker thread, the signatures a verification of a chain accepted, kept under
//!   (SHA-256 of the chain, generation) in a bounded cache that the next verification
//!   of the same chain on that worker reads (a full handshake or a resumption).
//!
//! Everything else still runs on every call: path building, validity against `now`, EKU,
//! the revocation lookup in each CRL with its staleness policy, key usage, the identity
//! rules. A lookup is of the whole signed tuple, so a forged chain, another anchor
//! under the same name, or a path through a certificate whose signature never verified
//! finds nothing remembered and pays (and fails) the real check. The TLS
//! CertificateVerify signature (proof of the client's key) is never remembered: rustls
//! checks it through the provider's scheme mapping, which is left unwrapped.
//!
//! The memo lives in a thread-local: a worker consults only its own, with no lock or
//! atomic shared with other workers. A generation's CRL signatures reach a thread as one
//! `Arc` clone when that thread first serves the generation.
//!
//! Owns: the verifier lakegate gives rustls, the CRL signature check at load, the
//! per-worker chain cache. Must not touch: sockets, the runtime, configuration parsing,
//! the clock (`now` is passed in).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DistinguishedName, Error as RustlsError, RootCertStore};
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, CertificateRevocationListDer, InvalidSignature,
    SignatureVerificationAlgorithm, UnixTime,
};

use crate::tls::identity::{Identity, IdentityError};

/// How many chain verdicts a worker keeps. A verdict is a few dozen bytes; past this
/// the oldest goes first.
pub const CHAIN_CACHE_ENTRIES: usize = 4096;

/// Why a verifier cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// CRL number `index` (in load order) names a trust anchor as its issuer but its
    /// signature verifies under none of the anchors of that name.
    #[error("signature does not verify against the client CA {issuer}")]
    CrlSignature {
        /// Position of the CRL in the list given to [`ClientVerifier::new`].
        index: usize,
        /// The issuer the CRL names.
        issuer: String,
    },
    /// A CRL webpki cannot use (malformed, or a kind it does not support: v1, no
    /// nextUpdate, delta), named here rather than by rustls's builder, which would not
    /// say which file.
    #[error("unusable CRL: {message}")]
    CrlEncoding {
        /// Position of the CRL in the list given to [`ClientVerifier::new`].
        index: usize,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the anchors or CRLs.
    #[error("cannot build client verifier: {0}")]
    Build(String),
}

/// Each verifier gets a new one, so a reload or a CRL refresh (both build a new
/// verifier) never finds the verdicts of the generation before. Taken at load only.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The verifier of one configuration generation: anchors, CRLs, staleness policy.
pub struct ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    generation: u64,
    crl_sigs: Arc<[KnownSig]>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("generation", &self.generation)
            .field("crl_signatures_checked", &self.crl_sigs.len())
            .finish_non_exhaustive()
    }
}

impl ClientVerifier {
    /// A verifier requiring a client certificate chained to `roots` (whose certificates
    /// are `anchors`), checked against `crls` (nextUpdate enforced when `refuse_stale`).
    ///
    /// Each CRL whose issuer is one of the anchors has its signature checked here, once;
    /// one that verifies under none of the anchors of that name is refused. A CRL issued
    /// by an intermediate can only be checked against the intermediate a client sends,
    /// so webpki keeps checking it on each handshake, as before.
    pub fn new(
        provider: &CryptoProvider,
        roots: RootCertStore,
        anchors: &[CertificateDer<'_>],
        crls: Vec<CertificateRevocationListDer<'static>>,
        refuse_stale: bool,
    ) -> Result<Self, VerifierError> {
        let crl_sigs = check_crl_signatures(anchors, &crls)?;
        let mut remembering = provider.clone();
        remembering.signature_verification_algorithms = WebPkiSupportedAlgorithms {
            all: remembered_algorithms(),
            // The CertificateVerify signature goes through the mapping: never remembered.
            mapping: provider.signature_verification_algorithms.mapping,
        };
        let mut b =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(remembering))
                .with_crls(crls);
        if refuse_stale {
            b = b.enforce_revocation_expiration();
        }
        let webpki = b.build().map_err(|e| VerifierError::Build(e.to_string()))?;
        Ok(ClientVerifier {
            webpki,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            crl_sigs: crl_sigs.into(),
        })
    }

    /// Judge the chain a resumed session carries, at `now`: as a full handshake's
    /// ([`ClientVerifier::verify_remembering`]).
    pub fn verify_resumed(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, RustlsError> {
        self.verify_remembering(end_entity, intermediates, now)
    }

    /// Judge a chain at `now`. A chain this worker verified under this generation skips
    /// only the signature arithmetic it already did (each signature is still matched by
    /// its exact inputs); validity, revocation, CRL staleness, EKU and identity rules
    /// are judged anew. A chain not seen before is verified in full and remembered.
    fn verify_remembering(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, RustlsError> {
        let key = (chain_digest(end_entity, intermediates), self.generation);
        let vouched = WORKER.with(|w| {
            let mut w = w.borrow_mut();
            let found = w.chains.get(&key).map(<[Digest]>::to_vec);
            if found.is_some() {
                w.stats.cache_hits += 1;
            } else {
                w.stats.cache_misses += 1;
            }
            found
        });
        match vouched {
            Some(v) => self.verify(end_entity, intermediates, now, Mode::Vouched(v), None),
            None => self.verify(
                end_entity,
                intermediates,
                now,
                Mode::Record(Vec::new()),
                Some(key),
            ),
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        mode: Mode,
        remember_as: Option<Key>,
    ) -> Result<ClientCertVerified, RustlsError> {
        let scope = Scope::enter(self, mode);
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now);
        let mode = scope.leave();
        let ok = verified?;
        let identity = Identity::from_der(end_entity).map_err(|e| {
            RustlsError::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                e,
            ))))
        })?;
        LAST_IDENTITY.with(|c| *c.borrow_mut() = Some((end_entity.as_ref().into(), identity)));
        if let (Some(key), Mode::Record(sigs)) = (remember_as, mode) {
            WORKER.with(|w| w.borrow_mut().chains.insert(key, sigs.into()));
        }
        Ok(ok)
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    /// A full handshake, or an open connection re-judged: the same rules as a
    /// resumption's, and the same memo of the chain's signatures. The client's
    /// CertificateVerify (proof that it holds the key, over this handshake) is
    /// `verify_tls13_signature`'s (or `verify_tls12_signature`'s), checked every time.
    ///
    /// A hit skips a public-key operation before the client has proved anything, so
    /// the time to an alert tells a client holding someone's certificate chain whether
    /// this worker verified that chain lately (once: its own probe is remembered). A
    /// chain travels encrypted in TLS 1.3; README says so beside the memo.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, RustlsError> {
        self.verify_remembering(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, RustlsError> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, RustlsError> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

thread_local! {
    /// The identity the last verification on this thread parsed from its leaf, beside
    /// the leaf's bytes: the handshake that goes on to ask for it ([`identity_of`]) is
    /// spared parsing the same certificate again (1.3-1.6 % of a resumed handshake
    /// in benches/compare/handshake-instructions.sh; less when other verifications on
    /// the worker come in between and take the slot).
    static LAST_IDENTITY: RefCell<Option<(Box<[u8]>, Identity)>> = const { RefCell::new(None) };
}

/// The identity of a verified `leaf`: the one this thread's last verification parsed
/// from exactly these bytes, else parsed now. Another connection's leaf, verified in
/// between, never answers for this one: the bytes must be equal.
pub fn identity_of(leaf: &[u8]) -> Result<Identity, IdentityError> {
    let kept = LAST_IDENTITY
        .with(|c| c.borrow_mut().take())
        .filter(|(der, _)| **der == *leaf);
    match kept {
        Some((_, identity)) => Ok(identity),
        None => Identity::from_der(leaf),
    }
}

/// What this thread's memo did, for tests and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Signatures aws-lc-rs verified (or refused) inside a verifier call.
    pub verified: u64,
    /// CRL signatures answered from the check at load.
    pub crl_recalled: u64,
    /// Chain signatures answered from a cached verdict.
    pub chain_recalled: u64,
    /// Chain verifications (full handshakes, resumptions, re-judged connections) that
    /// found a verdict for their chain.
    pub cache_hits: u64,
    /// Those that did not.
    pub cache_misses: u64,
}

/// This thread's counters since it started.
pub fn stats() -> Stats {
    WORKER.with(|w| w.borrow().stats)
}

/// A SHA-256 digest.
type Digest = [u8; 32];
/// (chain digest, generation).
type Key = (Digest, u64);

/// A signature aws-lc-rs accepted, by its exact inputs.
struct KnownSig {
    signature_alg: AlgorithmIdentifier,
    public_key_alg: AlgorithmIdentifier,
    public_key: Box<[u8]>,
    message: Box<[u8]>,
    signature: Box<[u8]>,
}

impl KnownSig {
    fn is(
        &self,
        alg: &dyn SignatureVerificationAlgorithm,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        // Cheapest first: a chain signature differs from a CRL's in its first bytes.
        *self.signature == *signature
            && *self.public_key == *public_key
            && *self.message == *message
            && self.signature_alg == alg.signature_alg_id()
            && self.public_key_alg == alg.public_key_alg_id()
    }
}

/// What the signatures checked inside the current verifier call are for.
enum Mode {
    /// A chain this worker has not verified under this generation (a miss): collect
    /// the digests of what verifies.
    Record(Vec<Digest>),
    /// A chain verified before (a hit, on a full handshake or a resumption): these
    /// verified then.
    Vouched(Vec<Digest>),
    /// A CRL checked at load: keep the exact inputs of what verifies.
    Capture(Vec<KnownSig>),
}

#[derive(Default)]
struct Worker {
    /// Set while a verifier call runs on this thread.
    scope: Option<Mode>,
    /// The CRL signatures of the generation this thread last served.
    crls: Option<(u64, Arc<[KnownSig]>)>,
    chains: ChainCache,
    stats: Stats,
}

thread_local! {
    static WORKER: RefCell<Worker> = RefCell::new(Worker::default());
}

/// The current verifier call on this thread; ends it on drop, so a panic inside webpki
/// cannot leave the next call with the wrong mode.
struct Scope;

impl Scope {
    fn enter(v: &ClientVerifier, mode: Mode) -> Scope {
        WORKER.with(|w| {
            let mut w = w.borrow_mut();
            if w.crls.as_ref().map(|(g, _)| *g) != Some(v.generation) {
                w.crls = Some((v.generation, v.crl_sigs.clone()));
            }
            w.scope = Some(mode);
        });
        Scope
    }

    fn enter_capture() -> Scope {
        WORKER.with(|w| w.borrow_mut().scope = Some(Mode::Capture(Vec::new())));
        Scope
    }

    fn leave(self) -> Mode {
        let mode = WORKER.with(|w| w.borrow_mut().scope.take());
        std::mem::forget(self);
        mode.unwrap_or(Mode::Record(Vec::new()))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let _ = WORKER.try_with(|w| {
            if let Ok(mut w) = w.try_borrow_mut() {
                w.scope = None;
            }
        });
    }
}

/// First in, first out: a verdict is worth keeping while its client comes back; one
/// pushed out is verified in full on the client's next handshake and put back.
#[derive(Default)]
struct ChainCache {
    map: HashMap<Key, Box<[Digest]>>,
    order: VecDeque<Key>,
}

impl ChainCache {
    fn get(&self, key: &Key) -> Option<&[Digest]> {
        self.map.get(key).map(|v| &**v)
    }

    fn insert(&mut self, key: Key, sigs: Box<[Digest]>) {
        if self.map.insert(key, sigs).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > CHAIN_CACHE_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// The aws-lc-rs signature algorithms, each wrapped in [`Remembered`]. Built once per
/// process (rustls wants `'static` algorithms) from the provider lakegate always uses.
fn remembered_algorithms() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    static ALL: OnceLock<&'static [&'static dyn SignatureVerificationAlgorithm]> = OnceLock::new();
    ALL.get_or_init(|| {
        let all: Vec<&'static dyn SignatureVerificationAlgorithm> =
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .all
                .iter()
                .map(|alg| {
                    let r: &'static Remembered = Box::leak(Box::new(Remembered(*alg)));
                    r as &'static dyn SignatureVerificationAlgorithm
                })
                .collect();
        Box::leak(all.into_boxed_slice())
    })
}

/// An aws-lc-rs algorithm that first asks this thread's memo whether it has already
/// accepted exactly these inputs.
struct Remembered(&'static dyn SignatureVerificationAlgorithm);

impl fmt::Debug for Remembered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Remembered").field(&self.0).finish()
    }
}

impl SignatureVerificationAlgorithm for Remembered {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let alg = self.0;
        // Called on a thread whose thread-locals are gone: nothing remembered.
        let recalled = WORKER
            .try_with(|w| {
                let mut w = w.borrow_mut();
                let w = &mut *w;
                // Outside a verifier call, and while a CRL is checked at load, nothing is
                // taken on trust.
                let Some(mode) = &w.scope else {
                    return false;
                };
                if matches!(mode, Mode::Capture(_)) {
                    return false;
                }
                let crls = w.crls.as_ref().map_or(&[][..], |(_, s)| &s[..]);
                if crls
                    .iter()
                    .any(|k| k.is(alg, public_key, message, signature))
                {
                    w.stats.crl_recalled += 1;
                    return true;
                }
                if let Mode::Vouched(sigs) = mode {
                    if sigs.contains(&sig_digest(alg, public_key, message, signature)) {
                        w.stats.chain_recalled += 1;
                        return true;
                    }
                }
                false
            })
            .unwrap_or(false);
        if recalled {
            return Ok(());
        }
        let result = alg.verify_signature(public_key, message, signature);
        let _ = WORKER.try_with(|w| {
            let mut w = w.borrow_mut();
            w.stats.verified += 1;
            if result.is_err() {
                return;
            }
            match &mut w.scope {
                Some(Mode::Record(sigs)) => {
                    sigs.push(sig_digest(alg, public_key, message, signature));
                }
                Some(Mode::Capture(known)) => known.push(KnownSig {
                    signature_alg: alg.signature_alg_id(),
                    public_key_alg: alg.public_key_alg_id(),
                    public_key: public_key.into(),
                    message: message.into(),
                    signature: signature.into(),
                }),
                Some(Mode::Vouched(_)) | None => {}
            }
        });
        result
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.0.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.0.signature_alg_id()
    }

    fn fips(&self) -> bool {
        self.0.fips()
    }
}

fn sha256(parts: &[&[u8]]) -> Digest {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        // Length-prefixed, so no two different tuples hash the same bytes.
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn chain_digest(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Digest {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + intermediates.len());
    parts.push(end_entity.as_ref());
    parts.extend(intermediates.iter().map(|c| c.as_ref()));
    sha256(&parts)
}

fn sig_digest(
    alg: &dyn SignatureVerificationAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Digest {
    sha256(&[
        alg.signature_alg_id().as_ref(),
        alg.public_key_alg_id().as_ref(),
        public_key,
        message,
        signature,
    ])
}

/// The signed parts of a CRL as webpki reads them.
struct SignedParts<'a> {
    /// The whole tbsCertList element, header included.
    tbs: &'a [u8],
    /// The contents of signatureAlgorithm.
    alg_id: &'a [u8],
    /// The signature bits.
    signature: &'a [u8],
}

fn crl_signed_data(der: &[u8]) -> Result<SignedParts<'_>, String> {
    use x509_parser::asn1_rs::{Any, FromDer, Tag};
    let any = |b| Any::from_der(b).map_err(|e| format!("{e}"));
    let (rest, outer) = any(der)?;
    if outer.header.tag() != Tag::Sequence || !rest.is_empty() {
        return Err("expected one CertificateList SEQUENCE".into());
    }
    let body = outer.data;
    let (after_tbs, tbs) = any(body)?;
    let (after_alg, alg) = any(after_tbs)?;
    let (end, sig) = any(after_alg)?;
    if tbs.header.tag() != Tag::Sequence
        || alg.header.tag() != Tag::Sequence
        || sig.header.tag() != Tag::BitString
        || !end.is_empty()
    {
        return Err("expected tbsCertList, signatureAlgorithm, signatureValue".into());
    }
    let tbs_element = &body[..body.len() - after_tbs.len()];
    match sig.data.split_first() {
        Some((0, bits)) => Ok(SignedParts {
            tbs: tbs_element,
            alg_id: alg.data,
            signature: bits,
        }),
        _ => Err("signatureValue is not a whole number of bytes".into()),
    }
}

/// Check each CRL issued by a trust anchor against that anchor, once; the exact inputs
/// of the ones that verify, for [`Remembered`] to recognise on the handshake path.
fn check_crl_signatures(
    anchors: &[CertificateDer<'_>],
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<Vec<KnownSig>, VerifierError> {
    let mut known = Vec::new();
    for (index, crl) in crls.iter().enumerate() {
        let parsed = webpki::OwnedCertRevocationList::from_der(crl.as_ref()).map_err(|e| {
            VerifierError::CrlEncoding {
                index,
                message: format!("{e:?}"),
            }
        })?;
        let issuer = webpki::CertRevocationList::from(parsed);
        let signed = crl_signed_data(crl.as_ref())
            .map_err(|message| VerifierError::CrlEncoding { index, message })?;
        // The anchors webpki would check this CRL against: same subject as its issuer.
        let issuers: Vec<&CertificateDer<'_>> = anchors
            .iter()
            .filter(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .is_ok_and(|ta| ta.subject.as_ref() == issuer.issuer())
            })
            .collect();
        if issuers.is_empty() {
            continue;
        }
        let mut found = false;
        for anchor in issuers {
            let Ok(cert) = webpki::EndEntityCert::try_from(anchor) else {
                continue;
            };
            for alg in remembered_algorithms()
                .iter()
                .filter(|a| a.signature_alg_id().as_ref() == signed.alg_id)
            {
                let scope = Scope::enter_capture();
                let ok = cert
                    .verify_signature(*alg, signed.tbs, signed.signature)
                    .is_ok();
                if let Mode::Capture(mut sigs) = scope.leave() {
                    if ok {
                        known.append(&mut sigs);
                        found = true;
                    }
                }
            }
        }
        if !found {
            let name = x509_parser::parse_x509_crl(crl.as_ref())
                .map(|(_, c)| c.issuer().to_string())
                .unwrap_or_default();
            return Err(VerifierError::CrlSignature {
                index,
                issuer: name,
            });
        }
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose,
        KeyPair, RevokedCertParams, SanType, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};

    use crate::tls::policy::FailReason;

    // A CA named `name`; two calls with one name give two CAs with the same subject and
    // different keys.
    use crate::tls::tests::{ca, Ca};

    fn t0() -> OffsetDateTime {
        // Whole seconds: certificate times are.
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap()
    }

    fn at(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
    }

    fn leaf_params(serial: u8, not_after: OffsetDateTime) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "alice");
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://lake.example/trainer/alice".try_into().unwrap(),
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.serial_number = Some(SerialNumber::from_slice(&[0x10, serial]));
        p.not_before = t0() - Duration::days(1);
        p.not_after = not_after;
        p
    }

    fn leaf(ca: &Ca, serial: u8, not_after: OffsetDateTime) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let p = leaf_params(serial, not_after);
        p.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn crl(
        ca: &Ca,
        revoked: &[u8],
        next_update: OffsetDateTime,
    ) -> CertificateRevocationListDer<'static> {
        let now = t0();
        CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[0x10, *s]),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca.issuer)
        .unwrap()
        .der()
        .clone()
    }

    fn verifier(
        anchors: &[&Ca],
        crls: Vec<CertificateRevocationListDer<'static>>,
        refuse_stale: bool,
    ) -> Result<ClientVerifier, VerifierError> {
        let mut roots = RootCertStore::empty();
        let ders: Vec<_> = anchors.iter().map(|c| c.cert.clone()).collect();
        for d in &ders {
            roots.add(d.clone()).unwrap();
        }
        ClientVerifier::new(
            &rustls::crypto::aws_lc_rs::default_provider(),
            roots,
            &ders,
            crls,
            refuse_stale,
        )
    }

    fn reason(r: Result<ClientCertVerified, RustlsError>) -> Option<FailReason> {
        r.err().map(|e| FailReason::of(&e))
    }

    /// Counters moved by `f` on this thread.
    fn delta(f: impl FnOnce()) -> Stats {
        let a = stats();
        f();
        let b = stats();
        Stats {
            verified: b.verified - a.verified,
            crl_recalled: b.crl_recalled - a.crl_recalled,
            chain_recalled: b.chain_recalled - a.chain_recalled,
            cache_hits: b.cache_hits - a.cache_hits,
            cache_misses: b.cache_misses - a.cache_misses,
        }
    }

    #[test]
    fn a_crl_signature_is_checked_at_load_and_not_on_each_handshake() {
        let ca = ca("lab CA");
        let year = t0() + Duration::days(365);
        let v = verifier(
            &[&ca],
            vec![crl(&ca, &[9], t0() + Duration::days(1))],
            false,
        )
        .unwrap();
        for serial in 1..4 {
            // A leaf not seen before: its signature by the CA with aws-lc-rs; the CRL's
            // from the check at load.
            let client = leaf(&ca, serial, year);
            let d = delta(|| {
                v.verify_client_cert(&client, &[], at(t0())).unwrap();
            });
            assert_eq!((d.verified, d.crl_recalled), (1, 1), "{d:?}");
        }
        // The revocation lookup itself still runs.
        let revoked = leaf(&ca, 9, year);
        assert_eq!(
            reason(v.verify_client_cert(&revoked, &[], at(t0()))),
            Some(FailReason::Revoked)
        );
    }

    #[test]
    fn a_crl_with_a_bad_signature_is_refused_at_load() {
        let ca = ca("lab CA");
        let next = t0() + Duration::days(1);
        // Signed by another key under the lab CA's name: the forgery a CRL check at
        // handshake time used to catch, now caught before anything is served.
        let rogue = self::ca("lab CA");
        match verifier(
            &[&ca],
            vec![crl(&ca, &[], next), crl(&rogue, &[], next)],
            false,
        ) {
            Err(VerifierError::CrlSignature { index, issuer }) => {
                assert_eq!(index, 1);
                assert!(issuer.contains("lab CA"), "{issuer}");
            }
            other => panic!("a CRL signed by another key was accepted: {other:?}"),
        }
        // A flipped bit in the signature of a genuine CRL.
        let mut bent = crl(&ca, &[], next).as_ref().to_vec();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert!(matches!(
            verifier(&[&ca], vec![bent.into()], false),
            Err(VerifierError::CrlSignature { index: 0, .. })
        ));
        // A CRL of an issuer that is not an anchor (an intermediate's, say) cannot be
        // checked at load: it is kept, and checked when a chain names its issuer.
        let elsewhere = self::ca("some intermediate");
        assert!(verifier(&[&ca], vec![crl(&elsewhere, &[], next)], false).is_ok());
        // When two anchors share the name, the CRL need verify under one of them.
        assert!(verifier(&[&rogue, &ca], vec![crl(&ca, &[], next)], false).is_ok());
    }

    #[test]
    fn a_resumed_chain_skips_only_the_signatures_it_already_verified() {
        let ca = ca("lab CA");
        let v = verifier(&[&ca], vec![crl(&ca, &[], t0() + Duration::days(1))], false).unwrap();
        let alice = leaf(&ca, 1, t0() + Duration::days(365));
        let d = delta(|| {
            v.verify_client_cert(&alice, &[], at(t0())).unwrap();
        });
        assert_eq!(d.verified, 1);
        let d = delta(|| {
            v.verify_resumed(&alice, &[], at(t0())).unwrap();
        });
        assert_eq!(
            (d.cache_hits, d.verified, d.chain_recalled, d.crl_recalled),
            (1, 0, 1, 1),
            "{d:?}"
        );
        // Another thread (another worker) has its own cache.
        let v = Arc::new(v);
        let (v2, alice2) = (v.clone(), alice.clone());
        let d = std::thread::spawn(move || {
            delta(|| {
                v2.verify_resumed(&alice2, &[], at(t0())).unwrap();
            })
        })
        .join()
        .unwrap();
        assert_eq!((d.cache_misses, d.verified), (1, 1), "{d:?}");
    }

    #[test]
    fn a_cached_chain_whose_certificate_expired_is_refused_on_resumption() {
        let ca = ca("lab CA");
        let not_after = t0() + Duration::hours(1);
        let v = verifier(&[&ca], vec![], false).unwrap();
        let alice = leaf(&ca, 1, not_after);
        v.verify_client_cert(&alice, &[], at(t0())).unwrap();
        let mut r = None;
        let d =
            delta(|| r = Some(v.verify_resumed(&alice, &[], at(not_after + Duration::seconds(1)))));
        assert_eq!(d.cache_hits, 1);
        assert_eq!(reason(r.unwrap()), Some(FailReason::Expired));
        // Still fine the second before.
        assert!(v
            .verify_resumed(&alice, &[], at(not_after - Duration::seconds(1)))
            .is_ok());
    }

    #[test]
    fn a_cached_chain_revoked_by_a_newly_loaded_crl_is_refused() {
        let ca = ca("lab CA");
        let next = t0() + Duration::days(1);
        let alice = leaf(&ca, 1, t0() + Duration::days(365));
        let before = verifier(&[&ca], vec![crl(&ca, &[], next)], false).unwrap();
        before.verify_client_cert(&alice, &[], at(t0())).unwrap();
        assert!(before.verify_resumed(&alice, &[], at(t0())).is_ok());
        // The refresh builds a new verifier: a new key, so no verdict of the old one.
        let after = verifier(&[&ca], vec![crl(&ca, &[1], next)], false).unwrap();
        let mut r = None;
        let d = delta(|| r = Some(after.verify_resumed(&alice, &[], at(t0()))));
        assert_eq!(d.cache_misses, 1);
        assert_eq!(reason(r.unwrap()), Some(FailReason::Revoked));
        // And a second try, now with a verdict of nothing, is refused again.
        assert_eq!(
            reason(after.verify_resumed(&alice, &[], at(t0()))),
            Some(FailReason::Revoked)
        );
    }

    #[test]
    fn a_reload_with_another_ca_of_the_same_name_refuses_the_cached_chain() {
        let old = ca("lab CA");
        let new = ca("lab CA");
        let alice = leaf(&old, 1, t0() + Duration::days(365));
        let v_old = verifier(&[&old], vec![], false).unwrap();
        v_old.verify_client_cert(&alice, &[], at(t0())).unwrap();
        assert!(v_old.verify_resumed(&alice, &[], at(t0())).is_ok());
        let v_new = verifier(&[&new], vec![], false).unwrap();
        let r = v_new.verify_resumed(&alice, &[], at(t0()));
        assert!(r.is_err(), "a chain of the old CA passed under the new one");
        // The new generation's own clients are served.
        let bob = leaf(&new, 2, t0() + Duration::days(365));
        assert!(v_new.verify_client_cert(&bob, &[], at(t0())).is_ok());
    }

    #[test]
    fn a_full_handshake_with_a_chain_seen_before_skips_only_its_signatures() {
        let ca = ca("lab CA");
        let not_after = t0() + Duration::hours(1);
        let v = verifier(&[&ca], vec![crl(&ca, &[], t0() + Duration::days(1))], false).unwrap();
        let alice = leaf(&ca, 1, not_after);
        let d = delta(|| {
            v.verify_client_cert(&alice, &[], at(t0())).unwrap();
        });
        assert_eq!((d.cache_misses, d.verified), (1, 1), "{d:?}");
        let d = delta(|| {
            v.verify_client_cert(&alice, &[], at(t0())).unwrap();
        });
        assert_eq!(
            (d.cache_hits, d.verified, d.chain_recalled),
            (1, 0, 1),
            "{d:?}"
        );
        // Time is judged anew: the remembered signature does not outlive the leaf.
        let mut r = None;
        let d = delta(|| {
            r = Some(v.verify_client_cert(&alice, &[], at(not_after + Duration::seconds(1))))
        });
        assert_eq!(d.cache_hits, 1);
        assert_eq!(reason(r.unwrap()), Some(FailReason::Expired));
        // Another certificate of the same CA is verified in full.
        let bob = leaf(&ca, 2, not_after);
        let d = delta(|| {
            v.verify_client_cert(&bob, &[], at(t0())).unwrap();
        });
        assert_eq!((d.cache_misses, d.verified), (1, 1), "{d:?}");
        // A leaf of the same subject and serial under a CA that merely has the same
        // name finds nothing remembered and fails.
        let rogue = self::ca("lab CA");
        let forged = leaf(&rogue, 1, not_after);
        let mut r = None;
        let d = delta(|| r = Some(v.verify_client_cert(&forged, &[], at(t0()))));
        assert_eq!((d.cache_hits, d.chain_recalled), (0, 0), "{d:?}");
        assert!(r.unwrap().is_err(), "a forged chain was accepted");
    }

    #[test]
    fn a_vouched_signature_answers_only_for_its_exact_inputs() {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let pk = key.public_key().as_ref();
        let alg = *remembered_algorithms()
            .iter()
            .find(|a| {
                a.signature_alg_id() == rustls_pki_types::alg_id::ECDSA_SHA256
                    && a.public_key_alg_id() == rustls_pki_types::alg_id::ECDSA_P256
            })
            .unwrap();
        let (msg, other) = (&b"a leaf's tbsCertificate"[..], &b"another leaf's"[..]);
        let sig = key.sign(&rng, msg).unwrap().as_ref().to_vec();
        let other_sig = key.sign(&rng, other).unwrap().as_ref().to_vec();
        let mut forged = sig.clone();
        *forged.last_mut().unwrap() ^= 1;
        // (accepted, verified by aws-lc-rs, answered from the memo) under `vouched`.
        let check = |vouched: &[u8], m: &[u8], s: &[u8]| {
            let mode = Mode::Vouched(vec![sig_digest(alg, pk, msg, vouched)]);
            WORKER.with(|w| w.borrow_mut().scope = Some(mode));
            let before = stats();
            let ok = alg.verify_signature(pk, m, s).is_ok();
            WORKER.with(|w| w.borrow_mut().scope = None);
            let after = stats();
            (
                ok,
                after.verified - before.verified,
                after.chain_recalled - before.chain_recalled,
            )
        };
        assert_eq!(check(&sig, msg, &sig), (true, 0, 1), "the vouched tuple");
        // Whatever is vouched for is taken on trust for exactly those bytes (which is
        // why only what aws-lc-rs accepted is ever recorded), and for nothing else.
        assert_eq!(check(&forged, msg, &forged), (true, 0, 1));
        assert_eq!(
            check(&sig, msg, &forged),
            (false, 1, 0),
            "another signature"
        );
        assert_eq!(check(&sig, other, &sig), (false, 1, 0), "another message");
        assert_eq!(
            check(&sig, other, &other_sig),
            (true, 1, 0),
            "checked for real"
        );
        // Outside a verifier call nothing is recalled.
        let before = stats();
        assert!(alg.verify_signature(pk, msg, &forged).is_err());
        assert_eq!(stats().chain_recalled, before.chain_recalled);
    }

    #[test]
    fn the_identity_parsed_in_verification_answers_only_for_the_same_leaf() {
        let ca = ca("lab CA");
        let v = verifier(&[&ca], vec![], false).unwrap();
        let year = t0() + Duration::days(365);
        let named = |serial: u8, uri: &str| {
            let mut p = leaf_params(serial, year);
            p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
            p.signed_by(&KeyPair::generate().unwrap(), &ca.issuer)
                .unwrap()
                .der()
                .clone()
        };
        let alice = named(1, "spiffe://lake.example/a");
        let bob = named(2, "spiffe://lake.example/b");
        let spiffe = |der: &CertificateDer<'_>| identity_of(der).unwrap().spiffe;
        v.verify_client_cert(&alice, &[], at(t0())).unwrap();
        // Asked for another leaf than the one just verified: that leaf's own identity.
        assert_eq!(spiffe(&bob).as_deref(), Some("spiffe://lake.example/b"));
        v.verify_client_cert(&alice, &[], at(t0())).unwrap();
        assert_eq!(spiffe(&alice).as_deref(), Some("spiffe://lake.example/a"));
        // Taken once; asked again, it is parsed again, the same.
        assert_eq!(spiffe(&alice).as_deref(), Some("spiffe://lake.example/a"));
        assert_eq!(
            identity_of(&alice).unwrap(),
            Identity::from_der(&alice).unwrap()
        );
    }

    #[test]
    fn a_forged_chain_with_the_same_subject_is_not_a_cache_hit() {
        let ca = ca("lab CA");
        let v = verifier(&[&ca], vec![], false).unwrap();
        let year = t0() + Duration::days(365);
        let alice = leaf(&ca, 1, year);
        v.verify_client_cert(&alice, &[], at(t0())).unwrap();
        // Self-signed, same subject, SAN and serial as the verified leaf.
        let key = KeyPair::generate().unwrap();
        let self_signed = leaf_params(1, year)
            .self_signed(&key)
            .unwrap()
            .der()
            .clone();
        // Signed by a key that merely claims the lab CA's name.
        let rogue = self::ca("lab CA");
        let by_rogue = leaf(&rogue, 1, year);
        for forged in [self_signed, by_rogue] {
            let mut r = None;
            let d = delta(|| r = Some(v.verify_resumed(&forged, &[], at(t0()))));
            assert_eq!((d.cache_hits, d.chain_recalled), (0, 0), "{d:?}");
            assert!(r.unwrap().is_err(), "a forged chain was accepted");
        }
        // Nor does sending the genuine leaf after a forged one lend it trust.
        let rogue_leaf = leaf(&rogue, 1, year);
        assert!(v
            .verify_resumed(&rogue_leaf, std::slice::from_ref(&alice), at(t0()))
            .is_err());
    }

    #[test]
    fn a_stale_crl_under_refuse_still_refuses_a_cached_chain() {
        let ca = ca("lab CA");
        let next = t0() + Duration::hours(1);
        let alice = leaf(&ca, 1, t0() + Duration::days(365));
        let refuse = verifier(&[&ca], vec![crl(&ca, &[], next)], true).unwrap();
        refuse.verify_client_cert(&alice, &[], at(t0())).unwrap();
        assert!(refuse.verify_resumed(&alice, &[], at(t0())).is_ok());
        let mut r = None;
        let d =
            delta(|| r = Some(refuse.verify_resumed(&alice, &[], at(next + Duration::seconds(1)))));
        assert_eq!(d.cache_hits, 1);
        assert_eq!(reason(r.unwrap()), Some(FailReason::CrlStale));
        // Under "serve" the same stale CRL still answers.
        let serve = verifier(&[&ca], vec![crl(&ca, &[], next)], false).unwrap();
        serve.verify_client_cert(&alice, &[], at(t0())).unwrap();
        assert!(serve
            .verify_resumed(&alice, &[], at(next + Duration::seconds(1)))
            .is_ok());
    }

    #[test]
    fn a_client_of_an_issuer_without_a_crl_is_refused_as_before() {
        // With CRLs configured, a certificate whose revocation status no CRL gives is
        // refused (webpki's default), cached or not.
        let a = ca("lab CA");
        let b = ca("second CA");
        let v = verifier(
            &[&a, &b],
            vec![crl(&a, &[], t0() + Duration::days(1))],
            false,
        )
        .unwrap();
        let carol = leaf(&b, 3, t0() + Duration::days(365));
        assert!(v.verify_client_cert(&carol, &[], at(t0())).is_err());
        assert!(v.verify_resumed(&carol, &[], at(t0())).is_err());
    }

    #[test]
    fn the_chain_cache_is_bounded_and_forgets_the_oldest_first() {
        let mut c = ChainCache::default();
        let key = |i: u32| {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            (d, 7)
        };
        for i in 0..(CHAIN_CACHE_ENTRIES as u32 + 10) {
            c.insert(key(i), Box::new([]));
        }
        assert_eq!(c.map.len(), CHAIN_CACHE_ENTRIES);
        assert_eq!(c.order.len(), CHAIN_CACHE_ENTRIES);
        assert!(c.get(&key(9)).is_none());
        assert!(c.get(&key(10)).is_some());
        // Putting a verdict back does not grow the order.
        c.insert(key(10), Box::new([]));
        assert_eq!(c.order.len(), CHAIN_CACHE_ENTRIES);
    }
}
