//! The admin HTTP listener: /healthz, /readyz and /metrics on its own thread, off the
//! worker cores, with plain blocking sockets (one request at a time is plenty for a
//! scraper and a load balancer's health check).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::reload::Reloader;
use crate::engine::shared::Shared;

/// Serve admin requests forever.
pub fn run(listener: TcpListener, shared: Arc<Shared>, reloader: Arc<Reloader>) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        handle(&mut s, &shared, &reloader);
    }
}

fn handle(s: &mut TcpStream, shared: &Shared, reloader: &Reloader) {
    let mut buf = [0u8; 8192];
    let mut used = 0;
    let (method, path) = loop {
        let n = match s.read(&mut buf[used..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        used += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..used]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                )
            }
            Ok(httparse::Status::Partial) if used < buf.len() => continue,
            _ => {
                respond(s, 400, "text/plain", "bad request\n");
                return;
            }
        }
    };
    let path = path.split('?').next().unwrap_or("");
    match (method.as_str(), path) {
        ("GET", "/healthz") => respond(s, 200, "text/plain", "ok\n"),
        ("GET", "/readyz") => {
            if shared.draining.load(Ordering::Relaxed) {
                respond(s, 503, "text/plain", "draining\n")
            } else if shared.ready_workers.load(Ordering::Relaxed) < shared.workers {
                respond(s, 503, "text/plain", "starting\n")
            } else {
                respond(s, 200, "text/plain", "ready\n")
            }
        }
        ("GET", "/metrics") => respond(
            s,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &shared.telemetry.render(),
        ),
        // Like Prometheus's /-/reload: the admin listener is for the host's operators
        // (loopback or a management network), so it needs no authentication of its own.
        ("POST", "/reload") => match reloader.reload("POST /reload") {
            Ok(()) => respond(s, 200, "text/plain", "reloaded\n"),
            Err(e) => respond(s, 500, "text/plain", &format!("reload failed: {e}\n")),
        },
        (_, "/healthz" | "/readyz" | "/metrics" | "/reload") => {
            respond(s, 405, "text/plain", "method not allowed\n")
        }
        _ => respond(s, 404, "text/plain", "not found\n"),
    }
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
}
