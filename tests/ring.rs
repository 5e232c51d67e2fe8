//! End-to-end, store backend, one worker: the worker's receive buffer ring (64 buffers)
//! runs empty when 2,000 connections that wait for their next request all get one at
//! once; every receive that met the empty ring (ENOBUFS) waits for a buffer to come
//! back, re-arms, and is counted, and every request is answered, byte-exact.
//!
//! And: a connection that pauses inside a TLS record (a ClientHello sent in pieces, a
//! request record cut short) waits holding only a carry of the bytes it has, within a
//! per-worker budget; past the budget it keeps its buffer; either way the record is
//! whole when the rest arrives.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn an_empty_receive_ring_under_2000_connections_recovers_and_is_counted() {
    const CONNS: usize = 2000;
    // This process and lakegate (which inherits the limit) each hold 2,000 sockets.
    raise_open_files(4 * CONNS as u64);
    let lab = Lab::new();
    let root = lab.path("data");
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    let body = pseudo_random(3000, 7);
    std::fs::write(root.join("datasets/small"), &body).unwrap();
    let srv = Server::start(
        &lab,
        "max_connections = 5000",
        &format!("kind = \"store\"\nroot = \"{}\"", root.display()),
    );
    let cfg = client_config(&lab, Some("alice"), false);
    let get = b"GET /datasets/small HTTP/1.1\r\nHost: x\r\n\r\n";

    let t = Instant::now();
    let mut clients = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let c = TlsClient::connect(srv.port, cfg.clone())
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        clients.push(c);
    }
    // Each connection has handshaken and now waits for its first request with a
    // receive armed on the ring (no buffer of its own).
    std::thread::sleep(Duration::from_millis(500));
    let before = srv.metric("lakegate_recv_ring_empty_total", "");
    // All 2,000 requests land at once: far more receives complete than the ring has
    // buffers.
    for c in &clients {
        c.send(get).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let (status, _, got) = read_response(&mut c.plain_reader(), false).unwrap_or_else(|e| {
            let log = srv.log_text();
            let odd: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("close=") && !l.contains("close=\"client_eof")
                })
                .take(20)
                .collect();
            panic!("connection {i}: {e}\n{}", odd.join("\n"))
        });
        assert_eq!(status, 200, "connection {i}");
        assert!(got == body, "connection {i}: body differs");
    }
    // The connections stay usable: a second round, request by request.
    for (i, c) in clients.iter_mut().enumerate().step_by(97) {
        assert_eq!(c.request(get).0, 200, "connection {i}, second request");
    }
    let empty = srv.metric("lakegate_recv_ring_empty_total", "") - before;
    eprintln!(
        "{CONNS} connections, {empty} receives met an empty ring, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        empty > 0.0,
        "2,000 simultaneous requests never emptied a 64-buffer ring: the test shows nothing"
    );
    let log = srv.log_settled();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn paused_partial_records_are_carried_within_the_budget_and_come_back_whole() {
    // 1,200 requests of 15,000 bytes paused 64 bytes short carry about 17.9 MB: more
    // than one worker's 16 MiB carry budget, so some must keep their buffer instead.
    const CONNS: usize = 1200;
    const HELLO_FIRST: usize = 40;
    const BODY: usize = 14_900;
    let (lab, srv) = store_for(CONNS);
    let root = lab.path("data");
    let cfg = client_config(&lab, Some("alice"), false);
    let carried = |srv: &Server| srv.metric("lakegate_recv_carried_total", "");
    let full = |srv: &Server| srv.metric("lakegate_recv_carry_full_total", "");

    // 1. Handshakes paused inside the ClientHello's record.
    let c0 = carried(&srv);
    let mut paused = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let p = TlsClient::connect_paused(srv.port, cfg.clone(), HELLO_FIRST)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        paused.push(p);
    }
    assert!(
        eventually(Duration::from_secs(10), || carried(&srv) - c0
            >= CONNS as f64),
        "{} of {CONNS} paused ClientHellos were carried",
        carried(&srv) - c0
    );
    assert_eq!(full(&srv), 0.0, "40-byte carries exhausted the budget");
    let mut clients: Vec<TlsClient> = paused
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.finish().unwrap_or_else(|e| panic!("handshake {i}: {e}")))
        .collect();

    // 2. Requests paused 64 bytes before the end of their one record.
    let bodies: Vec<Vec<u8>> = (0..CONNS).map(|i| pseudo_random(BODY, i as u64)).collect();
    let mut rests = Vec::with_capacity(CONNS);
    let c1 = carried(&srv);
    for (i, c) in clients.iter().enumerate() {
        let mut req =
            format!("PUT /datasets/p{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n")
                .into_bytes();
        req.extend_from_slice(&bodies[i]);
        let wire = c.seal(&req);
        assert!(
            wire.len() < 16 * 1024,
            "one record, read whole by one ring buffer"
        );
        let cut = wire.len() - 64;
        c.send_raw(&wire[..cut]).unwrap();
        rests.push(wire[cut..].to_vec());
    }
    assert!(
        eventually(Duration::from_secs(20), || {
            carried(&srv) - c1 + full(&srv) >= CONNS as f64
        }),
        "paused requests: {} carried, {} kept their buffer, of {CONNS}",
        carried(&srv) - c1,
        full(&srv)
    );
    let (kept, took) = (carried(&srv) - c1, full(&srv));
    eprintln!("{CONNS} paused requests: {kept} carried, {took} kept their buffer (budget spent)");
    assert!(kept > 0.0, "no paused request was carried");
    assert!(
        took > 0.0,
        "17.9 MB of partial records never reached the 16 MiB budget"
    );

    // 3. The rest arrives: every record is whole again, every object byte-exact.
    for (c, rest) in clients.iter().zip(&rests) {
        c.send_raw(rest).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let (st, h, _) = read_response(&mut c.plain_reader(), false)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(st, 201, "connection {i}: {h:?}");
    }
    for (i, body) in bodies.iter().enumerate() {
        let got = std::fs::read(root.join(format!("datasets/p{i}"))).unwrap();
        assert!(&got == body, "object p{i} differs");
    }
    let log = srv.log_settled();
    assert!(!log.contains("panicked"), "{log}");
}

/// Clients no one has authenticated carry from a budget of their own (4 MiB per
/// worker): 300 connections that each send 16,000 bytes of a ClientHello record and stop
/// spend it, and a certified client that pauses mid-record is still carried.
#[test]
fn unauthenticated_handshakes_cannot_spend_the_established_carry_budget() {
    use std::io::Write as _;
    const CONNS: usize = 300;
    const FIRST: usize = 16_000;
    let (lab, srv) = store_for(CONNS);
    let root = lab.path("data");
    let cfg = client_config(&lab, Some("alice"), false);
    // Connected first, so its handshake is not the one waiting for budget.
    let alice = TlsClient::connect(srv.port, cfg).unwrap();
    let carried = |srv: &Server| srv.metric("lakegate_recv_carried_total", "");
    let full = |srv: &Server| srv.metric("lakegate_recv_carry_full_total", "");
    let (c0, f0) = (carried(&srv), full(&srv));
    // A handshake record announcing 16,384 bytes, cut at 16,000.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc, 0x03, 0x03,
    ];
    hello.resize(FIRST, 0x5a);
    let mut strangers = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.port))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(&hello).unwrap();
        strangers.push(s);
    }
    assert!(
        eventually(Duration::from_secs(20), || {
            carried(&srv) - c0 + full(&srv) - f0 >= CONNS as f64
        }),
        "{} carried, {} kept their buffer, of {CONNS}",
        carried(&srv) - c0,
        full(&srv) - f0
    );
    let (kept, took) = (carried(&srv) - c0, full(&srv) - f0);
    eprintln!("{CONNS} paused ClientHellos: {kept} carried, {took} kept their buffer");
    assert!(
        took > 0.0,
        "4.8 MB of paused handshakes fit a 4 MiB budget?"
    );
    assert!(
        kept * FIRST as f64 <= 4.0 * 1024.0 * 1024.0,
        "over the handshake budget"
    );

    // The certified client pauses inside its request's record: still carried.
    let c1 = carried(&srv);
    let body = pseudo_random(10_000, 3);
    let mut req = b"PUT /datasets/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    let wire = alice.seal(&req);
    let cut = wire.len() - 64;
    alice.send_raw(&wire[..cut]).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || carried(&srv) - c1 >= 1.0),
        "the certified client's pause was not carried (budget spent by strangers?)"
    );
    assert_eq!(
        full(&srv) - f0,
        took,
        "the certified client fell back to its buffer"
    );
    alice.send_raw(&wire[cut..]).unwrap();
    let (st, h, _) = read_response(&mut alice.plain_reader(), false).unwrap();
    assert_eq!(st, 201, "{h:?}");
    assert!(std::fs::read(root.join("datasets/a")).unwrap() == body);
    drop(strangers);
}

/// Raise this process's soft limit on open files to `want` (at most the hard limit).
fn raise_open_files(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer,
    // which lives on this stack frame for both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= want,
        "this test needs {want} open files; the hard limit is {}",
        lim.rlim_max
    );
}

/// A store appliance (one `datasets` bucket) that takes `conns` connections at once.
fn store_for(conns: usize) -> (Lab, Server) {
    raise_open_files(4 * conns as u64);
    let lab = Lab::new();
    let root = lab.path("data");
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    let srv = Server::start(
        &lab,
        "max_connections = 5000",
        &format!("kind = \"store\"\nroot = \"{}\"", root.display()),
    );
    (lab, srv)
}
