//! Hot reload: re-read the config file (SIGHUP, `POST /reload`) or just the CRLs and
//! the `[tokens]` JWKS file (when they change on disk, checked every `crl_refresh`),
//! build a whole new [`Generation`] and swap it in for new handshakes. Open connections
//! keep the generation they started with until their next request. A reload that
//! fails validation changes nothing; it is logged with its reason and counted. A JWKS
//! file that changed into something unusable keeps the running keys and is counted in
//! `lakegate_jwks_reloads_total{result="failed"}` until it is fixed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::engine::shared::{Generation, Shared};

/// What identifies a file's content without reading it: replacing a CRL with
/// `mv new.crl crl.pem` changes the inode, rewriting it in place changes mtime or size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    meta: Option<(u64, u64, i64, i64)>,
}

fn stamp(path: &PathBuf) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        path: path.clone(),
        meta: std::fs::metadata(path)
            .ok()
            .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec())),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Serializes reloads from every trigger (signal, admin, CRL timer).
pub struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    crl_stamps: Mutex<Vec<Stamp>>,
    /// The JWKS file as last loaded (None without `[tokens]`).
    jwks_stamp: Mutex<Option<Stamp>>,
    /// A JWKS file content that failed to load, so it is counted once, not per tick.
    jwks_bad: Mutex<Option<Stamp>>,
}

fn jwks_stamp(gen: &Generation) -> Option<Stamp> {
    gen.config.tokens.as_ref().map(|t| stamp(&t.jwks))
}

impl Reloader {
    /// A reloader for the config file at `path`, starting from the running generation.
    pub fn new(path: PathBuf, shared: Arc<Shared>) -> Reloader {
        let gen = shared.current.load_full();
        let r = Reloader {
            path,
            shared,
            crl_stamps: Mutex::new(gen.config.tls.crl.iter().map(stamp).collect()),
            jwks_stamp: Mutex::new(jwks_stamp(&gen)),
            jwks_bad: Mutex::new(None),
        };
        r.publish(&gen);
        r.check_crl_freshness(&gen);
        r
    }

    /// Re-read the config file and everything it names; swap it in if it is valid.
    /// `trigger` says who asked (for the log).
    pub fn reload(&self, trigger: &str) -> Result<(), String> {
        let mut stamps = self.crl_stamps.lock().unwrap_or_else(|p| p.into_inner());
        super::systemd::reloading();
        let cur = self.shared.current.load_full();
        let built = Config::load(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                for key in restart_only_changes(&cur.config, &cfg) {
                    tracing::warn!(key, "changed in the file; takes effect at the next restart");
                }
                crate::engine::build_generation(cfg, Some(&cur)).map_err(|e| e.to_string())
            });
        let result = match built {
            Ok(gen) => {
                *stamps = gen.config.tls.crl.iter().map(stamp).collect();
                *self.jwks_stamp.lock().unwrap_or_else(|p| p.into_inner()) = jwks_stamp(&gen);
                self.install(gen);
                self.count(|c| c.reloads[0] += 1);
                tracing::info!(trigger, config = %self.path.display(), "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                self.count(|c| c.reloads[1] += 1);
                tracing::error!(trigger, error = %e, "reload failed; the running configuration is unchanged");
                Err(e)
            }
        };
        super::systemd::ready("serving");
        result
    }

    /// The periodic file check (every `crl_refresh`): if a CRL file or the JWKS file
    /// changed, rebuild the generation from the running configuration with the new
    /// files; then log and count any CRL past its nextUpdate.
    pub fn refresh_crls(&self) {
        let mut stamps = self.crl_stamps.lock().unwrap_or_else(|p| p.into_inner());
        let mut jwks = self.jwks_stamp.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.shared.current.load_full();
        let now: Vec<Stamp> = cur.config.tls.crl.iter().map(stamp).collect();
        let jwks_now = jwks_stamp(&cur);
        let crl_changed = now != *stamps;
        let mut bad = self.jwks_bad.lock().unwrap_or_else(|p| p.into_inner());
        let jwks_changed = jwks_now != *jwks && jwks_now != *bad;
        let mut installed = false;
        if crl_changed || jwks_changed {
            // Rebuilt from the running config, not the file: an edit to the TOML waits
            // for the operator's SIGHUP.
            let mut built = crate::engine::build_generation((*cur.config).clone(), Some(&cur));
            let mut jwks_failed = None;
            if let Err(e) = &built {
                if e.key == "tokens.jwks" {
                    jwks_failed = Some(e.to_string());
                    // The keys cannot be used; the CRLs may still be.
                    built = if crl_changed {
                        crate::engine::build_generation_with(
                            (*cur.config).clone(),
                            Some(&cur),
                            true,
                        )
                    } else {
                        Err(e.clone())
                    };
                }
            }
            if let Some(e) = &jwks_failed {
                // The running keys stay until the file changes again.
                *bad = jwks_now.clone();
                self.count(|c| c.jwks_reloads[1] += 1);
                tracing::error!(error = %e, "JWKS file changed on disk but cannot be used; keeping the previous keys");
            }
            match built {
                Ok(gen) if crl_changed || jwks_failed.is_none() => {
                    *stamps = now;
                    if jwks_failed.is_none() {
                        *jwks = jwks_now;
                    }
                    let revoked: usize = gen.crls.iter().map(|c| c.revoked.len()).sum();
                    let keys = gen.tokens.as_ref().map_or(0, |t| t.jwks.keys().len());
                    self.install(gen);
                    installed = true;
                    if crl_changed {
                        self.count(|c| c.crl_reloads[0] += 1);
                        tracing::info!(revoked, "CRLs changed on disk; reloaded");
                    }
                    if jwks_changed && jwks_failed.is_none() {
                        self.count(|c| c.jwks_reloads[0] += 1);
                        tracing::info!(keys, "JWKS changed on disk; reloaded");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Keep the old stamps so the next tick tries again (the cron job
                    // may be half-way through writing).
                    if crl_changed {
                        self.count(|c| c.crl_reloads[1] += 1);
                        tracing::error!(error = %e, "CRL changed on disk but cannot be used; keeping the previous lists");
                    }
                }
            }
        }
        if !installed {
            self.check_crl_freshness(&cur);
        }
    }

    fn install(&self, gen: Generation) {
        self.publish(&gen);
        let gen = Arc::new(gen);
        self.check_crl_freshness(&gen);
        self.shared.current.store(gen);
    }

    /// Put a generation's certificate and CRL dates where the scrape sees them.
    fn publish(&self, gen: &Generation) {
        self.count(|c| {
            c.server_cert_not_after = gen.server_cert_not_after;
            c.last_reload_success = now_secs();
            c.crl_next_update = gen
                .crls
                .iter()
                .filter_map(|crl| Some((crl.file.display().to_string(), crl.next_update?)))
                .collect();
            c.upstream_endpoints = match &gen.config.backend {
                crate::config::Backend::S3(b) => {
                    b.endpoints.iter().map(|e| e.url.clone()).collect()
                }
                _ => Vec::new(),
            };
        });
    }

    fn check_crl_freshness(&self, gen: &Generation) {
        let now = now_secs();
        for crl in gen.crls.iter().filter(|c| c.is_stale(now)) {
            self.count(|c| c.crl_stale += 1);
            tracing::warn!(
                file = %crl.file.display(),
                issuer = %crl.issuer,
                next_update = crl.next_update,
                policy = ?gen.config.tls.crl_stale,
                "CRL is past its nextUpdate; replace it"
            );
        }
    }

    fn count(&self, f: impl FnOnce(&mut crate::telemetry::Control)) {
        let mut c = self
            .shared
            .telemetry
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    }
}

/// Keys whose new value only a restart applies: the listeners and worker threads are
/// made once. Everything else (TLS, CRLs, authz, backend, timeouts) takes effect for
/// the next connection.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.server.listen != new.server.listen {
        out.push("server.listen");
    }
    if old.server.cores != new.server.cores {
        out.push("server.workers/server.cores");
    }
    if old.server.steer_by_cpu != new.server.steer_by_cpu {
        out.push("server.steer_by_cpu");
    }
    if old.server.sqpoll != new.server.sqpoll {
        out.push("server.sqpoll");
    }
    if old.admin.listen != new.admin.listen {
        out.push("admin.listen");
    }
    // Read once by the main loop's timers and drain.
    if old.tls.crl_refresh != new.tls.crl_refresh {
        out.push("tls.crl_refresh");
    }
    if old.server.drain_timeout != new.server.drain_timeout {
        out.push("server.drain_timeout");
    }
    out
}
