//! `lakegate pki`: test and lab certificates — a CA, a server certificate, client
//! certificates (SPIFFE URI SANs) and CRLs, all made with rcgen on aws-lc-rs.
//!
//! This module owns the layout of a PKI directory (`ca.crt`, `ca.key`, `server.crt`,
//! `server-chain.crt`, `server.key`, `NAME.crt`/`NAME.key`/`NAME.serial`, `crl.pem`,
//! `crl.number`) and nothing else: it never touches the data path, and nothing in the
//! data path depends on it. It is a lab tool, not a CA: keys are written unencrypted
//! (mode 0600) and there is no issuance database beyond the `NAME.serial` files.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevokedCertParams, RsaKeySize, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;

pub mod jwt;

/// How long a CA made by `init` lives at least: leaves issued later (default 365 days)
/// must not outlive it, so it gets ten years or `--days`, whichever is longer.
const CA_MIN_DAYS: u32 = 3650;

/// File stems that belong to the CA and the server; a client with one of these names
/// would overwrite them.
const RESERVED_NAMES: &[&str] = &["ca", "server", "server-chain", "crl"];

/// The `lakegate pki` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum PkiCommand {
    /// Make a CA and a server certificate in DIR
    Init {
        /// Directory to write into (created if missing; must not already hold a CA).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Common name of the CA.
        #[arg(long, default_value = "lakegate test CA")]
        ca_name: String,
        /// The server certificate's names, key type and validity.
        #[command(flatten)]
        cert: ServerCertArgs,
    },
    /// Make a client certificate signed by DIR's CA
    Client {
        /// Directory holding ca.crt and ca.key.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Client name: the certificate's CN and the stem of NAME.crt / NAME.key / NAME.serial.
        name: String,
        /// SPIFFE ID to put in a URI SAN, e.g. spiffe://lake.example/trainer.
        #[arg(long)]
        spiffe: Option<String>,
        /// DNS SAN (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Make a certificate that has already expired (valid from now-30d to now-1d).
        #[arg(long)]
        expired: bool,
        /// Key type of the client key.
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key_type: KeyType,
        /// Validity in days (ignored with --expired).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Make another server certificate signed by DIR's CA (for certificate rotation)
    Server {
        /// Directory holding ca.crt and ca.key.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// File stem: writes NAME.crt, NAME-chain.crt and NAME.key (never over existing files).
        name: String,
        /// The server certificate's names, key type and validity.
        #[command(flatten)]
        cert: ServerCertArgs,
    },
    /// Make (or replace) DIR/crl.pem revoking the named clients
    Crl {
        /// Directory holding ca.crt, ca.key and the clients' NAME.serial files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Client to revoke (repeatable). The new CRL lists exactly these clients.
        #[arg(long = "revoke")]
        revoke: Vec<String>,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Make a CRL already past its nextUpdate (thisUpdate now-2d, nextUpdate
        /// now-1d), to test the `crl_stale` policy.
        #[arg(long)]
        stale: bool,
    },
    /// Mint a test access token (JWT) and write or extend the JWKS that verifies it;
    /// the token is printed on stdout
    Token(Box<jwt::TokenArgs>),
    /// Print a lab config naming DIR's certificates (absolute paths), from the template
    /// that `lakegate demo` and the tests use; the bench scripts start lakegate with it
    Config(Box<LabConfigArgs>),
}

/// `lakegate pki config`: the lab template ([`crate::lab::LabConfig`]) from the command
/// line. Lines are TOML as written, added to their section in order.
#[derive(clap::Args, Debug)]
pub struct LabConfigArgs {
    /// Directory holding the lab PKI (`server.crt`, `server.key`, `ca.crt`, `crl.pem`).
    #[arg(long)]
    dir: PathBuf,
    /// `[server] listen`, e.g. 127.0.0.1:8443.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// `[admin] listen`; without it the admin endpoint is off.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// A line added to `[server]` (repeatable), e.g. 'workers = 1'.
    #[arg(long = "server", value_name = "LINE")]
    server: Vec<String>,
    /// A line added to `[tls]` (repeatable).
    #[arg(long = "tls", value_name = "LINE")]
    tls: Vec<String>,
    /// A line of `[backend]` (repeatable), e.g. 'kind = "forward"'.
    #[arg(long = "backend", value_name = "LINE", required = true)]
    backend: Vec<String>,
    /// A line added to the rule admitting spiffe://lake.example/trainer/* (repeatable),
    /// e.g. 'buckets = ["datasets"]'.
    #[arg(long = "authz", value_name = "LINE")]
    authz: Vec<String>,
    /// Leave `[tls] crl` out (a PKI made without `lakegate pki crl`).
    #[arg(long)]
    no_crl: bool,
}

/// The lab config `args` describe.
pub fn lab_config(args: &LabConfigArgs) -> anyhow::Result<String> {
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let mut c = crate::lab::LabConfig::new(args.listen);
    c.pki = Some(dir);
    c.crl = !args.no_crl;
    c.server.clone_from(&args.server);
    c.tls.clone_from(&args.tls);
    c.admin = args.admin;
    c.backend.clone_from(&args.backend);
    c.authz = crate::lab::trainer_rule(&args.authz);
    Ok(c.render())
}

/// What a server certificate says, for `init` and `server`.
#[derive(clap::Args, Debug)]
pub struct ServerCertArgs {
    /// DNS SAN of the server certificate (repeatable); the first is also its CN.
    #[arg(long = "dns", default_values = ["localhost"])]
    dns: Vec<String>,
    /// IP SAN of the server certificate (repeatable).
    #[arg(long = "ip", default_values = ["127.0.0.1"])]
    ip: Vec<IpAddr>,
    /// Key type of the server key (with `init`, of the CA's too).
    #[arg(long, value_enum, default_value = "ecdsa-p256")]
    key_type: KeyType,
    /// Validity of the server certificate in days (a CA made by `init` gets at least 3650).
    #[arg(long, default_value_t = 825)]
    days: u32,
}

/// Key algorithm for a generated key pair.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on P-256, signing with SHA-256.
    EcdsaP256,
    /// RSA 2048-bit, PKCS#1 v1.5 signatures with SHA-256.
    #[value(alias = "rsa-2048")]
    Rsa2048,
}

impl KeyType {
    fn generate(self) -> anyhow::Result<KeyPair> {
        let key = match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            // rcgen on aws-lc-rs generates RSA itself; the explicit size keeps us from
            // depending on its default.
            KeyType::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        };
        key.map_err(|e| anyhow!("generating a {self:?} key: {e}"))
    }
}

/// Runs one `lakegate pki` subcommand.
pub fn run(cmd: &PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init { dir, ca_name, cert } => {
            init(dir, ca_name, &cert.dns, &cert.ip, cert.key_type, cert.days)
        }
        PkiCommand::Client {
            dir,
            name,
            spiffe,
            dns,
            expired,
            key_type,
            days,
        } => client(
            dir,
            name,
            spiffe.as_deref(),
            dns,
            *expired,
            *key_type,
            *days,
        ),
        PkiCommand::Server { dir, name, cert } => {
            server(dir, name, &cert.dns, &cert.ip, cert.key_type, cert.days)
        }
        PkiCommand::Crl {
            dir,
            revoke,
            days,
            stale,
        } => crl(dir, revoke, *days, *stale),
        PkiCommand::Token(a) => {
            println!("{}", jwt::run(a)?);
            Ok(())
        }
        PkiCommand::Config(a) => {
            print!("{}", lab_config(a)?);
            Ok(())
        }
    }
}

/// Makes a CA (`ca.crt`, `ca.key`) and a server certificate signed by it (`server.crt`
/// with the leaf only, `server-chain.crt` with leaf then CA, `server.key`) in `dir`.
///
/// The server certificate has `dns` and `ip` as SANs, the first DNS name (else the
/// first IP) as CN, and EKU serverAuth. Refuses to run if `dir` already holds any of
/// these files, so a lab CA is never replaced by accident.
pub fn init(
    dir: &Path,
    ca_name: &str,
    dns: &[String],
    ip: &[IpAddr],
    key_type: KeyType,
    days: u32,
) -> anyhow::Result<()> {
    check_days(days)?;
    if dns.is_empty() && ip.is_empty() {
        bail!("the server certificate needs at least one --dns or --ip");
    }
    for f in [
        "ca.key",
        "ca.crt",
        "server.key",
        "server.crt",
        "server-chain.crt",
    ] {
        let p = dir.join(f);
        if p.exists() {
            bail!("{} exists; use a new --dir", p.display());
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let now = OffsetDateTime::now_utc();

    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.distinguished_name
        .push(DnType::OrganizationName, "lakegate");
    // Path length 0: this CA signs leaves only, never another CA.
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.serial_number = Some(random_serial()?);
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(i64::from(days.max(CA_MIN_DAYS)));
    let ca_key = key_type.generate()?;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| anyhow!("signing the CA certificate: {e}"))?;

    let issuer = Issuer::new(ca, ca_key);
    let (srv_cert, srv_key) = server_cert(&issuer, dns, ip, key_type, days, now)?;

    // Keys first: if writing stops half way, the directory is refused by the next
    // init instead of holding certificates whose keys were never written.
    write_file(&dir.join("ca.key"), &issuer.key().serialize_pem(), true)?;
    write_file(&dir.join("ca.crt"), &ca_cert.pem(), false)?;
    write_file(&dir.join("server.key"), &srv_key.serialize_pem(), true)?;
    write_file(&dir.join("server.crt"), &srv_cert.pem(), false)?;
    let chain = format!("{}{}", srv_cert.pem(), ca_cert.pem());
    write_file(&dir.join("server-chain.crt"), &chain, false)?;
    Ok(())
}

/// A server leaf signed by `issuer`: `dns` and `ip` as SANs, the first DNS name (else
/// the first IP) as CN, EKU serverAuth.
fn server_cert(
    issuer: &Issuer<'_, KeyPair>,
    dns: &[String],
    ip: &[IpAddr],
    key_type: KeyType,
    days: u32,
    now: OffsetDateTime,
) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let server_cn = match (dns.first(), ip.first()) {
        (Some(d), _) => d.clone(),
        (None, Some(i)) => i.to_string(),
        (None, None) => bail!("the server certificate needs at least one --dns or --ip"),
    };
    let mut srv = CertificateParams::default();
    srv.distinguished_name = rcgen::DistinguishedName::new();
    srv.distinguished_name.push(DnType::CommonName, server_cn);
    srv.subject_alt_names = dns
        .iter()
        .map(|d| Ok(SanType::DnsName(ia5(d, "--dns")?)))
        .chain(ip.iter().map(|i| Ok(SanType::IpAddress(*i))))
        .collect::<anyhow::Result<_>>()?;
    srv.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    srv.use_authority_key_identifier_extension = true;
    srv.serial_number = Some(random_serial()?);
    srv.not_before = now - Duration::hours(1);
    srv.not_after = now + Duration::days(i64::from(days));
    let srv_key = key_type.generate()?;
    let srv_cert = srv
        .signed_by(&srv_key, issuer)
        .map_err(|e| anyhow!("signing the server certificate: {e}"))?;
    Ok((srv_cert, srv_key))
}

/// Makes another server certificate `NAME.crt` (leaf), `NAME-chain.crt` (leaf then CA)
/// and `NAME.key` signed by the CA in `dir`, for rotating the server certificate:
/// write it under a new name, then move it over the files the config names.
pub fn server(
    dir: &Path,
    name: &str,
    dns: &[String],
    ip: &[IpAddr],
    key_type: KeyType,
    days: u32,
) -> anyhow::Result<()> {
    check_days(days)?;
    check_client_name(name).map_err(|_| {
        anyhow!("server name {name:?}: expected letters, digits, '-', '_', '.', '@', not a reserved name")
    })?;
    for f in [
        format!("{name}.key"),
        format!("{name}.crt"),
        format!("{name}-chain.crt"),
    ] {
        let p = dir.join(f);
        if p.exists() {
            bail!("{} exists; pick another name", p.display());
        }
    }
    let ca = Ca::load(dir)?;
    let now = OffsetDateTime::now_utc();
    if now + Duration::days(i64::from(days)) > ca.not_after {
        bail!("the server certificate would outlive the CA; use fewer --days");
    }
    let (cert, key) = server_cert(&ca.issuer, dns, ip, key_type, days, now)?;
    write_file(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    write_file(&dir.join(format!("{name}.crt")), &cert.pem(), false)?;
    let ca_pem = fs::read_to_string(dir.join("ca.crt"))
        .with_context(|| format!("reading {}", dir.join("ca.crt").display()))?;
    write_file(
        &dir.join(format!("{name}-chain.crt")),
        &format!("{}{ca_pem}", cert.pem()),
        false,
    )?;
    Ok(())
}

/// Makes a client certificate `NAME.crt` / `NAME.key` / `NAME.serial` signed by the CA
/// in `dir`: CN = `name`, a URI SAN for `spiffe`, DNS SANs for `dns`, EKU clientAuth,
/// key usage digitalSignature.
///
/// With `expired`, the certificate was valid from now-30d to now-1d (for testing
/// rejection). Refuses to replace an existing client of the same name: its serial
/// would be lost, and with it the only way to revoke the old certificate.
pub fn client(
    dir: &Path,
    name: &str,
    spiffe: Option<&str>,
    dns: &[String],
    expired: bool,
    key_type: KeyType,
    days: u32,
) -> anyhow::Result<()> {
    check_client_name(name)?;
    if !expired {
        check_days(days)?;
    }
    for ext in ["key", "crt", "serial"] {
        let p = dir.join(format!("{name}.{ext}"));
        if p.exists() {
            bail!(
                "{} exists; client {name:?} was already issued (revoke it and pick another name)",
                p.display()
            );
        }
    }
    let ca = Ca::load(dir)?;

    let now = OffsetDateTime::now_utc();
    let (not_before, not_after) = if expired {
        (now - Duration::days(30), now - Duration::days(1))
    } else {
        (
            now - Duration::hours(1),
            now + Duration::days(i64::from(days)),
        )
    };
    if not_after > ca.not_after {
        bail!(
            "client {name:?} would outlive the CA in {} (CA not_after {}); use fewer --days",
            dir.join("ca.crt").display(),
            ca.not_after
        );
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    if let Some(uri) = spiffe {
        check_spiffe(uri)?;
        params
            .subject_alt_names
            .push(SanType::URI(ia5(uri, "--spiffe")?));
    }
    for d in dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(ia5(d, "--dns")?));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let serial = random_serial()?;
    params.serial_number = Some(serial.clone());
    params.not_before = not_before;
    params.not_after = not_after;

    let key = key_type.generate()?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|e| anyhow!("signing the certificate of client {name:?}: {e}"))?;

    write_file(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    write_file(&dir.join(format!("{name}.crt")), &cert.pem(), false)?;
    write_file(
        &dir.join(format!("{name}.serial")),
        &format!("{}\n", hex(serial.as_ref())),
        false,
    )?;
    Ok(())
}

/// Makes (or atomically replaces) `crl.pem` in `dir`: a CRL signed by the CA that
/// revokes exactly the clients in `revoke` (found by their `NAME.serial` files), with
/// thisUpdate now-1min, nextUpdate now+`days`, and a CRL number one above the last
/// (kept in `crl.number`).
/// With `stale`, the CRL's nextUpdate is a day in the past.
pub fn crl(dir: &Path, revoke: &[String], days: u32, stale: bool) -> anyhow::Result<()> {
    check_days(days)?;
    let ca = Ca::load(dir)?;

    let mut serials: Vec<SerialNumber> = Vec::with_capacity(revoke.len());
    for name in revoke {
        check_client_name(name)?;
        let p = dir.join(format!("{name}.serial"));
        let text = fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot revoke client {name:?}: reading {} (was it issued with `lakegate pki client`?)",
                p.display()
            )
        })?;
        let bytes = unhex(text.trim())
            .with_context(|| format!("{}: expected the serial as hex", p.display()))?;
        let serial = SerialNumber::from_slice(&bytes);
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }

    let number_path = dir.join("crl.number");
    let number = match fs::read_to_string(&number_path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .with_context(|| {
                format!(
                    "{}: expected a decimal CRL number, got {:?}",
                    number_path.display(),
                    s.trim()
                )
            })?
            .checked_add(1)
            .ok_or_else(|| anyhow!("{}: CRL number overflows", number_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
        Err(e) => return Err(e).with_context(|| format!("reading {}", number_path.display())),
    };

    let now = OffsetDateTime::now_utc();
    // A minute of slack so a verifier whose clock is a little behind still accepts it.
    let (this_update, next_update) = if stale {
        (now - Duration::days(2), now - Duration::days(1))
    } else {
        (
            now - Duration::minutes(1),
            now + Duration::days(i64::from(days)),
        )
    };
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: serials
            .into_iter()
            .map(|serial_number| RevokedCertParams {
                serial_number,
                revocation_time: this_update,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        // The CRL's authority key identifier must equal the CA's subject key identifier
        // or verifiers (OpenSSL, webpki) will not match the CRL to the CA.
        key_identifier_method: ca.key_id.clone(),
    };
    let list = params
        .signed_by(&ca.issuer)
        .map_err(|e| anyhow!("signing {}: {e}", dir.join("crl.pem").display()))?;
    let pem = list
        .pem()
        .map_err(|e| anyhow!("encoding {}: {e}", dir.join("crl.pem").display()))?;

    // The number first: a crash between the two leaves a gap in the sequence, which
    // is harmless, rather than a reused number, which is not.
    write_file(&number_path, &format!("{number}\n"), false)?;
    write_file(&dir.join("crl.pem"), &pem, false)?;
    Ok(())
}

/// The CA of a PKI directory, loaded for signing.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    key_id: KeyIdMethod,
    not_after: OffsetDateTime,
}

impl Ca {
    fn load(dir: &Path) -> anyhow::Result<Ca> {
        let crt_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let crt_pem = fs::read_to_string(&crt_path).with_context(|| {
            format!(
                "reading {} (run `lakegate pki init` first?)",
                crt_path.display()
            )
        })?;
        let key_pem = fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;

        let (_, pem) = x509_parser::pem::parse_x509_pem(crt_pem.as_bytes())
            .map_err(|e| anyhow!("{}: not a PEM certificate: {e}", crt_path.display()))?;
        let x509 = pem
            .parse_x509()
            .map_err(|e| anyhow!("{}: not an X.509 certificate: {e}", crt_path.display()))?;
        if !x509.is_ca() {
            bail!(
                "{}: not a CA certificate (basicConstraints cA is false)",
                crt_path.display()
            );
        }
        // Reuse the CA's own subject key identifier: recomputing it could disagree with
        // a CA that was not made by us.
        let key_id = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
                }
                _ => None,
            })
            .unwrap_or(KeyIdMethod::Sha256);
        let not_after = x509.validity().not_after.to_datetime();

        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            anyhow!(
                "{}: not a PEM private key rcgen can use: {e}",
                key_path.display()
            )
        })?;
        // Signing with a key that is not the CA's would produce certificates and CRLs
        // that nothing verifies; say so here rather than at the first failed handshake.
        if key.der_bytes() != x509.public_key().subject_public_key.data.as_ref() {
            bail!(
                "{} does not match the public key in {}",
                key_path.display(),
                crt_path.display()
            );
        }
        let issuer = Issuer::from_ca_cert_pem(&crt_pem, key)
            .map_err(|e| anyhow!("{}: cannot use as issuer: {e}", crt_path.display()))?;
        Ok(Ca {
            issuer,
            key_id,
            not_after,
        })
    }
}

/// A random, positive, 16-byte serial number (RFC 5280 allows up to 20 octets).
fn random_serial() -> anyhow::Result<SerialNumber> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow!("the system random generator failed"))?;
    // Clear the sign bit so the INTEGER is positive without a padding byte, and set the
    // next one so the first byte is never zero (DER would drop it): always 16 bytes.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

fn check_days(days: u32) -> anyhow::Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    Ok(())
}

/// Client names become file names in the PKI directory, so they are kept to a safe
/// alphabet and must not collide with the CA's or the server's files.
fn check_client_name(name: &str) -> anyhow::Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if name.is_empty() || !ok_chars || name.starts_with(['.', '-']) {
        bail!(
            "client name {name:?}: expected letters, digits, '-', '_', '.', '@' (not starting with '.' or '-')"
        );
    }
    if RESERVED_NAMES.contains(&name) {
        bail!("client name {name:?} is reserved for the CA's and server's files");
    }
    Ok(())
}

fn check_spiffe(uri: &str) -> anyhow::Result<()> {
    let rest = uri
        .strip_prefix("spiffe://")
        .ok_or_else(|| anyhow!("--spiffe {uri:?}: expected spiffe://TRUST-DOMAIN/PATH"))?;
    let trust_domain = rest.split('/').next().unwrap_or_default();
    if trust_domain.is_empty() {
        bail!("--spiffe {uri:?}: the trust domain is empty");
    }
    Ok(())
}

fn ia5(s: &str, what: &str) -> anyhow::Result<Ia5String> {
    Ia5String::try_from(s).map_err(|e| anyhow!("{what} {s:?}: {e}"))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) || !s.is_ascii() {
        bail!("{s:?} is not an even number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| anyhow!("{s:?}: {e}")))
        .collect()
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader (the
/// appliance re-reading crl.pem, say) never sees a half-written file. Private keys get
/// mode 0600 from creation, never a moment of wider permissions.
pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    write_quiet(path, contents, private)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// [`write_file`] without the note on stdout (`pki token` keeps stdout for the token).
pub(crate) fn write_quiet(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);

    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = opts
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::oid_registry::Oid;
    use x509_parser::prelude::FromDer;

    /// `pki config` as the bench scripts call it: every line lands in its section and
    /// the PKI's files are named by absolute path, wherever the output is written.
    #[test]
    fn pki_config_from_the_command_line() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: PkiCommand,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "pki",
            "config",
            "--dir",
            "lab",
            "--listen",
            "127.0.0.1:8443",
            "--server",
            "workers = 1",
            "--backend",
            "kind = \"forward\"",
            "--backend",
            "upstream = \"127.0.0.1:9000\"",
            "--authz",
            "access = [\"read\"]",
            "--no-crl",
        ])
        .unwrap();
        let PkiCommand::Config(a) = cli.cmd else {
            panic!("not config")
        };
        let text = lab_config(&a).unwrap();
        let dir = std::path::absolute("lab").unwrap();
        let want_cert = format!("cert = \"{}\"\n", dir.join("server.crt").display());
        assert!(text.contains(&want_cert), "{text}");
        assert!(
            text.contains("listen = \"127.0.0.1:8443\"\nworkers = 1\n"),
            "{text}"
        );
        assert!(text.contains("[admin]\nlisten = \"\"\n"), "{text}");
        assert!(text.contains("[backend]\nkind = \"forward\"\nupstream = \"127.0.0.1:9000\"\n"));
        assert!(
            text.ends_with("trainer/*\"\naccess = [\"read\"]\n"),
            "{text}"
        );
        assert!(!text.contains("crl"), "{text}");
    }

    fn der_of(path: &Path) -> Vec<u8> {
        let text = fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
        pem.contents
    }

    fn with_cert<T>(path: &Path, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
        let der = der_of(path);
        let (rest, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(rest.is_empty());
        f(&cert)
    }

    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        cert.subject_alternative_name()
            .unwrap()
            .map(|e| {
                e.value
                    .general_names
                    .iter()
                    .map(|g| match g {
                        GeneralName::DNSName(d) => format!("dns:{d}"),
                        GeneralName::URI(u) => format!("uri:{u}"),
                        GeneralName::IPAddress(b) => format!("ip:{b:?}"),
                        other => format!("other:{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn cn(cert: &X509Certificate<'_>) -> String {
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    fn eku(cert: &X509Certificate<'_>) -> (bool, bool) {
        let e = cert.extended_key_usage().unwrap().unwrap().value;
        (e.server_auth, e.client_auth)
    }

    /// Verifies `signed` over `tbs` with the public key of `ca_path`, in aws-lc-rs
    /// (x509-parser 0.17's `verify` feature would pull in ring).
    fn verify_with_ca(ca_path: &Path, tbs: &[u8], sig: &[u8], rsa: bool) {
        use aws_lc_rs::signature::{
            UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, RSA_PKCS1_2048_8192_SHA256,
        };
        with_cert(ca_path, |ca| {
            let pk = ca.public_key().subject_public_key.data.to_vec();
            let alg: &dyn aws_lc_rs::signature::VerificationAlgorithm = if rsa {
                &RSA_PKCS1_2048_8192_SHA256
            } else {
                &ECDSA_P256_SHA256_ASN1
            };
            UnparsedPublicKey::new(alg, pk)
                .verify(tbs, sig)
                .expect("signature verifies with the CA key");
        });
    }

    fn localhost() -> (Vec<String>, Vec<IpAddr>) {
        (
            vec!["localhost".into(), "lake.test".into()],
            vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        )
    }

    #[test]
    fn init_client_crl_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (dns, ip) = localhost();
        init(dir, "unit CA", &dns, &ip, KeyType::EcdsaP256, 30).unwrap();
        for f in [
            "ca.crt",
            "ca.key",
            "server.crt",
            "server.key",
            "server-chain.crt",
        ] {
            assert!(dir.join(f).is_file(), "{f} written");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let pkcs8 = fs::read_to_string(dir.join("server.key")).unwrap();
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));

        with_cert(&dir.join("ca.crt"), |ca| {
            assert!(ca.is_ca());
            let bc = ca.basic_constraints().unwrap().unwrap();
            assert!(bc.critical && bc.value.ca);
            let ku = ca.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign() && ku.crl_sign());
            assert_eq!(cn(ca), "unit CA");
        });

        let ca_subject = with_cert(&dir.join("ca.crt"), |ca| ca.subject().to_string());
        with_cert(&dir.join("server.crt"), |srv| {
            assert!(!srv.is_ca());
            assert_eq!(cn(srv), "localhost");
            assert_eq!(srv.issuer().to_string(), ca_subject);
            assert_eq!(
                sans(srv),
                [
                    "dns:localhost",
                    "dns:lake.test",
                    "ip:[127, 0, 0, 1]",
                    "ip:[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]"
                ]
            );
            assert_eq!(eku(srv), (true, false));
            assert_eq!(srv.raw_serial().len(), 16);
            let now = OffsetDateTime::now_utc();
            assert!(srv.validity().not_before.to_datetime() < now - Duration::minutes(59));
            verify_with_ca(
                &dir.join("ca.crt"),
                srv.tbs_certificate.as_ref(),
                &srv.signature_value.data,
                false,
            );
        });
        // server.crt is the leaf alone; server-chain.crt is leaf then CA.
        let chain = fs::read_to_string(dir.join("server-chain.crt")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(chain.starts_with(&fs::read_to_string(dir.join("server.crt")).unwrap()));
        assert!(chain.ends_with(&fs::read_to_string(dir.join("ca.crt")).unwrap()));

        client(
            dir,
            "trainer",
            Some("spiffe://lake.test/trainer"),
            &["trainer.lake.test".into()],
            false,
            KeyType::EcdsaP256,
            10,
        )
        .unwrap();
        client(dir, "old", None, &[], true, KeyType::EcdsaP256, 10).unwrap();

        let trainer_serial = with_cert(&dir.join("trainer.crt"), |c| {
            assert_eq!(cn(c), "trainer");
            assert_eq!(
                sans(c),
                ["uri:spiffe://lake.test/trainer", "dns:trainer.lake.test"]
            );
            assert_eq!(eku(c), (false, true));
            assert!(c.key_usage().unwrap().unwrap().value.digital_signature());
            assert_eq!(c.issuer().to_string(), ca_subject);
            verify_with_ca(
                &dir.join("ca.crt"),
                c.tbs_certificate.as_ref(),
                &c.signature_value.data,
                false,
            );
            c.raw_serial().to_vec()
        });
        let serial_file = fs::read_to_string(dir.join("trainer.serial")).unwrap();
        assert_eq!(serial_file.trim(), hex(&trainer_serial));

        let old_serial = with_cert(&dir.join("old.crt"), |c| {
            let now = OffsetDateTime::now_utc();
            assert!(c.validity().not_after.to_datetime() < now);
            assert!(!c.validity().is_valid());
            c.raw_serial().to_vec()
        });

        crl(dir, &["old".into()], 7, false).unwrap();
        crl(dir, &["trainer".into(), "trainer".into()], 7, false).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("crl.number")).unwrap().trim(),
            "2"
        );
        let der = der_of(&dir.join("crl.pem"));
        let (_, list) = x509_parser::parse_x509_crl(&der).unwrap();
        let revoked: Vec<Vec<u8>> = list
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        assert_eq!(revoked, [trainer_serial]);
        assert!(
            !revoked.contains(&old_serial),
            "a new CRL replaces the old one"
        );
        assert_eq!(list.crl_number().unwrap().to_string(), "2");
        assert_eq!(list.issuer().to_string(), ca_subject);
        let now = OffsetDateTime::now_utc();
        assert!(list.last_update().to_datetime() < now);
        assert!(list.next_update().unwrap().to_datetime() > now + Duration::days(6));
        verify_with_ca(
            &dir.join("ca.crt"),
            list.tbs_cert_list.as_ref(),
            &list.signature_value.data,
            false,
        );
        // The CRL's AKI must be the CA's SKI, or verifiers cannot match them.
        let aki_oid = Oid::from(&[2, 5, 29, 35]).unwrap();
        let aki = list.tbs_cert_list.find_extension(&aki_oid).unwrap();
        let ski = with_cert(&dir.join("ca.crt"), |ca| {
            ca.iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                    _ => None,
                })
                .unwrap()
        });
        match aki.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                assert_eq!(a.key_identifier.as_ref().unwrap().0, ski.as_slice());
            }
            other => panic!("unexpected AKI {other:?}"),
        }
    }

    #[test]
    fn rsa_2048_server_and_client() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (dns, ip) = localhost();
        init(dir, "rsa CA", &dns, &ip, KeyType::Rsa2048, 30).unwrap();
        // The key loads back as an RSA signing key and matches the certificate.
        let key = KeyPair::from_pem(&fs::read_to_string(dir.join("server.key")).unwrap()).unwrap();
        assert_eq!(key.algorithm(), &PKCS_RSA_SHA256);
        with_cert(&dir.join("server.crt"), |srv| {
            assert_eq!(
                key.der_bytes(),
                srv.public_key().subject_public_key.data.as_ref()
            );
            let x509_parser::public_key::PublicKey::RSA(rsa) = srv.public_key().parsed().unwrap()
            else {
                panic!("not RSA");
            };
            assert_eq!(rsa.key_size(), 2048);
            verify_with_ca(
                &dir.join("ca.crt"),
                srv.tbs_certificate.as_ref(),
                &srv.signature_value.data,
                true,
            );
        });
        // A client and a CRL signed by an RSA CA loaded back from disk.
        client(dir, "r", None, &[], false, KeyType::EcdsaP256, 1).unwrap();
        crl(dir, &["r".into()], 1, false).unwrap();
        let der = der_of(&dir.join("crl.pem"));
        let (_, list) = x509_parser::parse_x509_crl(&der).unwrap();
        verify_with_ca(
            &dir.join("ca.crt"),
            list.tbs_cert_list.as_ref(),
            &list.signature_value.data,
            true,
        );
    }

    #[test]
    fn init_twice_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (dns, ip) = localhost();
        init(dir, "a", &dns, &ip, KeyType::EcdsaP256, 1).unwrap();
        let before = fs::read(dir.join("ca.key")).unwrap();
        let err = init(dir, "b", &dns, &ip, KeyType::EcdsaP256, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} exists; use a new --dir", dir.join("ca.key").display())
        );
        assert_eq!(fs::read(dir.join("ca.key")).unwrap(), before);
    }

    #[test]
    fn bad_input_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // No CA yet.
        let err = client(dir, "x", None, &[], false, KeyType::EcdsaP256, 1).unwrap_err();
        assert!(format!("{err:#}").contains("ca.crt"), "{err:#}");

        let (dns, ip) = localhost();
        init(dir, "a", &dns, &ip, KeyType::EcdsaP256, 1).unwrap();
        let err = crl(dir, &["ghost".into()], 1, false).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("\"ghost\"") && msg.contains("ghost.serial"),
            "{msg}"
        );
        assert!(!dir.join("crl.pem").exists());

        for bad in ["ca", "server-chain", "../x", ".hidden", ""] {
            assert!(
                client(dir, bad, None, &[], false, KeyType::EcdsaP256, 1).is_err(),
                "{bad:?}"
            );
        }
        assert!(client(
            dir,
            "x",
            Some("https://nope"),
            &[],
            false,
            KeyType::EcdsaP256,
            1
        )
        .is_err());
        client(dir, "x", None, &[], false, KeyType::EcdsaP256, 1).unwrap();
        let err = client(dir, "x", None, &[], false, KeyType::EcdsaP256, 1).unwrap_err();
        assert!(err.to_string().contains("x.key exists"), "{err}");

        // A CA key that does not belong to ca.crt is caught before signing.
        let other = KeyType::EcdsaP256.generate().unwrap();
        fs::write(dir.join("ca.key"), other.serialize_pem()).unwrap();
        let err = crl(dir, &[], 1, false).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn hex_round_trip() {
        let s = random_serial().unwrap();
        assert_eq!(s.as_ref().len(), 16);
        assert!(s.as_ref()[0] & 0x80 == 0 && s.as_ref()[0] != 0);
        assert_eq!(unhex(&hex(s.as_ref())).unwrap(), s.as_ref());
        assert!(unhex("abc").is_err() && unhex("zz").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(subcommand)]
            cmd: PkiCommand,
        }
        let t = T::try_parse_from(["t", "init", "--dir", "/x", "--key-type", "rsa2048"]).unwrap();
        match t.cmd {
            PkiCommand::Init { cert, .. } => {
                assert_eq!(cert.dns, ["localhost"]);
                assert_eq!(cert.ip, ["127.0.0.1".parse::<IpAddr>().unwrap()]);
                assert_eq!(cert.key_type, KeyType::Rsa2048);
                assert_eq!(cert.days, 825);
            }
            other => panic!("{other:?}"),
        }
        let t = T::try_parse_from([
            "t",
            "client",
            "alice",
            "--spiffe",
            "spiffe://a/b",
            "--expired",
        ])
        .unwrap();
        assert!(matches!(
            t.cmd,
            PkiCommand::Client { ref name, expired: true, days: 365, .. } if name == "alice"
        ));
    }
}
