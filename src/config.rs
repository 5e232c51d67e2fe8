//! Configuration: the TOML file turned into a validated, immutable [`Config`].
//!
//! Owns: the file format (the "Configuration (TOML)" section of DESIGN.md), its
//! defaults, the resolution of relative paths against the file's folder, and error
//! messages that name the file, the key and what was expected.
//!
//! Must not touch: sockets, certificates' contents, the runtime. The only I/O is
//! reading the file and checking that the files it references exist; parsing PEM,
//! building rustls policy and binding listeners belong to their own modules. A reload
//! builds a new `Config`; nothing here is ever mutated after [`Config::load`] returns.
//!
//! The code is two layers: a raw serde layer (`Raw*`) that mirrors the file and rejects
//! unknown keys, and a validation step that turns it into the public types, applying
//! defaults and checking every value with its key path at hand.

use std::fmt::{self, Write as _};
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::secrets::check_private_file;

/// Access kinds are shared with the authorization layer, which compiles rules from them.
pub use crate::authz::Access;
/// The `[tls]` section's types belong to the TLS layer, which builds the policy from
/// them without seeing the rest of the file.
pub use crate::tls::settings::{CrlStale, Tls, TlsVersion};

// ---------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------

/// A loaded and validated configuration file; immutable once built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this configuration was loaded from, made absolute.
    pub path: PathBuf,
    /// `[server]`: the data-path listener and the engine.
    pub server: Server,
    /// `[tls]`: certificates and TLS policy.
    pub tls: Tls,
    /// `[admin]`: the control-plane HTTP listener.
    pub admin: Admin,
    /// `[backend]`: where plaintext goes.
    pub backend: Backend,
    /// `[[authz]]`: ordered rules, first match wins.
    pub authz: Vec<AuthzRule>,
    /// `[tokens]`: optional bearer tokens on top of mTLS.
    pub tokens: Option<Tokens>,
}

impl Config {
    /// What the TLS policy is built from: the `[tls]` section and this file's path.
    pub fn tls_source(&self) -> crate::tls::policy::Source<'_> {
        crate::tls::policy::Source {
            path: &self.path,
            tls: &self.tls,
        }
    }

    /// Every setting of `[server]`, `[tls]`, `[admin]`, `[tokens]` and `[backend]` with the value
    /// in force (defaults filled in), one `key = value` each, as `lakegate check`
    /// prints them: what an operator reads to know what the file really means.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let p = |p: &Path| p.display().to_string();
        let s = &self.server;
        let t = &self.tls;
        let mut v = vec![
            ("server.listen", s.listen.to_string()),
            ("server.workers", s.workers.to_string()),
            ("server.cores", format!("{:?}", s.cores)),
            ("server.steer_by_cpu", s.steer_by_cpu.to_string()),
            ("server.sqpoll", s.sqpoll.to_string()),
            ("server.max_connections", s.max_connections.to_string()),
            ("server.max_object_size", s.max_object_size.to_string()),
            ("server.handshake_timeout", d(s.handshake_timeout)),
            ("server.idle_timeout", d(s.idle_timeout)),
            ("server.request_head_timeout", d(s.request_head_timeout)),
            (
                "server.min_body_rate",
                s.min_body_rate.map_or("off".into(), |r| {
                    format!("{} bytes / {}", r.bytes, d(r.window))
                }),
            ),
            (
                "server.max_connection_age",
                s.max_connection_age.map_or("unlimited".into(), d),
            ),
            ("server.drain_timeout", d(s.drain_timeout)),
            ("tls.cert", p(&t.cert)),
            ("tls.key", p(&t.key)),
            ("tls.client_ca", p(&t.client_ca)),
            (
                "tls.crl",
                format!("{:?}", t.crl.iter().map(|c| p(c)).collect::<Vec<_>>()),
            ),
            ("tls.crl_refresh", d(t.crl_refresh)),
            ("tls.crl_stale", format!("{:?}", t.crl_stale).to_lowercase()),
            ("tls.versions", format!("{:?}", t.versions)),
            ("tls.cipher_suites", format!("{:?}", t.cipher_suites)),
            ("tls.session_tickets", t.session_tickets.to_string()),
            (
                "tls.ticket_key_file",
                t.ticket_key_file
                    .as_deref()
                    .map_or("(keys of this process)".into(), p),
            ),
            ("tls.ticket_lifetime", d(t.ticket_lifetime)),
            (
                "admin.listen",
                self.admin.listen.map_or("off".into(), |a| a.to_string()),
            ),
            (
                "admin.token_file",
                self.admin
                    .token_file
                    .as_deref()
                    .map_or("(none: POST /reload refused)".into(), p),
            ),
        ];
        if let Some(tk) = &self.tokens {
            v.push(("tokens.jwks", p(&tk.jwks)));
            v.push(("tokens.issuer", tk.issuer.clone()));
            v.push(("tokens.audience", tk.audience.clone()));
            v.push(("tokens.cert_bound", tk.cert_bound.to_string()));
            v.push(("tokens.required", format!("{:?}", tk.required)));
            v.push(("tokens.leeway", d(tk.leeway)));
        }
        match &self.backend {
            Backend::Store {
                root,
                fsync,
                multipart_expiry,
                etag,
            } => {
                v.push(("backend.kind", "store".into()));
                v.push(("backend.root", p(root)));
                v.push(("backend.fsync", format!("{fsync:?}").to_lowercase()));
                v.push(("backend.multipart_expiry", d(*multipart_expiry)));
                v.push(("backend.etag", format!("{etag:?}").to_lowercase()));
            }
            Backend::S3(b) => {
                v.push(("backend.kind", "s3".into()));
                let urls: Vec<&str> = b.endpoints.iter().map(|e| e.url.as_str()).collect();
                v.push((
                    "backend.endpoints",
                    format!("{urls:?} (failover in this order)"),
                ));
                v.push(("backend.region", b.region.clone()));
                // The path only: the file's content is a secret.
                v.push(("backend.credentials", p(&b.credentials)));
                v.push((
                    "backend.bucket_map",
                    if b.bucket_map.is_empty() {
                        "{} (every bucket keeps its name)".into()
                    } else {
                        format!("{:?} (other buckets keep their name)", b.bucket_map)
                    },
                ));
                v.push(("backend.tenant_prefix", b.tenant_prefix.to_string()));
                v.push(("backend.connect_timeout", d(b.connect_timeout)));
                v.push(("backend.response_timeout", d(b.response_timeout)));
            }
            Backend::Forward {
                upstream,
                proxy_protocol,
                proxy_protocol_client_cert,
            } => {
                v.push(("backend.kind", "forward".into()));
                v.push((
                    "backend.upstream",
                    match upstream {
                        Upstream::Tcp(a) => a.to_string(),
                        Upstream::Unix(u) => format!("unix:{}", u.display()),
                    },
                ));
                v.push((
                    "backend.proxy_protocol",
                    proxy_protocol.map_or("off".into(), |x| format!("{x:?}").to_lowercase()),
                ));
                v.push((
                    "backend.proxy_protocol_client_cert",
                    proxy_protocol_client_cert.to_string(),
                ));
            }
        }
        v
    }
}

/// The `[server]` section, with `workers` and `cores` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Address the workers' listeners bind.
    pub listen: SocketAddr,
    /// Number of worker threads (`"auto"` resolved to the online CPUs).
    pub workers: usize,
    /// The core each worker is pinned to; `cores.len() == workers`.
    pub cores: Vec<usize>,
    /// Steer each flow to the worker on the CPU that received it.
    pub steer_by_cpu: bool,
    /// Use IORING_SETUP_SQPOLL on the workers' rings.
    pub sqpoll: bool,
    /// Connections allowed at once across the appliance.
    pub max_connections: usize,
    /// Largest object body the store accepts, in bytes.
    pub max_object_size: u64,
    /// Deadline for a TLS handshake to complete.
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A request head must be complete this long after its first byte (408).
    pub request_head_timeout: Duration,
    /// The slowest request body accepted (408 below it); `None` when `"off"`.
    pub min_body_rate: Option<MinBodyRate>,
    /// Deadline for open connections to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// A connection older than this is closed after the request in flight (store) or
    /// with close_notify (forward); `None` = unlimited (`"0"`).
    pub max_connection_age: Option<Duration>,
}

/// `min_body_rate = "SIZE/DURATION"`: at least `bytes` in every `window` of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinBodyRate {
    /// Bytes that must arrive in each window.
    pub bytes: u64,
    /// The window.
    pub window: Duration,
}

/// The `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Address of the admin HTTP listener; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token that mutating admin requests (`POST /reload`)
    /// must carry; `None` refuses them. Its mode and content are checked where it is
    /// read (the admin module), like the ticket key file's.
    pub token_file: Option<PathBuf>,
}

/// The `[backend]` section: what receives the plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The built-in HTTP object store on local disk.
    Store {
        /// Directory where objects live.
        root: PathBuf,
        /// When stored objects are fsynced.
        fsync: Fsync,
        /// Multipart uploads with no part stored for this long are removed.
        multipart_expiry: Duration,
        /// What a single-part object's ETag is.
        etag: Etag,
    },
    /// An S3-compatible object store upstream (SeaweedFS, MinIO, Ceph RGW): the object
    /// API of the store backend, executed by the upstream over HTTP/1.1.
    S3(S3Backend),
    /// A plaintext byte relay to an upstream.
    Forward {
        /// Where connections are relayed to.
        upstream: Upstream,
        /// PROXY protocol header sent before the client's bytes.
        proxy_protocol: Option<ProxyProtocol>,
        /// Whether the client's DER leaf certificate rides in the PROXY header.
        proxy_protocol_client_cert: bool,
    },
}

/// The ETag of an object stored whole (PutObject): what clients such as rclone and
/// the AWS CLI compare with the MD5 they computed. The SHA-256 is computed and kept
/// either way (integrity, `x-amz-checksum-sha256`); a multipart object's ETag is
/// always S3's multipart form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Etag {
    /// The hex MD5 of the bytes, as S3's; costs an MD5 pass in the PUT.
    Md5,
    /// The hex SHA-256 of the bytes (64 digits), which MD5-comparing clients cannot check.
    Sha256,
}

/// `kind = "s3"`: where object requests go and how they are signed and mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Backend {
    /// Upstream endpoints, tried in this order (failover).
    pub endpoints: Vec<S3Endpoint>,
    /// The SigV4 region.
    pub region: String,
    /// The file with `access_key_id` and `secret_access_key` (mode 0600, checked here
    /// and again when read); its content is read with the generation, never logged.
    pub credentials: PathBuf,
    /// Client bucket → upstream bucket; a bucket not listed keeps its name.
    pub bucket_map: std::collections::BTreeMap<String, String>,
    /// Prefix each identity's keys with a segment derived from it.
    pub tenant_prefix: bool,
    /// Deadline for a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// Deadline for the upstream's response head once the request is sent.
    pub response_timeout: Duration,
}

/// One S3 upstream endpoint, `http://IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Endpoint {
    /// As written in the file (the metric label).
    pub url: String,
    /// The address connected to.
    pub addr: SocketAddr,
}

/// At most this many S3 endpoints (their metrics have a fixed slot per worker).
pub const MAX_S3_ENDPOINTS: usize = 8;
const DEFAULT_S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_S3_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Store durability policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// fsync every object before it becomes visible.
    Always,
    /// Leave flushing to the kernel.
    Never,
}

/// The forward backend's upstream address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

/// A PROXY protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The binary PROXY protocol, version 2.
    V2,
}

/// One `[[authz]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzRule {
    /// Identity pattern (glob, or `x5t#S256:` thumbprint pin).
    pub identity: String,
    /// Bucket patterns the rule covers.
    pub buckets: Vec<String>,
    /// Operations the rule grants.
    pub access: Vec<Access>,
}

/// The `[tokens]` section: JWT bearer tokens checked on top of mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// JWK set used to verify token signatures.
    pub jwks: PathBuf,
    /// Expected `iss` claim.
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// Whether tokens must be bound to the client certificate (RFC 8705).
    pub cert_bound: bool,
    /// When a request needs a token: always (`true`), only for matching buckets
    /// (`["models", ...]`), or never (`false`, a token sent is still checked).
    pub required: crate::authz::token::Required,
    /// Clock skew allowed on `exp` / `nbf`.
    pub leeway: Duration,
}

/// A configuration error: which file, which key, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{}", .file.display(), KeyPrefix(.key), .message)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// Key path such as `server.workers` or `authz[1].access[0]`; empty when none applies.
    pub key: String,
    /// What was expected and what was found.
    pub message: String,
}

/// Renders `"key: "`, or nothing for an error that is about the file as a whole.
struct KeyPrefix<'a>(&'a str);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|e| ConfigError {
            file: absolute(path),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
        Config::from_str(&text, path)
    }

    /// Validates `text` as if read from `path`, which names errors and anchors relative paths.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        build(text, path, online)
    }
}

// ---------------------------------------------------------------------------------------
// Defaults (DESIGN.md, "Configuration (TOML)")
// ---------------------------------------------------------------------------------------

const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8443));
const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));
const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
const DEFAULT_MAX_OBJECT_SIZE: u64 = 1 << 40; // 1TiB
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MIN_BODY_RATE: MinBodyRate = MinBodyRate {
    bytes: 64 * 1024,
    window: Duration::from_secs(10),
};
const DEFAULT_CRL_REFRESH: Duration = Duration::from_secs(30);
/// Store: multipart uploads untouched this long are removed (S3 lifecycle rules are
/// commonly set to a day or a week; a day keeps abandoned parts from piling up).
pub const DEFAULT_MULTIPART_EXPIRY: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_TICKET_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// rustls (and RFC 8446 §4.6.1) cap a ticket's advertised lifetime at 7 days.
const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

// ---------------------------------------------------------------------------------------
// Raw layer: the file as written. Everything is optional so that "missing" and "wrong"
// get our messages (with the key path) rather than serde's.
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<RawServer>,
    tls: Option<RawTls>,
    admin: Option<RawAdmin>,
    backend: Option<RawBackend>,
    authz: Option<Vec<RawAuthz>>,
    tokens: Option<RawTokens>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    /// `"auto"` or an integer, so it stays a TOML value until validated.
    workers: Option<toml::Value>,
    cores: Option<Vec<i64>>,
    steer_by_cpu: Option<bool>,
    sqpoll: Option<bool>,
    max_connections: Option<i64>,
    /// A size string or a bare integer.
    max_object_size: Option<toml::Value>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    request_head_timeout: Option<String>,
    min_body_rate: Option<String>,
    drain_timeout: Option<String>,
    max_connection_age: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    crl: Option<Vec<String>>,
    crl_refresh: Option<String>,
    crl_stale: Option<String>,
    versions: Option<Vec<String>>,
    cipher_suites: Option<Vec<String>>,
    session_tickets: Option<bool>,
    ticket_key_file: Option<String>,
    ticket_lifetime: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    kind: Option<String>,
    // store
    root: Option<String>,
    fsync: Option<String>,
    multipart_expiry: Option<String>,
    etag: Option<String>,
    // forward
    upstream: Option<String>,
    proxy_protocol: Option<String>,
    proxy_protocol_client_cert: Option<bool>,
    // s3
    endpoints: Option<Vec<String>>,
    region: Option<String>,
    credentials: Option<String>,
    bucket_map: Option<std::collections::BTreeMap<String, String>>,
    tenant_prefix: Option<bool>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthz {
    identity: Option<String>,
    buckets: Option<Vec<String>>,
    access: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    jwks: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    cert_bound: Option<bool>,
    /// `true`, `false` or a list of bucket patterns.
    required: Option<toml::Value>,
    leeway: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Validation: raw layer → public types
// ---------------------------------------------------------------------------------------

/// What every check needs: where the file is, and the machine's CPU count.
struct Ctx {
    file: PathBuf,
    dir: PathBuf,
    online: usize,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The whole pipeline; `online` is a parameter so tests do not depend on the machine.
fn build(text: &str, path: &Path, online: usize) -> Result<Config> {
    let file = absolute(path);
    let dir = file
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let cx = Ctx { file, dir, online };

    let raw: RawConfig = toml::from_str(text).map_err(|e| cx.toml_error(text, &e))?;

    let server = cx.server(raw.server.unwrap_or_default())?;
    let tls = cx.tls(cx.section("tls", raw.tls)?)?;
    let admin = cx.admin(raw.admin, &server)?;
    let backend = cx.backend(cx.section("backend", raw.backend)?)?;
    let authz = raw
        .authz
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, r)| cx.authz(i, r, matches!(backend, Backend::Forward { .. })))
        .collect::<Result<Vec<_>>>()?;
    let tokens = raw.tokens.map(|t| cx.tokens(t)).transpose()?;
    if tokens.is_some() && matches!(backend, Backend::Forward { .. }) {
        // Tokens ride in HTTP requests; a relay carries opaque bytes and has none to
        // check, so accepting the section would promise what is not enforced.
        return Err(cx.err(
            "tokens",
            "bearer tokens are checked on the HTTP object API, but kind = \"forward\" \
             relays opaque bytes and could not enforce them; remove [tokens] or use \
             kind = \"store\"",
        ));
    }

    Ok(Config {
        path: cx.file,
        server,
        tls,
        admin,
        backend,
        authz,
        tokens,
    })
}

impl Ctx {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn section<T>(&self, name: &str, raw: Option<T>) -> Result<T> {
        raw.ok_or_else(|| self.err(name, format!("missing required table [{name}]")))
    }

    fn required<T>(&self, key: &str, raw: Option<T>) -> Result<T> {
        raw.ok_or_else(|| self.err(key, "missing required key"))
    }

    fn server(&self, raw: RawServer) -> Result<Server> {
        let listen = match raw.listen {
            Some(s) => self.socket_addr("server.listen", &s)?,
            None => DEFAULT_LISTEN,
        };
        let (workers, cores) = self.workers_and_cores(raw.workers, raw.cores)?;
        let max_connections = match raw.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) => usize::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                self.err(
                    "server.max_connections",
                    format!("expected a positive integer, found {n}"),
                )
            })?,
        };
        let max_object_size = match raw.max_object_size {
            None => DEFAULT_MAX_OBJECT_SIZE,
            Some(v) => self.size("server.max_object_size", &v)?,
        };
        Ok(Server {
            listen,
            workers,
            cores,
            steer_by_cpu: raw.steer_by_cpu.unwrap_or(true),
            sqpoll: raw.sqpoll.unwrap_or(false),
            max_connections,
            max_object_size,
            handshake_timeout: self.duration(
                "server.handshake_timeout",
                raw.handshake_timeout,
                DEFAULT_HANDSHAKE_TIMEOUT,
                false,
            )?,
            idle_timeout: self.duration(
                "server.idle_timeout",
                raw.idle_timeout,
                DEFAULT_IDLE_TIMEOUT,
                false,
            )?,
            request_head_timeout: self.duration(
                "server.request_head_timeout",
                raw.request_head_timeout,
                DEFAULT_REQUEST_HEAD_TIMEOUT,
                false,
            )?,
            min_body_rate: self.min_body_rate(raw.min_body_rate)?,
            // Zero is meaningful here: close open connections at once on SIGTERM.
            drain_timeout: self.duration(
                "server.drain_timeout",
                raw.drain_timeout,
                DEFAULT_DRAIN_TIMEOUT,
                true,
            )?,
            max_connection_age: Some(self.duration(
                "server.max_connection_age",
                raw.max_connection_age,
                DEFAULT_MAX_CONNECTION_AGE,
                true,
            )?)
            .filter(|d| !d.is_zero()),
        })
    }

    /// Resolves `workers` and `cores` together, since each defaults from the other.
    fn workers_and_cores(
        &self,
        workers: Option<toml::Value>,
        cores: Option<Vec<i64>>,
    ) -> Result<(usize, Vec<usize>)> {
        let mut listed = Vec::new();
        for (i, &c) in cores.iter().flatten().enumerate() {
            let key = format!("server.cores[{i}]");
            let core = usize::try_from(c)
                .ok()
                .filter(|&c| c < self.online)
                .ok_or_else(|| {
                    self.err(
                        &key,
                        format!(
                            "expected a CPU number from 0 to {} (this machine has {} online), found {c}",
                            self.online - 1,
                            self.online
                        ),
                    )
                })?;
            if listed.contains(&core) {
                return Err(self.err(key, format!("CPU {core} is listed twice")));
            }
            listed.push(core);
        }

        let workers = match workers {
            None => None,
            Some(toml::Value::String(s)) if s == "auto" => None,
            Some(toml::Value::Integer(n)) if n >= 1 => {
                Some(usize::try_from(n).unwrap_or(usize::MAX))
            }
            Some(v) => {
                return Err(self.err(
                    "server.workers",
                    format!("expected \"auto\" or a positive integer, found {v}"),
                ))
            }
        };

        match (workers, listed.is_empty()) {
            (None, true) => Ok((self.online, (0..self.online).collect())),
            (None, false) => Ok((listed.len(), listed)),
            (Some(n), true) if n > self.online => Err(self.err(
                "server.workers",
                format!(
                    "expected at most {} (one worker per online CPU), found {n}",
                    self.online
                ),
            )),
            (Some(n), true) => Ok((n, (0..n).collect())),
            (Some(n), false) if n != listed.len() => Err(self.err(
                "server.cores",
                format!(
                    "expected {n} entries (one per worker, workers = {n}), found {}",
                    listed.len()
                ),
            )),
            (Some(n), false) => Ok((n, listed)),
        }
    }

    fn tls(&self, raw: RawTls) -> Result<Tls> {
        let cert = self.existing_file("tls.cert", self.required("tls.cert", raw.cert)?)?;
        let key = self.existing_file("tls.key", self.required("tls.key", raw.key)?)?;
        let client_ca = self.existing_file(
            "tls.client_ca",
            self.required("tls.client_ca", raw.client_ca)?,
        )?;
        let crl = raw
            .crl
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, p)| self.existing_file(format!("tls.crl[{i}]"), p))
            .collect::<Result<Vec<_>>>()?;
        let crl_refresh = self.duration(
            "tls.crl_refresh",
            raw.crl_refresh,
            DEFAULT_CRL_REFRESH,
            false,
        )?;
        let crl_stale = match raw.crl_stale.as_deref() {
            None | Some("serve") => CrlStale::Serve,
            Some("refuse") => CrlStale::Refuse,
            Some(v) => {
                return Err(self.err(
                    "tls.crl_stale",
                    format!("expected \"serve\" or \"refuse\", found {v:?}"),
                ))
            }
        };

        let versions = match raw.versions {
            None => vec![TlsVersion::Tls13],
            Some(list) if list.is_empty() => {
                return Err(self.err(
                    "tls.versions",
                    "expected at least one of \"1.2\", \"1.3\", found an empty list",
                ))
            }
            Some(list) => {
                let mut versions = Vec::new();
                for (i, v) in list.iter().enumerate() {
                    let key = format!("tls.versions[{i}]");
                    let version = match v.as_str() {
                        "1.2" => TlsVersion::Tls12,
                        "1.3" => TlsVersion::Tls13,
                        _ => {
                            return Err(
                                self.err(key, format!("expected \"1.2\" or \"1.3\", found {v:?}"))
                            )
                        }
                    };
                    if versions.contains(&version) {
                        return Err(self.err(key, format!("{v:?} is listed twice")));
                    }
                    versions.push(version);
                }
                versions
            }
        };

        let cipher_suites = raw.cipher_suites.unwrap_or_default();
        // Names are checked by the TLS policy, which knows the provider's suites; here we
        // only catch what can never be a name.
        if let Some(i) = cipher_suites.iter().position(|s| s.trim().is_empty()) {
            return Err(self.err(
                format!("tls.cipher_suites[{i}]"),
                "expected a cipher suite name, found an empty string",
            ));
        }

        let ticket_key_file = match raw.ticket_key_file {
            None => None,
            Some(p) if p.is_empty() => None,
            Some(p) => {
                let path = self.existing_file("tls.ticket_key_file", p)?;
                self.private_file("tls.ticket_key_file", &path)?;
                Some(path)
            }
        };
        let ticket_lifetime = self.duration(
            "tls.ticket_lifetime",
            raw.ticket_lifetime,
            DEFAULT_TICKET_LIFETIME,
            false,
        )?;
        if ticket_lifetime > MAX_TICKET_LIFETIME {
            return Err(self.err(
                "tls.ticket_lifetime",
                format!(
                    "expected at most 7d (RFC 8446 caps ticket lifetimes), found {}",
                    humantime::format_duration(ticket_lifetime)
                ),
            ));
        }

        Ok(Tls {
            cert,
            key,
            client_ca,
            crl,
            crl_refresh,
            crl_stale,
            versions,
            cipher_suites,
            session_tickets: raw.session_tickets.unwrap_or(true),
            ticket_key_file,
            ticket_lifetime,
        })
    }

    fn admin(&self, raw: Option<RawAdmin>, server: &Server) -> Result<Admin> {
        let (listen, token_file) = raw.map_or((None, None), |a| (a.listen, a.token_file));
        let listen = match listen {
            None => Some(DEFAULT_ADMIN_LISTEN),
            Some(s) if s.is_empty() => None,
            Some(s) => Some(self.socket_addr("admin.listen", &s)?),
        };
        if let Some(addr) = listen {
            if overlaps(addr, server.listen) {
                return Err(self.err(
                    "admin.listen",
                    format!(
                        "expected an address other than server.listen ({}), found {addr}",
                        server.listen
                    ),
                ));
            }
        }
        let token_file = match token_file {
            None => None,
            Some(p) if p.is_empty() => None,
            Some(p) => Some(self.existing_file("admin.token_file", p)?),
        };
        Ok(Admin { listen, token_file })
    }

    fn backend(&self, raw: RawBackend) -> Result<Backend> {
        let kind = self.required("backend.kind", raw.kind.clone())?;
        match kind.as_str() {
            "store" | "forward" | "s3" => {}
            _ => {
                return Err(self.err(
                    "backend.kind",
                    format!("expected \"store\", \"s3\" or \"forward\", found {kind:?}"),
                ))
            }
        }

        // Keys that belong to another kind are mistakes, not something to ignore.
        let owners = [
            ("root", raw.root.is_some(), "store"),
            ("fsync", raw.fsync.is_some(), "store"),
            ("multipart_expiry", raw.multipart_expiry.is_some(), "store"),
            ("etag", raw.etag.is_some(), "store"),
            ("upstream", raw.upstream.is_some(), "forward"),
            ("proxy_protocol", raw.proxy_protocol.is_some(), "forward"),
            (
                "proxy_protocol_client_cert",
                raw.proxy_protocol_client_cert.is_some(),
                "forward",
            ),
            ("endpoints", raw.endpoints.is_some(), "s3"),
            ("region", raw.region.is_some(), "s3"),
            ("credentials", raw.credentials.is_some(), "s3"),
            ("bucket_map", raw.bucket_map.is_some(), "s3"),
            ("tenant_prefix", raw.tenant_prefix.is_some(), "s3"),
            ("connect_timeout", raw.connect_timeout.is_some(), "s3"),
            ("response_timeout", raw.response_timeout.is_some(), "s3"),
        ];
        if let Some((key, _, owner)) = owners.iter().find(|(_, set, owner)| *set && *owner != kind)
        {
            return Err(self.err(
                format!("backend.{key}"),
                format!("only valid with kind = \"{owner}\", but kind is {kind:?}"),
            ));
        }

        if kind == "store" {
            let root = self.store_root(self.required("backend.root", raw.root)?)?;
            let fsync = match raw.fsync.as_deref() {
                None | Some("always") => Fsync::Always,
                Some("never") => Fsync::Never,
                Some(other) => {
                    return Err(self.err(
                        "backend.fsync",
                        format!("expected \"always\" or \"never\", found {other:?}"),
                    ))
                }
            };
            let multipart_expiry = self.duration(
                "backend.multipart_expiry",
                raw.multipart_expiry,
                DEFAULT_MULTIPART_EXPIRY,
                false,
            )?;
            let etag = match raw.etag.as_deref() {
                None | Some("md5") => Etag::Md5,
                Some("sha256") => Etag::Sha256,
                Some(other) => {
                    return Err(self.err(
                        "backend.etag",
                        format!("expected \"md5\" or \"sha256\", found {other:?}"),
                    ))
                }
            };
            return Ok(Backend::Store {
                root,
                fsync,
                multipart_expiry,
                etag,
            });
        }

        if kind == "s3" {
            return self.s3_backend(raw).map(Backend::S3);
        }

        let upstream = self.upstream(&self.required("backend.upstream", raw.upstream)?)?;
        let proxy_protocol = match raw.proxy_protocol.as_deref() {
            None => None,
            Some("v2") => Some(ProxyProtocol::V2),
            Some(other) => {
                return Err(self.err(
                    "backend.proxy_protocol",
                    format!("expected \"v2\", found {other:?}"),
                ))
            }
        };
        let proxy_protocol_client_cert = raw.proxy_protocol_client_cert.unwrap_or(false);
        // The certificate travels in a PROXY v2 TLV; without the header it has nowhere to go.
        if proxy_protocol_client_cert && proxy_protocol.is_none() {
            return Err(self.err(
                "backend.proxy_protocol_client_cert",
                "requires proxy_protocol = \"v2\", which is not set",
            ));
        }
        Ok(Backend::Forward {
            upstream,
            proxy_protocol,
            proxy_protocol_client_cert,
        })
    }

    fn s3_backend(&self, raw: RawBackend) -> Result<S3Backend> {
        let list = self.required("backend.endpoints", raw.endpoints)?;
        if list.is_empty() || list.len() > MAX_S3_ENDPOINTS {
            return Err(self.err(
                "backend.endpoints",
                format!(
                    "expected 1 to {MAX_S3_ENDPOINTS} endpoints, found {}",
                    list.len()
                ),
            ));
        }
        let mut endpoints = Vec::with_capacity(list.len());
        for (i, url) in list.into_iter().enumerate() {
            let key = format!("backend.endpoints[{i}]");
            if url.starts_with("https://") {
                // Promising TLS and sending plaintext would be the worst outcome.
                return Err(self.err(
                    key,
                    "TLS to the upstream is not implemented yet; use http:// on loopback or a private network",
                ));
            }
            let addr = url
                .strip_prefix("http://")
                .map(|a| a.trim_end_matches('/'))
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .ok_or_else(|| {
                    self.err(
                        &key,
                        format!("expected \"http://IP:PORT\" like \"http://127.0.0.1:8333\", found {url:?}"),
                    )
                })?;
            if endpoints.iter().any(|e: &S3Endpoint| e.addr == addr) {
                return Err(self.err(key, format!("{addr} is listed twice")));
            }
            endpoints.push(S3Endpoint { url, addr });
        }
        let region = raw.region.unwrap_or_else(|| "us-east-1".to_owned());
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(self.err(
                "backend.region",
                format!("expected a region name like \"us-east-1\", found {region:?}"),
            ));
        }
        let credentials = self.existing_file(
            "backend.credentials",
            self.required("backend.credentials", raw.credentials)?,
        )?;
        self.private_file("backend.credentials", &credentials)?;
        let bucket_map = raw.bucket_map.unwrap_or_default();
        for (from, to) in &bucket_map {
            let ok = |b: &str| {
                (3..=63).contains(&b.len())
                    && b.bytes().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'
                    })
            };
            if !ok(from) || !ok(to) {
                return Err(self.err(
                    format!("backend.bucket_map.{from}"),
                    format!("expected S3 bucket names (3 to 63 of a-z 0-9 . -), found {from:?} = {to:?}"),
                ));
            }
        }
        Ok(S3Backend {
            endpoints,
            region,
            credentials,
            bucket_map,
            tenant_prefix: raw.tenant_prefix.unwrap_or(false),
            connect_timeout: self.duration(
                "backend.connect_timeout",
                raw.connect_timeout,
                DEFAULT_S3_CONNECT_TIMEOUT,
                false,
            )?,
            response_timeout: self.duration(
                "backend.response_timeout",
                raw.response_timeout,
                DEFAULT_S3_RESPONSE_TIMEOUT,
                false,
            )?,
        })
    }

    fn upstream(&self, raw: &str) -> Result<Upstream> {
        const KEY: &str = "backend.upstream";
        if let Some(p) = raw.strip_prefix("unix:") {
            return Ok(Upstream::Unix(self.path(KEY, p.to_owned())?));
        }
        raw.parse().map(Upstream::Tcp).map_err(|_| {
            self.err(
                KEY,
                format!(
                    "expected \"unix:/path/to.sock\" or an IP address and port like \"127.0.0.1:9000\", found {raw:?}"
                ),
            )
        })
    }

    /// The store creates its root, but only one level: a missing parent is a typo.
    fn store_root(&self, raw: String) -> Result<PathBuf> {
        const KEY: &str = "backend.root";
        let root = self.path(KEY, raw)?;
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(root),
            Ok(_) => Err(self.err(
                KEY,
                format!("expected a directory, found a file at {}", root.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = root.parent().unwrap_or(&root);
                if parent.is_dir() {
                    Ok(root)
                } else {
                    Err(self.err(
                        KEY,
                        format!(
                            "directory {} does not exist, nor does its parent {}",
                            root.display(),
                            parent.display()
                        ),
                    ))
                }
            }
            Err(e) => Err(self.err(KEY, format!("cannot access {}: {e}", root.display()))),
        }
    }

    fn authz(&self, i: usize, raw: RawAuthz, forward: bool) -> Result<AuthzRule> {
        let identity = self.required(&format!("authz[{i}].identity"), raw.identity)?;
        if identity.is_empty() {
            return Err(self.err(
                format!("authz[{i}].identity"),
                "expected an identity pattern, found an empty string",
            ));
        }
        crate::authz::IdentityPattern::parse(&identity)
            .map_err(|e| self.err(format!("authz[{i}].identity"), e.to_string()))?;
        if forward {
            if raw.buckets.as_ref().is_some_and(|b| b != &["*"]) {
                return Err(self.err(
                    format!("authz[{i}].buckets"),
                    "a forward relay has no buckets, so this list could not be enforced; \
                     remove it",
                ));
            }
            if let Some(list) = &raw.access {
                let has = |a: &str| list.iter().any(|x| x == a);
                if has("manage") {
                    return Err(self.err(
                        format!("authz[{i}].access"),
                        "\"manage\" creates and deletes store buckets, and a forward relay \
                         has none, so it could not be enforced; remove it",
                    ));
                }
                if has("read") != has("write") {
                    return Err(self.err(
                        format!("authz[{i}].access"),
                        "a forward relay carries bytes both ways and cannot be made read- or \
                         write-only; expected [\"read\", \"write\"] to admit the relay or [] \
                         to deny it",
                    ));
                }
            }
        }
        let buckets = raw.buckets.unwrap_or_else(|| vec!["*".to_owned()]);
        let access = match raw.access {
            // Never "manage": making and removing buckets is granted only by name.
            None => Access::OBJECTS.to_vec(),
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    a.parse::<Access>().map_err(|_| {
                        self.err(
                            format!("authz[{i}].access[{j}]"),
                            format!(
                                "expected one of \"read\", \"write\", \"delete\", \"list\", \"manage\", found {a:?}"
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(AuthzRule {
            identity,
            buckets,
            access,
        })
    }

    fn tokens(&self, raw: RawTokens) -> Result<Tokens> {
        let jwks = self.existing_file("tokens.jwks", self.required("tokens.jwks", raw.jwks)?)?;
        let issuer = self.non_empty("tokens.issuer", raw.issuer)?;
        let audience = self.non_empty("tokens.audience", raw.audience)?;
        Ok(Tokens {
            jwks,
            issuer,
            audience,
            cert_bound: raw.cert_bound.unwrap_or(true),
            required: self.token_required(raw.required)?,
            leeway: self.duration("tokens.leeway", raw.leeway, DEFAULT_LEEWAY, true)?,
        })
    }

    fn token_required(&self, raw: Option<toml::Value>) -> Result<crate::authz::token::Required> {
        use crate::authz::token::Required;
        const KEY: &str = "tokens.required";
        let expected = |found: &dyn fmt::Display| {
            self.err(
                KEY,
                format!(
                    "expected true, false or a list of bucket patterns like [\"models\"], \
                     found {found}"
                ),
            )
        };
        match raw {
            None | Some(toml::Value::Boolean(true)) => Ok(Required::Always),
            Some(toml::Value::Boolean(false)) => Ok(Required::WhenPresent),
            Some(toml::Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, v) in list.iter().enumerate() {
                    match v.as_str() {
                        Some(b) if !b.is_empty() => out.push(b.to_owned()),
                        _ => {
                            return Err(self.err(
                                format!("{KEY}[{i}]"),
                                format!("expected a bucket pattern, found {v}"),
                            ))
                        }
                    }
                }
                if out.is_empty() {
                    return Err(expected(&"an empty list (write false)"));
                }
                Ok(Required::Buckets(out))
            }
            Some(v) => Err(expected(&v)),
        }
    }

    // --- value checks ------------------------------------------------------------------

    fn non_empty(&self, key: &str, raw: Option<String>) -> Result<String> {
        let s = self.required(key, raw)?;
        if s.is_empty() {
            return Err(self.err(key, "expected a non-empty string, found \"\""));
        }
        Ok(s)
    }

    fn socket_addr(&self, key: &str, raw: &str) -> Result<SocketAddr> {
        raw.parse().map_err(|_| {
            self.err(
                key,
                format!(
                    "expected an IP address and port like \"0.0.0.0:8443\" or \"[::]:8443\", found {raw:?}"
                ),
            )
        })
    }

    fn duration(
        &self,
        key: &str,
        raw: Option<String>,
        default: Duration,
        zero_ok: bool,
    ) -> Result<Duration> {
        let Some(s) = raw else { return Ok(default) };
        let d = humantime::parse_duration(&s).map_err(|e| {
            self.err(
                key,
                format!("expected a duration like \"10s\" or \"1m 30s\", found {s:?} ({e})"),
            )
        })?;
        if d.is_zero() && !zero_ok {
            return Err(self.err(
                key,
                format!("expected a duration greater than zero, found {s:?}"),
            ));
        }
        Ok(d)
    }

    /// `"64KiB/10s"`; `"0"` or `"off"` turns the check off.
    fn min_body_rate(&self, raw: Option<String>) -> Result<Option<MinBodyRate>> {
        const KEY: &str = "server.min_body_rate";
        let Some(s) = raw else {
            return Ok(Some(DEFAULT_MIN_BODY_RATE));
        };
        let t = s.trim();
        if t == "0" || t.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let expected = || {
            self.err(
                KEY,
                format!("expected a size per duration like \"64KiB/10s\", or \"off\", found {s:?}"),
            )
        };
        let (size, per) = t.split_once('/').ok_or_else(expected)?;
        let bytes = parse_size::parse_size(size.trim()).map_err(|_| expected())?;
        let window = humantime::parse_duration(per.trim()).map_err(|_| expected())?;
        if bytes == 0 || window.is_zero() {
            return Err(self.err(
                KEY,
                format!(
                    "expected a size and a duration greater than zero (or \"off\"), found {s:?}"
                ),
            ));
        }
        Ok(Some(MinBodyRate { bytes, window }))
    }

    fn size(&self, key: &str, raw: &toml::Value) -> Result<u64> {
        let size = match raw {
            toml::Value::Integer(n) => u64::try_from(*n).ok(),
            toml::Value::String(s) => parse_size::parse_size(s).ok(),
            _ => None,
        };
        match size {
            Some(0) => Err(self.err(
                key,
                format!("expected a size greater than zero, found {raw}"),
            )),
            Some(n) => Ok(n),
            None => Err(self.err(
                key,
                format!("expected a size like \"64MiB\", \"1TiB\" or \"1000\", found {raw}"),
            )),
        }
    }

    fn path(&self, key: impl Into<String>, raw: String) -> Result<PathBuf> {
        if raw.is_empty() {
            return Err(self.err(key, "expected a path, found \"\""));
        }
        let p = PathBuf::from(raw);
        Ok(if p.is_absolute() { p } else { self.dir.join(p) })
    }

    fn existing_file(&self, key: impl Into<String>, raw: String) -> Result<PathBuf> {
        let key = key.into();
        let path = self.path(&key, raw)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => Err(self.err(
                key,
                format!("expected a file, found a directory at {}", path.display()),
            )),
            Ok(_) => Ok(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(self.err(key, format!("file {} does not exist", path.display())))
            }
            Err(e) => Err(self.err(key, format!("cannot access {}: {e}", path.display()))),
        }
    }

    /// A file that holds a secret (ticket keys, admin token): refused when others could
    /// read it, as ssh refuses a private key, since whoever reads it can mint tickets
    /// around any certificate they have seen.
    fn private_file(&self, key: &str, path: &Path) -> Result<()> {
        check_private_file(path).map_err(|m| self.err(key, m))
    }

    // --- TOML errors -------------------------------------------------------------------

    /// Turns a toml error into one naming the key it points at, or its line and column.
    fn toml_error(&self, text: &str, e: &toml::de::Error) -> ConfigError {
        let message = describe_serde_message(e.message());
        let Some(span) = e.span() else {
            return self.err("", message);
        };
        // The document re-parsed as a tree of spans tells which key the span belongs to.
        // It fails only where the first parse failed on syntax, or on values (datetimes)
        // this config never uses; then line and column are the best we can say.
        if let Ok(tree) = toml::from_str::<Node>(text) {
            if let Some(key) = key_at(&tree, span.start) {
                return self.err(key, message);
            }
        }
        let (line, column) = line_column(text, span.start);
        let what = if text.parse::<toml::Table>().is_err() {
            "TOML syntax error at line"
        } else {
            "line"
        };
        self.err("", format!("{what} {line}, column {column}: {message}"))
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether binding both addresses would collide (port 0 never does: the kernel picks).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// serde's "unknown field `x`, expected one of `a`, `b`" in the words of this file format.
fn describe_serde_message(message: &str) -> String {
    let message = message.trim_end();
    if let Some((_, expected)) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once("`, "))
    {
        return format!("unknown key ({})", expected.replace('`', ""));
    }
    message.to_owned()
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A TOML document reduced to its keys and the spans of keys and values.
enum Node {
    Table(Vec<(Spanned<String>, Spanned<Node>)>),
    Array(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;

        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Table(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
        }

        deserializer.deserialize_any(NodeVisitor)
    }
}

/// The key path (`server.bogus`, `authz[1].access[0]`) whose key or value covers `pos`.
fn key_at(root: &Node, pos: usize) -> Option<String> {
    // Deepest match wins: a table's span may cover its children's, and we search every
    // branch rather than trust that spans of sibling tables never overlap.
    fn walk(
        node: &Node,
        pos: usize,
        path: &mut String,
        depth: usize,
        best: &mut Option<(usize, String)>,
    ) {
        let mut visit = |path: &mut String, own: bool, child: &Node| {
            if own && best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                *best = Some((depth, path.clone()));
            }
            walk(child, pos, path, depth + 1, best);
        };
        match node {
            Node::Table(entries) => {
                for (key, value) in entries {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key.get_ref());
                    let own = key.span().contains(&pos) || value.span().contains(&pos);
                    visit(path, own, value.get_ref());
                    path.truncate(len);
                }
            }
            Node::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    let _ = write!(path, "[{i}]");
                    visit(path, item.span().contains(&pos), item.get_ref());
                    path.truncate(len);
                }
            }
            Node::Scalar => {}
        }
    }

    let mut best = None;
    walk(root, pos, &mut String::new(), 0, &mut best);
    best.map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// The config section of DESIGN.md, verbatim.
    const DESIGN_EXAMPLE: &str = r#"
[server]
listen = "0.0.0.0:8443"
workers = "auto"            # one per online core, or a number
cores = []                  # explicit core list; empty = 0..workers
steer_by_cpu = true         # SO_INCOMING_CPU + reuseport CBPF
sqpoll = false              # IORING_SETUP_SQPOLL: a kernel thread polls the rings, no syscall per op
max_connections = 100000    # per appliance; over it, new connections are refused and counted
max_object_size = "1TiB"    # store: larger bodies get 413
handshake_timeout = "10s"
idle_timeout = "60s"
request_head_timeout = "10s" # the whole request head must arrive within this
min_body_rate = "64KiB/10s"  # slower bodies get 408

[tls]
cert = "server.crt"          # PEM chain
key = "server.key"           # PEM, PKCS#8 / SEC1 / PKCS#1
client_ca = "clients-ca.pem" # trust anchors for client certificates
crl = ["clients.crl"]        # optional, PEM or DER
crl_refresh = "30s"          # CRL files are re-read when they change
crl_stale = "serve"          # CRL past nextUpdate: "serve" (log, count) or "refuse"
versions = ["1.3"]           # add "1.2" to allow TLS 1.2 (ECDHE+AEAD only)
cipher_suites = []           # empty = provider defaults filtered to AEAD suites
session_tickets = true
ticket_key_file = ""         # shared key file so a fleet resumes each other's sessions

[admin]
listen = "127.0.0.1:9090"

[backend]
kind = "store"               # or "s3" (an S3-compatible upstream) or "forward"
root = "/srv/lake"           # store: where objects live
fsync = "always"             # store: "always" | "never"
etag = "md5"                 # store: single-part ETag "md5" (as S3) | "sha256"
# upstream = "unix:/run/lake.sock" | "127.0.0.1:9000"   (forward)
# proxy_protocol = "v2"                                  (forward, optional)
# proxy_protocol_client_cert = false                     (forward: DER leaf in TLV 0x28)
# endpoints = ["http://127.0.0.1:8333"]                   (s3: S3-compatible upstreams, failover in order; http only)
# region = "us-east-1"                                   (s3: SigV4 region)
# credentials = "s3-credentials.toml"                    (s3: access_key_id, secret_access_key; mode 0600)
# bucket_map = { datasets = "lake-datasets" }            (s3: client bucket → upstream bucket; others keep their name)
# tenant_prefix = false                                  (s3: prefix keys with the identity)
# connect_timeout = "3s"                                 (s3: TCP connect to an endpoint)
# response_timeout = "30s"                               (s3: response head after the request; past it 504)

[[authz]]                    # first match wins; no match = 403 / connection refused
identity = "spiffe://lake.example/trainer/*"
buckets = ["datasets"]
access = ["read"]            # "read", "write", "delete", "list", "manage" (create/delete the bucket)

[tokens]                     # optional: OAuth/JWT bearer tokens on top of mTLS
jwks = "jwks.json"
issuer = "https://auth.lake.example"
audience = "lakegate"
cert_bound = true            # RFC 8705: cnf."x5t#S256" must equal the client cert's thumbprint
required = true              # every request needs a token (false: checked only when present)
leeway = "30s"               # clock skew allowed on exp / nbf
"#;

    /// The smallest valid file: the two required tables.
    const MINIMAL: &str = r#"
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "clients-ca.pem"

[backend]
kind = "store"
root = "data"
"#;

    const ONLINE: usize = 4;

    /// A folder holding every file the configs above reference.
    fn fixture() -> TempDir {
        let dir = TempDir::new().expect("temp dir");
        for f in [
            "server.crt",
            "server.key",
            "clients-ca.pem",
            "clients.crl",
            "jwks.json",
        ] {
            fs::write(dir.path().join(f), "x").expect("write fixture");
        }
        dir
    }

    fn parse(dir: &TempDir, text: &str) -> Result<Config> {
        build(text, &dir.path().join("lakegate.toml"), ONLINE)
    }

    fn parse_ok(dir: &TempDir, text: &str) -> Config {
        parse(dir, text).unwrap_or_else(|e| panic!("expected a valid config, got: {e}"))
    }

    fn parse_err(dir: &TempDir, text: &str) -> ConfigError {
        match parse(dir, text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        }
    }

    /// MINIMAL with `extra` appended to the table named by `header` (added if absent).
    fn with(header: &str, extra: &str) -> String {
        let h = format!("[{header}]\n");
        if MINIMAL.contains(&h) {
            MINIMAL.replacen(&h, &format!("{h}{extra}\n"), 1)
        } else {
            format!("{MINIMAL}\n{h}{extra}\n")
        }
    }

    #[test]
    fn design_example_parses() {
        let dir = fixture();
        let root = dir.path().join("lake");
        let text = DESIGN_EXAMPLE.replace("/srv/lake", &root.display().to_string());
        let c = parse_ok(&dir, &text);
        let d = dir.path();

        assert_eq!(c.path, d.join("lakegate.toml"));
        assert_eq!(c.server.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.server.workers, ONLINE);
        assert_eq!(c.server.cores, vec![0, 1, 2, 3]);
        assert!(c.server.steer_by_cpu);
        assert!(!c.server.sqpoll);
        assert_eq!(c.server.max_connections, 100_000);
        assert_eq!(c.server.max_object_size, 1 << 40);
        assert_eq!(c.server.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.request_head_timeout, Duration::from_secs(10));
        assert_eq!(c.server.min_body_rate, Some(DEFAULT_MIN_BODY_RATE));
        assert_eq!(c.server.drain_timeout, Duration::from_secs(30));

        assert_eq!(c.tls.cert, d.join("server.crt"));
        assert_eq!(c.tls.key, d.join("server.key"));
        assert_eq!(c.tls.client_ca, d.join("clients-ca.pem"));
        assert_eq!(c.tls.crl, vec![d.join("clients.crl")]);
        assert_eq!(c.tls.crl_refresh, Duration::from_secs(30));
        assert_eq!(c.tls.versions, vec![TlsVersion::Tls13]);
        assert!(c.tls.cipher_suites.is_empty());
        assert!(c.tls.session_tickets);
        assert_eq!(c.tls.ticket_key_file, None);

        assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            c.backend,
            Backend::Store {
                root,
                fsync: Fsync::Always,
                multipart_expiry: DEFAULT_MULTIPART_EXPIRY,
                etag: Etag::Md5,
            }
        );
        assert_eq!(
            c.authz,
            vec![AuthzRule {
                identity: "spiffe://lake.example/trainer/*".into(),
                buckets: vec!["datasets".into()],
                access: vec![Access::Read],
            }]
        );
        assert_eq!(
            c.tokens,
            Some(Tokens {
                jwks: d.join("jwks.json"),
                issuer: "https://auth.lake.example".into(),
                audience: "lakegate".into(),
                cert_bound: true,
                required: crate::authz::token::Required::Always,
                leeway: Duration::from_secs(30),
            })
        );
        assert_eq!(c.tls.ticket_lifetime, Duration::from_secs(6 * 3600));
        assert_eq!(
            c.server.max_connection_age,
            Some(Duration::from_secs(24 * 3600))
        );
    }

    #[test]
    fn defaults() {
        let dir = fixture();
        let c = parse_ok(&dir, MINIMAL);
        assert_eq!(c.server.listen, DEFAULT_LISTEN);
        assert_eq!(c.server.workers, ONLINE);
        assert_eq!(c.server.cores, (0..ONLINE).collect::<Vec<_>>());
        assert!(c.server.steer_by_cpu);
        assert!(!c.server.sqpoll);
        assert_eq!(c.server.max_connections, 100_000);
        assert_eq!(c.server.max_object_size, 1_099_511_627_776);
        assert_eq!(c.server.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
        assert!(c.tls.crl.is_empty());
        assert_eq!(c.tls.crl_refresh, Duration::from_secs(30));
        assert_eq!(c.tls.versions, vec![TlsVersion::Tls13]);
        assert!(c.tls.session_tickets);
        assert_eq!(c.tls.ticket_key_file, None);
        assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            c.backend,
            Backend::Store {
                root: dir.path().join("data"),
                fsync: Fsync::Always,
                multipart_expiry: DEFAULT_MULTIPART_EXPIRY,
                etag: Etag::Md5,
            }
        );
        assert!(c.authz.is_empty());
        assert_eq!(c.tokens, None);
    }

    #[test]
    fn authz_defaults_grant_everything() {
        let dir = fixture();
        let c = parse_ok(
            &dir,
            &format!("{MINIMAL}\n[[authz]]\nidentity = \"spiffe://a\"\n"),
        );
        assert_eq!(c.authz[0].buckets, vec!["*".to_owned()]);
        assert_eq!(c.authz[0].access, Access::OBJECTS.to_vec());
    }

    #[test]
    fn admin_listen_empty_disables_and_section_present_keeps_default() {
        let dir = fixture();
        let c = parse_ok(&dir, &with("admin", "listen = \"\""));
        assert_eq!(c.admin.listen, None);
        let c = parse_ok(&dir, &with("admin", ""));
        assert_eq!(c.admin.listen, Some(DEFAULT_ADMIN_LISTEN));
        assert_eq!(c.admin.token_file, None);
    }

    #[test]
    fn admin_token_file_resolves_and_must_exist() {
        let dir = fixture();
        fs::write(dir.path().join("admin.token"), "x").unwrap();
        let c = parse_ok(&dir, &with("admin", "token_file = \"admin.token\""));
        assert_eq!(c.admin.token_file, Some(dir.path().join("admin.token")));
        let c = parse_ok(&dir, &with("admin", "token_file = \"\""));
        assert_eq!(c.admin.token_file, None);
        let e = parse_err(&dir, &with("admin", "token_file = \"gone.token\""));
        assert_eq!(e.key, "admin.token_file");
        assert!(e.message.contains("does not exist"), "{e}");
    }

    #[test]
    fn admin_listen_may_not_collide_with_server_listen() {
        let dir = fixture();
        let text = format!(
            "{}\n[server]\nlisten = \"0.0.0.0:9090\"\n",
            with("admin", "listen = \"127.0.0.1:9090\"")
        );
        assert_eq!(parse_err(&dir, &text).key, "admin.listen");
        // Port 0 lets the kernel choose, which is what tests do for both.
        let text = format!(
            "{}\n[server]\nlisten = \"127.0.0.1:0\"\n",
            with("admin", "listen = \"127.0.0.1:0\"")
        );
        parse_ok(&dir, &text);
    }

    #[test]
    fn unknown_key_in_each_table_is_named() {
        let dir = fixture();
        let full = format!(
            "{MINIMAL}\n[server]\n[admin]\n[[authz]]\nidentity = \"a\"\n[[authz]]\nidentity = \"b\"\n[tokens]\njwks = \"jwks.json\"\nissuer = \"i\"\naudience = \"a\"\n"
        );
        let cases = [
            ("[server]\n", "server.bogus", "listen, workers"),
            ("[tls]\n", "tls.bogus", "cert, key"),
            ("[admin]\n", "admin.bogus", "listen or token_file"),
            ("[backend]\n", "backend.bogus", "kind, root"),
            ("identity = \"b\"\n", "authz[1].bogus", "identity, buckets"),
            ("[tokens]\n", "tokens.bogus", "jwks, issuer"),
        ];
        for (after, key, expected) in cases {
            let text = full.replacen(after, &format!("{after}bogus = 1\n"), 1);
            let e = parse_err(&dir, &text);
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.starts_with("unknown key (expected "), "{e}");
            assert!(e.message.contains(expected), "{e}");
            assert_eq!(e.file, dir.path().join("lakegate.toml"));
        }
        let e = parse_err(&dir, &format!("bogus = 1\n{MINIMAL}"));
        assert_eq!(e.key, "bogus");
        assert!(
            e.message
                .contains("server, tls, admin, backend, authz, tokens"),
            "{e}"
        );
        let e = parse_err(&dir, &format!("{MINIMAL}\n[bogus]\nx = 1\n"));
        assert_eq!(e.key, "bogus");
    }

    #[test]
    fn slow_client_limits() {
        let dir = fixture();
        let c = parse_ok(&dir, MINIMAL);
        assert_eq!(c.server.request_head_timeout, Duration::from_secs(10));
        assert_eq!(
            c.server.min_body_rate,
            Some(MinBodyRate {
                bytes: 65536,
                window: Duration::from_secs(10)
            })
        );
        let rate = |v: &str| parse(&dir, &with("server", &format!("min_body_rate = {v:?}")));
        assert_eq!(
            rate("1MiB / 2s").unwrap().server.min_body_rate,
            Some(MinBodyRate {
                bytes: 1 << 20,
                window: Duration::from_secs(2)
            })
        );
        assert_eq!(rate("off").unwrap().server.min_body_rate, None);
        assert_eq!(rate("0").unwrap().server.min_body_rate, None);
        for bad in ["64KiB", "fast/10s", "64KiB/soon", "0/10s", "64KiB/0s", ""] {
            let e = rate(bad).unwrap_err();
            assert_eq!(e.key, "server.min_body_rate", "{bad:?}: {e}");
            assert!(e.message.starts_with("expected "), "{bad:?}: {e}");
        }
        let e = parse_err(&dir, &with("server", "request_head_timeout = \"0s\""));
        assert_eq!(e.key, "server.request_head_timeout");
        let c = parse_ok(&dir, &with("server", "request_head_timeout = \"2s\""));
        assert_eq!(c.server.request_head_timeout, Duration::from_secs(2));
    }

    #[test]
    fn wrong_type_names_the_key() {
        let dir = fixture();
        let e = parse_err(&dir, &with("tls", "crl = [\"clients.crl\", 7]"));
        assert_eq!(e.key, "tls.crl[1]", "{e}");
        assert!(e.message.contains("expected a string"), "{e}");
        let e = parse_err(&dir, &with("server", "sqpoll = \"yes\""));
        assert_eq!(e.key, "server.sqpoll", "{e}");
    }

    #[test]
    fn syntax_error_reports_line_and_column() {
        let dir = fixture();
        let e = parse_err(&dir, "[server]\nlisten = \"0.0.0.0:8443\nworkers = 2\n");
        assert_eq!(e.key, "");
        assert!(
            e.message
                .starts_with("TOML syntax error at line 2, column "),
            "{e}"
        );
        let e = parse_err(&dir, "[server]\nworkers = 1\nworkers = 2\n");
        assert!(
            e.message
                .starts_with("TOML syntax error at line 3, column 1: duplicate key"),
            "{e}"
        );
        // Valid TOML that the key finder cannot walk still says where.
        let e = parse_err(&dir, "server = { when = 1979-05-27 }\n");
        assert_eq!(e.key, "");
        assert!(
            e.message.starts_with("line 1, column 12: unknown key"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_names_the_key() {
        let dir = fixture();
        let e = parse_err(&dir, &with("server", "idle_timeout = \"ten seconds\""));
        assert_eq!(e.key, "server.idle_timeout");
        assert!(
            e.message.starts_with("expected a duration like \"10s\""),
            "{e}"
        );
        assert!(e.message.contains("found \"ten seconds\""), "{e}");
        let e = parse_err(&dir, &with("tls", "crl_refresh = \"0s\""));
        assert_eq!(e.key, "tls.crl_refresh");
        let c = parse_ok(&dir, &with("server", "handshake_timeout = \"1m 30s\""));
        assert_eq!(c.server.handshake_timeout, Duration::from_secs(90));
    }

    #[test]
    fn sizes() {
        let dir = fixture();
        for (raw, bytes) in [
            ("\"64MiB\"", 64 << 20),
            ("\"1000\"", 1000),
            ("1000", 1000),
            ("\"2 GB\"", 2_000_000_000),
        ] {
            let c = parse_ok(&dir, &with("server", &format!("max_object_size = {raw}")));
            assert_eq!(c.server.max_object_size, bytes, "{raw}");
        }
        for raw in ["\"lots\"", "-1", "\"0\"", "1.5"] {
            let e = parse_err(&dir, &with("server", &format!("max_object_size = {raw}")));
            assert_eq!(e.key, "server.max_object_size", "{raw}: {e}");
            assert!(e.message.contains(&format!("found {raw}")), "{e}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let dir = fixture();
        fs::remove_file(dir.path().join("server.crt")).unwrap();
        let e = parse_err(&dir, MINIMAL);
        assert_eq!(e.key, "tls.cert");
        assert_eq!(
            e.message,
            format!(
                "file {} does not exist",
                dir.path().join("server.crt").display()
            )
        );

        let dir = fixture();
        let e = parse_err(&dir, &with("tls", "crl = [\"clients.crl\", \"gone.crl\"]"));
        assert_eq!(e.key, "tls.crl[1]");
        let e = parse_err(&dir, &with("tls", "ticket_key_file = \"tickets.key\""));
        assert_eq!(e.key, "tls.ticket_key_file");
    }

    #[test]
    fn crl_stale_policy_is_serve_or_refuse() {
        let dir = fixture();
        let c = parse_ok(&dir, &with("tls", "crl_stale = \"refuse\""));
        assert_eq!(c.tls.crl_stale, CrlStale::Refuse);
        let e = parse_err(&dir, &with("tls", "crl_stale = \"ignore\""));
        assert_eq!(e.key, "tls.crl_stale");
        assert_eq!(
            e.message,
            "expected \"serve\" or \"refuse\", found \"ignore\""
        );
    }

    #[test]
    fn missing_required_tables_and_keys() {
        let dir = fixture();
        let e = parse_err(&dir, "[backend]\nkind = \"store\"\nroot = \"data\"\n");
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("tls", "missing required table [tls]")
        );
        let e = parse_err(
            &dir,
            &MINIMAL
                .replace("[backend]", "[nothing]")
                .replace("kind = \"store\"\nroot = \"data\"", ""),
        );
        assert_eq!(e.key, "nothing", "{e}");
        let e = parse_err(
            &dir,
            &MINIMAL.replace("[backend]\nkind = \"store\"\nroot = \"data\"\n", ""),
        );
        assert_eq!(e.key, "backend");
        let e = parse_err(&dir, &MINIMAL.replace("key = \"server.key\"\n", ""));
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("tls.key", "missing required key")
        );
        let e = parse_err(&dir, &MINIMAL.replace("kind = \"store\"\n", ""));
        assert_eq!(e.key, "backend.kind");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let dir = fixture();
        fs::create_dir(dir.path().join("pki")).unwrap();
        fs::write(dir.path().join("pki/ca.pem"), "x").unwrap();
        let abs_crl = dir.path().join("clients.crl");
        let text = MINIMAL.replace("clients-ca.pem", "pki/ca.pem").replace(
            "[backend]",
            &format!("crl = [{:?}]\n\n[backend]", abs_crl.display().to_string()),
        );
        let c = parse_ok(&dir, &text);
        assert_eq!(c.tls.client_ca, dir.path().join("pki/ca.pem"));
        assert_eq!(c.tls.crl, vec![abs_crl]);

        // The process's working directory plays no part.
        let elsewhere = TempDir::new().unwrap();
        let e = build(MINIMAL, &elsewhere.path().join("lakegate.toml"), ONLINE).unwrap_err();
        assert_eq!(e.key, "tls.cert");
        assert!(
            e.message.contains(&elsewhere.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn load_reads_the_file() {
        let dir = fixture();
        let path = dir.path().join("lakegate.toml");
        fs::write(&path, MINIMAL).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.path, path);
        let e = Config::load(&dir.path().join("missing.toml")).unwrap_err();
        assert_eq!(e.key, "");
        assert!(e.message.starts_with("cannot read the file"), "{e}");
    }

    #[test]
    fn store_root_must_exist_or_have_a_parent() {
        let dir = fixture();
        let e = parse_err(&dir, &MINIMAL.replace("root = \"data\"", "root = \"a/b\""));
        assert_eq!(e.key, "backend.root");
        assert!(e.message.contains("nor does its parent"), "{e}");
        let e = parse_err(
            &dir,
            &MINIMAL.replace("root = \"data\"", "root = \"server.crt\""),
        );
        assert!(e.message.starts_with("expected a directory"), "{e}");
        let e = parse_err(&dir, &with("backend", "fsync = \"sometimes\""));
        assert_eq!(e.key, "backend.fsync");
        let c = parse_ok(&dir, &with("backend", "fsync = \"never\""));
        assert!(matches!(
            c.backend,
            Backend::Store {
                fsync: Fsync::Never,
                ..
            }
        ));
        let e = parse_err(&dir, &with("backend", "etag = \"crc32\""));
        assert_eq!(e.key, "backend.etag");
        for (v, want) in [("md5", Etag::Md5), ("sha256", Etag::Sha256)] {
            let c = parse_ok(&dir, &with("backend", &format!("etag = \"{v}\"")));
            assert!(matches!(c.backend, Backend::Store { etag, .. } if etag == want));
        }
        assert!(matches!(
            parse_ok(&dir, MINIMAL).backend,
            Backend::Store {
                etag: Etag::Md5,
                ..
            }
        ));
    }

    fn forward(dir: &TempDir, extra: &str) -> Result<Config> {
        let text = MINIMAL.replace(
            "kind = \"store\"\nroot = \"data\"",
            &format!("kind = \"forward\"\n{extra}"),
        );
        parse(dir, &text)
    }

    #[test]
    fn unix_and_tcp_upstreams() {
        let dir = fixture();
        let c = forward(&dir, "upstream = \"unix:/run/lake.sock\"").unwrap();
        assert_eq!(
            c.backend,
            Backend::Forward {
                upstream: Upstream::Unix("/run/lake.sock".into()),
                proxy_protocol: None,
                proxy_protocol_client_cert: false,
            }
        );
        let c = forward(&dir, "upstream = \"unix:run/lake.sock\"").unwrap();
        let Backend::Forward { upstream, .. } = c.backend else {
            panic!("forward expected")
        };
        assert_eq!(upstream, Upstream::Unix(dir.path().join("run/lake.sock")));

        let c = forward(
            &dir,
            "upstream = \"127.0.0.1:9000\"\nproxy_protocol = \"v2\"\nproxy_protocol_client_cert = true",
        )
        .unwrap();
        assert_eq!(
            c.backend,
            Backend::Forward {
                upstream: Upstream::Tcp("127.0.0.1:9000".parse().unwrap()),
                proxy_protocol: Some(ProxyProtocol::V2),
                proxy_protocol_client_cert: true,
            }
        );

        for (extra, key) in [
            ("upstream = \"localhost:9000\"", "backend.upstream"),
            ("upstream = \"unix:\"", "backend.upstream"),
            ("", "backend.upstream"),
            (
                "upstream = \"[::1]:1\"\nproxy_protocol = \"v1\"",
                "backend.proxy_protocol",
            ),
            (
                "upstream = \"[::1]:1\"\nproxy_protocol_client_cert = true",
                "backend.proxy_protocol_client_cert",
            ),
        ] {
            let e = forward(&dir, extra).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    #[test]
    fn backend_kind_and_foreign_keys() {
        let dir = fixture();
        let e = forward(&dir, "upstream = \"127.0.0.1:9000\"\nroot = \"data\"").unwrap_err();
        assert_eq!(e.key, "backend.root");
        assert_eq!(
            e.message,
            "only valid with kind = \"store\", but kind is \"forward\""
        );
        let e = parse_err(&dir, &with("backend", "upstream = \"127.0.0.1:9000\""));
        assert_eq!(e.key, "backend.upstream");

        let e = forward(&dir, "endpoints = [\"http://127.0.0.1:8333\"]").unwrap_err();
        assert_eq!(e.key, "backend.endpoints");

        let s3 = MINIMAL.replace(
            "kind = \"store\"\nroot = \"data\"",
            "kind = \"s3\"\nendpoints = [\"http://127.0.0.1:8333\"]\nregion = \"us-east-1\"\nbucket_map = { datasets = \"lake-datasets\" }",
        );
        let e = parse_err(&dir, &s3);
        assert_eq!(e.key, "backend.credentials");
        assert_eq!(e.message, "missing required key");

        // The credentials file is a secret: group- or world-readable is refused.
        use std::os::unix::fs::PermissionsExt;
        let creds = dir.path().join("s3-credentials.toml");
        std::fs::write(
            &creds,
            "access_key_id = \"AK\"\nsecret_access_key = \"do-not-print\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
        let with_creds = s3.replace(
            "region = ",
            "credentials = \"s3-credentials.toml\"\nregion = ",
        );
        let e = parse_err(&dir, &with_creds);
        assert_eq!(e.key, "backend.credentials");
        assert!(e.message.contains("mode 0644"), "{e}");
        assert!(!e.to_string().contains("do-not-print"), "{e}");
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse_ok(&dir, &with_creds);
        let Backend::S3(b) = &c.backend else {
            panic!("not s3: {:?}", c.backend)
        };
        assert_eq!(b.endpoints[0].addr, "127.0.0.1:8333".parse().unwrap());
        assert_eq!(b.bucket_map["datasets"], "lake-datasets");
        assert!(!format!("{:?}", c.effective()).contains("do-not-print"));

        let e = parse_err(
            &dir,
            &with_creds.replace("http://127.0.0.1:8333", "https://127.0.0.1:8333"),
        );
        assert_eq!(e.key, "backend.endpoints[0]");
        assert!(e.message.contains("not implemented"), "{e}");

        let e = parse_err(&dir, &MINIMAL.replace("\"store\"", "\"disk\""));
        assert_eq!(
            e.message,
            "expected \"store\", \"s3\" or \"forward\", found \"disk\""
        );
    }

    #[test]
    fn workers_and_cores() {
        let dir = fixture();
        let server = |extra: &str| parse(&dir, &with("server", extra)).map(|c| c.server);

        let s = server("workers = 2").unwrap();
        assert_eq!((s.workers, s.cores), (2, vec![0, 1]));
        let s = server("cores = [3, 1]").unwrap();
        assert_eq!((s.workers, s.cores), (2, vec![3, 1]));
        let s = server("workers = \"auto\"\ncores = [2]").unwrap();
        assert_eq!((s.workers, s.cores), (1, vec![2]));
        let s = server("workers = 2\ncores = [2, 3]").unwrap();
        assert_eq!((s.workers, s.cores), (2, vec![2, 3]));

        let e = server("workers = \"many\"").unwrap_err();
        assert_eq!(e.key, "server.workers");
        assert_eq!(
            e.message,
            "expected \"auto\" or a positive integer, found \"many\""
        );
        for bad in ["0", "-2", "1.5", "true"] {
            let e = server(&format!("workers = {bad}")).unwrap_err();
            assert_eq!(e.key, "server.workers", "{bad}");
            assert!(e.message.ends_with(&format!("found {bad}")), "{e}");
        }
        let e = server("workers = 5").unwrap_err();
        assert_eq!(e.key, "server.workers");
        assert!(e.message.contains("at most 4"), "{e}");

        let e = server("cores = [0, 4]").unwrap_err();
        assert_eq!(e.key, "server.cores[1]");
        assert!(e.message.contains("from 0 to 3"), "{e}");
        let e = server("cores = [-1]").unwrap_err();
        assert_eq!(e.key, "server.cores[0]");
        let e = server("cores = [1, 2, 1]").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("server.cores[2]", "CPU 1 is listed twice")
        );
        let e = server("workers = 3\ncores = [0, 1]").unwrap_err();
        assert_eq!(e.key, "server.cores");
        assert!(e.message.contains("expected 3 entries"), "{e}");
    }

    #[test]
    fn server_scalars() {
        let dir = fixture();
        let e = parse_err(&dir, &with("server", "max_connections = 0"));
        assert_eq!(e.key, "server.max_connections");
        let e = parse_err(&dir, &with("server", "listen = \"8443\""));
        assert_eq!(e.key, "server.listen");
        let c = parse_ok(
            &dir,
            &with(
                "server",
                "listen = \"[::]:443\"\nsqpoll = true\ndrain_timeout = \"0s\"",
            ),
        );
        assert_eq!(c.server.listen, "[::]:443".parse().unwrap());
        assert!(c.server.sqpoll);
        assert_eq!(c.server.drain_timeout, Duration::ZERO);
    }

    #[test]
    fn tls_versions() {
        let dir = fixture();
        let c = parse_ok(&dir, &with("tls", "versions = [\"1.2\", \"1.3\"]"));
        assert_eq!(c.tls.versions, vec![TlsVersion::Tls12, TlsVersion::Tls13]);
        let e = parse_err(&dir, &with("tls", "versions = []"));
        assert_eq!(e.key, "tls.versions");
        let e = parse_err(&dir, &with("tls", "versions = [\"1.3\", \"1.1\"]"));
        assert_eq!(e.key, "tls.versions[1]");
        assert_eq!(e.message, "expected \"1.2\" or \"1.3\", found \"1.1\"");
        let e = parse_err(&dir, &with("tls", "versions = [\"1.3\", \"1.3\"]"));
        assert_eq!(e.key, "tls.versions[1]");
    }

    #[test]
    fn authz_validation() {
        let dir = fixture();
        let rules = "[[authz]]\nidentity = \"cn:a\"\n[[authz]]\nidentity = \"cn:b\"\naccess = [\"read\", \"admin\"]\n";
        let e = parse_err(&dir, &format!("{MINIMAL}\n{rules}"));
        assert_eq!(e.key, "authz[1].access[1]");
        assert_eq!(
            e.message,
            "expected one of \"read\", \"write\", \"delete\", \"list\", \"manage\", found \"admin\""
        );
        let e = parse_err(&dir, &format!("{MINIMAL}\n[[authz]]\nidentity = \"\"\n"));
        assert_eq!(e.key, "authz[0].identity");
        let e = parse_err(&dir, &format!("{MINIMAL}\n[[authz]]\nbuckets = [\"x\"]\n"));
        assert_eq!(e.key, "authz[0].identity");
        // An untyped pattern (the old "any name" matching) says how to write it.
        let e = parse_err(
            &dir,
            &format!("{MINIMAL}\n[[authz]]\nidentity = \"*.lake.example\"\n"),
        );
        assert_eq!(e.key, "authz[0].identity");
        assert!(e.message.contains("\"dns:*.lake.example\""), "{e}");
        // Forward mode: what a relay cannot enforce is refused.
        let fwd = |rule: &str| {
            forward(
                &dir,
                &format!(
                    "upstream = \"127.0.0.1:9000\"\n[[authz]]\nidentity = \"spiffe://a\"\n{rule}"
                ),
            )
        };
        assert!(fwd("").is_ok());
        assert!(fwd("access = []").is_ok());
        assert!(fwd("access = [\"read\", \"write\"]").is_ok());
        let e = fwd("access = [\"read\"]").unwrap_err();
        assert_eq!(e.key, "authz[0].access");
        let e = fwd("buckets = [\"datasets\"]").unwrap_err();
        assert_eq!(e.key, "authz[0].buckets");
        let e = fwd("access = [\"read\", \"write\", \"manage\"]").unwrap_err();
        assert_eq!(e.key, "authz[0].access");
        // "manage" is granted by name only, never by an omitted access list.
        let c = parse_ok(
            &dir,
            &format!("{MINIMAL}\n[[authz]]\nidentity = \"cn:a\"\naccess = [\"list\", \"manage\"]\n[[authz]]\nidentity = \"cn:b\"\n"),
        );
        assert_eq!(c.authz[0].access, vec![Access::List, Access::Manage]);
        assert!(!c.authz[1].access.contains(&Access::Manage));
    }

    #[test]
    fn ticket_lifetime_and_connection_age() {
        let dir = fixture();
        let c = parse_ok(&dir, &with("tls", "ticket_lifetime = \"10m\""));
        assert_eq!(c.tls.ticket_lifetime, Duration::from_secs(600));
        let e = parse_err(&dir, &with("tls", "ticket_lifetime = \"8d\""));
        assert_eq!(e.key, "tls.ticket_lifetime");
        let e = parse_err(&dir, &with("tls", "ticket_lifetime = \"0s\""));
        assert_eq!(e.key, "tls.ticket_lifetime");
        let c = parse_ok(&dir, &with("server", "max_connection_age = \"0\""));
        assert_eq!(c.server.max_connection_age, None);
        let c = parse_ok(&dir, &with("server", "max_connection_age = \"1h\""));
        assert_eq!(c.server.max_connection_age, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn ticket_key_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = fixture();
        let f = dir.path().join("tickets.key");
        fs::write(&f, "x").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o666] {
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            let e = parse_err(&dir, &with("tls", "ticket_key_file = \"tickets.key\""));
            assert_eq!(e.key, "tls.ticket_key_file");
            assert!(e.message.contains(&format!("mode {mode:04o}")), "{e}");
            assert!(e.message.contains("tickets.key"), "{e}");
        }
        for mode in [0o600, 0o400] {
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            parse_ok(&dir, &with("tls", "ticket_key_file = \"tickets.key\""));
        }
    }

    #[test]
    fn tokens_validation() {
        let dir = fixture();
        let base = "jwks = \"jwks.json\"\nissuer = \"i\"\naudience = \"a\"";
        use crate::authz::token::Required;
        let c = parse_ok(
            &dir,
            &with(
                "tokens",
                &format!("{base}\nrequired = false\nleeway = \"5s\""),
            ),
        );
        let t = c.tokens.unwrap();
        assert_eq!(t.required, Required::WhenPresent);
        assert_eq!(t.leeway, Duration::from_secs(5));
        assert!(t.cert_bound);
        let c = parse_ok(&dir, &with("tokens", base));
        assert_eq!(c.tokens.unwrap().required, Required::Always);
        let c = parse_ok(
            &dir,
            &with(
                "tokens",
                &format!("{base}\nrequired = [\"models\", \"ckpt-*\"]"),
            ),
        );
        assert_eq!(
            c.tokens.unwrap().required,
            Required::Buckets(vec!["models".into(), "ckpt-*".into()])
        );
        for bad in ["required = []", "required = \"yes\"", "required = 1"] {
            let e = parse_err(&dir, &with("tokens", &format!("{base}\n{bad}")));
            assert_eq!(e.key, "tokens.required", "{bad}");
        }
        let e = parse_err(&dir, &with("tokens", &format!("{base}\nrequired = [\"\"]")));
        assert_eq!(e.key, "tokens.required[0]");
        // A relay has no HTTP requests to carry a token: refused, not ignored.
        let fwd = MINIMAL.replace(
            "kind = \"store\"",
            "kind = \"forward\"\nupstream = \"127.0.0.1:9000\"",
        );
        let fwd = fwd.replace("root = \"data\"\n", "");
        let e = parse_err(&dir, &format!("{fwd}\n[tokens]\n{base}\n"));
        assert_eq!(e.key, "tokens");
        assert!(e.message.contains("forward"), "{e}");
        let e = parse_err(
            &dir,
            &with("tokens", &base.replace("jwks.json", "nope.json")),
        );
        assert_eq!(e.key, "tokens.jwks");
        let e = parse_err(
            &dir,
            &with("tokens", &base.replace("issuer = \"i\"", "issuer = \"\"")),
        );
        assert_eq!(e.key, "tokens.issuer");
        let e = parse_err(&dir, &with("tokens", &base.replace("audience = \"a\"", "")));
        assert_eq!(e.key, "tokens.audience");
    }

    #[test]
    fn display_format() {
        let e = ConfigError {
            file: "/etc/lakegate.toml".into(),
            key: "server.workers".into(),
            message: "expected \"auto\" or a positive integer, found \"many\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/lakegate.toml: server.workers: expected \"auto\" or a positive integer, found \"many\""
        );
        let e = ConfigError {
            file: "/etc/lakegate.toml".into(),
            key: String::new(),
            message: "line 3, column 1: duplicate key `workers`".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/lakegate.toml: line 3, column 1: duplicate key `workers`"
        );

        let dir = fixture();
        fs::remove_file(dir.path().join("server.crt")).unwrap();
        let e = parse_err(&dir, MINIMAL);
        let file = dir.path().join("lakegate.toml");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: tls.cert: file {} does not exist",
                file.display(),
                dir.path().join("server.crt").display()
            )
        );
    }

    #[test]
    fn key_paths_from_spans() {
        let text = "a = 1\n[t]\nx = [1, { y = 2 }]\n[[r]]\nz = 1\n[[r]]\nz = 2\n";
        let tree: Node = toml::from_str(text).unwrap();
        let at = |needle: &str| key_at(&tree, text.find(needle).unwrap());
        assert_eq!(at("a =").as_deref(), Some("a"));
        assert_eq!(at("y =").as_deref(), Some("t.x[1].y"));
        assert_eq!(at("2 }").as_deref(), Some("t.x[1].y"));
        assert_eq!(at("z = 2").as_deref(), Some("r[1].z"));
        assert_eq!(line_column("ab\ncdé f", 8), (2, 5));
    }
}
