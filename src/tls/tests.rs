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
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use time::{Duration, OffsetDateTime};

use super::conn::{OutBuf, TlsConn, TlsError};
use super::identity::Identity;
use super::policy::FailReason;

struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
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
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(crls)
        .build()
        .unwrap();
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
