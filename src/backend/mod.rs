//! Backends: where the plaintext of an authorized request ends up.
//!
//! Owns: the `store` backend's filesystem side ([`store`]): which file a request names,
//! whether it may be touched, what metadata it carries, and the blocking helpers that
//! open, commit, delete and list objects beneath the configured root.
//!
//! The `s3` backend's runtime-free side ([`s3`]): credentials and SigV4, the key and
//! bucket mapping, the XML rewriting and the upstream response head.
//!
//! Must not touch: sockets, TLS or the io_uring runtime. The engine streams object bytes
//! with the io_uring runtime on the files handed out here; the `forward` relay lives with the
//! engine (`engine::forward`) because it is nothing but socket I/O.

pub mod s3;
pub mod store;
