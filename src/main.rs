//! The `lakegate` command line: parse, dispatch, map errors to exit codes
//! (0 success, 1 bad configuration or input, 2 runtime failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lakegate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "lakegate",
    version,
    about = "mTLS termination appliance for AI data repositories"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the appliance.
    Serve {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and print the effective TLS policy.
    Check {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the embedded default: a throwaway PKI and a store backend under DIR.
    Demo {
        /// Folder for the PKI, the config and the data.
        #[arg(long, default_value = "./lakegate-demo")]
        dir: PathBuf,
        /// TLS port on 127.0.0.1.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Admin port on 127.0.0.1.
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
    },
    /// Make test and lab certificates: a CA, server and client certificates, CRLs.
    Pki {
        #[command(subcommand)]
        cmd: lakegate::pki::PkiCommand,
    },
    /// Generate mTLS load (handshake storm, upload, download, mixed) and report it.
    Load(Box<lakegate::load::LoadArgs>),
}

fn load(path: &std::path::Path) -> Result<lakegate::engine::shared::Generation, ExitCode> {
    let cfg = Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })?;
    lakegate::engine::build_generation(cfg, None).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Kept to the end of main: dropping it writes the lines still queued.
    let log = lakegate::telemetry::logs::init(cli.log_json);
    match cli.cmd {
        Cmd::Check { config } => {
            let gen = match load(&config) {
                Ok(g) => g,
                Err(code) => return code,
            };
            let pol = match lakegate::tls::policy::build(&gen.config.tls_source()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            let c = &gen.config;
            println!("{}: OK", config.display());
            println!("listen:              {}", c.server.listen);
            println!(
                "workers:             {} on cores {:?} (steer_by_cpu {}, sqpoll {})",
                c.server.workers, c.server.cores, c.server.steer_by_cpu, c.server.sqpoll
            );
            print!("{}", pol.summary.render());
            println!("effective settings:");
            for (key, value) in c.effective() {
                println!("  {key} = {value}");
            }
            match (c.admin.listen, &c.admin.token_file) {
                (None, _) => println!("admin:               off"),
                (Some(a), Some(f)) => println!(
                    "admin:               {a}; POST /reload needs the bearer token in {}",
                    f.display()
                ),
                (Some(a), None) => println!(
                    "admin:               {a}; POST /reload disabled (no [admin] token_file), reload with SIGHUP"
                ),
            }
            if let lakegate::config::Backend::S3(b) = &c.backend {
                let urls: Vec<&str> = b.endpoints.iter().map(|e| e.url.as_str()).collect();
                println!(
                    "s3 upstream:         {} (failover in order, health probe every {}s), SigV4 region {}, \
                     credentials {} (read, mode private; secret not shown), tenant_prefix {}, \
                     plaintext HTTP/1.1 (no TLS to the upstream yet)",
                    urls.join(", "),
                    lakegate::backend::s3::HEALTH_INTERVAL.as_secs(),
                    b.region,
                    b.credentials.display(),
                    b.tenant_prefix
                );
            }
            let forward = matches!(c.backend, lakegate::config::Backend::Forward { .. });
            println!(
                "authz rules:         {} (first match decides; no match is refused)",
                c.authz.len()
            );
            for (i, r) in gen.authz.rules().iter().enumerate() {
                let meaning = if forward {
                    if r.admits_relay() {
                        "admits the relay".to_string()
                    } else {
                        "refuses the relay (a relay needs read and write)".to_string()
                    }
                } else if r.access().is_empty() || r.buckets().is_empty() {
                    "denies every request".to_string()
                } else {
                    let access: Vec<&str> = r
                        .access()
                        .iter()
                        .map(|a| match a {
                            // Said in words: it is the one verb about buckets, not objects.
                            lakegate::authz::Access::Manage => "manage (create/delete the bucket)",
                            a => a.as_str(),
                        })
                        .collect();
                    format!("{} on buckets {:?}", access.join(", "), r.buckets())
                };
                println!(
                    "  [{i}] {:?} matches the {}: {meaning}",
                    r.identity(),
                    r.name_type().describe()
                );
            }
            match (&c.tokens, &gen.tokens) {
                (Some(t), Some(g)) => {
                    use lakegate::authz::token::Required;
                    let keys: Vec<String> = g
                        .jwks
                        .keys()
                        .iter()
                        .map(|k| {
                            let algs: Vec<&str> = k.algs().iter().map(|a| a.as_str()).collect();
                            format!("{} ({})", k.kid().unwrap_or("no kid"), algs.join("/"))
                        })
                        .collect();
                    let required = match &t.required {
                        Required::Always => "on every request".to_string(),
                        Required::WhenPresent => "checked when present".to_string(),
                        Required::Buckets(b) => {
                            format!("on buckets {b:?}, checked when present elsewhere")
                        }
                    };
                    println!(
                        "tokens:              bearer JWT {required}; iss {:?}, aud {:?}, \
                         cert_bound {}, leeway {}",
                        t.issuer,
                        t.audience,
                        t.cert_bound,
                        humantime::format_duration(t.leeway)
                    );
                    println!("  jwks {}: {}", t.jwks.display(), keys.join(", "));
                }
                _ => println!("tokens:              off (no [tokens])"),
            }
            ExitCode::SUCCESS
        }
        Cmd::Serve { config } => {
            let gen = match load(&config) {
                Ok(g) => g,
                Err(code) => return code,
            };
            let served = lakegate::control::serve(gen, config);
            stopped(served, log)
        }
        Cmd::Demo {
            dir,
            port,
            admin_port,
        } => {
            let cfg = match lakegate::demo::prepare(&dir, port, admin_port) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let gen = match load(&cfg) {
                Ok(g) => g,
                Err(code) => return code,
            };
            let abs = std::path::absolute(&dir).unwrap_or(dir);
            println!("{}", lakegate::demo::instructions(&abs, port, admin_port));
            let served = lakegate::control::serve(gen, cfg);
            stopped(served, log)
        }
        Cmd::Load(a) => ExitCode::from(lakegate::load::main(&a)),
        Cmd::Pki { cmd } => match lakegate::pki::run(&cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// The end of `serve` and `demo`: the reason for stopping goes through the log queue,
/// after the lines before it, and the queue is written out. Nothing is written to stderr
/// directly unless the queue is known to have been written out: with a stalled reader
/// that write would hang the exit for good (the exit code still says it failed).
fn stopped(
    served: Result<(), lakegate::control::ServeError>,
    log: lakegate::telemetry::logs::Guard,
) -> ExitCode {
    use lakegate::telemetry::logs::dropped_lines;
    let dropped = dropped_lines();
    if let Err(e) = &served {
        tracing::error!("{e}");
    }
    let lost = dropped_lines() > dropped;
    let written = log.close(std::time::Duration::from_secs(2));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The queue was full and dropped the reason, yet stderr then took all that
            // was queued: it flows, so say it directly.
            if lost && written {
                eprintln!("error: {e}");
            }
            ExitCode::from(2)
        }
    }
}
