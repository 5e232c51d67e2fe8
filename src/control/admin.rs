//! The admin HTTP endpoint: `/healthz`, `/readyz`, `/metrics` and `POST /reload`, on
//! its own threads, off the worker cores.
//!
//! Owns: the admin listener and its connections, the check of the bearer token that
//! guards mutating requests (`[admin] token_file`, see [`AdminToken`]), and the counters
//! of the endpoint's own traffic.
//! Must not touch the workers, their sockets or their rings: it reads shared state
//! (readiness, telemetry, the running generation) and asks the [`Reloader`] to reload.
//!
//! One mio poll loop (`lg-admin`) multiplexes every admin connection, so a client that
//! connects and sends nothing, or trickles its head a byte at a time, holds a slot and
//! nothing else: the load balancer's probe next to it is answered at once. Limits:
//! [`MAX_CONNECTIONS`] at once (beyond that, new ones are accepted and closed, and
//! counted); the whole request head within [`HEAD_DEADLINE`], else the connection is
//! closed; at most [`MAX_HEAD`] bytes of head (431); one request per connection. A
//! reload runs on a second thread (`lg-admin-reload`), so a slow one (a CRL on a slow
//! disk) does not stall the probes either.
//!
//! GET/HEAD on the three read-only endpoints need no credential (Prometheus and load
//! balancers scrape them as they are). `POST /reload` needs `Authorization: Bearer
//! <token>`, and is refused to anything that looks like a browser (an `Origin` header,
//! or `Sec-Fetch-Site` other than `none`/`same-origin`), so a web page cannot make an
//! operator's browser reload the appliance or read why a reload failed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::reload::Reloader;
use crate::authz::admin::AdminToken;
use crate::engine::shared::Shared;

/// Admin connections open at once; more are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The whole request head must arrive within this, counted from accept.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Largest request head (request line and headers); larger ones get 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time to write the response once the request is read (a reader that stops reading
/// must not keep its slot).
const RESPONSE_DEADLINE: Duration = Duration::from_secs(5);
/// After the response, the socket is half-closed and read until the client closes, so
/// unread request bytes do not turn our close into a reset that eats the response.
const LINGER: Duration = Duration::from_secs(2);
/// How long a reload may take before its caller is closed on unanswered.
const RELOAD_DEADLINE: Duration = Duration::from_secs(60);
/// After an accept error (EMFILE, ENOBUFS) the listener is retried this often: the
/// pending connection stays queued, so no new readiness edge would come for it.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Accepts per turn of the loop, so a flood of connections (each closed at once when
/// over the limit) cannot keep the loop from the connections it already has.
const ACCEPT_BATCH: usize = 64;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

/// The realm of the 401 challenge.
const CHALLENGE: &str = "Bearer realm=\"lakegate-admin\"";

// ---------------------------------------------------------------------------------------
// Requests and what they get: pure, no sockets
// ---------------------------------------------------------------------------------------

/// What the admin endpoint reads from a request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    /// The path without its query.
    path: String,
    /// The Authorization header, if exactly one was sent.
    authorization: Option<Vec<u8>>,
    /// More than one Authorization header: ambiguous, so never admitted.
    authorization_repeated: bool,
    /// Sent by a browser on behalf of a page (see [`Request::from_browser`]).
    from_browser: bool,
}

/// What a request head turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Not all there yet.
    Partial,
    /// Over [`MAX_HEAD`] or too many headers.
    TooLarge,
    /// Not HTTP/1.x.
    Bad,
    Complete(Request),
}

fn parse_head(buf: &[u8]) -> Head {
    let within = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(within) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Head::TooLarge
        }
        Err(_) => return Head::Bad,
    }
    let path = req.path.unwrap_or("");
    let mut out = Request {
        method: req.method.unwrap_or("").to_owned(),
        path: path.split('?').next().unwrap_or("").to_owned(),
        authorization: None,
        authorization_repeated: false,
        from_browser: false,
    };
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("authorization") {
            out.authorization_repeated |= out.authorization.is_some();
            out.authorization = Some(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case("origin") {
            // Browsers send Origin on every cross-origin request and on same-origin
            // POSTs; this endpoint serves no pages, so no origin is its own.
            out.from_browser = true;
        } else if h.name.eq_ignore_ascii_case("sec-fetch-site") {
            let v = h.value.trim_ascii();
            out.from_browser |=
                !(v.eq_ignore_ascii_case(b"none") || v.eq_ignore_ascii_case(b"same-origin"));
        }
    }
    Head::Complete(out)
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// Where a request goes, once method, path and credential are judged.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    /// An admitted `POST /reload`.
    Reload,
    NotFound,
    /// 405 with this `Allow`.
    MethodNotAllowed(&'static str),
    /// 403: a mutating request from a browser.
    CrossOrigin,
    /// 403: no `[admin] token_file`, so nothing may mutate.
    ReloadDisabled,
    /// 401: the credential is missing or wrong.
    Unauthorized,
}

/// The endpoint label of the request counter: a fixed set, whatever the path.
fn endpoint(path: &str) -> &'static str {
    match path {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/reload" => "reload",
        _ => "other",
    }
}

fn route(req: &Request, token: Option<&AdminToken>) -> Route {
    let read_only = matches!(req.method.as_str(), "GET" | "HEAD");
    match req.path.as_str() {
        "/healthz" | "/readyz" | "/metrics" if !read_only => Route::MethodNotAllowed("GET, HEAD"),
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        "/reload" if req.method != "POST" => Route::MethodNotAllowed("POST"),
        // Before the credential: a page must not learn even whether its guess was right.
        "/reload" if req.from_browser => Route::CrossOrigin,
        "/reload" => {
            let Some(token) = token else {
                return Route::ReloadDisabled;
            };
            let presented = req.authorization.as_deref().and_then(bearer);
            match presented {
                Some(p) if !req.authorization_repeated && token.admits(p) => Route::Reload,
                _ => Route::Unauthorized,
            }
        }
        _ => Route::NotFound,
    }
}

/// A response, serialized whole: they are all small.
fn response(status: u16, ctype: &str, extra: &str, body: &str, head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\n{extra}connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text(status: u16, body: &str) -> (u16, Vec<u8>) {
    (status, response(status, TEXT, "", body, false))
}

/// The answer to a routed request (all but an admitted reload, which is answered when
/// the reload thread is done).
fn answer(route: &Route, head_only: bool, shared: &Shared) -> (u16, Vec<u8>) {
    let plain = |status: u16, body: &str| (status, response(status, TEXT, "", body, head_only));
    match route {
        Route::Healthz => plain(200, "ok\n"),
        Route::Readyz => {
            if shared.draining.load(Ordering::Relaxed) {
                plain(503, "draining\n")
            } else if shared.ready_workers.load(Ordering::Relaxed) < shared.workers {
                plain(503, "starting\n")
            } else {
                plain(200, "ready\n")
            }
        }
        Route::Metrics => (
            200,
            response(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                "",
                &shared.telemetry.render(),
                head_only,
            ),
        ),
        Route::NotFound => plain(404, "not found\n"),
        Route::MethodNotAllowed(allow) => (
            405,
            response(
                405,
                TEXT,
                &format!("allow: {allow}\r\n"),
                "method not allowed\n",
                head_only,
            ),
        ),
        Route::CrossOrigin => plain(
            403,
            "forbidden: mutating admin requests are not accepted from browsers (Origin or Sec-Fetch-Site present)\n",
        ),
        Route::ReloadDisabled => plain(
            403,
            "forbidden: POST /reload is disabled; set [admin] token_file to a file (mode 0600) holding a token to enable it, or reload with SIGHUP (systemctl reload lakegate)\n",
        ),
        Route::Unauthorized => (
            401,
            response(
                401,
                TEXT,
                &format!("www-authenticate: {CHALLENGE}\r\n"),
                "unauthorized: send Authorization: Bearer <the token in [admin] token_file>\n",
                head_only,
            ),
        ),
        // Not answered here; a 500 if it ever were, rather than a panic.
        Route::Reload => plain(500, "internal error\n"),
    }
}

// ---------------------------------------------------------------------------------------
// The shell: one poll loop over every admin connection
// ---------------------------------------------------------------------------------------

enum Phase {
    /// Reading the request head.
    Head,
    /// Waiting for the reload thread.
    Reloading,
    /// Writing the response.
    Respond,
    /// Response sent and write side closed: reading until the client closes.
    Linger,
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    phase: Phase,
    deadline: Instant,
    endpoint: &'static str,
}

/// What the loop does with a connection after driving it.
enum Step {
    Keep,
    Close,
    /// An admitted `POST /reload`: hand it to the reload thread.
    Reload,
}

impl Conn {
    /// Move the connection on as far as the socket allows (edge-triggered: until it
    /// would block).
    fn drive(&mut self, shared: &Shared) -> Step {
        let mut chunk = [0u8; 2048];
        loop {
            match self.phase {
                Phase::Head => {
                    let n = match self.stream.read(&mut chunk) {
                        Ok(0) => return Step::Close,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return Step::Close,
                    };
                    self.buf.extend_from_slice(&chunk[..n]);
                    match parse_head(&self.buf) {
                        Head::Partial => {}
                        Head::TooLarge => {
                            let body = format!("request head over {MAX_HEAD} bytes\n");
                            self.reply(shared, "other", text(431, &body));
                        }
                        Head::Bad => self.reply(shared, "other", text(400, "bad request\n")),
                        Head::Complete(req) => {
                            self.buf = Vec::new();
                            let token = shared.current.load().admin_token.clone();
                            let r = route(&req, token.as_deref());
                            let ep = endpoint(&req.path);
                            match r {
                                Route::Reload => {
                                    self.endpoint = ep;
                                    self.phase = Phase::Reloading;
                                    self.deadline = Instant::now() + RELOAD_DEADLINE;
                                    return Step::Reload;
                                }
                                Route::CrossOrigin
                                | Route::ReloadDisabled
                                | Route::Unauthorized => {
                                    tracing::warn!(peer = %self.peer, path = %req.path, refusal = ?r, "admin request refused");
                                }
                                _ => {}
                            }
                            let answered = answer(&r, req.method == "HEAD", shared);
                            self.reply(shared, ep, answered);
                        }
                    }
                }
                Phase::Reloading => return Step::Keep,
                Phase::Respond => match self.stream.write(&self.out[self.sent..]) {
                    Ok(n) => {
                        self.sent += n;
                        if self.sent >= self.out.len() {
                            let _ = self.stream.shutdown(Shutdown::Write);
                            self.out = Vec::new();
                            self.phase = Phase::Linger;
                            self.deadline = self.deadline.min(Instant::now() + LINGER);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                },
                Phase::Linger => match self.stream.read(&mut chunk) {
                    Ok(0) => return Step::Close,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                },
            }
        }
    }

    /// Queue `(status, bytes)` as the response and count it.
    fn reply(&mut self, shared: &Shared, endpoint: &'static str, (status, bytes): (u16, Vec<u8>)) {
        count(shared, |c| {
            *c.admin_requests.entry((endpoint, status)).or_default() += 1;
        });
        self.out = bytes;
        self.sent = 0;
        self.phase = Phase::Respond;
        self.deadline = Instant::now() + RESPONSE_DEADLINE;
    }
}

fn count(shared: &Shared, f: impl FnOnce(&mut crate::telemetry::Control)) {
    let mut c = shared
        .telemetry
        .control
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    f(&mut c);
}

/// Serve admin requests for the life of the process. Returns only if the poller
/// cannot be made or fails, which the caller logs.
pub fn run(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);

    // The reload thread: connection ids in, (id, result) out, then a wake-up.
    let (todo_tx, todo_rx) = crossbeam_channel::unbounded::<(usize, SocketAddr)>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, Result<(), String>)>();
    let w = waker.clone();
    std::thread::Builder::new()
        .name("lg-admin-reload".into())
        .spawn(move || {
            for (id, peer) in todo_rx {
                let result = reloader.reload(&format!("POST /reload from {peer}"));
                if done_tx.send((id, result)).is_err() || w.wake().is_err() {
                    break;
                }
            }
        })?;

    let mut events = Events::with_capacity(256);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_id = 0usize;
    // The listener is edge-triggered: after an accept error, or a full batch, nothing
    // tells us again about connections already queued, so the loop comes back itself.
    let mut retry_accept = false;
    let mut accept_more = false;
    let mut accept_failing = false;
    let mut at_limit = false;
    loop {
        let now = Instant::now();
        let mut timeout = conns
            .values()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min();
        if retry_accept {
            timeout = Some(timeout.map_or(ACCEPT_RETRY, |t| t.min(ACCEPT_RETRY)));
        }
        if accept_more {
            timeout = Some(Duration::ZERO);
        }
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }

        let retried = std::mem::take(&mut retry_accept);
        let mut accept = std::mem::take(&mut accept_more) || retried;
        let mut ready: Vec<usize> = Vec::new();
        for ev in events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                WAKER => {
                    for (id, result) in done_rx.try_iter() {
                        let Some(c) = conns.get_mut(&id) else {
                            continue;
                        };
                        let answered = match result {
                            Ok(()) => text(200, "reloaded\n"),
                            // The caller holds the token: the reason is theirs to read.
                            Err(e) => text(500, &format!("reload failed: {e}\n")),
                        };
                        c.reply(&shared, c.endpoint, answered);
                        ready.push(id);
                    }
                }
                Token(id) => ready.push(id),
            }
        }

        if accept {
            accept_more = true;
            for _ in 0..ACCEPT_BATCH {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        accept_failing = false;
                        if conns.len() >= MAX_CONNECTIONS {
                            drop(stream);
                            count(&shared, |ctl| ctl.admin_dropped[0] += 1);
                            if !at_limit {
                                at_limit = true;
                                tracing::warn!(
                                    limit = MAX_CONNECTIONS,
                                    "admin connection limit reached; closing new admin connections until some finish"
                                );
                            }
                            continue;
                        }
                        at_limit = false;
                        let id = next_id;
                        next_id = next_id.wrapping_add(1) % (usize::MAX - 1);
                        if poll
                            .registry()
                            .register(
                                &mut stream,
                                Token(id),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .is_err()
                        {
                            continue;
                        }
                        conns.insert(
                            id,
                            Conn {
                                stream,
                                peer,
                                buf: Vec::new(),
                                out: Vec::new(),
                                sent: 0,
                                phase: Phase::Head,
                                deadline: Instant::now() + HEAD_DEADLINE,
                                endpoint: "other",
                            },
                        );
                        ready.push(id);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        accept_failing = false;
                        accept_more = false;
                        break;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) => {}
                    Err(e) => {
                        if !accept_failing {
                            tracing::warn!(error = %e, "admin accept failed; retrying every 100 ms");
                        }
                        accept_failing = true;
                        retry_accept = true;
                        accept_more = false;
                        break;
                    }
                }
            }
        }

        for id in ready {
            let Some(c) = conns.get_mut(&id) else {
                continue;
            };
            let mut step = c.drive(&shared);
            if let Step::Reload = step {
                if todo_tx.send((id, c.peer)).is_err() {
                    c.reply(&shared, "reload", text(500, "reload unavailable\n"));
                    step = c.drive(&shared);
                }
            }
            if let Step::Close = step {
                close(&mut poll, &mut conns, id);
            }
        }

        // Deadlines: a head not in by now, a response not taken, a linger done.
        let now = Instant::now();
        let expired: Vec<usize> = conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(c) = conns.get(&id) {
                if matches!(c.phase, Phase::Head) {
                    count(&shared, |ctl| ctl.admin_dropped[1] += 1);
                    tracing::debug!(peer = %c.peer, "admin request head not complete in time; closing");
                }
            }
            close(&mut poll, &mut conns, id);
        }
    }
}

fn close(poll: &mut Poll, conns: &mut HashMap<usize, Conn>, id: usize) {
    if let Some(mut c) = conns.remove(&id) {
        let _ = poll.registry().deregister(&mut c.stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn req(head: &str) -> Request {
        match parse_head(head.as_bytes()) {
            Head::Complete(r) => r,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    fn route_of(head: &str, token: Option<&AdminToken>) -> Route {
        route(&req(head), token)
    }

    #[test]
    fn read_only_endpoints_need_no_credential_but_only_get_and_head() {
        assert_eq!(
            route_of("GET /healthz HTTP/1.1\r\n\r\n", None),
            Route::Healthz
        );
        assert_eq!(
            route_of("HEAD /readyz?x=1 HTTP/1.0\r\n\r\n", None),
            Route::Readyz
        );
        assert_eq!(
            route_of("GET /metrics HTTP/1.1\r\norigin: http://a\r\n\r\n", None),
            Route::Metrics
        );
        assert_eq!(
            route_of("POST /metrics HTTP/1.1\r\n\r\n", None),
            Route::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(
            route_of("GET /healthz/ HTTP/1.1\r\n\r\n", None),
            Route::NotFound
        );
        assert_eq!(
            route_of("POST /other HTTP/1.1\r\n\r\n", None),
            Route::NotFound
        );
    }

    #[test]
    fn reload_needs_the_token_and_no_browser() {
        let t = AdminToken::parse(TOKEN).unwrap();
        let t = Some(&t);
        let ok = format!("POST /reload HTTP/1.1\r\nauthorization: Bearer {TOKEN}\r\n\r\n");
        assert_eq!(route_of(&ok, t), Route::Reload);
        let lower = ok.replace("Bearer", "bearer");
        assert_eq!(route_of(&lower, t), Route::Reload);
        assert_eq!(route_of(&ok, None), Route::ReloadDisabled);
        assert_eq!(
            route_of("POST /reload HTTP/1.1\r\n\r\n", t),
            Route::Unauthorized
        );
        for bad in [
            ok.replace(TOKEN, &TOKEN[1..]),
            ok.replace("Bearer ", "Basic "),
            ok.replace("Bearer ", "Bearer"),
            ok.replace(
                "\r\n\r\n",
                &format!("\r\nauthorization: Bearer {TOKEN}\r\n\r\n"),
            ),
        ] {
            assert_eq!(route_of(&bad, t), Route::Unauthorized, "{bad:?}");
        }
        for browser in [
            "origin: http://evil.example",
            "Origin: null",
            "sec-fetch-site: cross-site",
            "sec-fetch-site: same-site",
        ] {
            let head = ok.replace("\r\n\r\n", &format!("\r\n{browser}\r\n\r\n"));
            assert_eq!(route_of(&head, t), Route::CrossOrigin, "{browser}");
        }
        for fine in ["sec-fetch-site: none", "sec-fetch-site: same-origin"] {
            let head = ok.replace("\r\n\r\n", &format!("\r\n{fine}\r\n\r\n"));
            assert_eq!(route_of(&head, t), Route::Reload, "{fine}");
        }
        assert_eq!(
            route_of("GET /reload HTTP/1.1\r\n\r\n", t),
            Route::MethodNotAllowed("POST")
        );
    }

    #[test]
    fn head_limits() {
        assert_eq!(
            parse_head(b"GET /healthz HTTP/1.1\r\nhost: x\r\n"),
            Head::Partial
        );
        assert_eq!(
            parse_head(b"\x16\x03\x01\x00\x10garbage\r\n\r\n"),
            Head::Bad
        );
        let mut big = b"GET /healthz HTTP/1.1\r\nx-pad: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_head(&big), Head::TooLarge);
        let many: String = (0..40).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Head::TooLarge
        );
        // A body after the head is not part of it.
        let mut with_body = b"POST /reload HTTP/1.1\r\ncontent-length: 9000\r\n\r\n".to_vec();
        with_body.resize(MAX_HEAD + 100, b'b');
        assert!(matches!(parse_head(&with_body), Head::Complete(_)));
    }

    #[test]
    fn unauthorized_challenges_and_leaks_nothing() {
        let r = String::from_utf8(response(
            401,
            TEXT,
            &format!("www-authenticate: {CHALLENGE}\r\n"),
            "x\n",
            true,
        ))
        .unwrap();
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
        assert!(
            r.contains("www-authenticate: Bearer realm=\"lakegate-admin\"\r\n"),
            "{r}"
        );
        assert!(
            r.contains("content-length: 2\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
    }
}
