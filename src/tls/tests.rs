//! In-memory client/server pairs: a rustls client wired to [`TlsConn`] through plain
//! byte vectors, no sockets and no clock, so every handshake outcome is reproduced in
//! milliseconds (the way quinn-proto tests its connection).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use time::{Duration, OffsetDateTime};

use super::conn::{OutBuf, TlsConn, TlsError};
use super::identity::Identity;
use super::policy::FailReason;
use super::verify::ClientVerifier;

pub(crate) struct Ca {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

/// A self-signed CA named `name` (a new key each call), for tests in `tls`.
pub(crate) fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        cert: cert.der().clone(),
        issuer: Issuer::new(p, key),
    }
}

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    serial: Vec<u8>,
}

fn leaf(ca: &Ca, cn: &str, spiffe: Option<&str>, server: bool, expired: bool, serial: u8) -> Leaf {
    let mut p = CertificateParams::new(if server {
        vec!["localhost".to_string()]
    } else {
        vec![]
    })
    .unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(uri) = spiffe {
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
    }
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let s = vec![0x10, serial, 0x33, 0x44];
    p.serial_number = Some(SerialNumber::from_slice(&s));
    let now = OffsetDateTime::now_utc();
    if expired {
        p.not_before = now - Duration::days(30);
        p.not_after = now - Duration::days(1);
    } else {
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(30);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        serial: s,
    }
}

fn crl(ca: &Ca, revoked: &[&Leaf]) -> CertificateRevocationListDer<'static> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: now + Duration::days(1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|l| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&l.serial),
                revocation_time: now - Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(&ca.issuer).unwrap().der().clone()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config(
    ca: &Ca,
    server: &Leaf,
    crls: Vec<CertificateRevocationListDer<'static>>,
    tls12: bool,
) -> Arc<ServerConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    // The verifier production uses (CRL signatures checked once, here).
    let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = Arc::new(
        ClientVerifier::new(
            &provider(),
            roots,
            std::slice::from_ref(&ca.cert),
            crls,
            false,
        )
        .unwrap(),
    );
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut sc = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .unwrap();
    sc.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    // As in production (tls::policy): TLS 1.3 records move to tls::record.
    sc.enable_secret_extraction = true;
    Arc::new(sc)
}

fn client_config(server_ca: &Ca, client: Option<&Leaf>, tls12_only: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.cert.clone()).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cc = match client {
        Some(l) => b
            .with_client_auth_cert(l.chain.clone(), l.key.clone_key())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cc.resumption = Resumption::in_memory_sessions(16);
    Arc::new(cc)
}

/// A client and our server core joined by two byte pipes.
struct Pair {
    client: ClientConnection,
    server: TlsConn,
    to_server: Vec<u8>,
    server_plain: OutBuf,
}

impl Pair {
    fn new(cc: Arc<ClientConfig>, sc: Arc<ServerConfig>) -> Self {
        Pair {
            client: ClientConnection::new(cc, ServerName::try_from("localhost").unwrap()).unwrap(),
            server: TlsConn::new(sc).unwrap(),
            to_server: Vec::new(),
            server_plain: OutBuf::with_capacity(0),
        }
    }

    /// Move bytes both ways until neither side has anything to say. Returns the
    /// server's error, if it failed.
    fn drive(&mut self) -> Result<(), TlsError> {
        for _ in 0..64 {
            let mut moved = false;
            while self.client.wants_write() {
                self.client.write_tls(&mut self.to_server).unwrap();
                moved = true;
            }
            let mut out = OutBuf::with_capacity(0);
            if !self.to_server.is_empty() {
                let p = self.server.handle_received(
                    &mut self.to_server,
                    &mut out,
                    &mut self.server_plain,
                );
                // Deliver any alert to the client before reporting the failure.
                let alert = out.as_slice().to_vec();
                if !alert.is_empty() {
                    let _ = self.client.read_tls(&mut alert.as_slice());
                    let _ = self.client.process_new_packets();
                }
                let p = p?;
                self.to_server.drain(..p.consumed);
                if p.consumed > 0 {
                    continue;
                }
            }
            if !moved {
                return Ok(());
            }
        }
        panic!("pair did not settle");
    }

    fn server_send(&mut self, data: &[u8]) {
        let mut out = OutBuf::with_capacity(0);
        self.server.encrypt(data, &mut out).unwrap();
        let mut rd = out.as_slice();
        while !rd.is_empty() {
            self.client.read_tls(&mut rd).unwrap();
            self.client.process_new_packets().unwrap();
        }
    }
}

struct World {
    ca: Ca,
    server: Leaf,
    alice: Leaf,
}

fn world() -> World {
    let ca = ca("test CA");
    let server = leaf(&ca, "localhost", None, true, false, 1);
    let alice = leaf(
        &ca,
        "alice",
        Some("spiffe://lake.example/trainer/alice"),
        false,
        false,
        2,
    );
    World { ca, server, alice }
}

/// A server config and a client config (with alice's certificate, or none) of one
/// lab, for tests of the layers above that drive [`TlsConn`] (the session gate).
pub(crate) fn lab_configs(client_cert: bool) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let w = world();
    let sc = server_config(&w.ca, &w.server, vec![], false);
    let cc = client_config(&w.ca, client_cert.then_some(&w.alice), false);
    (sc, cc)
}

fn fail_reason(r: Result<(), TlsError>) -> FailReason {
    match r {
        Err(TlsError::Rustls(e)) => FailReason::of(&e),
        other => panic!("expected a rustls failure, got {other:?}"),
    }
}

#[test]
fn handshake_identity_and_data_both_ways() {
    let w = world();
    let mut p = Pair::new(
        client_config(&w.ca, Some(&w.alice), false),
        server_config(&w.ca, &w.server, vec![], false),
    );
    p.drive().unwrap();
    assert!(!p.server.is_handshaking());
    let id = Identity::from_der(&p.server.peer_certificates().unwrap()[0]).unwrap();
    assert_eq!(
        id.spiffe.as_deref(),
        Some("spiffe://lake.example/trainer/alice")
    );
    assert_eq!(id.cn.as_deref(), Some("alice"));
    let info = p.server.session_info();
    assert_eq!(info.version, "TLSv1.3");
    assert!(!info.resumed);

    // 1 MiB of patterned bytes client → server, crossing many records.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
    for chunk in data.chunks(48 * 1024) {
        std::io::Write::write_all(&mut p.client.writer(), chunk).unwrap();
        p.drive().unwrap();
    }
    assert_eq!(p.server_plain.as_slice(), &data[..]);

    // And back.
    p.server_send(b"hello from lakegate");
    let mut got = vec![0u8; 19];
    std::io::Read::read_exact(&mut p.client.reader(), &mut got).unwrap();
    assert_eq!(&got, b"hello from lakegate");

    // Client close_notify is seen as peer_closed; our close_notify reaches the client.
    p.client.send_close_notify();
    p.drive().unwrap();
    assert!(p.server.peer_closed());
    let mut out = OutBuf::with_capacity(0);
    p.server.close_notify(&mut out).unwrap();
    p.client.read_tls(&mut out.as_slice()).unwrap();
    let st = p.client.process_new_packets().unwrap();
    assert!(st.peer_has_closed());
}

#[test]
fn no_client_certificate_is_refused() {
    let w = world();
    let mut p = Pair::new(
        client_config(&w.ca, None, false),
        server_config(&w.ca, &w.server, vec![], false),
    );
    assert_eq!(fail_reason(p.drive()), FailReason::NoClientCert);
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let w = world();
    let other = ca("other CA");
    let mallory = leaf(
        &other,
        "mallory",
        Some("spiffe://lake.example/trainer/mallory"),
        false,
        false,
        3,
    );
    let mut p = Pair::new(
        client_config(&w.ca, Some(&mallory), false),
        server_config(&w.ca, &w.server, vec![], false),
    );
    assert_eq!(fail_reason(p.drive()), FailReason::UnknownCa);
}

#[test]
fn expired_certificate_is_refused() {
    let w = world();
    let old = leaf(&w.ca, "old", None, false, true, 4);
    let mut p = Pair::new(
        client_config(&w.ca, Some(&old), false),
        server_config(&w.ca, &w.server, vec![], false),
    );
    assert_eq!(fail_reason(p.drive()), FailReason::Expired);
}

#[test]
fn revoked_certificate_is_refused_and_others_are_not() {
    let w = world();
    let bob = leaf(&w.ca, "bob", None, false, false, 5);
    let sc = server_config(&w.ca, &w.server, vec![crl(&w.ca, &[&bob])], false);
    let mut p = Pair::new(client_config(&w.ca, Some(&bob), false), sc.clone());
    assert_eq!(fail_reason(p.drive()), FailReason::Revoked);
    let mut ok = Pair::new(client_config(&w.ca, Some(&w.alice), false), sc);
    ok.drive().unwrap();
    assert!(!ok.server.is_handshaking());
}

#[test]
fn tls12_only_client_is_refused_when_only_13_is_allowed() {
    let w = world();
    let mut p = Pair::new(
        client_config(&w.ca, Some(&w.alice), true),
        server_config(&w.ca, &w.server, vec![], false),
    );
    assert_eq!(fail_reason(p.drive()), FailReason::UnsupportedVersion);
}

#[test]
fn tls12_works_when_enabled() {
    let w = world();
    let mut p = Pair::new(
        client_config(&w.ca, Some(&w.alice), true),
        server_config(&w.ca, &w.server, vec![], true),
    );
    p.drive().unwrap();
    assert_eq!(p.server.session_info().version, "TLSv1.2");
}

#[test]
fn resumed_session_keeps_the_client_identity() {
    let w = world();
    let cc = client_config(&w.ca, Some(&w.alice), false);
    let sc = server_config(&w.ca, &w.server, vec![], false);
    let mut first = Pair::new(cc.clone(), sc.clone());
    first.drive().unwrap();
    // The client takes its tickets from the server's post-handshake flight.
    first.client.process_new_packets().unwrap();
    let first_id = Identity::from_der(&first.server.peer_certificates().unwrap()[0]).unwrap();

    let mut second = Pair::new(cc, sc);
    second.drive().unwrap();
    assert!(
        second.server.session_info().resumed,
        "second handshake should resume"
    );
    let id = Identity::from_der(&second.server.peer_certificates().unwrap()[0]).unwrap();
    assert_eq!(id, first_id);
}

#[test]
fn garbage_is_a_protocol_failure() {
    let w = world();
    let mut s = TlsConn::new(server_config(&w.ca, &w.server, vec![], false)).unwrap();
    let mut junk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let mut out = OutBuf::with_capacity(0);
    let mut plain = OutBuf::with_capacity(0);
    match s.handle_received(&mut junk, &mut out, &mut plain) {
        Err(TlsError::Rustls(e)) => assert_eq!(FailReason::of(&e), FailReason::Protocol),
        other => panic!("expected failure, got {other:?}"),
    }
}

#[test]
fn partial_records_wait_for_more_bytes() {
    let w = world();
    let mut p = Pair::new(
        client_config(&w.ca, Some(&w.alice), false),
        server_config(&w.ca, &w.server, vec![], false),
    );
    p.drive().unwrap();
    std::io::Write::write_all(&mut p.client.writer(), b"abcdef").unwrap();
    let mut wire = Vec::new();
    p.client.write_tls(&mut wire).unwrap();
    let mut out = OutBuf::with_capacity(0);
    let mut plain = OutBuf::with_capacity(0);
    // Feed one byte short of the record: nothing is consumed or decrypted.
    let n = wire.len();
    let pr = p
        .server
        .handle_received(&mut wire[..n - 1], &mut out, &mut plain)
        .unwrap();
    assert_eq!((pr.consumed, pr.plaintext), (0, 0));
    let pr = p
        .server
        .handle_received(&mut wire[..], &mut out, &mut plain)
        .unwrap();
    assert_eq!(pr.consumed, n);
    assert_eq!(plain.as_slice(), b"abcdef");
}

// ---------------------------------------------------------------------------------------
// The record layer after the handshake (tls::record), differential against rustls: the
// same client traffic through lakegate's layer and through rustls's own must give the
// same bytes, whatever the record sizes and however the bytes are split across reads.
// ---------------------------------------------------------------------------------------

/// xorshift64*: reproducible sizes and splits without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The same server config with rustls keeping the records (no secret extraction).
fn rustls_records(sc: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut c = (**sc).clone();
    c.enable_secret_extraction = false;
    Arc::new(c)
}

/// Feed `wire` to the server in random slices, as reads off a socket would arrive,
/// keeping the unconsumed tail as the engine does. Returns the plaintext.
fn feed_split(server: &mut TlsConn, wire: &[u8], rng: &mut Rng) -> Result<Vec<u8>, TlsError> {
    let mut inb: Vec<u8> = Vec::new();
    let mut plain = OutBuf::with_capacity(0);
    let mut at = 0;
    while at < wire.len() {
        let n = 1 + rng.below((wire.len() - at).min(40_000));
        inb.extend_from_slice(&wire[at..at + n]);
        at += n;
        let mut out = OutBuf::with_capacity(0);
        let p = server.handle_received(&mut inb, &mut out, &mut plain)?;
        inb.drain(..p.consumed);
    }
    assert!(inb.is_empty(), "{} bytes left unconsumed", inb.len());
    Ok(plain.as_slice().to_vec())
}

/// Run the client → server and server → client traffic of `seed` over a fresh pair.
/// Returns what the server and the client received.
fn random_traffic(sc: Arc<ServerConfig>, seed: u64, own: bool) -> (Vec<u8>, Vec<u8>) {
    let w = world_for_records();
    let mut p = Pair::new(client_config(&w.ca, Some(&w.alice), false), sc);
    p.drive().unwrap();
    p.client.set_buffer_limit(None);
    assert_eq!(p.server.on_own_records(), own);
    let mut rng = Rng(seed);
    let mut wire = Vec::new();
    for _ in 0..60 {
        let n = rng.below(70_000);
        let data = rng.bytes(n);
        std::io::Write::write_all(&mut p.client.writer(), &data).unwrap();
        while p.client.wants_write() {
            p.client.write_tls(&mut wire).unwrap();
        }
    }
    let got = feed_split(&mut p.server, &wire, &mut rng).unwrap();
    let mut back = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..40 {
        let n = rng.below(50_000);
        let data = rng.bytes(n);
        let mut out = OutBuf::with_capacity(0);
        p.server.encrypt(&data, &mut out).unwrap();
        // rustls takes what fits its plaintext limit; read it out between reads.
        let mut rd = out.as_slice();
        while !rd.is_empty() {
            p.client.read_tls(&mut rd).unwrap();
            p.client.process_new_packets().unwrap();
            loop {
                match std::io::Read::read(&mut p.client.reader(), &mut buf) {
                    Ok(0) => break,
                    Ok(k) => back.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
    (got, back)
}

/// One world per test process is enough for these (key generation is the slow part).
fn world_for_records() -> &'static World {
    static W: std::sync::OnceLock<World> = std::sync::OnceLock::new();
    W.get_or_init(world)
}

#[test]
fn own_records_and_rustls_records_carry_the_same_bytes() {
    let w = world_for_records();
    let sc = server_config(&w.ca, &w.server, vec![], false);
    for seed in [1u64, 0xdead_beef, 42_4242] {
        let (got_own, back_own) = random_traffic(sc.clone(), seed, true);
        let (got_rustls, back_rustls) = random_traffic(rustls_records(&sc), seed, false);
        // The client's bytes are the rng's, so both servers must see exactly them.
        let mut rng = Rng(seed);
        let mut want = Vec::new();
        for _ in 0..60 {
            let n = rng.below(70_000);
            want.extend(rng.bytes(n));
        }
        assert_eq!(got_own.len(), want.len());
        assert!(got_own == want, "own record layer differs (seed {seed})");
        assert!(got_rustls == want, "rustls differs (seed {seed})");
        assert!(
            back_own == back_rustls,
            "server → client differs (seed {seed})"
        );
    }
}

#[test]
fn key_updates_both_ways_keep_the_stream_intact() {
    let w = world_for_records();
    let mut p = Pair::new(
        client_config(&w.ca, Some(&w.alice), false),
        server_config(&w.ca, &w.server, vec![], false),
    );
    p.drive().unwrap();
    assert!(p.server.on_own_records());
    let mut rng = Rng(7);
    let mut sent = Vec::new();
    let mut wire = Vec::new();
    for round in 0..6 {
        let n = 20_000 + rng.below(20_000);
        let data = rng.bytes(n);
        std::io::Write::write_all(&mut p.client.writer(), &data).unwrap();
        sent.extend_from_slice(&data);
        // The client updates its key and asks for ours (update_requested).
        p.client.refresh_traffic_keys().unwrap();
        while p.client.wants_write() {
            p.client.write_tls(&mut wire).unwrap();
        }
        let _ = round;
    }
    assert_eq!(feed_split(&mut p.server, &wire, &mut rng).unwrap(), sent);
    // Our answer (KeyUpdate, update_not_requested) goes out before our next record,
    // and the client reads on under our new key.
    p.server_send(b"after the client's key updates");
    let mut buf = [0u8; 30];
    std::io::Read::read_exact(&mut p.client.reader(), &mut buf).unwrap();
    assert_eq!(&buf, b"after the client's key updates");

    // Our own updates at the send key's limit: 10 records per key over 1,000 records.
    p.server.set_send_key_limit(10);
    let mut back = Vec::new();
    let mut want = Vec::new();
    for i in 0..1000u32 {
        let data = i.to_be_bytes();
        want.extend_from_slice(&data);
        p.server_send(&data);
        let mut b = [0u8; 4];
        std::io::Read::read_exact(&mut p.client.reader(), &mut b).unwrap();
        back.extend_from_slice(&b);
    }
    assert_eq!(back, want);
    // And the client still talks to us after all that.
    std::io::Write::write_all(&mut p.client.writer(), b"still here").unwrap();
    p.drive().unwrap();
    assert!(p.server_plain.as_slice().ends_with(b"still here"));
}

/// Everything the client can read now, appended to `into`.
fn client_reads(client: &mut ClientConnection, mut wire: &[u8], into: &mut Vec<u8>) {
    let mut buf = vec![0u8; 64 * 1024];
    while !wire.is_empty() {
        client.read_tls(&mut wire).unwrap();
        client.process_new_packets().unwrap();
        loop {
            match std::io::Read::read(&mut client.reader(), &mut buf) {
                Ok(0) => break,
                Ok(k) => into.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// The forward relay's download path: plaintext read into record slots and sealed
/// there, mixed with records sealed the copying way, with KeyUpdates asked for by the
/// client and due at the send key's limit; a rustls client reads every byte in order.
#[test]
fn records_sealed_in_their_slots_reach_a_rustls_client_intact() {
    use super::record::{slots, MAX_PLAINTEXT};
    let w = world_for_records();
    let mut p = Pair::new(
        client_config(&w.ca, Some(&w.alice), false),
        server_config(&w.ca, &w.server, vec![], false),
    );
    p.drive().unwrap();
    p.client.set_buffer_limit(None);
    assert!(p.server.seals_in_place());
    let mut rng = Rng(0x5107);
    let mut buf = vec![0u8; slots::LEN];
    let (mut want, mut got) = (Vec::new(), Vec::new());
    let (mut asked, mut updates) = (0, 0);
    for round in 0..240 {
        if round == 120 {
            // From here our own KeyUpdates come every few batches.
            p.server.set_send_key_limit(9);
        }
        let ask = round % 29 == 3;
        if ask {
            // The client updates its key and asks for ours.
            p.client.refresh_traffic_keys().unwrap();
            p.drive().unwrap();
            asked += 1;
        }
        let n = match round % 5 {
            0 => slots::COUNT * MAX_PLAINTEXT,
            1 => MAX_PLAINTEXT,
            2 => 1 + rng.below(100),
            _ => 1 + rng.below(slots::COUNT * MAX_PLAINTEXT),
        };
        let data = rng.bytes(n);
        want.extend_from_slice(&data);
        if round % 7 == 6 {
            // The copying path in between: both count the same sequence numbers.
            let mut out = OutBuf::with_capacity(0);
            p.server.encrypt(&data, &mut out).unwrap();
            client_reads(&mut p.client, out.as_slice(), &mut got);
            continue;
        }
        // As one readv fills the slots.
        for (i, chunk) in data.chunks(MAX_PLAINTEXT).enumerate() {
            buf[slots::room(i)][..chunk.len()].copy_from_slice(chunk);
        }
        let sent = p.server.seal_slots(&mut buf, n).unwrap();
        if sent.start == 0 {
            updates += 1;
        } else {
            assert_eq!(sent.start, slots::KEY_UPDATE_ROOM);
        }
        if round < 120 && round % 7 != 6 {
            // Before the small key limit, a KeyUpdate goes out exactly when one was asked
            // for (rustls does not check that its request is answered; this does).
            assert_eq!(sent.start == 0, ask, "round {round}");
        }
        let records = n.div_ceil(MAX_PLAINTEXT);
        assert_eq!(
            sent.len(),
            (sent.start == 0) as usize * slots::KEY_UPDATE_ROOM + n + records * 22
        );
        client_reads(&mut p.client, &buf[sent], &mut got);
    }
    assert!(got == want, "the client read other bytes than were sealed");
    assert!(
        asked >= 8 && updates > asked,
        "{asked} asked, {updates} KeyUpdates sent in slots"
    );
    // Closed: no more sealing, and the relay falls back to nothing.
    let mut out = OutBuf::with_capacity(0);
    p.server.close_notify(&mut out).unwrap();
    assert!(!p.server.seals_in_place());
    assert!(p.server.seal_slots(&mut buf, 1).is_err());
}

#[test]
fn tls12_sessions_do_not_seal_in_place() {
    let w = world_for_records();
    let mut p = Pair::new(
        client_config(&w.ca, Some(&w.alice), true),
        server_config(&w.ca, &w.server, vec![], true),
    );
    p.drive().unwrap();
    assert!(!p.server.is_handshaking());
    assert!(!p.server.seals_in_place());
}

#[test]
fn sequence_numbers_past_two_to_the_twenty_records() {
    let w = world_for_records();
    let mut p = Pair::new(
        client_config(&w.ca, Some(&w.alice), false),
        server_config(&w.ca, &w.server, vec![], false),
    );
    p.drive().unwrap();
    let n = (1usize << 20) + 17;
    let mut wire = Vec::with_capacity(n * 23);
    let mut inb = Vec::new();
    let mut plain = OutBuf::with_capacity(0);
    let mut total = 0usize;
    for i in 0..n {
        // One byte per write: one record each.
        std::io::Write::write_all(&mut p.client.writer(), &[i as u8]).unwrap();
        wire.clear();
        p.client.write_tls(&mut wire).unwrap();
        inb.extend_from_slice(&wire);
        if i % 4096 == 4095 || i == n - 1 {
            let mut out = OutBuf::with_capacity(0);
            let pr = p
                .server
                .handle_received(&mut inb, &mut out, &mut plain)
                .unwrap();
            inb.drain(..pr.consumed);
            for (j, b) in plain.as_slice().iter().enumerate() {
                assert_eq!(*b, (total + j) as u8, "byte {}", total + j);
            }
            total += plain.as_slice().len();
            plain.clear();
        }
    }
    assert_eq!(total, n);
    // The other way: as many records from us, read by rustls.
    let mut out = OutBuf::with_capacity(0);
    for i in 0..n {
        out.clear();
        p.server.encrypt(&[i as u8], &mut out).unwrap();
        p.client.read_tls(&mut out.as_slice()).unwrap();
        p.client.process_new_packets().unwrap();
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut p.client.reader(), &mut b).unwrap();
        assert_eq!(b[0], i as u8);
    }
}

/// A client whose traffic secrets the test holds, to write records rustls would never
/// send (padding, alerts, fragments, tampering).
struct RawClient {
    server: TlsConn,
    key: aws_lc_rs::aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl RawClient {
    fn new() -> RawClient {
        let w = world_for_records();
        let mut cc = (*client_config(&w.ca, Some(&w.alice), false)).clone();
        cc.enable_secret_extraction = true;
        let mut p = Pair::new(Arc::new(cc), server_config(&w.ca, &w.server, vec![], false));
        p.drive().unwrap();
        assert!(p.server.on_own_records());
        let secrets = p.client.dangerous_extract_secrets().unwrap();
        let (seq, s) = secrets.tx;
        let (alg, key, iv) = match s {
            rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aws_lc_rs::aead::AES_128_GCM, key, iv)
            }
            rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aws_lc_rs::aead::AES_256_GCM, key, iv)
            }
            _ => panic!("the default suites are AES-GCM"),
        };
        let key = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(alg, key.as_ref()).unwrap(),
        );
        RawClient {
            server: p.server,
            key,
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    /// One record: `inner` is content, type and padding as they go under the AEAD.
    fn record(&mut self, outer: u8, inner: &[u8]) -> Vec<u8> {
        let len = (inner.len() + 16) as u16;
        let header = [outer, 3, 3, (len >> 8) as u8, len as u8];
        let mut nonce = self.iv;
        for (b, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        let mut body = inner.to_vec();
        self.key
            .seal_in_place_append_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(header),
                &mut body,
            )
            .unwrap();
        [&header[..], &body].concat()
    }

    fn data(&mut self, content: &[u8], padding: usize) -> Vec<u8> {
        let mut inner = content.to_vec();
        inner.push(23);
        inner.resize(inner.len() + padding, 0);
        self.record(23, &inner)
    }

    fn feed(
        &mut self,
        wire: &mut [u8],
    ) -> (Result<super::conn::Progress, TlsError>, Vec<u8>, OutBuf) {
        let mut out = OutBuf::with_capacity(0);
        let mut plain = OutBuf::with_capacity(0);
        let r = self.server.handle_received(wire, &mut out, &mut plain);
        (r, plain.as_slice().to_vec(), out)
    }
}

fn record_error(r: Result<super::conn::Progress, TlsError>) -> super::record::RecordError {
    match r {
        Err(TlsError::Record(e)) => e,
        other => panic!("expected a record-layer error, got {other:?}"),
    }
}

#[test]
fn padding_and_empty_records_are_read_as_rustls_would() {
    use super::record::MAX_PLAINTEXT;
    let mut c = RawClient::new();
    let mut wire = [
        c.data(b"padded", 100),
        c.data(b"", 0),
        c.data(b"", 3),
        // Content and padding together at the limit: 2^14 of content, 255 of padding.
        c.data(&vec![b'x'; MAX_PLAINTEXT], 255 - 16),
    ]
    .concat();
    let (r, plain, _) = c.feed(&mut wire);
    let p = r.unwrap();
    assert_eq!(p.consumed, wire.len());
    assert_eq!(&plain[..6], b"padded");
    assert_eq!(plain.len(), 6 + MAX_PLAINTEXT);
    // More than 2^14 of plaintext is record_overflow, even if it would fit the
    // ciphertext bound.
    let mut c = RawClient::new();
    let mut wire = c.data(&vec![b'x'; MAX_PLAINTEXT + 1], 0);
    assert_eq!(
        record_error(c.feed(&mut wire).0),
        super::record::RecordError::RecordOverflow
    );
}

#[test]
fn hostile_records_after_the_handshake_are_refused() {
    use super::record::RecordError as E;
    type Case = (&'static str, Box<dyn Fn(&mut RawClient) -> Vec<u8>>, E);
    let cases: Vec<Case> = vec![
        (
            "tampered byte",
            Box::new(|c| {
                let mut r = c.data(b"hello", 0);
                r[7] ^= 1;
                r
            }),
            E::BadRecordMac,
        ),
        (
            "replayed record",
            Box::new(|c| {
                let r = c.data(b"once", 0);
                [r.clone(), r].concat()
            }),
            E::BadRecordMac,
        ),
        (
            "skipped sequence number",
            Box::new(|c| {
                c.seq += 1;
                c.data(b"late", 0)
            }),
            E::BadRecordMac,
        ),
        (
            "all padding",
            Box::new(|c| c.record(23, &[0, 0, 0])),
            E::UnexpectedMessage,
        ),
        (
            "plaintext alert",
            Box::new(|_| vec![21, 3, 3, 0, 2, 2, 40]),
            E::UnexpectedMessage,
        ),
        (
            "change_cipher_spec after the handshake",
            Box::new(|_| vec![20, 3, 3, 0, 1, 1]),
            E::UnexpectedMessage,
        ),
        (
            "oversized ciphertext",
            Box::new(|_| {
                let mut r = vec![23, 3, 3, 0x41, 0x01];
                r.resize(5 + 0x4101, 0);
                r
            }),
            E::RecordOverflow,
        ),
        (
            "fatal alert",
            Box::new(|c| c.record(23, &[2, 40, 21])),
            E::PeerAlert(40),
        ),
        (
            "alert of 3 bytes",
            Box::new(|c| c.record(23, &[2, 40, 0, 21])),
            E::DecodeError,
        ),
        (
            "fragmented KeyUpdate",
            Box::new(|c| c.record(23, &[24, 0, 0, 22])),
            E::UnexpectedMessage,
        ),
        (
            "KeyUpdate request 2",
            Box::new(|c| c.record(23, &[24, 0, 0, 1, 2, 22])),
            E::IllegalParameter,
        ),
        (
            "NewSessionTicket from a client",
            Box::new(|c| c.record(23, &[4, 0, 0, 1, 0, 22])),
            E::UnexpectedMessage,
        ),
        (
            "unknown inner type",
            Box::new(|c| c.record(23, &[1, 2, 3, 99])),
            E::UnexpectedMessage,
        ),
    ];
    for (what, make, want) in cases {
        let mut c = RawClient::new();
        let mut wire = [c.data(b"before", 0), make(&mut c)].concat();
        let (r, plain, out) = c.feed(&mut wire);
        assert_eq!(record_error(r), want, "{what}");
        // Nothing of the bad record reached the application: at most the good ones
        // before it ("once" is the record the replay case sends twice).
        assert!(b"beforeonce".starts_with(&plain), "{what}: {plain:?}");
        if !matches!(want, E::PeerAlert(_)) {
            assert!(
                !out.is_empty(),
                "{what}: the peer is told why with an alert"
            );
        }
        // A failed connection stays failed.
        let mut more = c.data(b"after", 0);
        assert!(
            matches!(c.feed(&mut more).0, Err(TlsError::Closed)),
            "{what}"
        );
    }
}

#[test]
fn close_notify_ends_the_input_and_user_canceled_does_not() {
    let mut c = RawClient::new();
    let mut wire = [
        c.data(b"one", 0),
        c.record(23, &[1, 90, 21]), // user_canceled: a warning
        c.data(b"two", 7),
        c.record(23, &[1, 0, 21]), // close_notify
        c.data(b"ignored", 0),
    ]
    .concat();
    let (r, plain, _) = c.feed(&mut wire);
    let p = r.unwrap();
    assert!(p.peer_closed);
    assert_eq!(p.consumed, wire.len());
    assert_eq!(plain, b"onetwo");
    assert!(c.server.peer_closed());
}

#[test]
fn a_bad_record_from_a_real_client_gets_an_alert_it_understands() {
    let w = world_for_records();
    let mut p = Pair::new(
        client_config(&w.ca, Some(&w.alice), false),
        server_config(&w.ca, &w.server, vec![], false),
    );
    p.drive().unwrap();
    std::io::Write::write_all(&mut p.client.writer(), b"hello").unwrap();
    let mut wire = Vec::new();
    p.client.write_tls(&mut wire).unwrap();
    let last = wire.len() - 1;
    wire[last] ^= 0x80;
    let mut out = OutBuf::with_capacity(0);
    let mut plain = OutBuf::with_capacity(0);
    let r = p.server.handle_received(&mut wire, &mut out, &mut plain);
    assert!(matches!(
        r,
        Err(TlsError::Record(super::record::RecordError::BadRecordMac))
    ));
    p.client.read_tls(&mut out.as_slice()).unwrap();
    match p.client.process_new_packets() {
        Err(rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)) => {}
        other => panic!("client saw {other:?}"),
    }
}
