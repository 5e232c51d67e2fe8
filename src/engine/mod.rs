//! The engine: workers pinned one per core, their listeners, buffers, and the io_uring
//! shell that feeds the sans-IO TLS core. The only module that knows the runtime (compio).
//!
//! Also builds a [`Generation`] from a loaded configuration (TLS policy, authz rules,
//! tokens, backend, the admin credential), reading the files it names. Below the control
//! plane: `crate::control` starts the workers, swaps generations in and drains them, and
//! nothing here imports it.

pub mod attrcache;
pub mod blocking;
pub mod conn;
pub mod ctx;
pub mod driver;
pub mod forward;
pub mod fsops;
pub mod io;
pub mod listener;
pub mod pool;
pub mod ring;
pub mod shared;
pub mod store;
pub mod worker;

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use crate::authz::admin::AdminToken;
use crate::authz::{Policy, Rule};
use crate::config::Config;
use crate::tls::policy;
use shared::Generation;

/// Build one generation (TLS policy + authz + tokens + store) from a loaded config.
/// `prev` is the running generation on reload: its in-process ticket keys carry over.
pub fn build_generation(
    cfg: Config,
    prev: Option<&Generation>,
) -> Result<Generation, policy::PolicyError> {
    build_generation_with(cfg, prev, false)
}

/// [`build_generation`]; with `keep_jwks`, the token keys are taken from `prev` instead
/// of the JWKS file (a CRL refresh while the JWKS file is broken keeps the old keys).
pub fn build_generation_with(
    cfg: Config,
    prev: Option<&Generation>,
    keep_jwks: bool,
) -> Result<Generation, policy::PolicyError> {
    let tokens = match &cfg.tokens {
        None => None,
        Some(t) => {
            let policy = crate::authz::token::TokenPolicy {
                issuer: t.issuer.clone(),
                audience: t.audience.clone(),
                cert_bound: t.cert_bound,
                required: t.required.clone(),
                leeway: t.leeway.as_secs(),
            };
            let kept = prev
                .filter(|_| keep_jwks)
                .and_then(|g| g.tokens.as_ref())
                .map(|g| g.jwks.clone());
            let jwks = match kept {
                Some(j) => j,
                None => Arc::new(load_jwks(&t.jwks).map_err(|message| policy::PolicyError {
                    file: cfg.path.display().to_string(),
                    key: "tokens.jwks",
                    message,
                })?),
            };
            Some(Arc::new(crate::authz::token::TokenGate { policy, jwks }))
        }
    };
    let pol = policy::build_with(&cfg.tls_source(), prev.and_then(|g| g.ticketer.clone()))?;
    let admin_token = match &cfg.admin.token_file {
        None => None,
        Some(path) => Some(Arc::new(load_admin_token(path).map_err(|message| {
            policy::PolicyError {
                file: cfg.path.display().to_string(),
                key: "admin.token_file",
                message,
            }
        })?)),
    };
    let store = match &cfg.backend {
        crate::config::Backend::Store { root, fsync, .. } => Some(Arc::new(
            crate::backend::store::Store::new(root, *fsync == crate::config::Fsync::Always)
                .map_err(|e| policy::PolicyError {
                    file: cfg.path.display().to_string(),
                    key: "backend.root",
                    message: format!("{}: {e}", root.display()),
                })?,
        )),
        crate::config::Backend::Forward { .. } | crate::config::Backend::S3(_) => None,
    };
    let s3 = match &cfg.backend {
        crate::config::Backend::S3(b) => Some(Arc::new(
            crate::backend::s3::Upstream::new(b).map_err(|message| policy::PolicyError {
                file: cfg.path.display().to_string(),
                key: "backend.credentials",
                message,
            })?,
        )),
        _ => None,
    };
    let rules = cfg
        .authz
        .iter()
        .map(|r| {
            Rule::new(&r.identity, r.buckets.clone(), r.access.clone()).map_err(|e| {
                policy::PolicyError {
                    file: cfg.path.display().to_string(),
                    key: "authz.identity",
                    message: e.to_string(),
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Generation {
        config: Arc::new(cfg),
        tls: pol.server_config,
        authz: Arc::new(Policy::new(rules)),
        suites: pol.summary.suites,
        store,
        s3,
        server_cert_not_after: pol.server_cert_not_after,
        crls: pol.crls,
        verifier: pol.verifier,
        ticketer: pol.ticketer,
        admin_token,
        tokens,
    })
}

/// Read and parse a JWKS file; the message names the file.
pub fn load_jwks(path: &std::path::Path) -> Result<crate::authz::token::Jwks, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    crate::authz::token::Jwks::parse(&bytes).map_err(|m| format!("{}: {m}", path.display()))
}

/// Read the token file: not readable or writable by group or others (a token
/// every local user can read guards nothing), one line of at least
/// [`crate::authz::admin::MIN_TOKEN_LEN`] printable characters.
pub fn load_admin_token(path: &Path) -> Result<AdminToken, String> {
    let p = path.display();
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read {p}: {e}"))?;
    // The mode of the file we opened, not of whatever the path names a moment later.
    let meta = f.metadata().map_err(|e| format!("cannot read {p}: {e}"))?;
    crate::secrets::check_private_metadata(path, &meta)?;
    if meta.len() > 4096 {
        return Err(format!(
            "{p} is {} bytes, expected one line holding a token",
            meta.len()
        ));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| format!("cannot read {p}: {e}"))?;
    AdminToken::parse(&text).map_err(|e| format!("{p}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn token_file_mode_and_size() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let p = dir.path().join("admin.token");
        std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o644, false),
            (0o602, false),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = load_admin_token(&p);
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains(&format!("mode {mode:04o}")), "{e}");
                assert!(e.contains("expected 0600"), "{e}");
            }
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "x".repeat(5000)).unwrap();
        assert!(load_admin_token(&p).unwrap_err().contains("5000 bytes"));
    }
}
