//! The systemd notify protocol (`Type=notify`): READY once every worker accepts,
//! RELOADING/READY around a reload, STOPPING on drain, WATCHDOG while workers tick.
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (not run by systemd).

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Every worker is accepting.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload has begun; systemd wants the monotonic time with it (Type=notify-reload).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(t) => send(&[NotifyState::Reloading, t]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The appliance is draining and will exit.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Tell the watchdog we are alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to pet the watchdog, if `WatchdogSec` is set: half its period, as
/// sd_watchdog_enabled(3) recommends.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
