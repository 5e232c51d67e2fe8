//! Slow-client rules, sans-IO: when a request head or body that trickles in has taken
//! too long. The caller passes `now`; the runtime shell turns [`HeadClock::deadline`]
//! and [`BodyRate::deadline`] into timers and answers 408 when [`expired`] says so.
//!
//! Owns: the arithmetic of `request_head_timeout` (a deadline for the whole head,
//! counted from its first byte) and `min_body_rate` (at least `bytes` in every
//! `window` of an unfinished body, tumbling windows from the start of the body, with
//! the time the server itself spent not reading, e.g. waiting for the disk, taken
//! out of the window so a slow disk is never blamed on the client).
//!
//! Must not touch: the clock, sockets, timers.
//!
//! [`expired`]: BodyRate::expired

use std::time::{Duration, Instant};

/// The deadline of one request head: `timeout` after its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadClock {
    timeout: Duration,
    first_byte: Option<Instant>,
}

impl HeadClock {
    /// A clock for a head that has not started.
    pub fn new(timeout: Duration) -> HeadClock {
        HeadClock {
            timeout,
            first_byte: None,
        }
    }

    /// Bytes of the head are buffered at `now` (the first call starts the clock).
    pub fn on_bytes(&mut self, now: Instant) {
        self.first_byte.get_or_insert(now);
    }

    /// When the head must be complete; `None` until its first byte (the keep-alive
    /// wait between requests is the idle timeout's business).
    pub fn deadline(&self) -> Option<Instant> {
        self.first_byte.map(|t| t + self.timeout)
    }

    /// Whether the head is overdue at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

/// Minimum body rate: at least `min_bytes` in each `window` while a body is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRate {
    min_bytes: u64,
    window: Duration,
    window_start: Instant,
    got: u64,
}

impl BodyRate {
    /// A meter for a body that starts at `now`.
    pub fn new(min_bytes: u64, window: Duration, now: Instant) -> BodyRate {
        BodyRate {
            min_bytes,
            window,
            window_start: now,
            got: 0,
        }
    }

    /// Move on to the window that contains `now`; false if a finished window fell
    /// short (the meter is then expired for good).
    fn roll(&mut self, now: Instant) -> bool {
        while now >= self.window_start + self.window {
            if self.got < self.min_bytes {
                return false;
            }
            self.window_start += self.window;
            self.got = 0;
        }
        true
    }

    /// `n` body bytes arrived at `now`.
    pub fn on_bytes(&mut self, n: u64, now: Instant) {
        if self.roll(now) {
            self.got = self.got.saturating_add(n);
        }
    }

    /// The server did not read for `d` (it was writing to disk or answering): that
    /// time is not the client's, so the current window is extended by it.
    pub fn pause(&mut self, d: Duration) {
        self.window_start += d;
    }

    /// The instant by which more bytes must arrive: the end of the current window if
    /// it is short, else the end of the next one (which has none yet).
    pub fn deadline(&self) -> Instant {
        if self.got < self.min_bytes {
            self.window_start + self.window
        } else {
            self.window_start + self.window * 2
        }
    }

    /// Whether some window ending by `now` received fewer than `min_bytes`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn head_clock_starts_at_the_first_byte() {
        let t0 = Instant::now();
        let mut c = HeadClock::new(2 * S);
        assert_eq!(c.deadline(), None);
        assert!(
            !c.expired(t0 + 100 * S),
            "no byte yet: idle rules, not this one"
        );
        c.on_bytes(t0 + S);
        // A trickle does not move it.
        c.on_bytes(t0 + 2 * S);
        assert_eq!(c.deadline(), Some(t0 + 3 * S));
        assert!(!c.expired(t0 + 2 * S));
        assert!(c.expired(t0 + 3 * S));
    }

    #[test]
    fn fast_body_never_expires() {
        let t0 = Instant::now();
        let mut m = BodyRate::new(64 * 1024, 10 * S, t0);
        for i in 0..100u32 {
            let now = t0 + Duration::from_millis(500) * i;
            assert!(!m.expired(now), "at {i}");
            m.on_bytes(1 << 20, now);
        }
    }

    #[test]
    fn trickle_expires_at_the_end_of_the_short_window() {
        let t0 = Instant::now();
        let mut m = BodyRate::new(1000, 2 * S, t0);
        assert_eq!(m.deadline(), t0 + 2 * S);
        m.on_bytes(10, t0 + Duration::from_millis(300));
        m.on_bytes(10, t0 + Duration::from_millis(600));
        assert!(!m.expired(t0 + Duration::from_millis(1999)));
        assert!(m.expired(t0 + 2 * S));
        // Late bytes do not revive it.
        m.on_bytes(1 << 20, t0 + 3 * S);
        assert!(m.expired(t0 + 3 * S));
    }

    #[test]
    fn a_good_window_then_silence() {
        let t0 = Instant::now();
        let mut m = BodyRate::new(1000, 2 * S, t0);
        m.on_bytes(5000, t0 + S);
        // The first window is satisfied; the second has nothing yet and ends at 4 s.
        assert_eq!(m.deadline(), t0 + 4 * S);
        assert!(!m.expired(t0 + Duration::from_millis(3999)));
        assert!(m.expired(t0 + 4 * S));
        // Bytes in the second window push the deadline to the end of the third.
        m.on_bytes(1000, t0 + 3 * S);
        assert_eq!(m.deadline(), t0 + 6 * S);
        // Skipping a whole window is a short window.
        m.on_bytes(1000, t0 + 9 * S);
        assert!(m.expired(t0 + 9 * S));
    }

    #[test]
    fn server_pauses_are_not_the_clients() {
        let t0 = Instant::now();
        let mut m = BodyRate::new(1000, 2 * S, t0);
        m.on_bytes(100, t0 + S);
        // The disk held the server for 5 s; the window stretches by as much.
        m.pause(5 * S);
        assert!(!m.expired(t0 + 6 * S));
        m.on_bytes(900, t0 + 6 * S);
        assert_eq!(m.deadline(), t0 + 9 * S);
    }
}
