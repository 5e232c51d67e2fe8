//! Forward-mode measurement tools for lakegate (issue "mTLS engine"). One binary, several
//! subcommands, driven by `benches/forward/run.sh`:
//!
//!   sink [--echo] [--port-file F]             plaintext upstream: read and discard (or echo)
//!   source [--bytes N] [--port-file F]        plaintext upstream: on connect, send N bytes
//!                                              (0 = endless) then close (downloads)
//!   upload --connect A --bytes N [--ca C --cert C --key K --suite aes128|aes256|any]
//!                                              one connection, N bytes up (TLS if --ca given)
//!   download --connect A [--ca C --cert C --key K --suite aes128|aes256|any]
//!                                              one connection, read to the end (TLS if --ca)
//!   handshake --connect A --ca C --cert C --key K -n N [--threads T] [--resume]
//!                                              N connections: handshake, 1 byte echoed, close
//!   aead-floor [--bytes N] [--alg aes128|aes256]
//!                                              AES-GCM open_in_place of N bytes in 16 KiB records
//!   free-port                                  print a free 127.0.0.1 port
//!   wait-http --port P --path /readyz          wait for an HTTP 200
//!
//! Every measuring subcommand prints one line of `key=value` pairs on stdout.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[path = "../args.rs"]
mod args;
use args::Args;

fn main() {
    // `cargo bench` passes --bench; ignore it.
    let mut argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if argv.is_empty() {
        eprintln!("usage: forward sink|source|upload|download|handshake|aead-floor|free-port|wait-http ...");
        return;
    }
    let cmd = argv.remove(0);
    let a = Args(argv);
    let r = match cmd.as_str() {
        "sink" => sink(&a),
        "source" => source(&a),
        "upload" => upload(&a),
        "download" => download(&a),
        "handshake" => handshake(&a),
        "aead-floor" => aead_floor(&a),
        "free-port" => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            println!("{}", l.local_addr().unwrap().port());
            Ok(())
        }
        "wait-http" => wait_http(&a),
        other => Err(format!("unknown subcommand {other}").into()),
    };
    if let Err(e) = r {
        eprintln!("forward {cmd}: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// sink
// ---------------------------------------------------------------------------------------

fn sink(a: &Args) -> Res<()> {
    let echo = a.flag("--echo");
    let listen = a.opt("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let l = TcpListener::bind(&listen)?;
    let port = l.local_addr()?.port();
    if let Some(f) = a.opt("--port-file") {
        std::fs::write(&f, format!("{port}\n"))?;
    }
    println!("{port}");
    std::io::stdout().flush()?;
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if echo && c.write_all(&buf[..n]).is_err() {
                    break;
                }
                black_box(&buf[..n]);
            }
            let _ = c.shutdown(Shutdown::Both);
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// source
// ---------------------------------------------------------------------------------------

/// A plaintext upstream for downloads: each accepted connection is sent `--bytes` bytes
/// (0 = until the peer goes away) in `--chunk`-sized writes, then shut down for writing;
/// whatever the peer sends is read and discarded on a second thread.
fn source(a: &Args) -> Res<()> {
    let total = a.num("--bytes", 0);
    let chunk_len = a.num("--chunk", 256 * 1024).max(1) as usize;
    let listen = a.opt("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let l = TcpListener::bind(&listen)?;
    let port = l.local_addr()?.port();
    if let Some(f) = a.opt("--port-file") {
        std::fs::write(&f, format!("{port}\n"))?;
    }
    println!("{port}");
    std::io::stdout().flush()?;
    let chunk: Arc<[u8]> = vec![0xa5u8; chunk_len].into();
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let chunk = chunk.clone();
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            if let Ok(mut r) = c.try_clone() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
            let mut sent = 0u64;
            while total == 0 || sent < total {
                let n = if total == 0 {
                    chunk.len()
                } else {
                    ((total - sent) as usize).min(chunk.len())
                };
                if c.write_all(&chunk[..n]).is_err() {
                    break;
                }
                sent += n as u64;
            }
            let _ = c.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// TLS client config
// ---------------------------------------------------------------------------------------

fn client_config(a: &Args, resume: bool) -> Res<Arc<ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    match a.opt("--suite").as_deref().unwrap_or("aes128") {
        "aes128" => provider
            .cipher_suites
            .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
        "aes256" => provider
            .cipher_suites
            .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384),
        "any" => {}
        other => return Err(format!("unknown --suite {other}").into()),
    }
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
    cfg.resumption = if resume {
        rustls::client::Resumption::in_memory_sessions(256)
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(Arc::new(cfg))
}

fn kx_name(c: &ClientConnection) -> String {
    c.negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_else(|| "none".into())
}

fn suite_name(c: &ClientConnection) -> String {
    c.negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| "none".into())
}

// ---------------------------------------------------------------------------------------
// upload
// ---------------------------------------------------------------------------------------

/// The TLS client of one bulk transfer: handshake done, no plaintext buffer limit.
fn bulk_connection(a: &Args, sock: &mut TcpStream) -> Res<ClientConnection> {
    let cfg = client_config(a, false)?;
    let mut conn = ClientConnection::new(cfg, ServerName::try_from("localhost")?.to_owned())?;
    conn.set_buffer_limit(None);
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    Ok(conn)
}

fn upload(a: &Args) -> Res<()> {
    let addr = a.req("--connect");
    let total = a.num("--bytes", 4 << 30);
    let chunk_len = a.num("--chunk", 256 * 1024) as usize;
    let chunk = vec![0x5au8; chunk_len];
    let mut sock = TcpStream::connect(&addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(300)))?;
    let t0 = Instant::now();
    let mut suite = "plaintext".to_string();
    if a.opt("--ca").is_some() {
        let mut conn = bulk_connection(a, &mut sock)?;
        suite = suite_name(&conn);
        let mut sent = 0u64;
        while sent < total {
            let n = ((total - sent) as usize).min(chunk_len);
            conn.writer().write_all(&chunk[..n])?;
            while conn.wants_write() {
                conn.write_tls(&mut sock)?;
            }
            sent += n as u64;
        }
        conn.send_close_notify();
        while conn.wants_write() {
            conn.write_tls(&mut sock)?;
        }
        // Wait for the server's close (it follows the sink's EOF, i.e. all bytes relayed).
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut rd = &buf[..n];
            while !rd.is_empty() {
                if conn.read_tls(&mut rd).is_err() {
                    break;
                }
                if conn.process_new_packets().is_err() {
                    break;
                }
            }
        }
    } else {
        let mut sent = 0u64;
        while sent < total {
            let n = ((total - sent) as usize).min(chunk_len);
            sock.write_all(&chunk[..n])?;
            sent += n as u64;
        }
        sock.shutdown(Shutdown::Write)?;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = sock.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "bytes={total} secs={secs:.3} gib_per_s={:.3} suite={suite}",
        total as f64 / (1u64 << 30) as f64 / secs
    );
    Ok(())
}

/// Read everything the server sends (the source upstream's bytes) until it closes.
fn download(a: &Args) -> Res<()> {
    let addr = a.req("--connect");
    let mut sock = TcpStream::connect(&addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(300)))?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut suite = "plaintext".to_string();
    if a.opt("--ca").is_some() {
        let mut conn = bulk_connection(a, &mut sock)?;
        suite = suite_name(&conn);
        let mut plain = vec![0u8; 256 * 1024];
        'read: loop {
            let n = sock.read(&mut buf)?;
            if n == 0 {
                return Err("server closed without close_notify".into());
            }
            let mut rd = &buf[..n];
            while !rd.is_empty() {
                conn.read_tls(&mut rd)?;
                conn.process_new_packets()?;
                loop {
                    match conn.reader().read(&mut plain) {
                        Ok(0) => break 'read,
                        Ok(k) => total += k as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    } else {
        loop {
            let n = sock.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "bytes={total} secs={secs:.3} gib_per_s={:.3} suite={suite}",
        total as f64 / (1u64 << 30) as f64 / secs
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// handshake
// ---------------------------------------------------------------------------------------

fn one_connection(addr: &str, cfg: &Arc<ClientConfig>) -> Res<(HandshakeKind, String, String)> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut conn =
        ClientConnection::new(cfg.clone(), ServerName::try_from("localhost")?.to_owned())?;
    {
        let mut s = rustls::Stream::new(&mut conn, &mut sock);
        s.write_all(b"x")?;
        s.flush()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        if b[0] != b'x' {
            return Err("wrong echo".into());
        }
    }
    let kind = conn.handshake_kind().ok_or("no handshake kind")?;
    let kx = kx_name(&conn);
    let suite = suite_name(&conn);
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    // Read until the server closes, so its teardown is inside the measurement.
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    Ok((kind, kx, suite))
}

fn handshake(a: &Args) -> Res<()> {
    let addr = a.req("--connect");
    let n = a.num("-n", 1000);
    let threads = a.num("--threads", 1).max(1);
    let resume = a.flag("--resume");
    let cfg = client_config(a, resume)?;
    let full = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    // One connection first so that, with --resume, the session store holds tickets.
    let (k, kx, suite) = one_connection(&addr, &cfg)?;
    match k {
        HandshakeKind::Resumed => resumed.fetch_add(1, Ordering::Relaxed),
        _ => full.fetch_add(1, Ordering::Relaxed),
    };
    next.fetch_add(1, Ordering::Relaxed);
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (addr, cfg) = (addr.clone(), cfg.clone());
            let (full, resumed, errors, next) =
                (full.clone(), resumed.clone(), errors.clone(), next.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    match one_connection(&addr, &cfg) {
                        Ok((HandshakeKind::Resumed, _, _)) => {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("connection error: {e}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let (f, r, e) = (
        full.load(Ordering::Relaxed),
        resumed.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    );
    println!(
        "connections={} full={f} resumed={r} errors={e} secs={secs:.3} per_s={:.1} kx={kx} suite={suite}",
        f + r,
        (f + r) as f64 / secs
    );
    if e > 0 {
        return Err(format!("{e} connections failed").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// aead-floor
// ---------------------------------------------------------------------------------------

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Decrypt `--bytes` of TLS 1.3 application data in full records (16 KiB payload + 1
/// content-type byte + 16-byte tag, AAD = the 5-byte record header) with
/// `LessSafeKey::open_in_place`, the way the server's record layer does. `open_in_place`
/// destroys its input, so each record is first copied from a ring of 64 pristine sealed
/// records (1 MiB, cache-resident); the copy is timed separately and subtracted.
fn aead_floor(a: &Args) -> Res<()> {
    let total = a.num("--bytes", 4 << 30);
    let (alg, klen, name) = match a.opt("--alg").as_deref().unwrap_or("aes128") {
        "aes128" => (&AES_128_GCM, 16, "AES-128-GCM"),
        "aes256" => (&AES_256_GCM, 32, "AES-256-GCM"),
        other => return Err(format!("unknown --alg {other}").into()),
    };
    let key = LessSafeKey::new(UnboundKey::new(alg, &vec![7u8; klen]).map_err(|_| "key")?);
    const PAYLOAD: usize = 16 * 1024;
    const CT: usize = PAYLOAD + 1 + 16;
    let hdr = [0x17u8, 3, 3, (CT >> 8) as u8, CT as u8];
    const RING: u64 = 64;
    let ring: Vec<Vec<u8>> = (0..RING)
        .map(|i| {
            let mut b = vec![i as u8; PAYLOAD];
            b.push(0x17);
            key.seal_in_place_append_tag(nonce(i), Aad::from(hdr), &mut b)
                .unwrap();
            assert_eq!(b.len(), CT);
            b
        })
        .collect();
    let records = total / PAYLOAD as u64;
    let mut work = vec![0u8; CT];

    // Warm up (page faults, CPU frequency).
    for r in 0..1024u64 {
        let i = r % RING;
        work.copy_from_slice(&ring[i as usize]);
        let p = key
            .open_in_place(nonce(i), Aad::from(hdr), &mut work)
            .map_err(|_| "open failed")?;
        black_box(p);
    }

    let t0 = thread_cpu();
    let w0 = Instant::now();
    for r in 0..records {
        let i = r % RING;
        work.copy_from_slice(&ring[i as usize]);
        let p = key
            .open_in_place(nonce(i), Aad::from(hdr), &mut work)
            .map_err(|_| "open failed")?;
        black_box(p);
    }
    let open_and_copy = thread_cpu() - t0;
    let wall = w0.elapsed().as_secs_f64();

    let t1 = thread_cpu();
    for r in 0..records {
        let i = r % RING;
        work.copy_from_slice(&ring[i as usize]);
        black_box(&mut work);
    }
    let copy = thread_cpu() - t1;

    let gib = (records * PAYLOAD as u64) as f64 / (1u64 << 30) as f64;
    let open = open_and_copy - copy;

    // Sealing, as a sender lays records out: four records back to back in one buffer
    // (each plaintext 5 bytes past a record start, so at an odd address) and four in
    // 64-byte-aligned slots: shows whether the record layout costs the cipher anything
    // (on this VM's EPYC it does not: both within 2 % of open).
    let seal = |stride: usize, at: usize| -> f64 {
        let mut buf = vec![0x5au8; 4 * stride + 64];
        let t = thread_cpu();
        for r in 0..records {
            let slot = (r % 4) as usize * stride + at;
            let (plain, _) = buf[slot..].split_at_mut(PAYLOAD + 1);
            let tag = key
                .seal_in_place_separate_tag(nonce(r), Aad::from(hdr), plain)
                .expect("seal");
            let _ = black_box(tag);
        }
        (thread_cpu() - t) / gib
    };
    let packed = seal(5 + CT, 5);
    let aligned = seal((5 + CT).next_multiple_of(64), 64);
    println!(
        "alg={name} gib={gib:.3} records={records} open_plus_copy_cpu_s={open_and_copy:.4} copy_cpu_s={copy:.4} open_cpu_s={open:.4} open_cpu_s_per_gib={:.4} open_plus_copy_cpu_s_per_gib={:.4} seal_packed_cpu_s_per_gib={packed:.4} seal_aligned_cpu_s_per_gib={aligned:.4} wall_s={wall:.3}",
        open / gib,
        open_and_copy / gib
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// wait-http
// ---------------------------------------------------------------------------------------

fn wait_http(a: &Args) -> Res<()> {
    let port = a.req("--port");
    let path = a.opt("--path").unwrap_or_else(|| "/readyz".into());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if let Ok(mut s) = TcpStream::connect(format!("127.0.0.1:{port}")) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            );
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("127.0.0.1:{port}{path} not ready").into())
}
