//! lakegate: an mTLS termination appliance for AI data repositories.
//!
//! The crate is split by concern; the protocol cores in [`proto`] and [`tls`] and the
//! per-connection state machines in [`session`] are sans-IO and know nothing of the
//! io_uring runtime, which lives in [`engine`] only.
//!
//! # Layers
//!
//! A module imports only from the layers below its own, so there is no import cycle;
//! `cargo test --release --test layout -- --nocapture` checks it and prints the graph
//! (`tests/layout.rs` holds the same table).
//!
//! ```text
//!  demo                         the embedded default (a lab, served)
//!  pki, load                    lab PKI and `pki config`; the load generator
//!  control                      serve, admin endpoint, reload, systemd
//!  engine                       workers, listeners, the io_uring shell that
//!                               executes the session machines
//!  backend, session             local store, S3 upstream | sans-IO handshake gate,
//!                               relay, request cycle
//!  config                       the TOML file -> validated Config
//!  authz                        [[authz]] rules, bearer tokens, the admin credential
//!  tls, telemetry               policy, identity, tickets, records | counters, render
//!  proto, secrets, lab          codecs; secret-file check; config template
//!  reason                       label sets: close reasons, S3 error codes
//! ```
//!
//! Telemetry is a leaf: it imports only [`reason`], which imports nothing. The binary
//! (`src/main.rs`) sits on top of all of them.
#![warn(missing_docs)]

pub mod authz;
pub mod backend;
pub mod config;
pub mod control;
pub mod demo;
pub mod engine;
pub mod lab;
pub mod load;
pub mod pki;
pub mod proto;
pub mod reason;
pub mod secrets;
pub mod session;
pub mod telemetry;
pub mod tls;
