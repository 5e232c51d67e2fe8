//! The connection driver: runs one accepted connection through the handshake (fed by
//! the io_uring shell into the sans-IO [`TlsConn`]), derives the identity, applies the
//! connection-level authorization gate, then hands off to the backend.

use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use compio::buf::{IntoInner, IoBuf};

use super::conn::{ConnLog, Established};
use super::ctx::{Slot, Worker};
use super::io::{unix_now, Stream};
use super::ring::Budget;
use super::shared::Generation;
use crate::authz::Decision;
use crate::config::Backend;
use crate::session::gate::{Gate, Handshaken, Outcome};
use crate::session::Close;
use crate::telemetry::session_slot;
use crate::tls::conn::{OutBuf, TlsConn};
use crate::tls::policy::FailReason;

/// Serve one accepted connection to its end.
pub(super) async fn serve(
    w: Rc<Worker>,
    stream: compio::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let start = Instant::now();
    let mut gen = w.shared.current.load_full();
    let _ = stream.set_nodelay(true);
    let client = Stream::Tcp(stream);
    let log = ConnLog::default();
    // The whole phase, from accept (the wait for a first byte included), is under
    // the gate's one deadline.
    let deadline = Gate::deadline(start, gen.config.server.handshake_timeout);
    // A connection that has sent nothing waits here, in a task that holds no more than
    // this wait: the handshake's future is boxed once its first bytes are in (memory
    // per bare connect).
    let hs = match compio::time::timeout_at(deadline, w.receive(&client)).await {
        Ok(first) => {
            let hs = Box::pin(handshake(&w, &gen, &client, &log, start, first));
            compio::time::timeout_at(deadline, hs).await
        }
        Err(e) => Err(e),
    };
    let mut est = match hs {
        Ok(Ok(est)) => est,
        Ok(Err((reason, detail))) => {
            if !log.failure_counted.get() {
                w.stats.handshake_failed(reason);
            }
            if let Some(skipped) = w.unauthenticated_line() {
                tracing::warn!(
                    worker = w.id, %peer, reason = reason.as_str(), detail = %detail,
                    bytes_in = log.bytes_in.get(), skipped_before = skipped, "handshake failed"
                );
            }
            client.shutdown(Shutdown::Both);
            return;
        }
        Err(_) => {
            w.stats.handshake_failed(Gate::timed_out().0);
            if let Some(skipped) = w.unauthenticated_line() {
                tracing::warn!(
                    worker = w.id, %peer, reason = "timeout",
                    timeout = ?gen.config.server.handshake_timeout, skipped_before = skipped,
                    "handshake failed"
                );
            }
            client.shutdown(Shutdown::Both);
            return;
        }
    };
    let hs_time = start.elapsed();
    w.stats.handshake_duration.observe(hs_time.as_secs_f64());

    let identity = est.identity.clone();
    let session = est.session.clone();
    // The handshake (and a resumed session's ticket, see tls::resume) was judged under
    // the generation of the accept. A reload may have landed while it ran: admit only
    // under the running one, before a byte goes anywhere.
    let running = w.shared.current.load_full();
    if !Arc::ptr_eq(&running, &gen) {
        gen = running;
        if let Err(reason) = gen.still_admits(&est.chain, &identity, unix_now()) {
            w.stats.handshake_failed(reason);
            tracing::warn!(
                worker = w.id, %peer, identity = identity.name(), reason = reason.as_str(),
                "refused: the configuration loaded during the handshake no longer admits it"
            );
            refuse(&client, est, &log).await;
            return;
        }
    }
    est.valid_until = gen.valid_until(&est.chain);
    // Forward mode has no requests to refuse one by one: an identity no rule admits is
    // turned away before a byte reaches the upstream. The store answers 403 per request.
    let gate = matches!(gen.config.backend, Backend::Forward { .. });
    if let (true, Decision::Denied { reason }) = (gate, gen.authz.admits(&identity)) {
        w.stats.handshake_failed(FailReason::Unauthorized);
        tracing::warn!(
            worker = w.id, %peer, identity = identity.name(), thumbprint = %identity.thumbprint,
            reason = "unauthorized", detail = %reason, "connection refused by authz"
        );
        refuse(&client, est, &log).await;
        return;
    }
    w.stats.handshakes_ok.inc();
    w.stats
        .recent_certs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .seen(identity.name(), identity.not_after);
    // Index into the suite names the metrics were set up with at start.
    let suite_idx = w
        .shared
        .telemetry
        .suites
        .iter()
        .position(|s| *s == session.suite)
        .unwrap_or(15);
    w.stats.sessions[session_slot(session.version == "TLSv1.3", suite_idx, session.resumed)].inc();

    // The established phase is a task of its own, and this one (the handshake's state,
    // allocated in full at accept for every connection) ends: a connection that has not
    // handshaken carries only the handshake's state, an idle established one only what
    // serving it needs (memory per connection). The slot moves along.
    compio::runtime::spawn(async move {
        let _slot = slot;
        let close = match &gen.config.backend {
            Backend::Forward { .. } => {
                super::forward::relay(&w, &gen, client, peer, est, &log).await
            }
            Backend::Store { .. } | Backend::S3(_) => {
                let exec = match (&gen.store, &gen.s3) {
                    (Some(store), _) => Some(super::store::Exec::Store(store.clone())),
                    (None, Some(up)) => Some(super::store::Exec::S3(up.clone())),
                    (None, None) => None,
                };
                match exec {
                    Some(exec) => {
                        super::store::serve(&w, gen.clone(), exec, client, peer, est, &log).await
                    }
                    None => {
                        refuse(&client, est, &log).await;
                        Close::NoBackend
                    }
                }
            }
        };
        tracing::info!(
            worker = w.id, %peer, identity = identity.name(), version = session.version,
            suite = %session.suite, resumed = session.resumed,
            handshake_ms = hs_time.as_secs_f64() * 1e3,
            bytes_in = log.bytes_in.get(), bytes_out = log.bytes_out.get(),
            duration_ms = start.elapsed().as_secs_f64() * 1e3, close = close.as_str(),
            "connection closed"
        );
        w.stats.closes[close.index()].inc();
    })
    .detach();
}

/// Close an established connection cleanly with close_notify.
async fn refuse(client: &Stream, mut est: Established, log: &ConnLog) {
    est.out.clear();
    if est.tls.close_notify(&mut est.out).is_ok() {
        let n = est.out.filled;
        let (_res, _buf) = client.write_all(est.out.buf.slice(..n)).await;
        log.bytes_out.set(log.bytes_out.get() + n as u64);
    }
    client.shutdown(Shutdown::Both);
}

type HsError = (FailReason, String);

async fn handshake(
    w: &Worker,
    gen: &Arc<Generation>,
    client: &Stream,
    log: &ConnLog,
    accepted: Instant,
    received: (std::io::Result<usize>, Vec<u8>),
) -> Result<Established, HsError> {
    // A connection that has sent nothing yet holds no buffer and no TLS state: anyone
    // who can reach the port could otherwise pin three pool buffers per connect. Its
    // first bytes come through the worker's buffer ring.
    let (first, mut inb) = received;
    let first = first.map_err(|e| (FailReason::Protocol, format!("read: {e}")))?;
    if first == 0 {
        // Closed before a byte: no TLS state is built for it.
        Gate::on_first_read_closed()?;
    }
    let mut first = Some(first);
    let tls = TlsConn::new(gen.tls.clone()).map_err(|e| (FailReason::Protocol, e.to_string()))?;
    let mut gate = Gate::new(tls, accepted, gen.config.server.handshake_timeout);
    let mut used = 0usize;
    let mut out = OutBuf::from_vec(w.pool.take());
    let mut plain = OutBuf::from_vec(w.pool.take());
    loop {
        gate.room(used, inb.len())?;
        let n = match first.take() {
            Some(n) => n,
            // Between the client's flights (or inside one sent in pieces): wait holding
            // only the partial record, so a client that sends a few bytes and stops
            // pins a few bytes, not three pool buffers, until the handshake deadline.
            None => match w.carry_partial(&inb[..used], Budget::Handshake) {
                Some(carry) => {
                    w.pool.give(std::mem::take(&mut inb));
                    let spare = out.is_empty() && plain.is_empty();
                    if spare {
                        w.pool.give(std::mem::take(&mut out.buf));
                        w.pool.give(std::mem::take(&mut plain.buf));
                    }
                    let at = carry.as_ref().map_or(0, |c| c.len());
                    let (res, mut buf) = w.receive_after(client, at).await;
                    if spare {
                        out = OutBuf::from_vec(w.pool.take());
                        plain = OutBuf::from_vec(w.pool.take());
                    }
                    // The carried bytes go back at the start: `used` still counts them.
                    // Empty at EOF or on error, with no buffer taken.
                    inb = if buf.is_empty() {
                        w.pool.take()
                    } else {
                        if let Some(c) = carry {
                            c.restore(&mut buf);
                        }
                        buf
                    };
                    res.map_err(|e| (FailReason::Protocol, format!("read: {e}")))?
                }
                None => {
                    let cap = inb.len();
                    let (res, slice) = client.read(inb.slice(used..cap)).await;
                    inb = slice.into_inner();
                    res.map_err(|e| (FailReason::Protocol, format!("read: {e}")))?
                }
            },
        };
        gate.on_read(n)?;
        used += n;
        log.bytes_in.set(log.bytes_in.get() + n as u64);
        w.stats.bytes_received.add(n as u64);
        let step = gate.handle_received(&mut inb[..used], &mut out, &mut plain);
        if let Some(r) = step.ticket_refused {
            w.stats.resumptions_refused[r.index()].inc();
            if let Some(skipped) = w.unauthenticated_line() {
                tracing::info!(
                    worker = w.id,
                    reason = r.as_str(),
                    skipped_before = skipped,
                    "session ticket not honoured; the client is asked for a full handshake"
                );
            }
        }
        let (failure, complete) = match step.outcome {
            Outcome::Failed(f) => (Some(f), false),
            Outcome::NeedMore => (None, false),
            Outcome::Complete => (None, true),
        };
        if let Some((reason, _)) = &failure {
            // Counted before the alert leaves, so the metric never lags what the
            // client was told.
            w.stats.handshake_failed(*reason);
            log.failure_counted.set(true);
        }
        if !out.is_empty() {
            // Flush the server flight, or the alert that says why we refuse.
            let len = out.filled;
            let (res, slice) = client.write_all(out.buf.slice(..len)).await;
            out.buf = slice.into_inner();
            out.clear();
            log.bytes_out.set(log.bytes_out.get() + len as u64);
            w.stats.bytes_sent.add(len as u64);
            if let (Err(e), None) = (res, &failure) {
                return Err((FailReason::Protocol, format!("write: {e}")));
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        inb.copy_within(step.consumed..used, 0);
        used -= step.consumed;
        if complete {
            let Handshaken {
                tls,
                identity,
                chain,
                session,
            } = gate.finish()?;
            return Ok(Established {
                tls,
                inb,
                used,
                plain,
                out,
                identity,
                session,
                chain,
                accepted,
                valid_until: 0,
            });
        }
    }
}
