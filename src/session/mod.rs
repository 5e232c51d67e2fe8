//! The sans-IO session core: per-connection state machines that decide, the shell in
//! [`crate::engine`] executes. Like quinn-proto beneath quinn, nothing here owns a
//! socket, a file, a timer or a runtime, and nothing reads the clock: every input
//! comes with the `now` it happened at, and every machine says when it next wants to
//! be woken (`poll_timeout`). So the rules for slow clients, idle connections, drain
//! and half-close are unit-tested on a simulated clock, without sockets.
//!
//! Owns: why connections end ([`Close`]), the handshake gate ([`gate`]), how long an
//! admission holds ([`admission`]), the forward relay's lifecycle ([`relay`]), the
//! object API's request cycle ([`cycle`]) and how a request body's bytes are found in
//! the decrypted buffer ([`body`]).
//! Must not touch: tokio, compio, sockets, files, `Instant::now`, telemetry
//! counters (the shell counts what the machines report), [`crate::engine`].

pub mod admission;
pub mod body;
pub mod cycle;
pub mod gate;
pub mod relay;

/// Why a connection ended: a plain label set, kept in [`crate::reason`] so telemetry
/// (a leaf) can count it without importing the session layer.
pub use crate::reason::Close;
