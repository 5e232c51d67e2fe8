//! The store backend's I/O shell: HTTP/1.1 requests over the mTLS connection, bodies
//! streamed between decrypted TLS records and files through io_uring. The HTTP state
//! machine ([`crate::proto::http`]) and the filesystem rules ([`crate::backend::store`])
//! are apart from this file; here is only the plumbing between them. Which S3
//! operation a request is and how a refusal is worded is [`crate::proto::s3`]'s call;
//! when a slow head or body has run out of time is [`crate::proto::slow`]'s. This file
//! turns their answers into timers, bytes and files.
//!
//! The same request cycle serves the `s3` backend: head parse, classification,
//! authorization (rules, tokens, re-judging) and body streaming are this file's, shared
//! by both; only the execution of an admitted operation differs, on disk here
//! ([`Conn::exec_store`]) or by an S3 upstream ([`upstream`]).

mod upstream;

use std::net::{Shutdown, SocketAddr};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::CertificateDer;

use compio::buf::{IntoInner, IoBuf};

use super::conn::{ConnLog, Established};
use super::ctx::Worker;
use super::io::{read_until, unix_now, unix_secs, RingFile, RingStream, Stream, WaitError};
use super::ring::Budget;
use super::shared::Generation;
use crate::authz::token::{self, Claims, Refused, TokenError, TokenGate};
use crate::authz::{Access, Decision};
use crate::backend::store::{self, BodyHasher, Store};
use crate::proto::http::{self, BodyDecoder, Method, RequestHead};
use crate::proto::s3::{self, Code, Conditions, ListSpec, Operation, PutSpec, RequestId};
use crate::session::admission::Admission;
use crate::session::body::{self, Gather, Gathered};
use crate::session::cycle::{self, Cycle, HeadStep};
use crate::session::Close;
use crate::tls::conn::{OutBuf, TlsConn};
use crate::tls::identity::Identity;
use crate::tls::policy::FailReason;

mod commit;
mod files;
mod offload;

/// Largest request head accepted; larger is 431.
pub const MAX_HEAD: usize = cycle::MAX_HEAD;

/// The request cycle's timing rules under a configuration.
fn limits_of(server: &crate::config::Server) -> cycle::Limits {
    cycle::Limits {
        idle: server.idle_timeout,
        head: server.request_head_timeout,
        min_body_rate: server.min_body_rate.map(|m| (m.bytes, m.window)),
    }
}

/// Why a connection ends.
type End = Close;

/// What executes the admitted requests of a connection.
#[derive(Clone)]
pub enum Exec {
    /// Files beneath the store root.
    Store(Arc<Store>),
    /// An S3-compatible upstream.
    S3(Arc<crate::backend::s3::Upstream>),
}

/// A request that passed classification and authorization (token and rules).
struct Admitted<'h> {
    bucket: String,
    key: Option<String>,
    op: Operation<'h>,
    /// False for a CreateBucket let through without `manage` (see `admit`): it may
    /// only be told that the bucket is there.
    may_create: bool,
}

/// Run a wait for the client under the connection's hard deadline (see
/// `Conn::hard_deadline`) and the drain deadline: at the drain deadline a wait still
/// pending is abandoned like an overdue one (an upload then ends as a truncated one,
/// its temporary removed).
async fn bounded<T>(
    wait: impl std::future::Future<Output = T>,
    hard: Option<(Instant, End)>,
    drain_deadline: impl std::future::Future<Output = ()>,
) -> Result<T, End> {
    let read = async move {
        match hard {
            Some((at, why)) => compio::time::timeout_at(at, wait).await.map_err(|_| why),
            None => Ok(wait.await),
        }
    };
    tokio::select! {
        r = read => r,
        () = drain_deadline => Err(Close::DrainDeadline),
    }
}

struct Conn<'a> {
    w: &'a Rc<Worker>,
    /// The generation this connection was last judged under; swapped for the running
    /// one (after re-judging) before each request.
    gen: Arc<Generation>,
    /// The verified client chain, to re-judge the connection under a new generation.
    chain: Vec<CertificateDer<'static>>,
    /// How long the last judgement holds, and `max_connection_age`.
    admission: Admission,
    /// The backend of `gen`; `None` only while a request has it out.
    exec: Option<Exec>,
    /// The bucket and access of the request being served, held to the running policy
    /// while its body or object streams.
    inflight: Option<(String, Access)>,
    client: Stream,
    tls: TlsConn,
    inb: Vec<u8>,
    used: usize,
    /// Decrypted bytes; `plain.buf[pstart..plain.filled]` is not yet processed.
    plain: OutBuf,
    pstart: usize,
    out: OutBuf,
    peer_closed: bool,
    /// The client's last read was short (see [`Conn::fill`]).
    quiet: bool,
    /// We answered before reading a whole request body: drain for a moment before
    /// closing, or the unread bytes make the kernel reset the connection and the client
    /// never sees the status.
    linger: bool,
    /// The current request's body has been read to its end, so an error answered
    /// after it (a bad digest, a failed precondition, a full disk) can keep the
    /// connection: the next request starts where this body ended.
    body_read: bool,
    /// The request cycle: deadlines, keep-alive, drain (sans-IO).
    cycle: Cycle,
    log: &'a ConnLog,
    identity: Identity,
    peer: SocketAddr,
    /// The id of the request being served (or refused), on every response and log line.
    rid: RequestId,
    /// The last bearer token that verified on this connection, so a keep-alive client
    /// sending the same token pays for its signature once per generation; time and
    /// scope are checked on every request all the same. Cleared when the connection
    /// moves to a new generation (new keys, new policy).
    token_cache: Option<TokenCache>,
    /// Whether the request being served was admitted with the cached token (its
    /// `sub` and `jti` go on the access line).
    token_used: bool,
}

/// A token whose signature, issuer, audience and binding were checked under the
/// connection's generation.
struct TokenCache {
    token: Box<str>,
    claims: Claims,
}

/// The token decision for one request under `gate`: `Ok(true)` admitted with a token
/// (now in `cache`), `Ok(false)` no token where none is required.
fn token_verdict(
    gate: &TokenGate,
    cache: &mut Option<TokenCache>,
    head: &RequestHead,
    thumbprint: &str,
    bucket: &str,
    access: Access,
    now: i64,
) -> Result<bool, Refused> {
    let values = head
        .headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str());
    let Some(tok) = token::bearer(values)? else {
        if gate.policy.required.for_bucket(bucket) {
            return Err(TokenError::Missing.into());
        }
        return Ok(false);
    };
    let hit = cache.as_ref().is_some_and(|c| *c.token == *tok);
    if !hit {
        let claims = token::verify(tok, &gate.jwks, &gate.policy, thumbprint)?;
        *cache = Some(TokenCache {
            token: tok.into(),
            claims,
        });
    }
    let Some(c) = cache.as_ref() else {
        return Err(TokenError::Missing.into());
    };
    let refused = |error| Refused {
        error,
        ids: c.claims.ids.clone(),
    };
    c.claims.check_time(&gate.policy, now).map_err(refused)?;
    c.claims.authorize(access, bucket).map_err(refused)?;
    Ok(true)
}

/// Serve HTTP requests until the client closes or an error ends the connection.
pub async fn serve(
    w: &Rc<Worker>,
    gen: Arc<Generation>,
    exec: Exec,
    client: Stream,
    peer: SocketAddr,
    est: Established,
    log: &ConnLog,
) -> End {
    let Established {
        tls,
        inb,
        used,
        plain,
        out,
        identity,
        chain,
        accepted,
        valid_until,
        ..
    } = est;
    let tls_closed = tls.peer_closed();
    let cycle = Cycle::new(limits_of(&gen.config.server), Instant::now());
    let admission = Admission::new(accepted, gen.config.server.max_connection_age, valid_until);
    let mut c = Conn {
        w,
        gen,
        chain,
        admission,
        exec: Some(exec),
        inflight: None,
        client,
        tls,
        inb,
        used,
        plain,
        pstart: 0,
        out,
        peer_closed: tls_closed,
        quiet: true,
        linger: false,
        body_read: false,
        cycle,
        log,
        identity,
        peer,
        rid: RequestId::default(),
        token_cache: None,
        token_used: false,
    };
    let end = c.run().await;
    c.close().await;
    let Conn {
        inb, plain, out, ..
    } = c;
    w.pool.give(inb);
    w.pool.give(plain.buf);
    w.pool.give(out.buf);
    end
}

impl Conn<'_> {
    async fn run(&mut self) -> End {
        loop {
            let mut head = match self.read_head().await {
                Ok(Some(h)) => h,
                Ok(None) => return Close::Closed,
                Err(e) => return e,
            };
            let start = Instant::now();
            self.token_used = false;
            if let Err(why) = self.rejudge() {
                // The certificate this connection was admitted with no longer passes:
                // answer this request 403 and close, whatever the rules would say.
                head.keep_alive = false;
                self.w.stats.policy_close(Some(why));
                let e = s3::Error::new(Code::AccessDenied).detail(format!(
                    "connection re-judged under the running policy: {}",
                    why.as_str()
                ));
                let _ = Box::pin(self.error(&head, "-", "-", e, start)).await;
                return Close::NoLongerAdmitted;
            }
            let aged = self.admission.aged(Instant::now());
            let draining = self
                .w
                .shared
                .draining
                .load(std::sync::atomic::Ordering::Relaxed);
            // Said on this response, so the client does not send another request into
            // a connection we are about to close.
            head.keep_alive = self.cycle.keep_alive(head.keep_alive, aged, draining);
            if aged {
                self.w.stats.policy_close(None);
            }
            let Some(exec) = self.exec.take() else {
                return Close::NoBackend;
            };
            // Boxed: a request's future (the deepest of the connection's) is allocated
            // while it runs, not held by every idle keep-alive connection inside the
            // established task (memory per connection).
            let r = Box::pin(self.request(&exec, &head, start)).await;
            // A re-judgement during the request may have brought the next generation's
            // backend; otherwise this one serves the next request.
            self.exec.get_or_insert(exec);
            self.inflight = None;
            let keep = match r {
                Ok(keep) => keep,
                Err(e) => return e,
            };
            let draining = self
                .w
                .shared
                .draining
                .load(std::sync::atomic::Ordering::Relaxed);
            if let Some(why) = self.cycle.on_response_done(keep, head.keep_alive, draining) {
                return why;
            }
        }
    }

    /// Hold the connection to the running policy: if a reload or CRL refresh installed a
    /// new generation since the last judgement, or the admission ran out by time (a
    /// certificate of the chain expired, a CRL went stale under `refuse`), the client
    /// chain must pass the running verifier (anchors, CRLs, validity). `[[authz]]` is
    /// checked per request against the running generation's rules. `Ok(true)` when the
    /// connection moved to a new generation.
    fn rejudge(&mut self) -> Result<bool, FailReason> {
        // A guard, not a clone: no reference-count traffic shared with other workers
        // on the common path where nothing changed.
        let cur = self.w.shared.current.load();
        let changed = !Arc::ptr_eq(&cur, &self.gen);
        if !self.admission.due(changed, unix_secs()) {
            return Ok(false);
        }
        let cur = if changed {
            arc_swap::Guard::into_inner(cur)
        } else {
            drop(cur);
            self.gen.clone()
        };
        cur.still_admits(&self.chain, &self.identity, unix_now())?;
        self.admission
            .readmitted(cur.valid_until(&self.chain), unix_secs());
        if changed {
            self.admission
                .set_max_age(cur.config.server.max_connection_age);
            // A new root (or upstream) serves from the next request on; a forward
            // relay cannot serve this connection at all.
            let exec = match (&cur.store, &cur.s3) {
                (Some(store), _) => Exec::Store(store.clone()),
                (None, Some(up)) => Exec::S3(up.clone()),
                (None, None) => return Err(FailReason::Unauthorized),
            };
            self.exec = Some(exec);
            self.cycle.set_limits(limits_of(&cur.config.server));
            self.gen = cur;
            // A token verified under the old key set is verified again.
            self.token_cache = None;
        }
        Ok(changed)
    }

    /// A request in flight is held to the running policy too, between reads of its
    /// body, chunks of its object and before its commit: a revocation or a removed
    /// rule stops an upload or a download that is under way.
    fn hold_inflight(&mut self) -> Result<(), s3::Error> {
        let changed = match self.rejudge() {
            Ok(changed) => changed,
            Err(why) => {
                self.w.stats.policy_close(Some(why));
                return Err(s3::Error::new(Code::AccessDenied).detail(format!(
                    "re-judged during the request under the running policy: {}",
                    why.as_str()
                )));
            }
        };
        if let (true, Some((bucket, access))) = (changed, &self.inflight) {
            if let Decision::Denied { reason } =
                self.gen.authz.check(&self.identity, bucket, *access)
            {
                self.w.stats.policy_close(Some(FailReason::Unauthorized));
                return Err(s3::Error::new(Code::AccessDenied).detail(reason));
            }
        }
        Ok(())
    }

    /// Read until a full request head is buffered. Ok(None) on a clean close between
    /// requests. A head that is malformed or overdue is answered here (400/431/408).
    async fn read_head(&mut self) -> Result<Option<RequestHead>, End> {
        loop {
            let pending = &self.plain.buf[self.pstart..self.plain.filled];
            match self
                .cycle
                .poll_head(pending, self.peer_closed, Instant::now())
            {
                HeadStep::Head(head, n) => {
                    self.pstart += n;
                    self.body_read = false;
                    self.rid = self.w.next_request_id();
                    return Ok(Some(*head));
                }
                HeadStep::NeedMore => {}
                HeadStep::Malformed(e) => {
                    self.rid = self.w.next_request_id();
                    let err = s3::Error::from(&e).detail(&e);
                    Box::pin(self.refuse(None, "-", "-", &err, Instant::now(), false, &[])).await?;
                    return Err(Close::BadRequestHead);
                }
                HeadStep::TimedOut { started } => {
                    self.rid = self.w.next_request_id();
                    let timeout = self.gen.config.server.request_head_timeout;
                    let err = s3::Error::new(Code::RequestTimeout).detail(format_args!(
                        "request head not complete {timeout:?} after its first byte (request_head_timeout)"
                    ));
                    Box::pin(self.refuse(None, "-", "-", &err, started, false, &[])).await?;
                    return Err(Close::HeadTimeout);
                }
                HeadStep::End(Close::Closed) => return Ok(None),
                HeadStep::End(why) => return Err(why),
            }
            match self.fill().await {
                Ok(()) => {}
                Err(Close::ClientEof) => {
                    let buffered = self.pstart != self.plain.filled;
                    return match self.cycle.on_eof(buffered) {
                        Close::Closed => Ok(None),
                        why => Err(why),
                    };
                }
                // The head's deadline passed while waiting: the next look at the
                // buffer (at or past the deadline) answers it with 408.
                Err(Close::HeadTimeout) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Read more TLS from the client and decrypt it onto the end of `plain`.
    /// A slow head or body has a deadline of its own, shorter than the idle timeout;
    /// past it a read is abandoned like an idle one and the caller answers 408.
    fn hard_deadline(&self) -> Option<(Instant, End)> {
        self.cycle.hard_deadline()
    }

    /// Wait for the client's next bytes holding no receive buffer: between requests,
    /// or inside one once the client has gone quiet (its last read was short). `inb`
    /// goes back to the pool, and `plain` and `out` too when they hold nothing (memory
    /// per idle keep-alive connection); the start of a record the client paused in is
    /// carried meanwhile ([`super::ring::Carry`]). The new bytes arrive through the
    /// worker's buffer ring into `inb`, after the carried ones ([`super::ring`]).
    /// Returns how many. The same deadlines as a read; a drain ends the wait only
    /// `between` requests. With the worker's carry budget spent, this is
    /// [`Conn::read_more`], which keeps the buffer.
    async fn wait_quiet(&mut self, between: bool) -> Result<usize, End> {
        let w: &Worker = self.w;
        let carry = match w.carry_partial(&self.inb[..self.used], Budget::Established) {
            Some(c) => c,
            // Boxed: rare, and kept out of every connection's idle state.
            None => return Box::pin(self.read_more()).await,
        };
        let at = carry.as_ref().map_or(0, |c| c.len());
        w.pool.give(std::mem::take(&mut self.inb));
        let spare = self.pstart == self.plain.filled && self.out.is_empty();
        if spare {
            w.pool.give(std::mem::take(&mut self.plain.buf));
            w.pool.give(std::mem::take(&mut self.out.buf));
            self.plain.filled = 0;
            self.pstart = 0;
            self.out.filled = 0;
        }
        let cycle = &self.cycle;
        let wait = read_until(
            w.receive_after(&self.client, at),
            || cycle.idle_deadline(),
            between.then(|| w.drain.clone()),
        );
        let r = bounded(wait, self.hard_deadline(), w.drain_deadline()).await;
        if spare {
            self.plain = OutBuf::from_vec(w.pool.take());
            self.out = OutBuf::from_vec(w.pool.take());
        }
        let (inb, res) = match r {
            // The carried bytes go back at the start: `used` still counts them.
            Ok(Ok((n, mut buf))) if !buf.is_empty() => {
                if let Some(c) = carry {
                    c.restore(&mut buf);
                }
                (buf, Ok(n))
            }
            // EOF: no buffer was taken.
            Ok(Ok((n, _))) => (w.pool.take(), Ok(n)),
            Ok(Err((WaitError::Idle, _))) => (w.pool.take(), Err(Close::IdleTimeout)),
            Ok(Err((WaitError::Draining, _))) => (w.pool.take(), Err(self.cycle.on_drain(false))),
            Ok(Err((WaitError::Io(_), _))) => (w.pool.take(), Err(Close::ClientReadError)),
            Err(why) => (w.pool.take(), Err(why)),
        };
        if !matches!(res, Ok(n) if n > 0) {
            // Nothing came after the carried bytes, which are gone with the carry.
            self.used = 0;
        }
        self.inb = inb;
        res
    }

    async fn fill(&mut self) -> Result<(), End> {
        body::make_room(
            &mut self.plain.buf,
            &mut self.pstart,
            &mut self.plain.filled,
            crate::tls::conn::MAX_RECORD * 4,
        );
        loop {
            if self.used == self.inb.len() {
                return Err(Close::RecordTooLarge);
            }
            // Between requests (nothing buffered, no request being served) a drain may
            // end the wait. Inside a request (a body being received) it may not: that
            // request runs on until it completes or the drain deadline cuts it.
            let buffered = self.pstart != self.plain.filled || self.used != 0;
            let between = self.cycle.drain_ends_wait(buffered);
            let n = if between || self.quiet {
                self.wait_quiet(between).await?
            } else {
                self.read_more().await?
            };
            if n == 0 {
                return Err(Close::ClientEof);
            }
            // A short read: the client has said what it had for now, and the next read
            // waits through the ring ([`Conn::wait_quiet`]). A streaming client keeps
            // reading straight into `inb`.
            self.quiet = n < crate::session::relay::TRICKLE;
            self.cycle.on_read(n, Instant::now());
            self.used += n;
            self.log.bytes_in.set(self.log.bytes_in.get() + n as u64);
            self.w.stats.bytes_received.add(n as u64);
            let mut scratch = OutBuf::default();
            let p = self
                .tls
                .handle_received(&mut self.inb[..self.used], &mut scratch, &mut self.plain)
                .map_err(|_| Close::TlsFromClient)?;
            self.inb.copy_within(p.consumed..self.used, 0);
            self.used -= p.consumed;
            if p.peer_closed {
                self.peer_closed = true;
            }
            if p.plaintext > 0 || p.peer_closed {
                return Ok(());
            }
        }
    }

    /// Read more of a request (or of the next one, already begun) into `inb` after
    /// what it holds. Returns how many bytes (0: the client closed).
    async fn read_more(&mut self) -> Result<usize, End> {
        let cap = self.inb.len();
        let inb = std::mem::take(&mut self.inb);
        let cycle = &self.cycle;
        // Inside a request: a drain does not end this read (see `fill`).
        let wait = read_until(
            self.client.read(inb.slice(self.used..cap)),
            || cycle.idle_deadline(),
            None,
        );
        let waited = bounded(wait, self.hard_deadline(), self.w.drain_deadline()).await;
        let waited = match waited {
            Ok(r) => r,
            Err(why) => {
                self.inb = self.w.pool.take();
                self.used = 0;
                return Err(why);
            }
        };
        match waited {
            Ok((n, slice)) => {
                self.inb = slice.into_inner();
                Ok(n)
            }
            Err((WaitError::Idle, _)) => {
                self.inb = self.w.pool.take();
                Err(Close::IdleTimeout)
            }
            Err((WaitError::Draining, _)) => {
                self.inb = self.w.pool.take();
                Err(self.cycle.on_drain(false))
            }
            Err((WaitError::Io(_), buf)) => {
                self.inb = buf
                    .map(|b| b.into_inner())
                    .unwrap_or_else(|| self.w.pool.take());
                Err(Close::ClientReadError)
            }
        }
    }

    /// Encrypt and send plaintext bytes.
    async fn send(&mut self, data: &[u8]) -> Result<(), End> {
        self.out.clear();
        self.tls
            .encrypt(data, &mut self.out)
            .map_err(|_| Close::TlsEncrypt)?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), End> {
        let len = self.out.filled;
        if len == 0 {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out.buf);
        // A client that stops reading must not pin the connection forever: past the
        // idle timeout the socket is shut, which also completes the pending write.
        let idle = self.gen.config.server.idle_timeout;
        let (res, slice) =
            match compio::time::timeout(idle, self.client.write_all(buf.slice(..len))).await {
                Ok(x) => x,
                Err(_) => {
                    self.client.shutdown(Shutdown::Both);
                    self.out.buf = self.w.pool.take();
                    self.out.clear();
                    return Err(Close::ClientWriteTimeout);
                }
            };
        self.out.buf = slice.into_inner();
        self.out.clear();
        res.map_err(|_| Close::ClientWriteError)?;
        self.cycle.on_activity(Instant::now());
        self.log
            .bytes_out
            .set(self.log.bytes_out.get() + len as u64);
        self.w.stats.bytes_sent.add(len as u64);
        Ok(())
    }

    /// A complete small response (listing, 204), with the request id.
    async fn simple(
        &mut self,
        status: u16,
        ctype: &str,
        body: &[u8],
        keep_alive: bool,
    ) -> Result<(), End> {
        let rid = self.rid;
        let mut resp = Vec::with_capacity(256 + body.len());
        http::write_simple_response(
            &mut resp,
            status,
            ctype,
            body,
            &[("x-amz-request-id", rid.as_str())],
            keep_alive,
        );
        self.send(&resp).await
    }

    async fn close(&mut self) {
        self.out.clear();
        if self.tls.close_notify(&mut self.out).is_ok() {
            let _ = self.flush().await;
        }
        if self.linger && !self.peer_closed {
            self.client.shutdown(Shutdown::Write);
            let client = &self.client;
            let mut buf = std::mem::take(&mut self.inb);
            let mut linger = cycle::Linger::new(Instant::now());
            let _ = compio::time::timeout(cycle::Linger::TIME, async {
                loop {
                    let cap = buf.len();
                    let (r, slice) = client.read(buf.slice(..cap)).await;
                    buf = slice.into_inner();
                    if !linger.on_read(r.unwrap_or(0), Instant::now()) {
                        break;
                    }
                }
            })
            .await;
        }
        self.client.shutdown(Shutdown::Both);
    }

    fn access(
        &self,
        method: &str,
        bucket: &str,
        key: &str,
        status: u16,
        bytes: u64,
        start: Instant,
    ) {
        let stats = &self.w.stats;
        stats.requests[crate::telemetry::request_slot(method, status)].inc();
        stats.request_duration.observe_in(
            &crate::telemetry::REQUEST_BUCKETS,
            start.elapsed().as_secs_f64(),
        );
        let ids = self
            .token_cache
            .as_ref()
            .filter(|_| self.token_used)
            .map(|c| &c.claims.ids);
        if let Some(ids) = ids {
            tracing::info!(
                target: "access",
                worker = self.w.id, peer = %self.peer, identity = self.identity.name(),
                request_id = %self.rid, method, bucket, key,
                status, bytes, duration_ms = start.elapsed().as_secs_f64() * 1e3,
                sub = ids.sub.as_deref().unwrap_or("-"),
                client_id = ids.client_id.as_deref().unwrap_or("-"),
                jti = ids.jti.as_deref().unwrap_or("-"), "request"
            );
            return;
        }
        tracing::info!(
            target: "access",
            worker = self.w.id, peer = %self.peer, identity = self.identity.name(),
            request_id = %self.rid, method, bucket, key,
            status, bytes, duration_ms = start.elapsed().as_secs_f64() * 1e3, "request"
        );
    }

    /// Refuse a request for its token (400 / 401 / 403 with `WWW-Authenticate`), count
    /// it and log who the token named. The token itself is never logged.
    async fn token_refused(
        &mut self,
        head: &RequestHead,
        bucket: &str,
        key: &str,
        r: Refused,
        start: Instant,
    ) -> Result<bool, End> {
        let reason = r.error.reason();
        self.w.stats.token(Err(reason));
        tracing::info!(
            target: "access",
            request_id = %self.rid, identity = self.identity.name(),
            sub = r.ids.sub.as_deref().unwrap_or("-"),
            client_id = r.ids.client_id.as_deref().unwrap_or("-"),
            jti = r.ids.jti.as_deref().unwrap_or("-"),
            reason = reason.as_str(), status = r.error.status(), "bearer token refused"
        );
        let code = match r.error.status() {
            400 => Code::InvalidRequest,
            403 => Code::AccessDenied,
            _ => Code::InvalidToken,
        };
        let e = s3::Error::msg(code, r.error.description())
            .detail(format_args!("token {}", reason.as_str()));
        let www = r.error.www_authenticate();
        let body_pending = self.body_pending(head);
        let keep = !body_pending && head.keep_alive;
        self.linger |= body_pending;
        self.refuse(
            Some(head),
            bucket,
            key,
            &e,
            start,
            keep,
            &[("www-authenticate", &www)],
        )
        .await?;
        Ok(keep)
    }

    /// Send `e` as an S3 error document (headers only for HEAD, which never has a
    /// body) and log it: the detail (rule, OS error) goes to the log line under the
    /// request id, never to the client.
    #[allow(clippy::too_many_arguments)]
    async fn refuse(
        &mut self,
        head: Option<&RequestHead>,
        bucket: &str,
        key: &str,
        e: &s3::Error,
        start: Instant,
        keep: bool,
        extra: &[(&str, &str)],
    ) -> Result<(), End> {
        let rid = self.rid;
        let status = e.code.status();
        self.w.stats.request_errors[e.code.index()].inc();
        if let Some(f) = e.fault {
            self.w.stats.store_errors[f.index()].inc();
        }
        let mut body = Vec::with_capacity(384);
        s3::error_xml(&mut body, e, head.map_or("/", |h| h.path.as_str()), &rid);
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(2 + extra.len());
        headers.push(("content-type", "application/xml"));
        headers.push(("x-amz-request-id", rid.as_str()));
        headers.extend_from_slice(extra);
        let mut resp = Vec::with_capacity(256 + body.len());
        http::write_response_head(&mut resp, status, &headers, Some(body.len() as u64), keep);
        let is_head = head.is_some_and(|h| h.method == Method::Head);
        if !is_head {
            resp.extend_from_slice(&body);
        }
        // Queued before the client hears of it, so the reason is on its way to the log
        // by the time anyone can ask about the request id (it reaches stderr a moment
        // later, through the log writer; dropped only if that queue is full, and then
        // counted: `telemetry::logs`).
        tracing::info!(
            target: "access",
            request_id = %rid, identity = self.identity.name(), status, code = e.code.as_str(),
            fault = e.fault.map_or("-", s3::Fault::as_str),
            reason = e.detail.as_deref().unwrap_or(&e.message), "request refused"
        );
        let sent = self.send(&resp).await;
        let method = head.map_or("-", |h| h.method_str.as_str());
        self.access(method, bucket, key, status, 0, start);
        sent
    }

    /// Whether bytes of this request's body may still be on their way: then an answer
    /// must close the connection, for they cannot be told from the next request.
    fn body_pending(&self, head: &RequestHead) -> bool {
        !self.body_read && !BodyDecoder::for_request(head).is_done()
    }

    /// Answer an error; the connection stays open only if the request has no body left
    /// unread.
    async fn error(
        &mut self,
        head: &RequestHead,
        bucket: &str,
        key: &str,
        e: s3::Error,
        start: Instant,
    ) -> Result<bool, End> {
        let body_pending = self.body_pending(head);
        let keep = !body_pending && head.keep_alive;
        self.linger |= body_pending;
        self.refuse(Some(head), bucket, key, &e, start, keep, &[])
            .await?;
        Ok(keep)
    }

    async fn request(
        &mut self,
        exec: &Exec,
        head: &RequestHead,
        start: Instant,
    ) -> Result<bool, End> {
        if head.path == "/" {
            return match exec {
                Exec::Store(store) => self.service(store, head, start).await,
                Exec::S3(_) => {
                    // Which upstream buckets an identity may see is not known here
                    // (unmapped buckets keep their names): refused, not guessed.
                    let e = s3::Error::not_implemented("ListBuckets through the s3 backend");
                    self.error(head, "-", "", e, start).await
                }
            };
        }
        let a = match self.admit(head, start).await {
            Ok(a) => a,
            Err(answered) => return answered,
        };
        match exec {
            Exec::Store(store) => self.exec_store(store, head, a, start).await,
            Exec::S3(up) => self.exec_s3(up, head, a, start).await,
        }
    }

    /// The front half of every request, whichever backend executes it: the path's
    /// bucket and key (the store's key rules hold for both), the operation, the bearer
    /// token and the `[[authz]]` rule. `Err` carries the answer already given.
    async fn admit<'h>(
        &mut self,
        head: &'h RequestHead,
        start: Instant,
    ) -> Result<Admitted<'h>, Result<bool, End>> {
        let (bucket, key) = match store::split_path(&head.path) {
            Ok(x) => x,
            Err(e) => {
                return Err(self
                    .error(head, "-", "-", store::key_error(&e), start)
                    .await)
            }
        };
        let (bucket, key) = (bucket.to_string(), key.map(str::to_string));
        let k = key.as_deref().unwrap_or("");
        let op = match s3::classify(head, key.is_some()) {
            Ok(op) => op,
            Err(e) => return Err(self.error(head, &bucket, k, e, start).await),
        };
        if !matches!(head.method, Method::Put | Method::Post)
            && !BodyDecoder::for_request(head).is_done()
        {
            // Unread body bytes would be parsed as the next request head.
            let e = s3::Error::msg(Code::InvalidRequest, "unexpected request body");
            return Err(self.error(head, &bucket, k, e, start).await);
        }
        let access = match &op {
            // The write verb covers a whole multipart upload, and a copy's destination
            // (its source needs read, checked with the copy).
            Operation::PutObject(_)
            | Operation::CopyObject(_)
            | Operation::CreateMultipartUpload(_)
            | Operation::UploadPart { .. }
            | Operation::UploadPartCopy { .. }
            | Operation::CompleteMultipartUpload { .. }
            | Operation::AbortMultipartUpload { .. }
            | Operation::ListParts { .. } => Access::Write,
            Operation::GetObject(_) | Operation::HeadObject(_) => Access::Read,
            Operation::DeleteObject | Operation::DeleteObjects(_) => Access::Delete,
            Operation::ListObjectsV2(_)
            | Operation::ListObjects(_)
            | Operation::ListMultipartUploads(_) => Access::List,
            // Bucket existence: read or list (the second is tried below).
            Operation::HeadBucket | Operation::GetBucketLocation => Access::Read,
            Operation::CreateBucket(_) | Operation::DeleteBucket => Access::Manage,
            // Answered by service() per bucket; classify() gives it only for "/".
            Operation::ListBuckets => Access::List,
        };
        // Both must allow: the bearer token (when [tokens] is set: valid, bound to this
        // certificate, its scope covering the action) and the identity's [[authz]] rule.
        if let Some(gate) = self.gen.tokens.as_deref() {
            match token_verdict(
                gate,
                &mut self.token_cache,
                head,
                &self.identity.thumbprint,
                &bucket,
                access,
                unix_secs(),
            ) {
                Ok(used) => {
                    self.token_used = used;
                    self.w.stats.token(Ok(used));
                }
                Err(r) => return Err(self.token_refused(head, &bucket, k, r, start).await),
            }
        }
        let mut decision = self.gen.authz.check(&self.identity, &bucket, access);
        if matches!(op, Operation::HeadBucket | Operation::GetBucketLocation)
            && !decision.is_allowed()
        {
            decision = self.gen.authz.check(&self.identity, &bucket, Access::List);
        }
        let mut may_create = true;
        if let Decision::Denied { reason } = decision {
            // CreateBucket of a bucket the identity already works in gets S3's answer
            // for an existing bucket of one's own, 409 BucketAlreadyOwnedByYou, which
            // tools take as "there" (rclone asks before a server-side copy or move into
            // another folder). Nothing is created, so it needs no `manage`; the backend
            // checks that the bucket exists (else this is 403 after all).
            let works_in = matches!(op, Operation::CreateBucket(_))
                && [Access::Read, Access::Write, Access::Delete, Access::List]
                    .into_iter()
                    .any(|a| {
                        self.gen
                            .authz
                            .check(&self.identity, &bucket, a)
                            .is_allowed()
                    });
            if !works_in {
                let e = s3::Error::new(Code::AccessDenied).detail(reason);
                return Err(self.error(head, &bucket, k, e, start).await);
            }
            may_create = false;
        }
        self.inflight = Some((bucket.clone(), access));
        Ok(Admitted {
            bucket,
            key,
            op,
            may_create,
        })
    }

    /// Execute an admitted request on the local store.
    async fn exec_store(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        a: Admitted<'_>,
        start: Instant,
    ) -> Result<bool, End> {
        let Admitted {
            bucket,
            key,
            op,
            may_create,
        } = a;
        let k = key.as_deref().unwrap_or("");
        match (op, key.as_deref()) {
            (Operation::PutObject(spec), Some(key)) => {
                self.put(store, head, &spec, &bucket, key, None, start)
                    .await
            }
            (
                Operation::UploadPart {
                    upload_id,
                    part,
                    spec,
                },
                Some(key),
            ) => {
                self.put(
                    store,
                    head,
                    &spec,
                    &bucket,
                    key,
                    Some((upload_id, part)),
                    start,
                )
                .await
            }
            (Operation::CreateMultipartUpload(spec), Some(key)) => {
                self.create_upload(store, head, &spec, &bucket, key, start)
                    .await
            }
            (
                Operation::CompleteMultipartUpload {
                    upload_id,
                    checksums,
                },
                Some(key),
            ) => {
                self.complete_upload(store, head, upload_id, &checksums, &bucket, key, start)
                    .await
            }
            (Operation::AbortMultipartUpload { upload_id }, Some(key)) => {
                let r = self
                    .upload_job(store, (&bucket, key, upload_id), |st, b, k, i, o| {
                        st.abort_upload(b, k, i, o)
                    })
                    .await;
                self.removed(head, &bucket, key, r, start).await
            }
            (
                Operation::ListParts {
                    upload_id,
                    max_parts,
                    marker,
                },
                Some(key),
            ) => {
                let r = self
                    .upload_job(store, (&bucket, key, upload_id), |st, b, k, i, o| {
                        st.list_parts(b, k, i, o)
                    })
                    .await;
                match r {
                    Ok(parts) => {
                        let xml = store::multipart::list_parts_xml(
                            &bucket, key, upload_id, &parts, marker, max_parts,
                        );
                        self.xml_ok(head, &bucket, key, &xml, start).await
                    }
                    Err(e) => self.error(head, &bucket, key, e, start).await,
                }
            }
            (Operation::ListMultipartUploads(spec), _) => {
                let (b, o) = (bucket.clone(), self.owner());
                let (prefix, key_marker, id_marker, max) = (
                    spec.prefix.to_owned(),
                    spec.key_marker.map(str::to_owned),
                    spec.upload_id_marker.map(str::to_owned),
                    spec.max_uploads,
                );
                let r = self
                    .blocking(store, move |st| {
                        st.list_uploads(
                            &b,
                            &o,
                            &prefix,
                            key_marker.as_deref(),
                            id_marker.as_deref(),
                            max,
                        )
                        .map_err(|e| store::io_error(&e, Code::NoSuchBucket))
                    })
                    .await;
                match r {
                    Ok((uploads, more)) => {
                        let xml =
                            store::multipart::list_uploads_xml(&bucket, &spec, &uploads, more);
                        self.xml_ok(head, &bucket, "", &xml, start).await
                    }
                    Err(e) => self.error(head, &bucket, "", e, start).await,
                }
            }
            (Operation::CopyObject(spec), Some(key)) => {
                self.copy(store, head, spec, &bucket, key, start).await
            }
            (
                Operation::UploadPartCopy {
                    upload_id,
                    part,
                    copy,
                    range,
                },
                Some(key),
            ) => {
                let to = (bucket.as_str(), key, upload_id, part);
                self.part_copy(store, head, copy, range, to, start).await
            }
            (Operation::DeleteObjects(spec), _) => {
                self.delete_objects(store, head, &spec, &bucket, start)
                    .await
            }
            (Operation::HeadBucket | Operation::GetBucketLocation, _) => {
                if let Err(e) = files::bucket_dir(store, &bucket).await {
                    let e = store::io_error(&e, Code::NoSuchBucket);
                    return self.error(head, &bucket, "", e, start).await;
                }
                if head.method == Method::Head {
                    self.simple(200, "application/xml", b"", head.keep_alive)
                        .await?;
                    self.access("HEAD", &bucket, "", 200, 0, start);
                    Ok(true)
                } else {
                    self.xml_ok(head, &bucket, "", &s3::location_xml(), start)
                        .await
                }
            }
            (Operation::ListObjects(spec), _) => {
                self.list(store, head, &bucket, &spec, false, start).await
            }
            (Operation::CreateBucket(spec), None) => {
                self.create_bucket(store, head, &spec, &bucket, may_create, start)
                    .await
            }
            (Operation::DeleteBucket, None) => {
                let b = bucket.clone();
                let r = self
                    .blocking(store, move |st| {
                        st.delete_bucket(&b).map_err(|e| {
                            if e.kind() == std::io::ErrorKind::DirectoryNotEmpty
                                || e.raw_os_error() == Some(libc::ENOTEMPTY)
                            {
                                s3::Error::new(Code::BucketNotEmpty).detail(e)
                            } else {
                                store::io_error(&e, Code::NoSuchBucket)
                            }
                        })
                    })
                    .await;
                match r {
                    Ok(()) => {
                        tracing::info!(identity = self.identity.name(), request_id = %self.rid, bucket, "bucket deleted");
                        self.simple(204, "text/plain", b"", head.keep_alive).await?;
                        self.access("DELETE", &bucket, "", 204, 0, start);
                        Ok(true)
                    }
                    Err(e) => self.error(head, &bucket, "", e, start).await,
                }
            }
            (Operation::GetObject(c), Some(key)) => {
                self.get(store, head, c, &bucket, key, start, true).await
            }
            (Operation::HeadObject(c), Some(key)) => {
                self.get(store, head, c, &bucket, key, start, false).await
            }
            (Operation::DeleteObject, Some(key)) => {
                let r = self.delete_off_loop(store, &bucket, key).await;
                self.removed(head, &bucket, key, r, start).await
            }
            (Operation::ListObjectsV2(spec), _) => {
                self.list(store, head, &bucket, &spec, true, start).await
            }
            // classify() names bucket operations only when the path has no key, and
            // ListBuckets only for "/" (served by service()).
            (Operation::ListBuckets | Operation::CreateBucket(_) | Operation::DeleteBucket, _) => {
                let e = s3::Error::new(Code::InternalError)
                    .detail("bucket or service operation with a key");
                self.error(head, &bucket, k, e, start).await
            }
            // classify() only names object operations when the path has a key.
            (_, None) => {
                let e =
                    s3::Error::new(Code::InternalError).detail("object operation without a key");
                self.error(head, &bucket, k, e, start).await
            }
        }
    }

    async fn list(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        bucket: &str,
        spec: &ListSpec<'_>,
        v2: bool,
        start: Instant,
    ) -> Result<bool, End> {
        let start_after = match spec.continuation.filter(|_| v2) {
            Some(t) => match store::decode_continuation(t) {
                Some(s) => Some(s),
                None => {
                    let e = s3::Error::msg(
                        Code::InvalidArgument,
                        "The continuation token provided is incorrect",
                    );
                    return self.error(head, bucket, "", e, start).await;
                }
            },
            None => spec.start_after.map(str::to_string),
        };
        let page = self
            .list_page(
                store,
                bucket,
                spec.prefix,
                spec.delimiter,
                start_after,
                spec.max_keys,
            )
            .await;
        match page {
            Ok(l) => {
                let xml = store::list_result_xml(
                    &store::ListXml {
                        v2,
                        bucket,
                        prefix: spec.prefix,
                        delimiter: spec.delimiter,
                        max_keys: spec.max_keys,
                        continuation: spec.continuation.filter(|_| v2),
                        start_after: spec.start_after,
                        url_encode: spec.url_encode,
                    },
                    &l,
                );
                self.simple(200, "application/xml", xml.as_bytes(), head.keep_alive)
                    .await?;
                self.access("LIST", bucket, spec.prefix, 200, xml.len() as u64, start);
                Ok(true)
            }
            Err(e) => self.error(head, bucket, "", e, start).await,
        }
    }

    /// ListBuckets (`GET /`): the bucket folders this identity may list. Each bucket
    /// is judged like a listing of it (the `[[authz]]` rule, and the bearer token's
    /// scope when `[tokens]` is set); a bucket either refuses is left out, so the
    /// answer never names a bucket the caller could not list.
    async fn service(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        start: Instant,
    ) -> Result<bool, End> {
        if let Err(e) = s3::classify_service(head) {
            return self.error(head, "-", "", e, start).await;
        }
        if !BodyDecoder::for_request(head).is_done() {
            let e = s3::Error::msg(Code::InvalidRequest, "unexpected request body");
            return self.error(head, "-", "", e, start).await;
        }
        let all = self
            .blocking(store, |st| {
                st.list_buckets()
                    .map_err(|e| store::io_error(&e, Code::InternalError))
            })
            .await;
        let all = match all {
            Ok(b) => b,
            Err(e) => return self.error(head, "-", "", e, start).await,
        };
        let mut shown = Vec::with_capacity(all.len());
        for (name, created) in all {
            if !self
                .gen
                .authz
                .check(&self.identity, &name, Access::List)
                .is_allowed()
            {
                continue;
            }
            if let Some(gate) = self.gen.tokens.as_deref() {
                match token_verdict(
                    gate,
                    &mut self.token_cache,
                    head,
                    &self.identity.thumbprint,
                    &name,
                    Access::List,
                    unix_secs(),
                ) {
                    Ok(used) => self.token_used |= used,
                    Err(_) => continue,
                }
            }
            shown.push((name, store::iso_time(created)));
        }
        let xml = s3::list_buckets_xml(&self.owner(), &shown);
        self.xml_ok(head, "-", "", &xml, start).await
    }

    /// CreateBucket: a new bucket folder, for an identity granted `manage` on it.
    async fn create_bucket(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        spec: &PutSpec,
        bucket: &str,
        may_create: bool,
        start: Instant,
    ) -> Result<bool, End> {
        let body = match self.read_small_body(head, s3::MAX_CREATE_BUCKET_BODY).await {
            Ok(b) => b,
            Err(e) => return self.body_failed(head, bucket, "", e, start).await,
        };
        if let Err(e) =
            Self::verify_small_body(spec, &body).and_then(|()| s3::parse_create_bucket(&body))
        {
            return self.error(head, bucket, "", e, start).await;
        }
        if !may_create {
            let e = if files::bucket_dir(store, bucket).await.is_ok() {
                s3::Error::new(Code::BucketAlreadyOwnedByYou)
                    .detail("the bucket exists; creating buckets needs \"manage\"")
            } else {
                s3::Error::new(Code::AccessDenied).detail("creating buckets needs \"manage\"")
            };
            return self.error(head, bucket, "", e, start).await;
        }
        let b = bucket.to_owned();
        let r = self
            .blocking(store, move |st| {
                st.create_bucket_new(&b).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        s3::Error::new(Code::BucketAlreadyOwnedByYou).detail(e)
                    } else {
                        store::io_error(&e, Code::InternalError)
                    }
                })
            })
            .await;
        match r {
            Ok(()) => {
                tracing::info!(identity = self.identity.name(), request_id = %self.rid, bucket, "bucket created");
                let location = format!("/{bucket}");
                let rid = self.rid;
                let mut resp = Vec::with_capacity(256);
                http::write_response_head(
                    &mut resp,
                    200,
                    &[("location", &location), ("x-amz-request-id", rid.as_str())],
                    Some(0),
                    head.keep_alive,
                );
                self.send(&resp).await?;
                self.access("PUT", bucket, "", 200, 0, start);
                Ok(true)
            }
            Err(e) => self.error(head, bucket, "", e, start).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn get(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        cond: Conditions<'_>,
        bucket: &str,
        key: &str,
        start: Instant,
        body: bool,
    ) -> Result<bool, End> {
        let (file, meta, user) = match self.open_object(store, bucket, key).await {
            Ok(x) => x,
            Err(e) => return self.error(head, bucket, key, e, start).await,
        };
        let etag = meta.etag();
        let lm = meta.last_modified_http();
        let rid = self.rid;
        match cond.evaluate(&etag, meta.mtime_secs()) {
            s3::Precondition::Proceed => {}
            s3::Precondition::Failed => {
                let e = s3::Error::new(Code::PreconditionFailed);
                return self.error(head, bucket, key, e, start).await;
            }
            s3::Precondition::NotModified => {
                let mut h = Vec::with_capacity(256);
                http::write_response_head(
                    &mut h,
                    304,
                    &[
                        ("etag", &etag),
                        ("last-modified", &lm),
                        ("x-amz-request-id", rid.as_str()),
                    ],
                    None,
                    head.keep_alive,
                );
                self.send(&h).await?;
                self.access(&head.method_str, bucket, key, 304, 0, start);
                return Ok(true);
            }
        }
        let range = match head
            .header("range")
            .map(|r| http::parse_range(r, meta.size))
        {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(r))) => Some(r),
            Some(Err(())) => {
                let cr = format!("bytes */{}", meta.size);
                let e = s3::Error::new(Code::InvalidRange);
                self.refuse(
                    Some(head),
                    bucket,
                    key,
                    &e,
                    start,
                    head.keep_alive,
                    &[("content-range", &cr)],
                )
                .await?;
                return Ok(true);
            }
        };
        let (status, from, len) = match range {
            Some((a, b)) => (206, a, b - a + 1),
            None => (200, 0, meta.size),
        };
        let sum = meta.checksum_sha256_b64();
        let cr = range.map(|(a, b)| format!("bytes {a}-{b}/{}", meta.size));
        let ctype = user
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let names: Vec<String> = user
            .user
            .iter()
            .map(|(n, _)| format!("x-amz-meta-{n}"))
            .collect();
        let mut headers: Vec<(&str, &str)> = vec![
            ("etag", &etag),
            ("last-modified", &lm),
            ("accept-ranges", "bytes"),
            ("content-type", ctype),
            ("x-amz-request-id", rid.as_str()),
        ];
        for (name, (_, value)) in names.iter().zip(&user.user) {
            headers.push((name, value));
        }
        // An object assembled from parts was never hashed whole: no SHA-256 to give.
        if range.is_none() && !sum.is_empty() {
            headers.push(("x-amz-checksum-sha256", &sum));
        }
        if let Some(cr) = &cr {
            headers.push(("content-range", cr));
        }
        let mut h = Vec::with_capacity(512);
        http::write_response_head(&mut h, status, &headers, Some(len), self.keep_alive(head));
        self.send(&h).await?;
        if body && len > 0 {
            let f = super::io::ring_file(file);
            let r = self.stream_file(&f, from, len).await;
            let _ = f.close().await;
            r?;
        }
        self.access(
            &head.method_str,
            bucket,
            key,
            status,
            if body { len } else { 0 },
            start,
        );
        Ok(true)
    }

    /// File → TLS records → client. One user-space copy: rustls encrypts from the read
    /// buffer into the outgoing buffer.
    async fn stream_file(&mut self, f: &compio::fs::File, from: u64, len: u64) -> Result<(), End> {
        // Large objects are read 256 KiB at a time: on a filesystem without
        // non-blocking buffered reads (tmpfs) io_uring hands every file read to a kernel
        // worker thread, and that hand-off, not the bytes, was the GET's extra cost
        // (benches/store/profile.sh). The records still leave in pool-buffer-sized
        // flushes. Small objects keep to a pool buffer.
        let big = len > super::pool::BUF_SIZE as u64;
        let mut buf = if big {
            vec![0; FILE_READ]
        } else {
            self.w.pool.take()
        };
        let mut pos = from;
        let end = from + len;
        let res = loop {
            if pos >= end {
                break Ok(());
            }
            if self.hold_inflight().is_err() {
                // Mid-body: the client sees a truncated response, and nothing more.
                break Err(Close::NoLongerAdmitted);
            }
            let n = ((end - pos) as usize).min(buf.len());
            let (r, slice) = f.read_at(buf.slice(..n), pos).await;
            buf = slice.into_inner();
            let got = match r {
                Ok(0) => break Err(Close::ObjectShort),
                Ok(k) => k,
                Err(e) => {
                    // After the status line: no error document, but the disk's fault
                    // is counted and logged like a refused request's.
                    let fault = store::fault_of(&e);
                    self.w.stats.store_errors[fault.index()].inc();
                    tracing::warn!(
                        request_id = %self.rid, identity = self.identity.name(),
                        fault = fault.as_str(), error = %e, offset = pos,
                        "object read failed mid-response"
                    );
                    break Err(Close::ObjectRead);
                }
            };
            let mut sent = Ok(());
            for chunk in buf[..got].chunks(FLUSH) {
                self.out.clear();
                if self.tls.encrypt(chunk, &mut self.out).is_err() {
                    sent = Err(Close::TlsEncrypt);
                    break;
                }
                if let Err(e) = self.flush().await {
                    sent = Err(e);
                    break;
                }
            }
            if let Err(e) = sent {
                break Err(e);
            }
            pos += got as u64;
        };
        if !big {
            self.w.pool.give(buf);
        }
        res
    }

    /// PutObject, or UploadPart when `part` names the upload and part number: the same
    /// body path and checks; a part is MD5-hashed (its ETag) and committed into its
    /// upload's folder instead of onto the key.
    #[allow(clippy::too_many_arguments)]
    async fn put(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        spec: &PutSpec,
        bucket: &str,
        key: &str,
        part: Option<(&str, u32)>,
        start: Instant,
    ) -> Result<bool, End> {
        let mut max = self.gen.config.server.max_object_size;
        if part.is_some() {
            max = max.min(s3::MAX_PART_SIZE);
        }
        if head.content_length.is_none() && !head.chunked {
            let e = s3::Error::new(Code::MissingContentLength);
            return self.error(head, bucket, key, e, start).await;
        }
        if let Some(len) = spec.announced_size(head).filter(|&l| l > max) {
            let e = s3::Error::new(Code::EntityTooLarge)
                .detail(format_args!("{len} bytes announced, limit {max}"));
            return self.error(head, bucket, key, e, start).await;
        }
        if part.is_none() && !spec.meta.is_empty() && !store.keeps_attributes() {
            // Metadata the store could not keep is refused, not dropped.
            let e = s3::Error::not_implemented("metadata on a store without extended attributes");
            return self.error(head, bucket, key, e, start).await;
        }
        if let Some((id, _)) = part {
            // Before a byte of the body is read: an upload of another identity is
            // answered exactly like one that does not exist.
            if let Err(e) = self.check_upload(store, bucket, key, id).await {
                return self.error(head, bucket, key, e, start).await;
            }
        }
        let (std_file, temp) = match files::create_temp(store, bucket).await {
            Ok(x) => x,
            Err(e) => return self.error(head, bucket, key, e, start).await,
        };
        if head.expect_continue {
            if let Err(e) = self.send(b"HTTP/1.1 100 Continue\r\n\r\n").await {
                files::discard_temp(store, bucket, &temp).await;
                return Err(e);
            }
        }
        let uring = match std_file.try_clone() {
            Ok(f) => super::io::ring_file(f),
            Err(e) => {
                files::discard_temp(store, bucket, &temp).await;
                let e = store::io_error(&e, Code::InternalError);
                return self.error(head, bucket, key, e, start).await;
            }
        };
        let (md5, crc32, sha1) = spec.wants();
        // The MD5 is the ETag (etag = "md5") only where the attribute that records it
        // is kept; elsewhere the object answers with its SHA-256 from the start.
        let md5_etag = part.is_none()
            && store.keeps_attributes()
            && matches!(
                self.gen.config.backend,
                crate::config::Backend::Store {
                    etag: crate::config::Etag::Md5,
                    ..
                }
            );
        let mut hasher = BodyHasher::with(md5 || part.is_some() || md5_etag, crc32, sha1);
        let mut inner = spec.aws_chunked.then(BodyDecoder::aws_chunked);
        self.cycle.on_body_start(Instant::now());
        let r = self
            .receive_body(head, &mut inner, &mut Sink::File(&uring), &mut hasher, max)
            .await;
        self.cycle.on_body_end();
        let _ = uring.close().await;
        let size = match r {
            Ok(n) => n,
            Err(BodyError::Client(e)) => {
                files::discard_temp(store, bucket, &temp).await;
                tracing::warn!(
                    identity = self.identity.name(),
                    request_id = %self.rid,
                    bucket,
                    key,
                    reason = e.as_str(),
                    "upload aborted; nothing stored"
                );
                self.access("PUT", bucket, key, 499, 0, start);
                return Err(e);
            }
            Err(BodyError::Refuse(e)) => {
                files::discard_temp(store, bucket, &temp).await;
                self.linger = true;
                // The body was not read to its end: answer and close.
                let _ = self
                    .refuse(Some(head), bucket, key, &e, start, false, &[])
                    .await;
                tracing::warn!(
                    identity = self.identity.name(), request_id = %self.rid, bucket, key,
                    status = e.code.status(), "upload refused; nothing stored"
                );
                return Ok(false);
            }
        };
        let digests = hasher.finish();
        let trailer = inner.as_ref().map_or(&[][..], BodyDecoder::trailer);
        let checked = if inner.as_ref().is_some_and(|d| !d.is_done()) {
            Err(s3::Error::new(Code::IncompleteBody).detail("aws-chunked body ended early"))
        } else {
            spec.verify(size, &digests.as_body(), trailer)
        };
        if let Err(e) = checked {
            files::discard_temp(store, bucket, &temp).await;
            return self.error(head, bucket, key, e, start).await;
        }
        if let Some((id, number)) = part {
            return self
                .commit_part(
                    store,
                    head,
                    bucket,
                    key,
                    (id, number),
                    (std_file, temp),
                    &digests,
                    size,
                    start,
                )
                .await;
        }
        let hex = digests.sha256_hex();
        if let Err(e) = self.hold_inflight() {
            files::discard_temp(store, bucket, &temp).await;
            self.refuse(Some(head), bucket, key, &e, start, false, &[])
                .await?;
            return Ok(false);
        }
        let md5_hex = if md5_etag { digests.md5_hex() } else { None };
        let etag = format!("\"{}\"", md5_hex.as_deref().unwrap_or(&hex));
        if let Err(e) = self
            .commit(
                store,
                bucket,
                &temp,
                key,
                std_file,
                &hex,
                md5_hex,
                spec.meta.clone(),
                spec.cond.clone(),
            )
            .await
        {
            return self.error(head, bucket, key, e, start).await;
        }
        let b64 =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digests.sha256);
        let rid = self.rid;
        let mut resp = Vec::with_capacity(256);
        http::write_response_head(
            &mut resp,
            201,
            &[
                ("etag", &etag),
                ("x-amz-checksum-sha256", &b64),
                ("x-amz-request-id", rid.as_str()),
            ],
            Some(0),
            self.keep_alive(head),
        );
        self.send(&resp).await?;
        self.access("PUT", bucket, key, 201, size, start);
        Ok(true)
    }

    /// The identity an upload is recorded under: the SPIFFE ID, else `x5t:` and the
    /// certificate's SHA-256 thumbprint (never a CN or DNS name, which another
    /// certificate may carry too).
    fn owner(&self) -> String {
        match &self.identity.spiffe {
            Some(id) => id.clone(),
            None => format!("x5t:{}", self.identity.thumbprint),
        }
    }

    /// Answer a DELETE (an object, an upload): 204, or the error `map` makes of it.
    #[allow(clippy::too_many_arguments)]
    async fn removed(
        &mut self,
        head: &RequestHead,
        bucket: &str,
        key: &str,
        r: Result<(), s3::Error>,
        start: Instant,
    ) -> Result<bool, End> {
        match r {
            Ok(()) => {
                self.simple(204, "text/plain", b"", head.keep_alive).await?;
                self.access("DELETE", bucket, key, 204, 0, start);
                Ok(true)
            }
            Err(e) => self.error(head, bucket, key, e, start).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit_part(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        bucket: &str,
        key: &str,
        (id, number): (&str, u32),
        (file, temp): (std::fs::File, String),
        d: &store::Digests,
        size: u64,
        start: Instant,
    ) -> Result<bool, End> {
        let Some(info) = store::multipart::PartInfo::of(number, size, d) else {
            files::discard_temp(store, bucket, &temp).await;
            let e = s3::Error::new(Code::InternalError).detail("part without its MD5");
            return self.error(head, bucket, key, e, start).await;
        };
        let md5 = info.md5.clone();
        let (crc32, sha1, sha256) = (info.crc32.clone(), info.sha1.clone(), info.sha256.clone());
        let committed = self
            .commit_part_off_loop(store, bucket, key, id, &temp, file, info)
            .await;
        if let Err(e) = committed {
            return self.error(head, bucket, key, e, start).await;
        }
        let etag = format!("\"{md5}\"");
        let rid = self.rid;
        let mut headers: Vec<(&str, &str)> =
            vec![("etag", &etag), ("x-amz-request-id", rid.as_str())];
        if let Some(v) = &crc32 {
            headers.push(("x-amz-checksum-crc32", v));
        }
        if let Some(v) = &sha1 {
            headers.push(("x-amz-checksum-sha1", v));
        }
        if let Some(v) = &sha256 {
            headers.push(("x-amz-checksum-sha256", v));
        }
        let mut resp = Vec::with_capacity(256);
        http::write_response_head(&mut resp, 200, &headers, Some(0), self.keep_alive(head));
        self.send(&resp).await?;
        self.access("PUT", bucket, key, 200, size, start);
        Ok(true)
    }

    /// Read a whole small request body (an XML document) of at most `limit` bytes.
    async fn read_small_body(
        &mut self,
        head: &RequestHead,
        limit: u64,
    ) -> Result<Vec<u8>, BodyError> {
        let dec = BodyDecoder::for_request(head);
        if dec.remaining().is_some_and(|n| n > limit) {
            return Err(BodyError::Refuse(
                s3::Error::msg(
                    Code::MalformedXML,
                    format!("the request body is over {limit} bytes"),
                )
                .detail("XML body over its limit"),
            ));
        }
        if head.expect_continue && !dec.is_done() {
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(BodyError::Client)?;
        }
        self.cycle.on_body_start(Instant::now());
        let mut gather = Gather::new(dec);
        let mut out = Vec::new();
        let r = loop {
            let got = gather.gather(
                None,
                &mut self.plain.buf,
                &mut self.pstart,
                self.plain.filled,
                |b| out.extend_from_slice(b),
            );
            match got {
                Err(f) => break Err(BodyError::Refuse(s3::Error::from(&f))),
                Ok(_) if out.len() as u64 > limit => {
                    break Err(BodyError::Refuse(s3::Error::msg(
                        Code::MalformedXML,
                        format!("the request body is over {limit} bytes"),
                    )))
                }
                Ok(g) if g.done => {
                    self.body_read = true;
                    break Ok(out);
                }
                Ok(_) => {}
            }
            if let Err(e) = self.need_more().await {
                break Err(e);
            }
        };
        self.cycle.on_body_end();
        r
    }

    /// Answer a body that could not be read whole: nothing more can be said to a
    /// client that went away; a refusal closes the connection after it.
    async fn body_failed(
        &mut self,
        head: &RequestHead,
        bucket: &str,
        key: &str,
        err: BodyError,
        start: Instant,
    ) -> Result<bool, End> {
        match err {
            BodyError::Client(e) => {
                self.access(&head.method_str, bucket, key, 499, 0, start);
                Err(e)
            }
            BodyError::Refuse(e) => {
                self.linger = true;
                let _ = self
                    .refuse(Some(head), bucket, key, &e, start, false, &[])
                    .await;
                Ok(false)
            }
        }
    }

    /// A 200 with an XML document.
    async fn xml_ok(
        &mut self,
        head: &RequestHead,
        bucket: &str,
        key: &str,
        xml: &str,
        start: Instant,
    ) -> Result<bool, End> {
        self.simple(200, "application/xml", xml.as_bytes(), head.keep_alive)
            .await?;
        self.access(&head.method_str, bucket, key, 200, xml.len() as u64, start);
        Ok(true)
    }

    async fn create_upload(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        spec: &s3::CreateSpec,
        bucket: &str,
        key: &str,
        start: Instant,
    ) -> Result<bool, End> {
        let alg = spec.checksum.map(|a| match a {
            s3::Algorithm::Crc32 => "CRC32",
            s3::Algorithm::Sha1 => "SHA1",
            s3::Algorithm::Sha256 => "SHA256",
        });
        let (b, k, o, meta) = (
            bucket.to_owned(),
            key.to_owned(),
            self.owner(),
            spec.meta.clone(),
        );
        let r = self
            .blocking(store, move |st| {
                st.create_upload(&b, &k, &o, alg, &meta)
                    .map_err(|e| files::object_error(st, &b, &e))
            })
            .await;
        match r {
            Ok(id) => {
                let xml = s3::initiate_xml(bucket, key, &id);
                tracing::info!(identity = self.identity.name(), request_id = %self.rid, bucket, key, upload_id = %id, "multipart upload created");
                self.xml_ok(head, bucket, key, &xml, start).await
            }
            Err(e) => self.error(head, bucket, key, e, start).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn complete_upload(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        id: &str,
        checksums: &PutSpec,
        bucket: &str,
        key: &str,
        start: Instant,
    ) -> Result<bool, End> {
        // Ownership first, before the body is read: the same answer for every id that
        // is not this identity's.
        if let Err(e) = self.check_upload(store, bucket, key, id).await {
            return self.error(head, bucket, key, e, start).await;
        }
        let body = match self.read_small_body(head, s3::MAX_COMPLETE_BODY).await {
            Ok(b) => b,
            Err(e) => return self.body_failed(head, bucket, key, e, start).await,
        };
        if let Err(e) = Self::verify_small_body(checksums, &body) {
            return self.error(head, bucket, key, e, start).await;
        }
        let parts = match s3::parse_complete(&body) {
            Ok(p) => p,
            Err(e) => return self.error(head, bucket, key, e, start).await,
        };
        let max = self.gen.config.server.max_object_size;
        let (b, k, i, owner) = (
            bucket.to_owned(),
            key.to_owned(),
            id.to_owned(),
            self.owner(),
        );
        let n = parts.len();
        let cond = checksums.cond.clone();
        let r = self
            .blocking(store, move |st| {
                st.complete_upload(&b, &k, &i, &owner, &parts, max, &cond)
            })
            .await;
        match r {
            Ok((etag, _)) => {
                tracing::info!(identity = self.identity.name(), request_id = %self.rid, bucket, key, upload_id = id, parts = n, "multipart upload completed");
                let xml = s3::complete_xml(bucket, key, &format!("\"{etag}\""));
                self.xml_ok(head, bucket, key, &xml, start).await
            }
            Err(e) => self.error(head, bucket, key, e, start).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        spec: s3::CopySpec<'_>,
        bucket: &str,
        key: &str,
        start: Instant,
    ) -> Result<bool, End> {
        let (src_bucket, src_key) = match self
            .copy_source(head, &spec, bucket, key, false, start)
            .await
        {
            Ok(x) => x,
            Err(answered) => return answered,
        };
        let check = source_preconditions(&spec.conditions);
        let replace = spec.replace.clone();
        if replace.as_ref().is_some_and(|m| !m.is_empty()) && !store.keeps_attributes() {
            let e = s3::Error::not_implemented("metadata on a store without extended attributes");
            return self.error(head, bucket, key, e, start).await;
        }
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let r = self
            .blocking(store, move |st| {
                st.copy_object(&src_bucket, &src_key, &b, &k, replace.as_ref(), check)
            })
            .await;
        match r {
            Ok(meta) => {
                let xml = s3::copy_xml(&meta.etag(), &meta.last_modified_iso());
                self.xml_ok(head, bucket, key, &xml, start).await
            }
            Err(e) => self.error(head, bucket, key, e, start).await,
        }
    }

    /// UploadPartCopy: part `part` of upload `id` on `key` becomes `range` of the
    /// source (read access needed, as for CopyObject), copied and hashed on the
    /// blocking pool.
    async fn part_copy(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        spec: s3::CopySpec<'_>,
        range: Option<(u64, u64)>,
        (bucket, key, id, part): (&str, &str, &str, u32),
        start: Instant,
    ) -> Result<bool, End> {
        // A part may come from the upload's own key (how tools change the metadata of
        // a large object in place): not the "copy onto itself" CopyObject refuses.
        let (src_bucket, src_key) = match self
            .copy_source(head, &spec, bucket, key, true, start)
            .await
        {
            Ok(x) => x,
            Err(answered) => return answered,
        };
        let check = source_preconditions(&spec.conditions);
        let max_len = self
            .gen
            .config
            .server
            .max_object_size
            .min(s3::MAX_PART_SIZE);
        let (b, k, id, owner) = (
            bucket.to_owned(),
            key.to_owned(),
            id.to_owned(),
            self.owner(),
        );
        let r = self
            .blocking(store, move |st| {
                let src = (src_bucket.as_str(), src_key.as_str(), range);
                st.upload_part_copy(src, (&b, &k, &id, &owner), (part, max_len), check)
            })
            .await;
        match r {
            Ok((etag, modified)) => {
                let xml = s3::copy_part_xml(&format!("\"{etag}\""), &modified);
                self.xml_ok(head, bucket, key, &xml, start).await
            }
            Err(e) => self.error(head, bucket, key, e, start).await,
        }
    }

    /// A copy's source, shared by both backends: a valid path, read access for this
    /// identity (rule and token, as for the destination), not the destination itself.
    /// `Err` carries the answer already given.
    async fn copy_source(
        &mut self,
        head: &RequestHead,
        spec: &s3::CopySpec<'_>,
        bucket: &str,
        key: &str,
        onto_itself: bool,
        start: Instant,
    ) -> Result<(String, String), Result<bool, End>> {
        let src = format!("/{}/{}", spec.bucket, spec.key);
        let (src_bucket, src_key) = match store::split_path(&src) {
            Ok((b, Some(k))) => (b.to_owned(), k.to_owned()),
            Ok((_, None)) => {
                let e = s3::Error::msg(Code::InvalidArgument, "x-amz-copy-source must name a key");
                return Err(self.error(head, bucket, key, e, start).await);
            }
            Err(e) => {
                let e = store::key_error(&e);
                return Err(self.error(head, bucket, key, e, start).await);
            }
        };
        // The destination's write was checked with the request; the source needs read.
        if let Decision::Denied { reason } =
            self.gen
                .authz
                .check(&self.identity, &src_bucket, Access::Read)
        {
            let e = s3::Error::new(Code::AccessDenied).detail(format!("copy source: {reason}"));
            return Err(self.error(head, bucket, key, e, start).await);
        }
        // And the bearer token, when [tokens] is set, must grant read on the source
        // as well: both must allow, for the source as for the destination.
        if let Some(gate) = self.gen.tokens.as_deref() {
            if let Err(r) = token_verdict(
                gate,
                &mut self.token_cache,
                head,
                &self.identity.thumbprint,
                &src_bucket,
                Access::Read,
                unix_secs(),
            ) {
                return Err(self.token_refused(head, bucket, key, r, start).await);
            }
        }
        if !onto_itself && src_bucket == bucket && src_key == key && spec.replace.is_none() {
            let e = s3::Error::msg(
                Code::InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
            );
            return Err(self.error(head, bucket, key, e, start).await);
        }
        Ok((src_bucket, src_key))
    }

    /// Check a whole in-memory body against the checksums its head carries.
    fn verify_small_body(spec: &PutSpec, body: &[u8]) -> Result<(), s3::Error> {
        let (md5, crc32, sha1) = spec.wants();
        let mut h = BodyHasher::with(md5, crc32, sha1);
        h.update(body);
        let d = h.finish();
        spec.verify(body.len() as u64, &d.as_body(), b"")
    }

    async fn delete_objects(
        &mut self,
        store: &Arc<Store>,
        head: &RequestHead,
        spec: &PutSpec,
        bucket: &str,
        start: Instant,
    ) -> Result<bool, End> {
        let body = match self.read_small_body(head, s3::MAX_DELETE_BODY).await {
            Ok(b) => b,
            Err(e) => return self.body_failed(head, bucket, "", e, start).await,
        };
        if let Err(e) = Self::verify_small_body(spec, &body) {
            return self.error(head, bucket, "", e, start).await;
        }
        let req = match s3::parse_delete(&body) {
            Ok(r) => r,
            Err(e) => return self.error(head, bucket, "", e, start).await,
        };
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        // Checked here, deleted on the blocking pool in one job (each delete may fsync
        // its folder), answered in the request's order.
        let mut checked = Vec::with_capacity(req.objects.len());
        for (key, version) in req.objects {
            if version.is_some() {
                checked.push((key, Err(s3::Error::not_implemented("VersionId"))));
                continue;
            }
            if let Err(e) = store::validate_key(&key) {
                let e = store::key_error(&e);
                checked.push((key, Err(e)));
                continue;
            }
            // Per key, as S3 does; the rules decide by bucket today, the store by file.
            if let Decision::Denied { reason } =
                self.gen.authz.check(&self.identity, bucket, Access::Delete)
            {
                tracing::info!(request_id = %self.rid, identity = self.identity.name(), bucket, key, reason, "DeleteObjects key refused");
                checked.push((key, Err(s3::Error::new(Code::AccessDenied))));
                continue;
            }
            checked.push((key, Ok(())));
        }
        let outcomes = match self.delete_many_off_loop(store, bucket, checked).await {
            Ok(o) => o,
            Err(e) => return self.error(head, bucket, "", e, start).await,
        };
        for (key, outcome) in outcomes {
            let result = match outcome {
                Ok(r) => r,
                Err(e) => {
                    errors.push((key, e));
                    continue;
                }
            };
            match result {
                Ok(()) => deleted.push(key),
                // S3 reports a key that was not there as deleted.
                Err(e) if store::fault_of(&e) == s3::Fault::NotFound => deleted.push(key),
                Err(e) => {
                    let fault = store::fault_of(&e);
                    self.w.stats.store_errors[fault.index()].inc();
                    tracing::info!(request_id = %self.rid, identity = self.identity.name(), bucket, key, error = %e, fault = fault.as_str(), "DeleteObjects key failed");
                    errors.push((key, s3::Error::new(fault.code(Code::NoSuchKey))));
                }
            }
        }
        let xml = s3::delete_xml(&deleted, &errors, req.quiet);
        tracing::info!(request_id = %self.rid, identity = self.identity.name(), bucket, deleted = deleted.len(), errors = errors.len(), "DeleteObjects");
        self.xml_ok(head, bucket, "", &xml, start).await
    }

    /// Decode the body from decrypted records and write it at increasing offsets. The
    /// write of one buffer's data overlaps the read and decryption of the next (two
    /// buffers per upload), so the socket and the disk work at once; when the disk is
    /// slower, the next read waits for it, and TCP pushes back on the client. With
    /// `inner` (aws-chunked), the object's bytes are decoded out of the HTTP body's in
    /// place, the same way chunked framing is.
    async fn receive_body(
        &mut self,
        head: &RequestHead,
        inner: &mut Option<BodyDecoder>,
        sink: &mut Sink<'_>,
        hasher: &mut BodyHasher,
        max: u64,
    ) -> Result<u64, BodyError> {
        let mut gather = Gather::new(BodyDecoder::for_request(head));
        let mut off = 0u64;
        loop {
            // This buffer's body bytes, gathered into one contiguous region.
            let Gathered { region, done } = gather
                .gather(
                    inner.as_mut(),
                    &mut self.plain.buf,
                    &mut self.pstart,
                    self.plain.filled,
                    |b| hasher.update(b),
                )
                .map_err(|f| BodyError::Refuse(s3::Error::from(&f)))?;
            let Some(Range { start: s, end: e }) = region else {
                if done {
                    self.body_read = true;
                    return Ok(off);
                }
                self.need_more().await?;
                continue;
            };
            let len = (e - s) as u64;
            if off + len > max {
                return Err(BodyError::Refuse(
                    s3::Error::new(Code::EntityTooLarge).detail("body over max_object_size"),
                ));
            }
            // Hand this buffer to the write; bytes after the body region (framing of the
            // next chunk, or the next pipelined request) move to a fresh buffer.
            let full = body::hand_over(
                &mut self.plain.buf,
                &mut self.pstart,
                &mut self.plain.filled,
                self.w.pool.take(),
            );
            if let Sink::Upstream { total, .. } | Sink::Nothing { total } = sink {
                if off + len > *total {
                    return Err(BodyError::Refuse(
                        s3::Error::new(Code::IncompleteBody)
                            .detail(format_args!("body longer than the {total} bytes announced")),
                    ));
                }
            }
            let write = sink.write(full, s, e, off);
            let (wres, more) = if done {
                (write.await, Ok(()))
            } else {
                tokio::join!(write, self.need_more())
            };
            let (r, buf) = wres;
            self.w.pool.give(buf);
            if let Err(err) = r {
                let e = match sink {
                    Sink::File(_) => store::io_error(&err, Code::InternalError),
                    Sink::Upstream { .. } | Sink::Nothing { .. } => {
                        s3::Error::new(Code::BadGateway)
                    }
                };
                return Err(BodyError::Refuse(e.detail(format_args!("write: {err}"))));
            }
            off += len;
            more?;
            if done {
                self.body_read = true;
                return Ok(off);
            }
        }
    }

    /// Read more of a body; a close before its end is a truncated upload, and a body
    /// slower than `min_body_rate` is refused with 408.
    async fn need_more(&mut self) -> Result<(), BodyError> {
        if self.peer_closed {
            return Err(BodyError::Client(Close::TruncatedBodyCloseNotify));
        }
        if let Err(e) = self.hold_inflight() {
            return Err(BodyError::Refuse(e));
        }
        if self.cycle.before_body_read(Instant::now()).is_err() {
            return Err(BodyError::Refuse(self.too_slow()));
        }
        let r = self.fill().await;
        self.cycle.after_body_read(Instant::now());
        match r {
            Ok(()) => Ok(()),
            Err(Close::ClientEof) => Err(BodyError::Client(Close::TruncatedBodyEof)),
            Err(Close::BodyTooSlow) => Err(BodyError::Refuse(self.too_slow())),
            Err(e) => Err(BodyError::Client(e)),
        }
    }

    fn too_slow(&self) -> s3::Error {
        let detail = match self.gen.config.server.min_body_rate {
            Some(m) => format!(
                "body slower than min_body_rate ({} bytes per {:?})",
                m.bytes, m.window
            ),
            None => "body too slow".to_owned(),
        };
        s3::Error::new(Code::RequestTimeout).detail(detail)
    }
}

/// Bytes per file read of a large GET ([`Conn::stream_file`]).
const FILE_READ: usize = 256 * 1024;

/// Plaintext per encrypt-and-send of a GET: what a pool buffer holds as records.
const FLUSH: usize = 64 * 1024;

/// Where a request body goes: a file at increasing offsets (store), or an upstream
/// connection (s3). The upstream's last body byte is held back until the body's
/// checksums are verified: a body that fails them never completes upstream, because
/// the connection is dropped one byte short of its Content-Length.
enum Sink<'a> {
    File(&'a compio::fs::File),
    Upstream {
        tcp: &'a compio::net::TcpStream,
        /// The Content-Length sent upstream.
        total: u64,
        /// The last byte, once the write that would have sent it is done.
        held: Option<u8>,
    },
    /// An empty body read before its (bodiless) upstream request is sent; data is
    /// refused by the length check.
    Nothing {
        total: u64,
    },
}

impl Sink<'_> {
    /// Write `buf[s..e]` (the body bytes at `off`); the buffer comes back.
    async fn write(
        &mut self,
        buf: Vec<u8>,
        s: usize,
        e: usize,
        off: u64,
    ) -> (std::io::Result<()>, Vec<u8>) {
        match self {
            Sink::File(f) => {
                let (r, slice) = f.write_all_at(buf.slice(s..e), off).await;
                (r, slice.into_inner())
            }
            Sink::Nothing { .. } => (Ok(()), buf),
            Sink::Upstream { tcp, total, held } => {
                let mut e = e;
                if off + (e - s) as u64 == *total && e > s {
                    e -= 1;
                    *held = Some(buf[e]);
                }
                if e == s {
                    return (Ok(()), buf);
                }
                let (r, slice) = tcp.write_all(buf.slice(s..e)).await;
                (r, slice.into_inner())
            }
        }
    }
}

enum BodyError {
    /// The client went away or broke TLS: no response possible.
    Client(End),
    /// Refuse with this error, then close.
    Refuse(s3::Error),
}

/// A copy's `x-amz-copy-source-if-*` preconditions, owned so they can be judged on the
/// blocking pool against the source's metadata as it is opened (any failure is 412).
fn source_preconditions(
    c: &Conditions<'_>,
) -> impl FnOnce(&store::ObjectMeta) -> Result<(), s3::Error> + Send + 'static {
    let own = |v: Option<&str>| v.map(str::to_owned);
    let [m, n, ims, ius] = [
        own(c.if_match),
        own(c.if_none_match),
        own(c.if_modified_since),
        own(c.if_unmodified_since),
    ];
    move |meta| {
        let c = Conditions {
            if_match: m.as_deref(),
            if_none_match: n.as_deref(),
            if_modified_since: ims.as_deref(),
            if_unmodified_since: ius.as_deref(),
        };
        match c.evaluate(&meta.etag(), meta.mtime_secs()) {
            s3::Precondition::Proceed => Ok(()),
            _ => Err(s3::Error::new(Code::PreconditionFailed)
                .detail("x-amz-copy-source-if-* on the source")),
        }
    }
}
