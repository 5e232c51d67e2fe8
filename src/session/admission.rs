//! How long an established connection's admission holds, sans-IO: the running policy
//! judged the client chain at some point, and that judgement stands until the policy
//! changes (the shell sees a new generation), a certificate of the chain expires or a
//! CRL goes stale (`valid_until`, Unix seconds), or the connection reaches the
//! running policy's `max_connection_age`. The shell re-judges when [`Admission::due`]
//! says so and reports the outcome; it arms [`Admission::poll_timeout`] where nothing
//! else wakes it (a relay that streams without requests). The store's request cycle
//! and the forward relay both hold their connections to it.
//!
//! Must not touch: the verifier, the clock (both `now`s are passed in), counters.

use std::time::{Duration, Instant};

/// The farthest a timer is armed: about 136 years.
const FAR: u64 = 1 << 32;

/// The admission of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    accepted: Instant,
    max_age: Option<Duration>,
    /// Unix seconds until which the last judgement holds.
    valid_until: i64,
}

impl Admission {
    /// A connection accepted at `accepted`, judged to hold until `valid_until`.
    pub fn new(accepted: Instant, max_age: Option<Duration>, valid_until: i64) -> Admission {
        Admission {
            accepted,
            max_age,
            valid_until,
        }
    }

    /// Whether the chain must be judged again: the policy changed, or the last
    /// judgement ran out by `now_unix`.
    pub fn due(&self, policy_changed: bool, now_unix: i64) -> bool {
        policy_changed || now_unix >= self.valid_until
    }

    /// The chain passed again at `now_unix`, now holding until `valid_until`. Passing
    /// in the very second of an expiry is judged again a second on, never in a loop.
    pub fn readmitted(&mut self, valid_until: i64, now_unix: i64) {
        self.valid_until = valid_until.max(now_unix + 1);
    }

    /// A new policy's `max_connection_age`, still counted from the accept: a reload
    /// that lowers it ends a connection already past it at its next check.
    pub fn set_max_age(&mut self, max_age: Option<Duration>) {
        self.max_age = max_age;
    }

    /// Whether the connection has reached `max_connection_age` at `now`.
    pub fn aged(&self, now: Instant) -> bool {
        self.max_age.is_some_and(|age| now >= self.accepted + age)
    }

    /// The next instant at which the admission may lapse by time alone: the end of
    /// the judgement (`now` and `now_unix` name the same moment) or the maximum age.
    pub fn poll_timeout(&self, now: Instant, now_unix: i64) -> Instant {
        // Capped, so a judgement without end (no certificate expiry in the chain: i64
        // seconds) is a timer a century out rather than an `Instant` overflow.
        let left = u64::try_from(self.valid_until.saturating_sub(now_unix))
            .unwrap_or(0)
            .min(FAR);
        let due = now + Duration::from_secs(left);
        match self.max_age {
            Some(age) => due.min(self.accepted + age),
            None => due,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn judgement_holds_until_valid_until_then_a_second_at_a_time() {
        let t0 = Instant::now();
        let mut a = Admission::new(t0, None, 1_000);
        assert!(!a.due(false, 999));
        assert!(a.due(true, 999), "a new policy is always judged");
        assert!(a.due(false, 1_000));
        assert_eq!(a.poll_timeout(t0, 990), t0 + 10 * S);
        // Passed in the second of its expiry (or a stale CRL replaced in time).
        a.readmitted(1_000, 1_000);
        assert!(!a.due(false, 1_000));
        assert!(a.due(false, 1_001));
        // A past judgement wakes at once, not never.
        assert_eq!(a.poll_timeout(t0, 5_000), t0);
    }

    #[test]
    fn max_age_is_counted_from_accept_and_caps_the_timer() {
        let t0 = Instant::now();
        let a = Admission::new(t0, Some(60 * S), i64::MAX);
        assert!(!a.aged(t0 + 59 * S));
        assert!(a.aged(t0 + 60 * S));
        assert_eq!(a.poll_timeout(t0 + 10 * S, 0), t0 + 60 * S);
        // Without an age limit, a judgement without end is a far timer, not a panic.
        let endless = Admission::new(t0, None, i64::MAX);
        assert_eq!(endless.poll_timeout(t0, 0), t0 + Duration::from_secs(FAR));
        let unlimited = Admission::new(t0, None, 100);
        assert!(!unlimited.aged(t0 + 1_000_000 * S));
    }

    #[test]
    fn a_new_policys_max_age_counts_from_the_accept() {
        let t0 = Instant::now();
        let mut a = Admission::new(t0, None, i64::MAX);
        assert!(!a.aged(t0 + 90 * S));
        // A reload at t0 + 90 s sets 60 s: the connection is already past it.
        a.set_max_age(Some(60 * S));
        assert!(a.aged(t0 + 90 * S));
        assert_eq!(a.poll_timeout(t0 + 90 * S, 0), t0 + 60 * S);
        // Raised again: the same connection runs on.
        a.set_max_age(Some(120 * S));
        assert!(!a.aged(t0 + 90 * S));
        a.set_max_age(None);
        assert!(!a.aged(t0 + 1_000_000 * S));
    }
}
