//! End-to-end: `lakegate load` against a real 1-worker lakegate with the store backend.
//! Every figure the load generator reports is checked against the server's own
//! Prometheus counters (the server counts TLS bytes as they come off the socket, the
//! client counts TLS bytes as they go onto it, so the two must agree to the byte).

mod common;

use std::process::Command;

use common::*;

const KIB: u64 = 1024;
/// Plaintext bytes per TLS record as rustls cuts them.
const RECORD: u64 = 16 * KIB;
/// Per-record cost on the wire: 5-byte header, 1-byte inner content type, 16-byte tag.
const RECORD_OVERHEAD: u64 = 22;
/// A client's handshake flight (ClientHello with key shares, Certificate with the lab's
/// EC chain, CertificateVerify, Finished) is well under this.
const HANDSHAKE_MAX: u64 = 4 * KIB;
/// Our request heads ("PUT /datasets/load/0-123 HTTP/1.1", Host, Content-Length).
const HEAD_MAX: u64 = 128;

fn store_server(lab: &Lab) -> Server {
    let root = lab.path("data");
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    Server::start(
        lab,
        "",
        &format!(
            "kind = \"store\"\nroot = \"{}\"\nfsync = \"never\"",
            root.display()
        ),
    )
}

/// Run `lakegate load` as alice; returns (exit code, stdout, stderr, parsed JSON).
fn load(lab: &Lab, port: u16, extra: &[&str]) -> (i32, String, String, Option<serde_json::Value>) {
    let json = lab.path(&format!("load-{}.json", free_port()));
    let (cert, key) = lab.client("alice");
    let out = Command::new(bin())
        .args(["load", "--target", &format!("127.0.0.1:{port}")])
        .args(["--server-name", "localhost", "--no-progress"])
        .arg("--ca")
        .arg(lab.path("ca.crt"))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--json")
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    let parsed = std::fs::read_to_string(&json)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("load JSON parses"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        parsed,
    )
}

fn n(v: &serde_json::Value, path: &str) -> u64 {
    let mut x = v;
    for p in path.split('.') {
        x = &x[p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// The server counters a run is checked against.
#[derive(Debug, Clone, Copy)]
struct Counters {
    put201: f64,
    get200: f64,
    rx: f64,
    tx: f64,
    hs_ok: f64,
    resumed: f64,
}

fn counters(srv: &Server) -> Counters {
    let m = srv.metrics();
    let req = |method: &str, status: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("lakegate_requests_total{")
                    && l.contains(&format!("method=\"{method}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Counters {
        put201: req("PUT", "201"),
        get200: req("GET", "200"),
        rx: metric_value(&m, "lakegate_bytes_received_total", ""),
        tx: metric_value(&m, "lakegate_bytes_sent_total", ""),
        hs_ok: metric_value(&m, "lakegate_handshakes_total", "result=\"ok\""),
        resumed: metric_value(&m, "lakegate_tls_sessions_total", "resumed=\"true\""),
    }
}

fn delta(a: Counters, b: Counters) -> Counters {
    Counters {
        put201: b.put201 - a.put201,
        get200: b.get200 - a.get200,
        rx: b.rx - a.rx,
        tx: b.tx - a.tx,
        hs_ok: b.hs_ok - a.hs_ok,
        resumed: b.resumed - a.resumed,
    }
}

/// Wire bytes the client may spend beyond the payload: handshakes, close_notify, one
/// head record per request, and the record overhead of each body.
fn overhead_bound(handshakes: u64, requests: u64, object: u64) -> u64 {
    let records_per_body = object.div_ceil(RECORD);
    handshakes * (HANDSHAKE_MAX + 24)
        + requests * (HEAD_MAX + RECORD_OVERHEAD + records_per_body * RECORD_OVERHEAD)
}

#[test]
fn upload_then_download_agree_with_server_counters() {
    let lab = Lab::new();
    let srv = store_server(&lab);
    let object = 256 * KIB;

    // Upload: PUT 256 KiB objects on 2 keep-alive connections for 2 s.
    let before = counters(&srv);
    let (code, stdout, stderr, j) = load(
        &lab,
        srv.port,
        &[
            "--mode",
            "upload",
            "--duration",
            "2s",
            "--object-size",
            "256KiB",
            "--connections",
            "2",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let j = j.expect("JSON written");
    let d = delta(before, counters(&srv));
    assert!(stdout.contains("upload (store)"), "{stdout}");
    assert_eq!(j["mode"], "upload");
    assert_eq!(n(&j, "errors_total"), 0, "{j:#}");
    let reqs = n(&j, "requests");
    assert!(reqs > 0, "{j:#}");
    assert_eq!(n(&j, "ops"), reqs);
    assert_eq!(n(&j, "status.201"), reqs);
    assert_eq!(
        reqs as f64, d.put201,
        "JSON requests vs server PUT 201: {d:?}"
    );
    assert_eq!(n(&j, "bytes_sent"), reqs * object);
    let wire = n(&j, "wire_bytes_sent");
    assert!(wire >= reqs * object);
    // The server counts what it reads off the socket; the client, what it wrote.
    assert_eq!(
        wire as f64, d.rx,
        "client wire bytes vs server bytes_received"
    );
    let hs = n(&j, "handshakes.full") + n(&j, "handshakes.resumed");
    assert_eq!(hs, 2, "one handshake per keep-alive connection: {j:#}");
    assert!(
        wire - reqs * object <= overhead_bound(hs, reqs, object),
        "overhead {} over the bound {}",
        wire - reqs * object,
        overhead_bound(hs, reqs, object)
    );
    assert_eq!(n(&j, "latency_us.request.count"), reqs);
    assert_eq!(n(&j, "latency_us.ttfb.count"), reqs);
    assert!(n(&j, "latency_us.request.p50") > 0);
    assert!(n(&j, "latency_us.request.max") >= n(&j, "latency_us.request.p99_9"));
    assert!(j["client_cpu"]["total_s"].as_f64().unwrap() > 0.0);

    // Download: one PUT per connection at setup, then GETs of it.
    let before = counters(&srv);
    let (code, stdout, stderr, j) = load(
        &lab,
        srv.port,
        &[
            "--mode",
            "download",
            "--duration",
            "2s",
            "--object-size",
            "256KiB",
            "--connections",
            "2",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let j = j.expect("JSON written");
    let d = delta(before, counters(&srv));
    assert_eq!(n(&j, "errors_total"), 0, "{j:#}");
    let reqs = n(&j, "requests");
    assert!(reqs > 0);
    assert_eq!(n(&j, "status.200"), reqs);
    assert_eq!(
        reqs as f64, d.get200,
        "JSON requests vs server GET 200: {d:?}"
    );
    assert_eq!(n(&j, "setup_requests") as f64, d.put201);
    assert_eq!(n(&j, "setup_requests"), 2);
    assert_eq!(n(&j, "bytes_received"), reqs * object);
    assert_eq!(n(&j, "wire_bytes_sent") as f64, d.rx);
    // The server's close_notify is counted once its write completes, which may be a
    // moment after the client has read it: allow that one 24-byte record per connection.
    let wire_rx = n(&j, "wire_bytes_received") as f64;
    assert!(
        wire_rx <= d.tx && d.tx - wire_rx <= 2.0 * 24.0,
        "client wire rx {wire_rx} vs server tx {}",
        d.tx
    );
    assert_eq!(n(&j, "latency_us.ttfb.count"), reqs);
}

#[test]
fn handshakes_full_and_resumed_agree_with_server_counters() {
    let lab = Lab::new();
    let srv = store_server(&lab);
    for resume in [false, true] {
        let before = counters(&srv);
        let mut extra = vec![
            "--mode",
            "handshake",
            "--duration",
            "2s",
            "--connections",
            "2",
        ];
        if resume {
            extra.push("--resume");
        }
        let (code, stdout, stderr, j) = load(&lab, srv.port, &extra);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let j = j.expect("JSON written");
        let d = delta(before, counters(&srv));
        assert_eq!(n(&j, "errors_total"), 0, "{j:#}");
        let ops = n(&j, "ops");
        let (full, resumed) = (n(&j, "handshakes.full"), n(&j, "handshakes.resumed"));
        assert!(ops > 10, "{j:#}");
        assert_eq!(full + resumed, ops);
        assert_eq!(ops as f64, d.hs_ok, "handshake ops vs server ok: {d:?}");
        assert_eq!(resumed as f64, d.resumed, "resumed vs server: {d:?}");
        if resume {
            assert!(resumed > 0, "{j:#}");
            // Only each thread's first connection needs a full handshake.
            assert_eq!(full, 2, "{j:#}");
        } else {
            assert_eq!(resumed, 0, "{j:#}");
        }
        assert_eq!(n(&j, "latency_us.handshake.count"), ops);
        assert_eq!(n(&j, "wire_bytes_sent") as f64, d.rx);
    }

    // Handshake plus one GET each: the requests are counted by status.
    let before = counters(&srv);
    let (code, stdout, stderr, j) = load(
        &lab,
        srv.port,
        &[
            "--mode",
            "handshake",
            "--request",
            "--requests",
            "20",
            "--object-size",
            "1KiB",
            "--connections",
            "2",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let j = j.unwrap();
    let d = delta(before, counters(&srv));
    assert_eq!(n(&j, "ops"), 20, "{j:#}");
    assert_eq!(n(&j, "status.200"), 20);
    assert_eq!(d.get200, 20.0);
    assert_eq!(d.put201, n(&j, "setup_requests") as f64);
    assert_eq!(n(&j, "bytes_received"), 20 * KIB);
}

#[test]
fn bad_input_exits_1_and_total_failure_exits_2() {
    let lab = Lab::new();
    // A missing key file: exit 1, and the error names it.
    let out = Command::new(bin())
        .args([
            "load",
            "--target",
            "127.0.0.1:1",
            "--ca",
            lab.path("ca.crt").to_str().unwrap(),
            "--cert",
            lab.path("alice.crt").to_str().unwrap(),
            "--key",
            "/nonexistent/alice.key",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/alice.key"), "{err}");

    // Nothing listens: every op fails, counted as connect errors, exit 2.
    let port = free_port();
    let (code, stdout, _, j) = load(
        &lab,
        port,
        &["--mode", "upload", "--duration", "1s", "--connections", "1"],
    );
    assert_eq!(code, 2, "{stdout}");
    let j = j.expect("the report is written even when everything failed");
    assert_eq!(n(&j, "ops"), 0);
    assert!(n(&j, "errors.connect") > 0, "{j:#}");
    assert!(stdout.contains("connect"), "{stdout}");

    // Eve's CA is not trusted by the server: the handshake failure is counted by kind.
    let srv = store_server(&lab);
    let (cert, key) = lab.client("eve");
    let out = Command::new(bin())
        .args([
            "load",
            "--target",
            &format!("127.0.0.1:{}", srv.port),
            "--server-name",
            "localhost",
            "--ca",
            lab.path("ca.crt").to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--requests",
            "3",
            "--connections",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("tls_handshake:"), "{stdout}");
}
