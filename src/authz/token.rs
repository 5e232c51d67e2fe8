//! Bearer tokens: JWS compact JWTs (RFC 7515/7519) checked against a JWK set, bound to
//! the client certificate (RFC 8705 `cnf`/`x5t#S256`), and their `scope` claim read as
//! lakegate access.
//!
//! Owns: parsing the JWKS file's contents into verification keys ([`Jwks::parse`]), the
//! checks a token must pass ([`validate`], in two stages so a connection can keep the
//! result of the signature check and re-check time per request), the scope grammar
//! (`lake:{access}` or `lake:{access}:{bucket}`), and the one mapping of every refusal
//! to an HTTP status, an RFC 6750 error code and a bounded metric reason
//! ([`TokenError`]).
//!
//! Must not touch: sockets, files, the clock (`now` is passed in), certificates (the
//! caller hands over the RFC 8705 thumbprint of the connection's leaf), and HTTP
//! responses. Signatures are verified by `jsonwebtoken` on aws-lc-rs; what is done here
//! before it is only structural (size, segments, base64url, header JSON, algorithm and
//! key choice), so a token the crate would read leniently is refused first.
//!
//! # Key choice
//!
//! A token names its key with `kid`; an unknown `kid` is refused (`unknown_key`).
//! A token without `kid` is accepted only when the JWK set holds exactly one key (an
//! issuer with one key often omits it); with several keys it is `unknown_key`. The
//! token's `alg` must be one of ES256, ES384, RS256, PS256, EdDSA and must fit the key:
//! the JWK's `alg` when it has one, else its type (`EC` P-256 → ES256, P-384 → ES384,
//! `RSA` → RS256 or PS256, `OKP` Ed25519 → EdDSA). A mismatch is `bad_signature`: the
//! signature cannot be valid under the key it names. `alg: none`, the HMAC algorithms
//! and any `crit` header are refused as malformed; `jku`, `x5u`, `jwk` and `x5c` headers
//! are never used to find a key.
//!
//! # Binding
//!
//! With `cert_bound = true` a token must carry `cnf.x5t#S256` (else `unbound`). A token
//! that carries one is always held to it, also with `cert_bound = false`: a bound
//! token presented over another certificate is `binding_mismatch` either way.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Access;

/// Longest token accepted, in bytes (the part after `Bearer `).
pub const MAX_TOKEN: usize = 8 * 1024;
/// Largest JWKS file accepted.
pub const MAX_JWKS: usize = 1024 * 1024;
/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "lakegate";

// ---------------------------------------------------------------------------------------
// Errors: one enum, mapped once
// ---------------------------------------------------------------------------------------

pub use crate::reason::TokenReason as Reason;

/// Why a request's token is refused. Every variant maps once to a status, an RFC 6750
/// error code, a metric reason and a fixed description (no token bytes, no claim
/// values: the description goes to the client and the log as it is).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// No `Authorization: Bearer` where a token is required (a SigV4 or other scheme
    /// counts as none).
    Missing,
    /// Two `Authorization` headers: which one would be the token? (400)
    Duplicate,
    /// Not a well-formed token; the text says which rule it broke.
    Malformed(&'static str),
    /// The token's `kid` is not in the JWK set (or it has none and the set has several).
    UnknownKey,
    /// The signature does not verify, or the algorithm does not fit the key.
    BadSignature(&'static str),
    /// Past `exp` plus leeway.
    Expired,
    /// Before `nbf` minus leeway.
    NotYetValid,
    /// `iat` later than now plus leeway.
    IssuedInFuture,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    WrongAudience,
    /// No `cnf.x5t#S256` while `cert_bound = true`.
    Unbound,
    /// `cnf.x5t#S256` names another certificate.
    BindingMismatch,
    /// The scopes do not grant the request; `needed` is the narrowest scope that would.
    InsufficientScope {
        /// E.g. `lake:read:datasets`.
        needed: String,
    },
}

impl TokenError {
    /// The HTTP status: 400 for a malformed request, 401 for a missing or invalid token,
    /// 403 for a valid token with too little scope (RFC 6750 section 3.1).
    pub fn status(&self) -> u16 {
        match self {
            TokenError::Duplicate => 400,
            TokenError::InsufficientScope { .. } => 403,
            _ => 401,
        }
    }

    /// The RFC 6750 `error` attribute; `None` when the request carried no token, which
    /// RFC 6750 section 3.1 says should get no error code.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            TokenError::Missing => None,
            TokenError::Duplicate => Some("invalid_request"),
            TokenError::InsufficientScope { .. } => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }

    /// The metric reason.
    pub fn reason(&self) -> Reason {
        match self {
            TokenError::Missing => Reason::Missing,
            TokenError::Duplicate | TokenError::Malformed(_) => Reason::Malformed,
            TokenError::UnknownKey => Reason::UnknownKey,
            TokenError::BadSignature(_) => Reason::BadSignature,
            TokenError::Expired => Reason::Expired,
            TokenError::NotYetValid | TokenError::IssuedInFuture => Reason::NotYetValid,
            TokenError::WrongIssuer => Reason::WrongIssuer,
            TokenError::WrongAudience => Reason::WrongAudience,
            TokenError::Unbound => Reason::Unbound,
            TokenError::BindingMismatch => Reason::BindingMismatch,
            TokenError::InsufficientScope { .. } => Reason::InsufficientScope,
        }
    }

    /// A fixed description for `error_description` and the log.
    pub fn description(&self) -> &'static str {
        match self {
            TokenError::Missing => "a bearer token is required",
            TokenError::Duplicate => "more than one Authorization header",
            TokenError::Malformed(m) | TokenError::BadSignature(m) => m,
            TokenError::UnknownKey => "the token's key (kid) is not known",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet (nbf)",
            TokenError::IssuedInFuture => "the token is issued in the future (iat)",
            TokenError::WrongIssuer => "the token is from another issuer",
            TokenError::WrongAudience => "the token is for another audience",
            TokenError::Unbound => "the token is not bound to a certificate (cnf x5t#S256)",
            TokenError::BindingMismatch => {
                "the token is bound to another certificate than this connection's"
            }
            TokenError::InsufficientScope { .. } => "the token's scope does not allow this request",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 section 3). Only fixed strings and the
    /// scope (built from an access word and a validated bucket name) are quoted in.
    pub fn www_authenticate(&self) -> String {
        let mut s = format!("Bearer realm=\"{REALM}\"");
        if let Some(code) = self.code() {
            s.push_str(", error=\"");
            s.push_str(code);
            s.push_str("\", error_description=\"");
            s.push_str(self.description());
            s.push('"');
        }
        if let TokenError::InsufficientScope { needed } = self {
            s.push_str(", scope=\"");
            s.extend(needed.chars().filter(|c| *c != '"' && *c != '\\'));
            s.push('"');
        }
        s
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for TokenError {}

/// Who a refused token said it was, once its signature verified (claims of a token
/// that does not verify are not worth logging). For the log only; never the token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// `sub`.
    pub sub: Option<String>,
    /// `client_id` (RFC 9068).
    pub client_id: Option<String>,
    /// `jti`.
    pub jti: Option<String>,
}

/// A refusal with what is known of the token's subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub error: TokenError,
    /// `sub`, `client_id`, `jti` of a token whose signature verified.
    pub ids: Ids,
}

impl From<TokenError> for Refused {
    fn from(error: TokenError) -> Refused {
        Refused {
            error,
            ids: Ids::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Policy and keys
// ---------------------------------------------------------------------------------------

/// When a request must carry a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Required {
    /// Every request (`required = true`).
    Always,
    /// Only when present (`required = false`): a token sent must still be valid.
    WhenPresent,
    /// Requests to buckets matching one of these patterns (`required = ["models"]`);
    /// elsewhere as [`Required::WhenPresent`].
    Buckets(Vec<String>),
}

impl Required {
    /// Whether a request on `bucket` needs a token.
    pub fn for_bucket(&self, bucket: &str) -> bool {
        match self {
            Required::Always => true,
            Required::WhenPresent => false,
            Required::Buckets(list) => list.iter().any(|p| glob(p, bucket)),
        }
    }
}

/// `*` matches any run; everything else literally (bucket names have no `?`).
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            let Some(mut s) = s.strip_prefix(head) else {
                return false;
            };
            let parts: Vec<&str> = rest.split('*').collect();
            let (last, middle) = parts.split_last().unwrap_or((&"", &[]));
            for p in middle {
                match s.find(p) {
                    Some(i) => s = &s[i + p.len()..],
                    None => return false,
                }
            }
            s.len() >= last.len() && s.ends_with(last)
        }
    }
}

/// What `[tokens]` asks of a token, besides the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Expected `iss`, exactly.
    pub issuer: String,
    /// Expected in `aud` (a string or an array).
    pub audience: String,
    /// RFC 8705: a token must carry `cnf.x5t#S256`.
    pub cert_bound: bool,
    /// When a token is needed.
    pub required: Required,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: u64,
}

/// One of the five signature algorithms accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// Every accepted algorithm.
    pub const ALL: [Alg; 5] = [Alg::Es256, Alg::Es384, Alg::Rs256, Alg::Ps256, Alg::EdDsa];

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The algorithm named exactly `s` (JOSE names are case-sensitive).
    pub fn from_name(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn jwt(self) -> Algorithm {
        match self {
            Alg::Es256 => Algorithm::ES256,
            Alg::Es384 => Algorithm::ES384,
            Alg::Rs256 => Algorithm::RS256,
            Alg::Ps256 => Algorithm::PS256,
            Alg::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One verification key of the set.
pub struct Key {
    kid: Option<String>,
    /// The algorithms this key verifies: its `alg`, or what its type allows.
    algs: Vec<Alg>,
    key: DecodingKey,
}

impl Key {
    /// The key id, if the JWK has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms it verifies.
    pub fn algs(&self) -> &[Alg] {
        &self.algs
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish_non_exhaustive()
    }
}

/// A JWK set: the public keys tokens are verified with.
#[derive(Debug, Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

/// The JWK members this module reads; others (x5c, x5t, ...) are ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// Members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl Jwks {
    /// Parse a JWKS document (`{"keys": [...]}`). The message of an error names the key
    /// (by index and kid) and what was expected.
    pub fn parse(bytes: &[u8]) -> Result<Jwks, String> {
        if bytes.len() > MAX_JWKS {
            return Err(format!(
                "is {} bytes; expected at most {MAX_JWKS}",
                bytes.len()
            ));
        }
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("is not valid JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("expected a JSON object with a \"keys\" array (a JWK set)")?;
        if keys.is_empty() {
            return Err("has no keys; expected at least one".into());
        }
        let mut out = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let key = Self::key(k).map_err(|m| {
                let kid = k.get("kid").and_then(Value::as_str).unwrap_or("");
                format!("keys[{i}] (kid {kid:?}): {m}")
            })?;
            if key.kid.is_some() && out.iter().any(|o: &Key| o.kid == key.kid) {
                return Err(format!(
                    "keys[{i}]: kid {:?} is used twice; a kid must name one key",
                    key.kid.as_deref().unwrap_or("")
                ));
            }
            out.push(key);
        }
        if out.len() > 1 {
            if let Some(i) = out.iter().position(|k| k.kid.is_none()) {
                return Err(format!(
                    "keys[{i}] has no kid; with several keys each needs one, or no token \
                     could name it"
                ));
            }
        }
        Ok(Jwks { keys: out })
    }

    fn key(v: &Value) -> Result<Key, String> {
        let obj = v.as_object().ok_or("expected a JSON object")?;
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
            return Err(format!(
                "holds private or secret key material ({m:?}); a JWKS for lakegate holds \
                 public keys only"
            ));
        }
        let raw: RawJwk =
            serde_json::from_value(v.clone()).map_err(|e| format!("malformed JWK: {e}"))?;
        if raw.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err("\"use\" is not \"sig\"; the key is not for signatures".into());
        }
        if raw
            .key_ops
            .as_ref()
            .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
        {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
        let alg = match raw.alg.as_deref() {
            None => None,
            Some(a) => Some(Alg::from_name(a).ok_or_else(|| {
                format!("alg {a:?} is not accepted; expected ES256, ES384, RS256, PS256 or EdDSA")
            })?),
        };
        let need = |name: &str, v: &Option<String>| -> Result<Vec<u8>, String> {
            let s = v.as_deref().ok_or_else(|| format!("missing {name:?}"))?;
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| format!("{name:?} is not base64url without padding"))
        };
        let kty = raw.kty.as_deref().ok_or("missing \"kty\"")?;
        let (algs, key) = match kty {
            "EC" => {
                let (fits, len) = match raw.crv.as_deref() {
                    Some("P-256") => (Alg::Es256, 32),
                    Some("P-384") => (Alg::Es384, 48),
                    other => {
                        return Err(format!(
                            "EC curve {other:?} is not accepted; expected \"P-256\" or \"P-384\""
                        ))
                    }
                };
                let (x, y) = (need("x", &raw.x)?, need("y", &raw.y)?);
                if x.len() != len || y.len() != len {
                    return Err(format!("x and y must be {len} bytes for this curve"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (vec![fits], DecodingKey::from_ec_der(&point))
            }
            "RSA" => {
                let (n, e) = (need("n", &raw.n)?, need("e", &raw.e)?);
                let n_trim = n.iter().skip_while(|b| **b == 0).count();
                if n_trim * 8 < 2048 {
                    return Err(format!(
                        "RSA modulus of {} bits; expected at least 2048",
                        n_trim * 8
                    ));
                }
                (
                    vec![Alg::Rs256, Alg::Ps256],
                    DecodingKey::from_rsa_raw_components(&n, &e),
                )
            }
            "OKP" => {
                if raw.crv.as_deref() != Some("Ed25519") {
                    return Err(format!(
                        "OKP curve {:?} is not accepted; expected \"Ed25519\"",
                        raw.crv
                    ));
                }
                let x = need("x", &raw.x)?;
                if x.len() != 32 {
                    return Err("x must be 32 bytes for Ed25519".into());
                }
                (vec![Alg::EdDsa], DecodingKey::from_ed_der(&x))
            }
            "oct" => {
                return Err(
                    "symmetric (\"oct\") keys are not accepted: HMAC tokens are refused".into(),
                )
            }
            other => {
                return Err(format!(
                    "kty {other:?} is not accepted; expected EC, RSA or OKP"
                ))
            }
        };
        let algs = match alg {
            None => algs,
            Some(a) if algs.contains(&a) => vec![a],
            Some(a) => return Err(format!("alg {a} does not fit a {kty} key of this kind")),
        };
        Ok(Key {
            kid: raw.kid,
            algs,
            key,
        })
    }

    /// The keys, in file order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key a token with this `kid` is verified with (see the module docs).
    fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(untagged)]
enum Aud {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Cnf {
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Aud>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    jti: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
    cnf: Option<Cnf>,
}

/// What a verified token says, as far as lakegate acts on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    /// `exp`, unix seconds.
    pub exp: f64,
    /// `nbf`, if any.
    pub nbf: Option<f64>,
    /// `iat`, if any.
    pub iat: Option<f64>,
    /// The scope values, in order.
    pub scopes: Vec<String>,
    /// `cnf.x5t#S256`, if any.
    pub x5t_s256: Option<String>,
    /// For the log.
    pub ids: Ids,
}

impl Claims {
    /// The time checks, with `now` in unix seconds: what can change between two
    /// requests carrying the same token.
    pub fn check_time(&self, policy: &TokenPolicy, now: i64) -> Result<(), TokenError> {
        let now = now as f64;
        let leeway = policy.leeway as f64;
        if now >= self.exp + leeway {
            return Err(TokenError::Expired);
        }
        if self.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(TokenError::NotYetValid);
        }
        if self.iat.is_some_and(|iat| iat > now + leeway) {
            return Err(TokenError::IssuedInFuture);
        }
        Ok(())
    }

    /// Whether the scopes grant `access` on `bucket`: `lake:{access}` or
    /// `lake:{access}:{bucket}`.
    pub fn allows(&self, access: Access, bucket: &str) -> bool {
        self.scopes.iter().any(|s| {
            s.strip_prefix("lake:")
                .and_then(|r| r.strip_prefix(access.as_str()))
                .is_some_and(|r| r.is_empty() || r.strip_prefix(':') == Some(bucket))
        })
    }

    /// [`Claims::allows`], or the error naming the narrowest scope that would.
    pub fn authorize(&self, access: Access, bucket: &str) -> Result<(), TokenError> {
        if self.allows(access, bucket) {
            Ok(())
        } else {
            Err(TokenError::InsufficientScope {
                needed: needed_scope(access, bucket),
            })
        }
    }
}

/// The narrowest scope that grants `access` on `bucket`.
pub fn needed_scope(access: Access, bucket: &str) -> String {
    format!("lake:{}:{bucket}", access.as_str())
}

// ---------------------------------------------------------------------------------------
// The header and the checks
// ---------------------------------------------------------------------------------------

/// The bearer token among a request's `Authorization` header values: `Ok(None)` when
/// there is none (no header, or another scheme such as SigV4's `AWS4-HMAC-SHA256`),
/// [`TokenError::Duplicate`] for two headers, [`TokenError::Malformed`] for a Bearer
/// credential that is not RFC 6750 `b64token` syntax.
pub fn bearer<'a>(
    mut authorization: impl Iterator<Item = &'a str>,
) -> Result<Option<&'a str>, TokenError> {
    let Some(value) = authorization.next() else {
        return Ok(None);
    };
    if authorization.next().is_some() {
        return Err(TokenError::Duplicate);
    }
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(TokenError::Malformed("the Bearer credential is empty"));
    }
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Malformed("the token is larger than 8 KiB"));
    }
    let body = token.trim_end_matches('=');
    let ok = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if !ok {
        return Err(TokenError::Malformed(
            "the Bearer credential is not a single b64token",
        ));
    }
    Ok(Some(token))
}

fn b64(segment: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed("a token segment is not base64url without padding"))
}

/// Everything that does not depend on the time: structure, key, signature, `iss`,
/// `aud` and the certificate binding. `thumbprint` is the RFC 8705 `x5t#S256` of the
/// connection's client certificate.
pub fn verify(
    token: &str,
    jwks: &Jwks,
    policy: &TokenPolicy,
    thumbprint: &str,
) -> Result<Claims, Refused> {
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Malformed("the token is larger than 8 KiB").into());
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("a JWS has exactly three segments").into());
    };
    let header: Map<String, Value> = serde_json::from_slice(&b64(h64)?)
        .map_err(|_| TokenError::Malformed("the header is not a JSON object"))?;
    let payload = b64(p64)?;
    b64(s64)?;
    if header.contains_key("crit") {
        return Err(TokenError::Malformed("a crit header is not understood").into());
    }
    if header.contains_key("enc") || header.contains_key("zip") {
        return Err(TokenError::Malformed("an encrypted (JWE) token is not accepted").into());
    }
    if let Some(typ) = header.get("typ") {
        let ok = typ.as_str().is_some_and(|t| {
            let t = t.strip_prefix("application/").unwrap_or(t);
            t.eq_ignore_ascii_case("jwt") || t.eq_ignore_ascii_case("at+jwt")
        });
        if !ok {
            return Err(TokenError::Malformed("typ is not JWT or at+jwt").into());
        }
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        None => return Err(TokenError::Malformed("the header has no alg").into()),
        Some(a) if a.eq_ignore_ascii_case("none") => {
            return Err(TokenError::Malformed("alg none is refused").into())
        }
        Some(a) if a.starts_with("HS") => {
            return Err(TokenError::Malformed("HMAC algorithms are refused").into())
        }
        Some(a) => Alg::from_name(a).ok_or(TokenError::Malformed(
            "alg is not ES256, ES384, RS256, PS256 or EdDSA",
        ))?,
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(TokenError::Malformed("kid is not a string").into()),
    };
    let key = jwks.find(kid).ok_or(TokenError::UnknownKey)?;
    if !key.algs.contains(&alg) {
        return Err(TokenError::BadSignature("alg does not match the key").into());
    }
    let signed = &token[..h64.len() + 1 + p64.len()];
    match jsonwebtoken::crypto::verify(s64, signed.as_bytes(), &key.key, alg.jwt()) {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            return Err(TokenError::BadSignature("the signature does not verify").into())
        }
    }
    // Signed by a key we trust: from here the claims are the issuer's word.
    let raw: RawClaims = serde_json::from_slice(&payload).map_err(|_| {
        TokenError::Malformed("the claims are not a JSON object of the expected types")
    })?;
    let ids = Ids {
        sub: raw.sub,
        client_id: raw.client_id,
        jti: raw.jti,
    };
    let fail = |error: TokenError| Refused {
        error,
        ids: ids.clone(),
    };
    let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
    if !(finite(raw.exp) && finite(raw.nbf) && finite(raw.iat)) {
        return Err(fail(TokenError::Malformed("a time claim is not a number")));
    }
    let Some(exp) = raw.exp else {
        return Err(fail(TokenError::Malformed("the token has no exp")));
    };
    if raw.iss.as_deref() != Some(policy.issuer.as_str()) {
        return Err(fail(TokenError::WrongIssuer));
    }
    let aud_ok = match &raw.aud {
        None => false,
        Some(Aud::One(a)) => *a == policy.audience,
        Some(Aud::Many(list)) => list.contains(&policy.audience),
    };
    if !aud_ok {
        return Err(fail(TokenError::WrongAudience));
    }
    let x5t_s256 = raw.cnf.and_then(|c| c.x5t_s256);
    match &x5t_s256 {
        None if policy.cert_bound => return Err(fail(TokenError::Unbound)),
        None => {}
        Some(t) if t != thumbprint => return Err(fail(TokenError::BindingMismatch)),
        Some(_) => {}
    }
    let scopes = raw
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Claims {
        exp,
        nbf: raw.nbf,
        iat: raw.iat,
        scopes,
        x5t_s256,
        ids,
    })
}

/// The whole check of one token: [`verify`], then [`Claims::check_time`] at `now`
/// (unix seconds).
pub fn validate(
    token: &str,
    jwks: &Jwks,
    policy: &TokenPolicy,
    thumbprint: &str,
    now: i64,
) -> Result<Claims, Refused> {
    let claims = verify(token, jwks, policy, thumbprint)?;
    claims.check_time(policy, now).map_err(|error| Refused {
        error,
        ids: claims.ids.clone(),
    })?;
    Ok(claims)
}

/// The running generation's token gate: the policy and the keys read from
/// `[tokens] jwks`.
#[derive(Debug)]
pub struct TokenGate {
    /// What a token must say.
    pub policy: TokenPolicy,
    /// The keys (shared with the next generation when only the CRLs changed).
    pub jwks: std::sync::Arc<Jwks>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::jwt::Signer;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const THUMB: &str = "q3MyP5kq-kzF3tDQb1y1GqPLxO8dV3y6kNqRr0lVq3k";

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "https://auth.lake.example".into(),
            audience: "lakegate".into(),
            cert_bound: true,
            required: Required::Always,
            leeway: 30,
        }
    }

    fn claims() -> Value {
        json!({
            "iss": "https://auth.lake.example", "aud": "lakegate", "sub": "alice",
            "iat": NOW, "nbf": NOW, "exp": NOW + 600, "jti": "j1",
            "scope": "lake:read lake:list:datasets", "cnf": {"x5t#S256": THUMB},
        })
    }

    fn header(kid: &str) -> Map<String, Value> {
        let mut h = Map::new();
        h.insert("typ".into(), json!("JWT"));
        h.insert("kid".into(), json!(kid));
        h
    }

    /// A signer and the JWKS holding its key under `kid`.
    fn setup(alg: Alg, kid: &str) -> (Signer, Jwks) {
        let (s, _) = Signer::generate(alg).unwrap();
        let doc = json!({ "keys": [s.jwk(kid)] });
        let jwks = Jwks::parse(doc.to_string().as_bytes()).unwrap();
        (s, jwks)
    }

    fn check(token: &str, jwks: &Jwks) -> Result<Claims, TokenError> {
        validate(token, jwks, &policy(), THUMB, NOW).map_err(|r| r.error)
    }

    /// A token from raw header and claims JSON, signed by `s` as it is.
    fn raw(s: &Signer, header: &Value, claims: &Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = s
            .sign(&header.as_object().unwrap().clone(), claims)
            .unwrap();
        // Reuse the signature only when the header is what Signer writes; otherwise
        // the signature is over other bytes, which is fine for structural refusals.
        let sig = signed.rsplit('.').next().unwrap();
        format!("{h}.{c}.{sig}")
    }

    #[test]
    fn every_algorithm_verifies_and_a_tampered_token_does_not() {
        for alg in Alg::ALL {
            let (s, jwks) = setup(alg, "k1");
            let t = s.sign(&header("k1"), &claims()).unwrap();
            let c = check(&t, &jwks).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(c.ids.sub.as_deref(), Some("alice"));
            assert_eq!(c.scopes, ["lake:read", "lake:list:datasets"]);
            // Another claim set under the same signature: header and signature of
            // `t`, payload of `forged`.
            let mut other = claims();
            other["scope"] = json!("lake:write lake:delete");
            let forged = s.sign(&header("k1"), &other).unwrap();
            let t: Vec<&str> = t.split('.').collect();
            let f: Vec<&str> = forged.split('.').collect();
            let spliced = format!("{}.{}.{}", t[0], f[1], t[2]);
            assert_eq!(
                check(&spliced, &jwks),
                Err(TokenError::BadSignature("the signature does not verify")),
                "{alg}"
            );
        }
    }

    #[test]
    fn refused_forms_are_malformed() {
        let (s, jwks) = setup(Alg::Es256, "k1");
        let good = s.sign(&header("k1"), &claims()).unwrap();
        let reason = |t: &str| check(t, &jwks).unwrap_err().reason();
        // alg none, with and without a signature.
        let none = raw(&s, &json!({"alg": "none", "kid": "k1"}), &claims());
        assert_eq!(
            check(&none, &jwks),
            Err(TokenError::Malformed("alg none is refused"))
        );
        let (unsigned, _) = none.rsplit_once('.').unwrap();
        assert_eq!(reason(&format!("{unsigned}.")), Reason::Malformed);
        let hs = raw(&s, &json!({"alg": "HS256", "kid": "k1"}), &claims());
        assert_eq!(
            check(&hs, &jwks),
            Err(TokenError::Malformed("HMAC algorithms are refused"))
        );
        let crit = raw(
            &s,
            &json!({"alg": "ES256", "kid": "k1", "crit": ["exp"]}),
            &claims(),
        );
        assert_eq!(reason(&crit), Reason::Malformed);
        let typ = raw(
            &s,
            &json!({"alg": "ES256", "kid": "k1", "typ": "dpop+jwt"}),
            &claims(),
        );
        assert_eq!(reason(&typ), Reason::Malformed);
        // Segments, base64, JSON.
        assert_eq!(reason("a.b"), Reason::Malformed);
        assert_eq!(reason(&format!("{good}.x")), Reason::Malformed);
        let padded = good.replacen('.', "=.", 1);
        assert_eq!(reason(&padded), Reason::Malformed);
        let (h, rest) = good.split_once('.').unwrap();
        assert_eq!(reason(&format!("{h}!.{rest}")), Reason::Malformed);
        let notjson = format!("{}.{rest}", URL_SAFE_NO_PAD.encode("{not json"));
        assert_eq!(reason(&notjson), Reason::Malformed);
        // Claims of the wrong type, under a good signature.
        let mut c = claims();
        c["exp"] = json!("tomorrow");
        assert_eq!(
            reason(&s.sign(&header("k1"), &c).unwrap()),
            Reason::Malformed
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            check(&s.sign(&header("k1"), &c).unwrap(), &jwks),
            Err(TokenError::Malformed("the token has no exp"))
        );
        // Size.
        let mut c = claims();
        c["pad"] = json!("x".repeat(MAX_TOKEN));
        let big = s.sign(&header("k1"), &c).unwrap();
        assert_eq!(
            check(&big, &jwks),
            Err(TokenError::Malformed("the token is larger than 8 KiB"))
        );
    }

    #[test]
    fn key_choice() {
        let (s, jwks) = setup(Alg::Es256, "k1");
        let t = s.sign(&header("other"), &claims()).unwrap();
        assert_eq!(check(&t, &jwks), Err(TokenError::UnknownKey));
        // No kid: fine with one key in the set, unknown with several.
        let nokid = s.sign(&Map::new(), &claims()).unwrap();
        check(&nokid, &jwks).unwrap();
        let (s2, _) = Signer::generate(Alg::Es256).unwrap();
        let two = json!({"keys": [s.jwk("k1"), s2.jwk("k2")]}).to_string();
        let jwks2 = Jwks::parse(two.as_bytes()).unwrap();
        assert_eq!(check(&nokid, &jwks2), Err(TokenError::UnknownKey));
        check(&s.sign(&header("k1"), &claims()).unwrap(), &jwks2).unwrap();
        // The key of k2 does not verify k1's signature.
        let t = s.sign(&header("k2"), &claims()).unwrap();
        assert_eq!(
            check(&t, &jwks2).unwrap_err().reason(),
            Reason::BadSignature
        );
        // An algorithm that does not fit the key: ES384 named over a P-256 key; RS256
        // over a JWK that says PS256.
        let (s384, _) = Signer::generate(Alg::Es384).unwrap();
        let t = s384.sign(&header("k1"), &claims()).unwrap();
        assert_eq!(
            check(&t, &jwks),
            Err(TokenError::BadSignature("alg does not match the key"))
        );
        let (ps, _) = Signer::generate(Alg::Ps256).unwrap();
        let jwks_ps = Jwks::parse(json!({"keys": [ps.jwk("r")]}).to_string().as_bytes()).unwrap();
        let mut h = header("r");
        h.insert("alg".into(), json!("RS256"));
        let t = raw(&ps, &Value::Object(h), &claims());
        assert_eq!(
            check(&t, &jwks_ps),
            Err(TokenError::BadSignature("alg does not match the key"))
        );
        // Without alg in the JWK, an RSA key verifies RS256 and PS256 alike.
        let mut jwk = ps.jwk("r");
        jwk.as_object_mut().unwrap().remove("alg");
        let jwks_any = Jwks::parse(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
        check(&ps.sign(&header("r"), &claims()).unwrap(), &jwks_any).unwrap();
    }

    #[test]
    fn time_issuer_audience() {
        let (s, jwks) = setup(Alg::EdDsa, "k1");
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            s.sign(&header("k1"), &c).unwrap()
        };
        assert_eq!(
            check(&with("exp", json!(NOW - 31)), &jwks),
            Err(TokenError::Expired)
        );
        check(&with("exp", json!(NOW - 29)), &jwks).unwrap();
        assert_eq!(
            check(&with("nbf", json!(NOW + 31)), &jwks),
            Err(TokenError::NotYetValid)
        );
        check(&with("nbf", json!(NOW + 29)), &jwks).unwrap();
        assert_eq!(
            check(&with("iat", json!(NOW + 31)), &jwks),
            Err(TokenError::IssuedInFuture)
        );
        assert_eq!(TokenError::IssuedInFuture.reason(), Reason::NotYetValid);
        check(&with("exp", json!((NOW + 10) as f64 + 0.5)), &jwks).unwrap();
        assert_eq!(
            check(&with("iss", json!("https://evil")), &jwks),
            Err(TokenError::WrongIssuer)
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            check(&s.sign(&header("k1"), &c).unwrap(), &jwks),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            check(&with("aud", json!("other")), &jwks),
            Err(TokenError::WrongAudience)
        );
        check(&with("aud", json!(["other", "lakegate"])), &jwks).unwrap();
        assert_eq!(
            check(&with("aud", json!(["other"])), &jwks),
            Err(TokenError::WrongAudience)
        );
        // The same verified claims, a minute later: time is checked per request.
        let c = verify(&with("exp", json!(NOW + 60)), &jwks, &policy(), THUMB).unwrap();
        c.check_time(&policy(), NOW).unwrap();
        assert_eq!(c.check_time(&policy(), NOW + 91), Err(TokenError::Expired));
        // Claims of a verified token are kept for the log.
        let r = validate(&with("iss", json!("x")), &jwks, &policy(), THUMB, NOW).unwrap_err();
        assert_eq!(r.ids.sub.as_deref(), Some("alice"));
        assert_eq!(r.ids.jti.as_deref(), Some("j1"));
    }

    #[test]
    fn binding() {
        let (s, jwks) = setup(Alg::Es256, "k1");
        let t = s.sign(&header("k1"), &claims()).unwrap();
        let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let r = validate(&t, &jwks, &policy(), other, NOW).unwrap_err();
        assert_eq!(r.error, TokenError::BindingMismatch);
        let mut c = claims();
        c.as_object_mut().unwrap().remove("cnf");
        let unbound = s.sign(&header("k1"), &c).unwrap();
        assert_eq!(check(&unbound, &jwks), Err(TokenError::Unbound));
        // cert_bound = false admits an unbound token, but a bound one is still held to
        // its certificate.
        let loose = TokenPolicy {
            cert_bound: false,
            ..policy()
        };
        validate(&unbound, &jwks, &loose, other, NOW).unwrap();
        let r = validate(&t, &jwks, &loose, other, NOW).unwrap_err();
        assert_eq!(r.error, TokenError::BindingMismatch);
    }

    #[test]
    fn scopes() {
        let c = Claims {
            exp: 0.0,
            nbf: None,
            iat: None,
            scopes: vec![
                "lake:read".into(),
                "lake:write:models".into(),
                "lake:listx".into(),
            ],
            x5t_s256: None,
            ids: Ids::default(),
        };
        assert!(c.allows(Access::Read, "datasets"));
        assert!(c.allows(Access::Write, "models"));
        assert!(!c.allows(Access::Write, "datasets"));
        assert!(!c.allows(Access::Write, "models2"));
        assert!(!c.allows(Access::List, "datasets"));
        assert!(!c.allows(Access::Delete, "models"));
        let e = c.authorize(Access::Delete, "models").unwrap_err();
        assert_eq!(e.status(), 403);
        assert_eq!(
            e.www_authenticate(),
            "Bearer realm=\"lakegate\", error=\"insufficient_scope\", error_description=\"the token's scope does not allow this request\", scope=\"lake:delete:models\""
        );
    }

    #[test]
    fn the_authorization_header() {
        let one = |v: &'static str| bearer([v].into_iter());
        assert_eq!(bearer(std::iter::empty()), Ok(None));
        assert_eq!(one("Bearer abc.def.ghi"), Ok(Some("abc.def.ghi")));
        assert_eq!(one("bearer  abc"), Ok(Some("abc")));
        assert_eq!(
            one("AWS4-HMAC-SHA256 Credential=A/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"),
            Ok(None)
        );
        assert_eq!(one("Bearer").unwrap_err().reason(), Reason::Malformed);
        assert_eq!(one("Bearer a b").unwrap_err().reason(), Reason::Malformed);
        assert_eq!(one("Bearer a\"b").unwrap_err().reason(), Reason::Malformed);
        let two = bearer(["Bearer a", "Bearer b"].into_iter()).unwrap_err();
        assert_eq!(two, TokenError::Duplicate);
        assert_eq!((two.status(), two.code()), (400, Some("invalid_request")));
        let missing = TokenError::Missing;
        assert_eq!((missing.status(), missing.code()), (401, None));
        assert_eq!(missing.www_authenticate(), "Bearer realm=\"lakegate\"");
        assert_eq!(
            TokenError::Expired.www_authenticate(),
            "Bearer realm=\"lakegate\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN + 1));
        assert_eq!(
            bearer([big.as_str()].into_iter()),
            Err(TokenError::Malformed("the token is larger than 8 KiB"))
        );
    }

    #[test]
    fn required_by_bucket() {
        let r = Required::Buckets(vec!["models".into(), "ckpt-*".into(), "*-secret".into()]);
        assert!(r.for_bucket("models"));
        assert!(r.for_bucket("ckpt-7"));
        assert!(r.for_bucket("a-secret"));
        assert!(!r.for_bucket("datasets"));
        assert!(!r.for_bucket("models2"));
        assert!(Required::Always.for_bucket("x"));
        assert!(!Required::WhenPresent.for_bucket("x"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXbY"));
        assert!(glob("*", ""));
    }

    #[test]
    fn jwks_refusals_name_the_key() {
        let (s, _) = Signer::generate(Alg::Es256).unwrap();
        let parse = |v: Value| Jwks::parse(v.to_string().as_bytes()).unwrap_err();
        let mut private = s.jwk("a");
        private["d"] = json!("AAAA");
        assert!(parse(json!({"keys": [private]})).contains("private"));
        let e = parse(json!({"keys": [{"kty": "oct", "k": "AAAA", "kid": "h"}]}));
        assert!(e.contains("private") || e.contains("oct"), "{e}");
        let e = parse(json!({"keys": [{"kty": "oct", "kid": "h"}]}));
        assert!(e.contains("HMAC"), "{e}");
        assert!(parse(json!({"keys": [s.jwk("a"), s.jwk("a")]})).contains("twice"));
        let mut nokid = s.jwk("a");
        nokid.as_object_mut().unwrap().remove("kid");
        assert!(parse(json!({"keys": [s.jwk("a"), nokid]})).contains("no kid"));
        let mut wrong = s.jwk("a");
        wrong["alg"] = json!("RS256");
        assert!(parse(json!({"keys": [wrong]})).contains("does not fit"));
        let mut enc = s.jwk("a");
        enc["use"] = json!("enc");
        assert!(parse(json!({"keys": [enc]})).contains("sig"));
        assert!(parse(json!({"keys": []})).contains("no keys"));
        assert!(parse(json!({"kty": "EC"})).contains("keys"));
        assert!(Jwks::parse(b"{").unwrap_err().contains("JSON"));
        let small = json!({"keys": [{"kty": "RSA", "kid": "r", "n": URL_SAFE_NO_PAD.encode([0xc1u8; 128]), "e": "AQAB"}]});
        assert!(parse(small).contains("1024 bits"));
        let e = parse(
            json!({"keys": [{"kty": "EC", "crv": "P-521", "kid": "e", "x": "AA", "y": "AA"}]}),
        );
        assert!(e.starts_with("keys[0] (kid \"e\")"), "{e}");
    }
}
