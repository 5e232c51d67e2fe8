//! Store-backend measurement tools for lakegate (issue "store backend", Speed section).
//! One binary, driven by `benches/store/run.sh`:
//!
//!   put --connect A --ca C --cert C --key K --bucket B --prefix P --count N --size S
//!        one keep-alive TLS 1.3 connection (TLS13_AES_128_GCM_SHA256 only), N PUTs of S
//!        bytes with Content-Length, each answered 200/201 before the next
//!   get  (same options)  N GETs on one connection, body read and discarded, length checked
//!   copy-recv --dir D --file-size S [--port-file F]
//!        dd-style floor for PUT: accept one plain TCP connection, 64 KiB read(2) from it,
//!        64 KiB write(2) into files of S bytes under D until EOF; prints own CPU seconds
//!   file-send --dir D --connect A
//!        dd-style floor for GET: every file under D (sorted), 64 KiB read(2) and 64 KiB
//!        write(2) into a TCP connection to A; prints own CPU seconds
//!   send --connect A --bytes N    plain TCP sender (feeds copy-recv)
//!   sha256-floor [--bytes N]
//!        floor for PUT's body hash: aws-lc-rs SHA-256 (the server's BodyHasher) over N
//!        bytes in 16 KiB pieces (one TLS record of plaintext) from a 1 MiB cache-resident
//!        buffer; prints own thread CPU seconds
//!
//! Every measuring subcommand prints one line of `key=value` pairs on stdout.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[path = "../args.rs"]
mod args;
use args::Args;

fn main() {
    let mut argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if argv.is_empty() {
        eprintln!("usage: store put|get|copy-recv|file-send|send ...");
        return;
    }
    let cmd = argv.remove(0);
    let a = Args(argv);
    let r = match cmd.as_str() {
        "put" => put_get(&a, true),
        "get" => put_get(&a, false),
        "copy-recv" => copy_recv(&a),
        "file-send" => file_send(&a),
        "send" => send(&a),
        "sha256-floor" => sha256_floor(&a),
        other => Err(format!("unknown subcommand {other}").into()),
    };
    if let Err(e) = r {
        eprintln!("store {cmd}: {e}");
        std::process::exit(1);
    }
}

fn self_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an rusage we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn client_config(a: &Args) -> Res<Arc<ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(a.req("--ca"))? {
        roots.add(c?)?;
    }
    let certs = CertificateDer::pem_file_iter(a.req("--cert"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(a.req("--key"))?;
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Buffered response reader over the TLS stream.
struct Resp {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Resp {
    fn fill<S: Read>(&mut self, s: &mut S) -> Res<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = s.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err("connection closed".into());
        }
        self.end += n;
        Ok(n)
    }
    /// Reads one response head; returns (status, content-length).
    fn head<S: Read>(&mut self, s: &mut S) -> Res<(u16, u64)> {
        loop {
            let win = &self.buf[self.start..self.end];
            if let Some(p) = win.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&win[..p]).to_string();
                self.start += p + 4;
                let mut lines = head.split("\r\n");
                let status: u16 = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .and_then(|c| c.parse().ok())
                    .ok_or("bad status line")?;
                let mut len = 0;
                for l in lines {
                    if let Some((k, v)) = l.split_once(':') {
                        if k.trim().eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse()?;
                        }
                    }
                }
                return Ok((status, len));
            }
            self.fill(s)?;
        }
    }
    /// Reads and discards `len` body bytes; returns how many were read.
    fn discard<S: Read>(&mut self, s: &mut S, len: u64) -> Res<u64> {
        let mut got = 0u64;
        while got < len {
            if self.start == self.end {
                self.fill(s)?;
            }
            let n = ((self.end - self.start) as u64).min(len - got);
            std::hint::black_box(&self.buf[self.start..self.start + n as usize]);
            self.start += n as usize;
            got += n;
        }
        Ok(got)
    }
}

fn put_get(a: &Args, put: bool) -> Res<()> {
    let addr = a.req("--connect");
    let count = a.num("--count", 64);
    let size = a.num("--size", 64 << 20);
    let bucket = a.opt("--bucket").unwrap_or_else(|| "datasets".into());
    let prefix = a.opt("--prefix").unwrap_or_else(|| "obj".into());
    let chunk_len = a.num("--chunk", 256 * 1024) as usize;
    let chunk = vec![0x5au8; chunk_len];
    let sock = TcpStream::connect(&addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(300)))?;
    let conn = ClientConnection::new(
        client_config(a)?,
        ServerName::try_from("localhost")?.to_owned(),
    )?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    let suite = s
        .conn
        .negotiated_cipher_suite()
        .map(|x| format!("{:?}", x.suite()))
        .unwrap_or_default();
    let mut r = Resp {
        buf: vec![0u8; 256 * 1024],
        start: 0,
        end: 0,
    };
    let t0 = Instant::now();
    let mut total = 0u64;
    for i in 0..count {
        let path = format!("/{bucket}/{prefix}-{i:04}");
        if put {
            write!(
                s,
                "PUT {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {size}\r\n\r\n"
            )?;
            let mut sent = 0u64;
            while sent < size {
                let n = ((size - sent) as usize).min(chunk_len);
                s.write_all(&chunk[..n])?;
                sent += n as u64;
            }
            s.flush()?;
            let (st, len) = r.head(&mut s)?;
            r.discard(&mut s, len)?;
            if st != 200 && st != 201 {
                return Err(format!("PUT {path}: status {st}").into());
            }
            total += sent;
        } else {
            write!(s, "GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n")?;
            s.flush()?;
            let (st, len) = r.head(&mut s)?;
            if st != 200 {
                return Err(format!("GET {path}: status {st}").into());
            }
            if len != size {
                return Err(format!("GET {path}: content-length {len}, expected {size}").into());
            }
            let got = r.discard(&mut s, len)?;
            if got != size {
                return Err(format!("GET {path}: {got} bytes, expected {size}").into());
            }
            total += got;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    s.conn.send_close_notify();
    let _ = s.conn.complete_io(&mut s.sock);
    let _ = s.sock.shutdown(Shutdown::Both);
    println!(
        "op={} objects={count} bytes={total} secs={secs:.3} gib_per_s={:.3} suite={suite}",
        if put { "put" } else { "get" },
        total as f64 / (1u64 << 30) as f64 / secs
    );
    Ok(())
}

const BLK: usize = 64 * 1024;

fn copy_recv(a: &Args) -> Res<()> {
    let dir = std::path::PathBuf::from(a.req("--dir"));
    let fsize = a.num("--file-size", 64 << 20);
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    if let Some(f) = a.opt("--port-file") {
        std::fs::write(&f, format!("{port}\n"))?;
    }
    let (mut c, _) = l.accept()?;
    let c0 = self_cpu();
    let mut buf = vec![0u8; BLK];
    let mut total = 0u64;
    let mut nfile = 0u64;
    let mut f: Option<File> = None;
    let mut in_file = 0u64;
    loop {
        let want = ((fsize - in_file) as usize).min(BLK);
        let n = c.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if f.is_none() {
            f = Some(File::create(dir.join(format!("f-{nfile:04}")))?);
            nfile += 1;
        }
        f.as_mut().unwrap().write_all(&buf[..n])?;
        in_file += n as u64;
        total += n as u64;
        if in_file == fsize {
            f = None;
            in_file = 0;
        }
    }
    drop(f);
    let cpu = self_cpu() - c0;
    let gib = total as f64 / (1u64 << 30) as f64;
    println!(
        "bytes={total} files={nfile} cpu_s={cpu:.3} cpu_s_per_gib={:.4}",
        cpu / gib
    );
    Ok(())
}

fn file_send(a: &Args) -> Res<()> {
    let dir = a.req("--dir");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut c = TcpStream::connect(a.req("--connect"))?;
    let c0 = self_cpu();
    let mut buf = vec![0u8; BLK];
    let mut total = 0u64;
    for p in &files {
        let mut f = File::open(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            c.write_all(&buf[..n])?;
            total += n as u64;
        }
    }
    c.shutdown(Shutdown::Write)?;
    let mut b = [0u8; 1024];
    while let Ok(n) = c.read(&mut b) {
        if n == 0 {
            break;
        }
    }
    let cpu = self_cpu() - c0;
    let gib = total as f64 / (1u64 << 30) as f64;
    println!(
        "bytes={total} files={} cpu_s={cpu:.3} cpu_s_per_gib={:.4}",
        files.len(),
        cpu / gib
    );
    Ok(())
}

fn send(a: &Args) -> Res<()> {
    let total = a.num("--bytes", 4 << 30);
    let chunk = vec![0x5au8; BLK];
    let mut c = TcpStream::connect(a.req("--connect"))?;
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = ((total - sent) as usize).min(BLK);
        c.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    c.shutdown(Shutdown::Write)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "bytes={sent} secs={secs:.3} gib_per_s={:.3}",
        sent as f64 / (1u64 << 30) as f64 / secs
    );
    Ok(())
}

fn thread_cpu() -> f64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// SHA-256 of `--bytes` in 16 KiB pieces, as the server's `BodyHasher` is fed one record's
/// plaintext at a time. The pieces come from a 1 MiB buffer (cache-resident, like a record
/// just decrypted), so this is the cheapest the hash can be: a floor.
fn sha256_floor(a: &Args) -> Res<()> {
    use aws_lc_rs::digest::{Context, SHA256};
    const PIECE: usize = 16 * 1024;
    let total = a.num("--bytes", 4 << 30);
    let buf: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 + 7) as u8).collect();
    let pieces = total / PIECE as u64;
    let mut warm = Context::new(&SHA256);
    for i in 0..1024usize {
        let o = (i * PIECE) % buf.len();
        warm.update(&buf[o..o + PIECE]);
    }
    std::hint::black_box(warm.finish());
    let t0 = thread_cpu();
    let w0 = Instant::now();
    let mut h = Context::new(&SHA256);
    for i in 0..pieces as usize {
        let o = (i * PIECE) % buf.len();
        h.update(&buf[o..o + PIECE]);
    }
    std::hint::black_box(h.finish());
    let cpu = thread_cpu() - t0;
    let wall = w0.elapsed().as_secs_f64();
    let gib = (pieces * PIECE as u64) as f64 / (1u64 << 30) as f64;
    println!(
        "alg=SHA-256 gib={gib:.3} cpu_s={cpu:.4} cpu_s_per_gib={:.4} wall_s={wall:.3}",
        cpu / gib
    );
    Ok(())
}
