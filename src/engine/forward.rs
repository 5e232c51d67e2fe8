//! The forward backend's relay: plaintext between the mTLS client and a local upstream
//! (TCP or unix), both directions at once, with half-close carried across and bounded
//! buffering (each direction holds at most one buffer in flight, so a slow side stops
//! the other from reading: backpressure by construction).

use std::cell::RefCell;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use compio::buf::{IntoInner, IoBuf};

use super::conn::{ConnLog, Established};
use super::ctx::Worker;
use super::io::{read_until, unix_now, unix_secs, Stream, WaitError};
use super::ring::Budget;
use super::shared::Generation;
use crate::config::{Backend, ProxyProtocol, Upstream};
use crate::proto::proxy_v2;
use crate::session::admission::Admission;
use crate::session::relay::{self, Dir};
use crate::session::Close;
use crate::tls::conn::{OutBuf, TlsConn};
use crate::tls::identity::Identity;
use crate::tls::policy::FailReason;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;

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

    // Boxed while it runs: the connect's and the prefix write's futures would
    // otherwise size every relay task for good, idle ones included (memory per
    // connection).
    let opened = Box::pin(open_upstream(
        w,
        upstream,
        &client,
        peer,
        Opening {
            tls: &mut tls,
            out: &mut out,
            plain: &mut plain,
            identity: &identity,
            chain: &chain,
            session: &session,
            proxy_protocol: proxy_protocol.as_ref(),
            client_cert: *proxy_protocol_client_cert,
        },
    ))
    .await;
    let up = match opened {
        Ok(up) => up,
        Err(close) => return close,
    };

    let ctx = Shell {
        w,
        m: RefCell::new(relay::Relay::new(
            gen.config.server.idle_timeout,
            Instant::now(),
        )),
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
        tokio::join!(
            ctx.client_to_upstream(inb, used, plain),
            ctx.upstream_to_client(ub, out)
        );
        done.notify_one();
    };
    let limits = Limits {
        gen,
        chain: &chain,
        identity: &identity,
        admission: Admission::new(accepted, gen.config.server.max_connection_age, valid_until),
    };
    tokio::join!(both, ctx.guard(&limits, &done));
    let (reason, actions) = ctx.m.borrow().finish();
    if let Close::Policy(why) = reason {
        tracing::warn!(
            worker = w.id, %peer, identity = identity.name(),
            reason = why.map_or("max_connection_age", FailReason::as_str),
            "relay closed with close_notify: the running policy no longer admits it"
        );
    }
    ctx.shut(actions);
    reason
}

/// What the relay lends [`open_upstream`].
struct Opening<'a> {
    tls: &'a mut TlsConn,
    out: &'a mut OutBuf,
    plain: &'a mut OutBuf,
    identity: &'a Identity,
    /// The verified client chain, leaf first.
    chain: &'a [CertificateDer<'static>],
    session: &'a crate::tls::conn::SessionInfo,
    proxy_protocol: Option<&'a ProxyProtocol>,
    client_cert: bool,
}

/// Connect upstream and send the prefix (the PROXY v2 header, then any plaintext that
/// came with the handshake). On failure the client has been told and shut down.
async fn open_upstream(
    w: &Rc<Worker>,
    upstream: &Upstream,
    client: &Stream,
    peer: SocketAddr,
    o: Opening<'_>,
) -> Result<Stream, Close> {
    let up = match connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            w.stats.upstream_errors.inc();
            tracing::warn!(worker = w.id, %peer, identity = o.identity.name(), upstream = ?upstream, error = %e, "upstream unreachable");
            o.out.clear();
            if o.tls.close_notify(o.out).is_ok() {
                let n = o.out.filled;
                let _ = client
                    .write_all(std::mem::take(&mut o.out.buf).slice(..n))
                    .await;
            }
            client.shutdown(Shutdown::Both);
            return Err(Close::UpstreamUnreachable);
        }
    };

    // Prefix: the PROXY v2 header, then any plaintext that came with the handshake.
    let mut prefix = Vec::new();
    if let Some(ProxyProtocol::V2) = o.proxy_protocol {
        let local = match &client {
            Stream::Tcp(s) => socket_local_addr(s).unwrap_or(peer),
            Stream::Unix(_) => peer,
        };
        let leaf = o.chain.first().map(|c| c.as_ref());
        let header = proxy_v2::Header {
            src: peer,
            dst: local,
            tls: Some(proxy_v2::TlsInfo {
                version: o.session.version,
                cipher: &o.session.suite,
                cn: o.identity.cn.as_deref(),
                spiffe: o.identity.spiffe.as_deref(),
                client_cert: if o.client_cert { leaf } else { None },
                verified: true,
            }),
        };
        if let Err(e) = proxy_v2::encode(&header, &mut prefix) {
            tracing::warn!(worker = w.id, %peer, error = %e, "PROXY header not encodable");
            return Err(Close::ProxyHeader);
        }
    }
    prefix.extend_from_slice(o.plain.as_slice());
    o.plain.clear();
    if !prefix.is_empty() {
        let (res, _) = up.write_all(prefix).await;
        if res.is_err() {
            client.shutdown(Shutdown::Both);
            return Err(Close::UpstreamPrefixWrite);
        }
    }

    Ok(up)
}

fn socket_local_addr(s: &compio::net::TcpStream) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is owned by `s`, which outlives this borrow; SockRef only reads
    // socket options through it and never closes it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(s.as_raw_fd()) };
    socket2::SockRef::from(&fd).local_addr().ok()?.as_socket()
}

async fn connect(u: &Upstream) -> std::io::Result<Stream> {
    Ok(match u {
        Upstream::Tcp(a) => {
            let s = compio::net::TcpStream::connect(*a).await?;
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }
        Upstream::Unix(p) => Stream::Unix(compio::net::UnixStream::connect(p).await?),
    })
}

/// What a relay is held to while it runs.
struct Limits<'a> {
    /// The generation the relay was admitted under.
    gen: &'a Arc<Generation>,
    chain: &'a [CertificateDer<'static>],
    identity: &'a Identity,
    /// Until when that admission holds, and the connection's age limit.
    admission: Admission,
}

/// The relay's I/O: the sockets, the TLS state and the pool. What happens at each
/// end, at idle and at a policy cut is the machine's ([`relay::Relay`]) call.
struct Shell<'a> {
    w: &'a Rc<Worker>,
    /// Both directions use the machine and the TLS state, never across an await:
    /// each borrow is taken for one synchronous step only.
    m: RefCell<relay::Relay>,
    tls: RefCell<TlsConn>,
    client: Stream,
    up: Stream,
    log: &'a ConnLog,
}

impl Shell<'_> {
    /// Watches a running relay: re-judges it whenever the worker sees a new generation
    /// (reload, CRL refresh), and again when its admission runs out by time (a
    /// certificate in the chain expires, or, under `crl_stale = "refuse"`, a CRL goes
    /// stale), and ends it at `max_connection_age`, through the machine (both reads
    /// shut; the upstream side then sends close_notify). Returns once the relay ended.
    async fn guard(&self, limits: &Limits<'_>, done: &tokio::sync::Notify) {
        let mut gens = self.w.generation.clone();
        gens.borrow_and_update();
        let mut gen = limits.gen.clone();
        let mut admission = limits.admission;
        let why = loop {
            let deadline = admission.poll_timeout(Instant::now(), unix_secs());
            tokio::select! {
                _ = done.notified() => return,
                changed = gens.changed() => {
                    if changed.is_err() {
                        // The worker is gone; the drain ends the relay.
                        done.notified().await;
                        return;
                    }
                    gen = gens.borrow_and_update().clone();
                }
                _ = compio::time::sleep_until(deadline) => {
                    if admission.aged(Instant::now()) {
                        break None;
                    }
                }
            }
            if let Err(r) = gen.still_admits(limits.chain, limits.identity, unix_now()) {
                break Some(r);
            }
            // Still admitted (a CRL was replaced in time, or the second of expiry has
            // not passed): wait for the next change, under the running policy's age.
            admission.readmitted(gen.valid_until(limits.chain), unix_secs());
            admission.set_max_age(gen.config.server.max_connection_age);
        };
        let a = self.m.borrow_mut().on_policy_cut(why);
        // Counted before the close_notify can leave, so that a scrape made once the
        // client has seen it shows the cut (a policy cut always decides the close
        // reason: `Relay::finish`).
        self.w.stats.policy_close(why);
        self.shut(a);
        done.notified().await;
    }

    /// Execute the shutdowns of `a` (its close_notify is the caller's to send).
    fn shut(&self, a: relay::Actions) {
        if let Some(how) = a.client {
            self.client.shutdown(how);
        }
        if let Some(how) = a.upstream {
            self.up.shutdown(how);
        }
    }

    /// `dir` failed: tell the machine and do what it says.
    fn fail(&self, dir: Dir, why: Close) {
        let a = self.m.borrow_mut().on_failed(dir, why);
        self.shut(a);
    }

    /// Wait for `fut` (a read) until the relay is idle.
    async fn wait<F, B>(&self, fut: F) -> Result<(usize, B), (WaitError, Option<B>)>
    where
        F: std::future::Future<Output = (std::io::Result<usize>, B)>,
    {
        read_until(fut, || self.m.borrow().poll_timeout(), None).await
    }

    /// Client records → decrypt in place → plaintext to upstream.
    async fn client_to_upstream(&self, mut inb: Vec<u8>, mut used: usize, mut plain: OutBuf) {
        const DIR: Dir = Dir::ClientToUpstream;
        // Alerts rustls wants to send while reading (rare after the handshake) are
        // dropped into this buffer and discarded: the reader never writes to the client,
        // so the two directions never interleave partial records.
        let mut scratch = OutBuf::with_capacity(0);
        if self.tls.borrow().peer_closed() {
            // close_notify came in the same flight as the handshake: the client has
            // said all it will say; pass the half-close on at once.
            let a = self.m.borrow_mut().on_client_close_notify();
            self.shut(a);
            self.w.pool.give(inb);
            self.w.pool.give(plain.buf);
            return;
        }
        // After a short read (or at the start) the client is between bursts: wait for
        // its next bytes holding no buffer, so an idle relay holds none.
        let mut quiet = true;
        // Err: a failure the machine has not heard of yet.
        let result: Result<(), Close> = loop {
            // A quiet client's next bytes come through the worker's buffer ring into
            // the start of a pool buffer taken when they are there; a partial record
            // it paused in is carried meanwhile (with the budget spent, the buffer is
            // kept and read into instead).
            let carry = if quiet {
                self.w.carry_partial(&inb[..used], Budget::Established)
            } else {
                None
            };
            let n = if let Some(carry) = carry {
                self.w.pool.give(std::mem::take(&mut inb));
                let at = carry.as_ref().map_or(0, |c| c.len());
                match self.wait(self.w.receive_after(&self.client, at)).await {
                    Ok((n, mut buf)) => {
                        // Empty at EOF: no buffer was taken. Otherwise the carried bytes
                        // go back at its start, which `used` still counts.
                        inb = if buf.is_empty() {
                            self.w.pool.take()
                        } else {
                            if let Some(c) = carry {
                                c.restore(&mut buf);
                            }
                            buf
                        };
                        n
                    }
                    Err((WaitError::Idle, _)) => {
                        let a = self.m.borrow_mut().on_idle(DIR);
                        return self.shut(a);
                    }
                    Err(_) => return self.fail(DIR, Close::ClientReadError),
                }
            } else {
                if used == inb.len() {
                    break Err(Close::RecordTooLarge);
                }
                let cap = inb.len();
                match self.wait(self.client.read(inb.slice(used..cap))).await {
                    Ok((n, slice)) => {
                        inb = slice.into_inner();
                        n
                    }
                    Err((WaitError::Idle, _)) => {
                        let a = self.m.borrow_mut().on_idle(DIR);
                        return self.shut(a);
                    }
                    Err((WaitError::Io(_) | WaitError::Draining, _)) => {
                        return self.fail(DIR, Close::ClientReadError)
                    }
                }
            };
            if n == 0 {
                let a = self.m.borrow_mut().on_client_eof();
                self.shut(a);
                break Ok(());
            }
            let keep = self.m.borrow_mut().on_read(DIR, n, Instant::now());
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
                let limit = self.m.borrow().write_timeout();
                let (res, slice) = match compio::time::timeout(limit, write).await {
                    Ok(x) => x,
                    Err(_) => return self.fail(DIR, Close::UpstreamWriteTimeout),
                };
                plain.buf = slice.into_inner();
                plain.clear();
                if res.is_err() {
                    break Err(Close::UpstreamWriteError);
                }
                self.m.borrow_mut().on_activity(Instant::now());
            }
            quiet = !keep;
            if quiet {
                self.w.pool.give(std::mem::take(&mut plain.buf));
            }
            if p.peer_closed {
                let a = self.m.borrow_mut().on_client_close_notify();
                self.shut(a);
                break Ok(());
            }
        };
        self.w.pool.give(inb);
        self.w.pool.give(plain.buf);
        if let Err(why) = result {
            self.fail(DIR, why);
        }
    }

    /// Upstream plaintext → client, TLS 1.3 on lakegate's own record layer: each read
    /// lands in the record slots of one buffer and is sealed there, so a byte is copied
    /// only by the kernel (in from the upstream, out to the client), never in user
    /// space. Upstream EOF → close_notify.
    async fn upstream_to_client_in_place(&self) {
        const DIR: Dir = Dir::UpstreamToClient;
        let mut buf = Vec::new();
        // As the copying path: between bursts, wait for the upstream holding no buffer.
        let mut quiet = true;
        // Err: a failure the machine has not heard of yet.
        let result: Result<(), Close> = loop {
            if quiet {
                if !buf.is_empty() {
                    self.w.pool.give_slotted(std::mem::take(&mut buf));
                }
                let ready = self
                    .wait(async { (self.up.readable().await.map(|()| 0), ()) })
                    .await;
                match ready {
                    Ok(_) => {}
                    Err((WaitError::Idle, _)) => {
                        return self
                            .idle_goodbye(OutBuf::from_vec(self.w.pool.take()))
                            .await
                    }
                    Err(_) => return self.fail(DIR, Close::UpstreamReadError),
                }
                buf = self.w.pool.take_slotted();
            }
            let n = match self
                .wait(self.up.read_slots(std::mem::take(&mut buf)))
                .await
            {
                Ok((n, back)) => {
                    buf = back;
                    n
                }
                Err((WaitError::Idle, _)) => {
                    // The read still owns its buffer until it completes.
                    return self
                        .idle_goodbye(OutBuf::from_vec(self.w.pool.take()))
                        .await;
                }
                Err((WaitError::Io(_) | WaitError::Draining, _)) => {
                    return self.fail(DIR, Close::UpstreamReadError)
                }
            };
            let (eof, keep) = self.upstream_read(n);
            let sealed = {
                let mut tls = self.tls.borrow_mut();
                match eof {
                    Some(a) if a.close_notify => {
                        // Into the buffer's front; its length stays the slots' length.
                        let mut out = OutBuf::from_vec(std::mem::take(&mut buf));
                        let r = tls.close_notify(&mut out);
                        let len = out.filled;
                        buf = out.buf;
                        r.map(|()| 0..len)
                    }
                    Some(_) => Ok(0..0),
                    None => tls.seal_slots(&mut buf, n),
                }
            };
            let Ok(range) = sealed else {
                break Err(Close::TlsEncrypt);
            };
            match self.to_client(std::mem::take(&mut buf), range).await {
                Ok(back) => buf = back,
                Err((why, back)) => {
                    buf = back;
                    break Err(why);
                }
            }
            quiet = !keep;
            if let Some(a) = eof {
                self.shut(a);
                break Ok(());
            }
        };
        self.w.pool.give_slotted(buf);
        if let Err(why) = result {
            self.fail(DIR, why);
        }
    }

    /// `n` bytes came from the upstream (0: its EOF). Tells the machine; returns what
    /// it says at EOF (close_notify, then the client's write side) and whether the
    /// read was long enough to keep the buffer for the next one.
    fn upstream_read(&self, n: usize) -> (Option<relay::Actions>, bool) {
        let mut m = self.m.borrow_mut();
        if n == 0 {
            let a = m.on_upstream_eof();
            m.on_activity(Instant::now());
            return (Some(a), false);
        }
        (None, m.on_read(Dir::UpstreamToClient, n, Instant::now()))
    }

    /// Write `buf[range]` to the client within the write timeout and count it; the
    /// buffer comes back (empty when the write timed out: the ring still holds it).
    async fn to_client(
        &self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<u8>, (Close, Vec<u8>)> {
        let len = range.len();
        let write = self.client.write_all(buf.slice(range));
        let limit = self.m.borrow().write_timeout();
        // A client that stops reading is cut here; the relay then shuts the socket,
        // which completes the pending write.
        let Ok((res, slice)) = compio::time::timeout(limit, write).await else {
            return Err((Close::ClientWriteTimeout, Vec::new()));
        };
        let buf = slice.into_inner();
        if res.is_err() {
            return Err((Close::ClientWriteError, buf));
        }
        self.log
            .bytes_out
            .set(self.log.bytes_out.get() + len as u64);
        self.w.stats.bytes_sent.add(len as u64);
        Ok(buf)
    }

    /// The upstream direction went idle: what the machine says, its close_notify
    /// included (written through `out`).
    async fn idle_goodbye(&self, mut out: OutBuf) {
        let a = self.m.borrow_mut().on_idle(Dir::UpstreamToClient);
        if a.close_notify {
            out.clear();
            if self.tls.borrow_mut().close_notify(&mut out).is_ok() {
                let len = out.filled;
                let write = self
                    .client
                    .write_all(std::mem::take(&mut out.buf).slice(..len));
                let limit = self.m.borrow().write_timeout();
                // The connection is going anyway: a goodbye that cannot be written
                // changes nothing.
                if let Ok((_, slice)) = compio::time::timeout(limit, write).await {
                    out.buf = slice.into_inner();
                }
            }
        }
        self.w.pool.give(out.buf);
        self.shut(a);
    }

    /// Upstream plaintext → encrypt → client; upstream EOF → close_notify.
    async fn upstream_to_client(&self, mut ub: Vec<u8>, mut out: OutBuf) {
        const DIR: Dir = Dir::UpstreamToClient;
        if self.tls.borrow().seals_in_place() {
            self.w.pool.give(ub);
            self.w.pool.give(out.buf);
            return self.upstream_to_client_in_place().await;
        }
        // As the other direction: between bursts, wait for the upstream holding no buffer.
        let mut quiet = true;
        // Err: a failure the machine has not heard of yet.
        let result: Result<(), Close> = loop {
            if quiet {
                self.w.pool.give(std::mem::take(&mut ub));
                let ready = self
                    .wait(async { (self.up.readable().await.map(|()| 0), ()) })
                    .await;
                ub = self.w.pool.take();
                if let Err((WaitError::Io(_) | WaitError::Draining, _)) = ready {
                    return self.fail(DIR, Close::UpstreamReadError);
                }
                // Idle: the read below sees the same timer and says goodbye properly.
            }
            let cap = ub.len().min(super::pool::BUF_SIZE);
            let (n, slice) = match self.wait(self.up.read(ub.slice(..cap))).await {
                Ok(x) => x,
                Err((WaitError::Idle, _)) => {
                    if out.buf.is_empty() {
                        out = OutBuf::from_vec(self.w.pool.take());
                    }
                    return self.idle_goodbye(out).await;
                }
                Err((WaitError::Io(_) | WaitError::Draining, _)) => {
                    return self.fail(DIR, Close::UpstreamReadError)
                }
            };
            ub = slice.into_inner();
            if out.buf.is_empty() {
                out = OutBuf::from_vec(self.w.pool.take());
            }
            out.clear();
            let (eof, keep) = self.upstream_read(n);
            {
                let mut tls = self.tls.borrow_mut();
                let r = match eof {
                    Some(a) if a.close_notify => tls.close_notify(&mut out),
                    Some(_) => Ok(()),
                    None => tls.encrypt(&ub[..n], &mut out),
                };
                if r.is_err() {
                    break Err(Close::TlsEncrypt);
                }
            }
            let len = out.filled;
            match self.to_client(std::mem::take(&mut out.buf), 0..len).await {
                Ok(back) => out.buf = back,
                Err((why, back)) => {
                    out.buf = back;
                    break Err(why);
                }
            }
            // Released after a short read only, as the plaintext buffer upstream.
            quiet = !keep;
            if quiet {
                self.w.pool.give(std::mem::take(&mut out.buf));
            }
            if let Some(a) = eof {
                self.shut(a);
                break Ok(());
            }
        };
        self.w.pool.give(ub);
        self.w.pool.give(out.buf);
        if let Err(why) = result {
            self.fail(DIR, why);
        }
    }
}
