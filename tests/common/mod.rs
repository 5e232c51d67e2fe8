//! Shared harness for the end-to-end tests: a lab PKI made with `lakegate pki`, the real
//! binary started on free 127.0.0.1 ports, real upstreams, and a real rustls client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use aws_lc_rs::digest;
use lakegate::lab::LabConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::HandshakeKind;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lakegate")
}

/// Run `lakegate ARGS`, panicking with its output on failure.
pub fn lakegate(args: &[&str]) -> std::process::Output {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run lakegate");
    assert!(
        out.status.success(),
        "lakegate {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A free TCP port on 127.0.0.1 (bound and released; the tests bind it right after).
/// Never hands out the same port twice in one test process, since the kernel may give
/// a just-released port to the next bind(:0).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

/// A throwaway PKI: CA + server, clients alice and carol (trainers), bob (revoked),
/// old (expired), mallory (valid but no rule admits her), and eve from another CA.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        lakegate(&["pki", "init", "--dir", &d]);
        for (name, uri) in [
            ("alice", "spiffe://lake.example/trainer/alice"),
            ("carol", "spiffe://lake.example/trainer/carol"),
            ("bob", "spiffe://lake.example/trainer/bob"),
            ("mallory", "spiffe://lake.example/intruder/mallory"),
        ] {
            lakegate(&["pki", "client", "--dir", &d, name, "--spiffe", uri]);
        }
        lakegate(&[
            "pki",
            "client",
            "--dir",
            &d,
            "old",
            "--spiffe",
            "spiffe://lake.example/trainer/old",
            "--expired",
        ]);
        lakegate(&["pki", "crl", "--dir", &d, "--revoke", "bob"]);
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let o = other.to_str().unwrap();
        lakegate(&["pki", "init", "--dir", o, "--ca-name", "some other CA"]);
        lakegate(&[
            "pki",
            "client",
            "--dir",
            o,
            "eve",
            "--spiffe",
            "spiffe://lake.example/trainer/eve",
        ]);
        let lab = Lab { dir };
        lab.write_admin_token(&random_token());
        lab
    }

    /// Write `token` to `admin.token` (mode 0600), the file `[admin] token_file` names.
    pub fn write_admin_token(&self, token: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path("admin.token");
        std::fs::write(&p, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The admin token the lab's configs name.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.path("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// (cert, key) paths of a client; "eve" lives under other/.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let base = if name == "eve" {
            self.path("other")
        } else {
            self.dir.path().to_path_buf()
        };
        (
            base.join(format!("{name}.crt")),
            base.join(format!("{name}.key")),
        )
    }

    /// A config with the given backend section and extra `[server]` lines.
    pub fn config(&self, port: u16, admin: u16, server_extra: &str, backend: &str) -> PathBuf {
        self.write_config(port, &self.template(port, admin, server_extra, backend))
    }

    /// The lab template (`lakegate::lab`) as the tests use it: one worker unless
    /// `server_extra` says otherwise, short timeouts, the lab's CRL and admin token,
    /// every trainer admitted.
    pub fn template(&self, port: u16, admin: u16, server_extra: &str, backend: &str) -> LabConfig {
        let mut c = LabConfig::new(([127, 0, 0, 1], port).into());
        if !server_extra.contains("workers") {
            c.server.push("workers = 1".into());
        }
        for l in [
            "handshake_timeout = \"5s\"",
            "idle_timeout = \"30s\"",
            "drain_timeout = \"20s\"",
            server_extra,
        ] {
            c.server.push(l.to_string());
        }
        c.admin = Some(([127, 0, 0, 1], admin).into());
        c.admin_lines.push("token_file = \"admin.token\"".into());
        c.backend.push(backend.to_string());
        c
    }

    /// Write `c` beside the lab's PKI (it names the files relative to itself).
    pub fn write_config(&self, port: u16, c: &LabConfig) -> PathBuf {
        let p = self.path(&format!("lakegate-{port}.toml"));
        c.write(&p).unwrap();
        p
    }
}

/// The appliance, started on a config; killed on drop if still running.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub log: PathBuf,
}

impl Server {
    /// Start `lakegate serve` with a forward backend to `upstream`.
    pub fn forward(lab: &Lab, upstream: &str, server_extra: &str, backend_extra: &str) -> Server {
        let backend = format!("kind = \"forward\"\nupstream = \"{upstream}\"\n{backend_extra}");
        Server::start(lab, server_extra, &backend)
    }

    /// Start `lakegate serve` forwarding to `up`, with `tls_extra` lines in `[tls]`.
    pub fn forward_tls(lab: &Lab, up: &Upstream, tls_extra: &str) -> Server {
        let (port, admin) = (free_port(), free_port());
        let cfg = config_with_tls(lab, port, admin, &forward_backend(up), tls_extra);
        Server::spawn_config(lab, port, admin, &cfg)
    }

    pub fn start(lab: &Lab, server_extra: &str, backend: &str) -> Server {
        let port = free_port();
        let admin = free_port();
        let cfg = lab.config(port, admin, server_extra, backend);
        Server::spawn_config(lab, port, admin, &cfg)
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("lakegate exited early ({st}): {}", self.log_text());
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("lakegate not ready: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap().1
    }

    /// The value of one sample, matched by name and a label substring (e.g.
    /// `reason="revoked"`), or 0 if absent.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    /// Send a signal.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Wait for exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t.elapsed() < limit,
                "lakegate did not exit: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(name) && (labels.is_empty() || l.contains(labels))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 32 random bytes as hex: an admin token.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    hex(&b)
}

/// One request with no body to the admin listener over plain TCP, with `extra` header
/// lines (e.g. `"authorization: Bearer …"`).
pub fn admin_call(port: u16, method: &str, path: &str, extra: &[&str]) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = extra.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n{extra}connection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s, method == "HEAD").unwrap()
}

/// A tiny HTTP/1.1 GET over plain TCP (the admin listener).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let status = body.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let text = body
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((status, text))
}

/// What an upstream saw on one connection.
#[derive(Default, Debug, Clone)]
pub struct Seen {
    pub bytes: u64,
    pub head: Vec<u8>,
    pub sha256: Vec<u8>,
}

/// A plaintext upstream: echoes everything (optionally closing after `limit` bytes),
/// and records per connection what it received.
pub struct Upstream {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _t: JoinHandle<()>,
}

fn serve_echo<S: Read + Write>(
    mut s: S,
    limit: Option<u64>,
    seen: &Mutex<Vec<Seen>>,
    half: impl Fn(&S),
) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut rec = Seen::default();
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if rec.head.len() < 4096 {
            let take = n.min(4096 - rec.head.len());
            rec.head.extend_from_slice(&buf[..take]);
        }
        ctx.update(&buf[..n]);
        rec.bytes += n as u64;
        if s.write_all(&buf[..n]).is_err() {
            break;
        }
        if limit.is_some_and(|l| rec.bytes >= l) {
            break;
        }
    }
    rec.sha256 = ctx.finish().as_ref().to_vec();
    seen.lock().unwrap().push(rec);
    half(&s);
}

impl Upstream {
    pub fn tcp(limit: Option<u64>) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let t = std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let s3 = s2.clone();
                std::thread::spawn(move || {
                    serve_echo(c, limit, &s3, |c| {
                        let _ = c.shutdown(Shutdown::Write);
                    })
                });
            }
        });
        Upstream { addr, seen, _t: t }
    }

    pub fn unix(path: &Path) -> Upstream {
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let t = std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let s3 = s2.clone();
                std::thread::spawn(move || {
                    serve_echo(c, None, &s3, |c| {
                        let _ = c.shutdown(Shutdown::Write);
                    })
                });
            }
        });
        Upstream {
            addr: format!("unix:{}", path.display()),
            seen,
            _t: t,
        }
    }

    /// Wait until `n` connections have finished, then return what they saw.
    pub fn wait_seen(&self, n: usize) -> Vec<Seen> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            let v = self.seen.lock().unwrap();
            if v.len() >= n {
                return v.clone();
            }
            drop(v);
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("upstream saw fewer than {n} connections");
    }
}

/// A rustls client config trusting the lab CA, presenting `name`'s certificate.
pub fn client_config(lab: &Lab, name: Option<&str>, tls12_only: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(lab.path("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match name {
        Some(n) => {
            let (c, k) = lab.client(n);
            let certs = CertificateDer::pem_file_iter(c)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(k).unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

/// A connection that has sent only the start of its ClientHello.
pub struct PausedHello {
    conn: rustls::ClientConnection,
    sock: TcpStream,
    rest: Vec<u8>,
}

impl PausedHello {
    /// Send the rest of the ClientHello and complete the handshake.
    pub fn finish(mut self) -> Result<TlsClient, String> {
        self.sock.write_all(&self.rest).map_err(|e| e.to_string())?;
        while self.conn.is_handshaking() {
            self.conn
                .complete_io(&mut self.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(TlsClient {
            conn: Arc::new(Mutex::new(self.conn)),
            sock: self.sock,
        })
    }
}

/// A blocking mTLS client whose reading and writing halves run on separate threads.
pub struct TlsClient {
    conn: Arc<Mutex<rustls::ClientConnection>>,
    sock: TcpStream,
}

impl TlsClient {
    /// Connect and complete the handshake; Err carries the failure text.
    pub fn connect(port: u16, cfg: Arc<rustls::ClientConfig>) -> Result<TlsClient, String> {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut conn =
            rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
        // The writer thread moves whole 256 KiB chunks through the connection.
        conn.set_buffer_limit(None);
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        Ok(TlsClient {
            conn: Arc::new(Mutex::new(conn)),
            sock,
        })
    }

    /// Connect and send only the first `first` bytes of the ClientHello; the rest,
    /// and the handshake, when [`PausedHello::finish`] is called.
    pub fn connect_paused(
        port: u16,
        cfg: Arc<rustls::ClientConfig>,
        first: usize,
    ) -> std::io::Result<PausedHello> {
        let mut sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut conn =
            rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
        conn.set_buffer_limit(None);
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello)?;
        }
        let first = first.min(hello.len());
        sock.write_all(&hello[..first])?;
        Ok(PausedHello {
            conn,
            sock,
            rest: hello[first..].to_vec(),
        })
    }

    /// The TLS records that carry `data`, not sent: a test sends them in pieces with
    /// [`TlsClient::send_raw`].
    pub fn seal(&self, data: &[u8]) -> Vec<u8> {
        let mut conn = self.conn.lock().unwrap();
        conn.writer().write_all(data).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Send bytes as they are (TLS records, whole or not).
    pub fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        (&self.sock).write_all(bytes)
    }

    /// After a TLS 1.3 handshake the server may still reject us (its alert arrives with
    /// the first read): read once and report whether the connection was refused.
    pub fn refused(mut self) -> Option<String> {
        let _ = self.sock.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = [0u8; 4096];
        loop {
            let n = match self.sock.read(&mut buf) {
                Ok(0) => return Some("eof".into()),
                Ok(n) => n,
                Err(e) => return Some(e.to_string()),
            };
            let mut c = self.conn.lock().unwrap();
            c.read_tls(&mut &buf[..n]).unwrap();
            match c.process_new_packets() {
                Err(e) => return Some(e.to_string()),
                Ok(st) if st.peer_has_closed() => return Some("close_notify".into()),
                Ok(_) => {}
            }
            let mut plain = [0u8; 4096];
            if let Ok(n) = c.reader().read(&mut plain) {
                if n > 0 {
                    return None;
                }
            }
        }
    }

    /// Send `total` pseudo-random bytes, send close_notify, and read everything back
    /// until the server's close_notify. Returns (sha256 sent, sha256 received, bytes received).
    pub fn echo(self, total: u64) -> (Vec<u8>, Vec<u8>, u64) {
        self.echo_updating_keys(total, None)
    }

    /// [`Self::echo`], the client updating its key and asking for the server's
    /// (KeyUpdate with update_requested) after every `every` bytes it sent.
    pub fn echo_updating_keys(self, total: u64, every: Option<u64>) -> (Vec<u8>, Vec<u8>, u64) {
        let conn = self.conn.clone();
        let mut wsock = self.sock.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut ctx = digest::Context::new(&digest::SHA256);
            let mut chunk = vec![0u8; 256 * 1024];
            let mut x: u64 = 0x9E3779B97F4A7C15;
            let mut sent = 0u64;
            let mut wire = Vec::with_capacity(300 * 1024);
            while sent < total {
                let n = ((total - sent) as usize).min(chunk.len());
                for b in chunk[..n].chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let bytes = x.to_le_bytes();
                    b.copy_from_slice(&bytes[..b.len()]);
                }
                ctx.update(&chunk[..n]);
                {
                    let mut c = conn.lock().unwrap();
                    if every.is_some_and(|e| sent > 0 && sent % e < n as u64) {
                        c.refresh_traffic_keys().unwrap();
                    }
                    c.writer().write_all(&chunk[..n]).unwrap();
                    wire.clear();
                    while c.wants_write() {
                        c.write_tls(&mut wire).unwrap();
                    }
                }
                wsock.write_all(&wire).unwrap();
                sent += n as u64;
            }
            {
                let mut c = conn.lock().unwrap();
                c.send_close_notify();
                wire.clear();
                while c.wants_write() {
                    c.write_tls(&mut wire).unwrap();
                }
            }
            wsock.write_all(&wire).unwrap();
            ctx.finish().as_ref().to_vec()
        });
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut got = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        let mut plain = vec![0u8; 256 * 1024];
        let mut rsock = self.sock.try_clone().unwrap();
        'outer: loop {
            let n = rsock.read(&mut buf).expect("read from lakegate");
            if n == 0 {
                break;
            }
            let mut c = self.conn.lock().unwrap();
            let mut rd = &buf[..n];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                let st = c.process_new_packets().expect("tls from lakegate");
                loop {
                    match c.reader().read(&mut plain) {
                        Ok(0) => break 'outer,
                        Ok(k) => {
                            ctx.update(&plain[..k]);
                            got += k as u64;
                        }
                        Err(_) => break,
                    }
                }
                if st.peer_has_closed() {
                    break 'outer;
                }
            }
        }
        let sent = writer.join().unwrap();
        (sent, ctx.finish().as_ref().to_vec(), got)
    }
}

// ---------------------------------------------------------------------------------------
// HTTP over mTLS (store backend): raw requests, response parsing, authz configs.
// ---------------------------------------------------------------------------------------

/// One HTTP response: status, headers (names lowercased, in order), body.
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// The first header called `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// `len` pseudo-random bytes (xorshift64), different for each `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_pseudo_random(&mut out, &mut xorshift_state(seed));
    out
}

fn xorshift_state(seed: u64) -> u64 {
    (seed ^ 0x9E3779B97F4A7C15).max(1)
}

fn fill_pseudo_random(buf: &mut [u8], x: &mut u64) {
    for b in buf.chunks_mut(8) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
}

/// The plaintext read side of a [`TlsClient`]. It takes exactly one TLS record at a time
/// off the socket and only when rustls has no plaintext ready, so it never reads past
/// what it hands to rustls (another reader made later for the same connection goes on
/// where this one stopped) and never overfills rustls' received-plaintext buffer.
pub struct PlainReader {
    conn: Arc<Mutex<rustls::ClientConnection>>,
    sock: TcpStream,
}

impl PlainReader {
    /// The next TLS record off the socket, or None on EOF at a record boundary.
    fn record(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut rec = vec![0u8; 5];
        let mut got = 0;
        while got < 5 {
            match self.sock.read(&mut rec[got..])? {
                0 if got == 0 => return Ok(None),
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "EOF inside a TLS record header",
                    ))
                }
                n => got += n,
            }
        }
        let len = u16::from_be_bytes([rec[3], rec[4]]) as usize;
        rec.resize(5 + len, 0);
        self.sock.read_exact(&mut rec[5..])?;
        Ok(Some(rec))
    }
}

impl Read for PlainReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.conn.lock().unwrap().reader().read(out) {
                // Ok(0) is the server's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // UnexpectedEof: TCP closed without close_notify.
                Err(e) => return Err(e),
            }
            // The lock is not held while blocked on the socket: a writer may go on.
            let rec = self.record()?;
            let mut c = self.conn.lock().unwrap();
            let mut rd: &[u8] = rec.as_deref().unwrap_or_default();
            if rd.is_empty() {
                // Tell rustls about the EOF; the next reader().read says how it ended.
                c.read_tls(&mut rd)?;
                continue;
            }
            while !rd.is_empty() {
                c.read_tls(&mut rd)?;
            }
            c.process_new_packets()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        }
    }
}

/// Read one HTTP/1.1 response (skipping 1xx interim ones). `head_only`: the request was
/// HEAD, so there is no body whatever Content-Length says. Bodies are read by
/// Content-Length, chunked, or until the connection ends.
pub fn read_response(r: &mut impl Read, head_only: bool) -> std::io::Result<Response> {
    use std::io::{Error, ErrorKind};
    let bad = |m: String| Error::new(ErrorKind::InvalidData, m);
    loop {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if r.read(&mut b)? == 0 {
                return Err(Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} bytes of response head: {:?}",
                        head.len(),
                        String::from_utf8_lossy(&head)
                    ),
                ));
            }
            head.push(b[0]);
            if head.len() > 64 * 1024 {
                return Err(bad("response head over 64 KiB".into()));
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .filter(|_| status_line.starts_with("HTTP/1."))
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        for l in lines.filter(|l| !l.is_empty()) {
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header line {l:?}")))?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let mut body = Vec::new();
        let chunked = header(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if head_only || status == 204 || status == 304 {
        } else if chunked {
            loop {
                let mut line = Vec::new();
                while !line.ends_with(b"\r\n") {
                    r.read_exact(&mut b)?;
                    line.push(b[0]);
                }
                let l = String::from_utf8_lossy(&line);
                let size = l.trim().split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| bad(format!("bad chunk size line {l:?}")))?;
                if size == 0 {
                    // Trailers (if any), then the empty line.
                    let mut tail = Vec::new();
                    while !(tail.ends_with(b"\r\n")
                        && (tail.len() == 2 || tail.ends_with(b"\r\n\r\n")))
                    {
                        r.read_exact(&mut b)?;
                        tail.push(b[0]);
                    }
                    break;
                }
                let at = body.len();
                body.resize(at + size, 0);
                r.read_exact(&mut body[at..])?;
                let mut crlf = [0u8; 2];
                r.read_exact(&mut crlf)?;
                if &crlf != b"\r\n" {
                    return Err(bad("chunk not followed by CRLF".into()));
                }
            }
        } else if let Some(len) = header(&headers, "content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| bad(format!("bad content-length {len:?}")))?;
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        } else {
            match r.read_to_end(&mut body) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e),
            }
        }
        return Ok((status, headers, body));
    }
}

impl TlsClient {
    /// Full or resumed: how this connection's handshake went.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.conn.lock().unwrap().handshake_kind()
    }

    /// A reader of this connection's plaintext (shares the connection).
    pub fn plain_reader(&self) -> PlainReader {
        PlainReader {
            conn: self.conn.clone(),
            sock: self.sock.try_clone().unwrap(),
        }
    }

    /// Encrypt and send `data`.
    pub fn send(&self, data: &[u8]) -> std::io::Result<()> {
        send_plain(&self.conn, &mut &self.sock, data)
    }

    /// Send raw request bytes, then read one response (HEAD if `raw` starts with "HEAD ").
    pub fn try_request(&mut self, raw: &[u8]) -> std::io::Result<Response> {
        self.send(raw)?;
        read_response(&mut self.plain_reader(), raw.starts_with(b"HEAD "))
    }

    /// [`TlsClient::try_request`], panicking on I/O errors.
    pub fn request(&mut self, raw: &[u8]) -> Response {
        let what = String::from_utf8_lossy(&raw[..raw.len().min(120)]).into_owned();
        self.try_request(raw)
            .unwrap_or_else(|e| panic!("request {what:?}: {e}"))
    }

    /// Send `head` (request line and headers, ending in the empty line) and then `total`
    /// pseudo-random body bytes from a writer thread, while this thread reads the
    /// response: a server that answers early (413, 507) and stops reading is seen. The
    /// connection is shut down once the response is in. Returns the response (or the
    /// error reading it), the SHA-256 hex of the whole body and how many body bytes
    /// were handed to the socket.
    pub fn put_streaming(
        self,
        head: &str,
        total: u64,
        seed: u64,
    ) -> (std::io::Result<Response>, String, u64) {
        self.sock
            .set_write_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let conn = self.conn.clone();
        let wsock = self.sock.try_clone().unwrap();
        let head = head.as_bytes().to_vec();
        let writer = std::thread::spawn(move || {
            let mut ctx = digest::Context::new(&digest::SHA256);
            let mut x = xorshift_state(seed);
            let mut chunk = vec![0u8; 256 * 1024];
            let mut sent = 0u64;
            let mut alive = send_plain(&conn, &mut &wsock, &head).is_ok();
            let mut done = 0u64;
            while done < total {
                let n = ((total - done) as usize).min(chunk.len());
                fill_pseudo_random(&mut chunk[..n], &mut x);
                ctx.update(&chunk[..n]);
                if alive {
                    alive = send_plain(&conn, &mut &wsock, &chunk[..n]).is_ok();
                    if alive {
                        sent += n as u64;
                    }
                }
                done += n as u64;
            }
            (hex(ctx.finish().as_ref()), sent)
        });
        let resp = read_response(&mut self.plain_reader(), false);
        // Unblock a writer stuck on a server that stopped reading.
        let _ = self.sock.shutdown(Shutdown::Both);
        let (sha, sent) = writer.join().unwrap();
        (resp, sha, sent)
    }
}

fn send_plain(
    conn: &Mutex<rustls::ClientConnection>,
    sock: &mut impl Write,
    data: &[u8],
) -> std::io::Result<()> {
    let mut wire = Vec::with_capacity(data.len() + 1024);
    {
        let mut c = conn.lock().unwrap();
        c.writer().write_all(data)?;
        while c.wants_write() {
            c.write_tls(&mut wire)?;
        }
    }
    sock.write_all(&wire)
}

impl Lab {
    /// Like [`Lab::config`], but with `authz_toml` (one or more `[[authz]]` blocks) in
    /// place of the default catch-all trainer rule.
    pub fn config_with_authz(
        &self,
        port: u16,
        admin: u16,
        server_extra: &str,
        backend: &str,
        authz_toml: &str,
    ) -> PathBuf {
        let mut c = self.template(port, admin, server_extra, backend);
        c.authz = authz_toml.to_string();
        self.write_config(port, &c)
    }
}

impl Server {
    /// Start `lakegate serve` on a config already written for `port` / `admin`.
    pub fn spawn_config(lab: &Lab, port: u16, admin: u16, cfg: &Path) -> Server {
        Server::spawn_with(lab, port, admin, cfg, &[], &[])
    }

    /// [`Server::spawn_config`] with extra global flags (e.g. `--log-json`) and
    /// environment variables.
    pub fn spawn_with(
        lab: &Lab,
        port: u16,
        admin: u16,
        cfg: &Path,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let log = lab.path(&format!("server-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        Server::spawn_to(port, admin, cfg, flags, env, file.into(), log)
    }

    /// [`Server::spawn_config`] with stderr going to `stderr` (say, a pipe the test holds);
    /// [`Server::log_text`] is then empty.
    pub fn spawn_with_stderr(
        lab: &Lab,
        port: u16,
        admin: u16,
        cfg: &Path,
        stderr: Stdio,
    ) -> Server {
        let log = lab.path(&format!("server-{port}.nolog"));
        Server::spawn_to(port, admin, cfg, &[], &[], stderr, log)
    }

    fn spawn_to(
        port: u16,
        admin: u16,
        cfg: &Path,
        flags: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
        log: PathBuf,
    ) -> Server {
        let child = Command::new(bin())
            .args(flags)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut s = Server {
            child,
            port,
            admin,
            log,
        };
        s.wait_ready();
        s
    }

    /// Like [`Server::start`], with its own `[[authz]]` blocks (see
    /// [`Lab::config_with_authz`]).
    pub fn start_with_authz(
        lab: &Lab,
        server_extra: &str,
        backend: &str,
        authz_toml: &str,
    ) -> Server {
        let port = free_port();
        let admin = free_port();
        let cfg = lab.config_with_authz(port, admin, server_extra, backend, authz_toml);
        Server::spawn_config(lab, port, admin, &cfg)
    }

    /// The log without ANSI colour sequences.
    pub fn log_plain(&self) -> String {
        strip_ansi(&self.log_text())
    }

    /// The first log line that contains every one of `needles`, waited for up to 10 s:
    /// lines reach the file through lakegate's log writer thread, a moment after the
    /// event (`telemetry::logs`).
    pub fn log_line_with(&self, needles: &[&str]) -> Option<String> {
        let find = || {
            self.log_plain()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
        };
        let mut found = None;
        eventually(Duration::from_secs(10), || {
            found = find();
            found.is_some()
        });
        found
    }

    /// The log once its writer has caught up: what an absence check reads. It waits
    /// until the file has not grown for 300 ms (at most 10 s).
    pub fn log_settled(&self) -> String {
        let len = || std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let t = Instant::now();
        let (mut last, mut since) = (len(), Instant::now());
        while since.elapsed() < Duration::from_millis(300) && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
            let now = len();
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        self.log_plain()
    }
}

/// Remove ANSI escape sequences (CSI ... final byte).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            it.next();
            for d in it.by_ref() {
                if ('@'..='~').contains(&d) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What one short forward-mode session saw: how the handshake went and the server's
/// certificate.
#[derive(Debug)]
pub struct Session {
    pub kind: HandshakeKind,
    pub server_cert: Vec<u8>,
}

/// Connect, handshake, send `payload` and read it back from the echo upstream (which
/// also takes in the server's tickets). Err: how the server refused us.
pub fn session(
    port: u16,
    cfg: &Arc<rustls::ClientConfig>,
    payload: &[u8],
) -> Result<Session, String> {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut conn =
        rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    conn.set_buffer_limit(None);
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let kind = conn.handshake_kind().unwrap();
    let server_cert = conn.peer_certificates().unwrap()[0].to_vec();
    conn.writer().write_all(payload).unwrap();
    conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < payload.len() {
        match conn.reader().read(&mut buf) {
            Ok(0) => return Err("close_notify".into()),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) => return Err("eof".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    assert_eq!(got, payload, "echo");
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    Ok(Session { kind, server_cert })
}

pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// A lab config with extra `[tls]` lines.
pub fn config_with_tls(
    lab: &Lab,
    port: u16,
    admin: u16,
    backend: &str,
    tls_extra: &str,
) -> PathBuf {
    let mut c = lab.template(port, admin, "", backend);
    c.tls.push(tls_extra.to_string());
    lab.write_config(port, &c)
}

pub fn forward_backend(up: &Upstream) -> String {
    format!("kind = \"forward\"\nupstream = \"{}\"\n", up.addr)
}

pub fn random_ticket_key() -> String {
    use aws_lc_rs::rand::SecureRandom;
    use base64::Engine as _;
    let mut k = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut k).unwrap();
    format!("{}\n", base64::engine::general_purpose::STANDARD.encode(k))
}

/// Write a secret (ticket keys, tokens) with mode 0600, as lakegate requires of them.
pub fn write_secret(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A client certificate made by `openssl` (not by lakegate's own pki, so a quirk of
/// our generator cannot hide a bug), signed by the lab CA: `NAME.crt`, `NAME.key` and
/// `NAME.serial` (so `lakegate pki crl --revoke NAME` can revoke it). `subject` is an
/// openssl `-subj` string, `san` a subjectAltName value (`URI:…,DNS:…`), `end` an
/// `openssl ca -enddate` (`YYYYMMDDHHMMSSZ`) or `None` for a year.
pub fn openssl_client(lab: &Lab, name: &str, subject: &str, san: Option<&str>, end: Option<&str>) {
    let dir = lab.dir.path();
    let db = dir.join("openssl-ca");
    if !db.exists() {
        std::fs::create_dir(&db).unwrap();
        std::fs::write(db.join("index.txt"), "").unwrap();
        std::fs::write(db.join("serial"), "1000\n").unwrap();
        std::fs::write(
            db.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = lab\n[lab]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}\n\
                 certificate = {d}/ca.crt\nprivate_key = {d}/ca.key\nserial = {db}/serial\n\
                 default_md = sha256\npolicy = any\nunique_subject = no\n\
                 [any]\ncommonName = optional\n",
                db = db.display(),
                d = dir.display()
            ),
        )
        .unwrap();
    }
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let (key, csr, crt, ext) = (
        p(&format!("{name}.key")),
        p(&format!("{name}.csr")),
        p(&format!("{name}.crt")),
        p(&format!("{name}.ext")),
    );
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-subj",
        subject,
        "-out",
        &csr,
    ]);
    let mut e = String::from(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    if let Some(san) = san {
        e.push_str(&format!("subjectAltName={san}\n"));
    }
    std::fs::write(&ext, e).unwrap();
    let cnf = db.join("ca.cnf");
    let mut args = vec![
        "ca",
        "-batch",
        "-notext",
        "-config",
        cnf.to_str().unwrap(),
        "-in",
        &csr,
        "-out",
        &crt,
        "-extfile",
        &ext,
        "-startdate",
        "20200101000000Z",
    ];
    match end {
        Some(end) => args.extend(["-enddate", end]),
        None => args.extend(["-days", "365"]),
    }
    run(&args);
    let serial = String::from_utf8(run(&["x509", "-in", &crt, "-noout", "-serial"])).unwrap();
    let hex = serial
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    std::fs::write(dir.join(format!("{name}.serial")), hex).unwrap();
}

/// `openssl ca -enddate` for `secs` from now.
pub fn openssl_end_in(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Run `lakegate check` on `cfg`: (exit code, stdout, stderr).
pub fn check_config(cfg: &Path) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command running the test Python `py` with `tests/py` first on PYTHONPATH (its
/// `sitecustomize.py` works around urllib3 sharing one SSL context between threads)
/// and the fault handler on, so a crash of the interpreter leaves its Python stack.
pub fn python_cmd(py: &Path) -> Command {
    let mut c = Command::new(py);
    c.env(
        "PYTHONPATH",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py"),
    )
    .env("PYTHONFAULTHANDLER", "1");
    c
}

/// The test Python with `modules` importable, or None (skip loudly) outside CI; under
/// CI a missing one fails.
pub fn python_with(modules: &str) -> Option<PathBuf> {
    let py = std::env::var_os("LAKEGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tests/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "CI: no Python with {modules} at {} (.ci/run makes .venv-tests; or set LAKEGATE_TEST_PYTHON)",
        py.display()
    );
    eprintln!("SKIPPED: no Python with {modules} ({})", py.display());
    None
}
