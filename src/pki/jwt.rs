//! `lakegate pki token`: lab access tokens. A signing key (PEM, PKCS#8; made when the
//! file does not exist), the JWK set that publishes its public half (written or
//! extended, atomically, so a running appliance re-reads it whole), and a signed JWT
//! with the claims `[tokens]` checks, optionally bound to a client certificate
//! (RFC 8705 `cnf`/`x5t#S256`).
//!
//! A lab tool like the rest of `pki`: keys are unencrypted (mode 0600), there is no
//! issuer service. Signatures are made with aws-lc-rs; nothing here is used by the
//! data path, which verifies with [`crate::authz::token`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents,
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Map, Value};

use crate::authz::token::Alg;

/// Arguments of `lakegate pki token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// Signing key (PEM, PKCS#8); generated with the algorithm's key type if missing.
    #[arg(long)]
    pub key: PathBuf,
    /// Key id, in the token header and the JWKS (default: the key file's stem).
    #[arg(long)]
    pub kid: Option<String>,
    /// Signature algorithm: ES256, ES384, RS256, PS256 or EdDSA.
    #[arg(long, default_value = "ES256", value_parser = parse_alg)]
    pub alg: Alg,
    /// JWK set to write or extend with the key's public half.
    #[arg(long, default_value = "jwks.json")]
    pub jwks: PathBuf,
    /// Bind the token to this client certificate (PEM): cnf."x5t#S256".
    #[arg(long)]
    pub cnf_cert: Option<PathBuf>,
    /// Space-separated scopes, e.g. "lake:read lake:list:datasets".
    #[arg(long, default_value = "")]
    pub scope: String,
    /// Lifetime from now (or from --now).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Subject (`sub`).
    #[arg(long, default_value = "lab")]
    pub sub: String,
    /// OAuth client id (`client_id`), if any.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Issuer (`iss`); must equal `[tokens] issuer`.
    #[arg(long, default_value = "https://auth.lake.example")]
    pub iss: String,
    /// Audience (`aud`); must contain `[tokens] audience`.
    #[arg(long, default_value = "lakegate")]
    pub aud: String,
    /// Issue as if the clock said this (unix seconds): iat = nbf = NOW, exp = NOW + ttl.
    /// For tests of expired and not-yet-valid tokens.
    #[arg(long)]
    pub now: Option<i64>,
}

fn parse_alg(s: &str) -> Result<Alg, String> {
    Alg::from_name(s).ok_or_else(|| format!("{s:?}: expected ES256, ES384, RS256, PS256 or EdDSA"))
}

enum Kind {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A JWT signing key for one algorithm.
pub struct Signer {
    alg: Alg,
    kind: Kind,
}

impl Signer {
    /// A new key of the algorithm's type, with its PKCS#8 PEM.
    pub fn generate(alg: Alg) -> anyhow::Result<(Signer, String)> {
        let kp = match alg {
            Alg::Es256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Alg::Es384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            Alg::EdDsa => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
            Alg::Rs256 | Alg::Ps256 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
        }
        .map_err(|e| anyhow!("generating a key for {alg}: {e}"))?;
        let signer = Signer::from_pkcs8(alg, &kp.serialize_der())?;
        Ok((signer, kp.serialize_pem()))
    }

    /// A signer from a PKCS#8 DER private key, which must be of the algorithm's type.
    pub fn from_pkcs8(alg: Alg, der: &[u8]) -> anyhow::Result<Signer> {
        let wrong = |e: &dyn std::fmt::Display| anyhow!("the key is not a {alg} key: {e}");
        let kind = match alg {
            Alg::Es256 => Kind::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| wrong(&e))?,
            ),
            Alg::Es384 => Kind::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
                    .map_err(|e| wrong(&e))?,
            ),
            Alg::Rs256 | Alg::Ps256 => {
                Kind::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|e| wrong(&e))?)
            }
            Alg::EdDsa => Kind::Ed(Ed25519KeyPair::from_pkcs8(der).map_err(|e| wrong(&e))?),
        };
        Ok(Signer { alg, kind })
    }

    /// The algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The public JWK, with `kid`, `alg` and `use: sig`.
    pub fn jwk(&self, kid: &str) -> Value {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let mut k = match &self.kind {
            Kind::Ec(kp) => {
                let p = kp.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                let crv = if self.alg == Alg::Es256 {
                    "P-256"
                } else {
                    "P-384"
                };
                json!({"kty": "EC", "crv": crv, "x": b(&p[1..1 + n]), "y": b(&p[1 + n..])})
            }
            Kind::Rsa(kp) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(kp.public_key());
                json!({"kty": "RSA", "n": b(&c.n), "e": b(&c.e)})
            }
            Kind::Ed(kp) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b(kp.public_key().as_ref())})
            }
        };
        k["kid"] = json!(kid);
        k["alg"] = json!(self.alg.as_str());
        k["use"] = json!("sig");
        k
    }

    /// `header.claims.signature`, each base64url; `header` gets `alg` set here.
    pub fn sign(&self, header: &Map<String, Value>, claims: &Value) -> anyhow::Result<String> {
        let mut header = header.clone();
        header.insert("alg".into(), json!(self.alg.as_str()));
        let mut out = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Value::Object(header))?);
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?));
        let sig = self.raw_sign(out.as_bytes())?;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(out)
    }

    fn raw_sign(&self, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        let rng = SystemRandom::new();
        let failed = |_| anyhow!("signing failed");
        Ok(match &self.kind {
            Kind::Ec(kp) => kp.sign(&rng, msg).map_err(failed)?.as_ref().to_vec(),
            Kind::Ed(kp) => kp.sign(msg).as_ref().to_vec(),
            Kind::Rsa(kp) => {
                let pad: &'static dyn signature::RsaEncoding = if self.alg == Alg::Ps256 {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(pad, &rng, msg, &mut sig).map_err(failed)?;
                sig
            }
        })
    }
}

/// The RFC 8705 `x5t#S256` of the first certificate in a PEM file.
pub fn thumbprint_of(cert: &Path) -> anyhow::Result<String> {
    let der = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .next()
        .ok_or_else(|| anyhow!("{}: no certificate in the file", cert.display()))?
        .with_context(|| format!("reading {}", cert.display()))?;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    Ok(URL_SAFE_NO_PAD.encode(d.as_ref()))
}

/// Load `path` as a signer for `alg`, or make the key (mode 0600) if the file is absent.
pub fn load_or_generate(path: &Path, alg: Alg) -> anyhow::Result<Signer> {
    if path.exists() {
        let key = PrivateKeyDer::from_pem_file(path)
            .with_context(|| format!("reading the key {}", path.display()))?;
        let PrivateKeyDer::Pkcs8(der) = key else {
            bail!(
                "{}: expected a PKCS#8 key (\"BEGIN PRIVATE KEY\"); convert it with \
                 `openssl pkcs8 -topk8 -nocrypt`",
                path.display()
            );
        };
        return Signer::from_pkcs8(alg, der.secret_pkcs8_der())
            .with_context(|| format!("{}", path.display()));
    }
    let (signer, pem) = Signer::generate(alg)?;
    super::write_quiet(path, &pem, true)?;
    eprintln!("wrote {} (new {alg} key)", path.display());
    Ok(signer)
}

/// Add `jwk` to the JWK set at `path` (made if absent). The same key again is a no-op;
/// another key under the same kid is refused, since tokens already issued name it.
pub fn extend_jwks(path: &Path, jwk: &Value) -> anyhow::Result<()> {
    let mut doc = if path.exists() {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice::<Value>(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?
    } else {
        json!({"keys": []})
    };
    let keys = doc
        .get_mut("keys")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow!("{}: expected {{\"keys\": [...]}}", path.display()))?;
    let kid = &jwk["kid"];
    if let Some(old) = keys.iter().find(|k| &k["kid"] == kid) {
        if old == jwk {
            return Ok(());
        }
        bail!(
            "{}: kid {kid} already names another key; pick another --kid",
            path.display()
        );
    }
    keys.push(jwk.clone());
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    super::write_quiet(path, &text, false)?;
    eprintln!("wrote {} (kid {kid})", path.display());
    Ok(())
}

/// Random `jti`: 16 bytes, base64url.
fn jti() -> anyhow::Result<String> {
    let mut raw = [0u8; 16];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| anyhow!("the system random generator failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// The claims of a lab token.
#[allow(clippy::too_many_arguments)]
pub fn claims(
    iss: &str,
    aud: &str,
    sub: &str,
    client_id: Option<&str>,
    scope: &str,
    now: i64,
    ttl: Duration,
    x5t: Option<&str>,
) -> anyhow::Result<Value> {
    let ttl = i64::try_from(ttl.as_secs()).context("--ttl too long")?;
    let mut c = json!({
        "iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + ttl,
        "jti": jti()?, "scope": scope,
    });
    if let Some(id) = client_id {
        c["client_id"] = json!(id);
    }
    if let Some(t) = x5t {
        c["cnf"] = json!({"x5t#S256": t});
    }
    Ok(c)
}

/// `lakegate pki token`: the token goes to stdout (one line), what was written to stderr.
pub fn run(a: &TokenArgs) -> anyhow::Result<String> {
    let signer = load_or_generate(&a.key, a.alg)?;
    let kid = match &a.kid {
        Some(k) => k.clone(),
        None => a
            .key
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| anyhow!("--key has no file stem to use as kid; give --kid"))?
            .to_owned(),
    };
    if kid.is_empty() {
        bail!("--kid is empty");
    }
    extend_jwks(&a.jwks, &signer.jwk(&kid))?;
    let x5t = a.cnf_cert.as_deref().map(thumbprint_of).transpose()?;
    let now = match a.now {
        Some(n) => n,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    };
    let claims = claims(
        &a.iss,
        &a.aud,
        &a.sub,
        a.client_id.as_deref(),
        &a.scope,
        now,
        a.ttl,
        x5t.as_deref(),
    )?;
    let mut header = Map::new();
    header.insert("typ".into(), json!("JWT"));
    header.insert("kid".into(), json!(kid));
    signer.sign(&header, &claims)
}
