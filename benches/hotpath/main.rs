//! Criterion micro-benchmarks of lakegate's per-byte hot path, each next to a floor made
//! of the raw primitives, so the overhead reads as a ratio (see README.md beside this).
//!
//! | bench | what is timed |
//! |---|---|
//! | `aead/aes{128,256}gcm_open_16k` | aws-lc-rs `open_in_place` of one TLS 1.3 record body |
//! | `aead/aes128gcm_seal_16k` | aws-lc-rs `seal_in_place_separate_tag`, for reference |
//! | `copy/16k` | a 16 KiB memcpy: what `TlsConn` adds by handing plaintext over |
//! | `tls/decrypt_record_16k[_aes256]` | `TlsConn::handle_received` on one 16 KiB record |
//! | `http/parse_{put,get}_head` | `proto::http::parse_head` on an S3-style head |
//! | `put/1MiB_sans_io` | a whole 1 MiB PUT through the store shell's sans-IO steps |
//! | `floor/aes_gcm_plus_sha256_1MiB` | raw AES-GCM open + SHA-256 of the same 1 MiB |
//! | `token/verify_{es256,es384,rs256,ps256,eddsa}` | `authz::token::verify` of a bound JWT: structure, key choice, signature, iss/aud/binding |
//! | `token/cached_check` | what a kept-alive request with the same token pays: `check_time` + `authorize` |
//!
//! Everything is set up the way the product is: the server's rustls config, the authz
//! policy and the store come from `engine::build_generation` over a config file and a
//! lab PKI made by `lakegate::pki` (mTLS with the product's client verifier), and the
//! client is rustls restricted to one suite so the AES baseline uses the same cipher.
//!
//! Input buffers are refilled outside the timed region, a pool buffer's worth (64 KiB,
//! four records) at a time, so every bench decrypts cache-warm bytes just copied in, as
//! the engine does after a socket read; the copy itself (the kernel's, in production)
//! is not counted, in the benches or in their floors.

use std::hint::black_box;
use std::io::Write as _;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use aws_lc_rs::digest;
use criterion::{criterion_group, Criterion, Throughput};
use lakegate::authz::{Access, Decision};
use lakegate::backend::store::{self, BodyHasher};
use lakegate::engine::pool::Pool;
use lakegate::engine::shared::Generation;
use lakegate::engine::store::MAX_HEAD;
use lakegate::pki::KeyType;
use lakegate::proto::http::{self, BodyDecoder, Method};
use lakegate::session::body::{self, Gather, Gathered};
use lakegate::session::cycle::{Cycle, HeadStep, Limits};
use lakegate::tls::conn::{OutBuf, TlsConn, MAX_RECORD};
use lakegate::tls::identity::Identity;
use rustls::crypto::aws_lc_rs::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedCipherSuite};

/// Largest TLS 1.3 record payload; every app-data record in these benches is full.
const PAYLOAD: usize = 16 * 1024;
/// Inner plaintext (payload + content type) sealed with its 16-byte tag.
const SEALED: usize = PAYLOAD + 1 + 16;
/// A whole record on the wire: 5-byte header + sealed body.
const RECORD: usize = 5 + SEALED;
/// Records per timed slice: one engine pool buffer (64 KiB + 1 KiB) holds four.
const SLICE: usize = 4;
/// Records per TLS session in `tls/decrypt_record_16k` (64 MiB of ciphertext): a record
/// can be decrypted only once per connection, so sessions are used up and replaced, and
/// a big batch keeps the (untimed) handshake and client encryption a small share of the
/// wall time.
const RECORDS_PER_SESSION: usize = 4096;
/// PUT body size, and PUTs per TLS session in `put/1MiB_sans_io`.
const PUT_BODY: usize = 1 << 20;
const PUTS_PER_SESSION: usize = 16;
const BUCKET: &str = "datasets";
const KEY: &str = "shards/train-00042-of-01024.tar";

// ---------------------------------------------------------------------------------
// The lab: PKI, config and generation built by the product's own code.

struct Lab {
    /// Holds the PKI and the store root for as long as the benches run.
    _dir: tempfile::TempDir,
    gen: Generation,
    ca: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        lakegate::pki::init(
            d,
            "hotpath CA",
            &["localhost".to_string()],
            &[],
            KeyType::EcdsaP256,
            30,
        )
        .expect("pki init");
        lakegate::pki::client(
            d,
            "alice",
            Some("spiffe://lake.example/trainer/alice"),
            &[],
            false,
            KeyType::EcdsaP256,
            30,
        )
        .expect("pki client");
        std::fs::create_dir_all(d.join("data").join(BUCKET)).expect("store root");
        // The same shape as `lakegate demo` writes; ports are never bound here.
        let text = r#"
[server]
listen = "127.0.0.1:8443"
max_object_size = "64GiB"

[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[admin]
listen = "127.0.0.1:9090"

[backend]
kind = "store"
root = "data"
fsync = "never"

[[authz]]
identity = "spiffe://lake.example/trainer/*"
buckets = ["datasets"]
access = ["read", "write", "delete", "list"]
"#;
        let cfg_path = d.join("lakegate.toml");
        std::fs::write(&cfg_path, text).expect("write config");
        let cfg = lakegate::config::Config::from_str(text, &cfg_path).expect("config");
        let gen = lakegate::engine::build_generation(cfg, None).expect("generation");
        Lab {
            ca: pem_certs(&d.join("ca.crt")).remove(0),
            client_chain: pem_certs(&d.join("alice.crt")),
            client_key: PrivateKeyDer::from_pem_file(d.join("alice.key")).expect("alice.key"),
            gen,
            _dir: dir,
        }
    }

    /// A rustls client offering only `suite`, with alice's certificate.
    fn client_config(&self, suite: SupportedCipherSuite) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = vec![suite];
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let cc = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(self.client_chain.clone(), self.client_key.clone_key())
            .expect("client cert");
        Arc::new(cc)
    }

    /// A completed mTLS handshake between a rustls client and our `TlsConn`, joined by
    /// byte vectors (as in `src/tls/tests.rs`), plus the identity the driver derives.
    fn session(&self, cc: &Arc<ClientConfig>) -> (ClientConnection, TlsConn, Identity) {
        let mut client =
            ClientConnection::new(cc.clone(), ServerName::try_from("localhost").unwrap())
                .expect("client");
        let mut server = TlsConn::new(self.gen.tls.clone()).expect("server");
        let mut to_server = Vec::new();
        let mut out = OutBuf::with_capacity(0);
        let mut plain = OutBuf::with_capacity(0);
        for _ in 0..64 {
            let mut moved = false;
            while client.wants_write() {
                client.write_tls(&mut to_server).expect("client write_tls");
                moved = true;
            }
            if !to_server.is_empty() {
                let p = server
                    .handle_received(&mut to_server, &mut out, &mut plain)
                    .expect("server handshake");
                to_server.drain(..p.consumed);
                moved |= p.consumed > 0;
            }
            let mut rd = out.as_slice();
            while !rd.is_empty() {
                client.read_tls(&mut rd).expect("client read_tls");
                client.process_new_packets().expect("client handshake");
                moved = true;
            }
            out.clear();
            if !moved && !client.is_handshaking() && !server.is_handshaking() {
                let leaf = &server.peer_certificates().expect("client cert")[0];
                let id = Identity::from_der(leaf).expect("identity");
                return (client, server, id);
            }
        }
        panic!("handshake did not settle");
    }
}

fn pem_certs(p: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(p)
        .expect("pem")
        .collect::<Result<_, _>>()
        .expect("certs")
}

/// What the client sends for `plain`, as TLS records (one `write_all`, so rustls cuts
/// full 16 KiB records).
fn client_records(client: &mut ClientConnection, plain: &[u8], wire: &mut Vec<u8>) {
    client.set_buffer_limit(None);
    client.writer().write_all(plain).expect("client write");
    while client.wants_write() {
        client.write_tls(wire).expect("client write_tls");
    }
}

/// The byte ranges of the records in `wire`.
fn record_ranges(wire: &[u8]) -> Vec<Range<usize>> {
    let mut v = Vec::new();
    let mut off = 0;
    while off < wire.len() {
        let len = 5 + usize::from(u16::from_be_bytes([wire[off + 3], wire[off + 4]]));
        v.push(off..off + len);
        off += len;
    }
    v
}

/// Accumulates only the time between `resume` and `pause`, so input refills can sit in
/// the middle of a measured operation without being counted.
#[derive(Default)]
struct Stopwatch {
    acc: Duration,
    since: Option<Instant>,
}

impl Stopwatch {
    fn resume(&mut self) {
        self.since = Some(Instant::now());
    }
    fn pause(&mut self) {
        if let Some(t) = self.since.take() {
            self.acc += t.elapsed();
        }
    }
}

// ---------------------------------------------------------------------------------
// aead/*, copy/16k: the raw primitives.

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The AAD of a TLS 1.3 app-data record of SEALED bytes: its own header.
const HDR: [u8; 5] = [0x17, 3, 3, (SEALED >> 8) as u8, SEALED as u8];

/// Sealed record bodies (no header) laid end to end, each record's plaintext a
/// different byte pattern, sealed under `seq` = its index.
struct Ring {
    key: LessSafeKey,
    bodies: Vec<u8>,
    n: usize,
}

impl Ring {
    fn new(alg: &'static Algorithm, n: usize) -> Ring {
        let key_bytes: Vec<u8> = (0..alg.key_len() as u8).collect();
        let key = LessSafeKey::new(UnboundKey::new(alg, &key_bytes).expect("key"));
        let mut bodies = Vec::with_capacity(n * SEALED);
        for i in 0..n {
            let mut b: Vec<u8> = (0..PAYLOAD).map(|j| (j * 31 + i) as u8).collect();
            b.push(0x17);
            key.seal_in_place_append_tag(nonce(i as u64), Aad::from(HDR), &mut b)
                .expect("seal");
            bodies.extend_from_slice(&b);
        }
        Ring { key, bodies, n }
    }
    fn body(&self, i: usize) -> &[u8] {
        &self.bodies[i * SEALED..(i + 1) * SEALED]
    }
}

/// Open `iters` records, SLICE at a time from a refilled work buffer; with `sha` also
/// hash each payload (the floor of a PUT).
fn open_records(ring: &Ring, iters: u64, sha: Option<&mut digest::Context>) -> Duration {
    let mut work = vec![0u8; SLICE * SEALED];
    let mut sw = Stopwatch::default();
    let mut sha = sha;
    let mut r = 0usize;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(SLICE);
        for k in 0..n {
            work[k * SEALED..(k + 1) * SEALED].copy_from_slice(ring.body((r + k) % ring.n));
        }
        sw.resume();
        hotpath_timed_open(ring, &mut work, r, n, sha.as_deref_mut());
        sw.pause();
        r += n;
        left -= n;
    }
    sw.acc
}

/// Open records `r..r + n` of `ring`, laid out in `work`; with `sha`, hash each payload.
/// `hotpath_timed_*` functions are the timed regions, kept out of line so that
/// `callgrind.sh` can count their instructions by name.
#[inline(never)]
fn hotpath_timed_open(
    ring: &Ring,
    work: &mut [u8],
    r: usize,
    n: usize,
    mut sha: Option<&mut digest::Context>,
) {
    for k in 0..n {
        let seq = ((r + k) % ring.n) as u64;
        let p = ring
            .key
            .open_in_place(
                nonce(seq),
                Aad::from(HDR),
                &mut work[k * SEALED..(k + 1) * SEALED],
            )
            .expect("open");
        if let Some(h) = sha.as_deref_mut() {
            h.update(&p[..PAYLOAD]);
        }
        black_box(p);
    }
}

#[inline(never)]
fn hotpath_timed_sha_finish(h: digest::Context) {
    black_box(h.finish());
}

fn bench_aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (name, alg) in [
        ("aes128gcm_open_16k", &AES_128_GCM),
        ("aes256gcm_open_16k", &AES_256_GCM),
    ] {
        let ring = Ring::new(alg, 64);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| open_records(&ring, iters, None))
        });
    }
    // Sealing needs no fresh input (no tag to check), so it loops on one hot buffer.
    let ring = Ring::new(&AES_128_GCM, 1);
    let mut buf = vec![7u8; PAYLOAD + 1];
    let mut seq = 0u64;
    g.bench_function("aes128gcm_seal_16k", |b| {
        b.iter(|| {
            seq += 1;
            let tag = ring
                .key
                .seal_in_place_separate_tag(nonce(seq), Aad::from(HDR), &mut buf)
                .expect("seal");
            black_box(tag)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("copy");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    let src = vec![5u8; PAYLOAD];
    let mut dst = vec![0u8; PAYLOAD];
    g.bench_function("16k", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)));
    });
    g.finish();
}

// ---------------------------------------------------------------------------------
// tls/decrypt_record_16k: TlsConn on records a real client encrypted.

/// One session's worth of 16 KiB client records, consumed in order.
struct RecordFeed {
    server: TlsConn,
    wire: Vec<u8>,
    records: Vec<Range<usize>>,
    next: usize,
}

impl RecordFeed {
    fn new(lab: &Lab, cc: &Arc<ClientConfig>, count: usize) -> RecordFeed {
        let (mut client, server, _) = lab.session(cc);
        let plain: Vec<u8> = (0..PAYLOAD * count).map(|i| (i * 31 % 251) as u8).collect();
        let mut wire = Vec::with_capacity(count * RECORD);
        client_records(&mut client, &plain, &mut wire);
        let records = record_ranges(&wire);
        assert_eq!(records.len(), count);
        assert!(records.iter().all(|r| r.len() == RECORD));
        RecordFeed {
            server,
            wire,
            records,
            next: 0,
        }
    }
}

/// Feed the `n` records laid out in `work` to `server`, one `handle_received` each.
#[inline(never)]
fn hotpath_timed_decrypt(server: &mut TlsConn, work: &mut [u8], n: usize, plain: &mut OutBuf) {
    for k in 0..n {
        let mut scratch = OutBuf::default();
        let p = server
            .handle_received(&mut work[k * RECORD..(k + 1) * RECORD], &mut scratch, plain)
            .expect("decrypt");
        assert_eq!((p.consumed, p.plaintext), (RECORD, PAYLOAD));
        black_box(plain.as_slice());
        plain.clear();
    }
}

fn bench_tls(c: &mut Criterion, lab: &Lab) {
    let mut g = c.benchmark_group("tls");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (name, suite) in [
        ("decrypt_record_16k", TLS13_AES_128_GCM_SHA256),
        ("decrypt_record_16k_aes256", TLS13_AES_256_GCM_SHA384),
    ] {
        let cc = lab.client_config(suite);
        let mut feed = RecordFeed::new(lab, &cc, RECORDS_PER_SESSION);
        let mut work = vec![0u8; SLICE * RECORD];
        // The engine's buffers: plaintext lands in a pool-sized OutBuf, handshake and
        // alert output in a scratch one (`engine::store::Conn::fill`).
        let mut plain = OutBuf::with_capacity(lakegate::engine::pool::BUF_SIZE);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut sw = Stopwatch::default();
                let mut left = iters as usize;
                while left > 0 {
                    if feed.next == feed.records.len() {
                        feed = RecordFeed::new(lab, &cc, RECORDS_PER_SESSION);
                    }
                    let n = left.min(SLICE).min(feed.records.len() - feed.next);
                    for k in 0..n {
                        let r = feed.records[feed.next + k].clone();
                        work[k * RECORD..(k + 1) * RECORD].copy_from_slice(&feed.wire[r]);
                    }
                    sw.resume();
                    hotpath_timed_decrypt(&mut feed.server, &mut work, n, &mut plain);
                    sw.pause();
                    feed.next += n;
                    left -= n;
                }
                sw.acc
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------
// http/*: the request head parser.

fn put_head(body: &[u8]) -> Vec<u8> {
    let sum = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        digest::digest(&digest::SHA256, body),
    );
    // What aws-cli / boto3 send for a single-part upload with a flexible checksum.
    format!(
        "PUT /{BUCKET}/{KEY} HTTP/1.1\r\n\
         Host: lake.example:8443\r\n\
         User-Agent: aws-cli/2.22.0 md/awscrt#0.23.4 ua/2.0 os/linux#6.8.0 md/arch#x86_64 lang/python#3.12.6\r\n\
         Accept-Encoding: identity\r\n\
         Content-Type: application/x-tar\r\n\
         Content-Length: {}\r\n\
         x-amz-checksum-sha256: {sum}\r\n\
         x-amz-sdk-checksum-algorithm: SHA256\r\n\
         X-Amz-Date: 20261129T120000Z\r\n\
         amz-sdk-invocation-id: 6f1d3c2a-8e0b-4c55-9a7e-2b9f0d4e1a77\r\n\
         amz-sdk-request: attempt=1; max=3\r\n\r\n",
        body.len()
    )
    .into_bytes()
}

const GET_HEAD: &[u8] = b"GET /datasets/shards/train-00042-of-01024.tar HTTP/1.1\r\n\
Host: lake.example:8443\r\n\
User-Agent: aws-cli/2.22.0 md/awscrt#0.23.4 ua/2.0 os/linux#6.8.0 md/arch#x86_64 lang/python#3.12.6\r\n\
Accept-Encoding: identity\r\n\
Range: bytes=0-1048575\r\n\
x-amz-checksum-mode: ENABLED\r\n\
X-Amz-Date: 20261129T120000Z\r\n\
amz-sdk-invocation-id: 6f1d3c2a-8e0b-4c55-9a7e-2b9f0d4e1a77\r\n\
amz-sdk-request: attempt=1; max=3\r\n\r\n";

#[inline(never)]
fn hotpath_timed_parse(head: &[u8]) -> Result<Option<(http::RequestHead, usize)>, http::HttpError> {
    http::parse_head(head, MAX_HEAD)
}

fn bench_http(c: &mut Criterion) {
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements(1));
    let put = put_head(&[0u8; 1024]);
    for (name, head) in [("parse_put_head", &put[..]), ("parse_get_head", GET_HEAD)] {
        let (h, n) = http::parse_head(head, MAX_HEAD)
            .expect("parses")
            .expect("complete");
        assert_eq!(n, head.len());
        assert!(h.headers.len() >= 8);
        g.bench_function(name, |b| b.iter(|| hotpath_timed_parse(black_box(head))));
    }
    g.finish();
}

// ---------------------------------------------------------------------------------
// put/1MiB_sans_io: the store shell's PUT, with its socket and file replaced.

/// Client bytes not yet "received".
struct Wire {
    bytes: Vec<u8>,
    pos: usize,
}

impl Wire {
    /// A socket read that fills `dst` as far as the client's bytes go; `untimed` in
    /// its name makes `callgrind.sh` stop counting inside it.
    #[inline(never)]
    fn hotpath_untimed_recv(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.bytes.len() - self.pos);
        dst[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        n
    }
}

/// The per-connection state of `engine::store::Conn`, without the socket. Its request
/// cycle (head polling, keep-alive, body-rate accounting) is the product's own
/// [`Cycle`], and its body steps (gathering the body bytes, handing the buffer to the
/// write, making room for the next decryption) are the product's own
/// `session::body`, driven at the same points and with the same clock reads as the
/// store shell drives them. What is left here is the order of those calls.
struct Shell {
    cycle: Cycle,
    tls: TlsConn,
    identity: Identity,
    pool: Pool,
    inb: Vec<u8>,
    used: usize,
    plain: OutBuf,
    pstart: usize,
    out: OutBuf,
    wire: Wire,
    puts_left: usize,
}

impl Shell {
    fn new(lab: &Lab, cc: &Arc<ClientConfig>, body: &[u8], puts: usize) -> Shell {
        let (mut client, tls, identity) = lab.session(cc);
        let head = put_head(body);
        let mut bytes = Vec::with_capacity(puts * (body.len() + body.len() / 8));
        for _ in 0..puts {
            // Head and body in separate writes, as HTTP clients do.
            client_records(&mut client, &head, &mut bytes);
            client_records(&mut client, body, &mut bytes);
        }
        let pool = Pool::new(8);
        let limits = Limits {
            idle: Duration::from_secs(60),
            head: Duration::from_secs(10),
            min_body_rate: Some((64 * 1024, Duration::from_secs(10))),
        };
        Shell {
            cycle: Cycle::new(limits, Instant::now()),
            tls,
            identity,
            inb: pool.take(),
            used: 0,
            plain: OutBuf::from_vec(pool.take()),
            pstart: 0,
            out: OutBuf::from_vec(pool.take()),
            pool,
            wire: Wire { bytes, pos: 0 },
            puts_left: puts,
        }
    }

    /// `Conn::fill`: read more TLS and decrypt it onto the end of `plain`. The read is
    /// the only step not timed.
    fn fill(&mut self, sw: &mut Stopwatch) {
        body::make_room(
            &mut self.plain.buf,
            &mut self.pstart,
            &mut self.plain.filled,
            MAX_RECORD * 4,
        );
        loop {
            assert!(self.used < self.inb.len(), "record larger than buffer");
            sw.pause();
            let n = self.wire.hotpath_untimed_recv(&mut self.inb[self.used..]);
            sw.resume();
            assert!(n > 0, "client eof");
            self.cycle.on_read(n, Instant::now());
            self.used += n;
            let mut scratch = OutBuf::default();
            let p = self
                .tls
                .handle_received(&mut self.inb[..self.used], &mut scratch, &mut self.plain)
                .expect("tls error from client");
            self.inb.copy_within(p.consumed..self.used, 0);
            self.used -= p.consumed;
            if p.plaintext > 0 || p.peer_closed {
                return;
            }
        }
    }

    /// One PUT: `read_head`, `request`, `put` and `receive_body` of
    /// `engine::store::Conn` in order, minus the temp file, its write and commit, the
    /// access log line and the socket write of the response. Returns the body size.
    fn put(&mut self, gen: &Generation, sw: &mut Stopwatch) -> u64 {
        let head = loop {
            let pending = &self.plain.buf[self.pstart..self.plain.filled];
            match self.cycle.poll_head(pending, false, Instant::now()) {
                HeadStep::Head(h, n) => {
                    self.pstart += n;
                    break *h;
                }
                HeadStep::NeedMore => self.fill(sw),
                other => panic!("bad head: {other:?}"),
            }
        };
        let (bucket, key) = store::split_path(&head.path).expect("path");
        let (bucket, key) = (bucket.to_string(), key.map(str::to_string));
        store::validate_bucket(&bucket).expect("bucket");
        let key = key.expect("object key");
        store::validate_key(&key).expect("key");
        assert_eq!(head.method, Method::Put);
        let Decision::Allowed { .. } = gen.authz.check(&self.identity, &bucket, Access::Write)
        else {
            panic!("denied")
        };
        let max = gen.config.server.max_object_size;
        assert!(head.content_length.is_some_and(|l| l <= max));
        let mut hasher = BodyHasher::new(head.header("content-md5").is_some());
        self.cycle.on_body_start(Instant::now());
        let size = self.receive_body(&head, &mut hasher, max, sw);
        self.cycle.on_body_end();
        let digests = hasher.finish();
        digests
            .verify(
                head.header("x-amz-checksum-sha256"),
                head.header("content-md5"),
            )
            .expect("checksum");
        let hex = digests.sha256_hex();
        let etag = format!("\"{hex}\"");
        let b64 =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digests.sha256);
        let keep_alive = self.cycle.keep_alive(head.keep_alive, false, false);
        let mut resp = Vec::with_capacity(256);
        http::write_response_head(
            &mut resp,
            201,
            &[("etag", &etag), ("x-amz-checksum-sha256", &b64)],
            Some(0),
            keep_alive,
        );
        self.out.clear();
        self.tls.encrypt(&resp, &mut self.out).expect("encrypt");
        black_box(self.out.as_slice());
        self.out.clear();
        self.cycle.on_activity(Instant::now());
        assert_eq!(self.cycle.on_response_done(true, keep_alive, false), None);
        size
    }

    /// `Conn::receive_body`, with the file write replaced by `black_box` on the slice
    /// that would be written (same buffer hand-over to and from the pool).
    fn receive_body(
        &mut self,
        head: &http::RequestHead,
        hasher: &mut BodyHasher,
        max: u64,
        sw: &mut Stopwatch,
    ) -> u64 {
        let mut gather = Gather::new(BodyDecoder::for_request(head));
        let mut off = 0u64;
        loop {
            let Gathered { region, done } = gather
                .gather(
                    None,
                    &mut self.plain.buf,
                    &mut self.pstart,
                    self.plain.filled,
                    |b| hasher.update(b),
                )
                .expect("body framing");
            let Some(r) = region else {
                if done {
                    return off;
                }
                self.need_more(sw);
                continue;
            };
            let len = r.len() as u64;
            assert!(off + len <= max, "413");
            let full = body::hand_over(
                &mut self.plain.buf,
                &mut self.pstart,
                &mut self.plain.filled,
                self.pool.take(),
            );
            black_box(&full[r]);
            self.pool.give(full);
            off += len;
            if done {
                return off;
            }
            self.need_more(sw);
        }
    }

    /// `Conn::need_more`: the body-rate check around a read of more body.
    fn need_more(&mut self, sw: &mut Stopwatch) {
        self.cycle
            .before_body_read(Instant::now())
            .expect("body too slow");
        self.fill(sw);
        self.cycle.after_body_read(Instant::now());
    }
}

#[inline(never)]
fn hotpath_timed_put(shell: &mut Shell, gen: &Generation, sw: &mut Stopwatch) -> u64 {
    shell.put(gen, sw)
}

fn bench_put(c: &mut Criterion, lab: &Lab) {
    let body: Vec<u8> = (0..PUT_BODY).map(|i| (i * 31 % 251) as u8).collect();
    let mut g = c.benchmark_group("put");
    g.throughput(Throughput::Bytes(PUT_BODY as u64));
    let cc = lab.client_config(TLS13_AES_128_GCM_SHA256);
    let mut shell = Shell::new(lab, &cc, &body, PUTS_PER_SESSION);
    g.bench_function("1MiB_sans_io", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if shell.puts_left == 0 {
                    shell = Shell::new(lab, &cc, &body, PUTS_PER_SESSION);
                }
                let mut sw = Stopwatch::default();
                sw.resume();
                let n = hotpath_timed_put(&mut shell, &lab.gen, &mut sw);
                sw.pause();
                assert_eq!(n, PUT_BODY as u64);
                shell.puts_left -= 1;
                total += sw.acc;
            }
            total
        })
    });
    g.finish();

    let mut g = c.benchmark_group("floor");
    g.throughput(Throughput::Bytes(PUT_BODY as u64));
    let ring = Ring::new(&AES_128_GCM, PUT_BODY / PAYLOAD);
    g.bench_function("aes_gcm_plus_sha256_1MiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut h = digest::Context::new(&digest::SHA256);
                total += open_records(&ring, ring.n as u64, Some(&mut h));
                let t = Instant::now();
                hotpath_timed_sha_finish(h);
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------
// token/*: bearer token verification (issue 10).

fn bench_token(c: &mut Criterion) {
    use lakegate::authz::token::{self, Alg, Jwks, Required, TokenPolicy};
    use lakegate::pki::jwt::{self as labjwt, Signer};
    let thumb = "q3MyP5kq-kzF3tDQb1y1GqPLxO8dV3y6kNqRr0lVq3k";
    let policy = TokenPolicy {
        issuer: "https://auth.lake.example".into(),
        audience: "lakegate".into(),
        cert_bound: true,
        required: Required::Always,
        leeway: 30,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = labjwt::claims(
        &policy.issuer,
        &policy.audience,
        "alice",
        Some("trainer"),
        "lake:read lake:list:datasets",
        now,
        Duration::from_secs(3600),
        Some(thumb),
    )
    .unwrap();
    let mut g = c.benchmark_group("token");
    let mut cached = None;
    for alg in Alg::ALL {
        let (signer, _) = Signer::generate(alg).unwrap();
        let doc = serde_json::json!({ "keys": [signer.jwk("k1")] });
        let jwks = Jwks::parse(doc.to_string().as_bytes()).unwrap();
        let mut header = serde_json::Map::new();
        header.insert("typ".into(), serde_json::json!("JWT"));
        header.insert("kid".into(), serde_json::json!("k1"));
        let t = signer.sign(&header, &claims).unwrap();
        let name = format!("verify_{}", alg.as_str().to_ascii_lowercase());
        g.bench_function(name, |b| {
            b.iter(|| token::verify(black_box(&t), &jwks, &policy, thumb).unwrap())
        });
        if alg == Alg::Es256 {
            cached = Some(token::verify(&t, &jwks, &policy, thumb).unwrap());
        }
    }
    let cached = cached.unwrap();
    g.bench_function("cached_check", |b| {
        b.iter(|| {
            cached.check_time(&policy, black_box(now)).unwrap();
            cached
                .authorize(Access::Read, black_box("datasets"))
                .unwrap();
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_token(c);
    let lab = Lab::new();
    bench_aead(c);
    bench_tls(c, &lab);
    bench_http(c);
    bench_put(c, &lab);
}

criterion_group!(hotpath, benches);

/// `criterion_main!`, plus the instruction-count mode: with `HOTPATH_CALLGRIND=<bench>`
/// (run under callgrind by `callgrind.sh`) one bench's timed function runs a fixed
/// number of times, without criterion, and the count is printed for the per-op division.
fn main() {
    match std::env::var("HOTPATH_CALLGRIND") {
        Ok(which) => instructions(&which),
        Err(_) => {
            hotpath();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}

fn instructions(which: &str) {
    // Small counts: under callgrind the untimed setup (client encryption) is slow too.
    const N: usize = 64;
    let ops = match which {
        "aead_open" | "floor" => {
            let records = if which == "floor" {
                PUT_BODY / PAYLOAD
            } else {
                N
            };
            let ring = Ring::new(&AES_128_GCM, records);
            let mut h = digest::Context::new(&digest::SHA256);
            let sha = (which == "floor").then_some(&mut h);
            open_records(&ring, records as u64, sha);
            if which == "floor" {
                hotpath_timed_sha_finish(h);
                1
            } else {
                records
            }
        }
        "tls_decrypt" => {
            let lab = Lab::new();
            let cc = lab.client_config(TLS13_AES_128_GCM_SHA256);
            let mut feed = RecordFeed::new(&lab, &cc, N);
            let mut work = vec![0u8; SLICE * RECORD];
            let mut plain = OutBuf::with_capacity(lakegate::engine::pool::BUF_SIZE);
            for first in (0..N).step_by(SLICE) {
                for k in 0..SLICE {
                    let r = feed.records[first + k].clone();
                    work[k * RECORD..(k + 1) * RECORD].copy_from_slice(&feed.wire[r]);
                }
                hotpath_timed_decrypt(&mut feed.server, &mut work, SLICE, &mut plain);
            }
            N
        }
        "parse_put" | "parse_get" => {
            let put = put_head(&[0u8; 1024]);
            let head = if which == "parse_put" {
                &put[..]
            } else {
                GET_HEAD
            };
            for _ in 0..N {
                hotpath_timed_parse(black_box(head)).expect("parses");
            }
            N
        }
        "put" => {
            let lab = Lab::new();
            let cc = lab.client_config(TLS13_AES_128_GCM_SHA256);
            let body: Vec<u8> = (0..PUT_BODY).map(|i| (i * 31 % 251) as u8).collect();
            let puts = 2;
            let mut shell = Shell::new(&lab, &cc, &body, puts);
            for _ in 0..puts {
                let mut sw = Stopwatch::default();
                assert_eq!(
                    hotpath_timed_put(&mut shell, &lab.gen, &mut sw),
                    PUT_BODY as u64
                );
            }
            puts
        }
        other => panic!("unknown HOTPATH_CALLGRIND bench {other:?}"),
    };
    println!("bench={which} ops={ops}");
}
