//! TLS: the policy that builds rustls's config, the client identity taken from the
//! verified leaf, and the one adapter over rustls's connection API.

pub mod conn;
pub mod identity;
pub mod policy;
pub mod record;
pub mod resume;
pub mod settings;
pub mod tickets;
pub mod verify;

#[cfg(test)]
pub(crate) mod tests;
