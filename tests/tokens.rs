//! Certificate-bound access tokens (issue 10) against the real binary: JWTs minted by
//! `lakegate pki token` and by an independent implementation (PyJWT with
//! `cryptography`), each refused form with its status, RFC 6750 error code and metric
//! reason, RFC 8705 binding across certificates and resumed sessions, JWKS rotation
//! without restart, and boto3 with the token added by an event hook.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use lakegate::authz::token::Alg;
use lakegate::pki::jwt::{self, Signer};
use serde_json::{json, Value};

const ISS: &str = "https://auth.lake.example";
const AUD: &str = "lakegate";
const ALL_SCOPES: &str = "lake:read lake:write lake:delete lake:list";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A lab with a store (buckets datasets, models) and an issuer key `issuer.key` (ES256,
/// kid k1) published in `jwks.json`.
struct Tok {
    lab: Lab,
    root: PathBuf,
}

impl Tok {
    fn new() -> Tok {
        let lab = Lab::new();
        let root = lab.path("store");
        for b in ["datasets", "models"] {
            std::fs::create_dir_all(root.join(b)).unwrap();
        }
        let t = Tok { lab, root };
        t.mint(&["--scope", "lake:read"]);
        t
    }

    /// `lakegate pki token` with the lab's issuer key and JWKS; `extra` after.
    fn mint_with(&self, key: &str, kid: &str, alg: &str, extra: &[&str]) -> String {
        let key = self.lab.path(key);
        let jwks = self.lab.path("jwks.json");
        let mut args = vec![
            "pki",
            "token",
            "--key",
            key.to_str().unwrap(),
            "--kid",
            kid,
            "--alg",
            alg,
            "--jwks",
            jwks.to_str().unwrap(),
            "--iss",
            ISS,
            "--aud",
            AUD,
        ];
        args.extend_from_slice(extra);
        let out = lakegate(&args);
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(token.split('.').count(), 3, "{token}");
        token
    }

    fn mint(&self, extra: &[&str]) -> String {
        self.mint_with("issuer.key", "k1", "ES256", extra)
    }

    /// A token bound to `who`'s certificate with `scope`.
    fn bound(&self, who: &str, scope: &str) -> String {
        let (cert, _) = self.lab.client(who);
        self.mint(&[
            "--cnf-cert",
            cert.to_str().unwrap(),
            "--scope",
            scope,
            "--sub",
            who,
        ])
    }

    /// The issuer key, to sign hand-made headers and claims.
    fn signer(&self) -> Signer {
        jwt::load_or_generate(&self.lab.path("issuer.key"), Alg::Es256).unwrap()
    }

    /// Claims like `pki token` writes, bound to `who`.
    fn claims(&self, who: &str) -> Value {
        let (cert, _) = self.lab.client(who);
        let x5t = jwt::thumbprint_of(&cert).unwrap();
        jwt::claims(
            ISS,
            AUD,
            who,
            None,
            ALL_SCOPES,
            now(),
            Duration::from_secs(600),
            Some(&x5t),
        )
        .unwrap()
    }

    /// Start the store with `[tokens]` (plus `tokens_extra`), JWKS and CRLs re-checked
    /// every second.
    fn start(&self, tokens_extra: &str) -> Server {
        let (port, admin) = (free_port(), free_port());
        let backend = format!(
            "kind = \"store\"\nroot = \"{}\"\nfsync = \"never\"",
            self.root.display()
        );
        let cfg = config_with_tls(&self.lab, port, admin, &backend, "crl_refresh = \"1s\"");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "\n[tokens]\njwks = \"jwks.json\"\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\n{tokens_extra}\n"
        ));
        std::fs::write(&cfg, text).unwrap();
        let srv = Server::spawn_config(&self.lab, port, admin, &cfg);
        // An object to read, put with a full-scope token of alice's.
        let t = self.bound("alice", ALL_SCOPES);
        let put = format!(
            "PUT /datasets/obj.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: 5\r\n\r\nhello"
        );
        let (st, _, body) = conn(&self.lab, &srv, "alice").request(put.as_bytes());
        assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));
        srv
    }
}

fn conn(lab: &Lab, srv: &Server, who: &str) -> TlsClient {
    TlsClient::connect(srv.port, client_config(lab, Some(who), false)).unwrap()
}

/// One request over a fresh connection as `who`, with `auth` as Authorization values.
fn call(t: &Tok, srv: &Server, who: &str, line: &str, auth: &[&str]) -> Response {
    let mut raw = format!("{line} HTTP/1.1\r\nHost: x\r\n");
    for a in auth {
        raw.push_str(&format!("Authorization: {a}\r\n"));
    }
    raw.push_str("\r\n");
    conn(&t.lab, srv, who).request(raw.as_bytes())
}

fn get(t: &Tok, srv: &Server, who: &str, token: &str) -> Response {
    call(
        t,
        srv,
        who,
        "GET /datasets/obj.bin",
        &[&format!("Bearer {token}")],
    )
}

fn failed(srv: &Server, reason: &str) -> f64 {
    srv.metric(
        "lakegate_tokens_total",
        &format!("result=\"failed\",reason=\"{reason}\""),
    )
}

/// Assert a refusal: status, RFC 6750 error code in WWW-Authenticate (None: no error
/// attribute), S3 code in the body, and the metric reason counted once.
fn refused(srv: &Server, r: &Response, status: u16, code: Option<&str>, reason: &str) {
    let (st, headers, body) = r;
    let body = String::from_utf8_lossy(body);
    assert_eq!(*st, status, "{body}\n{}", srv.log_plain());
    let www = header(headers, "www-authenticate").expect("WWW-Authenticate");
    assert!(www.starts_with("Bearer realm=\"lakegate\""), "{www}");
    match code {
        Some(c) => {
            assert!(www.contains(&format!("error=\"{c}\"")), "{www}");
            assert!(www.contains("error_description=\""), "{www}");
        }
        None => assert!(!www.contains("error="), "{www}"),
    }
    let s3 = match status {
        400 => "InvalidRequest",
        403 => "AccessDenied",
        _ => "InvalidToken",
    };
    assert!(body.contains(&format!("<Code>{s3}</Code>")), "{body}");
    assert_eq!(failed(srv, reason), 1.0, "{}", srv.metrics());
}

fn ok(srv: &Server, r: &Response) {
    assert_eq!(
        r.0,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&r.2),
        srv.log_plain()
    );
    assert_eq!(r.2, b"hello");
}

/// header.claims.signature from JSON values, signed with `s` (the header's alg is
/// replaced by the signer's).
fn signed(s: &Signer, header: Value, claims: &Value) -> String {
    s.sign(header.as_object().unwrap(), claims).unwrap()
}

/// header.claims.signature with the header exactly as given and `sig` as signature.
fn forged(header: &Value, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

// ---------------------------------------------------------------------------------------
// Binding (RFC 8705)
// ---------------------------------------------------------------------------------------

#[test]
fn alices_token_works_over_alice_and_is_refused_over_carol() {
    let t = Tok::new();
    let srv = t.start("");
    let token = t.bound("alice", "lake:read lake:list");
    ok(&srv, &get(&t, &srv, "alice", &token));
    // Carol is a trainer with alice's [[authz]] rule; only the certificate differs.
    let r = get(&t, &srv, "carol", &token);
    refused(&srv, &r, 401, Some("invalid_token"), "binding_mismatch");
    let www = header(&r.1, "www-authenticate").unwrap();
    assert!(www.contains("another certificate"), "{www}");
    // Carol's own token, same scopes, works for carol.
    ok(
        &srv,
        &get(&t, &srv, "carol", &t.bound("carol", "lake:read lake:list")),
    );
    let line = srv
        .log_line_with(&["bearer token refused", "binding_mismatch"])
        .expect("refusal logged");
    assert!(line.contains("carol") && line.contains("alice"), "{line}");
}

#[test]
fn binding_holds_after_alice_resumes_her_session() {
    let t = Tok::new();
    let srv = t.start("");
    let token = t.bound("alice", "lake:read");
    let resumed = |srv: &Server| srv.metric("lakegate_tls_sessions_total", "resumed=\"true\"");
    for who in ["alice", "carol"] {
        // One config per client: its session cache holds the tickets of the first
        // connection, so the second one resumes.
        let cfg = client_config(&t.lab, Some(who), false);
        let before = resumed(&srv);
        let req = format!(
            "GET /datasets/obj.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let first = TlsClient::connect(srv.port, cfg.clone())
            .unwrap()
            .request(req.as_bytes());
        let second = TlsClient::connect(srv.port, cfg)
            .unwrap()
            .request(req.as_bytes());
        assert_eq!(
            resumed(&srv),
            before + 1.0,
            "{who}: the second session resumed"
        );
        if who == "alice" {
            ok(&srv, &first);
            ok(&srv, &second);
        } else {
            assert_eq!((first.0, second.0), (401, 401), "{who}");
            assert!(header(&second.1, "www-authenticate")
                .unwrap()
                .contains("invalid_token"));
        }
    }
    assert_eq!(failed(&srv, "binding_mismatch"), 2.0);
}

#[test]
fn unbound_token_is_refused_when_cert_bound() {
    let t = Tok::new();
    let srv = t.start("");
    let token = t.mint(&["--scope", "lake:read"]);
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "unbound",
    );
}

// ---------------------------------------------------------------------------------------
// An independent implementation: PyJWT + cryptography
// ---------------------------------------------------------------------------------------

const PYJWT_SCRIPT: &str = r#"
import base64, json, sys, time
import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, RSAPSSAlgorithm, OKPAlgorithm
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, ed25519

jwks_path, cert_path, iss, aud = sys.argv[1:5]
with open(cert_path, "rb") as f:
    cert = x509.load_pem_x509_certificate(f.read())
x5t = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).rstrip(b"=").decode()

keys = {
    "ES256": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
    "ES384": (ec.generate_private_key(ec.SECP384R1()), ECAlgorithm),
    "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
    "PS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAPSSAlgorithm),
    "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
}
jwks = {"keys": []}
now = int(time.time())
for alg, (key, cls) in keys.items():
    jwk = json.loads(cls.to_jwk(key.public_key()))
    jwk.update({"kid": "py-" + alg, "alg": alg, "use": "sig"})
    jwks["keys"].append(jwk)
    claims = {"iss": iss, "aud": [aud, "other"], "sub": "py-" + alg, "iat": now, "nbf": now,
              "exp": now + 600, "jti": "jti-" + alg, "scope": "lake:read:datasets",
              "client_id": "pyjwt", "cnf": {"x5t#S256": x5t}}
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": "py-" + alg})
    print(alg, token)
with open(jwks_path, "w") as f:
    json.dump(jwks, f)
"#;

#[test]
fn pyjwt_tokens_of_every_algorithm_are_accepted() {
    let Some(py) = python_with("jwt, cryptography") else {
        return;
    };
    let t = Tok::new();
    let script = t.lab.path("pyjwt_mint.py");
    std::fs::write(&script, PYJWT_SCRIPT).unwrap();
    let (cert, _) = t.lab.client("alice");
    let pyjwks = t.lab.path("py-jwks.json");
    let o = python_cmd(&py)
        .arg(&script)
        .arg(&pyjwks)
        .arg(&cert)
        .args([ISS, AUD])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Serve PyJWT's keys beside ours (ours put the test object in).
    let mut ours: Value =
        serde_json::from_slice(&std::fs::read(t.lab.path("jwks.json")).unwrap()).unwrap();
    let theirs: Value = serde_json::from_slice(&std::fs::read(&pyjwks).unwrap()).unwrap();
    for k in theirs["keys"].as_array().unwrap() {
        ours["keys"].as_array_mut().unwrap().push(k.clone());
    }
    std::fs::write(t.lab.path("jwks.json"), ours.to_string()).unwrap();
    let srv = t.start("");
    let stdout = String::from_utf8(o.stdout).unwrap();
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let (alg, token) = line.split_once(' ').unwrap();
        let r = get(&t, &srv, "alice", token);
        assert_eq!(
            r.0,
            200,
            "{alg}: {}\n{}",
            String::from_utf8_lossy(&r.2),
            srv.log_plain()
        );
        // Scope lake:read:datasets only: models is out of reach.
        let r = call(
            &t,
            &srv,
            "alice",
            "GET /models/x",
            &[&format!("Bearer {token}")],
        );
        assert_eq!(r.0, 403, "{alg}");
        seen.push(alg.to_string());
    }
    assert_eq!(seen, ["ES256", "ES384", "RS256", "PS256", "EdDSA"]);
    assert_eq!(failed(&srv, "insufficient_scope"), 5.0);
    let line = srv
        .log_line_with(&["jti-EdDSA", "pyjwt"])
        .expect("sub/client_id/jti logged");
    assert!(line.contains("py-EdDSA"), "{line}");
}

// ---------------------------------------------------------------------------------------
// Refused forms (item 2), each on its own
// ---------------------------------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let token = forged(
        &json!({"alg": "none", "kid": "k1", "typ": "JWT"}),
        &t.claims("alice"),
        "",
    );
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "malformed",
    );
}

#[test]
fn hmac_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    // An HS256 token "signed" with the public key as the secret: the classic confusion.
    let jwks = std::fs::read_to_string(t.lab.path("jwks.json")).unwrap();
    let mac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, jwks.as_bytes());
    let h = json!({"alg": "HS256", "kid": "k1"});
    let unsigned = forged(&h, &t.claims("alice"), "");
    let sig = aws_lc_rs::hmac::sign(&mac, unsigned.trim_end_matches('.').as_bytes());
    let token = format!("{unsigned}{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "malformed",
    );
}

#[test]
fn alg_that_does_not_match_the_jwk_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    // A P-384 key signs as ES384 under kid k1, whose JWK is ES256.
    let (p384, _) = Signer::generate(Alg::Es384).unwrap();
    let token = signed(
        &p384,
        json!({"kid": "k1", "typ": "JWT"}),
        &t.claims("alice"),
    );
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "bad_signature",
    );
}

#[test]
fn bad_signature_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let (other, _) = Signer::generate(Alg::Es256).unwrap();
    let token = signed(&other, json!({"kid": "k1"}), &t.claims("alice"));
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "bad_signature",
    );
}

#[test]
fn unknown_kid_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let token = signed(&t.signer(), json!({"kid": "nope"}), &t.claims("alice"));
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "unknown_key",
    );
}

#[test]
fn crit_header_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let token = signed(
        &t.signer(),
        json!({"kid": "k1", "crit": ["exp"]}),
        &t.claims("alice"),
    );
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "malformed",
    );
}

#[test]
fn bad_base64_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let good = signed(&t.signer(), json!({"kid": "k1"}), &t.claims("alice"));
    // Standard base64 padding in a segment: not base64url-without-padding.
    let (h, rest) = good.split_once('.').unwrap();
    let token = format!("{h}==.{rest}");
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "malformed",
    );
}

#[test]
fn bad_json_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let good = signed(&t.signer(), json!({"kid": "k1"}), &t.claims("alice"));
    let (_, rest) = good.split_once('.').unwrap();
    let token = format!("{}.{rest}", URL_SAFE_NO_PAD.encode("{\"alg\":\"ES256\","));
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "malformed",
    );
}

#[test]
fn token_over_8_kib_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let mut c = t.claims("alice");
    c["padding"] = json!("x".repeat(8 * 1024));
    let token = signed(&t.signer(), json!({"kid": "k1"}), &c);
    assert!(token.len() > 8 * 1024 && token.len() < 14 * 1024);
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "malformed",
    );
}

#[test]
fn second_authorization_header_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let token = t.bound("alice", "lake:read");
    let bearer = format!("Bearer {token}");
    let r = call(
        &t,
        &srv,
        "alice",
        "GET /datasets/obj.bin",
        &[&bearer, &bearer],
    );
    refused(&srv, &r, 400, Some("invalid_request"), "malformed");
}

// ---------------------------------------------------------------------------------------
// Claims, scope, required (items 1-4)
// ---------------------------------------------------------------------------------------

#[test]
fn expired_token_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let (cert, _) = t.lab.client("alice");
    let at = (now() - 7200).to_string();
    let token = t.mint(&[
        "--cnf-cert",
        cert.to_str().unwrap(),
        "--scope",
        "lake:read",
        "--ttl",
        "1h",
        "--now",
        &at,
    ]);
    let r = get(&t, &srv, "alice", &token);
    refused(&srv, &r, 401, Some("invalid_token"), "expired");
    assert!(header(&r.1, "www-authenticate")
        .unwrap()
        .contains("expired"));
}

#[test]
fn not_yet_valid_token_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let (cert, _) = t.lab.client("alice");
    let at = (now() + 3600).to_string();
    let token = t.mint(&[
        "--cnf-cert",
        cert.to_str().unwrap(),
        "--scope",
        "lake:read",
        "--now",
        &at,
    ]);
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "not_yet_valid",
    );
}

#[test]
fn token_that_expires_on_a_kept_alive_connection_stops_working_there() {
    let t = Tok::new();
    let srv = t.start("leeway = \"0s\"");
    let (cert, _) = t.lab.client("alice");
    let token = t.mint(&[
        "--cnf-cert",
        cert.to_str().unwrap(),
        "--scope",
        "lake:read",
        "--ttl",
        "3s",
    ]);
    let req = format!(
        "GET /datasets/obj.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut c = conn(&t.lab, &srv, "alice");
    ok(&srv, &c.request(req.as_bytes()));
    std::thread::sleep(Duration::from_secs(4));
    let r = c.request(req.as_bytes());
    refused(&srv, &r, 401, Some("invalid_token"), "expired");
}

#[test]
fn wrong_issuer_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let mut c = t.claims("alice");
    c["iss"] = json!("https://auth.elsewhere.example");
    let token = signed(&t.signer(), json!({"kid": "k1"}), &c);
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "wrong_issuer",
    );
}

#[test]
fn wrong_audience_is_refused() {
    let t = Tok::new();
    let srv = t.start("");
    let mut c = t.claims("alice");
    c["aud"] = json!(["billing", "reports"]);
    let token = signed(&t.signer(), json!({"kid": "k1"}), &c);
    refused(
        &srv,
        &get(&t, &srv, "alice", &token),
        401,
        Some("invalid_token"),
        "wrong_audience",
    );
}

#[test]
fn insufficient_scope_globally() {
    let t = Tok::new();
    let srv = t.start("");
    let token = t.bound("alice", "lake:list");
    let r = get(&t, &srv, "alice", &token);
    refused(
        &srv,
        &r,
        403,
        Some("insufficient_scope"),
        "insufficient_scope",
    );
    let www = header(&r.1, "www-authenticate").unwrap();
    assert!(www.contains("scope=\"lake:read:datasets\""), "{www}");
    // What the scope does grant works.
    let r = call(
        &t,
        &srv,
        "alice",
        "GET /datasets?list-type=2",
        &[&format!("Bearer {token}")],
    );
    assert_eq!(r.0, 200);
}

#[test]
fn insufficient_scope_per_bucket() {
    let t = Tok::new();
    let srv = t.start("");
    let token = t.bound("alice", "lake:read:models lake:write:datasets");
    let r = get(&t, &srv, "alice", &token);
    refused(
        &srv,
        &r,
        403,
        Some("insufficient_scope"),
        "insufficient_scope",
    );
    assert!(header(&r.1, "www-authenticate")
        .unwrap()
        .contains("scope=\"lake:read:datasets\""));
    // lake:write:datasets writes datasets, and lake:read:models reads models (404:
    // admitted, then not found).
    let put = format!(
        "PUT /datasets/new.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\n\r\nhi"
    );
    assert_eq!(conn(&t.lab, &srv, "alice").request(put.as_bytes()).0, 201);
    let r = call(
        &t,
        &srv,
        "alice",
        "GET /models/none.bin",
        &[&format!("Bearer {token}")],
    );
    assert_eq!(r.0, 404);
}

#[test]
fn authz_rule_and_scope_must_both_allow() {
    let t = Tok::new();
    let srv = t.start("");
    // mallory has a valid token bound to her certificate with every scope, but no
    // [[authz]] rule: the identity check still says no.
    let token = t.bound("mallory", ALL_SCOPES);
    let r = get(&t, &srv, "mallory", &token);
    assert_eq!(r.0, 403, "{}", String::from_utf8_lossy(&r.2));
    assert!(header(&r.1, "www-authenticate").is_none());
}

#[test]
fn missing_token_is_refused_when_required() {
    let t = Tok::new();
    let srv = t.start("required = true");
    let r = call(&t, &srv, "alice", "GET /datasets/obj.bin", &[]);
    refused(&srv, &r, 401, None, "missing");
    // A SigV4 Authorization (what boto3 sends with credentials) is no bearer token.
    let sigv4 = "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";
    let r = call(&t, &srv, "alice", "GET /datasets/obj.bin", &[sigv4]);
    assert_eq!(r.0, 401);
    assert_eq!(failed(&srv, "missing"), 2.0);
}

#[test]
fn no_token_is_allowed_when_not_required_but_a_bad_one_is_refused() {
    let t = Tok::new();
    let srv = t.start("required = false");
    ok(&srv, &call(&t, &srv, "alice", "GET /datasets/obj.bin", &[]));
    assert_eq!(
        srv.metric("lakegate_tokens_total", "result=\"absent\""),
        1.0
    );
    assert_eq!(failed(&srv, "missing"), 0.0);
    // A token sent must still be valid.
    let r = get(&t, &srv, "carol", &t.bound("alice", "lake:read"));
    refused(&srv, &r, 401, Some("invalid_token"), "binding_mismatch");
}

#[test]
fn required_for_listed_buckets_only() {
    let t = Tok::new();
    let srv = t.start("required = [\"models\"]");
    ok(&srv, &call(&t, &srv, "alice", "GET /datasets/obj.bin", &[]));
    let r = call(&t, &srv, "alice", "GET /models/x.bin", &[]);
    refused(&srv, &r, 401, None, "missing");
    let token = t.bound("alice", "lake:read:models");
    let r = call(
        &t,
        &srv,
        "alice",
        "GET /models/x.bin",
        &[&format!("Bearer {token}")],
    );
    assert_eq!(r.0, 404);
}

// ---------------------------------------------------------------------------------------
// Logs, metrics, JWKS rotation, check
// ---------------------------------------------------------------------------------------

#[test]
fn the_token_never_reaches_the_log_or_the_metrics() {
    let t = Tok::new();
    let srv = t.start("");
    let good = t.bound("alice", "lake:read");
    ok(&srv, &get(&t, &srv, "alice", &good));
    refused(
        &srv,
        &get(&t, &srv, "carol", &good),
        401,
        Some("invalid_token"),
        "binding_mismatch",
    );
    let mut c = t.claims("alice");
    c["iss"] = json!("x");
    let bad = signed(&t.signer(), json!({"kid": "k1"}), &c);
    assert_eq!(get(&t, &srv, "alice", &bad).0, 401);
    let sig = good.rsplit('.').next().unwrap();
    for text in [srv.log_settled(), srv.metrics()] {
        for tok in [&good, &bad] {
            assert!(!text.contains(tok.as_str()));
            for part in tok.split('.') {
                assert!(!text.contains(part), "a token segment leaked: {part}");
            }
        }
        assert!(!text.contains(sig));
    }
    // What the log does say: who, which token (jti), why.
    let line = srv
        .log_line_with(&["bearer token refused", "wrong_issuer"])
        .unwrap();
    assert!(
        line.contains("sub=\"alice\"") || line.contains("sub=alice"),
        "{line}"
    );
    assert!(line.contains("jti"), "{line}");
    assert!(srv
        .log_line_with(&["request", "status=200", "jti"])
        .is_some());
}

#[test]
fn jwks_rotation_without_restart() {
    let t = Tok::new();
    let srv = t.start("");
    let old = t.bound("alice", "lake:read");
    ok(&srv, &get(&t, &srv, "alice", &old));
    // A new key added to the file is accepted once the file is re-read (every
    // crl_refresh = 1s here), without a restart.
    let (cert, _) = t.lab.client("alice");
    let c = cert.to_str().unwrap();
    let new = t.mint_with(
        "issuer2.key",
        "k2",
        "EdDSA",
        &["--cnf-cert", c, "--scope", "lake:read"],
    );
    assert!(eventually(Duration::from_secs(10), || get(
        &t, &srv, "alice", &new
    )
    .0 == 200));
    assert_eq!(
        srv.metric("lakegate_jwks_reloads_total", "result=\"ok\""),
        1.0
    );
    // The old key removed: its tokens are refused after the refresh.
    let path = t.lab.path("jwks.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kid"] != "k1");
    std::fs::write(&path, doc.to_string()).unwrap();
    assert!(eventually(Duration::from_secs(10), || get(
        &t, &srv, "alice", &old
    )
    .0 == 401));
    assert!(failed(&srv, "unknown_key") >= 1.0);
    ok(&srv, &get(&t, &srv, "alice", &new));
    // A broken file keeps the keys in use, and is counted once.
    std::fs::write(&path, "{\"keys\": [").unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        srv.metric("lakegate_jwks_reloads_total", "result=\"failed\"") == 1.0
    }));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        srv.metric("lakegate_jwks_reloads_total", "result=\"failed\""),
        1.0
    );
    ok(&srv, &get(&t, &srv, "alice", &new));
    assert!(srv
        .log_line_with(&["JWKS file changed on disk but cannot be used"])
        .is_some());
}

#[test]
fn check_reports_tokens_and_refuses_them_in_forward_mode() {
    let t = Tok::new();
    let (port, admin) = (free_port(), free_port());
    let backend = format!("kind = \"store\"\nroot = \"{}\"", t.root.display());
    let cfg = t.lab.config(port, admin, "", &backend);
    let tokens =
        format!("\n[tokens]\njwks = \"jwks.json\"\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\n");
    let text = std::fs::read_to_string(&cfg).unwrap() + &tokens;
    std::fs::write(&cfg, &text).unwrap();
    let out = lakegate(&["check", "--config", cfg.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tokens:") && stdout.contains("k1 (ES256)"),
        "{stdout}"
    );
    // A broken JWKS is a configuration error naming tokens.jwks.
    std::fs::write(t.lab.path("jwks.json"), "[]").unwrap();
    let o = Command::new(bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tokens.jwks"));
    // Forward mode has no HTTP to carry a token.
    let fwd = t.lab.config(
        free_port(),
        free_port(),
        "",
        "kind = \"forward\"\nupstream = \"127.0.0.1:9\"",
    );
    let text = std::fs::read_to_string(&fwd).unwrap() + &tokens;
    std::fs::write(&fwd, &text).unwrap();
    let o = Command::new(bin())
        .args(["check", "--config", fwd.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("tokens") && err.contains("forward"), "{err}");
}

// ---------------------------------------------------------------------------------------
// boto3 with the token added by an event hook
// ---------------------------------------------------------------------------------------

const BOTO3_SCRIPT: &str = r#"
import sys
import boto3, botocore
from botocore.config import Config

endpoint, ca, cert, key, token, dst = sys.argv[1:7]
cfg = Config(
    signature_version=botocore.UNSIGNED,
    s3={"addressing_style": "path"},
    client_cert=(cert, key),
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    retries={"total_max_attempts": 1, "mode": "standard"},
)
s3 = boto3.client("s3", endpoint_url=endpoint, verify=ca, config=cfg, region_name="us-east-1")

try:
    s3.list_objects_v2(Bucket="datasets")
    raise AssertionError("listed without a token")
except botocore.exceptions.ClientError as e:
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 401, e.response
    assert e.response["Error"]["Code"] == "InvalidToken", e.response
    print("without token:", e)

def add_bearer(request, **kwargs):
    request.headers["Authorization"] = "Bearer " + token

s3.meta.events.register("before-send.s3.*", add_bearer)
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="datasets").get("Contents", [])]
assert "obj.bin" in keys, keys
s3.download_file("datasets", "obj.bin", dst)
with open(dst, "rb") as f:
    assert f.read() == b"hello"
print("boto3-ok")
"#;

#[test]
fn boto3_lists_and_downloads_with_the_token_in_an_event_hook() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let t = Tok::new();
    let srv = t.start("");
    let token = t.bound("alice", "lake:read lake:list");
    let script = t.lab.path("boto3_bearer.py");
    std::fs::write(&script, BOTO3_SCRIPT).unwrap();
    let (cert, key) = t.lab.client("alice");
    let o = python_cmd(&py)
        .arg(&script)
        .arg(format!("https://127.0.0.1:{}", srv.port))
        .arg(t.lab.path("ca.crt"))
        .arg(&cert)
        .arg(&key)
        .arg(&token)
        .arg(t.lab.path("boto3-download.bin"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("boto3-ok"),
        "boto3 script failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        srv.log_plain()
    );
    assert!(stdout.contains("(InvalidToken)"), "{stdout}");
    assert!(failed(&srv, "missing") >= 1.0);
}

/// A stolen or narrow token cannot read through a copy: CopyObject and UploadPartCopy
/// need the token's read scope on the source bucket as well as its write on the
/// destination, even where alice's [[authz]] rule would allow the read.
#[test]
fn copies_need_the_tokens_read_scope_on_the_source() {
    let t = Tok::new();
    let srv = t.start("");
    let narrow = t.bound("alice", "lake:write:datasets lake:read:models");
    let copy = |token: &str, line: &str| {
        let raw = format!(
            "{line} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nx-amz-copy-source: /datasets/obj.bin\r\nContent-Length: 0\r\n\r\n"
        );
        conn(&t.lab, &srv, "alice").request(raw.as_bytes())
    };
    let r = copy(&narrow, "PUT /datasets/copy.bin");
    refused(
        &srv,
        &r,
        403,
        Some("insufficient_scope"),
        "insufficient_scope",
    );
    assert!(header(&r.1, "www-authenticate")
        .unwrap()
        .contains("scope=\"lake:read:datasets\""));
    assert!(!t.root.join("datasets/copy.bin").exists());

    // UploadPartCopy: an upload alice may write to, a part from a source the token may
    // not read; nothing is stored in the upload.
    let create = format!(
        "POST /datasets/big.bin?uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {narrow}\r\nContent-Length: 0\r\n\r\n"
    );
    let (st, _, body) = conn(&t.lab, &srv, "alice").request(create.as_bytes());
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(st, 200, "{body}");
    let id = body
        .split("<UploadId>")
        .nth(1)
        .and_then(|s| s.split("</UploadId>").next())
        .expect("UploadId")
        .to_owned();
    let r = copy(
        &narrow,
        &format!("PUT /datasets/big.bin?partNumber=1&uploadId={id}"),
    );
    assert_eq!(r.0, 403, "{}", String::from_utf8_lossy(&r.2));
    assert!(header(&r.1, "www-authenticate")
        .unwrap()
        .contains("scope=\"lake:read:datasets\""));
    let parts = call(
        &t,
        &srv,
        "alice",
        &format!("GET /datasets/big.bin?uploadId={id}"),
        &[&format!("Bearer {narrow}")],
    );
    assert_eq!(parts.0, 200, "{}", String::from_utf8_lossy(&parts.2));
    assert!(!String::from_utf8_lossy(&parts.2).contains("<Part>"));

    // With read on the source as well, the same part copy is taken.
    let full = t.bound("alice", "lake:write:datasets lake:read:datasets");
    let r = copy(
        &full,
        &format!("PUT /datasets/big.bin?partNumber=1&uploadId={id}"),
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    assert!(String::from_utf8_lossy(&r.2).contains("<CopyPartResult"));
}
