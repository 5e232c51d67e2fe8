//! The `s3` backend's execution: an admitted request (same front half as the store:
//! [`Conn::admit`]) is mapped, signed and streamed to an S3-compatible upstream over
//! HTTP/1.1, and its answer streamed back. What to say and how to read the answer is
//! [`crate::backend::s3`]'s; here are only the sockets: the per-worker keep-alive
//! pool, failover over the endpoints in order, timeouts, and the bytes both ways
//! (backpressure both ways: nothing is read from one side before the other side took
//! the previous buffer).
//!
//! Retries: a connection that cannot be opened is always tried on the next endpoint
//! (nothing was sent). A request already sent is tried again (once, on a fresh
//! connection) only when it is idempotent and carried no body from the client, and
//! only when the pooled connection broke before a byte of the answer came.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sigv4::http_request::SignableBody;
use compio::buf::{IntoInner, IoBuf};
use compio::net::TcpStream;

use super::{Admitted, BodyError, Conn, End, Sink};
use crate::backend::s3::{self as up, KeyMap, ResponseHead, Upstream, MAX_XML};
use crate::backend::store::{self, BodyHasher};
use crate::engine::ctx::{IdleUpstream, Worker};
use crate::engine::io::RingStream;
use crate::proto::http::{self, BodyDecoder, Method, RequestHead};
use crate::proto::s3::{self, Code, Operation, PutSpec};
use crate::session::Close;

/// An idle pooled connection older than this is closed rather than reused (servers
/// close idle keep-alive connections after some time of their own).
const POOL_IDLE: Duration = Duration::from_secs(15);
/// A request whose body cannot be replayed takes a pooled connection only this fresh:
/// the older a connection, the likelier the server closes it under our first bytes.
const POOL_FRESH: Duration = Duration::from_secs(2);
/// Idle upstream connections kept per worker.
const POOL_MAX: usize = 64;

/// What the upstream answer becomes for the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Object bytes and their headers, streamed (GetObject, HeadObject).
    Object,
    /// A status and headers, no body (PutObject, UploadPart, deletes, HeadBucket).
    Bare,
    /// A small XML document, read whole and rewritten (listings, multipart, copy).
    Xml,
}

/// The body sent upstream.
enum Body<'a> {
    None,
    /// A small body already read and verified (DeleteObjects, Complete).
    Bytes(Vec<u8>),
    /// The client's body, streamed: its checks, the decoded length, the size limit.
    Stream {
        spec: &'a PutSpec,
        total: u64,
        max: u64,
    },
}

/// One upstream request, built from an admitted operation.
struct UpRequest<'a> {
    method: &'static str,
    /// Path and query, URI-encoded.
    target: String,
    /// Headers that are sent and signed (names lower case).
    headers: Vec<(Cow<'static, str>, String)>,
    body: Body<'a>,
    /// May be sent again after a broken pooled connection (idempotent, no client body).
    replayable: bool,
    answer: Answer,
}

/// A connection with an answer head read, and the body bytes already buffered.
struct Answered {
    tcp: TcpStream,
    ep: usize,
    head: ResponseHead,
    buf: Vec<u8>,
    /// `buf[at..filled]` is body not yet consumed.
    at: usize,
    filled: usize,
}

/// Why an exchange produced no answer to pass on.
enum Failed {
    /// Answer the client with this error (the connection stays if no body is pending).
    Error(s3::Error),
    /// The client's body failed: as for the store.
    Body(BodyError),
}

/// Request headers passed to the upstream as they are, where the operation allows them
/// (classification already refused any other).
const PASS_REQUEST: &[&str] = &[
    "content-type",
    "content-md5",
    "x-amz-checksum-crc32",
    "x-amz-checksum-sha1",
    "x-amz-checksum-sha256",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "x-amz-copy-source-if-match",
    "x-amz-copy-source-if-none-match",
    "x-amz-metadata-directive",
    "x-amz-checksum-algorithm",
    "x-amz-checksum-mode",
];

/// Response headers passed to the client.
fn pass_response(name: &str) -> bool {
    matches!(
        name,
        "etag"
            | "last-modified"
            | "content-type"
            | "content-range"
            | "accept-ranges"
            | "cache-control"
            | "content-disposition"
            | "content-language"
            | "expires"
            | "x-amz-mp-parts-count"
    ) || name.starts_with("x-amz-checksum-")
        || name.starts_with("x-amz-meta-")
}

impl Conn<'_> {
    /// Execute an admitted request on the upstream.
    pub(super) async fn exec_s3(
        &mut self,
        upstream: &Arc<Upstream>,
        head: &RequestHead,
        a: Admitted<'_>,
        start: Instant,
    ) -> Result<bool, End> {
        upstream.ensure_health();
        let Admitted {
            bucket, key, op, ..
        } = a;
        let key = key.unwrap_or_default();
        // What the store backend grew since this path was written and this path does
        // not carry yet is refused, never dropped on the way (fail closed).
        let unsupported = match &op {
            Operation::ListBuckets | Operation::CreateBucket(_) | Operation::DeleteBucket => {
                Some("bucket create, delete and list through the s3 backend")
            }
            Operation::UploadPartCopy { .. } => Some("UploadPartCopy through the s3 backend"),
            Operation::PutObject(spec)
            | Operation::CompleteMultipartUpload {
                checksums: spec, ..
            } if spec.cond != s3::WriteConditions::default() => {
                Some("conditional writes (If-None-Match, If-Match) through the s3 backend")
            }
            Operation::CopyObject(c)
                if c.conditions.if_modified_since.is_some()
                    || c.conditions.if_unmodified_since.is_some() =>
            {
                Some("CopyObject date conditions through the s3 backend")
            }
            _ => None,
        };
        if let Some(what) = unsupported {
            let e = s3::Error::not_implemented(what);
            return self.error(head, &bucket, &key, e, start).await;
        }
        let tp = if upstream.cfg.tenant_prefix {
            up::tenant_segment(&self.owner())
        } else {
            String::new()
        };
        let ubucket = upstream.upstream_bucket(&bucket).to_owned();
        let mut path = String::with_capacity(16 + ubucket.len() + tp.len() + key.len() * 3);
        path.push('/');
        up::uri_encode(&mut path, &ubucket, false);
        if !key.is_empty() {
            path.push('/');
            up::uri_encode(&mut path, &tp, true);
            up::uri_encode(&mut path, &key, true);
        }
        let mut q = Query(String::new());
        let passed = |names: &[&str]| -> Vec<(Cow<'static, str>, String)> {
            PASS_REQUEST
                .iter()
                .filter(|n| names.is_empty() || names.contains(n))
                .filter_map(|n| head.header(n).map(|v| (Cow::Borrowed(*n), v.to_owned())))
                .collect()
        };
        let bad_token = || {
            s3::Error::msg(
                Code::InvalidArgument,
                "The continuation token provided is incorrect",
            )
        };
        let max = self.gen.config.server.max_object_size;
        let (method, headers, body, replayable, answer) = match &op {
            Operation::PutObject(spec) | Operation::UploadPart { spec, .. } => {
                if let Operation::UploadPart {
                    upload_id, part, ..
                } = &op
                {
                    q.add("partNumber", &part.to_string());
                    q.add("uploadId", upload_id);
                }
                let limit = if matches!(op, Operation::UploadPart { .. }) {
                    max.min(s3::MAX_PART_SIZE)
                } else {
                    max
                };
                let total = match spec.announced_size(head) {
                    Some(n) => n,
                    None => {
                        // The upstream is sent a Content-Length: a chunked body must say
                        // its decoded size (x-amz-decoded-content-length) up front.
                        let e = s3::Error::new(Code::MissingContentLength)
                            .detail("s3 backend: body length unknown before the body");
                        return self.error(head, &bucket, &key, e, start).await;
                    }
                };
                if total > limit {
                    let e = s3::Error::new(Code::EntityTooLarge)
                        .detail(format_args!("{total} bytes announced, limit {limit}"));
                    return self.error(head, &bucket, &key, e, start).await;
                }
                // The header checksums go upstream too (it checks them as well); a
                // trailer checksum is ours alone to check, the body arrives decoded.
                let mut h = passed(&[
                    "content-type",
                    "content-md5",
                    "x-amz-checksum-crc32",
                    "x-amz-checksum-sha1",
                    "x-amz-checksum-sha256",
                ]);
                if let Operation::PutObject(p) = &op {
                    add_meta(&mut h, &p.meta);
                }
                let body = if total == 0 {
                    // Nothing to hold back: read and verify the (empty) body before the
                    // request goes out at all.
                    match self.stream_body(head, None, spec, 0, limit).await {
                        Ok(()) => Body::Bytes(Vec::new()),
                        Err(Failed::Body(e)) => {
                            return self.body_failed(head, &bucket, &key, e, start).await
                        }
                        Err(Failed::Error(e)) => {
                            return self.error(head, &bucket, &key, e, start).await
                        }
                    }
                } else {
                    Body::Stream {
                        spec,
                        total,
                        max: limit,
                    }
                };
                ("PUT", h, body, false, Answer::Bare)
            }
            Operation::GetObject(_) | Operation::HeadObject(_) => {
                let m = if head.method == Method::Head {
                    "HEAD"
                } else {
                    "GET"
                };
                let h = passed(&[
                    "range",
                    "if-match",
                    "if-none-match",
                    "if-modified-since",
                    "if-unmodified-since",
                    "x-amz-checksum-mode",
                ]);
                (m, h, Body::None, true, Answer::Object)
            }
            Operation::DeleteObject => ("DELETE", Vec::new(), Body::None, true, Answer::Bare),
            Operation::ListObjectsV2(spec) | Operation::ListObjects(spec) => {
                let v2 = matches!(op, Operation::ListObjectsV2(_));
                if v2 {
                    q.add("list-type", "2");
                }
                if let Some(d) = spec.delimiter {
                    q.add("delimiter", d);
                }
                if spec.url_encode {
                    q.add("encoding-type", "url");
                }
                q.add("max-keys", &spec.max_keys.to_string());
                q.add("prefix", &format!("{tp}{}", spec.prefix));
                if v2 {
                    if let Some(t) = spec.continuation {
                        match up::unwrap_token(t) {
                            Some(t) => q.add("continuation-token", &t),
                            None => return self.error(head, &bucket, "", bad_token(), start).await,
                        }
                    }
                    if let Some(s) = spec.start_after {
                        q.add("start-after", &format!("{tp}{s}"));
                    }
                } else if let Some(m) = spec.start_after {
                    q.add("marker", &format!("{tp}{m}"));
                }
                ("GET", Vec::new(), Body::None, true, Answer::Xml)
            }
            Operation::CopyObject(spec) => {
                let (sb, sk) = match self
                    .copy_source(head, spec, &bucket, &key, false, start)
                    .await
                {
                    Ok(x) => x,
                    Err(answered) => return answered,
                };
                let mut src = String::from("/");
                up::uri_encode(&mut src, upstream.upstream_bucket(&sb), false);
                src.push('/');
                up::uri_encode(&mut src, &tp, true);
                up::uri_encode(&mut src, &sk, true);
                let mut h = passed(&[
                    "x-amz-copy-source-if-match",
                    "x-amz-copy-source-if-none-match",
                    "x-amz-metadata-directive",
                ]);
                h.push(("x-amz-copy-source".into(), src));
                if let Some(m) = &spec.replace {
                    add_meta(&mut h, m);
                }
                ("PUT", h, Body::None, true, Answer::Xml)
            }
            Operation::CreateMultipartUpload(_) => {
                q.flag("uploads");
                let mut h = passed(&["content-type", "x-amz-checksum-algorithm"]);
                if let Operation::CreateMultipartUpload(c) = &op {
                    add_meta(&mut h, &c.meta);
                }
                ("POST", h, Body::None, false, Answer::Xml)
            }
            Operation::CompleteMultipartUpload {
                upload_id,
                checksums,
            } => {
                q.add("uploadId", upload_id);
                let b = match self.read_small_body(head, s3::MAX_COMPLETE_BODY).await {
                    Ok(b) => b,
                    Err(e) => return self.body_failed(head, &bucket, &key, e, start).await,
                };
                if let Err(e) = Self::verify_small_body(checksums, &b) {
                    return self.error(head, &bucket, &key, e, start).await;
                }
                // Checked here as the store would, so a malformed list is a 400 of ours.
                if let Err(e) = s3::parse_complete(&b) {
                    return self.error(head, &bucket, &key, e, start).await;
                }
                let h = vec![("content-type".into(), "application/xml".to_owned())];
                ("POST", h, Body::Bytes(b), false, Answer::Xml)
            }
            Operation::AbortMultipartUpload { upload_id } => {
                q.add("uploadId", upload_id);
                ("DELETE", Vec::new(), Body::None, true, Answer::Bare)
            }
            Operation::ListParts {
                upload_id,
                max_parts,
                marker,
            } => {
                q.add("max-parts", &max_parts.to_string());
                if *marker > 0 {
                    q.add("part-number-marker", &marker.to_string());
                }
                q.add("uploadId", upload_id);
                ("GET", Vec::new(), Body::None, true, Answer::Xml)
            }
            Operation::ListMultipartUploads(spec) => {
                q.flag("uploads");
                if spec.url_encode {
                    q.add("encoding-type", "url");
                }
                if let Some(k) = spec.key_marker {
                    q.add("key-marker", &format!("{tp}{k}"));
                }
                q.add("max-uploads", &spec.max_uploads.to_string());
                q.add("prefix", &format!("{tp}{}", spec.prefix));
                if let Some(u) = spec.upload_id_marker {
                    q.add("upload-id-marker", u);
                }
                ("GET", Vec::new(), Body::None, true, Answer::Xml)
            }
            Operation::DeleteObjects(spec) => {
                q.flag("delete");
                let b = match self.read_small_body(head, s3::MAX_DELETE_BODY).await {
                    Ok(b) => b,
                    Err(e) => return self.body_failed(head, &bucket, "", e, start).await,
                };
                if let Err(e) = Self::verify_small_body(spec, &b) {
                    return self.error(head, &bucket, "", e, start).await;
                }
                let req = match s3::parse_delete(&b) {
                    Ok(r) => r,
                    Err(e) => return self.error(head, &bucket, "", e, start).await,
                };
                let mut keys = Vec::with_capacity(req.objects.len());
                for (k, version) in req.objects {
                    if version.is_some() {
                        let e = s3::Error::not_implemented("VersionId");
                        return self.error(head, &bucket, "", e, start).await;
                    }
                    // The store's key rules hold here too: a key that could not be
                    // written cannot be deleted either.
                    if let Err(e) = store::validate_key(&k) {
                        let e = store::key_error(&e);
                        return self.error(head, &bucket, "", e, start).await;
                    }
                    keys.push(k);
                }
                let body = up::delete_body(&keys, &tp, req.quiet);
                let md5 = {
                    use md5::Digest;
                    let d = md5::Md5::digest(&body);
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, d)
                };
                let h = vec![
                    ("content-md5".into(), md5),
                    ("content-type".into(), "application/xml".to_owned()),
                ];
                ("POST", h, Body::Bytes(body), false, Answer::Xml)
            }
            // Refused above (`unsupported`).
            Operation::ListBuckets
            | Operation::CreateBucket(_)
            | Operation::DeleteBucket
            | Operation::UploadPartCopy { .. } => {
                let e = s3::Error::not_implemented("this operation through the s3 backend");
                return self.error(head, &bucket, &key, e, start).await;
            }
            Operation::HeadBucket => ("HEAD", Vec::new(), Body::None, true, Answer::Bare),
            Operation::GetBucketLocation => {
                q.flag("location");
                ("GET", Vec::new(), Body::None, true, Answer::Xml)
            }
        };
        if !q.0.is_empty() {
            path.push('?');
            path.push_str(&q.0);
        }
        let req = UpRequest {
            method,
            target: path,
            headers,
            body,
            replayable,
            answer,
        };
        let answered = match self.exchange(upstream, head, &req).await {
            Ok(a) => a,
            Err(Failed::Error(e)) => {
                let keep = req.body_is_read() && head.keep_alive;
                self.linger |= !keep;
                return if keep {
                    self.error(head, &bucket, &key, e, start).await
                } else {
                    self.refuse(Some(head), &bucket, &key, &e, start, false, &[])
                        .await?;
                    Ok(false)
                };
            }
            Err(Failed::Body(e)) => return self.body_failed(head, &bucket, &key, e, start).await,
        };
        let map = KeyMap {
            bucket: &bucket,
            prefix: &tp,
            key: &key,
        };
        self.answer(upstream, head, &req, answered, &map, &op, start)
            .await
    }

    /// Connect (pool or fresh, failing over in order), send, stream the body, and read
    /// the answer's head.
    async fn exchange(
        &mut self,
        upstream: &Upstream,
        head: &RequestHead,
        req: &UpRequest<'_>,
    ) -> Result<Answered, Failed> {
        let w: &Rc<Worker> = self.w;
        let cfg = &upstream.cfg;
        for ep in 0..cfg.endpoints.len() {
            if !upstream.is_up(ep) {
                continue;
            }
            let stats = &w.stats.upstream[ep.min(crate::telemetry::UPSTREAM_SLOTS - 1)];
            // At most two attempts on one endpoint: a pooled connection that broke,
            // then a fresh one.
            let mut fresh_only = false;
            loop {
                let freshness = if matches!(req.body, Body::Stream { .. }) || !req.replayable {
                    POOL_FRESH
                } else {
                    POOL_IDLE
                };
                let pooled = if fresh_only {
                    None
                } else {
                    take_idle(w, upstream.id, ep, freshness)
                };
                let was_pooled = pooled.is_some();
                let tcp = match pooled {
                    Some(t) => t,
                    None => {
                        let addr = cfg.endpoints[ep].addr;
                        match compio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr))
                            .await
                        {
                            Ok(Ok(t)) => {
                                let _ = t.set_nodelay(true);
                                t
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(request_id = %self.rid, endpoint = %cfg.endpoints[ep].url, error = %e, "s3 upstream connect failed; next endpoint");
                                stats.results[4].inc();
                                upstream.mark(ep, false);
                                break;
                            }
                            Err(_) => {
                                tracing::warn!(request_id = %self.rid, endpoint = %cfg.endpoints[ep].url, "s3 upstream connect timed out; next endpoint");
                                stats.results[4].inc();
                                upstream.mark(ep, false);
                                break;
                            }
                        }
                    }
                };
                let t0 = Instant::now();
                let bytes = match build_head(upstream, ep, req) {
                    Ok(b) => b,
                    Err(m) => {
                        return Err(Failed::Error(s3::Error::new(Code::InternalError).detail(m)))
                    }
                };
                let (r, _) = tcp.write_all(bytes).await;
                if r.is_err() {
                    // Nothing of a body went out yet (not even read from the client),
                    // so any idempotent request may go again on a fresh connection:
                    // PUT, GET, HEAD, DELETE; never a POST.
                    if was_pooled && req.method != "POST" {
                        fresh_only = true;
                        continue;
                    }
                    stats.results[5].inc();
                    return Err(Failed::Error(
                        s3::Error::new(Code::BadGateway).detail("upstream write failed"),
                    ));
                }
                match &req.body {
                    Body::None => {}
                    Body::Bytes(b) => {
                        if !b.is_empty() {
                            let (r, _) = tcp.write_all(b.clone()).await;
                            if r.is_err() {
                                stats.results[5].inc();
                                return Err(Failed::Error(
                                    s3::Error::new(Code::BadGateway)
                                        .detail("upstream write failed"),
                                ));
                            }
                        }
                    }
                    Body::Stream { spec, total, max } => {
                        let sent = self.stream_body(head, Some(&tcp), spec, *total, *max).await;
                        if let Err(Failed::Body(BodyError::Refuse(e))) = &sent {
                            if e.code == Code::BadGateway {
                                // The upstream may have refused early (a missing bucket)
                                // and closed instead of reading the rest: its answer,
                                // if it is there, says more than our broken write.
                                let early =
                                    self.read_answer_head(&tcp, Duration::from_secs(1)).await;
                                if let Ok((rh, buf, at, filled)) = early {
                                    let code = up::error_code(&buf[at..filled]);
                                    let mapped = up::map_error(rh.status, code);
                                    let detail = format!(
                                        "upstream answered {} {} before the whole body",
                                        rh.status,
                                        code.unwrap_or("-")
                                    );
                                    self.w.pool.give(buf);
                                    stats.results[if rh.status >= 500 { 2 } else { 1 }].inc();
                                    return Err(Failed::Body(BodyError::Refuse(
                                        s3::Error::new(mapped).detail(detail),
                                    )));
                                }
                            }
                        }
                        sent?;
                    }
                }
                match self.read_answer_head(&tcp, cfg.response_timeout).await {
                    Ok((rh, buf, at, filled)) => {
                        stats.latency.observe_in(
                            &crate::telemetry::REQUEST_BUCKETS,
                            t0.elapsed().as_secs_f64(),
                        );
                        return Ok(Answered {
                            tcp,
                            ep,
                            head: rh,
                            buf,
                            at,
                            filled,
                        });
                    }
                    Err(HeadFail::Timeout) => {
                        stats.latency.observe_in(
                            &crate::telemetry::REQUEST_BUCKETS,
                            t0.elapsed().as_secs_f64(),
                        );
                        stats.results[3].inc();
                        return Err(Failed::Error(s3::Error::new(Code::GatewayTimeout).detail(
                            format_args!(
                                "no response head from {} within {:?} (response_timeout)",
                                cfg.endpoints[ep].url, cfg.response_timeout
                            ),
                        )));
                    }
                    Err(HeadFail::Closed) if was_pooled && req.replayable => {
                        fresh_only = true;
                        continue;
                    }
                    Err(HeadFail::Closed) => {
                        stats.results[5].inc();
                        return Err(Failed::Error(
                            s3::Error::new(Code::BadGateway)
                                .detail("upstream closed before its response head"),
                        ));
                    }
                    Err(HeadFail::Bad(m)) => {
                        stats.results[5].inc();
                        return Err(Failed::Error(s3::Error::new(Code::BadGateway).detail(m)));
                    }
                }
            }
        }
        w.stats.upstream_unavailable.inc();
        Err(Failed::Error(
            s3::Error::new(Code::SlowDown).detail("every s3 upstream endpoint is down"),
        ))
    }

    /// The client's body to the upstream, through the same decoding, hashing, limits
    /// and rate checks as a store upload; verified before its last byte is sent.
    async fn stream_body(
        &mut self,
        head: &RequestHead,
        tcp: Option<&TcpStream>,
        spec: &PutSpec,
        total: u64,
        max: u64,
    ) -> Result<(), Failed> {
        if head.expect_continue {
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|e| Failed::Body(BodyError::Client(e)))?;
        }
        let (md5, crc32, sha1) = spec.wants();
        let mut hasher = BodyHasher::with(md5, crc32, sha1);
        let mut inner = spec.aws_chunked.then(BodyDecoder::aws_chunked);
        self.cycle.on_body_start(Instant::now());
        let mut sink = match tcp {
            Some(tcp) => Sink::Upstream {
                tcp,
                total,
                held: None,
            },
            None => Sink::Nothing { total },
        };
        let r = self
            .receive_body(head, &mut inner, &mut sink, &mut hasher, max)
            .await;
        self.cycle.on_body_end();
        let size = r.map_err(Failed::Body)?;
        let held = match sink {
            Sink::Upstream { held, .. } => held,
            _ => None,
        };
        let digests = hasher.finish();
        let trailer = inner.as_ref().map_or(&[][..], BodyDecoder::trailer);
        let checked = if inner.as_ref().is_some_and(|d| !d.is_done()) {
            Err(s3::Error::new(Code::IncompleteBody).detail("aws-chunked body ended early"))
        } else if size != total {
            Err(s3::Error::new(Code::IncompleteBody)
                .detail(format_args!("{size} bytes of {total} announced")))
        } else {
            spec.verify(size, &digests.as_body(), trailer)
        };
        // A failed check, or a policy change meanwhile: the upstream never gets the last
        // byte, and the connection is dropped (the caller does not pool it).
        checked.map_err(|e| Failed::Body(BodyError::Refuse(e)))?;
        self.hold_inflight()
            .map_err(|e| Failed::Body(BodyError::Refuse(e)))?;
        if let (Some(b), Some(tcp)) = (held, tcp) {
            let (r, _) = tcp.write_all(vec![b]).await;
            if r.is_err() {
                return Err(Failed::Body(BodyError::Refuse(
                    s3::Error::new(Code::BadGateway).detail("upstream write failed"),
                )));
            }
        }
        Ok(())
    }

    /// Read the upstream's response head within `timeout`.
    async fn read_answer_head(
        &mut self,
        tcp: &TcpStream,
        timeout: Duration,
    ) -> Result<(ResponseHead, Vec<u8>, usize, usize), HeadFail> {
        let deadline = Instant::now() + timeout;
        let mut buf = self.w.pool.take();
        let mut filled = 0usize;
        loop {
            if filled > 0 {
                match up::parse_response_head(&buf[..filled]) {
                    Ok(Some((h, n))) if h.status == 100 => {
                        buf.copy_within(n..filled, 0);
                        filled -= n;
                        continue;
                    }
                    Ok(Some((h, n))) => return Ok((h, buf, n, filled)),
                    Ok(None) => {}
                    Err(m) => {
                        self.w.pool.give(buf);
                        return Err(HeadFail::Bad(m));
                    }
                }
            }
            if filled == buf.len() {
                self.w.pool.give(buf);
                return Err(HeadFail::Bad("upstream response head too large".into()));
            }
            let cap = buf.len();
            let read = tcp.read(buf.slice(filled..cap));
            match compio::time::timeout_at(deadline, read).await {
                Err(_) => return Err(HeadFail::Timeout),
                Ok((r, slice)) => {
                    buf = slice.into_inner();
                    match r {
                        Ok(0) | Err(_) if filled == 0 => {
                            self.w.pool.give(buf);
                            return Err(HeadFail::Closed);
                        }
                        Ok(0) | Err(_) => {
                            self.w.pool.give(buf);
                            return Err(HeadFail::Bad("upstream closed inside the head".into()));
                        }
                        Ok(n) => filled += n,
                    }
                }
            }
        }
    }

    /// Pass the upstream's answer to the client.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &mut self,
        upstream: &Upstream,
        head: &RequestHead,
        req: &UpRequest<'_>,
        mut a: Answered,
        map: &KeyMap<'_>,
        op: &Operation<'_>,
        start: Instant,
    ) -> Result<bool, End> {
        let (bucket, key) = (map.bucket, map.key);
        let stats = &self.w.stats.upstream[a.ep.min(crate::telemetry::UPSTREAM_SLOTS - 1)];
        let status = a.head.status;
        let bodiless = req.method == "HEAD" || status == 204 || status == 304;
        let rid = self.rid;
        if status >= 300 && status != 304 {
            let body = if bodiless {
                Ok(Vec::new())
            } else {
                self.read_whole(&mut a, upstream.cfg.response_timeout).await
            };
            let body = body.unwrap_or_default();
            let upstream_code = up::error_code(&body).map(str::to_owned);
            let mut code = up::map_error(status, upstream_code.as_deref());
            // A HEAD has no error document: a 404 on the bucket itself is the bucket's.
            if code == Code::NoSuchKey && upstream_code.is_none() && key.is_empty() {
                code = Code::NoSuchBucket;
            }
            stats.results[if status >= 500 { 2 } else { 1 }].inc();
            let e = s3::Error::new(code).detail(format_args!(
                "upstream {} answered {status} {}",
                upstream.cfg.endpoints[a.ep].url,
                upstream_code.as_deref().unwrap_or("-")
            ));
            self.pool_or_drop(upstream, a);
            return self.error(head, bucket, key, e, start).await;
        }
        stats.results[0].inc();
        match req.answer {
            Answer::Xml => {
                let body = match self.read_whole(&mut a, upstream.cfg.response_timeout).await {
                    Ok(b) => b,
                    Err(m) => {
                        let e = s3::Error::new(Code::BadGateway).detail(m);
                        return self.error(head, bucket, key, e, start).await;
                    }
                };
                self.pool_or_drop(upstream, a);
                let text = String::from_utf8_lossy(&body);
                // CompleteMultipartUpload may fail after its 200 has gone out: the
                // error then comes as the document.
                if is_error_document(&text) {
                    let code = up::map_error(400, up::error_code(&body));
                    let e = s3::Error::new(code).detail("upstream error document in a 200");
                    return self.error(head, bucket, key, e, start).await;
                }
                let xml = match up::rewrite_xml(&text, map) {
                    Ok(x) => x,
                    Err(m) => {
                        let e = s3::Error::new(Code::BadGateway).detail(m);
                        return self.error(head, bucket, key, e, start).await;
                    }
                };
                if matches!(op, Operation::CreateMultipartUpload(_)) {
                    tracing::info!(identity = self.identity.name(), request_id = %rid, bucket, key, "multipart upload created upstream");
                }
                self.xml_ok(head, bucket, key, &xml, start).await
            }
            Answer::Bare => {
                let mut status = status;
                // The object API answers a stored object 201, as the store does.
                if matches!(op, Operation::PutObject(_)) && status == 200 {
                    status = 201;
                }
                // Whatever body comes (a length, chunks, or up to the close) is read
                // to its end, so the connection is clean for the next request.
                let has_body = a.head.chunked || a.head.content_length != Some(0);
                let drained = if has_body && !bodiless {
                    self.read_whole(&mut a, upstream.cfg.response_timeout)
                        .await
                        .is_ok()
                } else {
                    true
                };
                let mut headers: Vec<(&str, &str)> = a
                    .head
                    .headers
                    .iter()
                    .filter(|(n, _)| pass_response(n))
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                headers.push(("x-amz-request-id", rid.as_str()));
                let mut h = Vec::with_capacity(512);
                let announce = if req.method == "HEAD" { None } else { Some(0) };
                http::write_response_head(&mut h, status, &headers, announce, head.keep_alive);
                if drained {
                    self.pool_or_drop(upstream, a);
                }
                self.send(&h).await?;
                let verb = match head.method {
                    Method::Delete => "DELETE",
                    Method::Put => "PUT",
                    _ => head.method_str.as_str(),
                };
                let size = match &req.body {
                    Body::Stream { total, .. } => *total,
                    _ => 0,
                };
                self.access(verb, bucket, key, status, size, start);
                Ok(true)
            }
            Answer::Object => {
                self.stream_object(upstream, head, a, bucket, key, start)
                    .await
            }
        }
    }

    /// GetObject / HeadObject: the head, then the object's bytes as they come.
    async fn stream_object(
        &mut self,
        upstream: &Upstream,
        head: &RequestHead,
        mut a: Answered,
        bucket: &str,
        key: &str,
        start: Instant,
    ) -> Result<bool, End> {
        let status = a.head.status;
        let rid = self.rid;
        let is_head = head.method == Method::Head;
        let bodiless = is_head || status == 304;
        // Without a length the client could not tell the end: read it whole (bounded).
        let whole = if !bodiless && a.head.content_length.is_none() {
            match self.read_whole(&mut a, upstream.cfg.response_timeout).await {
                Ok(b) => Some(b),
                Err(m) => {
                    let e = s3::Error::new(Code::BadGateway).detail(m);
                    return self.error(head, bucket, key, e, start).await;
                }
            }
        } else {
            None
        };
        let len = whole
            .as_ref()
            .map(|b| b.len() as u64)
            .or(a.head.content_length);
        let mut headers: Vec<(&str, &str)> = a
            .head
            .headers
            .iter()
            .filter(|(n, _)| pass_response(n))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        headers.push(("x-amz-request-id", rid.as_str()));
        let mut h = Vec::with_capacity(512);
        let announce = if status == 304 { None } else { len };
        http::write_response_head(&mut h, status, &headers, announce, head.keep_alive);
        drop(headers);
        self.send(&h).await?;
        let mut sent = 0u64;
        if let Some(b) = whole {
            if !is_head {
                self.send(&b).await?;
                sent = b.len() as u64;
            }
            self.pool_or_drop(upstream, a);
        } else if !bodiless {
            let total = len.unwrap_or(0);
            sent = self
                .relay_body(&mut a, total, upstream.cfg.response_timeout)
                .await?;
            self.pool_or_drop(upstream, a);
        } else {
            self.pool_or_drop(upstream, a);
        }
        self.access(&head.method_str, bucket, key, status, sent, start);
        Ok(true)
    }

    /// Upstream body bytes → TLS records → client, `total` bytes. One user-space copy
    /// (rustls encrypts from the read buffer). Each read waits for the previous
    /// buffer to reach the client, so a slow client slows the upstream read (TCP
    /// pushes back on the upstream), and the policy is held between buffers.
    async fn relay_body(
        &mut self,
        a: &mut Answered,
        total: u64,
        idle: Duration,
    ) -> Result<u64, End> {
        let mut sent = 0u64;
        let mut buf = std::mem::take(&mut a.buf);
        let res = loop {
            let have = (a.filled - a.at).min((total - sent) as usize);
            if have > 0 {
                self.out.clear();
                if self
                    .tls
                    .encrypt(&buf[a.at..a.at + have], &mut self.out)
                    .is_err()
                {
                    break Err(Close::TlsEncrypt);
                }
                if let Err(e) = self.flush().await {
                    break Err(e);
                }
                a.at += have;
                sent += have as u64;
            }
            if sent >= total {
                break Ok(sent);
            }
            if self.hold_inflight().is_err() {
                break Err(Close::NoLongerAdmitted);
            }
            a.at = 0;
            a.filled = 0;
            let cap = buf.len();
            let read = a.tcp.read(buf.slice(..cap));
            match compio::time::timeout(idle, read).await {
                Err(_) => {
                    buf = self.w.pool.take();
                    break Err(Close::UpstreamBodyTimeout);
                }
                Ok((r, slice)) => {
                    buf = slice.into_inner();
                    match r {
                        Ok(0) | Err(_) => break Err(Close::UpstreamClosedInBody),
                        Ok(n) => a.filled = n,
                    }
                }
            }
        };
        if res.is_err() {
            // The client sees a truncated body; the upstream connection is not reused.
            a.head.keep_alive = false;
        }
        a.buf = buf;
        res
    }

    /// Read a whole (small) upstream body: Content-Length, chunked, or to the close.
    async fn read_whole(&mut self, a: &mut Answered, idle: Duration) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut dec = a.head.chunked.then(BodyDecoder::aws_chunked);
        let len = if a.head.chunked {
            None
        } else {
            a.head.content_length
        };
        let to_close = !a.head.chunked && len.is_none();
        if to_close {
            a.head.keep_alive = false;
        }
        loop {
            let avail = &a.buf[a.at..a.filled];
            match dec.as_mut() {
                Some(d) => {
                    let mut off = 0;
                    while off < avail.len() && !d.is_done() {
                        let s = d
                            .step(&avail[off..])
                            .map_err(|e| format!("upstream chunked body: {e}"))?;
                        out.extend_from_slice(&avail[off + s.data.start..off + s.data.end]);
                        off += s.consumed;
                        if s.consumed == 0 {
                            break;
                        }
                    }
                    a.at += off;
                    if d.is_done() {
                        return Ok(out);
                    }
                }
                None => {
                    let want = len.map_or(avail.len(), |l| {
                        ((l - out.len() as u64) as usize).min(avail.len())
                    });
                    out.extend_from_slice(&avail[..want]);
                    a.at += want;
                    if len.is_some_and(|l| out.len() as u64 >= l) {
                        return Ok(out);
                    }
                }
            }
            if out.len() > MAX_XML {
                a.head.keep_alive = false;
                return Err(format!("upstream document over {MAX_XML} bytes"));
            }
            a.at = 0;
            a.filled = 0;
            let buf = std::mem::take(&mut a.buf);
            let cap = buf.len();
            let read = a.tcp.read(buf.slice(..cap));
            match compio::time::timeout(idle, read).await {
                Err(_) => {
                    a.buf = self.w.pool.take();
                    a.head.keep_alive = false;
                    return Err("upstream body timeout".into());
                }
                Ok((r, slice)) => {
                    a.buf = slice.into_inner();
                    match r {
                        Ok(0) if to_close => return Ok(out),
                        Ok(0) | Err(_) => {
                            a.head.keep_alive = false;
                            return Err("upstream closed inside the body".into());
                        }
                        Ok(n) => a.filled = n,
                    }
                }
            }
        }
    }

    /// Return a connection whose answer was read exactly to its end to this worker's
    /// pool; anything else is closed.
    fn pool_or_drop(&self, upstream: &Upstream, a: Answered) {
        let Answered {
            tcp,
            ep,
            head,
            buf,
            at,
            filled,
        } = a;
        self.w.pool.give(buf);
        if !head.keep_alive || at != filled {
            return;
        }
        let mut idle = self.w.upstream_idle.borrow_mut();
        if idle.len() >= POOL_MAX {
            idle.remove(0);
        }
        idle.push(IdleUpstream {
            backend: upstream.id,
            endpoint: ep,
            stream: tcp,
            since: Instant::now(),
        });
    }
}

impl UpRequest<'_> {
    /// Whether the client's request body (if any) was read whole before the exchange
    /// failed, so the client connection can carry the next request.
    fn body_is_read(&self) -> bool {
        !matches!(self.body, Body::Stream { .. })
    }
}

enum HeadFail {
    Timeout,
    /// Closed (or reset) before a byte of the answer.
    Closed,
    Bad(String),
}

/// A query string in the order built, values URI-encoded.
struct Query(String);

impl Query {
    fn add(&mut self, k: &str, v: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(k);
        self.0.push('=');
        up::uri_encode(&mut self.0, v, false);
    }
    fn flag(&mut self, k: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(k);
    }
}

/// An idle pooled connection of this backend to `ep`, no older than `fresh`; older
/// ones met on the way are closed.
fn take_idle(w: &Rc<Worker>, backend: u64, ep: usize, fresh: Duration) -> Option<TcpStream> {
    let mut idle = w.upstream_idle.borrow_mut();
    idle.retain(|c| c.since.elapsed() < POOL_IDLE);
    loop {
        let i = idle
            .iter()
            .rposition(|c| c.backend == backend && c.endpoint == ep && c.since.elapsed() < fresh)?;
        let c = idle.swap_remove(i);
        // An upstream that closed its end (restarted, idle timeout, died) would take
        // the next request and fail it; a peek that does not wait finds that out.
        if still_open(&c.stream) {
            return Some(c.stream);
        }
    }
}

/// Whether an idle keep-alive connection is still open and has nothing unread.
fn still_open(t: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: recv(2) on the stream's own open descriptor into a 1-byte stack buffer
    // it may fill; MSG_PEEK leaves any byte in place and MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            t.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// The request's `x-amz-meta-*` pairs, as the upstream stores them (Content-Type goes
/// through the header list).
fn add_meta(h: &mut Vec<(Cow<'static, str>, String)>, m: &s3::Metadata) {
    for (name, value) in &m.user {
        h.push((Cow::Owned(format!("x-amz-meta-{name}")), value.clone()));
    }
}

/// The request head for endpoint `ep`, signed.
fn build_head(upstream: &Upstream, ep: usize, req: &UpRequest<'_>) -> Result<Vec<u8>, String> {
    let host = upstream.host(ep);
    let mut signed: Vec<(&str, &str)> = Vec::with_capacity(req.headers.len() + 1);
    signed.push(("host", host));
    for (n, v) in &req.headers {
        signed.push((n.as_ref(), v.as_str()));
    }
    let body = match &req.body {
        Body::Bytes(b) => SignableBody::Bytes(b),
        Body::None => SignableBody::Bytes(&[]),
        Body::Stream { .. } => SignableBody::UnsignedPayload,
    };
    let auth = upstream.sign(req.method, ep, &req.target, &signed, body)?;
    let length = match &req.body {
        Body::None if matches!(req.method, "PUT" | "POST") => Some(0),
        Body::None => None,
        Body::Bytes(b) => Some(b.len() as u64),
        Body::Stream { total, .. } => Some(*total),
    };
    let mut h = Vec::with_capacity(512 + req.target.len());
    h.extend_from_slice(req.method.as_bytes());
    h.push(b' ');
    h.extend_from_slice(req.target.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\n");
    for (n, v) in signed
        .iter()
        .copied()
        .chain(auth.iter().map(|(n, v)| (*n, v.as_str())))
    {
        h.extend_from_slice(n.as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(v.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    if let Some(l) = length {
        h.extend_from_slice(format!("content-length: {l}\r\n").as_bytes());
    }
    h.extend_from_slice(b"user-agent: lakegate\r\n\r\n");
    Ok(h)
}

/// Whether an XML document's root is `<Error>` (a DeleteResult holds `<Error>`
/// elements of its own, which are answers, not a failure).
fn is_error_document(text: &str) -> bool {
    let mut t = text.trim_start();
    if t.starts_with("<?xml") {
        t = t.find("?>").map_or("", |i| &t[i + 2..]).trim_start();
    }
    t.starts_with("<Error>")
}
