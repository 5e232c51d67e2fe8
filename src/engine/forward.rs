//! The forward backend's relay: plaintext between the mTLS client and a local upstream
//! (TCP or unix), both directions at once, with half-close carried across and bounded
//! buffering (each direction holds at most one buffer in flight, so a slow side stops
//! the other from reading: backpressure by construction).

use std::cell::{Cell, RefCell};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use tokio_uring::buf::BoundedBuf;

use super::driver::{ConnLog, Established};
use super::io::{read_idle, Stream, WaitError};
use super::io::{unix_now, unix_secs, until_unix};
use super::shared::Generation;
use super::worker::Worker;
use crate::config::{Backend, ProxyProtocol, Upstream};
use crate::proto::proxy_v2;
use crate::session::Close;
use crate::tls::conn::{OutBuf, TlsConn};
use crate::tls::identity::Identity;
use crate::tls::policy::FailReason;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;

/// Relay until both directions are done; returns the close reason for the log.
pub async fn relay(
    w: &Rc<Worker>,
    gen: &Arc<Generation>,
    client: Stream,
    peer: SocketAddr,
    est: Established,
    log: &ConnLog,
) -> Close {
    let Backend::Forward {
        upstream,
        proxy_protocol,
        proxy_protocol_client_cert,
    } = &gen.config.backend
    else {
        return Close::NoBackend;
    };
    let Established {
        mut tls,
        inb,
        used,
        mut plain,
        mut out,
        identity,
        session,
        chain,
        accepted,
        valid_until,
    } = est;

    let up = match connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            w.stats.upstream_errors.inc();
            tracing::warn!(worker = w.id, %peer, identity = identity.name(), upstream = ?upstream, error = %e, "upstream unreachable");
            out.clear();
            if tls.close_notify(&mut out).is_ok() {
                let n = out.filled;
                let _ = client.write_all(out.buf.slice(..n)).await;
            }
            client.shutdown(Shutdown::Both);
            return Close::UpstreamUnreachable;
        }
    };

    // Prefix: the PROXY v2 header, then any plaintext that came with the handshake.
    let mut prefix = Vec::new();
    if let Some(ProxyProtocol::V2) = proxy_protocol {
        let local = match &client {
            Stream::Tcp(s) => socket_local_addr(s).unwrap_or(peer),
            Stream::Unix(_) => peer,
        };
        let leaf = tls
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref());
        let header = proxy_v2::Header {
            src: peer,
            dst: local,
            tls: Some(proxy_v2::TlsInfo {
                version: session.version,
                cipher: &session.suite,
                cn: identity.cn.as_deref(),
                spiffe: identity.spiffe.as_deref(),
                client_cert: if *proxy_protocol_client_cert {
                    leaf
                } else {
                    None
                },
                verified: true,
            }),
        };
        if let Err(e) = proxy_v2::encode(&header, &mut prefix) {
            tracing::warn!(worker = w.id, %peer, error = %e, "PROXY header not encodable");
            return Close::ProxyHeader;
        }
    }
    prefix.extend_from_slice(plain.as_slice());
    plain.clear();
    if !prefix.is_empty() {
        let (res, _) = up.write_all(prefix).await;
        if res.is_err() {
            client.shutdown(Shutdown::Both);
            return Close::UpstreamPrefixWrite;
        }
    }

    let ctx = Relay {
        w,
        idle: gen.config.server.idle_timeout,
        last: Cell::new(Instant::now()),
        tls: RefCell::new(tls),
        client,
        up,
        log,
    };
    let ub = w.pool.take();
    // Both directions take their write-side buffer from the pool when data arrives.
    w.pool.give(std::mem::take(&mut out.buf));
    w.pool.give(std::mem::take(&mut plain.buf));
    let done = tokio::sync::Notify::new();
    let both = async {
        let r = tokio::join!(
            ctx.client_to_upstream(inb, used, plain),
            ctx.upstream_to_client(ub, out)
        );
        done.notify_one();
        r
    };
    let limits = Limits {
        gen,
        valid_until,
        chain: &chain,
        identity: &identity,
        accepted,
        max_age: gen.config.server.max_connection_age,
    };
    let ((a, b), cut) = tokio::join!(both, ctx.guard(&limits, &done));
    if let Some(why) = cut {
        w.stats.policy_close(why);
        tracing::warn!(
            worker = w.id, %peer, identity = identity.name(),
            reason = why.map_or("max_connection_age", FailReason::as_str),
            "relay closed with close_notify: the running policy no longer admits it"
        );
        return Close::Policy(why);
    }
    let reason = match (a, b) {
        (Ok(()), Ok(())) => Close::Closed,
        (Err(e), _) | (_, Err(e)) => e,
    };
    if !reason.is_clean() {
        ctx.client.shutdown(Shutdown::Both);
        ctx.up.shutdown(Shutdown::Both);
    }
    reason
}

fn socket_local_addr(s: &tokio_uring::net::TcpStream) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is owned by `s`, which outlives this borrow; SockRef only reads
    // socket options through it and never closes it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(s.as_raw_fd()) };
    socket2::SockRef::from(&fd).local_addr().ok()?.as_socket()
}

async fn connect(u: &Upstream) -> std::io::Result<Stream> {
    Ok(match u {
        Upstream::Tcp(a) => {
            let s = tokio_uring::net::TcpStream::connect(*a).await?;
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }
        Upstream::Unix(p) => Stream::Unix(tokio_uring::net::UnixStream::connect(p).await?),
    })
}

/// What a relay is held to while it runs.
struct Limits<'a> {
    /// The generation the relay was admitted under.
    gen: &'a Arc<Generation>,
    /// Unix seconds until which that admission holds without a new judgement.
    valid_until: i64,
    chain: &'a [CertificateDer<'static>],
    identity: &'a Identity,
    accepted: Instant,
    max_age: Option<Duration>,
}

/// A read shorter than one full TLS record: the peer is not streaming, so the write-side
/// buffer goes back to the pool between messages.
const TRICKLE: usize = 16 * 1024;

struct Relay<'a> {
    w: &'a Rc<Worker>,
    idle: std::time::Duration,
    last: Cell<Instant>,
    /// Both directions use the TLS state, never across an await: the borrow is taken
    /// for the synchronous decrypt or encrypt step only.
    tls: RefCell<TlsConn>,
    client: Stream,
    up: Stream,
    log: &'a ConnLog,
}

type Dir = Result<(), Close>;

impl Relay<'_> {
    /// Watches a running relay: re-judges it whenever the worker sees a new generation
    /// (reload, CRL refresh), and again when its admission runs out by time (a
    /// certificate in the chain expires, or, under `crl_stale = "refuse"`, a CRL goes
    /// stale), and ends it at `max_connection_age`. Ends the relay the way an idle
    /// timeout does (the upstream side sends close_notify). `None` once the relay ended
    /// by itself; otherwise `Some(reason)`, where `None` inside is the age limit.
    async fn guard(
        &self,
        limits: &Limits<'_>,
        done: &tokio::sync::Notify,
    ) -> Option<Option<FailReason>> {
        let mut gens = self.w.generation.clone();
        gens.borrow_and_update();
        let mut gen = limits.gen.clone();
        let mut until = limits.valid_until;
        let aged = limits.max_age.map(|age| limits.accepted + age);
        let why = loop {
            let due = Instant::now() + until_unix(until);
            let deadline = aged.map_or(due, |a| a.min(due));
            tokio::select! {
                _ = done.notified() => return None,
                changed = gens.changed() => {
                    if changed.is_err() {
                        // The worker is gone; the drain ends the relay.
                        done.notified().await;
                        return None;
                    }
                    gen = gens.borrow_and_update().clone();
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if aged.is_some_and(|a| Instant::now() >= a) {
                        break None;
                    }
                }
            }
            if let Err(r) = gen.still_admits(limits.chain, limits.identity, unix_now()) {
                break Some(r);
            }
            // Still admitted (a CRL was replaced in time, or the second of expiry has
            // not passed): wait for the next change, at least a second on.
            until = gen.valid_until(limits.chain).max(unix_secs() + 1);
        };
        self.client.shutdown(Shutdown::Read);
        self.up.shutdown(Shutdown::Read);
        done.notified().await;
        Some(why)
    }

    /// A hard failure in one direction ends the other too: shutting both sockets wakes
    /// its pending read. A truncated client (EOF without close_notify) is passed on as a
    /// half-close instead, like a TCP proxy would.
    fn on_end(&self, r: Dir) -> Dir {
        match r {
            Err(Close::ClientEofWithoutCloseNotify) | Ok(()) => {}
            Err(Close::IdleTimeout) => {
                // Wake both readers with EOF: the upstream side then ends the way a
                // closing upstream does, with close_notify to the client.
                self.client.shutdown(Shutdown::Read);
                self.up.shutdown(Shutdown::Read);
            }
            Err(_) => {
                self.client.shutdown(Shutdown::Both);
                self.up.shutdown(Shutdown::Both);
            }
        }
        r
    }

    /// Client records → decrypt in place → plaintext to upstream.
    async fn client_to_upstream(
        &self,
        mut inb: Vec<u8>,
        mut used: usize,
        mut plain: OutBuf,
    ) -> Dir {
        // Alerts rustls wants to send while reading (rare after the handshake) are
        // dropped into this buffer and discarded: the reader never writes to the client,
        // so the two directions never interleave partial records.
        let mut scratch = OutBuf::with_capacity(0);
        if self.tls.borrow().peer_closed() {
            // close_notify came in the same flight as the handshake: the client has
            // said all it will say; pass the half-close on at once.
            self.up.shutdown(Shutdown::Write);
            self.w.pool.give(inb);
            self.w.pool.give(plain.buf);
            return Ok(());
        }
        // After a short read (or at the start) the client is between bursts: wait for
        // its next bytes holding no buffer, so an idle relay holds none.
        let mut quiet = true;
        let result = loop {
            if quiet && used == 0 {
                self.w.pool.give(std::mem::take(&mut inb));
                let ready = read_idle(
                    async { (self.client.readable().await.map(|()| 0), ()) },
                    &self.last,
                    self.idle,
                    None,
                )
                .await;
                match ready {
                    Ok(_) => {}
                    Err((WaitError::Idle, _)) => return self.on_end(Err(Close::IdleTimeout)),
                    Err(_) => return self.on_end(Err(Close::ClientReadError)),
                }
                inb = self.w.pool.take();
            }
            if used == inb.len() {
                break Err(Close::RecordTooLarge);
            }
            let cap = inb.len();
            let (n, slice) = match read_idle(
                self.client.read(inb.slice(used..cap)),
                &self.last,
                self.idle,
                None,
            )
            .await
            {
                Ok(x) => x,
                Err((WaitError::Idle, _)) => return self.on_end(Err(Close::IdleTimeout)),
                Err((WaitError::Io(_) | WaitError::Draining, _)) => {
                    return self.on_end(Err(Close::ClientReadError))
                }
            };
            inb = slice.into_inner();
            if n == 0 {
                // EOF without close_notify: the client may have been cut off. Pass the
                // half-close on (as a TCP proxy would) but record it as truncated.
                self.up.shutdown(Shutdown::Write);
                break Err(Close::ClientEofWithoutCloseNotify);
            }
            self.last.set(Instant::now());
            used += n;
            self.log.bytes_in.set(self.log.bytes_in.get() + n as u64);
            self.w.stats.bytes_received.add(n as u64);
            // The plaintext buffer is held only while it carries data: an idle
            // connection keeps just its two pending read buffers (memory per idle
            // connection). A pool pop, not an allocation.
            if plain.buf.is_empty() {
                plain = OutBuf::from_vec(self.w.pool.take());
            }
            let p = {
                let mut tls = self.tls.borrow_mut();
                match tls.handle_received(&mut inb[..used], &mut scratch, &mut plain) {
                    Ok(p) => p,
                    Err(_) => break Err(Close::TlsFromClient),
                }
            };
            inb.copy_within(p.consumed..used, 0);
            used -= p.consumed;
            if !plain.is_empty() {
                let len = plain.filled;
                let write = self.up.write_all(plain.buf.slice(..len));
                let (res, slice) = match tokio::time::timeout(self.idle, write).await {
                    Ok(x) => x,
                    Err(_) => return self.on_end(Err(Close::UpstreamWriteTimeout)),
                };
                plain.buf = slice.into_inner();
                plain.clear();
                if res.is_err() {
                    break Err(Close::UpstreamWriteError);
                }
                self.last.set(Instant::now());
            }
            // A read of less than a full record means the client is not streaming:
            // give the buffer back so an idle connection holds none. A streaming one
            // keeps it, so a busy worker never churns the pool (or allocates when it
            // runs dry) once per record.
            quiet = n < TRICKLE;
            if quiet {
                self.w.pool.give(std::mem::take(&mut plain.buf));
            }
            if p.peer_closed {
                self.up.shutdown(Shutdown::Write);
                break Ok(());
            }
        };
        self.w.pool.give(inb);
        self.w.pool.give(plain.buf);
        self.on_end(result)
    }

    /// Upstream plaintext → encrypt → client; upstream EOF → close_notify.
    async fn upstream_to_client(&self, mut ub: Vec<u8>, mut out: OutBuf) -> Dir {
        // As the other direction: between bursts, wait for the upstream holding no buffer.
        let mut quiet = true;
        let result = loop {
            if quiet {
                self.w.pool.give(std::mem::take(&mut ub));
                let ready = read_idle(
                    async { (self.up.readable().await.map(|()| 0), ()) },
                    &self.last,
                    self.idle,
                    None,
                )
                .await;
                ub = self.w.pool.take();
                if let Err((WaitError::Io(_) | WaitError::Draining, _)) = ready {
                    return self.on_end(Err(Close::UpstreamReadError));
                }
                // Idle: the read below sees the same timer and says goodbye properly.
            }
            let cap = ub.len().min(super::pool::BUF_SIZE);
            let (n, slice) =
                match read_idle(self.up.read(ub.slice(..cap)), &self.last, self.idle, None).await {
                    Ok(x) => x,
                    Err((WaitError::Idle, _)) => {
                        // Say goodbye properly: close_notify, then end both directions.
                        if out.buf.is_empty() {
                            out = OutBuf::from_vec(self.w.pool.take());
                        }
                        out.clear();
                        if self.tls.borrow_mut().close_notify(&mut out).is_ok() {
                            let len = out.filled;
                            let write = self.client.write_all(out.buf.slice(..len));
                            let _ = tokio::time::timeout(self.idle, write).await;
                        }
                        return self.on_end(Err(Close::IdleTimeout));
                    }
                    Err((WaitError::Io(_) | WaitError::Draining, _)) => {
                        return self.on_end(Err(Close::UpstreamReadError))
                    }
                };
            ub = slice.into_inner();
            if out.buf.is_empty() {
                out = OutBuf::from_vec(self.w.pool.take());
            }
            out.clear();
            {
                let mut tls = self.tls.borrow_mut();
                let r = if n == 0 {
                    tls.close_notify(&mut out)
                } else {
                    tls.encrypt(&ub[..n], &mut out)
                };
                if r.is_err() {
                    break Err(Close::TlsEncrypt);
                }
            }
            self.last.set(Instant::now());
            let len = out.filled;
            // A client that stops reading is cut at the idle timeout; shutting the
            // socket completes the pending write.
            let write = self.client.write_all(out.buf.slice(..len));
            let (res, slice) = match tokio::time::timeout(self.idle, write).await {
                Ok(x) => x,
                Err(_) => return self.on_end(Err(Close::ClientWriteTimeout)),
            };
            out.buf = slice.into_inner();
            if res.is_err() {
                break Err(Close::ClientWriteError);
            }
            self.log
                .bytes_out
                .set(self.log.bytes_out.get() + len as u64);
            self.w.stats.bytes_sent.add(len as u64);
            // Released after a short read only, as the plaintext buffer upstream.
            quiet = n < TRICKLE;
            if quiet {
                self.w.pool.give(std::mem::take(&mut out.buf));
            }
            if n == 0 {
                self.client.shutdown(Shutdown::Write);
                break Ok(());
            }
        };
        self.w.pool.give(ub);
        self.w.pool.give(out.buf);
        self.on_end(result)
    }
}
