//! The trust guarantee, tried as an attacker would (issue 9): resumption with an old
//! ticket after expiry, CA removal, stale CRLs and the ticket lifetime; open
//! connections after a revocation; names of one type posing as another; deny rules in
//! forward mode; secrets other users can read; configuration that would not be
//! enforced. Client certificates come from `openssl` as well as from `lakegate pki`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::HandshakeKind;

/// A rustls client config presenting `NAME.crt` / `NAME.key` from the lab directory.
fn client_of(lab: &Lab, name: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(lab.path("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs = CertificateDer::pem_file_iter(lab.path(&format!("{name}.crt")))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(lab.path(&format!("{name}.key"))).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap(),
    )
}

/// `brief`, a trainer whose openssl-made certificate expires `secs` from now.
fn brief_client(lab: &Lab, secs: i64) {
    openssl_client(
        lab,
        "brief",
        "/CN=brief",
        Some("URI:spiffe://lake.example/trainer/brief"),
        Some(&openssl_end_in(secs)),
    );
}

fn refused_resumptions(srv: &Server, reason: &str) -> f64 {
    srv.metric(
        "lakegate_tls_resumptions_refused_total",
        &format!("reason=\"{reason}\""),
    )
}

fn failed(srv: &Server, reason: &str) -> f64 {
    srv.metric(
        "lakegate_handshakes_total",
        &format!("result=\"failed\",reason=\"{reason}\""),
    )
}

/// Rewrite a lab config file and reload it with SIGHUP; waits for the reload to count.
fn reload_with(srv: &Server, cfg: &std::path::Path, edit: impl Fn(String) -> String) {
    let before = srv.metric("lakegate_config_reloads_total", "result=\"ok\"");
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, edit(text)).unwrap();
    srv.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || srv
            .metric("lakegate_config_reloads_total", "result=\"ok\"")
            > before),
        "reload did not take: {}",
        srv.log_plain()
    );
}

#[test]
fn an_expired_certificate_does_not_resume_with_its_old_ticket() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    // Valid for a few seconds, made by openssl.
    brief_client(&lab, 5);
    let srv = Server::forward_tls(&lab, &up, "");
    let cfg = client_of(&lab, "brief");
    assert_eq!(
        session(srv.port, &cfg, b"one").unwrap().kind,
        HandshakeKind::Full
    );
    assert_eq!(
        session(srv.port, &cfg, b"two").unwrap().kind,
        HandshakeKind::Resumed,
        "resumption works while the certificate is valid"
    );
    std::thread::sleep(Duration::from_secs(6));
    // The landed main resumed this three times in a row; now each try is refused.
    for i in 0..3 {
        let r = session(srv.port, &cfg, b"three");
        assert!(
            r.is_err(),
            "try {i}: an expired certificate was served: {r:?}"
        );
    }
    assert!(
        refused_resumptions(&srv, "expired") >= 1.0,
        "{}",
        srv.metrics()
    );
    assert_eq!(
        failed(&srv, "expired"),
        3.0,
        "each try became a full handshake"
    );
}

#[test]
fn a_ticket_stops_resuming_once_its_ca_is_no_longer_trusted() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let (port, admin) = (free_port(), free_port());
    let cfg = config_with_tls(&lab, port, admin, &forward_backend(&up), "");
    let srv = Server::spawn_config(&lab, port, admin, &cfg);
    let alice = client_config(&lab, Some("alice"), false);
    assert_eq!(
        session(port, &alice, b"a").unwrap().kind,
        HandshakeKind::Full
    );
    // The operator switches client_ca to another CA (and its CRL goes with it).
    lakegate(&["pki", "crl", "--dir", lab.path("other").to_str().unwrap()]);
    reload_with(&srv, &cfg, |t| {
        t.replace("client_ca = \"ca.crt\"", "client_ca = \"other/ca.crt\"")
            .replace("crl = [\"crl.pem\"]", "crl = [\"other/crl.pem\"]")
    });
    let r = session(port, &alice, b"b");
    assert!(
        r.is_err(),
        "an old ticket was served after its CA was removed: {r:?}"
    );
    assert_eq!(
        refused_resumptions(&srv, "unknown_ca"),
        1.0,
        "{}",
        srv.metrics()
    );
    assert_eq!(failed(&srv, "unknown_ca"), 1.0);
    // The other CA's client is served under the new configuration.
    let eve = client_config(&lab, Some("eve"), false);
    assert!(session(port, &eve, b"e").is_ok());
}

#[test]
fn a_stale_crl_under_refuse_stops_resumption() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let srv = Server::forward_tls(&lab, &up, "crl_stale = \"refuse\"\ncrl_refresh = \"1s\"");
    let alice = client_config(&lab, Some("alice"), false);
    assert_eq!(
        session(srv.port, &alice, b"a").unwrap().kind,
        HandshakeKind::Full
    );
    let d = lab.dir.path().to_str().unwrap().to_string();
    lakegate(&["pki", "crl", "--dir", &d, "--revoke", "bob", "--stale"]);
    assert!(eventually(Duration::from_secs(10), || srv
        .metric("lakegate_crl_reloads_total", "result=\"ok\"")
        >= 1.0));
    let r = session(srv.port, &alice, b"b");
    assert!(
        r.is_err(),
        "resumed under a stale CRL with crl_stale = refuse: {r:?}"
    );
    assert_eq!(
        refused_resumptions(&srv, "crl_stale"),
        1.0,
        "{}",
        srv.metrics()
    );
    assert_eq!(failed(&srv, "crl_stale"), 1.0);
}

#[test]
fn a_ticket_older_than_ticket_lifetime_gets_a_full_handshake_even_after_resumptions() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let srv = Server::forward_tls(&lab, &up, "ticket_lifetime = \"3s\"");
    let alice = client_config(&lab, Some("alice"), false);
    let t0 = Instant::now();
    assert_eq!(
        session(srv.port, &alice, b"a").unwrap().kind,
        HandshakeKind::Full
    );
    std::thread::sleep(Duration::from_millis(1500));
    // A resumption within the lifetime hands out a fresh ticket...
    assert_eq!(
        session(srv.port, &alice, b"b").unwrap().kind,
        HandshakeKind::Resumed
    );
    // ...which still carries t0: 4.2 s after t0 it is refused, though it is only
    // 2.7 s old (a ticket whose clock restarted on each resumption would resume).
    std::thread::sleep(Duration::from_millis(4200).saturating_sub(t0.elapsed()));
    assert_eq!(
        session(srv.port, &alice, b"c").unwrap().kind,
        HandshakeKind::Full,
        "a refused ticket is a normal full handshake for the client"
    );
    assert!(
        refused_resumptions(&srv, "too_old") >= 1.0,
        "{}",
        srv.metrics()
    );
    assert_eq!(
        srv.metric("lakegate_handshakes_total", "result=\"ok\",reason=\"\""),
        3.0
    );
}

/// A forward session held open: one echo round trip, then the connection stays up.
struct Held {
    conn: rustls::ClientConnection,
    sock: TcpStream,
}

impl Held {
    fn open(port: u16, cfg: &Arc<rustls::ClientConfig>) -> Held {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut conn =
            rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
                .unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        let mut h = Held { conn, sock };
        assert_eq!(h.echo(b"ping").as_deref(), Ok(&b"ping"[..]));
        h
    }

    fn echo(&mut self, data: &[u8]) -> Result<Vec<u8>, String> {
        self.conn.writer().write_all(data).unwrap();
        self.conn
            .complete_io(&mut self.sock)
            .map_err(|e| e.to_string())?;
        self.wait(Duration::from_secs(5), data.len())
    }

    /// Read until `want` plaintext bytes came, the server closed, or `limit` passed.
    fn wait(&mut self, limit: Duration, want: usize) -> Result<Vec<u8>, String> {
        let t = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        self.sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while t.elapsed() < limit {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => return Err("close_notify".into()),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() >= want {
                        return Ok(got);
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Err("eof".into()),
                Ok(_) => {
                    self.conn.process_new_packets().map_err(|e| e.to_string())?;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("still open".into())
    }
}

#[test]
fn a_forward_relay_of_a_revoked_client_is_closed_within_crl_refresh() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let srv = Server::forward_tls(&lab, &up, "crl_refresh = \"1s\"");
    let mut alice = Held::open(srv.port, &client_config(&lab, Some("alice"), false));
    let mut carol = Held::open(srv.port, &client_config(&lab, Some("carol"), false));
    let d = lab.dir.path().to_str().unwrap().to_string();
    let t = Instant::now();
    lakegate(&[
        "pki", "crl", "--dir", &d, "--revoke", "bob", "--revoke", "alice",
    ]);
    // crl_refresh (1 s) to notice the file, up to 1 s for the worker to re-judge.
    assert_eq!(
        alice.wait(Duration::from_secs(5), usize::MAX),
        Err("close_notify".into()),
        "the revoked client's relay must end with close_notify"
    );
    println!(
        "revoked relay closed {:?} after the CRL was replaced",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(4));
    // Carol is not revoked: her relay carries on.
    assert_eq!(carol.echo(b"still here").as_deref(), Ok(&b"still here"[..]));
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"revoked\""
        ),
        1.0
    );
    assert!(srv
        .log_line_with(&["relay closed", "trainer/alice", "revoked"])
        .is_some());
}

#[test]
fn a_forward_relay_ends_when_its_certificate_expires_or_its_rule_is_removed() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    brief_client(&lab, 4);
    let (port, admin) = (free_port(), free_port());
    let cfg = config_with_tls(&lab, port, admin, &forward_backend(&up), "");
    let srv = Server::spawn_config(&lab, port, admin, &cfg);
    let mut brief = Held::open(port, &client_of(&lab, "brief"));
    let mut carol = Held::open(port, &client_config(&lab, Some("carol"), false));
    assert_eq!(
        brief.wait(Duration::from_secs(8), usize::MAX),
        Err("close_notify".into())
    );
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"expired\""
        ),
        1.0
    );
    // A rule that denies carol is put first; her open relay is closed.
    reload_with(&srv, &cfg, |t| {
        t.replace(
            "[[authz]]",
            "[[authz]]\nidentity = \"spiffe://lake.example/trainer/carol\"\naccess = []\n\n[[authz]]",
        )
    });
    assert_eq!(
        carol.wait(Duration::from_secs(4), usize::MAX),
        Err("close_notify".into())
    );
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"unauthorized\""
        ),
        1.0
    );
}

/// A forward server with `server_extra` in its `[server]` table, and its config file
/// (for a reload to rewrite).
fn relay_server(lab: &Lab, up: &Upstream, server_extra: &str) -> (Server, std::path::PathBuf) {
    let (port, admin) = (free_port(), free_port());
    let cfg = lab.config(port, admin, server_extra, &forward_backend(up));
    (Server::spawn_config(lab, port, admin, &cfg), cfg)
}

#[test]
fn a_relay_is_closed_at_max_connection_age() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let (srv, _) = relay_server(&lab, &up, "max_connection_age = \"2s\"");
    let port = srv.port;
    let t = Instant::now();
    let mut alice = Held::open(port, &client_config(&lab, Some("alice"), false));
    assert_eq!(
        alice.wait(Duration::from_secs(6), usize::MAX),
        Err("close_notify".into())
    );
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"max_connection_age\""
        ),
        1.0
    );
}

/// A reload's `max_connection_age` holds the relays already open, counted from their
/// accept: lengthened, an open relay outlives the age it was accepted under; shortened
/// below its age, it is ended at once.
#[test]
fn a_reload_of_max_connection_age_holds_the_relays_already_open() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let (srv, cfg) = relay_server(&lab, &up, "max_connection_age = \"3s\"");
    let t = Instant::now();
    let mut alice = Held::open(srv.port, &client_config(&lab, Some("alice"), false));
    reload_with(&srv, &cfg, |c| {
        c.replace("max_connection_age = \"3s\"", "max_connection_age = \"1h\"")
    });
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the reload came too late"
    );
    // Past the age she was accepted under: still relayed.
    assert_eq!(
        alice.wait(Duration::from_secs(4), usize::MAX),
        Err("still open".into())
    );
    assert_eq!(alice.echo(b"still here").as_deref(), Ok(&b"still here"[..]));
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"max_connection_age\""
        ),
        0.0
    );
    // Now older than the new age: ended without waiting for traffic.
    reload_with(&srv, &cfg, |c| {
        c.replace("max_connection_age = \"1h\"", "max_connection_age = \"2s\"")
    });
    let cut = Instant::now();
    assert_eq!(
        alice.wait(Duration::from_secs(3), usize::MAX),
        Err("close_notify".into())
    );
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "{:?}",
        cut.elapsed()
    );
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"max_connection_age\""
        ),
        1.0
    );
}

#[test]
fn names_of_one_type_do_not_pass_for_another() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    // URI SAN of an intruder, CN that looks like a trainer.
    openssl_client(
        &lab,
        "spoof",
        "/CN=spiffe:\\/\\/lake.example\\/trainer\\/x",
        Some("URI:spiffe://lake.example/intruder/x"),
        None,
    );
    // No URI SAN at all, only a SPIFFE-looking CN.
    openssl_client(
        &lab,
        "cnonly",
        "/CN=spiffe:\\/\\/lake.example\\/trainer\\/y",
        None,
        None,
    );
    // Two SPIFFE IDs.
    openssl_client(
        &lab,
        "twoids",
        "/CN=two",
        Some("URI:spiffe://lake.example/trainer/a,URI:spiffe://lake.example/admin/b"),
        None,
    );
    // A DNS name in mixed case against a lower-case dns: rule.
    openssl_client(
        &lab,
        "ingest",
        "/CN=ingest",
        Some("DNS:Ingest-01.LAKE.example"),
        None,
    );
    let srv = Server::start_with_authz(
        &lab,
        "",
        &forward_backend(&up),
        "[[authz]]\nidentity = \"spiffe://lake.example/trainer/*\"\n\n\
         [[authz]]\nidentity = \"dns:ingest-01.lake.example\"\n",
    );
    let port = srv.port;
    for name in ["spoof", "cnonly"] {
        let r = TlsClient::connect(port, client_of(&lab, name))
            .map(|c| c.refused())
            .unwrap_or_else(Some);
        assert!(r.is_some(), "{name} was admitted as a trainer");
    }
    assert_eq!(failed(&srv, "unauthorized"), 2.0, "{}", srv.metrics());
    // The log names the intruder's real SPIFFE ID, not the CN.
    assert!(srv
        .log_line_with(&[
            "connection refused by authz",
            "spiffe://lake.example/intruder/x"
        ])
        .is_some());
    let r = session(port, &client_of(&lab, "twoids"), b"x");
    assert!(r.is_err(), "a certificate with two SPIFFE IDs was served");
    assert_eq!(failed(&srv, "invalid_identity"), 1.0, "{}", srv.metrics());
    assert!(session(port, &client_of(&lab, "ingest"), b"dns").is_ok());
    // Our own pki's trainer is still a trainer.
    assert!(session(port, &client_config(&lab, Some("alice"), false), b"a").is_ok());
}

#[test]
fn a_deny_rule_denies_a_relay_as_it_denies_a_request() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let srv = Server::start_with_authz(
        &lab,
        "",
        &forward_backend(&up),
        "[[authz]]\nidentity = \"spiffe://lake.example/trainer/alice\"\naccess = []\n\n\
         [[authz]]\nidentity = \"spiffe://lake.example/trainer/*\"\n",
    );
    let r = TlsClient::connect(srv.port, client_config(&lab, Some("alice"), false))
        .map(|c| c.refused())
        .unwrap_or_else(Some);
    assert!(r.is_some(), "the deny rule admitted alice's relay");
    assert_eq!(failed(&srv, "unauthorized"), 1.0);
    assert!(session(srv.port, &client_config(&lab, Some("carol"), false), b"c").is_ok());
    assert!(
        up.seen.lock().unwrap().len() <= 1,
        "alice never reached the upstream"
    );
}

#[test]
fn a_ticket_key_file_others_can_read_is_refused_by_check_and_serve() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let key = lab.path("fleet.key");
    std::fs::write(&key, random_ticket_key()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = config_with_tls(
        &lab,
        port,
        admin,
        "kind = \"forward\"\nupstream = \"127.0.0.1:9\"",
        "ticket_key_file = \"fleet.key\"",
    );
    let (code, _, err) = check_config(&cfg);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("tls.ticket_key_file") && err.contains("fleet.key") && err.contains("0644"),
        "{err}"
    );
    let out = Command::new(bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn check_refuses_what_would_not_be_enforced_and_says_how_to_write_it() {
    let lab = Lab::new();
    let (port, admin) = (free_port(), free_port());
    let cfg = lab.config(
        port,
        admin,
        "",
        "kind = \"forward\"\nupstream = \"127.0.0.1:9\"",
    );
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(lab.path("jwks.json"), "{\"keys\":[]}").unwrap();
    for (edit, key, says) in [
        (
            format!("{base}\n[tokens]\njwks = \"jwks.json\"\nissuer = \"i\"\naudience = \"a\"\n"),
            "tokens",
            "relays opaque bytes",
        ),
        (
            base.replace("spiffe://lake.example/trainer/*", "*.lake.example"),
            "authz[0].identity",
            "\"dns:*.lake.example\"",
        ),
        (
            format!("{base}access = [\"read\"]\n"),
            "authz[0].access",
            "forward relay",
        ),
    ] {
        std::fs::write(&cfg, edit).unwrap();
        let (code, _, err) = check_config(&cfg);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(key) && err.contains(says), "{err}");
    }
    // What check prints for each rule: its name type and its meaning in this mode.
    std::fs::write(
        &cfg,
        format!("{base}\n[[authz]]\nidentity = \"dns:*.lake.example\"\naccess = []\n"),
    )
    .unwrap();
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("SPIFFE ID (URI SAN)") && out.contains("admits the relay"),
        "{out}"
    );
    assert!(
        out.contains("DNS SAN") && out.contains("refuses the relay"),
        "{out}"
    );
}

fn store_backend(lab: &Lab) -> String {
    let root = lab.path("data");
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    format!(
        "kind = \"store\"\nroot = \"{}\"\nfsync = \"never\"",
        root.display()
    )
}

fn put(c: &mut TlsClient, key: &str, body: &[u8]) -> Response {
    let mut raw = format!(
        "PUT /datasets/{key} HTTP/1.1\r\nhost: lake\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    c.request(&raw)
}

fn get(c: &mut TlsClient, key: &str) -> std::io::Result<Response> {
    c.try_request(format!("GET /datasets/{key} HTTP/1.1\r\nhost: lake\r\n\r\n").as_bytes())
}

#[test]
fn a_keep_alive_connection_is_re_judged_after_a_revocation_and_a_removed_rule() {
    let lab = Lab::new();
    let backend = store_backend(&lab);
    let (port, admin) = (free_port(), free_port());
    let cfg = lab.config(port, admin, "", &backend);
    let srv = Server::spawn_config(&lab, port, admin, &cfg);
    let mut alice = TlsClient::connect(port, client_config(&lab, Some("alice"), false)).unwrap();
    let mut carol = TlsClient::connect(port, client_config(&lab, Some("carol"), false)).unwrap();
    assert_eq!(put(&mut alice, "a.bin", b"alice").0, 201);
    assert_eq!(get(&mut carol, "a.bin").unwrap().0, 200);

    // Alice is revoked and carol's rule is removed, while both connections stay open.
    let d = lab.dir.path().to_str().unwrap().to_string();
    lakegate(&[
        "pki", "crl", "--dir", &d, "--revoke", "bob", "--revoke", "alice",
    ]);
    reload_with(&srv, &cfg, |t| {
        t.replace(
            "[[authz]]",
            "[[authz]]\nidentity = \"spiffe://lake.example/trainer/carol\"\naccess = []\n\n[[authz]]",
        )
    });
    let (status, headers, body) = get(&mut alice, "a.bin").unwrap();
    assert_eq!(
        status, 403,
        "a revoked client was served on its open connection"
    );
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert!(
        !body.contains("revoked") && !body.contains("authz"),
        "{body}"
    );
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert!(
        get(&mut alice, "a.bin").is_err(),
        "the connection is closed after"
    );
    let rid = header(&headers, "x-amz-request-id").unwrap().to_string();
    assert!(
        srv.log_line_with(&[&rid, "revoked"]).is_some(),
        "{}",
        srv.log_plain()
    );

    let (status, _, body) = get(&mut carol, "a.bin").unwrap();
    assert_eq!(
        status, 403,
        "a removed rule still served an open connection"
    );
    assert!(String::from_utf8_lossy(&body).contains("AccessDenied"));
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"revoked\""
        ),
        1.0
    );
}

#[test]
fn a_keep_alive_connection_stops_being_served_when_its_certificate_expires() {
    let lab = Lab::new();
    brief_client(&lab, 4);
    let srv = Server::start(&lab, "", &store_backend(&lab));
    let mut c = TlsClient::connect(srv.port, client_of(&lab, "brief")).unwrap();
    assert_eq!(put(&mut c, "b.bin", b"brief").0, 201);
    std::thread::sleep(Duration::from_secs(5));
    let (status, headers, _) = get(&mut c, "b.bin").unwrap();
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"expired\""
        ),
        1.0
    );
}

#[test]
fn a_store_connection_is_closed_after_the_request_in_flight_at_max_connection_age() {
    let lab = Lab::new();
    let srv = Server::start(&lab, "max_connection_age = \"2s\"", &store_backend(&lab));
    let mut c = TlsClient::connect(srv.port, client_config(&lab, Some("alice"), false)).unwrap();
    let (status, headers, _) = put(&mut c, "c.bin", b"young");
    assert_eq!(status, 201);
    assert_eq!(header(&headers, "connection"), None);
    std::thread::sleep(Duration::from_millis(2200));
    // The request in flight is served, and told the connection ends with it.
    let (status, headers, body) = get(&mut c, "c.bin").unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"young"[..]));
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert!(get(&mut c, "c.bin").is_err());
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"max_connection_age\""
        ),
        1.0
    );
}

/// One setting the walk below changes: where it lives, what it is set to, and whether
/// `check` must refuse it (`Err(what the message says)`) or accept it and show it in
/// force.
struct Case {
    key: &'static str,
    forward: bool,
    value: String,
    refused: Option<&'static str>,
}

fn render(sections: &[(&str, Vec<(String, String)>)]) -> String {
    let mut out = String::new();
    for (name, kvs) in sections {
        out.push_str(&format!("[{name}]\n"));
        for (k, v) in kvs {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push('\n');
    }
    out
}

/// Keys of the TOML block in DESIGN.md (commented ones included), as `section.key`.
fn design_keys() -> Option<Vec<String>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/DESIGN.md");
    let text = std::fs::read_to_string(path).ok()?;
    let block = text.split("```toml").nth(1)?.split("```").next()?;
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in block.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix("[[").or_else(|| line.strip_prefix('[')) {
            section = s.split(']').next().unwrap_or("").to_string();
            continue;
        }
        let l = line.trim_start_matches('#').trim();
        if let Some((k, _)) = l.split_once('=') {
            let k = k.trim();
            if !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                keys.push(format!("{section}.{k}"));
            }
        }
    }
    Some(keys)
}

#[test]
fn every_design_key_changes_what_runs_or_is_refused() {
    let lab = Lab::new();
    let d = lab.dir.path();
    let q = |s: &str| format!("\"{s}\"");
    write_secret(&lab.path("fleet.key"), &random_ticket_key());
    write_secret(&lab.path("other.token"), &format!("{}\n", "t".repeat(48)));
    for (key, jwks) in [("k1.pem", "jwks.json"), ("k2.pem", "jwks2.json")] {
        let (key, jwks) = (lab.path(key), lab.path(jwks));
        lakegate(&[
            "pki",
            "token",
            "--key",
            key.to_str().unwrap(),
            "--jwks",
            jwks.to_str().unwrap(),
        ]);
    }
    let pk8 = Command::new("openssl")
        .args(["pkey", "-in", d.join("server.key").to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::write(lab.path("server-pk8.key"), pk8.stdout).unwrap();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("data2")).unwrap();
    lakegate(&["pki", "crl", "--dir", d.join("other").to_str().unwrap()]);
    let base = |forward: bool| -> Vec<(&'static str, Vec<(String, String)>)> {
        let backend = if forward {
            vec![
                ("kind".into(), q("forward")),
                ("upstream".into(), q("127.0.0.1:9")),
            ]
        } else {
            vec![("kind".into(), q("store")), ("root".into(), q("data"))]
        };
        vec![
            (
                "server",
                vec![
                    ("listen".into(), q("127.0.0.1:18443")),
                    ("workers".into(), "1".into()),
                ],
            ),
            (
                "tls",
                vec![
                    ("cert".into(), q("server.crt")),
                    ("key".into(), q("server.key")),
                    ("client_ca".into(), q("ca.crt")),
                    ("crl".into(), "[\"crl.pem\"]".into()),
                ],
            ),
            (
                "admin",
                vec![
                    ("listen".into(), q("127.0.0.1:19090")),
                    ("token_file".into(), q("admin.token")),
                ],
            ),
            ("backend", backend),
            (
                "[authz]",
                vec![("identity".into(), q("spiffe://lake.example/trainer/*"))],
            ),
        ]
    };
    let c = |key: &'static str, value: &str| Case {
        key,
        forward: false,
        value: value.to_string(),
        refused: None,
    };
    let fwd = |key: &'static str, value: &str| Case {
        key,
        forward: true,
        value: value.to_string(),
        refused: None,
    };
    let no = |key: &'static str, value: &str, why: &'static str| Case {
        key,
        forward: false,
        value: value.to_string(),
        refused: Some(why),
    };
    let cases = vec![
        c("server.listen", &q("127.0.0.1:18444")),
        c("server.workers", "2"),
        c("server.cores", "[1]"),
        c("server.steer_by_cpu", "false"),
        c("server.sqpoll", "true"),
        c("server.max_connections", "10"),
        c("server.max_object_size", &q("1MiB")),
        c("server.handshake_timeout", &q("3s")),
        c("server.idle_timeout", &q("7s")),
        c("server.request_head_timeout", &q("4s")),
        c("server.min_body_rate", &q("off")),
        c("server.max_connection_age", &q("0")),
        c("server.drain_timeout", &q("5s")),
        c("tls.cert", &q("server-chain.crt")),
        c("tls.key", &q("server-pk8.key")),
        c("tls.client_ca", &q("other/ca.crt")),
        c("tls.crl", "[]"),
        c("tls.crl_refresh", &q("5s")),
        c("tls.versions", "[\"1.2\", \"1.3\"]"),
        c("tls.cipher_suites", "[\"TLS13_AES_256_GCM_SHA384\"]"),
        c("tls.session_tickets", "false"),
        c("tls.ticket_key_file", &q("fleet.key")),
        c("tls.ticket_lifetime", &q("1h")),
        c("tls.crl_stale", &q("refuse")),
        c("admin.listen", &q("127.0.0.1:19091")),
        c("admin.token_file", &q("other.token")),
        // Forward base, compared with the store base.
        fwd("backend.kind", &q("forward")),
        c("backend.root", &q("data2")),
        c("backend.fsync", &q("never")),
        c("backend.multipart_expiry", &q("1h")),
        fwd("backend.upstream", &q("127.0.0.1:10")),
        fwd("backend.proxy_protocol", &q("v2")),
        fwd("backend.proxy_protocol_client_cert", "true"),
        no(
            "backend.endpoints",
            "[\"http://127.0.0.1:8333\"]",
            "only valid with kind = \"s3\"",
        ),
        no(
            "backend.region",
            &q("us-east-1"),
            "only valid with kind = \"s3\"",
        ),
        no(
            "backend.credentials",
            &q("s3.toml"),
            "only valid with kind = \"s3\"",
        ),
        no(
            "backend.bucket_map",
            "{ datasets = \"lake\" }",
            "only valid with kind = \"s3\"",
        ),
        no(
            "backend.tenant_prefix",
            "true",
            "only valid with kind = \"s3\"",
        ),
        c("authz.identity", &q("dns:*.lake.example")),
        c("authz.buckets", "[\"datasets\"]"),
        c("authz.access", "[\"read\"]"),
        c("tokens.jwks", &q("jwks2.json")),
        c("tokens.issuer", &q("https://auth.lake.example")),
        c("tokens.audience", &q("lakegate")),
        c("tokens.cert_bound", "false"),
        c("tokens.required", "false"),
        c("tokens.leeway", &q("5s")),
    ];
    // A key DESIGN.md documents and this walk forgot is a failure, not a gap.
    match design_keys() {
        Some(keys) => {
            for k in keys {
                assert!(
                    cases.iter().any(|c| c.key == k),
                    "DESIGN.md documents {k}, which this walk does not try"
                );
            }
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "../shared/DESIGN.md is missing under CI"
            );
            println!("warning: ../shared/DESIGN.md not found; walking the built-in key list only");
        }
    }
    let cfg = lab.path("walk.toml");
    let run = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        check_config(&cfg)
    };
    let line_of = |out: &str, key: &str| -> Option<String> {
        let prefix = format!("  {key} = ");
        out.lines()
            .find(|l| l.starts_with(&prefix))
            .map(str::to_string)
    };
    let authz_lines = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("  ["))
            .map(str::to_string)
            .collect()
    };
    for forward in [false, true] {
        let (code, _, err) = run(&render(&base(forward)));
        assert_eq!(code, 0, "base config (forward {forward}): {err}");
    }
    for case in &cases {
        let (section, key) = case.key.split_once('.').unwrap();
        // A key that only means something beside another (proxy_protocol_client_cert
        // needs proxy_protocol) gets it on both sides of the comparison.
        let with_needed = |mut conf: Vec<(&'static str, Vec<(String, String)>)>| {
            if key == "proxy_protocol_client_cert" {
                let b = conf.iter_mut().find(|(n, _)| *n == "backend").unwrap();
                b.1.push(("proxy_protocol".into(), q("v2")));
            }
            conf
        };
        let mut conf = with_needed(base(case.forward));
        // The kind is compared against the other kind's complete section.
        let (code0, before, _) = run(&render(&with_needed(base(case.forward && key != "kind"))));
        assert_eq!(code0, 0);
        let table = if section == "authz" {
            "[authz]"
        } else {
            section
        };
        if section == "tokens" && !conf.iter().any(|(n, _)| *n == "tokens") {
            conf.push((
                "tokens",
                vec![
                    ("jwks".into(), q("jwks.json")),
                    ("issuer".into(), q("i")),
                    ("audience".into(), q("a")),
                ],
            ));
        }
        let sec = conf.iter_mut().find(|(n, _)| *n == table).expect(case.key);
        sec.1.retain(|(k, _)| k != key);
        sec.1.push((key.to_string(), case.value.clone()));
        let (code, out, err) = run(&render(&conf));
        match case.refused {
            Some(why) => {
                assert_eq!(
                    code, 1,
                    "{} = {} was accepted:\n{out}",
                    case.key, case.value
                );
                assert!(
                    err.contains(why) && (err.contains(case.key) || section == "tokens"),
                    "{}: {err}",
                    case.key
                );
            }
            None => {
                assert_eq!(code, 0, "{} = {}: {err}", case.key, case.value);
                if section == "authz" {
                    assert_ne!(authz_lines(&before), authz_lines(&out), "{}", case.key);
                } else {
                    let (b, a) = (line_of(&before, case.key), line_of(&out, case.key));
                    assert!(a.is_some(), "check does not show {}:\n{out}", case.key);
                    assert_ne!(
                        b, a,
                        "{} = {} changed nothing check shows",
                        case.key, case.value
                    );
                }
            }
        }
    }
}

/// Revoke alice and put a rule that denies her first, as one reload.
fn revoke_and_deny_alice(lab: &Lab, srv: &Server, cfg: &std::path::Path) {
    let d = lab.dir.path().to_str().unwrap().to_string();
    lakegate(&[
        "pki", "crl", "--dir", &d, "--revoke", "bob", "--revoke", "alice",
    ]);
    reload_with(srv, cfg, |t| {
        t.replace(
            "[[authz]]",
            "[[authz]]\nidentity = \"spiffe://lake.example/trainer/alice\"\naccess = []\n\n[[authz]]",
        )
    });
}

fn refused(r: Result<TlsClient, String>) -> Option<String> {
    match r {
        Err(e) => Some(e),
        Ok(c) => c.refused(),
    }
}

#[test]
fn an_upload_in_flight_stops_when_its_client_is_revoked_and_nothing_is_stored() {
    let lab = Lab::new();
    let backend = store_backend(&lab);
    let (port, admin) = (free_port(), free_port());
    let cfg = lab.config(port, admin, "", &backend);
    let srv = Server::spawn_config(&lab, port, admin, &cfg);
    let alice = TlsClient::connect(port, client_config(&lab, Some("alice"), false)).unwrap();
    alice
        .send(b"PUT /datasets/late.bin HTTP/1.1\r\nhost: lake\r\ncontent-length: 10\r\n\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    revoke_and_deny_alice(&lab, &srv, &cfg);
    assert!(refused(TlsClient::connect(
        port,
        client_config(&lab, Some("alice"), false)
    ))
    .is_some());
    // The rest of the body arrives after the reload: the upload is not committed.
    let _ = alice.send(b"WORLD");
    let r = read_response(&mut alice.plain_reader(), false);
    if let Ok((status, _, body)) = &r {
        assert_eq!(*status, 403, "{}", String::from_utf8_lossy(body));
    }
    assert!(
        !lab.path("data/datasets/late.bin").exists(),
        "a revoked client's upload was stored"
    );
    assert!(eventually(Duration::from_secs(5), || srv.metric(
        "lakegate_connections_closed_by_policy_total",
        "reason=\"revoked\""
    ) == 1.0));
}

#[test]
fn a_handshake_that_spans_a_reload_is_judged_under_the_new_policy_before_any_byte_moves() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let (port, admin) = (free_port(), free_port());
    let cfg = lab.config(port, admin, "", &forward_backend(&up));
    let srv = Server::spawn_config(&lab, port, admin, &cfg);
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut conn = rustls::ClientConnection::new(
        client_config(&lab, Some("alice"), false),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    // ClientHello, then the server's flight, left unanswered over the reload.
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    sock.write_all(&wire).unwrap();
    let mut buf = vec![0u8; 65536];
    while conn.is_handshaking() {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0);
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            conn.read_tls(&mut rd).unwrap();
        }
        conn.process_new_packets().unwrap();
    }
    revoke_and_deny_alice(&lab, &srv, &cfg);
    // Finished, with data in the same flight.
    conn.writer()
        .write_all(b"BYTES-OF-A-REVOKED-CLIENT")
        .unwrap();
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    sock.write_all(&wire).unwrap();
    assert!(eventually(Duration::from_secs(5), || failed(
        &srv, "revoked"
    ) == 1.0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "the upstream heard from a client revoked during its handshake"
    );
}

#[test]
fn a_reloaded_store_root_serves_open_connections_from_their_next_request() {
    let lab = Lab::new();
    let backend = store_backend(&lab);
    std::fs::create_dir_all(lab.path("data2/datasets")).unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = lab.config(port, admin, "", &backend);
    let srv = Server::spawn_config(&lab, port, admin, &cfg);
    let mut alice = TlsClient::connect(port, client_config(&lab, Some("alice"), false)).unwrap();
    assert_eq!(put(&mut alice, "before", b"x").0, 201);
    let root = lab.path("data").display().to_string();
    let root2 = lab.path("data2").display().to_string();
    reload_with(&srv, &cfg, |t| t.replace(&root, &root2));
    assert_eq!(put(&mut alice, "after", b"x").0, 201);
    assert!(lab.path("data/datasets/before").exists());
    assert!(lab.path("data2/datasets/after").exists());
    assert!(!lab.path("data/datasets/after").exists());
}

#[test]
fn a_crl_that_goes_stale_under_refuse_stops_open_connections() {
    let lab = Lab::new();
    // A CRL of the lab CA due in 5 s, made by openssl ca over the lab CA.
    openssl_client(
        &lab,
        "dummy",
        "/CN=dummy",
        Some("URI:spiffe://lake.example/x/dummy"),
        None,
    );
    openssl_crl(&lab, &["-crlsec", "5"], &lab.path("crl.pem"));
    let t0 = Instant::now();
    let (port, admin) = (free_port(), free_port());
    let cfg = config_with_tls(
        &lab,
        port,
        admin,
        &store_backend(&lab),
        "crl_stale = \"refuse\"",
    );
    let srv = Server::spawn_config(&lab, port, admin, &cfg);
    let mut alice = TlsClient::connect(port, client_config(&lab, Some("alice"), false)).unwrap();
    assert_eq!(put(&mut alice, "fresh", b"x").0, 201);
    std::thread::sleep(Duration::from_secs(7).saturating_sub(t0.elapsed()));
    assert!(refused(TlsClient::connect(
        port,
        client_config(&lab, Some("carol"), false)
    ))
    .is_some());
    let (status, _, _) = put(&mut alice, "stale", b"x");
    assert_eq!(
        status, 403,
        "an open connection was served under a stale CRL with refuse"
    );
    assert!(!lab.path("data/datasets/stale").exists());
    assert_eq!(
        srv.metric(
            "lakegate_connections_closed_by_policy_total",
            "reason=\"crl_stale\""
        ),
        1.0
    );
}

/// `openssl ca -gencrl` over the lab CA (the database `openssl_client` keeps, so a
/// certificate it made and revoked with `openssl ca -revoke` is listed), written to
/// `out`; `extra` adds options (`-crlsec 5`, or `-cert`/`-keyfile` to sign with
/// another key).
fn openssl_crl(lab: &Lab, extra: &[&str], out: &std::path::Path) {
    let db = lab.path("openssl-ca");
    if !db.join("crl.cnf").exists() {
        let cnf = std::fs::read_to_string(db.join("ca.cnf"))
            .unwrap()
            .replacen(
                "[lab]\n",
                &format!(
                    "[lab]\ncrlnumber = {}/crlnumber\ncrl_extensions = crl_ext\n",
                    db.display()
                ),
                1,
            )
            + "[crl_ext]\nauthorityKeyIdentifier=keyid:always\n";
        std::fs::write(db.join("crl.cnf"), cnf).unwrap();
        std::fs::write(db.join("crlnumber"), "1000\n").unwrap();
    }
    let run = Command::new("openssl")
        .args([
            "ca",
            "-config",
            db.join("crl.cnf").to_str().unwrap(),
            "-gencrl",
        ])
        .args(extra)
        .args(["-out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_crl_with_a_bad_signature_is_refused_at_load_and_keeps_the_lists_on_refresh() {
    let lab = Lab::new();
    // A rogue CA: the lab CA's certificate (same subject, same key identifier) re-signed
    // by openssl with another key; it signs a CRL that revokes no one.
    openssl_client(
        &lab,
        "dora",
        "/CN=dora",
        Some("URI:spiffe://lake.example/trainer/dora"),
        None,
    );
    let (rogue_key, rogue_crt) = (lab.path("rogue.key"), lab.path("rogue.crt"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        rogue_key.to_str().unwrap(),
    ]);
    openssl(&[
        "x509",
        "-in",
        lab.path("ca.crt").to_str().unwrap(),
        "-signkey",
        rogue_key.to_str().unwrap(),
        "-out",
        rogue_crt.to_str().unwrap(),
    ]);
    let bad = lab.path("forged-crl.pem");
    openssl_crl(
        &lab,
        &[
            "-crldays",
            "1",
            "-cert",
            rogue_crt.to_str().unwrap(),
            "-keyfile",
            rogue_key.to_str().unwrap(),
        ],
        &bad,
    );
    // The same CRL signed by the real CA is fine: the refusal is the signature's.
    let good = lab.path("openssl-crl.pem");
    openssl_crl(&lab, &["-crldays", "1"], &good);

    let up = Upstream::tcp(None);
    let (port, admin) = (free_port(), free_port());
    let cfg = config_with_tls(
        &lab,
        port,
        admin,
        &forward_backend(&up),
        "crl_refresh = \"1s\"",
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    for (crl, ok) in [(&good, true), (&bad, false)] {
        let alt = lab.path("alt.toml");
        std::fs::write(
            &alt,
            text.replace(
                "crl = [\"crl.pem\"]",
                &format!("crl = [{:?}]", crl.to_str().unwrap()),
            ),
        )
        .unwrap();
        let (code, _, stderr) = check_config(&alt);
        if ok {
            assert_eq!(code, 0, "{stderr}");
        } else {
            assert_eq!(
                code, 1,
                "a CRL with a forged signature was accepted: {stderr}"
            );
            assert!(
                stderr.contains("tls.crl") && stderr.contains("signature does not verify"),
                "{stderr}"
            );
        }
    }

    // Served with the lab's genuine CRL (bob revoked); the forged one arrives on disk.
    let srv = Server::spawn_config(&lab, port, admin, &cfg);
    let alice = client_config(&lab, Some("alice"), false);
    let bob = client_config(&lab, Some("bob"), false);
    assert!(session(port, &alice, b"a").is_ok());
    assert!(session(port, &bob, b"b").is_err());
    std::fs::copy(&bad, lab.path("crl.pem")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || srv
            .metric("lakegate_crl_reloads_total", "result=\"failed\"")
            >= 1.0),
        "{}",
        srv.metrics()
    );
    // The previous lists stand: bob stays revoked, alice is served.
    assert!(
        session(port, &bob, b"b").is_err(),
        "a forged CRL un-revoked bob"
    );
    assert!(session(port, &alice, b"a").is_ok());
    assert_eq!(
        srv.metric("lakegate_crl_reloads_total", "result=\"ok\""),
        0.0
    );
}

#[test]
fn a_resumed_client_is_refused_once_a_refreshed_crl_revokes_it() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let srv = Server::forward_tls(&lab, &up, "crl_refresh = \"1s\"");
    // Made by openssl, revoked by `lakegate pki crl` (which reads dora.serial).
    openssl_client(
        &lab,
        "dora",
        "/CN=dora",
        Some("URI:spiffe://lake.example/trainer/dora"),
        None,
    );
    let dora = client_of(&lab, "dora");
    assert_eq!(
        session(srv.port, &dora, b"1").unwrap().kind,
        HandshakeKind::Full
    );
    // Resumed twice: the worker now holds a verdict on dora's chain.
    for _ in 0..2 {
        assert_eq!(
            session(srv.port, &dora, b"2").unwrap().kind,
            HandshakeKind::Resumed
        );
    }
    let d = lab.dir.path().to_str().unwrap().to_string();
    lakegate(&[
        "pki", "crl", "--dir", &d, "--revoke", "bob", "--revoke", "dora",
    ]);
    assert!(eventually(Duration::from_secs(10), || srv
        .metric("lakegate_crl_reloads_total", "result=\"ok\"")
        >= 1.0));
    let r = session(srv.port, &dora, b"3");
    assert!(r.is_err(), "a revoked client resumed: {r:?}");
    assert_eq!(
        refused_resumptions(&srv, "revoked"),
        1.0,
        "{}",
        srv.metrics()
    );
    assert_eq!(failed(&srv, "revoked"), 1.0);
}
