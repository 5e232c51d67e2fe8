//! lakegate: an mTLS termination appliance for AI data repositories.
//!
//! The crate is split by concern; the protocol cores in [`proto`] and [`tls`] are
//! sans-IO and know nothing of the io_uring runtime, which lives in [`engine`] only.
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
pub mod telemetry;
pub mod tls;
