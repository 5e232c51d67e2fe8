//! `lakegate load`: the mTLS load generator. One OS thread per connection slot (blocking
//! std sockets + rustls), pinned round-robin to `--cores`; each thread keeps its own
//! histograms and counters, merged once at the end; a progress thread reads per-thread
//! atomics once a second.
//!
//! Modes: `handshake` (a new TCP+TLS connection per op, optionally resumed, optionally
//! one request), `upload` / `download` (store: HTTP PUT / GET on keep-alive connections;
//! forward: one connection per op that writes `--object-size` bytes and drains what
//! comes back, or reads up to `--object-size` bytes the upstream sends), and `mixed`
//! (store only: GET and PUT in a `--mix read:write` ratio).

pub mod client;
pub mod report;

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};

use client::{Conn, Fail, Target};
use report::{record, Context, Report, Tally};

/// Body bytes handed to rustls per write: big enough for full 16 KiB records and few
/// syscalls, small enough to drain an echoing upstream in between.
const CHUNK: usize = 256 * 1024;
/// Pause after a failed connect, so a down server is not hammered in a tight loop.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What each op does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A new TCP + TLS connection per op.
    Handshake,
    /// PUT objects (store) or write a byte stream (forward).
    Upload,
    /// GET an object (store) or read a byte stream (forward).
    Download,
    /// GET and PUT in the `--mix` ratio (store only).
    Mixed,
}

/// What sits behind lakegate.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The HTTP object API.
    Store,
    /// A raw byte stream to a plaintext upstream.
    Forward,
}

/// `lakegate load` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// lakegate's TLS address, host:port.
    #[arg(long)]
    pub target: String,
    /// What each op does.
    #[arg(long, value_enum, default_value = "handshake")]
    pub mode: Mode,
    /// CA certificate(s) (PEM) that the server certificate must chain to.
    #[arg(long)]
    pub ca: PathBuf,
    /// Client certificate chain (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// Client private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// Name for SNI and the certificate check (default: the target's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Connection slots, one thread each.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Run this long (e.g. 10s, 1m); the default when no other limit is given is 10s.
    #[arg(long)]
    pub duration: Option<String>,
    /// Stop after this much payload (e.g. 1GiB), upload/download/mixed.
    #[arg(long)]
    pub total_bytes: Option<String>,
    /// Stop after this many ops.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Object size (store) or bytes per connection (forward).
    #[arg(long, default_value = "1MiB")]
    pub object_size: String,
    /// Ops per second across all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Handshake mode: keep a session cache per thread so later handshakes resume.
    #[arg(long)]
    pub resume: bool,
    /// Every certificate in --cert is a chain of its own (a leaf for --key, issued
    /// by the CA directly); handshakes present them in turn, across all connection
    /// slots. A server then meets a client it has not seen lately on each handshake,
    /// so what it remembers of a returning client (lakegate's chain memo) cannot help:
    /// the worst case of a fleet of distinct clients. Use more certificates than the
    /// server remembers (lakegate: 4,096 chains per worker, so more than 4,096 ×
    /// workers).
    #[arg(long)]
    pub rotate_certs: bool,
    /// With --rotate-certs: the position in the list to start at. A server keeps what
    /// it remembered across runs of this command; a run that starts where the last one
    /// ended meets the certificates the server saw longest ago (benches/compare passes
    /// the count so far).
    #[arg(long, default_value_t = 0, requires = "rotate_certs")]
    pub rotate_from: usize,
    /// Handshake mode: one request after the handshake (store: GET of a small object
    /// put at setup; forward: write --object-size bytes and drain).
    #[arg(long)]
    pub request: bool,
    /// What lakegate fronts.
    #[arg(long, value_enum, default_value = "store")]
    pub backend: Backend,
    /// Bucket for store requests.
    #[arg(long, default_value = "datasets")]
    pub bucket: String,
    /// Key prefix for store requests; keys are PREFIX{conn}-{seq}.
    #[arg(long, default_value = "load/")]
    pub key_prefix: String,
    /// Mixed mode read:write ratio.
    #[arg(long, default_value = "70:30")]
    pub mix: String,
    /// Cores to pin the load threads to, round-robin (e.g. "1", "2,3", "4-7").
    #[arg(long)]
    pub cores: Option<String>,
    /// Connect, read and write timeout.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No live progress line (it is only shown when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// Store: send the bearer token in this file (one line, e.g. from `lakegate pki
    /// token`) as `Authorization: Bearer` on every request.
    #[arg(long)]
    pub bearer_file: Option<PathBuf>,
}

/// Validated options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Mode.
    pub mode: Mode,
    /// Backend.
    pub backend: Backend,
    /// The target as given.
    pub target_text: String,
    /// Host part of the target (Host header).
    pub host: String,
    /// Connection slots.
    pub connections: usize,
    /// Run time limit.
    pub duration: Option<Duration>,
    /// Payload limit.
    pub total_bytes: Option<u64>,
    /// Op count limit.
    pub requests: Option<u64>,
    /// Object / stream size.
    pub object_size: u64,
    /// Ops/s in total, 0 = unlimited.
    pub rate: f64,
    /// Resume sessions.
    pub resume: bool,
    /// One request per handshake op.
    pub request: bool,
    /// Bucket.
    pub bucket: String,
    /// Key prefix.
    pub prefix: String,
    /// (reads, writes) weights.
    pub mix: (u32, u32),
    /// Pinned cores, empty = unpinned.
    pub cores: Vec<usize>,
    /// Socket timeout.
    pub timeout: Duration,
    /// SNI name.
    pub server_name: String,
    /// No progress line.
    pub no_progress: bool,
    /// `Authorization: Bearer` value sent on every store request.
    pub bearer: Option<String>,
}

fn parse_size(what: &str, s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| format!("{what} {s:?}: {e} (expected e.g. 256KiB, 1GiB)"))
}

fn parse_duration(what: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{what} {s:?}: {e} (expected e.g. 10s, 2m)"))
}

/// Parse a core list: "1", "0,2", "4-7", "0,4-5".
pub fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--cores {s:?}: {part:?} is not a core number or range a-b");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(format!("--cores {s:?}: no cores given"));
    }
    Ok(out)
}

/// The token in a `--bearer-file`: its one line, which must be a plain token.
fn read_bearer(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--bearer-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "--bearer-file {}: expected one token on one line",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// Parse a read:write ratio such as "70:30".
pub fn parse_mix(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--mix {s:?}: expected READ:WRITE weights, e.g. 70:30");
    let (r, w) = s.split_once(':').ok_or_else(bad)?;
    let r: u32 = r.trim().parse().map_err(|_| bad())?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    if r + w == 0 {
        return Err(bad());
    }
    Ok((r, w))
}

impl Options {
    /// Check the arguments and read `--bearer-file` (the TLS files are [`tls_config`]'s).
    pub fn from_args(a: &LoadArgs) -> Result<Options, String> {
        let (host, port) = a
            .target
            .rsplit_once(':')
            .ok_or_else(|| format!("--target {:?}: expected host:port", a.target))?;
        if port.parse::<u16>().is_err() || host.is_empty() {
            return Err(format!("--target {:?}: expected host:port", a.target));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if a.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        let object_size = parse_size("--object-size", &a.object_size)?;
        if object_size == 0 && a.mode != Mode::Handshake {
            return Err("--object-size must be more than 0 for upload/download/mixed".into());
        }
        let mut duration = a
            .duration
            .as_deref()
            .map(|d| parse_duration("--duration", d))
            .transpose()?;
        if duration == Some(Duration::ZERO) {
            return Err("--duration must be more than 0".into());
        }
        let total_bytes = a
            .total_bytes
            .as_deref()
            .map(|b| parse_size("--total-bytes", b))
            .transpose()?;
        if total_bytes.is_some() && a.mode == Mode::Handshake {
            return Err("--total-bytes applies to upload/download/mixed; use --requests or --duration for handshake".into());
        }
        if a.requests == Some(0) || total_bytes == Some(0) {
            return Err("--requests and --total-bytes must be more than 0".into());
        }
        if duration.is_none() && total_bytes.is_none() && a.requests.is_none() {
            duration = Some(Duration::from_secs(10));
        }
        if !(a.rate >= 0.0 && a.rate.is_finite()) {
            return Err(format!("--rate {}: expected ops/s ≥ 0", a.rate));
        }
        if a.mode == Mode::Mixed && a.backend == Backend::Forward {
            return Err(
                "--mode mixed needs --backend store (forward has no reads and writes to mix)"
                    .into(),
            );
        }
        if (a.resume || a.request) && a.mode != Mode::Handshake {
            return Err("--resume and --request apply to --mode handshake only".into());
        }
        if a.bucket.is_empty() || a.bucket.contains(['/', ' ', '?', '#']) {
            return Err(format!("--bucket {:?}: expected a bucket name", a.bucket));
        }
        if a.key_prefix.contains([' ', '?', '#', '\r', '\n']) || a.key_prefix.starts_with('/') {
            return Err(format!(
                "--key-prefix {:?}: spaces, ?, #, line breaks and a leading / are not allowed",
                a.key_prefix
            ));
        }
        let cores = match &a.cores {
            Some(c) => parse_cores(c)?,
            None => Vec::new(),
        };
        let timeout = parse_duration("--timeout", &a.timeout)?;
        if timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        Ok(Options {
            mode: a.mode,
            backend: a.backend,
            target_text: a.target.clone(),
            server_name: a.server_name.clone().unwrap_or_else(|| host.clone()),
            host,
            connections: a.connections,
            duration,
            total_bytes,
            requests: a.requests,
            object_size,
            rate: a.rate,
            resume: a.resume,
            request: a.request,
            bucket: a.bucket.clone(),
            prefix: a.key_prefix.clone(),
            mix: parse_mix(&a.mix)?,
            cores,
            timeout,
            no_progress: a.no_progress,
            bearer: a.bearer_file.as_deref().map(read_bearer).transpose()?,
        })
    }
}

/// The base client config: TLS 1.3 (and 1.2, which the server may allow) on aws-lc-rs,
/// trusting `ca`, presenting `cert`/`key`. Errors name the file.
pub fn tls_config(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig, String> {
    let named = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| named(ca, &e))? {
        roots
            .add(c.map_err(|e| named(ca, &e))?)
            .map_err(|e| named(ca, &e))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate in the file", ca.display()));
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| named(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(cert, &e))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let k = PrivateKeyDer::from_pem_file(key).map_err(|e| named(key, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, k)
        .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))
}

/// The certificates of `--rotate-certs`: each certificate in `cert` as a one-certificate
/// chain for `key`. Refuses a file with fewer than two, or a certificate that is not
/// for `key` (a wrong file would otherwise show as failed handshakes).
pub fn rotating_certs(cert: &Path, key: &Path) -> Result<Arc<[Arc<CertifiedKey>]>, String> {
    let named = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let k = PrivateKeyDer::from_pem_file(key).map_err(|e| named(key, &e))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(k)
        .map_err(|e| named(key, &e))?;
    let mut out = Vec::new();
    for (i, c) in CertificateDer::pem_file_iter(cert)
        .map_err(|e| named(cert, &e))?
        .enumerate()
    {
        let c = c.map_err(|e| named(cert, &e))?;
        let ck = CertifiedKey::new(vec![c], signer.clone());
        ck.keys_match().map_err(|e| {
            format!(
                "{}: certificate {} is not for the key in {}: {e}",
                cert.display(),
                i + 1,
                key.display()
            )
        })?;
        out.push(Arc::new(ck));
    }
    if out.len() < 2 {
        return Err(format!(
            "{}: --rotate-certs needs at least two certificates, found {}",
            cert.display(),
            out.len()
        ));
    }
    Ok(out.into())
}

/// The client certificates of `--rotate-certs`: the next in turn on each handshake,
/// from one counter all threads share, so a certificate comes back only after every
/// other has been presented, however unevenly the threads run. (Per-thread counters
/// striding through the list drift apart, and a slow thread would present a
/// certificate again soon after a fast one did.) One atomic add per handshake is
/// nothing beside the handshake.
#[derive(Debug)]
struct Rotate {
    certs: Arc<[Arc<CertifiedKey>]>,
    next: Arc<AtomicUsize>,
}

impl ResolvesClientCert for Rotate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.certs[i % self.certs.len()].clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Counters a thread publishes for the progress line (written by their thread only).
#[derive(Default)]
struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
    sent: AtomicU64,
    recv: AtomicU64,
}

/// What the threads share: the stop flag and the op / byte budgets.
struct Shared {
    stop: AtomicBool,
    ops_claimed: AtomicU64,
    bytes_claimed: AtomicU64,
    live: Vec<Live>,
    finished: AtomicUsize,
}

impl Shared {
    /// Take one op (of `bytes` payload) from the budgets; false = the run is over.
    fn claim(&self, o: &Options, bytes: u64) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(n) = o.requests {
            if self.ops_claimed.fetch_add(1, Ordering::Relaxed) >= n {
                return false;
            }
        }
        if let Some(b) = o.total_bytes {
            if self.bytes_claimed.fetch_add(bytes, Ordering::Relaxed) >= b {
                return false;
            }
        }
        true
    }
}

/// One load thread's state.
struct Worker {
    idx: usize,
    o: Arc<Options>,
    target: Target,
    cfg: Arc<ClientConfig>,
    shared: Arc<Shared>,
    t: Tally,
    body: Arc<Vec<u8>>,
    head: String,
    next_at: Option<Instant>,
    interval: Option<Duration>,
}

impl Worker {
    fn live(&self) -> &Live {
        &self.shared.live[self.idx]
    }

    /// Open-loop pacing for `--rate`: op k starts no earlier than start + k·interval.
    fn pace(&mut self) {
        let (Some(iv), Some(at)) = (self.interval, self.next_at) else {
            return;
        };
        loop {
            let now = Instant::now();
            if now >= at || self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep((at - now).min(Duration::from_millis(100)));
        }
        self.next_at = Some(at + iv);
    }

    fn fail(&mut self, f: &Fail) {
        self.t.error(&f.key(), f.to_string());
        self.live().errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Fold a finished connection's wire bytes into the tally.
    fn add_wire(&mut self, sent: u64, recv: u64) {
        self.t.wire_sent += sent;
        self.t.wire_recv += recv;
    }

    fn connect(&mut self) -> Option<Conn> {
        match Conn::connect(&self.target, &self.cfg) {
            Ok((c, hs)) => {
                record(&mut self.t.handshake, hs.time);
                if hs.resumed {
                    self.t.resumed += 1;
                } else {
                    self.t.full += 1;
                }
                Some(c)
            }
            Err(f) => {
                self.fail(&f);
                if matches!(f, Fail::Connect(_)) {
                    std::thread::sleep(RETRY_PAUSE);
                }
                None
            }
        }
    }

    /// Close a connection (close_notify, wait for the server's end) and book its bytes.
    fn finish(&mut self, c: Conn, drain: bool) -> Result<u64, Fail> {
        let (w0s, w0r) = c.wire();
        let r = c.close(drain);
        match r {
            Ok((got, s, rv)) => {
                self.add_wire(s, rv);
                self.live().recv.fetch_add(rv - w0r, Ordering::Relaxed);
                self.live().sent.fetch_add(s - w0s, Ordering::Relaxed);
                Ok(got)
            }
            Err(f) => Err(f),
        }
    }

    /// Drop a broken connection, booking the wire bytes it moved.
    fn drop_conn(&mut self, c: Conn) {
        let (s, r) = c.wire();
        self.add_wire(s, r);
    }

    /// One HTTP request on `c`; PUT sends `object_size` body bytes. Records latencies
    /// and status; returns whether the connection may be reused.
    fn http(&mut self, c: &mut Conn, put: bool, key: &str, setup: bool) -> Result<bool, Fail> {
        let o = self.o.clone();
        self.head.clear();
        if put {
            let _ = write!(
                self.head,
                "PUT /{}/{key} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
                o.bucket, o.host, o.object_size
            );
        } else {
            let _ = write!(
                self.head,
                "GET /{}/{key} HTTP/1.1\r\nHost: {}\r\n",
                o.bucket, o.host
            );
        }
        if let Some(t) = &o.bearer {
            let _ = write!(self.head, "Authorization: Bearer {t}\r\n");
        }
        self.head.push_str("\r\n");
        let (ws, wr) = c.wire();
        let t0 = Instant::now();
        let head = std::mem::take(&mut self.head);
        let sent = c.send(head.as_bytes());
        self.head = head;
        sent?;
        if put {
            let mut left = o.object_size;
            while left > 0 {
                let n = left.min(self.body.len() as u64) as usize;
                c.send(&self.body[..n])?;
                left -= n as u64;
                self.t.payload_sent += n as u64;
            }
        }
        let resp = c.read_response(t0, false)?;
        let elapsed = t0.elapsed();
        let (ws2, wr2) = c.wire();
        self.live().sent.fetch_add(ws2 - ws, Ordering::Relaxed);
        self.live().recv.fetch_add(wr2 - wr, Ordering::Relaxed);
        self.t.payload_recv += resp.body;
        if setup {
            self.t.setup_requests += 1;
        } else {
            self.t.requests += 1;
            *self.t.status.entry(resp.status).or_default() += 1;
        }
        if !(200..300).contains(&resp.status) {
            return Err(Fail::Status(resp.status));
        }
        if !setup {
            record(&mut self.t.ttfb, resp.ttfb);
            record(&mut self.t.request, elapsed);
        }
        Ok(!resp.close)
    }

    fn op_done(&mut self) {
        self.t.ops += 1;
        self.live().ops.fetch_add(1, Ordering::Relaxed);
    }

    /// upload / download / mixed against the store: keep-alive requests.
    fn run_store(&mut self) {
        let o = self.o.clone();
        let probe = format!("{}{}-probe", o.prefix, self.idx);
        let needs_probe = o.mode != Mode::Upload;
        let mut have_probe = false;
        let mut conn: Option<Conn> = None;
        let mut seq = 0u64;
        let mut k = 0u64;
        loop {
            self.pace();
            if !self.shared.claim(&o, o.object_size) {
                break;
            }
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.connect() {
                    Some(c) => c,
                    None => continue,
                },
            };
            if needs_probe && !have_probe {
                match self.http(&mut c, true, &probe, true) {
                    Ok(reuse) => {
                        have_probe = true;
                        if !reuse {
                            let _ = self.finish(c, false);
                            continue;
                        }
                    }
                    Err(f) => {
                        self.fail(&f);
                        self.drop_conn(c);
                        continue;
                    }
                }
            }
            let put = match o.mode {
                Mode::Upload => true,
                Mode::Download => false,
                _ => {
                    k += 1;
                    is_write(k, o.mix)
                }
            };
            let key = if put {
                seq += 1;
                format!("{}{}-{}", o.prefix, self.idx, seq)
            } else {
                probe.clone()
            };
            match self.http(&mut c, put, &key, false) {
                Ok(reuse) => {
                    self.op_done();
                    if reuse {
                        conn = Some(c);
                    } else if let Err(f) = self.finish(c, false) {
                        self.fail(&f);
                    }
                }
                Err(f) => {
                    self.fail(&f);
                    if matches!(f, Fail::Status(_)) {
                        conn = Some(c);
                    } else {
                        self.drop_conn(c);
                    }
                }
            }
        }
        if let Some(c) = conn {
            if let Err(f) = self.finish(c, true) {
                self.fail(&f);
            }
        }
    }

    /// Forward upload: one connection per op; write `object_size` bytes, close_notify,
    /// drain what the upstream sends back until the server closes.
    fn forward_upload(&mut self, c: &mut Conn) -> Result<(u64, Option<Duration>), Fail> {
        let t0 = Instant::now();
        let mut first = None;
        let mut back = 0u64;
        let mut left = self.o.object_size;
        let (ws, _) = c.wire();
        while left > 0 {
            let n = left.min(self.body.len() as u64) as usize;
            c.send(&self.body[..n])?;
            left -= n as u64;
            self.t.payload_sent += n as u64;
            // An echoing upstream must not fill both directions and stall us.
            let got = c.drain_ready()?;
            if got > 0 {
                first.get_or_insert_with(|| t0.elapsed());
                back += got;
            }
        }
        let (ws2, _) = c.wire();
        self.live().sent.fetch_add(ws2 - ws, Ordering::Relaxed);
        Ok((back, first))
    }

    /// handshake mode, and forward upload / download: a new connection per op.
    fn run_per_connection(&mut self) {
        let o = self.o.clone();
        let probe = format!("{}{}-hs", o.prefix, self.idx);
        // A store GET needs an object: put a small one first, on its own connection.
        if o.mode == Mode::Handshake && o.request && o.backend == Backend::Store {
            loop {
                if self.shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Some(mut c) = self.connect() else {
                    continue;
                };
                match self.http(&mut c, true, &probe, true) {
                    Ok(_) => {
                        if let Err(f) = self.finish(c, true) {
                            self.fail(&f);
                        }
                        break;
                    }
                    Err(f) => {
                        self.fail(&f);
                        self.drop_conn(c);
                        std::thread::sleep(RETRY_PAUSE);
                    }
                }
            }
            // Setup handshakes are not the measured ones.
            self.t.full = 0;
            self.t.resumed = 0;
            self.t.handshake.reset();
        }
        loop {
            self.pace();
            let bytes = if o.mode == Mode::Handshake {
                0
            } else {
                o.object_size
            };
            if !self.shared.claim(&o, bytes) {
                break;
            }
            let Some(mut c) = self.connect() else {
                continue;
            };
            let t0 = Instant::now();
            let r: Result<(), Fail> = (|| {
                match (o.mode, o.backend) {
                    (Mode::Handshake, Backend::Store) if o.request => {
                        self.http(&mut c, false, &probe, false)?;
                    }
                    (Mode::Handshake, _) if !o.request => {}
                    (Mode::Download, _) => {
                        let (ws, wr) = c.wire();
                        let (got, first) = c.read_stream(o.object_size, t0)?;
                        let (ws2, wr2) = c.wire();
                        self.live().sent.fetch_add(ws2 - ws, Ordering::Relaxed);
                        self.live().recv.fetch_add(wr2 - wr, Ordering::Relaxed);
                        if got == 0 {
                            return Err(Fail::ShortRead);
                        }
                        self.t.payload_recv += got;
                        if let Some(f) = first {
                            record(&mut self.t.ttfb, f);
                        }
                    }
                    _ => {
                        // Forward upload, or handshake + request in forward mode.
                        let (back, first) = self.forward_upload(&mut c)?;
                        self.t.payload_recv += back;
                        if let Some(f) = first {
                            record(&mut self.t.ttfb, f);
                        }
                    }
                }
                Ok(())
            })();
            match r {
                Ok(()) => {
                    // Download stops reading at object_size: no point draining more.
                    let drain = o.mode != Mode::Download;
                    match self.finish(c, drain) {
                        Ok(got) => {
                            self.t.payload_recv += got;
                            // A forward op is one stream: its request time runs to
                            // the server's close. (Store requests record in http().)
                            if o.backend == Backend::Forward
                                && (o.mode != Mode::Handshake || o.request)
                            {
                                record(&mut self.t.request, t0.elapsed());
                            }
                            self.op_done();
                        }
                        Err(f) => self.fail(&f),
                    }
                }
                Err(f) => {
                    self.fail(&f);
                    self.drop_conn(c);
                }
            }
        }
    }

    fn run(&mut self) {
        if self.o.backend == Backend::Store && self.o.mode != Mode::Handshake {
            self.run_store();
        } else {
            self.run_per_connection();
        }
    }
}

/// Mixed mode: whether op `k` (from 1) is a write. Writes are spread evenly: op k
/// writes when floor(k·w/(r+w)) steps up, so any r+w consecutive ops hold exactly w.
pub fn is_write(k: u64, (r, w): (u32, u32)) -> bool {
    let (r, w) = (r as u64, w as u64);
    k >= 1 && (k * w) / (r + w) > ((k - 1) * w) / (r + w)
}

/// CPU seconds (user, system) this process has used so far.
fn cpu_now() -> (f64, f64) {
    // SAFETY: rusage is plain old data, so all-zero is a valid value; getrusage writes
    // into the struct we own and RUSAGE_SELF is a valid `who`.
    let (rc, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        let rc = libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        (rc, ru)
    };
    if rc != 0 {
        return (0.0, 0.0);
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (s(ru.ru_utime), s(ru.ru_stime))
}

/// Run the load with validated options and a base TLS config; returns the report.
///
/// `rotate`: the certificates of `--rotate-certs`, presented in turn instead of
/// `base`'s, from the position given.
pub fn run(
    o: Options,
    base: ClientConfig,
    rotate: Option<(Arc<[Arc<CertifiedKey>]>, usize)>,
) -> Result<Report, String> {
    let addr = (o.target_text.as_str())
        .to_socket_addrs()
        .map_err(|e| format!("--target {}: {e}", o.target_text))?
        .next()
        .ok_or_else(|| format!("--target {}: no address", o.target_text))?;
    let name = ServerName::try_from(o.server_name.clone())
        .map_err(|e| format!("--server-name {:?}: {e}", o.server_name))?;
    if !o.cores.is_empty() {
        let have: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .map(|c| c.id)
            .collect();
        if let Some(c) = o.cores.iter().find(|c| !have.contains(c)) {
            return Err(format!(
                "--cores: core {c} is not available (have {have:?})"
            ));
        }
    }
    let target = Target {
        addr,
        name,
        timeout: o.timeout,
    };
    let o = Arc::new(o);
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        ops_claimed: AtomicU64::new(0),
        bytes_claimed: AtomicU64::new(0),
        live: (0..o.connections).map(|_| Live::default()).collect(),
        finished: AtomicUsize::new(0),
    });
    // One pseudo-random body chunk shared by all threads, read-only: no per-request
    // allocation and nothing that compresses.
    let body = {
        let mut b = vec![0u8; (o.object_size as usize).clamp(1, CHUNK)];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for c in b.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        Arc::new(b)
    };
    let interval = (o.rate > 0.0).then(|| Duration::from_secs_f64(o.connections as f64 / o.rate));
    // The first ClientHello in a process pays aws-lc's one-time setup (tens of ms);
    // pay it here so the first measured handshake is not an outlier of our making.
    let _ = rustls::ClientConnection::new(Arc::new(base.clone()), target.name.clone());
    let cpu0 = cpu_now();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(o.connections);
    let rotation = Arc::new(AtomicUsize::new(rotate.as_ref().map_or(0, |r| r.1)));
    for idx in 0..o.connections {
        let mut cfg = base.clone();
        // Each thread has its own session cache: tickets are per thread, no shared lock.
        cfg.resumption = if o.resume {
            Resumption::store(Arc::new(ClientSessionMemoryCache::new(64)))
        } else {
            Resumption::disabled()
        };
        if let Some((certs, _)) = &rotate {
            cfg.client_auth_cert_resolver = Arc::new(Rotate {
                certs: certs.clone(),
                next: rotation.clone(),
            });
        }
        let mut w = Worker {
            idx,
            o: o.clone(),
            target: target.clone(),
            cfg: Arc::new(cfg),
            shared: shared.clone(),
            t: Tally::default(),
            body: body.clone(),
            head: String::with_capacity(256),
            // Stagger the slots over one interval so a rate is smooth from the start.
            next_at: interval.map(|iv| start + iv.mul_f64(idx as f64 / o.connections as f64)),
            interval,
        };
        let core = (!o.cores.is_empty()).then(|| o.cores[idx % o.cores.len()]);
        let h = std::thread::Builder::new()
            .name(format!("load-{idx}"))
            .spawn(move || {
                if let Some(id) = core {
                    core_affinity::set_for_current(core_affinity::CoreId { id });
                }
                w.run();
                w.shared.finished.fetch_add(1, Ordering::Relaxed);
                w.t
            })
            .map_err(|e| format!("spawn load thread: {e}"))?;
        handles.push(h);
    }
    // The progress line is for a human watching; logs and pipes get the table only.
    let show = !o.no_progress && std::io::stderr().is_terminal();
    let deadline = o.duration.map(|d| start + d);
    let mut next_line = start + Duration::from_secs(1);
    let mut last = (0u64, 0u64, 0u64);
    while shared.finished.load(Ordering::Relaxed) < o.connections {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if show && now >= next_line {
            last = progress_line(&shared, start, last);
            next_line += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let mut total = Tally::default();
    for h in handles {
        match h.join() {
            Ok(t) => total.merge(&t),
            Err(_) => total.error("panic", "a load thread panicked".into()),
        }
    }
    if show {
        eprint!("\r\x1b[2K");
    }
    let cpu1 = cpu_now();
    Ok(Report::build(
        &total,
        Context {
            mode: format!("{:?}", o.mode).to_lowercase(),
            backend: format!("{:?}", o.backend).to_lowercase(),
            target: o.target_text.clone(),
            connections: o.connections,
            cores: o.cores.clone(),
            elapsed,
            cpu: (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1),
        },
    ))
}

/// Print one `\r` progress line; returns the totals for the next rate.
fn progress_line(s: &Shared, start: Instant, last: (u64, u64, u64)) -> (u64, u64, u64) {
    let sum = |f: fn(&Live) -> &AtomicU64| -> u64 {
        s.live.iter().map(|l| f(l).load(Ordering::Relaxed)).sum()
    };
    let ops = sum(|l| &l.ops);
    let sent = sum(|l| &l.sent);
    let recv = sum(|l| &l.recv);
    let errs = sum(|l| &l.errors);
    let gbit = |b: u64| b as f64 * 8.0 / 1e9;
    eprint!(
        "\r\x1b[2K[{:>4}s] ops {ops} ({}/s)  up {:.2} Gbit/s  down {:.2} Gbit/s  errors {errs}",
        start.elapsed().as_secs(),
        ops - last.0,
        gbit(sent - last.1),
        gbit(recv - last.2),
    );
    let _ = std::io::stderr().flush();
    (ops, sent, recv)
}

/// The glibc tunable that sets the size from which memcpy/memmove use `rep movsb`.
#[cfg(any(
    test,
    all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")
))]
const REP_MOVSB_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";

/// `GLIBC_TUNABLES` with the `rep movsb` threshold raised to 1 GiB, past any copy the load
/// generator makes; None if `cur` already sets that tunable (the operator's choice wins,
/// and it is what stops a second exec).
#[cfg(any(
    test,
    all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")
))]
fn tunables_without_rep_movsb(cur: &std::ffi::OsStr) -> Option<std::ffi::OsString> {
    if cur.to_string_lossy().contains(REP_MOVSB_TUNABLE) {
        return None;
    }
    let mut t = cur.to_os_string();
    if !t.is_empty() {
        t.push(":");
    }
    t.push(format!("{REP_MOVSB_TUNABLE}={}", 1u64 << 30));
    Some(t)
}

/// Re-run this process once with glibc's `rep movsb` threshold raised, so memcpy/memmove
/// always take their vector loop.
///
/// Why: rustls 0.23 copies every decrypted record (16 KiB) out of its deframer buffer
/// (plaintext at offset 5) into a fresh `Vec`, in its buffered and its unbuffered API
/// alike, so no public API avoids that copy. glibc puts that `Vec` right after the 32 KiB
/// deframer buffer, so the destination is 11 bytes past the source modulo 4 KiB; on AMD
/// Zen, `rep movsb` with the destination 1..31 bytes ahead of the source modulo 4 KiB runs
/// at ~2 GB/s instead of ~40, and that one copy was ~35% of the client's CPU on download
/// (perf, lab EPYC), enough to make the client rather than the server the bottleneck.
/// glibc reads tunables only at start-up, hence the exec. On that machine the vector loop
/// copied 16 KiB at >= 47 GB/s at every destination offset (rep movsb: 0.7..~60), so this
/// is not limited to AMD. If the exec fails we carry on with the default: slower, correct.
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn reexec_without_rep_movsb() {
    use std::os::unix::process::CommandExt;
    let cur = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    let Some(tunables) = tunables_without_rep_movsb(&cur) else {
        return;
    };
    let mut args = std::env::args_os();
    // /proc/self/exe rather than argv[0]: the same binary even if run via PATH or the
    // file was replaced since (a rebuild), as long as the kernel still has it open.
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(argv0) = args.next() {
        cmd.arg0(argv0);
    }
    // exec() only returns on failure; then run as we are.
    let _ = cmd.args(args).env("GLIBC_TUNABLES", tunables).exec();
}

/// The `lakegate load` command; returns the exit code (0 ran, 1 bad arguments or
/// input, 2 every op failed).
pub fn main(a: &LoadArgs) -> u8 {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    reexec_without_rep_movsb();
    let o = match Options::from_args(a) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let base = match tls_config(&a.ca, &a.cert, &a.key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let rotate = match a
        .rotate_certs
        .then(|| rotating_certs(&a.cert, &a.key).map(|c| (c, a.rotate_from)))
        .transpose()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let r = match run(o, base, rotate) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    print!("{}", r.table());
    if let Some(p) = &a.json {
        let text = match serde_json::to_string_pretty(&r) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: JSON report: {e}");
                return 2;
            }
        };
        if let Err(e) = std::fs::write(p, text + "\n") {
            eprintln!("error: {}: {e}", p.display());
            return 1;
        }
    }
    if r.ops == 0 && r.errors_total > 0 {
        eprintln!("error: every op failed ({} errors)", r.errors_total);
        return 2;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: LoadArgs,
    }

    fn args(extra: &[&str]) -> Result<Options, String> {
        let mut v = vec![
            "t",
            "--target",
            "127.0.0.1:8443",
            "--ca",
            "ca.crt",
            "--cert",
            "a.crt",
            "--key",
            "a.key",
        ];
        v.extend_from_slice(extra);
        Options::from_args(&T::try_parse_from(v).map_err(|e| e.to_string())?.a)
    }

    #[test]
    fn defaults() {
        let o = args(&[]).unwrap();
        assert_eq!(o.mode, Mode::Handshake);
        assert_eq!(o.duration, Some(Duration::from_secs(10)));
        assert_eq!(o.connections, 4);
        assert_eq!(o.object_size, 1 << 20);
        assert_eq!(o.server_name, "127.0.0.1");
        assert_eq!(o.mix, (70, 30));
        assert!(o.cores.is_empty());
    }

    #[test]
    fn limits_and_sizes() {
        let o = args(&[
            "--mode",
            "upload",
            "--total-bytes",
            "1GiB",
            "--object-size",
            "256KiB",
        ])
        .unwrap();
        assert_eq!(o.total_bytes, Some(1 << 30));
        assert_eq!(o.object_size, 256 << 10);
        // An explicit byte limit replaces the default duration.
        assert_eq!(o.duration, None);
        let o = args(&["--requests", "5", "--duration", "1m"]).unwrap();
        assert_eq!(
            (o.requests, o.duration),
            (Some(5), Some(Duration::from_secs(60)))
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for (extra, needle) in [
            (&["--connections", "0"][..], "--connections"),
            (&["--duration", "soon"][..], "--duration"),
            (&["--duration", "0s"][..], "--duration"),
            (
                &["--object-size", "lots", "--mode", "upload"][..],
                "--object-size",
            ),
            (
                &["--mode", "handshake", "--total-bytes", "1GiB"][..],
                "--total-bytes",
            ),
            (&["--mode", "mixed", "--backend", "forward"][..], "mixed"),
            (&["--mode", "upload", "--resume"][..], "--resume"),
            (&["--mix", "70"][..], "--mix"),
            (&["--mix", "0:0"][..], "--mix"),
            (&["--cores", "3-1"][..], "--cores"),
            (&["--rate=-1"][..], "--rate"),
            (&["--requests", "0"][..], "--requests"),
            (&["--key-prefix", "/abs"][..], "--key-prefix"),
        ] {
            let e = args(extra).unwrap_err();
            assert!(e.contains(needle), "{extra:?}: {e}");
        }
        let mut a = T::try_parse_from([
            "t", "--target", "nohost", "--ca", "c", "--cert", "c", "--key", "k",
        ])
        .unwrap()
        .a;
        assert!(Options::from_args(&a).unwrap_err().contains("host:port"));
        a.target = "[::1]:8443".into();
        assert_eq!(Options::from_args(&a).unwrap().host, "::1");
    }

    #[test]
    fn cores_and_mix() {
        assert_eq!(parse_cores("1").unwrap(), vec![1]);
        assert_eq!(parse_cores("0, 4-6").unwrap(), vec![0, 4, 5, 6]);
        assert!(parse_cores("").is_err());
        assert!(parse_cores("x").is_err());
        assert_eq!(parse_mix("1:3").unwrap(), (1, 3));
        assert_eq!(parse_mix("100:0").unwrap(), (100, 0));
    }

    #[test]
    fn missing_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("nope-ca.crt");
        let e = tls_config(&ca, Path::new("x.crt"), Path::new("x.key")).unwrap_err();
        assert!(e.contains("nope-ca.crt"), "{e}");
    }

    #[test]
    fn rotated_certificates_go_round_in_turn_and_a_stranger_is_refused() {
        use crate::pki::{self, KeyType};
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        pki::init(dir, "lab", &["lake".into()], &[], KeyType::EcdsaP256, 2).unwrap();
        for name in ["alice", "bob"] {
            pki::client(dir, name, None, &[], false, KeyType::EcdsaP256, 2).unwrap();
        }
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        let (alice, bob) = (read("alice.crt"), read("bob.crt"));
        let file = dir.join("fleet.crt");
        let key = dir.join("alice.key");

        std::fs::write(&file, &alice).unwrap();
        let e = rotating_certs(&file, &key).unwrap_err();
        assert!(e.contains("at least two certificates, found 1"), "{e}");

        std::fs::write(&file, format!("{alice}{bob}")).unwrap();
        let e = rotating_certs(&file, &key).unwrap_err();
        assert!(e.contains("certificate 2 is not for the key"), "{e}");

        std::fs::write(&file, alice.repeat(5)).unwrap();
        let certs = rotating_certs(&file, &key).unwrap();
        assert_eq!(certs.len(), 5);
        // Two threads' resolvers share one counter: whichever asks, the next in turn,
        // and round again after the fifth.
        let next = Arc::new(AtomicUsize::new(0));
        let r = || Rotate {
            certs: certs.clone(),
            next: next.clone(),
        };
        let (a, b) = (r(), r());
        let got: Vec<usize> = [&a, &a, &a, &b, &a, &b, &b]
            .iter()
            .map(|r| {
                let c = r.resolve(&[], &[]).unwrap();
                certs.iter().position(|x| Arc::ptr_eq(x, &c)).unwrap()
            })
            .collect();
        assert_eq!(got, [0, 1, 2, 3, 4, 0, 1]);
    }

    #[test]
    fn rep_movsb_tunable_is_added_once_and_an_operators_setting_kept() {
        let t = |s: &str| tunables_without_rep_movsb(std::ffi::OsStr::new(s));
        let want = "glibc.cpu.x86_rep_movsb_threshold=1073741824";
        assert_eq!(t("").unwrap(), want);
        assert_eq!(
            t("glibc.malloc.check=3").unwrap(),
            format!("glibc.malloc.check=3:{want}").as_str()
        );
        assert_eq!(t(want), None);
        assert_eq!(t("glibc.cpu.x86_rep_movsb_threshold=4096"), None);
    }

    #[test]
    fn mixed_ratio_spreads_writes() {
        // Any 10 consecutive ops at 70:30 hold exactly 3 writes (7:3 reduced).
        for start in 1..50u64 {
            let writes = (start..start + 10)
                .filter(|&k| is_write(k, (70, 30)))
                .count();
            assert_eq!(writes, 3, "from op {start}");
        }
        assert!((1..100).all(|k| !is_write(k, (1, 0))));
        assert!((1..100).all(|k| is_write(k, (0, 1))));
    }
}
