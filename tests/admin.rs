//! The admin endpoint end to end: probes answered while slow clients hold connections,
//! the connection limit and the head deadline, the bearer token on `POST /reload`
//! (re-read on reload), browser requests refused, and `lakegate check` on the token file.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const REALM: &str = "Bearer realm=\"lakegate-admin\"";

fn start(lab: &Lab) -> (Server, Upstream) {
    let up = Upstream::tcp(None);
    let srv = Server::forward(lab, &up.addr, "", "");
    (srv, up)
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.2).into_owned()
}

fn reloads(srv: &Server) -> (f64, f64) {
    (
        srv.metric("lakegate_config_reloads_total", "result=\"ok\""),
        srv.metric("lakegate_config_reloads_total", "result=\"failed\""),
    )
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).unwrap()
}

#[test]
fn probes_answer_within_100_ms_while_50_slow_clients_hold_connections() {
    let lab = Lab::new();
    let (srv, _up) = start(&lab);

    let idle: Vec<TcpStream> = (0..25).map(|_| connect(srv.admin)).collect();
    let mut tricklers: Vec<TcpStream> = (0..25).map(|_| connect(srv.admin)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let trickle = std::thread::spawn(move || {
        // A head that never completes: one byte per client every 200 ms.
        let mut head = b"GET /metrics HTTP/1.1\r\nx-slow: ".to_vec();
        head.resize(4096, b'a');
        let mut i = 0;
        while !stop2.load(Ordering::Relaxed) {
            for s in &mut tricklers {
                let _ = s.write_all(&head[i % head.len()..][..1]);
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        tricklers
    });
    // Every slow client has connected and the tricklers have started.
    std::thread::sleep(Duration::from_millis(500));

    let mut max = Duration::ZERO;
    for _ in 0..20 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let t = Instant::now();
            let r = admin_call(srv.admin, "GET", path, &[]);
            let took = t.elapsed();
            assert_eq!(r.0, 200, "{path}: {}", body(&r));
            max = max.max(took);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let tricklers = trickle.join().unwrap();
    println!("60 probes beside 50 slow admin clients: max latency {max:?}");
    assert!(
        max < Duration::from_millis(100),
        "max probe latency {max:?}"
    );
    // The probes were all answered; none of the slow clients was.
    let m = srv.metrics();
    for ep in ["healthz", "readyz"] {
        let n = metric_value(
            &m,
            "lakegate_admin_requests_total",
            &format!("endpoint=\"{ep}\",status=\"200\""),
        );
        assert!(n >= 20.0, "{ep}: {n}\n{m}");
    }
    assert_eq!(
        metric_value(&m, "lakegate_admin_connections_dropped_total", ""),
        0.0,
        "{m}"
    );
    drop((idle, tricklers));
}

#[test]
fn a_silent_or_trickling_client_is_closed_at_the_head_deadline() {
    let lab = Lab::new();
    let (srv, _up) = start(&lab);

    let t = Instant::now();
    let trickler = {
        let mut s = connect(srv.admin);
        std::thread::spawn(move || {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut b = [0u8; 64];
            loop {
                let _ = s.write_all(b"G");
                match s.read(&mut b) {
                    Ok(0) => return t.elapsed(),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Ok(_) | Err(_) => return t.elapsed(),
                }
                assert!(t.elapsed() < Duration::from_secs(10), "never closed");
            }
        })
    };
    let mut silent = connect(srv.admin);
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 64];
    let got = silent.read(&mut b);
    let silent_closed = t.elapsed();
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    let trickler_closed = trickler.join().unwrap();
    println!("closed after {silent_closed:?} (silent), {trickler_closed:?} (trickling)");
    for took in [silent_closed, trickler_closed] {
        assert!(
            took > Duration::from_millis(4500) && took < Duration::from_millis(6500),
            "{took:?}"
        );
    }
    assert!(eventually(|| srv.metric(
        "lakegate_admin_connections_dropped_total",
        "reason=\"head_timeout\""
    ) == 2.0));
    assert_eq!(admin_call(srv.admin, "GET", "/healthz", &[]).0, 200);
}

#[test]
fn over_the_connection_limit_new_connections_are_closed_and_counted() {
    let lab = Lab::new();
    let (srv, _up) = start(&lab);
    let held: Vec<TcpStream> = (0..256).map(|_| connect(srv.admin)).collect();
    // The 257th is accepted and closed at once.
    let mut extra = connect(srv.admin);
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let t = Instant::now();
    let mut b = [0u8; 16];
    let got = extra.read(&mut b);
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(held);
    // Slots free themselves as those clients go.
    assert!(eventually(
        || http_get(srv.admin, "/healthz").is_ok_and(|r| r.0 == 200)
    ));
    assert!(
        srv.metric(
            "lakegate_admin_connections_dropped_total",
            "reason=\"over_limit\""
        ) >= 1.0
    );
    assert!(srv
        .log_line_with(&["admin connection limit reached"])
        .is_some());
}

#[test]
fn reload_needs_the_token_and_tells_the_unauthenticated_nothing() {
    let lab = Lab::new();
    let (srv, _up) = start(&lab);
    let token = lab.admin_token();
    let auth = format!("authorization: Bearer {token}");

    // A config that fails to load: only the token holder learns why.
    let cfg = lab.path(&format!("lakegate-{}.toml", srv.port));
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        good.replace("key = \"server.key\"", "key = \"missing.key\""),
    )
    .unwrap();

    let r = admin_call(srv.admin, "POST", "/reload", &[]);
    assert_eq!(r.0, 401, "{}", body(&r));
    assert_eq!(header(&r.1, "www-authenticate"), Some(REALM));
    let wrong = format!("authorization: Bearer {}", random_token());
    let no_scheme = format!("authorization: {token}");
    for extra in [
        vec![wrong.as_str()],
        vec!["authorization: Bearer"],
        vec!["authorization: Basic YWRtaW46YWRtaW4="],
        vec![no_scheme.as_str()],
        // Twice, one right: ambiguous, so refused.
        vec![wrong.as_str(), auth.as_str()],
    ] {
        let r = admin_call(srv.admin, "POST", "/reload", &extra);
        assert_eq!(r.0, 401, "{extra:?}: {}", body(&r));
        assert_eq!(header(&r.1, "www-authenticate"), Some(REALM));
        assert!(
            !body(&r).contains("missing.key") && !body(&r).contains("tls.key"),
            "{}",
            body(&r)
        );
    }
    // Nothing was even tried.
    assert_eq!(reloads(&srv), (0.0, 0.0));
    assert!(!srv.log_settled().contains("reload failed"));
    assert!(srv
        .log_line_with(&["admin request refused", "Unauthorized"])
        .is_some());

    let r = admin_call(srv.admin, "POST", "/reload", &[&auth]);
    assert_eq!(r.0, 500, "{}", body(&r));
    assert!(body(&r).contains("tls.key"), "{}", body(&r));
    assert_eq!(reloads(&srv), (0.0, 1.0));

    std::fs::write(&cfg, &good).unwrap();
    let r = admin_call(srv.admin, "POST", "/reload", &[&auth]);
    assert_eq!((r.0, body(&r).as_str()), (200, "reloaded\n"));
    assert_eq!(reloads(&srv), (1.0, 1.0));
    assert!(srv
        .log_line_with(&["configuration reloaded", "POST /reload from 127.0.0.1"])
        .is_some());

    // Rotation: the token file is re-read by every reload.
    let new = random_token();
    lab.write_admin_token(&new);
    let r = admin_call(srv.admin, "POST", "/reload", &[&auth]);
    assert_eq!(r.0, 200, "{}", body(&r));
    assert_eq!(admin_call(srv.admin, "POST", "/reload", &[&auth]).0, 401);
    let new_auth = format!("authorization: Bearer {new}");
    assert_eq!(
        admin_call(srv.admin, "POST", "/reload", &[&new_auth]).0,
        200
    );
    assert_eq!(reloads(&srv), (3.0, 1.0));

    let m = srv.metrics();
    assert_eq!(
        metric_value(
            &m,
            "lakegate_admin_requests_total",
            "endpoint=\"reload\",status=\"401\""
        ),
        7.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "lakegate_admin_requests_total",
            "endpoint=\"reload\",status=\"200\""
        ),
        3.0,
        "{m}"
    );
}

#[test]
fn browsers_are_refused_on_reload_even_with_the_token() {
    let lab = Lab::new();
    let (srv, _up) = start(&lab);
    let auth = format!("authorization: Bearer {}", lab.admin_token());
    for browser in [
        "origin: http://evil.example",
        "sec-fetch-site: cross-site",
        "sec-fetch-site: same-site",
    ] {
        let r = admin_call(srv.admin, "POST", "/reload", &[&auth, browser]);
        assert_eq!(r.0, 403, "{browser}: {}", body(&r));
        assert!(body(&r).contains("browsers"), "{}", body(&r));
    }
    assert_eq!(reloads(&srv), (0.0, 0.0));
    // What curl sends is fine.
    let r = admin_call(
        srv.admin,
        "POST",
        "/reload",
        &[&auth, "sec-fetch-site: none"],
    );
    assert_eq!(r.0, 200, "{}", body(&r));
    // Reading stays open to anyone, browsers included.
    let r = admin_call(
        srv.admin,
        "GET",
        "/metrics",
        &["origin: http://grafana.example"],
    );
    assert_eq!(r.0, 200);
}

#[test]
fn read_only_endpoints_take_get_and_head_only_and_heads_are_bounded() {
    let lab = Lab::new();
    let (srv, _up) = start(&lab);
    let r = admin_call(srv.admin, "HEAD", "/healthz", &[]);
    assert_eq!((r.0, r.2.len()), (200, 0));
    assert_eq!(header(&r.1, "content-length"), Some("3"));
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = admin_call(srv.admin, "POST", path, &[]);
        assert_eq!(r.0, 405, "{path}");
        assert_eq!(header(&r.1, "allow"), Some("GET, HEAD"));
    }
    let r = admin_call(srv.admin, "GET", "/reload", &[]);
    assert_eq!((r.0, header(&r.1, "allow")), (405, Some("POST")));
    assert_eq!(admin_call(srv.admin, "GET", "/nope", &[]).0, 404);
    assert_eq!(admin_call(srv.admin, "DELETE", "/", &[]).0, 404);

    let pad = format!("x-pad: {}", "a".repeat(9000));
    let r = admin_call(srv.admin, "GET", "/healthz", &[&pad]);
    assert_eq!(r.0, 431, "{}", body(&r));
    let mut s = connect(srv.admin);
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().0, 400);
}

#[test]
fn without_a_token_file_reload_is_refused_and_sighup_still_reloads() {
    let lab = Lab::new();
    let up = Upstream::tcp(None);
    let (port, admin) = (free_port(), free_port());
    let cfg = lab.config(
        port,
        admin,
        "",
        &format!("kind = \"forward\"\nupstream = \"{}\"", up.addr),
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("token_file = \"admin.token\"\n", "")).unwrap();
    let srv = Server::spawn_config(&lab, port, admin, &cfg);

    let auth = format!("authorization: Bearer {}", lab.admin_token());
    for extra in [vec![], vec![auth.as_str()]] {
        let r = admin_call(srv.admin, "POST", "/reload", &extra);
        assert_eq!(r.0, 403, "{}", body(&r));
        assert!(body(&r).contains("[admin] token_file"), "{}", body(&r));
        assert!(body(&r).contains("SIGHUP"), "{}", body(&r));
    }
    assert_eq!(reloads(&srv), (0.0, 0.0));
    srv.signal("HUP");
    assert!(eventually(|| reloads(&srv) == (1.0, 0.0)));
}

#[test]
fn check_and_serve_refuse_a_token_file_others_can_read() {
    let lab = Lab::new();
    let (port, admin) = (free_port(), free_port());
    let cfg: PathBuf = lab.config(
        port,
        admin,
        "",
        "kind = \"forward\"\nupstream = \"127.0.0.1:9\"",
    );
    let token_file = lab.path("admin.token");
    let token = lab.admin_token();

    chmod(&token_file, 0o644);
    let (code, _, err) = check_config(&cfg);
    assert_eq!(code, 1, "{err}");
    for needle in [
        &cfg.display().to_string(),
        "admin.token_file",
        &token_file.display().to_string(),
        "mode 0644",
        "expected 0600",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // serve refuses it the same way, before binding anything.
    let out = Command::new(bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode 0644"));

    chmod(&token_file, 0o600);
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("POST /reload needs the bearer token in")
            && out.contains(&token_file.display().to_string()),
        "{out}"
    );
    assert!(!out.contains(&token) && !err.contains(&token));

    lab.write_admin_token("too-short");
    let (code, _, err) = check_config(&cfg);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("admin.token_file") && err.contains("at least 32 characters"),
        "{err}"
    );

    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("token_file = \"admin.token\"\n", "")).unwrap();
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("POST /reload disabled"), "{out}");
}

fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}
