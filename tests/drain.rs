//! End-to-end, store backend, one worker: long store work (hashing an object that has
//! no stored digest) runs off the worker's loop, so small requests on the same worker
//! keep being served; and SIGTERM lets a request in flight finish within
//! `drain_timeout`, refuses new connections, says not ready, and cuts (and counts)
//! only what is still open at the deadline, leaving no partial object.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn backend(root: &Path) -> String {
    format!(
        "kind = \"store\"\nroot = \"{}\"\nfsync = \"always\"",
        root.display()
    )
}

fn curl(lab: &Lab) -> Command {
    let (cert, key) = lab.client("alice");
    let mut c = Command::new("curl");
    c.args(["-sS", "--cert", cert.to_str().unwrap()])
        .args(["--key", key.to_str().unwrap()])
        .args(["--cacert", lab.path("ca.crt").to_str().unwrap()])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn small_gets_are_served_while_a_head_hashes_a_large_unhashed_object() {
    let lab = Lab::new();
    let root = lab.path("data");
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    // Written behind the appliance's back: no stored digest, so the HEAD must read and
    // hash all 1 GiB (sparse: no disk needed, the hash still reads every byte).
    std::fs::File::create(root.join("datasets/big"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    std::fs::write(root.join("datasets/small"), b"hello").unwrap();
    let srv = Server::start(&lab, "", &backend(&root));
    let mut c = TlsClient::connect(srv.port, client_config(&lab, Some("alice"), false)).unwrap();
    let get = b"GET /datasets/small HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(c.request(get).0, 200);

    let url = format!("https://127.0.0.1:{}/datasets/big", srv.port);
    let head_started = Instant::now();
    let head = curl(&lab).args(["-I", &url]).spawn().unwrap();
    let head = std::thread::spawn(move || {
        let o = head.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            Instant::now(),
        )
    });
    let mut worst = Duration::ZERO;
    let mut served = 0;
    while !head.is_finished() {
        let t = Instant::now();
        let (status, _, body) = c.request(get);
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
        worst = worst.max(t.elapsed());
        served += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, head_done) = head.join().unwrap();
    let hashing = head_done - head_started;
    assert_eq!(code, "200", "{}", srv.log_plain());
    // On the worker's loop the hash held every GET for its whole duration (over a
    // second here); off it, a GET waits for the CPU at worst.
    assert!(
        worst < Duration::from_millis(250),
        "a small GET took {worst:?} while a HEAD hashed for {hashing:?} ({served} served)"
    );
    eprintln!("{served} GETs served during a {hashing:?} hash; slowest {worst:?}");
}

#[test]
fn sigterm_lets_an_upload_in_flight_finish_and_cuts_one_that_cannot() {
    let lab = Lab::new();
    let root = lab.path("data");
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = lab.config(port, admin, "", &backend(&root));
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("drain_timeout = \"20s\""));
    std::fs::write(
        &cfg,
        text.replace("drain_timeout = \"20s\"", "drain_timeout = \"5s\""),
    )
    .unwrap();
    let mut srv = Server::spawn_config(&lab, port, admin, &cfg);

    let body = lab.path("body");
    std::fs::write(&body, pseudo_random(3 << 20, 7)).unwrap();
    let upload = |key: &str, rate: &str| {
        curl(&lab)
            .args(["--limit-rate", rate, "-T", body.to_str().unwrap()])
            .arg(format!("https://127.0.0.1:{port}/datasets/{key}"))
            .spawn()
            .unwrap()
    };
    // 3 MiB at 1 MiB/s ends ~3 s in, inside the 5 s drain; at 256 KiB/s it would
    // need ~12 s.
    let fast = upload("fast", "1M");
    let slow = upload("slow", "256K");
    std::thread::sleep(Duration::from_millis(700));
    let term = Instant::now();
    srv.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));

    let ready = http_get(admin, "/readyz").map(|r| r.0).ok();
    assert_eq!(ready, Some(503), "readyz during the drain");
    let connect = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(
        connect.is_err(),
        "a new connection was accepted during the drain"
    );

    let fast = fast.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&fast.stdout), "201");
    assert_eq!(
        std::fs::read(root.join("datasets/fast")).unwrap(),
        std::fs::read(&body).unwrap()
    );
    let slow = slow.wait_with_output().unwrap();
    assert_ne!(String::from_utf8_lossy(&slow.stdout), "201");
    assert!(srv.wait_exit(Duration::from_secs(10)).success());
    let took = term.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "exit {took:?} after SIGTERM"
    );
    // Cut, counted, and nothing of it left: no object, no temporary.
    assert!(!root.join("datasets/slow").exists());
    let left: Vec<_> = std::fs::read_dir(root.join("datasets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".lakegate"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let cut = srv
        .log_line_with(&["drain deadline passed; cutting open connections"])
        .unwrap_or_else(|| srv.log_plain());
    assert!(cut.contains("open=1"), "{cut}");
}

/// Many requests at once for one object that has no stored digest: one hash job runs
/// for all of them (per worker), so they neither fill the blocking pool's queue (503
/// SlowDown) nor hash the same bytes hundreds of times.
#[test]
fn concurrent_heads_of_one_unhashed_object_share_one_hash() {
    const CONNS: usize = 300;
    let lab = Lab::new();
    let root = lab.path("data");
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    // Written behind the appliance's back, sparse: 256 MiB of zeroes to hash.
    std::fs::File::create(root.join("datasets/big"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let srv = Server::start(&lab, "max_connections = 1000", &backend(&root));
    let cfg = client_config(&lab, Some("alice"), false);
    let mut clients: Vec<TlsClient> = (0..CONNS)
        .map(|i| {
            TlsClient::connect(srv.port, cfg.clone())
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    let head = b"HEAD /datasets/big HTTP/1.1\r\nHost: x\r\n\r\n";
    for c in &clients {
        c.send(head).unwrap();
    }
    let want = format!("\"{}\"", sha256_hex(&vec![0u8; 256 << 20]));
    for (i, c) in clients.iter_mut().enumerate() {
        let (st, h, _) = read_response(&mut c.plain_reader(), true)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(st, 200, "connection {i}: {h:?}");
        assert_eq!(header(&h, "etag"), Some(want.as_str()), "connection {i}");
    }
    assert_eq!(
        srv.metric("lakegate_blocking_pool_rejected_total", ""),
        0.0,
        "the pool refused jobs"
    );
}
