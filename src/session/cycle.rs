//! The object API's request cycle, sans-IO: one HTTP/1.1 request at a time on a
//! kept-alive mTLS connection. Which deadline a read waits under (the idle timeout
//! between requests, `request_head_timeout` from a head's first byte, `min_body_rate`
//! inside a body), whether a head is complete, malformed or overdue, whether the
//! response says `Connection: close`, whether the connection waits for another
//! request or closes, and why, and how long a refused body is read and discarded
//! before that close ([`Linger`]).
//!
//! The shell decrypts into a plaintext buffer and asks [`Cycle::poll_head`] about its
//! unprocessed part; it reports reads (`on_read`), writes (`on_write`) and the body's
//! phases, and arms [`Cycle::poll_timeout`]. What a request means (S3 operations,
//! authorization, files, upstreams) is not here.
//!
//! Must not touch: sockets, files, TLS state, the clock, counters, S3 semantics.

use std::time::{Duration, Instant};

use super::Close;
use crate::proto::http::{self, HttpError, RequestHead};
use crate::proto::slow::{BodyRate, HeadClock};

/// Largest request head accepted; larger is 431.
pub const MAX_HEAD: usize = 16 * 1024;

/// The timing rules of one connection's cycle (from `[server]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `idle_timeout`: nothing moved either way for this long closes the connection.
    pub idle: Duration,
    /// `request_head_timeout`: a head must be whole this long after its first byte.
    pub head: Duration,
    /// `min_body_rate` as (bytes, window), if set.
    pub min_body_rate: Option<(u64, Duration)>,
}

/// What the buffered plaintext says about the next request.
#[derive(Debug)]
pub enum HeadStep {
    /// A whole head, and how many bytes of the input it took.
    Head(Box<RequestHead>, usize),
    /// Not whole yet: read more, under [`Cycle::hard_deadline`].
    NeedMore,
    /// Not a request: answer it (400, 431, ...) without keep-alive and close with
    /// [`Close::BadRequestHead`].
    Malformed(HttpError),
    /// The head is overdue: answer 408 and close with [`Close::HeadTimeout`].
    /// `started` is when its first byte came (the request's start for the log).
    TimedOut {
        /// When the head's first byte was buffered.
        started: Instant,
    },
    /// The client closed: cleanly between requests ([`Close::Closed`]), or in the
    /// middle of a head ([`Close::EofInsideHead`]).
    End(Close),
}

/// The request cycle of one connection.
#[derive(Debug, Clone)]
pub struct Cycle {
    limits: Limits,
    /// Last time a byte moved in either direction.
    last: Instant,
    /// The clock of the head being read (reset by each whole head).
    head: HeadClock,
    /// Whether a request is being served (its body read, its response written).
    in_request: bool,
    /// The body-rate meter while a request body is received.
    rate: Option<BodyRate>,
    /// When the last read of a body completed: from there to the next read the time
    /// is the server's (disk, hashing, upstream), not the client's.
    read_done: Instant,
}

impl Cycle {
    /// A connection whose first request may come from `now`.
    pub fn new(limits: Limits, now: Instant) -> Cycle {
        Cycle {
            limits,
            last: now,
            head: HeadClock::new(limits.head),
            in_request: false,
            rate: None,
            read_done: now,
        }
    }

    /// The connection moved to a new configuration (reload): its limits apply from
    /// now on to the idle wait, to the next body, and to the head being read unless
    /// its first byte came already (that head keeps the deadline it was given).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        if self.head.deadline().is_none() {
            self.head = HeadClock::new(limits.head);
        }
    }

    /// Look at the buffered, unprocessed plaintext `pending` at `now`; `peer_closed`:
    /// the client has said it sends nothing more (close_notify).
    pub fn poll_head(&mut self, pending: &[u8], peer_closed: bool, now: Instant) -> HeadStep {
        match http::parse_head(pending, MAX_HEAD) {
            Ok(Some((head, n))) => {
                self.head = HeadClock::new(self.limits.head);
                self.in_request = true;
                return HeadStep::Head(Box::new(head), n);
            }
            Ok(None) => {}
            Err(e) => {
                self.head = HeadClock::new(self.limits.head);
                return HeadStep::Malformed(e);
            }
        }
        let buffered = !pending.is_empty();
        if peer_closed {
            return HeadStep::End(if buffered {
                Close::EofInsideHead
            } else {
                Close::Closed
            });
        }
        // The clock starts with the head's first byte: the wait before it, on a
        // kept-alive connection, is the idle timeout's.
        if buffered {
            self.head.on_bytes(now);
        }
        match self.head.deadline() {
            Some(d) if self.head.expired(now) => {
                self.head = HeadClock::new(self.limits.head);
                HeadStep::TimedOut {
                    started: d - self.limits.head,
                }
            }
            _ => HeadStep::NeedMore,
        }
    }

    /// The client's TCP stream ended while the shell read for a head: a clean close
    /// if nothing of a head was buffered.
    pub fn on_eof(&self, buffered: bool) -> Close {
        if buffered {
            Close::ClientEof
        } else {
            Close::Closed
        }
    }

    /// Whether the response to a request whose head asked for `keep_alive` keeps
    /// the connection: not once it is `aged` (`max_connection_age`) or the
    /// appliance is `draining`, so the client does not send another request into a
    /// connection about to close (`Connection: close` on this response).
    pub fn keep_alive(&self, head_keep_alive: bool, aged: bool, draining: bool) -> bool {
        head_keep_alive && !aged && !draining
    }

    /// The request is answered: `keep` is whether the shell could keep the
    /// connection (no unread body, no refusal), `keep_alive` what the response said.
    /// `None`: wait for the next request; else close, and why.
    pub fn on_response_done(
        &mut self,
        keep: bool,
        keep_alive: bool,
        draining: bool,
    ) -> Option<Close> {
        self.in_request = false;
        self.rate = None;
        if !keep || !keep_alive {
            return Some(Close::ClosedByRequest);
        }
        if draining {
            return Some(Close::Draining);
        }
        None
    }

    /// Whether a drain may end the wait for the client now: between requests only
    /// (nothing of the next one buffered). A request in flight runs on until it
    /// completes or the drain deadline cuts it.
    pub fn drain_ends_wait(&self, buffered: bool) -> bool {
        !self.in_request && !buffered
    }

    /// Why a wait ended by the drain: [`Close::Draining`] between requests; past the
    /// drain deadline, [`Close::DrainDeadline`] whatever the state.
    pub fn on_drain(&self, deadline_passed: bool) -> Close {
        if deadline_passed {
            Close::DrainDeadline
        } else {
            Close::Draining
        }
    }

    /// Bytes moved at `now` (read from or written to the client).
    pub fn on_activity(&mut self, now: Instant) {
        self.last = self.last.max(now);
    }

    /// `n` TLS bytes were read at `now`.
    pub fn on_read(&mut self, n: usize, now: Instant) {
        self.on_activity(now);
        if let Some(rate) = &mut self.rate {
            rate.on_bytes(n as u64, now);
        }
    }

    /// When the connection is idle unless a byte moves first.
    pub fn idle_deadline(&self) -> Instant {
        self.last + self.limits.idle
    }

    /// Whether the connection is idle at `now` (a timer armed before the last byte
    /// moved may fire early).
    pub fn idle_at(&self, now: Instant) -> bool {
        now >= self.idle_deadline()
    }

    /// A deadline shorter than the idle timeout that a read waits under: the body
    /// rate's inside a body, else the head's once its first byte came.
    pub fn hard_deadline(&self) -> Option<(Instant, Close)> {
        match &self.rate {
            Some(rate) => Some((rate.deadline(), Close::BodyTooSlow)),
            None => self.head.deadline().map(|d| (d, Close::HeadTimeout)),
        }
    }

    /// The next instant the shell must wake this cycle at: the earlier of the idle
    /// and hard deadlines.
    pub fn poll_timeout(&self) -> Instant {
        match self.hard_deadline() {
            Some((d, _)) => d.min(self.idle_deadline()),
            None => self.idle_deadline(),
        }
    }

    /// A request body starts being received at `now` (metered by `min_body_rate`).
    pub fn on_body_start(&mut self, now: Instant) {
        self.rate = self
            .limits
            .min_body_rate
            .map(|(bytes, window)| BodyRate::new(bytes, window, now));
        self.read_done = now;
    }

    /// The shell is about to read more of a body at `now`: the time since the last
    /// read completed was the server's and is not held against the client. Err when
    /// the body has already fallen below `min_body_rate`.
    pub fn before_body_read(&mut self, now: Instant) -> Result<(), Close> {
        if let Some(rate) = &mut self.rate {
            rate.pause(now.saturating_duration_since(self.read_done));
            if rate.expired(now) {
                return Err(Close::BodyTooSlow);
            }
        }
        Ok(())
    }

    /// A read of the body completed at `now` (with or without bytes).
    pub fn after_body_read(&mut self, now: Instant) {
        self.read_done = now;
    }

    /// The body is done (whole, refused or abandoned): no more rate checks.
    pub fn on_body_end(&mut self) {
        self.rate = None;
    }
}

/// After a refusal sent while the client was still sending its body: how long, and
/// how much, to keep reading and discarding before the close. Closing a socket with
/// unread bytes in its receive queue sends a reset, which can destroy the refusal in
/// flight; a client that keeps sending past these bounds is cut anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    until: Instant,
    left: u64,
}

impl Linger {
    /// Longest linger.
    pub const TIME: Duration = Duration::from_secs(2);
    /// Most bytes discarded.
    pub const BYTES: u64 = 64 << 20;

    /// A linger that starts at `now` (the refusal has been sent).
    pub fn new(now: Instant) -> Linger {
        Linger {
            until: now + Self::TIME,
            left: Self::BYTES,
        }
    }

    /// When the linger ends whatever the client does.
    pub fn deadline(&self) -> Instant {
        self.until
    }

    /// `n` more bytes were read and discarded at `now` (0: the client closed, or the
    /// read failed): whether to read on.
    pub fn on_read(&mut self, n: usize, now: Instant) -> bool {
        self.left = self.left.saturating_sub(n as u64);
        n > 0 && self.left > 0 && now < self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linger_ends_at_its_time_its_bytes_or_the_clients_close() {
        let t0 = Instant::now();
        let mut l = Linger::new(t0);
        assert_eq!(l.deadline(), t0 + Linger::TIME);
        assert!(l.on_read(65_536, t0 + Duration::from_millis(100)));
        assert!(
            !l.on_read(0, t0 + Duration::from_millis(200)),
            "the client closed"
        );
        let mut l = Linger::new(t0);
        assert!(!l.on_read(1, t0 + Linger::TIME), "time is up");
        let mut l = Linger::new(t0);
        let step = 1 << 20;
        let reads = (0..100).take_while(|_| l.on_read(step, t0)).count();
        assert_eq!(
            reads as u64 + 1,
            Linger::BYTES / step as u64,
            "64 MiB and no more"
        );
    }

    const S: Duration = Duration::from_secs(1);

    fn limits() -> Limits {
        Limits {
            idle: 60 * S,
            head: 10 * S,
            min_body_rate: Some((1000, 2 * S)),
        }
    }

    const GET: &[u8] = b"GET /datasets/a/b.bin HTTP/1.1\r\nHost: lake\r\nRange: bytes=0-9\r\n\r\n";
    const PUT: &[u8] = b"PUT /datasets/k HTTP/1.1\r\nHost: lake\r\nContent-Length: 5\r\nx-amz-checksum-sha256: LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=\r\nExpect: 100-continue\r\n\r\n";
    const CHUNKED: &[u8] =
        b"PUT /datasets/c HTTP/1.1\r\nHost: lake\r\nTransfer-Encoding: chunked\r\n\r\n";
    const CLOSE: &[u8] = b"DELETE /datasets/k HTTP/1.1\r\nHost: lake\r\nConnection: close\r\n\r\n";

    /// Every proper prefix of a valid head is "need more", never a decision, at any
    /// time before the head deadline; the whole head is that head and no more.
    #[test]
    fn every_prefix_of_a_valid_head_needs_more() {
        let t0 = Instant::now();
        for whole in [GET, PUT, CHUNKED, CLOSE] {
            let mut c = Cycle::new(limits(), t0);
            for i in 0..whole.len() {
                match c.poll_head(&whole[..i], false, t0 + S) {
                    HeadStep::NeedMore => {}
                    other => panic!(
                        "prefix {i} of {:?}: {other:?}",
                        String::from_utf8_lossy(whole)
                    ),
                }
            }
            // The whole head, with the next request's first bytes behind it.
            let mut two = whole.to_vec();
            two.extend_from_slice(&GET[..7]);
            match c.poll_head(&two, false, t0 + 2 * S) {
                HeadStep::Head(h, n) => {
                    assert_eq!(n, whole.len());
                    assert_eq!(h.keep_alive, whole != CLOSE);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_closed_by_the_client_is_a_truncated_head_not_a_request() {
        let t0 = Instant::now();
        let mut c = Cycle::new(limits(), t0);
        assert!(matches!(
            c.poll_head(b"", true, t0),
            HeadStep::End(Close::Closed)
        ));
        for i in 1..PUT.len() {
            match c.poll_head(&PUT[..i], true, t0) {
                HeadStep::End(Close::EofInsideHead) => {}
                other => panic!("prefix {i}: {other:?}"),
            }
        }
        assert_eq!(c.on_eof(false), Close::Closed);
        assert_eq!(c.on_eof(true), Close::ClientEof);
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused_with_their_status() {
        let t0 = Instant::now();
        let mut c = Cycle::new(limits(), t0);
        match c.poll_head(b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n", false, t0) {
            HeadStep::Malformed(e) => assert_eq!(e.status(), 400),
            other => panic!("{other:?}"),
        }
        let mut big = b"GET /a HTTP/1.1\r\nx-pad: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        match c.poll_head(&big, false, t0) {
            HeadStep::Malformed(e) => assert_eq!(e.status(), 431),
            other => panic!("{other:?}"),
        }
    }

    /// A client that sends its head a byte every 3 s is cut at 10 s after the first
    /// byte, however steadily it trickles: bytes do not move the head deadline.
    #[test]
    fn a_trickling_head_is_cut_at_the_head_deadline() {
        let t0 = Instant::now();
        let mut c = Cycle::new(limits(), t0);
        // Idle wait before the head: only the idle timeout applies.
        assert_eq!(c.hard_deadline(), None);
        assert_eq!(c.poll_timeout(), t0 + 60 * S);
        let first = t0 + 30 * S;
        let mut i = 0;
        let step = loop {
            i += 1;
            let now = first + 3 * S * (i as u32 - 1);
            c.on_read(1, now);
            let s = c.poll_head(&PUT[..i], false, now);
            if !matches!(s, HeadStep::NeedMore) {
                break (s, now);
            }
            assert_eq!(
                c.hard_deadline(),
                Some((first + 10 * S, Close::HeadTimeout))
            );
            assert_eq!(c.poll_timeout(), first + 10 * S, "earlier than idle");
        };
        match step {
            (HeadStep::TimedOut { started }, now) => {
                assert_eq!(started, first);
                assert_eq!(
                    now,
                    first + 12 * S,
                    "the first poll at or past the deadline"
                );
                assert_eq!(i, 5);
            }
            other => panic!("{other:?}"),
        }
        // The next head starts a clock of its own.
        assert_eq!(c.hard_deadline(), None);
    }

    #[test]
    fn a_head_whole_before_its_deadline_is_served() {
        let t0 = Instant::now();
        let mut c = Cycle::new(limits(), t0);
        assert!(matches!(
            c.poll_head(&GET[..10], false, t0),
            HeadStep::NeedMore
        ));
        assert!(matches!(
            c.poll_head(GET, false, t0 + 9 * S),
            HeadStep::Head(..)
        ));
        // No head deadline while the request is served.
        assert_eq!(c.hard_deadline(), None);
    }

    #[test]
    fn keep_alive_between_requests_waits_under_the_idle_timeout_only() {
        let t0 = Instant::now();
        let mut c = Cycle::new(limits(), t0);
        let HeadStep::Head(h, _) = c.poll_head(GET, false, t0) else {
            panic!()
        };
        let keep = c.keep_alive(h.keep_alive, false, false);
        assert!(keep);
        c.on_activity(t0 + S);
        assert_eq!(c.on_response_done(true, keep, false), None);
        assert!(c.drain_ends_wait(false));
        assert_eq!(c.poll_timeout(), t0 + 61 * S);
        assert!(!c.idle_at(t0 + 60 * S));
        assert!(c.idle_at(t0 + 61 * S));
        // A request that asked to close is closed after its response.
        let HeadStep::Head(h, _) = c.poll_head(CLOSE, false, t0 + 2 * S) else {
            panic!()
        };
        let keep = c.keep_alive(h.keep_alive, false, false);
        assert!(!keep);
        assert_eq!(
            c.on_response_done(true, keep, false),
            Some(Close::ClosedByRequest)
        );
        // So is one whose body was left unread (refused before it was read).
        assert_eq!(
            c.on_response_done(false, true, false),
            Some(Close::ClosedByRequest)
        );
    }

    #[test]
    fn max_connection_age_says_connection_close_on_the_next_response() {
        let c = Cycle::new(limits(), Instant::now());
        assert!(!c.keep_alive(true, true, false));
    }

    /// SIGTERM while an upload is in flight: its body reads are not cut by the
    /// drain, its response says `connection: close`, and the connection then closes
    /// as draining; past the drain deadline whatever is still open is cut.
    #[test]
    fn drain_lets_the_request_in_flight_finish_then_closes() {
        let t0 = Instant::now();
        let mut c = Cycle::new(limits(), t0);
        let HeadStep::Head(h, _) = c.poll_head(PUT, false, t0) else {
            panic!()
        };
        c.on_body_start(t0);
        // The drain starts now: a read inside the request is not ended by it.
        assert!(!c.drain_ends_wait(false));
        c.before_body_read(t0 + S).unwrap();
        c.on_read(5000, t0 + S);
        c.after_body_read(t0 + S);
        c.on_body_end();
        let keep = c.keep_alive(h.keep_alive, false, true);
        assert!(!keep, "the response after SIGTERM closes the connection");
        let mut resp = Vec::new();
        http::write_response_head(&mut resp, 201, &[("etag", "\"x\"")], Some(0), keep);
        let text = String::from_utf8(resp).unwrap();
        assert!(text.starts_with("HTTP/1.1 201 "), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert_eq!(
            c.on_response_done(true, keep, true),
            Some(Close::ClosedByRequest)
        );
        // A kept-alive connection between requests when the drain starts ends at
        // once; anything still open at the drain deadline is cut.
        let mut idle = Cycle::new(limits(), t0);
        assert!(idle.drain_ends_wait(false));
        assert!(
            !idle.drain_ends_wait(true),
            "a head has begun: it is served"
        );
        assert_eq!(idle.on_drain(false), Close::Draining);
        assert_eq!(idle.on_drain(true), Close::DrainDeadline);
        let HeadStep::Head(..) = idle.poll_head(GET, false, t0) else {
            panic!()
        };
        assert_eq!(
            idle.on_response_done(true, true, true),
            Some(Close::Draining)
        );
    }

    #[test]
    fn a_slow_body_is_cut_at_its_window_and_server_time_is_not_the_clients() {
        let t0 = Instant::now();
        let mut c = Cycle::new(limits(), t0);
        let HeadStep::Head(..) = c.poll_head(PUT, false, t0) else {
            panic!()
        };
        c.on_body_start(t0);
        assert_eq!(c.hard_deadline(), Some((t0 + 2 * S, Close::BodyTooSlow)));
        // Each read: the shell checks the meter, waits, reports the bytes.
        c.before_body_read(t0).unwrap();
        c.on_read(600, t0 + S);
        c.after_body_read(t0 + S);
        // The disk held the server 5 s before its next read: that time stretches the
        // window, so the 600 bytes still count towards it.
        c.before_body_read(t0 + 6 * S).unwrap();
        c.on_read(500, t0 + 6 * S);
        c.after_body_read(t0 + 6 * S);
        // That window (ending at 7 s) got 1100 bytes; the client then sends a byte a
        // second into the next one, which ends at 9 s.
        for k in 7..9u32 {
            c.before_body_read(t0 + (k - 1) * S).unwrap();
            c.on_read(1, t0 + k * S);
            c.after_body_read(t0 + k * S);
        }
        c.before_body_read(t0 + 8 * S).unwrap();
        assert_eq!(c.hard_deadline(), Some((t0 + 9 * S, Close::BodyTooSlow)));
        assert_eq!(c.poll_timeout(), t0 + 9 * S);
        // A byte that comes after the deadline does not revive it.
        let late = t0 + 9 * S + Duration::from_millis(100);
        c.on_read(1, late);
        c.after_body_read(late);
        assert_eq!(c.before_body_read(late), Err(Close::BodyTooSlow));
        c.on_body_end();
        assert_eq!(c.hard_deadline(), None);
    }

    #[test]
    fn a_reload_applies_new_limits_but_not_to_a_head_under_way() {
        let t0 = Instant::now();
        let mut c = Cycle::new(limits(), t0);
        let HeadStep::NeedMore = c.poll_head(&GET[..4], false, t0) else {
            panic!()
        };
        c.set_limits(Limits {
            idle: 5 * S,
            head: 2 * S,
            min_body_rate: None,
        });
        assert_eq!(c.hard_deadline(), Some((t0 + 10 * S, Close::HeadTimeout)));
        assert_eq!(c.idle_deadline(), t0 + 5 * S);
        let HeadStep::Head(..) = c.poll_head(GET, false, t0 + S) else {
            panic!()
        };
        c.on_response_done(true, true, false);
        // The next head gets the new head timeout.
        let HeadStep::NeedMore = c.poll_head(&GET[..4], false, t0 + 3 * S) else {
            panic!()
        };
        assert_eq!(c.hard_deadline(), Some((t0 + 5 * S, Close::HeadTimeout)));
        c.on_body_start(t0);
        assert_eq!(c.hard_deadline(), Some((t0 + 5 * S, Close::HeadTimeout)));
    }

    #[test]
    fn no_min_body_rate_no_body_deadline() {
        let t0 = Instant::now();
        let mut c = Cycle::new(
            Limits {
                min_body_rate: None,
                ..limits()
            },
            t0,
        );
        c.on_body_start(t0);
        assert_eq!(c.hard_deadline(), None);
        assert_eq!(c.before_body_read(t0 + 1000 * S), Ok(()));
        assert_eq!(c.poll_timeout(), t0 + 60 * S);
    }
}
