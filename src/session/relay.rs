//! The forward relay's lifecycle, sans-IO: two directions (client → upstream,
//! upstream → client) over one connection, how each ends, what an end in one
//! direction does to the other, when the whole relay is idle, and why it closed.
//!
//! The shell reads, decrypts, encrypts and writes; at each step it tells this machine
//! what happened (`on_*`, with `now`) and executes the [`Actions`] it gets back. The
//! rules, as a TCP proxy that speaks TLS on one side:
//! - client close_notify → the upstream's write side is shut (half-close passed on);
//! - client TCP EOF without close_notify → the same, recorded as possibly truncated;
//! - upstream EOF → close_notify to the client, then its write side is shut;
//! - nothing moved either way for `idle_timeout` → both reads are shut, which wakes
//!   both directions; the upstream side says close_notify on its way out;
//! - any other failure → both sockets shut both ways at once;
//! - the reason reported is the client direction's failure, else the upstream's,
//!   else [`Close::Closed`]; a relay that did not close cleanly is shut both ways.
//!
//! Must not touch: sockets, TLS state, the clock, counters.

use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::Close;

/// A read shorter than one full TLS record: the peer is not streaming, so the shell
/// gives the direction's write-side buffer back to the pool until the next burst (an
/// idle relay holds no buffer); a streaming one keeps it, so a busy worker never
/// churns the pool once per record.
pub const TRICKLE: usize = 16 * 1024;

/// One of the two directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client records → plaintext to the upstream.
    ClientToUpstream,
    /// Upstream plaintext → records to the client.
    UpstreamToClient,
}

/// What the shell does to the two sockets, in this order: send close_notify to the
/// client (bounded by [`Relay::write_timeout`]), then the shutdowns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions {
    /// Encrypt close_notify and write it to the client.
    pub close_notify: bool,
    /// Shut the client socket this way.
    pub client: Option<Shutdown>,
    /// Shut the upstream socket this way.
    pub upstream: Option<Shutdown>,
}

impl Actions {
    const NONE: Actions = Actions {
        close_notify: false,
        client: None,
        upstream: None,
    };

    fn both(how: Shutdown) -> Actions {
        Actions {
            close_notify: false,
            client: Some(how),
            upstream: Some(how),
        }
    }
}

/// How one direction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    Done(Result<(), Close>),
}

/// The relay of one connection.
#[derive(Debug, Clone)]
pub struct Relay {
    idle: Duration,
    /// The last time a byte moved in either direction.
    last: Instant,
    c2u: Flow,
    u2c: Flow,
    /// The running policy ended the relay (`None` inside: its maximum age).
    cut: Option<Option<crate::tls::policy::FailReason>>,
}

impl Relay {
    /// A relay that starts at `now` with `idle_timeout` = `idle`.
    pub fn new(idle: Duration, now: Instant) -> Relay {
        Relay {
            idle,
            last: now,
            c2u: Flow::Open,
            u2c: Flow::Open,
            cut: None,
        }
    }

    /// How long a write may wait for its peer to take the bytes: a side that stops
    /// reading is cut at the idle timeout, not held forever.
    pub fn write_timeout(&self) -> Duration {
        self.idle
    }

    /// When the relay is idle unless a byte moves before (the timer to arm).
    pub fn poll_timeout(&self) -> Instant {
        self.last + self.idle
    }

    /// Whether nothing has moved for the idle timeout at `now`. A timer that fires
    /// early (another direction moved since it was armed) is not an idle relay.
    pub fn idle_at(&self, now: Instant) -> bool {
        now >= self.poll_timeout()
    }

    /// Bytes moved at `now` (read from a side, or written to one).
    pub fn on_activity(&mut self, now: Instant) {
        self.last = self.last.max(now);
    }

    /// `n > 0` bytes were read from `dir`'s source at `now`. Returns whether the
    /// direction keeps its write-side buffer for the next read (see [`TRICKLE`]).
    pub fn on_read(&mut self, _dir: Dir, n: usize, now: Instant) -> bool {
        self.on_activity(now);
        n >= TRICKLE
    }

    /// The client's close_notify was decrypted (possibly in the handshake's flight):
    /// the client has said all it will say.
    pub fn on_client_close_notify(&mut self) -> Actions {
        self.end(Dir::ClientToUpstream, Ok(()));
        Actions {
            upstream: Some(Shutdown::Write),
            ..Actions::NONE
        }
    }

    /// The client's TCP stream ended without close_notify: it may have been cut off.
    /// Passed on as a half-close, as a TCP proxy would, but recorded as truncated.
    pub fn on_client_eof(&mut self) -> Actions {
        self.end(
            Dir::ClientToUpstream,
            Err(Close::ClientEofWithoutCloseNotify),
        );
        Actions {
            upstream: Some(Shutdown::Write),
            ..Actions::NONE
        }
    }

    /// The upstream's stream ended: say goodbye properly, then half-close the client.
    /// The shell reports a failed close_notify write with [`Relay::on_failed`].
    pub fn on_upstream_eof(&mut self) -> Actions {
        self.end(Dir::UpstreamToClient, Ok(()));
        Actions {
            close_notify: true,
            client: Some(Shutdown::Write),
            upstream: None,
        }
    }

    /// `dir` waited on a read and the relay was idle (see [`Relay::idle_at`]). Both
    /// reads are shut, so the other direction wakes with EOF; the upstream side says
    /// close_notify to the client first, as a closing upstream would.
    pub fn on_idle(&mut self, dir: Dir) -> Actions {
        self.end(dir, Err(Close::IdleTimeout));
        Actions {
            close_notify: dir == Dir::UpstreamToClient,
            ..Actions::both(Shutdown::Read)
        }
    }

    /// `dir` failed with `why` (read, write, TLS, a write past its timeout): the other
    /// direction cannot go on, so both sockets are shut both ways, which completes
    /// its pending read or write.
    pub fn on_failed(&mut self, dir: Dir, why: Close) -> Actions {
        self.end(dir, Err(why));
        Actions::both(Shutdown::Both)
    }

    /// The running policy no longer admits the connection (`Some(reason)`), or it has
    /// reached `max_connection_age` (`None`): both reads are shut, and the relay ends
    /// the way an idle one does once both directions are done.
    pub fn on_policy_cut(&mut self, why: Option<crate::tls::policy::FailReason>) -> Actions {
        self.cut.get_or_insert(why);
        Actions::both(Shutdown::Read)
    }

    /// Whether both directions have ended.
    pub fn is_done(&self) -> bool {
        self.c2u != Flow::Open && self.u2c != Flow::Open
    }

    /// Whether `dir` has ended.
    pub fn is_ended(&self, dir: Dir) -> bool {
        self.flow(dir) != Flow::Open
    }

    /// Why the relay closed, and what to do to the sockets: once both directions are
    /// done. A policy cut wins; then the client direction's failure, then the
    /// upstream's. A relay that did not close cleanly is shut both ways.
    pub fn finish(&self) -> (Close, Actions) {
        if let Some(why) = self.cut {
            return (Close::Policy(why), Actions::NONE);
        }
        let reason = match (self.c2u, self.u2c) {
            (Flow::Done(Err(e)), _) | (_, Flow::Done(Err(e))) => e,
            _ => Close::Closed,
        };
        if reason.is_clean() {
            (reason, Actions::NONE)
        } else {
            (reason, Actions::both(Shutdown::Both))
        }
    }

    fn flow(&self, dir: Dir) -> Flow {
        match dir {
            Dir::ClientToUpstream => self.c2u,
            Dir::UpstreamToClient => self.u2c,
        }
    }

    /// A direction ends once; its first failure is what it reports. A failure after
    /// a clean end (the close_notify that followed an upstream EOF could not be
    /// written) replaces it: the client never heard the goodbye.
    fn end(&mut self, dir: Dir, r: Result<(), Close>) {
        let f = match dir {
            Dir::ClientToUpstream => &mut self.c2u,
            Dir::UpstreamToClient => &mut self.u2c,
        };
        if *f == Flow::Open || (*f == Flow::Done(Ok(())) && r.is_err()) {
            *f = Flow::Done(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::policy::FailReason;

    const S: Duration = Duration::from_secs(1);

    fn shut(client: Option<Shutdown>, upstream: Option<Shutdown>) -> Actions {
        Actions {
            close_notify: false,
            client,
            upstream,
        }
    }

    #[test]
    fn client_close_notify_then_upstream_eof_is_a_clean_close_in_order() {
        let t0 = Instant::now();
        let mut r = Relay::new(60 * S, t0);
        // The client is done talking: the upstream hears EOF, and may still answer.
        assert_eq!(
            r.on_client_close_notify(),
            shut(None, Some(Shutdown::Write))
        );
        assert!(r.is_ended(Dir::ClientToUpstream));
        assert!(
            !r.is_done(),
            "the upstream's answer still flows to the client"
        );
        assert!(!r.on_read(Dir::UpstreamToClient, 100, t0 + S));
        // The upstream finishes: close_notify first, then the client's write side.
        let a = r.on_upstream_eof();
        assert_eq!(
            a,
            Actions {
                close_notify: true,
                client: Some(Shutdown::Write),
                upstream: None
            }
        );
        assert!(r.is_done());
        assert_eq!(r.finish(), (Close::Closed, Actions::NONE));
    }

    #[test]
    fn upstream_eof_first_leaves_the_client_direction_open() {
        let t0 = Instant::now();
        let mut r = Relay::new(60 * S, t0);
        r.on_upstream_eof();
        assert!(!r.is_done());
        assert!(!r.is_ended(Dir::ClientToUpstream));
        r.on_client_close_notify();
        assert_eq!(r.finish().0, Close::Closed);
    }

    #[test]
    fn client_eof_without_close_notify_is_passed_on_but_recorded() {
        let t0 = Instant::now();
        let mut r = Relay::new(60 * S, t0);
        assert_eq!(r.on_client_eof(), shut(None, Some(Shutdown::Write)));
        assert!(!r.is_done(), "half-closed, not torn down");
        r.on_upstream_eof();
        let (why, a) = r.finish();
        assert_eq!(why, Close::ClientEofWithoutCloseNotify);
        assert_eq!(
            a,
            Actions::both(Shutdown::Both),
            "not clean: shut both ways"
        );
    }

    #[test]
    fn a_hard_failure_in_one_direction_tears_down_both() {
        let t0 = Instant::now();
        let mut r = Relay::new(60 * S, t0);
        assert_eq!(
            r.on_failed(Dir::UpstreamToClient, Close::ClientWriteError),
            Actions::both(Shutdown::Both)
        );
        // The other direction wakes with an error of its own; the first one ending
        // the client direction is reported before the upstream direction's.
        r.on_failed(Dir::ClientToUpstream, Close::ClientReadError);
        assert_eq!(r.finish().0, Close::ClientReadError);
    }

    #[test]
    fn a_goodbye_that_cannot_be_written_is_not_a_clean_close() {
        let t0 = Instant::now();
        let mut r = Relay::new(60 * S, t0);
        r.on_client_close_notify();
        assert!(r.on_upstream_eof().close_notify);
        assert_eq!(
            r.on_failed(Dir::UpstreamToClient, Close::ClientWriteError),
            Actions::both(Shutdown::Both)
        );
        assert_eq!(r.finish().0, Close::ClientWriteError);
    }

    #[test]
    fn a_failed_close_notify_write_replaces_nothing_once_ended() {
        let t0 = Instant::now();
        let mut r = Relay::new(60 * S, t0);
        r.on_idle(Dir::UpstreamToClient);
        // The goodbye after an idle end could not be written: the end stays idle.
        r.on_failed(Dir::UpstreamToClient, Close::ClientWriteError);
        r.on_client_eof();
        assert_eq!(
            r.finish().0,
            Close::ClientEofWithoutCloseNotify,
            "the client direction's end is reported first"
        );
    }

    #[test]
    fn idle_is_measured_over_both_directions_on_the_simulated_clock() {
        let t0 = Instant::now();
        let mut r = Relay::new(10 * S, t0);
        assert_eq!(r.poll_timeout(), t0 + 10 * S);
        assert!(!r.idle_at(t0 + 9 * S));
        // A download that streams keeps an upload-silent relay alive.
        for i in 1..=30u32 {
            r.on_read(Dir::UpstreamToClient, TRICKLE, t0 + 5 * S * i);
            assert!(!r.idle_at(t0 + 5 * S * i + 9 * S), "at {i}");
        }
        let last = t0 + 150 * S;
        assert_eq!(r.poll_timeout(), last + 10 * S);
        // A timer armed earlier that fires now is not idle.
        assert!(!r.idle_at(t0 + 10 * S));
        assert!(r.idle_at(last + 10 * S));
        // Idle seen by the client direction: both reads shut, no goodbye from here...
        assert_eq!(
            r.clone().on_idle(Dir::ClientToUpstream),
            Actions::both(Shutdown::Read)
        );
        // ...seen by the upstream direction: close_notify, then both reads shut.
        let a = r.on_idle(Dir::UpstreamToClient);
        assert!(a.close_notify);
        assert_eq!(
            (a.client, a.upstream),
            (Some(Shutdown::Read), Some(Shutdown::Read))
        );
        // The client direction then wakes with EOF.
        r.on_client_eof();
        assert_eq!(r.finish().0, Close::ClientEofWithoutCloseNotify);
    }

    #[test]
    fn idle_in_the_client_direction_is_the_reason_when_it_ends_there() {
        let t0 = Instant::now();
        let mut r = Relay::new(10 * S, t0);
        r.on_idle(Dir::ClientToUpstream);
        // The upstream direction wakes with EOF and closes properly.
        r.on_upstream_eof();
        let (why, a) = r.finish();
        assert_eq!(why, Close::IdleTimeout);
        assert_eq!(a, Actions::both(Shutdown::Both));
    }

    #[test]
    fn activity_never_moves_the_clock_back() {
        let t0 = Instant::now();
        let mut r = Relay::new(10 * S, t0 + 5 * S);
        r.on_activity(t0);
        assert_eq!(r.poll_timeout(), t0 + 15 * S);
    }

    #[test]
    fn short_reads_give_the_buffer_back_full_records_keep_it() {
        let t0 = Instant::now();
        let mut r = Relay::new(10 * S, t0);
        assert!(!r.on_read(Dir::ClientToUpstream, 1, t0));
        assert!(!r.on_read(Dir::ClientToUpstream, TRICKLE - 1, t0));
        assert!(r.on_read(Dir::ClientToUpstream, TRICKLE, t0));
        assert!(r.on_read(Dir::UpstreamToClient, 64 * 1024, t0));
    }

    #[test]
    fn a_policy_cut_wins_over_how_the_directions_ended() {
        let t0 = Instant::now();
        let mut r = Relay::new(10 * S, t0);
        assert_eq!(
            r.on_policy_cut(Some(FailReason::Revoked)),
            Actions::both(Shutdown::Read)
        );
        // A second cut (max age while the first one unwinds) does not replace it.
        r.on_policy_cut(None);
        r.on_client_eof();
        r.on_upstream_eof();
        let (why, a) = r.finish();
        assert_eq!(why, Close::Policy(Some(FailReason::Revoked)));
        assert_eq!(why.as_str(), "certificate revoked");
        assert_eq!(a, Actions::NONE);
    }
}
