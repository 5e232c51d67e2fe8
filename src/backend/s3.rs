//! The `s3` backend's runtime-free side: the upstream's credentials and SigV4 signing,
//! how a client's bucket and key map onto the upstream's (`bucket_map`,
//! `tenant_prefix`), the rewriting of the small XML documents that carry keys both
//! ways, the upstream response head (httparse), and the endpoint health checker.
//!
//! Owns: everything about *what* is said to the upstream and how its answers are read.
//! Must not touch: the workers' sockets or io_uring (the engine's
//! `store/upstream.rs` moves the bytes), the client's TLS, or authorization (decided
//! before a request gets here, by the same code as for the store backend).
//!
//! The secret access key lives in this module only, inside the SDK's `Credentials`,
//! whose `Debug` redacts it; nothing here formats it into a message or a log line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once, Weak};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity as SdkIdentity;

use crate::config::S3Backend;
use crate::proto::s3::Code;

/// How often each endpoint is probed.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Largest upstream XML document read whole (listings, errors, multipart results).
pub const MAX_XML: usize = 8 << 20;

/// One `[backend] kind = "s3"` of one generation: its settings, its signing identity
/// and the health of its endpoints.
pub struct Upstream {
    /// Unique per built backend, so a worker's pooled connections of an older
    /// generation are not used for a newer one with other endpoints.
    pub id: u64,
    /// The validated settings.
    pub cfg: S3Backend,
    identity: SdkIdentity,
    /// `host:port` of each endpoint, the `Host` header and the signed authority.
    hosts: Vec<String>,
    /// Written by the health checker (and by a worker that failed to connect), read
    /// by every worker before it picks an endpoint: one relaxed load, no lock.
    healthy: Vec<AtomicBool>,
    health_started: Once,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
}

impl Upstream {
    /// Read the credentials file (refused when group- or world-readable, checked on the
    /// open file) and set up the endpoints, all presumed up until probed.
    pub fn new(cfg: &S3Backend) -> Result<Upstream, String> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let path = &cfg.credentials;
        let f = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let meta = f
            .metadata()
            .map_err(|e| format!("cannot access {}: {e}", path.display()))?;
        crate::secrets::check_private_metadata(path, &meta)?;
        let mut text = String::new();
        f.take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        // The parser's own message quotes the offending line, which may be the secret.
        let parsed: CredentialsFile = toml::from_str(&text).map_err(|_| {
            format!(
                "{}: expected exactly two string keys, access_key_id and secret_access_key",
                path.display()
            )
        })?;
        if parsed.access_key_id.is_empty() || parsed.secret_access_key.is_empty() {
            return Err(format!(
                "{}: access_key_id and secret_access_key must not be empty",
                path.display()
            ));
        }
        let creds = aws_credential_types::Credentials::new(
            parsed.access_key_id,
            parsed.secret_access_key,
            None,
            None,
            "lakegate-credentials-file",
        );
        Ok(Upstream {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            hosts: cfg.endpoints.iter().map(|e| e.addr.to_string()).collect(),
            healthy: cfg
                .endpoints
                .iter()
                .map(|_| AtomicBool::new(true))
                .collect(),
            cfg: cfg.clone(),
            identity: creds.into(),
            health_started: Once::new(),
        })
    }

    /// The upstream bucket for a client bucket.
    pub fn upstream_bucket<'a>(&'a self, bucket: &'a str) -> &'a str {
        self.cfg
            .bucket_map
            .get(bucket)
            .map_or(bucket, String::as_str)
    }

    /// The `host:port` of endpoint `i`.
    pub fn host(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// Whether endpoint `i` passed its last check (and no request failed to connect since).
    pub fn is_up(&self, i: usize) -> bool {
        self.healthy[i].load(Ordering::Relaxed)
    }

    /// Record endpoint `i` as up or down; a change is logged.
    pub fn mark(&self, i: usize, up: bool) {
        if self.healthy[i].swap(up, Ordering::Relaxed) != up {
            let url = &self.cfg.endpoints[i].url;
            if up {
                tracing::info!(endpoint = %url, "s3 upstream endpoint is up");
            } else {
                tracing::warn!(endpoint = %url, "s3 upstream endpoint is down");
            }
        }
    }

    /// Start the health checker once (with the first request, so `lakegate check`,
    /// which builds the same backend, starts no thread). It runs on a thread of its own,
    /// off the worker cores, and ends when this generation is dropped.
    pub fn ensure_health(self: &Arc<Self>) {
        self.health_started.call_once(|| {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("lg-s3-health".into())
                .spawn(move || health_loop(&weak));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no s3 health checker thread; endpoints are judged by requests only");
            }
        });
    }

    /// SigV4 headers (`authorization`, `x-amz-date`, `x-amz-content-sha256`) for a
    /// request to endpoint `ep`. `path_query` is already URI-encoded once (S3 wants
    /// no second encoding and no path normalisation); `headers` are those sent,
    /// names in lower case. A streamed body is `UNSIGNED-PAYLOAD`: its hash cannot be
    /// known before it has passed through.
    pub fn sign(
        &self,
        method: &str,
        ep: usize,
        path_query: &str,
        headers: &[(&str, &str)],
        body: SignableBody<'_>,
    ) -> Result<Vec<(&'static str, String)>, String> {
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.cfg.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into();
        let url = format!("http://{}{}", self.hosts[ep], path_query);
        let req = SignableRequest::new(method, url, headers.iter().copied(), body)
            .map_err(|e| format!("signing: {e}"))?;
        let (instructions, _) = sign(req, &params)
            .map_err(|e| format!("signing: {e}"))?
            .into_parts();
        let (hs, _) = instructions.into_parts();
        Ok(hs
            .into_iter()
            .map(|h| (h.name(), h.value().to_owned()))
            .collect())
    }
}

/// Probe every endpoint each [`HEALTH_INTERVAL`] with `HEAD /` over a fresh connection:
/// any HTTP answer below 500 (an unsigned request is refused with 403, which is fine)
/// is up; no connection, no answer within `response_timeout`, or a 5xx is down.
fn health_loop(weak: &Weak<Upstream>) {
    loop {
        let Some(up) = weak.upgrade() else { return };
        for i in 0..up.hosts.len() {
            let ok = probe(&up, i);
            up.mark(i, ok);
        }
        drop(up);
        std::thread::sleep(HEALTH_INTERVAL);
    }
}

fn probe(up: &Upstream, i: usize) -> bool {
    let addr = up.cfg.endpoints[i].addr;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, up.cfg.connect_timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(up.cfg.response_timeout.min(Duration::from_secs(5))));
    let _ = s.set_write_timeout(Some(up.cfg.connect_timeout));
    let req = format!(
        "HEAD / HTTP/1.1\r\nhost: {}\r\nuser-agent: lakegate-health\r\nconnection: close\r\n\r\n",
        up.hosts[i]
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 1024];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if let Ok(Some((head, _))) = parse_response_head(&buf[..n]) {
            return head.status < 500;
        }
    }
    false
}

/// A parsed upstream response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Header fields, names lowercased.
    pub headers: Vec<(String, String)>,
    /// `Content-Length`, when given.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a response head with httparse; `Ok(None)` until it is complete.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut fields);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("upstream response head: {e}")),
    };
    let status = r.code.ok_or("upstream response without a status")?;
    let mut head = ResponseHead {
        status,
        headers: Vec::with_capacity(r.headers.len()),
        content_length: None,
        chunked: false,
        keep_alive: r.version == Some(1),
    };
    for h in r.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = std::str::from_utf8(h.value)
            .map_err(|_| format!("upstream header {name} is not UTF-8"))?
            .trim()
            .to_owned();
        match name.as_str() {
            "content-length" => {
                let len = value
                    .parse()
                    .map_err(|_| format!("upstream content-length {value:?}"))?;
                if head.content_length.is_some_and(|l| l != len) {
                    return Err("upstream sent two content-lengths".into());
                }
                head.content_length = Some(len);
            }
            "transfer-encoding" => {
                if value.eq_ignore_ascii_case("chunked") {
                    head.chunked = true;
                } else {
                    return Err(format!("upstream transfer-encoding {value:?}"));
                }
            }
            "connection" if value.eq_ignore_ascii_case("close") => head.keep_alive = false,
            _ => {}
        }
        head.headers.push((name, value));
    }
    Ok(Some((head, n)))
}

/// The key prefix of an identity under `tenant_prefix`: the owner name (SPIFFE ID, or
/// `x5t:` and the certificate thumbprint) with every byte outside `[A-Za-z0-9._-]`
/// replaced by `_`, cut at 64 bytes, then `-` and the first 16 hex digits of the
/// SHA-256 of the whole owner name (so two names that sanitise alike stay apart),
/// then `/`. Example: `spiffe://lake.example/trainer/alice` →
/// `spiffe___lake.example_trainer_alice-<16 hex>/`. Only unreserved characters, so it
/// is the same URL-encoded or not.
pub fn tenant_segment(owner: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, owner.as_bytes());
    let mut s = String::with_capacity(64 + 18);
    for b in owner.bytes().take(64) {
        let c = if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            b as char
        } else {
            '_'
        };
        s.push(c);
    }
    s.push('-');
    for b in &digest.as_ref()[..8] {
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
    }
    s.push('/');
    s
}

/// Append `s` URI-encoded as SigV4 and S3 want it: unreserved characters as they are,
/// `/` too when `keep_slash` (a path), everything else `%XX`.
pub fn uri_encode(out: &mut String, s: &str, keep_slash: bool) {
    for &b in s.as_bytes() {
        let plain = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/');
        if plain {
            out.push(b as char);
        } else {
            let _ = std::fmt::Write::write_fmt(out, format_args!("%{b:02X}"));
        }
    }
}

/// How keys of one request map between client and upstream.
pub struct KeyMap<'a> {
    /// The client's bucket.
    pub bucket: &'a str,
    /// The tenant prefix (`""` without `tenant_prefix`).
    pub prefix: &'a str,
    /// The client's key of the request, for `Location`.
    pub key: &'a str,
}

/// Rewrite an upstream XML result for the client: `Bucket`/`Name` become the client's
/// bucket; `Key`, `Prefix`, `StartAfter`, `Marker`, `NextMarker`, `KeyMarker` and
/// `NextKeyMarker` lose the tenant prefix; continuation tokens are wrapped so the
/// client gets an opaque value of ours; `Location` is the client's path. A key that
/// does not carry the tenant prefix is an error (fail closed: it is not this
/// tenant's). Element texts are XML-escaped; the prefix has no character that
/// escaping changes, and URL-encoding (`encoding-type=url`) changes only its `/`.
pub fn rewrite_xml(body: &str, m: &KeyMap<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        rest = &rest[lt..];
        let Some(gt) = rest.find('>') else {
            out.push_str(rest);
            return Ok(out);
        };
        let tag = &rest[1..gt];
        let simple = !tag.is_empty()
            && tag.bytes().all(|b| b.is_ascii_alphanumeric())
            && !tag.ends_with('/');
        if !simple {
            out.push_str(&rest[..=gt]);
            rest = &rest[gt + 1..];
            continue;
        }
        let close = format!("</{tag}>");
        let body_start = gt + 1;
        let Some(end) = rest[body_start..].find(&close) else {
            out.push_str(&rest[..=gt]);
            rest = &rest[gt + 1..];
            continue;
        };
        let text = &rest[body_start..body_start + end];
        let rewritten: Option<String> = match tag {
            "Bucket" | "Name" => Some(escape(m.bucket)),
            "Key" | "Prefix" | "StartAfter" | "Marker" | "NextMarker" | "KeyMarker"
            | "NextKeyMarker"
                if !text.contains('<') =>
            {
                Some(strip_prefix(text, m.prefix, tag)?)
            }
            "ContinuationToken" | "NextContinuationToken" if !text.contains('<') => {
                Some(wrap_token(&unescape(text)))
            }
            "Location" => {
                let mut l = String::from("/");
                uri_encode(&mut l, m.bucket, false);
                l.push('/');
                uri_encode(&mut l, m.key, true);
                Some(escape(&l))
            }
            _ => None,
        };
        match rewritten {
            Some(t) => {
                out.push_str(&rest[..body_start]);
                out.push_str(&t);
                out.push_str(&close);
                rest = &rest[body_start + end + close.len()..];
            }
            None => {
                // Descend: children are rewritten in turn.
                out.push_str(&rest[..=gt]);
                rest = &rest[gt + 1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn strip_prefix(text: &str, prefix: &str, tag: &str) -> Result<String, String> {
    if prefix.is_empty() || text.is_empty() {
        return Ok(text.to_owned());
    }
    if let Some(s) = text.strip_prefix(prefix) {
        return Ok(s.to_owned());
    }
    // encoding-type=url: the prefix's trailing `/` may come as %2F.
    let encoded = format!("{}%2F", &prefix[..prefix.len() - 1]);
    if let Some(s) = text
        .strip_prefix(&encoded)
        .or_else(|| text.strip_prefix(&encoded.replace("%2F", "%2f")))
    {
        return Ok(s.to_owned());
    }
    Err(format!("upstream {tag} outside the tenant prefix"))
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    crate::proto::s3::xml_escape_into(&mut o, s);
    o
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The client's form of an upstream continuation token: `lg1.` and its base64url.
pub fn wrap_token(t: &str) -> String {
    use base64::Engine;
    format!(
        "lg1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t)
    )
}

/// The upstream token inside a client's continuation token, if it is one of ours.
pub fn unwrap_token(t: &str) -> Option<String> {
    use base64::Engine;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t.strip_prefix("lg1.")?)
        .ok()?;
    String::from_utf8(b).ok()
}

/// The DeleteObjects body for the upstream: the client's keys under the tenant prefix.
pub fn delete_body(keys: &[String], prefix: &str, quiet: bool) -> Vec<u8> {
    let mut s = String::with_capacity(64 + keys.len() * 64);
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Delete>");
    if quiet {
        s.push_str("<Quiet>true</Quiet>");
    }
    for k in keys {
        s.push_str("<Object><Key>");
        crate::proto::s3::xml_escape_into(&mut s, prefix);
        crate::proto::s3::xml_escape_into(&mut s, k);
        s.push_str("</Key></Object>");
    }
    s.push_str("</Delete>");
    s.into_bytes()
}

/// The `<Code>` of an upstream error document.
pub fn error_code(body: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(body).ok()?;
    let a = s.find("<Code>")? + 6;
    let b = a + s[a..].find("</Code>")?;
    Some(&s[a..b])
}

/// What an upstream error becomes for the client. Client errors whose S3 code we know
/// pass through (404 NoSuchKey, 412, 416, ...); a refusal of our own signature or
/// credentials is our misconfiguration, not the client's fault (502); 5xx is 502.
pub fn map_error(status: u16, code: Option<&str>) -> Code {
    use Code::*;
    const PASS: &[Code] = &[
        NoSuchKey,
        NoSuchBucket,
        NoSuchUpload,
        InvalidPart,
        InvalidPartOrder,
        EntityTooSmall,
        MalformedXML,
        InvalidArgument,
        InvalidRequest,
        InvalidBucketName,
        KeyTooLongError,
        IncompleteBody,
        BadDigest,
        InvalidDigest,
        MissingContentLength,
        PreconditionFailed,
        EntityTooLarge,
        InvalidRange,
        AccessDenied,
        SlowDown,
    ];
    if status >= 500 {
        return if status == 503 && code == Some("SlowDown") {
            SlowDown
        } else {
            BadGateway
        };
    }
    if let Some(c) = code.and_then(|c| PASS.iter().find(|p| p.as_str() == c)) {
        return *c;
    }
    match status {
        404 => NoSuchKey,
        412 => PreconditionFailed,
        416 => InvalidRange,
        // SignatureDoesNotMatch, InvalidAccessKeyId, ...: ours to fix, not the client's.
        401 | 403 => BadGateway,
        _ => InvalidRequest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_segment_is_safe_and_distinct() {
        let a = tenant_segment("spiffe://lake.example/trainer/alice");
        let b = tenant_segment("spiffe://lake.example/trainer_alice");
        assert!(a.starts_with("spiffe___lake.example_trainer_alice-"), "{a}");
        assert!(a.ends_with('/'));
        assert_ne!(a, b);
        let body = &a[..a.len() - 1];
        assert!(body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)));
    }

    #[test]
    fn rewrite_strips_prefix_and_maps_bucket() {
        let m = KeyMap {
            bucket: "datasets",
            prefix: "t-1/",
            key: "",
        };
        let x = "<ListBucketResult><Name>lake-datasets</Name><Prefix>t-1/a</Prefix>\
                 <Contents><Key>t-1/a/b&amp;c</Key><ETag>&quot;x&quot;</ETag></Contents>\
                 <CommonPrefixes><Prefix>t-1/a/d/</Prefix></CommonPrefixes>\
                 <NextContinuationToken>t-1/a/b</NextContinuationToken><Marker></Marker>\
                 </ListBucketResult>";
        let r = rewrite_xml(x, &m).unwrap();
        assert!(r.contains("<Name>datasets</Name>"), "{r}");
        assert!(r.contains("<Key>a/b&amp;c</Key>"), "{r}");
        assert!(r.contains("<Prefix>a/d/</Prefix>"), "{r}");
        assert!(r.contains("<Marker></Marker>"), "{r}");
        assert!(!r.contains("t-1/"), "{r}");
        let tok = wrap_token("t-1/a/b");
        assert!(r.contains(&tok));
        assert_eq!(unwrap_token(&tok).as_deref(), Some("t-1/a/b"));
        let other = "<R><Key>t-2/secret</Key></R>";
        assert!(rewrite_xml(other, &m).is_err());
        let enc = "<R><Key>t-1%2Fx%20y</Key></R>";
        assert_eq!(rewrite_xml(enc, &m).unwrap(), "<R><Key>x%20y</Key></R>");
    }

    #[test]
    fn response_heads_and_errors() {
        let (h, n) = parse_response_head(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\nConnection: close\r\n\r\nxx",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (h.status, h.content_length, h.keep_alive, n),
            (404, Some(12), false, 65)
        );
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\n")
            .unwrap()
            .is_none());
        assert_eq!(
            error_code(b"<Error><Code>NoSuchKey</Code></Error>"),
            Some("NoSuchKey")
        );
        assert_eq!(map_error(404, Some("NoSuchKey")), Code::NoSuchKey);
        assert_eq!(map_error(500, Some("InternalError")), Code::BadGateway);
        assert_eq!(
            map_error(403, Some("SignatureDoesNotMatch")),
            Code::BadGateway
        );
        assert_eq!(map_error(412, None), Code::PreconditionFailed);
    }

    #[test]
    fn delete_body_maps_keys() {
        let b = delete_body(&["a&b".into()], "t/", true);
        let s = String::from_utf8(b).unwrap();
        assert!(s.contains("<Quiet>true</Quiet><Object><Key>t/a&amp;b</Key></Object>"));
    }
}
