//! End-to-end, store backend, one worker: the worker's receive buffer ring (64 buffers)
//! runs empty when 2,000 connections that wait for their next request all get one at
//! once; every receive that met the empty ring (ENOBUFS) waits for a buffer to come
//! back, re-arms, and is counted, and every request is answered, byte-exact.

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
    let log = srv.log_text();
    assert!(!log.contains("panicked"), "{log}");
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
