//! TLS policy: turns the `[tls]` section into a rustls `ServerConfig` on the aws-lc-rs
//! provider, and classifies handshake failures into the fixed set of metric reasons.
//!
//! Owns: version and suite selection, client-certificate verification (trust anchors,
//! CRLs), session resumption. Must not touch sockets or the runtime.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, ProducesTickets};
use rustls::{
    CertificateError, Error as RustlsError, PeerIncompatible, RootCertStore, ServerConfig,
    SupportedCipherSuite,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

pub use crate::reason::FailReason;
use crate::tls::resume::VerifyingTicketer;
use crate::tls::settings::{CrlStale, Tls, TlsVersion};
use crate::tls::tickets::FileTicketer;
use crate::tls::verify::{ClientVerifier, VerifierError};

/// An error building the TLS policy; names the config file, the key and what went wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct PolicyError {
    /// The configuration file.
    pub file: String,
    /// The key whose value is at fault, e.g. `tls.key`.
    pub key: &'static str,
    /// What was expected and what was found.
    pub message: String,
}

/// The built policy: the rustls config plus what `lakegate check` prints.
pub struct TlsPolicy {
    /// The config every new handshake uses.
    pub server_config: Arc<ServerConfig>,
    /// Human summary of the effective policy.
    pub summary: PolicySummary,
    /// Not-after of the server leaf certificate (unix seconds).
    pub server_cert_not_after: i64,
    /// The in-process ticketer, carried across reloads so tickets issued before a
    /// reload still resume after it (None when tickets are off or come from a file).
    pub ticketer: Option<Arc<dyn ProducesTickets>>,
    /// What each CRL file says, for freshness checks.
    pub crls: Vec<CrlInfo>,
    /// The client verifier of this policy: resumed sessions and open connections are
    /// re-judged with it (anchors, CRLs, time), as a full handshake would be.
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// One loaded CRL: where it came from, when its issuer promised the next one, and the
/// serials it revokes.
#[derive(Debug, Clone)]
pub struct CrlInfo {
    /// The file it was read from.
    pub file: std::path::PathBuf,
    /// The issuer's distinguished name (as [`crate::tls::identity::Identity::issuer`]).
    pub issuer: String,
    /// nextUpdate, unix seconds, if the CRL has one.
    pub next_update: Option<i64>,
    /// Revoked serials, lowercase hex as [`crate::tls::identity::Identity::serial`].
    pub revoked: Vec<String>,
}

impl CrlInfo {
    /// Whether the CRL is past its nextUpdate at `now` (unix seconds).
    pub fn is_stale(&self, now: i64) -> bool {
        self.next_update.is_some_and(|t| now > t)
    }
}

/// The effective policy as `lakegate check` prints it.
#[derive(Debug, Clone)]
pub struct PolicySummary {
    /// Enabled protocol versions.
    pub versions: Vec<&'static str>,
    /// Enabled cipher suites, in preference order.
    pub suites: Vec<String>,
    /// Key exchange groups, in preference order.
    pub groups: Vec<String>,
    /// Subjects of the client trust anchors.
    pub client_ca_subjects: Vec<String>,
    /// Number of CRLs loaded.
    pub crl_count: usize,
    /// Server certificate subject and validity.
    pub server_cert: String,
    /// Whether session tickets are issued.
    pub session_tickets: bool,
    /// Where ticket keys come from, when tickets are on.
    pub ticket_keys: String,
    /// What the CRLs say: file, revoked count, nextUpdate, stale or not.
    pub crls: Vec<String>,
}

impl PolicySummary {
    /// Render the summary for `lakegate check`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "tls versions:        {}", self.versions.join(", "));
        let _ = writeln!(s, "cipher suites:       {}", self.suites.join(", "));
        let _ = writeln!(s, "key exchange groups: {}", self.groups.join(", "));
        let _ = writeln!(s, "client certificate:  required");
        for subj in &self.client_ca_subjects {
            let _ = writeln!(s, "client CA:           {subj}");
        }
        let _ = writeln!(s, "CRLs:                {}", self.crl_count);
        for crl in &self.crls {
            let _ = writeln!(s, "  {crl}");
        }
        let _ = writeln!(s, "server certificate:  {}", self.server_cert);
        if self.session_tickets {
            let _ = writeln!(s, "session resumption:  tickets, {}", self.ticket_keys);
        } else {
            let _ = writeln!(s, "session resumption:  off");
        }
        s
    }
}

/// What a policy is built from: the `[tls]` section and the file it came from (named
/// in errors). The TLS layer sees only this, never the whole configuration, so it sits
/// below `config`; [`crate::config::Config::tls_source`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The configuration file, for error messages.
    pub path: &'a Path,
    /// Its `[tls]` section.
    pub tls: &'a Tls,
}

fn err(cfg: &Source<'_>, key: &'static str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        file: cfg.path.display().to_string(),
        key,
        message: message.into(),
    }
}

/// The aws-lc-rs provider narrowed to the suites the policy allows: TLS 1.3 suites, and
/// for TLS 1.2 only ECDHE key exchange with an AEAD (GCM or ChaCha20-Poly1305).
pub fn provider(cfg: &Source<'_>) -> Result<CryptoProvider, PolicyError> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let aead_ecdhe = |s: &SupportedCipherSuite| match s {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(_) => {
            let name = suite_name(s);
            name.starts_with("TLS_ECDHE_") && (name.contains("_GCM_") || name.contains("CHACHA20"))
        }
    };
    provider.cipher_suites.retain(aead_ecdhe);
    if !cfg.tls.cipher_suites.is_empty() {
        let known: Vec<String> = provider.cipher_suites.iter().map(suite_name).collect();
        for want in &cfg.tls.cipher_suites {
            if !known.iter().any(|k| k.eq_ignore_ascii_case(want)) {
                return Err(err(
                    cfg,
                    "tls.cipher_suites",
                    format!(
                        "unknown or disallowed suite {want:?} (expected one of {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        // Keep the operator's order: it is the server's preference order.
        let mut ordered = Vec::new();
        for want in &cfg.tls.cipher_suites {
            if let Some(s) = provider
                .cipher_suites
                .iter()
                .find(|s| suite_name(s).eq_ignore_ascii_case(want))
            {
                ordered.push(*s);
            }
        }
        provider.cipher_suites = ordered;
    }
    let has13 = cfg.tls.versions.contains(&TlsVersion::Tls13);
    let has12 = cfg.tls.versions.contains(&TlsVersion::Tls12);
    provider.cipher_suites.retain(|s| match s {
        SupportedCipherSuite::Tls13(_) => has13,
        SupportedCipherSuite::Tls12(_) => has12,
    });
    if provider.cipher_suites.is_empty() {
        return Err(err(
            cfg,
            "tls.cipher_suites",
            "no cipher suite left for the enabled tls.versions",
        ));
    }
    Ok(provider)
}

/// The IANA-style name of a suite, e.g. `TLS13_AES_128_GCM_SHA256`.
pub fn suite_name(s: &SupportedCipherSuite) -> String {
    format!("{:?}", s.suite())
}

fn read_file(cfg: &Source<'_>, key: &'static str, path: &Path) -> Result<Vec<u8>, PolicyError> {
    std::fs::read(path).map_err(|e| err(cfg, key, format!("cannot read {}: {e}", path.display())))
}

/// Load the server certificate chain (PEM).
pub fn load_certs(cfg: &Source<'_>) -> Result<Vec<CertificateDer<'static>>, PolicyError> {
    let pem = read_file(cfg, "tls.cert", &cfg.tls.cert)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            err(
                cfg,
                "tls.cert",
                format!("{}: bad PEM: {e}", cfg.tls.cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            cfg,
            "tls.cert",
            format!(
                "{}: expected a PEM certificate chain, found no CERTIFICATE block",
                cfg.tls.cert.display()
            ),
        ));
    }
    Ok(certs)
}

fn load_key(cfg: &Source<'_>) -> Result<PrivateKeyDer<'static>, PolicyError> {
    let pem = read_file(cfg, "tls.key", &cfg.tls.key)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        err(
            cfg,
            "tls.key",
            format!(
                "{}: expected a PEM private key (PKCS#8, SEC1 or PKCS#1): {e}",
                cfg.tls.key.display()
            ),
        )
    })
}

/// The client trust anchors: the store, their certificates, their subjects.
type ClientRoots = (RootCertStore, Vec<CertificateDer<'static>>, Vec<String>);

/// Load the client trust anchors.
fn load_client_roots(cfg: &Source<'_>) -> Result<ClientRoots, PolicyError> {
    let pem = read_file(cfg, "tls.client_ca", &cfg.tls.client_ca)?;
    let mut roots = RootCertStore::empty();
    let mut anchors = Vec::new();
    let mut subjects = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            err(
                cfg,
                "tls.client_ca",
                format!("{}: bad PEM: {e}", cfg.tls.client_ca.display()),
            )
        })?;
        if let Ok((_, x)) = x509_parser::parse_x509_certificate(&cert) {
            subjects.push(x.subject().to_string());
        }
        anchors.push(cert.clone());
        roots.add(cert).map_err(|e| {
            err(
                cfg,
                "tls.client_ca",
                format!(
                    "{}: unusable trust anchor: {e}",
                    cfg.tls.client_ca.display()
                ),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(err(
            cfg,
            "tls.client_ca",
            format!(
                "{}: expected at least one PEM CA certificate",
                cfg.tls.client_ca.display()
            ),
        ));
    }
    Ok((roots, anchors, subjects))
}

/// Load CRLs, PEM or DER, each with the file it came from.
pub fn load_crls(
    cfg: &Source<'_>,
) -> Result<Vec<(std::path::PathBuf, CertificateRevocationListDer<'static>)>, PolicyError> {
    let mut out = Vec::new();
    for path in &cfg.tls.crl {
        let bytes = read_file(cfg, "tls.crl", path)?;
        if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
            let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| err(cfg, "tls.crl", format!("{}: bad PEM: {e}", path.display())))?;
            if crls.is_empty() {
                return Err(err(
                    cfg,
                    "tls.crl",
                    format!("{}: no X509 CRL block", path.display()),
                ));
            }
            out.extend(crls.into_iter().map(|c| (path.clone(), c)));
        } else {
            out.push((path.clone(), CertificateRevocationListDer::from(bytes)));
        }
    }
    Ok(out)
}

/// Read what a CRL says (issuer, nextUpdate, revoked serials).
fn crl_info(
    cfg: &Source<'_>,
    file: &Path,
    der: &CertificateRevocationListDer<'_>,
) -> Result<CrlInfo, PolicyError> {
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| {
        err(
            cfg,
            "tls.crl",
            format!("{}: not an X.509 CRL: {e}", file.display()),
        )
    })?;
    Ok(CrlInfo {
        file: file.to_path_buf(),
        issuer: crl.issuer().to_string(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| crate::tls::identity::serial_hex(r.raw_serial()))
            .collect(),
    })
}

/// The client verifier: a certificate is always required (there is no mode that
/// accepts an unauthenticated client), chained to `client_ca`, checked against the CRLs
/// (each CRL's signature checked here, once, against the CA that issued it), then the
/// identity rules ([`crate::tls::identity::Identity::from_der`]).
fn client_verifier(
    cfg: &Source<'_>,
    provider: &CryptoProvider,
    roots: RootCertStore,
    anchors: &[CertificateDer<'static>],
    crls: Vec<(std::path::PathBuf, CertificateRevocationListDer<'static>)>,
) -> Result<Arc<ClientVerifier>, PolicyError> {
    let files: Vec<std::path::PathBuf> = crls.iter().map(|(f, _)| f.clone()).collect();
    let file = |i: usize| {
        files
            .get(i)
            .map_or(String::new(), |f| f.display().to_string())
    };
    let v = ClientVerifier::new(
        provider,
        roots,
        anchors,
        crls.into_iter().map(|(_, d)| d).collect(),
        cfg.tls.crl_stale == CrlStale::Refuse,
    )
    .map_err(|e| match &e {
        VerifierError::CrlSignature { index, .. } | VerifierError::CrlEncoding { index, .. } => {
            err(cfg, "tls.crl", format!("{}: {e}", file(*index)))
        }
        VerifierError::Build(_) => err(cfg, "tls.crl", e.to_string()),
    })?;
    Ok(Arc::new(v))
}

/// Build the whole policy from a validated config, with a fresh in-process ticketer.
pub fn build(cfg: &Source<'_>) -> Result<TlsPolicy, PolicyError> {
    build_with(cfg, None)
}

/// Build the whole policy; `ticketer` is the running generation's in-process
/// ticketer, reused so a reload does not invalidate every outstanding ticket.
pub fn build_with(
    cfg: &Source<'_>,
    ticketer: Option<Arc<dyn ProducesTickets>>,
) -> Result<TlsPolicy, PolicyError> {
    let provider = Arc::new(provider(cfg)?);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls13, &rustls::version::TLS13),
        (TlsVersion::Tls12, &rustls::version::TLS12),
    ]
    .into_iter()
    .filter(|(v, _)| cfg.tls.versions.contains(v))
    .map(|(_, p)| p)
    .collect();
    let certs = load_certs(cfg)?;
    let key = load_key(cfg)?;
    let (roots, anchors, client_ca_subjects) = load_client_roots(cfg)?;
    let loaded = load_crls(cfg)?;
    let crls = loaded
        .iter()
        .map(|(f, der)| crl_info(cfg, f, der))
        .collect::<Result<Vec<_>, _>>()?;
    let verifier = client_verifier(cfg, &provider, roots, &anchors, loaded)?;

    let (server_cert, not_after) = match x509_parser::parse_x509_certificate(&certs[0]) {
        Ok((_, x)) => (
            format!("{} (not after {})", x.subject(), x.validity().not_after),
            x.validity().not_after.timestamp(),
        ),
        Err(e) => {
            return Err(err(
                cfg,
                "tls.cert",
                format!("{}: not an X.509 certificate: {e}", cfg.tls.cert.display()),
            ))
        }
    };

    let mut sc = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| err(cfg, "tls.versions", e.to_string()))?
        .with_client_cert_verifier(verifier.clone() as Arc<dyn ClientCertVerifier>)
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            RustlsError::InconsistentKeys(_) => err(
                cfg,
                "tls.key",
                format!(
                    "{} does not match the certificate in tls.cert ({})",
                    cfg.tls.key.display(),
                    cfg.tls.cert.display()
                ),
            ),
            e => err(
                cfg,
                "tls.key",
                format!("{}: unusable key: {e}", cfg.tls.key.display()),
            ),
        })?;
    // No 0-RTT: early data is replayable, and an upload must never be applied twice.
    sc.max_early_data_size = 0;
    // After the handshake, TLS 1.3 records are carried by tls::record through rustls's
    // KernelConnection, which needs the traffic secrets.
    sc.enable_secret_extraction = true;
    let mut in_process = None;
    if cfg.tls.session_tickets {
        let keys: Arc<dyn ProducesTickets> = match &cfg.tls.ticket_key_file {
            Some(path) => {
                // Checked again here, not only in config: the file may have changed
                // since, and a reload re-reads it.
                crate::secrets::check_private_file(path)
                    .map_err(|e| err(cfg, "tls.ticket_key_file", e))?;
                Arc::new(
                    FileTicketer::from_file(path)
                        .map_err(|e| err(cfg, "tls.ticket_key_file", e))?,
                )
            }
            None => {
                let t = match ticketer {
                    Some(t) => t,
                    None => rustls::crypto::aws_lc_rs::Ticketer::new()
                        .map_err(|e| err(cfg, "tls.session_tickets", e.to_string()))?,
                };
                in_process = Some(t.clone());
                t
            }
        };
        sc.ticketer = Arc::new(VerifyingTicketer::new(
            keys,
            verifier.clone(),
            cfg.tls.ticket_lifetime.as_secs(),
            sc.time_provider.clone(),
        ));
        sc.send_tls13_tickets = 2;
        // Tickets carry the session (and the client certificate chain) in the client;
        // a server-side cache would be one more lock shared by every worker.
        sc.session_storage = Arc::new(NoServerSessionStorage {});
    } else {
        sc.send_tls13_tickets = 0;
        sc.session_storage = Arc::new(NoServerSessionStorage {});
    }

    let summary = PolicySummary {
        versions: versions
            .iter()
            .map(|v| match v.version {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                _ => "TLSv1.2",
            })
            .collect(),
        suites: provider.cipher_suites.iter().map(suite_name).collect(),
        groups: provider
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect(),
        client_ca_subjects,
        crl_count: cfg.tls.crl.len(),
        server_cert,
        session_tickets: cfg.tls.session_tickets,
        ticket_keys: match &cfg.tls.ticket_key_file {
            Some(p) => format!("shared keys from {}", p.display()),
            None => "keys of this process (not shared)".into(),
        },
        crls: crls
            .iter()
            .map(|c| {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let next = c
                    .next_update
                    .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                    .map_or("none".to_string(), |t| t.to_string());
                format!(
                    "{}: issuer {}, {} revoked, nextUpdate {next}{}",
                    c.file.display(),
                    c.issuer,
                    c.revoked.len(),
                    if c.is_stale(now) {
                        format!(" (STALE; crl_stale = {:?})", cfg.tls.crl_stale)
                    } else {
                        String::new()
                    }
                )
            })
            .collect(),
    };
    Ok(TlsPolicy {
        server_config: Arc::new(sc),
        summary,
        server_cert_not_after: not_after,
        ticketer: in_process,
        crls,
        verifier,
    })
}

// The enum is a plain label set in `crate::reason`, so telemetry can count it without
// importing this module; the mapping from rustls errors stays with TLS.
impl FailReason {
    /// Classify a rustls error from a failed handshake.
    pub fn of(e: &RustlsError) -> FailReason {
        match e {
            RustlsError::NoCertificatesPresented => FailReason::NoClientCert,
            RustlsError::InvalidCertificate(ce) => match ce {
                CertificateError::UnknownIssuer => FailReason::UnknownCa,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => FailReason::Expired,
                CertificateError::Revoked => FailReason::Revoked,
                CertificateError::ExpiredRevocationList
                | CertificateError::ExpiredRevocationListContext { .. } => FailReason::CrlStale,
                CertificateError::BadSignature
                | CertificateError::UnsupportedSignatureAlgorithmContext { .. } => {
                    FailReason::BadSignature
                }
                CertificateError::Other(o)
                    if o.0
                        .downcast_ref::<crate::tls::identity::IdentityError>()
                        .is_some() =>
                {
                    FailReason::InvalidIdentity
                }
                _ => FailReason::UnknownCa,
            },
            RustlsError::PeerIncompatible(
                PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::Tls13RequiredForQuic,
            ) => FailReason::UnsupportedVersion,
            RustlsError::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon) => {
                FailReason::UnsupportedVersion
            }
            RustlsError::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            )
            | RustlsError::PeerMisbehaved(rustls::PeerMisbehaved::InvalidCertCompression) => {
                FailReason::BadSignature
            }
            RustlsError::InvalidCertRevocationList(_) => FailReason::Revoked,
            _ => FailReason::Protocol,
        }
    }
}
