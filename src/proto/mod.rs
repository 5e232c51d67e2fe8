//! Sans-IO protocol cores: the connection core (TLS records ↔ plaintext), HTTP/1.1,
//! the S3 operations and errors on top of it, the slow-client clocks, and the PROXY
//! v2 header.
//!
//! Owns: turning bytes into parsed messages and actions, and messages into bytes,
//! with the caller supplying buffers and time.
//!
//! Must not touch: sockets, files, io_uring runtimes, threads or the OS clock;
//! those belong to `engine`, which feeds these cores. Nothing here may panic on
//! peer-controlled input.

pub mod http;
pub mod proxy_v2;
pub mod s3;
pub mod slow;
