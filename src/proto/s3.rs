//! The S3 surface of the object API, sans-IO: which operation a parsed request head
//! is, what the store must verify for it, and how a refusal is worded.
//!
//! Owns:
//! - [`classify`]: an allow-list from a [`RequestHead`] to the operations the `store`
//!   backend really implements ([`Operation`]). Any query parameter, header or header
//!   value that is not on the list for that operation is [`Code::NotImplemented`]: a
//!   request the store cannot honour whole is refused, never read as a simpler one
//!   (a CopyObject must not become an empty PUT, a `?tagging` PUT must not overwrite
//!   the object);
//! - the checksums a PUT carries (headers, the aws-chunked trailer, the
//!   `x-amz-content-sha256` payload hash), decoded up front and verified against the
//!   body's digests by [`PutSpec::verify`];
//! - the error vocabulary: [`Code`] maps once to an HTTP status, an S3 error code and a
//!   bounded label for logs and metrics; [`Error`] pairs it with a message for the
//!   client and a detail for the log only; [`error_xml`] writes the S3 error document;
//! - request ids ([`RequestId`]): 16 hex digits from a per-worker prefix and counter.
//!
//! Must not touch: sockets, files, the clock, authorization. Messages written to the
//! client never carry an OS error, a path on disk or an authz rule: those go in
//! [`Error::detail`], which only the log sees.

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;

use super::http::{HttpError, Method, RequestHead};

pub use crate::reason::s3::Code;
pub use crate::reason::store::Fault;

/// A refused request: the code, what the client is told, and what only the log sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Status, S3 code and label.
    pub code: Code,
    /// Sent in `<Message>`: about the request, never about the server's insides.
    pub message: Cow<'static, str>,
    /// The reason for the log line (rule index, OS error, ...); never sent.
    pub detail: Option<String>,
    /// What the filesystem said, when a store operation is what failed (the `fault`
    /// log field and `lakegate_store_errors_total{fault}`).
    pub fault: Option<Fault>,
}

impl Error {
    /// An error with the code's default message.
    pub fn new(code: Code) -> Error {
        Error {
            code,
            message: Cow::Borrowed(code.default_message()),
            detail: None,
            fault: None,
        }
    }

    /// An error with a specific message for the client (it must hold nothing secret).
    pub fn msg(code: Code, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            code,
            message: message.into(),
            detail: None,
            fault: None,
        }
    }

    /// A 501 naming what is not implemented (a header or query parameter name).
    pub fn not_implemented(what: &str) -> Error {
        Error::msg(Code::NotImplemented, format!("{what} is not implemented"))
    }

    /// Attach the log-only detail.
    pub fn detail(mut self, detail: impl std::fmt::Display) -> Error {
        self.detail = Some(detail.to_string());
        self
    }

    /// The error a store fault is answered with: its code (`not_found` for a missing
    /// path: which of NoSuchKey, NoSuchBucket or NoSuchUpload only the caller knows),
    /// the OS error as the detail, and the fault itself for the log and the metric.
    pub fn store(fault: Fault, not_found: Code, detail: impl std::fmt::Display) -> Error {
        let mut e = Error::new(fault.code(not_found)).detail(detail);
        e.fault = Some(fault);
        e
    }
}

impl From<&HttpError> for Error {
    /// What the codec refused, in S3's words; its messages describe only the request.
    fn from(e: &HttpError) -> Error {
        match e {
            HttpError::HeadTooLarge(_) => Error::new(Code::RequestHeaderSectionTooLarge),
            HttpError::BadRequest(m) => Error::msg(Code::InvalidRequest, m.clone()),
            HttpError::BadTarget(m) => Error::msg(Code::InvalidURI, *m),
            HttpError::LengthRequired => Error::new(Code::MissingContentLength),
            HttpError::NotImplemented(m) => Error::not_implemented(m),
        }
    }
}

impl From<Code> for Error {
    fn from(code: Code) -> Error {
        Error::new(code)
    }
}

/// Append the S3 error document for `e` about `resource` (the request path).
pub fn error_xml(out: &mut Vec<u8>, e: &Error, resource: &str, request_id: &RequestId) {
    let mut s = String::with_capacity(256);
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>");
    s.push_str(e.code.as_str());
    s.push_str("</Code><Message>");
    xml_escape_into(&mut s, &e.message);
    s.push_str("</Message><Resource>");
    xml_escape_into(&mut s, resource);
    s.push_str("</Resource><RequestId>");
    s.push_str(request_id.as_str());
    s.push_str("</RequestId></Error>\n");
    out.extend_from_slice(s.as_bytes());
}

/// Append `s` as XML text: the five specials as entities, C0 controls as character
/// references (the one XML escaper of the crate).
pub fn xml_escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Keys may hold C0 controls. Tab, CR and LF as references survive a parser's
            // whitespace normalisation; the others have no XML 1.0 form at all, and a
            // reference is the least surprising thing to send (clients that care ask
            // for encoding-type=url).
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "&#x{:X};", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------

/// Bits of a request id that count requests; the rest is the worker's prefix.
const SEQ_BITS: u32 = 36;
/// Bits of the prefix that name the worker.
const WORKER_BITS: u32 = 12;

/// A request id: 16 uppercase hex digits, held inline (no allocation per request).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 16]);

impl RequestId {
    /// The id for request `seq` of the worker whose prefix is `prefix` (see
    /// [`RequestId::prefix`]). Unique while a worker serves fewer than 2^36 requests.
    pub fn new(prefix: u64, seq: u64) -> RequestId {
        let v = (prefix & !((1 << SEQ_BITS) - 1)) | (seq & ((1 << SEQ_BITS) - 1));
        let mut out = [b'0'; 16];
        for (i, b) in out.iter_mut().enumerate() {
            let nibble = (v >> (60 - 4 * i)) & 0xf;
            *b = b"0123456789ABCDEF"[nibble as usize];
        }
        RequestId(out)
    }

    /// A worker's prefix: 16 random bits of this process, then the worker index, so
    /// two workers (and two runs) never hand out the same id without sharing a counter.
    pub fn prefix(process_random: u16, worker: usize) -> u64 {
        let w = (worker as u64) & ((1 << WORKER_BITS) - 1);
        (u64::from(process_random) << (SEQ_BITS + WORKER_BITS)) | (w << SEQ_BITS)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into the array.
        std::str::from_utf8(&self.0).unwrap_or("0000000000000000")
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId([b'0'; 16])
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------

/// An operation the `store` backend implements, with what it needs from the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation<'a> {
    /// `PUT /bucket/key`: the body's checks, the object's metadata and the write's
    /// preconditions.
    PutObject(PutSpec),
    /// `GET /bucket/key`.
    GetObject(Conditions<'a>),
    /// `HEAD /bucket/key`.
    HeadObject(Conditions<'a>),
    /// `DELETE /bucket/key`.
    DeleteObject,
    /// `GET /bucket?list-type=2`.
    ListObjectsV2(ListSpec<'a>),
    /// `GET /bucket` (ListObjects, version 1: `marker`, `NextMarker`).
    ListObjects(ListSpec<'a>),
    /// `PUT /bucket/key` with `x-amz-copy-source`.
    CopyObject(CopySpec<'a>),
    /// `POST /bucket/key?uploads`.
    CreateMultipartUpload(CreateSpec),
    /// `PUT /bucket/key?partNumber=N&uploadId=U`.
    UploadPart {
        /// The upload.
        upload_id: &'a str,
        /// 1 to [`MAX_PARTS`].
        part: u32,
        /// What the part's body is checked against, as for a PUT.
        spec: PutSpec,
    },
    /// `PUT /bucket/key?partNumber=N&uploadId=U` with `x-amz-copy-source`: a part made
    /// of (a range of) an existing object.
    UploadPartCopy {
        /// The upload.
        upload_id: &'a str,
        /// 1 to [`MAX_PARTS`].
        part: u32,
        /// The source and its `x-amz-copy-source-if-*` preconditions (`replace` is
        /// always `None`: a part has no metadata of its own).
        copy: CopySpec<'a>,
        /// `x-amz-copy-source-range: bytes=first-last`, inclusive; `None` is the whole
        /// source.
        range: Option<(u64, u64)>,
    },
    /// `POST /bucket/key?uploadId=U` with the XML part list.
    CompleteMultipartUpload {
        /// The upload.
        upload_id: &'a str,
        /// `Content-MD5` and a hex `x-amz-content-sha256` of the XML body, verified
        /// when sent; `If-Match` / `If-None-Match: *` on the key in `cond`.
        checksums: PutSpec,
    },
    /// `DELETE /bucket/key?uploadId=U`.
    AbortMultipartUpload {
        /// The upload.
        upload_id: &'a str,
    },
    /// `GET /bucket/key?uploadId=U`.
    ListParts {
        /// The upload.
        upload_id: &'a str,
        /// `max-parts`, capped at 1000.
        max_parts: usize,
        /// `part-number-marker`: parts after this number.
        marker: u32,
    },
    /// `GET /bucket?uploads`.
    ListMultipartUploads(UploadsSpec<'a>),
    /// `POST /bucket?delete` with the XML key list; the checksums its body must match.
    DeleteObjects(PutSpec),
    /// `HEAD /bucket`.
    HeadBucket,
    /// `GET /bucket?location`.
    GetBucketLocation,
    /// `GET /` on the service: the buckets the identity may list.
    ListBuckets,
    /// `PUT /bucket`, with an optional `CreateBucketConfiguration` body whose checksums
    /// are here.
    CreateBucket(PutSpec),
    /// `DELETE /bucket`.
    DeleteBucket,
}

/// Most bytes of user metadata (names after `x-amz-meta-` plus values), S3's limit.
pub const MAX_USER_METADATA: usize = 2048;
/// Most bytes of the stored form (JSON, with Content-Type). S3's 2 KiB limit counts
/// only names and values, so values full of characters JSON escapes (quotes,
/// backslashes) would pass it and then overflow the one 4 KiB block a filesystem such
/// as ext4 gives all of a file's extended attributes; refused here as
/// MetadataTooLarge rather than failing at the commit.
pub const MAX_STORED_METADATA: usize = 3 * 1024;
/// Largest CreateBucketConfiguration body accepted.
pub const MAX_CREATE_BUCKET_BODY: u64 = 64 * 1024;
/// The one region the store answers for (GetBucketLocation's empty constraint).
pub const REGION: &str = "us-east-1";

/// What an object carries besides its bytes: `Content-Type` and the `x-amz-meta-*`
/// pairs, stored as sent and returned on GET and HEAD.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// `Content-Type`, when one was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `x-amz-meta-{name}: value`: the name after the prefix (lowercase, as the head
    /// parser gives header names) and the value, in request order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<(String, String)>,
}

impl Metadata {
    /// Nothing to store.
    pub fn is_empty(&self) -> bool {
        self.content_type.is_none() && self.user.is_empty()
    }

    /// The metadata of a request: `Content-Type` (when `with_type`) and every
    /// `x-amz-meta-*` header, at most [`MAX_USER_METADATA`] bytes of them.
    fn of(head: &RequestHead, with_type: bool) -> Result<Metadata, Error> {
        let mut m = Metadata {
            content_type: if with_type {
                head.header("content-type").map(str::to_owned)
            } else {
                None
            },
            user: Vec::new(),
        };
        let mut size = 0usize;
        for (n, v) in &head.headers {
            let Some(name) = n.strip_prefix("x-amz-meta-") else {
                continue;
            };
            if name.is_empty() {
                return Err(Error::msg(
                    Code::InvalidArgument,
                    "an x-amz-meta- header needs a name after the prefix",
                ));
            }
            size += name.len() + v.len();
            m.user.push((name.to_owned(), v.clone()));
        }
        if size > MAX_USER_METADATA {
            return Err(
                Error::new(Code::MetadataTooLarge).detail(format!("{size} bytes of user metadata"))
            );
        }
        let stored = serde_json::to_vec(&m).map_or(usize::MAX, |v| v.len());
        if stored > MAX_STORED_METADATA {
            return Err(Error::new(Code::MetadataTooLarge)
                .detail(format!("{stored} bytes in the stored form")));
        }
        Ok(m)
    }
}

/// The preconditions of a write (PutObject, CompleteMultipartUpload), checked
/// atomically with the commit that makes the object visible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteConditions {
    /// `If-None-Match: *`: only if no object has the key.
    pub if_none_match_star: bool,
    /// `If-Match`: only if an object has the key and one of these ETags (or `*`).
    pub if_match: Option<String>,
}

impl WriteConditions {
    /// Whether there is anything to check.
    pub fn is_empty(&self) -> bool {
        !self.if_none_match_star && self.if_match.is_none()
    }

    /// Whether the object now at the key (its ETag, or `None` for no object) lets the
    /// write go ahead.
    pub fn holds(&self, current_etag: Option<&str>) -> bool {
        if self.if_none_match_star && current_etag.is_some() {
            return false;
        }
        match (&self.if_match, current_etag) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(list), Some(etag)) => etag_listed(list, etag, false),
        }
    }

    /// `If-Match` / `If-None-Match` of a write; anything but `*` in If-None-Match,
    /// or both at once, is not implemented.
    fn of(head: &RequestHead) -> Result<WriteConditions, Error> {
        let inm = head.header("if-none-match");
        let im = head.header("if-match");
        match (inm, im) {
            (Some(_), Some(_)) => Err(Error::not_implemented(
                "If-Match together with If-None-Match on a write",
            )),
            (Some(v), None) if v.trim() == "*" => Ok(WriteConditions {
                if_none_match_star: true,
                if_match: None,
            }),
            (Some(_), None) => Err(Error::not_implemented(
                "If-None-Match other than * on a write",
            )),
            (None, m) => Ok(WriteConditions {
                if_none_match_star: false,
                if_match: m.map(str::to_owned),
            }),
        }
    }
}

/// Most parts in one multipart upload (S3's limit).
pub const MAX_PARTS: u32 = 10_000;
/// Smallest part other than the last (S3's limit).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Largest part (S3's limit).
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Largest XML body of a CompleteMultipartUpload (10,000 parts fit in about 1.2 MB).
pub const MAX_COMPLETE_BODY: u64 = 2 * 1024 * 1024;
/// Largest XML body of a DeleteObjects (S3's limit).
pub const MAX_DELETE_BODY: u64 = 1024 * 1024;
/// Most keys in one DeleteObjects (S3's limit).
pub const MAX_DELETE_KEYS: usize = 1000;

/// CopyObject: where from, and the source preconditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopySpec<'a> {
    /// The source bucket (validated by the backend like a request path).
    pub bucket: String,
    /// The source key.
    pub key: String,
    /// `x-amz-copy-source-if-match` / `-if-none-match` / `-if-modified-since` /
    /// `-if-unmodified-since`, evaluated on the source (any failure is 412).
    pub conditions: Conditions<'a>,
    /// `x-amz-metadata-directive: REPLACE`: the request's metadata; `None` (COPY)
    /// keeps the source's.
    pub replace: Option<Metadata>,
}

/// CreateMultipartUpload: the checksum algorithm the parts will carry, if announced,
/// and the metadata the completed object gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSpec {
    /// `x-amz-checksum-algorithm`.
    pub checksum: Option<Algorithm>,
    /// `Content-Type` and `x-amz-meta-*`.
    pub meta: Metadata,
}

/// ListMultipartUploads parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadsSpec<'a> {
    /// `prefix`.
    pub prefix: &'a str,
    /// `key-marker`.
    pub key_marker: Option<&'a str>,
    /// `upload-id-marker` (only with `key-marker`).
    pub upload_id_marker: Option<&'a str>,
    /// `max-uploads`, capped at 1000.
    pub max_uploads: usize,
    /// `encoding-type=url`.
    pub url_encode: bool,
}

/// A checksum algorithm the store computes over a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// CRC-32 (IEEE), 4 bytes big-endian: boto3's default.
    Crc32,
    /// SHA-1, 20 bytes.
    Sha1,
    /// SHA-256, 32 bytes.
    Sha256,
}

impl Algorithm {
    /// The header (or trailer field) that carries it.
    pub fn header(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "x-amz-checksum-crc32",
            Algorithm::Sha1 => "x-amz-checksum-sha1",
            Algorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    fn by_header(name: &str) -> Option<Algorithm> {
        [Algorithm::Crc32, Algorithm::Sha1, Algorithm::Sha256]
            .into_iter()
            .find(|a| a.header().eq_ignore_ascii_case(name))
    }

    /// By its name in `x-amz-checksum-algorithm` (any case).
    pub fn by_name(name: &str) -> Option<Algorithm> {
        match name.to_ascii_uppercase().as_str() {
            "CRC32" => Some(Algorithm::Crc32),
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }
}

/// What a PUT's body must be checked against, decoded from its head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutSpec {
    /// `Content-Encoding: aws-chunked`: the body (after HTTP framing) is itself chunked,
    /// with the checksum in a trailer.
    pub aws_chunked: bool,
    /// `x-amz-decoded-content-length`: the object's size when aws-chunked.
    pub decoded_length: Option<u64>,
    /// `Content-MD5`.
    pub md5: Option<[u8; 16]>,
    /// `x-amz-checksum-crc32`.
    pub crc32: Option<[u8; 4]>,
    /// `x-amz-checksum-sha1`.
    pub sha1: Option<[u8; 20]>,
    /// `x-amz-checksum-sha256`.
    pub sha256: Option<[u8; 32]>,
    /// `x-amz-content-sha256` as a hex payload hash.
    pub content_sha256: Option<[u8; 32]>,
    /// The checksum announced by `x-amz-trailer`, sent after the aws-chunked body.
    pub trailer: Option<Algorithm>,
    /// PutObject: `Content-Type` and `x-amz-meta-*` to store with the object.
    pub meta: Metadata,
    /// PutObject, CompleteMultipartUpload: `If-None-Match: *` / `If-Match`.
    pub cond: WriteConditions,
}

/// The digests of a received body that [`PutSpec::verify`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDigests<'a> {
    /// Always computed.
    pub sha256: &'a [u8; 32],
    /// Computed when [`PutSpec::wants`] asked for it.
    pub md5: Option<&'a [u8; 16]>,
    /// Computed when asked for.
    pub crc32: Option<&'a [u8; 4]>,
    /// Computed when asked for.
    pub sha1: Option<&'a [u8; 20]>,
}

impl PutSpec {
    /// Which optional digests the body must be run through: (md5, crc32, sha1).
    pub fn wants(&self) -> (bool, bool, bool) {
        (
            self.md5.is_some(),
            self.crc32.is_some() || self.trailer == Some(Algorithm::Crc32),
            self.sha1.is_some() || self.trailer == Some(Algorithm::Sha1),
        )
    }

    /// The largest body this PUT announces, for the 413 check before reading it.
    pub fn announced_size(&self, head: &RequestHead) -> Option<u64> {
        if self.aws_chunked {
            self.decoded_length
        } else {
            head.content_length
        }
    }

    /// Check the body's digests (and size) against every checksum sent, headers and
    /// the trailer alike. `trailer` is the raw trailer section of an aws-chunked body.
    pub fn verify(&self, size: u64, d: &BodyDigests<'_>, trailer: &[u8]) -> Result<(), Error> {
        if let Some(want) = self.decoded_length {
            if want != size {
                return Err(Error::new(Code::IncompleteBody).detail(format!(
                    "x-amz-decoded-content-length {want}, body {size} bytes"
                )));
            }
        }
        let mismatch =
            |what: &str| Error::msg(Code::BadDigest, format!("{what} does not match the body"));
        if let Some(want) = &self.content_sha256 {
            if want != d.sha256 {
                return Err(Error::new(Code::XAmzContentSHA256Mismatch));
            }
        }
        if self.sha256.is_some_and(|w| &w != d.sha256) {
            return Err(mismatch("x-amz-checksum-sha256"));
        }
        if self.md5.is_some() && self.md5.as_ref() != d.md5 {
            return Err(mismatch("Content-MD5"));
        }
        if self.crc32.is_some() && self.crc32.as_ref() != d.crc32 {
            return Err(mismatch("x-amz-checksum-crc32"));
        }
        if self.sha1.is_some() && self.sha1.as_ref() != d.sha1 {
            return Err(mismatch("x-amz-checksum-sha1"));
        }
        if let Some(alg) = self.trailer {
            let value = trailer_field(trailer, alg.header()).ok_or_else(|| {
                Error::msg(
                    Code::InvalidRequest,
                    format!(
                        "the trailer announced by x-amz-trailer ({}) is missing",
                        alg.header()
                    ),
                )
            })?;
            let ok = match alg {
                Algorithm::Crc32 => d.crc32.is_some_and(|c| b64_exact::<4>(value) == Some(*c)),
                Algorithm::Sha1 => d.sha1.is_some_and(|c| b64_exact::<20>(value) == Some(*c)),
                Algorithm::Sha256 => b64_exact::<32>(value) == Some(*d.sha256),
            };
            if !ok {
                return Err(mismatch(alg.header()));
            }
        }
        Ok(())
    }
}

/// The value of `name` in a raw trailer section (`name:value\r\n` lines).
fn trailer_field<'t>(trailer: &'t [u8], name: &str) -> Option<&'t str> {
    let text = std::str::from_utf8(trailer).ok()?;
    text.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim_matches([' ', '\t']))
    })
}

fn b64_exact<const N: usize>(value: &str) -> Option<[u8; N]> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    raw.try_into().ok()
}

/// The preconditions of a GET or HEAD (or of a copy's source), evaluated against the
/// ETag and Last-Modified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a str>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a str>,
    /// `If-Modified-Since` (an HTTP date; ignored when it does not parse, RFC 9110
    /// section 13.1.3).
    pub if_modified_since: Option<&'a str>,
    /// `If-Unmodified-Since` (likewise).
    pub if_unmodified_since: Option<&'a str>,
}

/// What [`Conditions::evaluate`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the object.
    Proceed,
    /// 304: `If-None-Match` matched.
    NotModified,
    /// 412: a precondition (`If-Match`, `If-None-Match: *` on a write,
    /// `If-Unmodified-Since`) did not hold.
    Failed,
}

/// Whether `etag` (quoted) is in an `If-Match` / `If-None-Match` list, or the list
/// is `*`. `weak` ignores a `W/` prefix (If-None-Match's weak comparison).
fn etag_listed(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        let t = if weak {
            t.strip_prefix("W/").unwrap_or(t)
        } else {
            t
        };
        t == etag
    })
}

impl Conditions<'_> {
    /// RFC 9110 section 13.2.2 order, for an object with `etag` last modified at
    /// `mtime` (unix seconds; HTTP dates have no finer grain): If-Match (strong), else
    /// If-Unmodified-Since; then If-None-Match (weak), else If-Modified-Since. A date
    /// that does not parse is ignored, as the RFC says.
    pub fn evaluate(&self, etag: &str, mtime: u64) -> Precondition {
        if let Some(m) = self.if_match {
            if !etag_listed(m, etag, false) {
                return Precondition::Failed;
            }
        } else if let Some(d) = self.if_unmodified_since.and_then(parse_http_date) {
            if mtime > d {
                return Precondition::Failed;
            }
        }
        if let Some(m) = self.if_none_match {
            if etag_listed(m, etag, true) {
                return Precondition::NotModified;
            }
        } else if let Some(d) = self.if_modified_since.and_then(parse_http_date) {
            if mtime <= d {
                return Precondition::NotModified;
            }
        }
        Precondition::Proceed
    }
}

/// An HTTP date (RFC 9110 section 5.6.7) as unix seconds: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), and the obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) forms
/// that a recipient must also accept. `None` for anything else.
pub fn parse_http_date(s: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = |m: &str| MONTHS.iter().position(|x| *x == m).map(|i| i as u64 + 1);
    let num = |t: &str, lo: u64, hi: u64| -> Option<u64> {
        if t.is_empty() || t.len() > 4 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok().filter(|n| (lo..=hi).contains(n))
    };
    let time = |t: &str| -> Option<u64> {
        let mut it = t.split(':');
        let (h, m, s) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || h.len() != 2 || m.len() != 2 || s.len() != 2 {
            return None;
        }
        // 60 for a leap second, which unix time folds into the next minute.
        Some(num(h, 0, 23)? * 3600 + num(m, 0, 59)? * 60 + num(s, 0, 60)?)
    };
    let t: Vec<&str> = s.split_ascii_whitespace().collect();
    let (y, mo, d, secs) = match t.as_slice() {
        [wd, d, mo, y, hms, "GMT"] if wd.ends_with(',') && d.len() == 2 && y.len() == 4 => {
            (num(y, 1970, 9999)?, month(mo)?, num(d, 1, 31)?, time(hms)?)
        }
        [wd, dmy, hms, "GMT"] if wd.ends_with(',') => {
            let mut p = dmy.split('-');
            let (d, mo, yy) = (p.next()?, p.next()?, p.next()?);
            if p.next().is_some() || d.len() != 2 || yy.len() != 2 {
                return None;
            }
            // A two-digit year more than 50 years ahead is in the past (RFC 9110).
            let yy = num(yy, 0, 99)?;
            let y = if yy < 70 { 2000 + yy } else { 1900 + yy };
            (y, month(mo)?, num(d, 1, 31)?, time(hms)?)
        }
        [_, mo, d, hms, y] if y.len() == 4 => {
            (num(y, 1970, 9999)?, month(mo)?, num(d, 1, 31)?, time(hms)?)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm), years from 1970 on.
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + secs)
}

/// The ListObjectsV2 parameters the store honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListSpec<'a> {
    /// `prefix`.
    pub prefix: &'a str,
    /// `continuation-token` (opaque; decoded by the backend).
    pub continuation: Option<&'a str>,
    /// `start-after` (ignored by S3 when a continuation token is given).
    pub start_after: Option<&'a str>,
    /// `max-keys`, capped at 1000.
    pub max_keys: usize,
    /// `encoding-type=url`: keys and prefixes in the result are percent-encoded.
    pub url_encode: bool,
    /// `delimiter`: keys whose rest after `prefix` holds it are rolled up into
    /// CommonPrefixes.
    pub delimiter: Option<&'a str>,
}

/// SHA-256 of the empty string: the only payload hash a bodiless request can carry.
const EMPTY_SHA256_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Headers that any operation accepts: transport, tracing, SDK bookkeeping and
/// credentials. The identity is the client certificate; a SigV4 `Authorization` (or
/// its session token) is neither checked nor needed, so it changes nothing. An
/// `Authorization: Bearer` token is checked by the store when `[tokens]` is set
/// ([`crate::authz::token`]), and ignored like SigV4 when it is not.
const ANY_OP_HEADERS: &[&str] = &[
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "connection",
    "keep-alive",
    "te",
    "content-length",
    "transfer-encoding",
    "expect",
    "date",
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-user-agent",
    "amz-sdk-invocation-id",
    "amz-sdk-request",
    "x-amzn-trace-id",
    "traceparent",
    "tracestate",
    "x-amz-content-sha256",
];

/// A query parameter, or a header that steers the operation, given twice is refused:
/// reading either copy could read the request as something the client did not mean
/// (a second `x-amz-checksum-sha256` left unchecked, a second `prefix` ignored).
/// `Authorization` is the token layer's to judge (RFC 6750 wants its own error).
fn no_duplicates(head: &RequestHead) -> Result<(), Error> {
    let steering = |n: &str| {
        n.starts_with("x-amz-")
            || n.starts_with("content-")
            || n.starts_with("if-")
            || n == "range"
            || n == "expect"
    };
    for (i, (n, _)) in head.headers.iter().enumerate() {
        if steering(n) && head.headers[..i].iter().any(|(m, _)| m == n) {
            return Err(Error::msg(
                Code::InvalidRequest,
                format!("header {n} is given more than once"),
            ));
        }
    }
    for (i, (k, _)) in head.query.iter().enumerate() {
        if head.query[..i].iter().any(|(m, _)| m == k) {
            return Err(Error::msg(
                Code::InvalidRequest,
                format!("query parameter {k} is given more than once"),
            ));
        }
    }
    Ok(())
}

/// Which S3 operation `head` is, or why the store refuses it. `has_key` says whether
/// the path names an object (`/bucket/key`) or a bucket (`/bucket`).
///
/// Operations S3 has but the store does not (tagging, ACLs, bucket policy, versions,
/// ...) are 501 `NotImplemented`, as is every header or
/// parameter not on the allow-list of the operation; methods S3 does not have are 405.
/// Malformed values of allowed fields are 400.
pub fn classify(head: &RequestHead, has_key: bool) -> Result<Operation<'_>, Error> {
    no_duplicates(head)?;
    let has = |name: &str| head.query.iter().any(|(k, _)| k == name);
    match (head.method, has_key) {
        (Method::Put, true) if head.header("x-amz-copy-source").is_some() => {
            if has("partNumber") || has("uploadId") {
                return classify_part_copy(head);
            }
            classify_copy(head).map(Operation::CopyObject)
        }
        (Method::Put, true) if has("partNumber") || has("uploadId") => classify_part(head),
        (Method::Put, true) => classify_put(head, &[], "PutObject", true).map(Operation::PutObject),
        (Method::Get, true) if has("uploadId") => classify_list_parts(head),
        (Method::Get, true) => object_read(head).map(Operation::GetObject),
        (Method::Head, true) => object_read(head).map(Operation::HeadObject),
        (Method::Delete, true) if has("uploadId") => {
            only_query(head, &["uploadId"], "AbortMultipartUpload")?;
            only_headers(head, &[])?;
            bodiless_payload_hash(head)?;
            Ok(Operation::AbortMultipartUpload {
                upload_id: query(head, "uploadId").unwrap_or(""),
            })
        }
        (Method::Delete, true) => {
            only_query(head, &[], "DeleteObject")?;
            only_headers(head, &[])?;
            bodiless_payload_hash(head)?;
            Ok(Operation::DeleteObject)
        }
        (Method::Post, true) if has("uploads") => classify_create(head),
        (Method::Post, true) if has("uploadId") => {
            only_query(head, &["uploadId"], "CompleteMultipartUpload")?;
            only_headers(
                head,
                &["content-type", "content-md5", "if-match", "if-none-match"],
            )?;
            let mut checksums = checksum_headers(head, PutSpec::default())?;
            checksums.content_sha256 = small_body_payload_hash(head)?;
            checksums.cond = WriteConditions::of(head)?;
            Ok(Operation::CompleteMultipartUpload {
                upload_id: query(head, "uploadId").unwrap_or(""),
                checksums,
            })
        }
        (Method::Post, false) if has("delete") => classify_delete(head),
        (Method::Get, false) if has("uploads") => classify_uploads(head),
        (Method::Get, false) if has("location") => {
            only_query(head, &["location"], "GetBucketLocation")?;
            only_headers(head, &[])?;
            bodiless_payload_hash(head)?;
            Ok(Operation::GetBucketLocation)
        }
        (Method::Get, false) => classify_list(head),
        (Method::Head, false) => {
            only_query(head, &[], "HeadBucket")?;
            only_headers(head, &[])?;
            bodiless_payload_hash(head)?;
            Ok(Operation::HeadBucket)
        }
        (Method::Put, false) => classify_create_bucket(head),
        (Method::Delete, false) => {
            only_query(head, &[], "DeleteBucket")?;
            only_headers(head, &[])?;
            bodiless_payload_hash(head)?;
            Ok(Operation::DeleteBucket)
        }
        (Method::Post, _) => Err(Error::not_implemented("this POST")),
        _ => {
            Err(Error::new(Code::MethodNotAllowed).detail(format!("method {:?}", head.method_str)))
        }
    }
}

/// Which operation a request on the service itself (`/`, no bucket) is: only
/// ListBuckets, without the newer paging parameters (501).
pub fn classify_service(head: &RequestHead) -> Result<Operation<'_>, Error> {
    no_duplicates(head)?;
    match head.method {
        Method::Get => {
            only_query(head, &[], "ListBuckets")?;
            only_headers(head, &["cache-control", "pragma"])?;
            bodiless_payload_hash(head)?;
            Ok(Operation::ListBuckets)
        }
        _ => Err(Error::new(Code::MethodNotAllowed)
            .detail(format!("method {:?} on the service", head.method_str))),
    }
}

/// CreateBucket: no sub-resource, a private ACL at most, and an optional
/// `CreateBucketConfiguration` body (checked by [`parse_create_bucket`]) with its
/// checksums. Object lock, ownership controls and grants are 501.
fn classify_create_bucket(head: &RequestHead) -> Result<Operation<'_>, Error> {
    only_query(head, &[], "CreateBucket")?;
    only_headers(
        head,
        &[
            "content-type",
            "content-md5",
            "x-amz-acl",
            "x-amz-sdk-checksum-algorithm",
            "x-amz-checksum-crc32",
            "x-amz-checksum-sha1",
            "x-amz-checksum-sha256",
        ],
    )?;
    storage_and_acl(head)?;
    let mut spec = checksum_headers(head, PutSpec::default())?;
    spec.content_sha256 = small_body_payload_hash(head)?;
    sdk_algorithm_sent(head, &spec)?;
    Ok(Operation::CreateBucket(spec))
}

/// A CreateBucket body: empty, or a `CreateBucketConfiguration` whose only element is
/// a `LocationConstraint` naming [`REGION`] (or empty, which S3 reads as it).
/// Another region is 400 `InvalidLocationConstraint`; directory-bucket elements
/// (`Location`, `Bucket`) are 501.
pub fn parse_create_bucket(body: &[u8]) -> Result<(), Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let root = parse_xml(body)?;
    if root.name != "CreateBucketConfiguration" {
        return Err(malformed("root is not CreateBucketConfiguration"));
    }
    for c in &root.children {
        match c.name.as_str() {
            "LocationConstraint" => {
                let region = c.text.trim();
                if !(region.is_empty() || region == REGION) {
                    return Err(Error::msg(
                        Code::InvalidLocationConstraint,
                        format!("this store's only region is {REGION}"),
                    ));
                }
            }
            other => {
                return Err(Error::not_implemented(&format!(
                    "CreateBucketConfiguration element {other}"
                )))
            }
        }
    }
    Ok(())
}

fn query<'h>(head: &'h RequestHead, name: &str) -> Option<&'h str> {
    head.query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A decimal parameter in `lo..=hi`, else 400 InvalidArgument naming it.
fn number_param(head: &RequestHead, name: &str, lo: u64, hi: u64) -> Result<Option<u64>, Error> {
    match query(head, name) {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (lo..=hi).contains(n) && v.bytes().all(|b| b.is_ascii_digit()))
            .map(Some)
            .ok_or_else(|| {
                Error::msg(
                    Code::InvalidArgument,
                    format!("{name} must be an integer from {lo} to {hi}"),
                )
            }),
    }
}

/// A max-keys style limit: any non-negative integer, capped at 1000.
fn limit_param(head: &RequestHead, name: &str) -> Result<usize, Error> {
    match query(head, name) {
        None => Ok(1000),
        Some(v) => Ok(v
            .parse::<u64>()
            .map_err(|_| {
                Error::msg(
                    Code::InvalidArgument,
                    format!("{name} must be a non-negative integer"),
                )
            })?
            .min(1000) as usize),
    }
}

fn encoding_param(head: &RequestHead) -> Result<bool, Error> {
    match query(head, "encoding-type") {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("url") => Ok(true),
        Some(_) => Err(Error::msg(
            Code::InvalidArgument,
            "encoding-type must be url",
        )),
    }
}

/// The payload hash of a small XML body (CompleteMultipartUpload, DeleteObjects), as a
/// signing SDK sends it: a hex SHA-256 to verify, or no claim.
fn small_body_payload_hash(head: &RequestHead) -> Result<Option<[u8; 32]>, Error> {
    match head.header("x-amz-content-sha256") {
        None | Some("UNSIGNED-PAYLOAD") => Ok(None),
        Some(v) if is_hex64(v) => {
            let mut raw = [0u8; 32];
            for (i, b) in raw.iter_mut().enumerate() {
                *b = u8::from_str_radix(&v[2 * i..2 * i + 2], 16).map_err(|_| {
                    Error::msg(Code::InvalidArgument, "x-amz-content-sha256 is not valid")
                })?;
            }
            Ok(Some(raw))
        }
        Some(_) => Err(Error::not_implemented(
            "this x-amz-content-sha256 on an XML request body",
        )),
    }
}

fn classify_copy(head: &RequestHead) -> Result<CopySpec<'_>, Error> {
    only_query(head, &[], "CopyObject")?;
    only_headers_or_meta(
        head,
        &[
            "x-amz-copy-source",
            "x-amz-metadata-directive",
            "x-amz-copy-source-if-match",
            "x-amz-copy-source-if-none-match",
            "x-amz-copy-source-if-modified-since",
            "x-amz-copy-source-if-unmodified-since",
            "x-amz-storage-class",
            "x-amz-acl",
            "content-type",
        ],
    )?;
    bodiless_payload_hash(head)?;
    if head.content_length.is_some_and(|n| n > 0) || head.chunked {
        return Err(Error::msg(
            Code::InvalidRequest,
            "CopyObject takes no request body",
        ));
    }
    let replace = match head.header("x-amz-metadata-directive") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("COPY") => false,
        Some(v) if v.eq_ignore_ascii_case("REPLACE") => true,
        Some(_) => {
            return Err(Error::msg(
                Code::InvalidArgument,
                "x-amz-metadata-directive must be COPY or REPLACE",
            ))
        }
    };
    let meta = Metadata::of(head, true)?;
    if !replace && !meta.is_empty() {
        // S3 drops them silently under COPY; a client that sends them means something
        // the copy would not do.
        return Err(Error::msg(
            Code::InvalidRequest,
            "Content-Type and x-amz-meta-* on CopyObject need x-amz-metadata-directive: REPLACE",
        ));
    }
    storage_and_acl(head)?;
    let raw = head.header("x-amz-copy-source").unwrap_or("");
    let (bucket, key) = parse_copy_source(raw)?;
    Ok(CopySpec {
        bucket,
        key,
        conditions: Conditions {
            if_match: head.header("x-amz-copy-source-if-match"),
            if_none_match: head.header("x-amz-copy-source-if-none-match"),
            if_modified_since: head.header("x-amz-copy-source-if-modified-since"),
            if_unmodified_since: head.header("x-amz-copy-source-if-unmodified-since"),
        },
        replace: replace.then_some(meta),
    })
}

/// `x-amz-copy-source`: `[/]bucket/key`, percent-encoded, optionally with
/// `?versionId=` (refused: the store keeps no versions).
pub fn parse_copy_source(raw: &str) -> Result<(String, String), Error> {
    let (path, q) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if let Some(q) = q {
        if q.split('&').any(|p| p.starts_with("versionId")) {
            return Err(Error::not_implemented(
                "x-amz-copy-source with a versionId (the store keeps no versions)",
            ));
        }
        return Err(Error::msg(
            Code::InvalidArgument,
            "x-amz-copy-source has an unknown query",
        ));
    }
    let decoded = crate::proto::http::percent_decode_path(path).map_err(|_| {
        Error::msg(
            Code::InvalidArgument,
            "x-amz-copy-source is not a valid percent-encoded bucket/key",
        )
    })?;
    let rest = decoded.strip_prefix('/').unwrap_or(&decoded);
    match rest.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b.to_owned(), k.to_owned())),
        _ => Err(Error::msg(
            Code::InvalidArgument,
            "x-amz-copy-source must be bucket/key",
        )),
    }
}

fn storage_and_acl(head: &RequestHead) -> Result<(), Error> {
    if let Some(v) = head.header("x-amz-storage-class") {
        if v != "STANDARD" {
            return Err(Error::not_implemented(
                "x-amz-storage-class other than STANDARD",
            ));
        }
    }
    if let Some(v) = head.header("x-amz-acl") {
        if v != "private" {
            return Err(Error::not_implemented("x-amz-acl other than private"));
        }
    }
    Ok(())
}

fn octet_stream_only(head: &RequestHead) -> Result<(), Error> {
    if let Some(ct) = head.header("content-type") {
        let base = ct.split(';').next().unwrap_or("").trim();
        if !base.eq_ignore_ascii_case("application/octet-stream")
            && !base.eq_ignore_ascii_case("binary/octet-stream")
        {
            return Err(Error::not_implemented(
                "Content-Type other than application/octet-stream (not stored yet)",
            ));
        }
    }
    Ok(())
}

fn classify_create(head: &RequestHead) -> Result<Operation<'_>, Error> {
    only_query(head, &["uploads"], "CreateMultipartUpload")?;
    only_headers_or_meta(
        head,
        &[
            "content-type",
            "x-amz-checksum-algorithm",
            "x-amz-checksum-type",
            "x-amz-storage-class",
            "x-amz-acl",
        ],
    )?;
    bodiless_payload_hash(head)?;
    if head.content_length.is_some_and(|n| n > 0) || head.chunked {
        return Err(Error::msg(
            Code::InvalidRequest,
            "CreateMultipartUpload takes no request body",
        ));
    }
    let meta = Metadata::of(head, true)?;
    storage_and_acl(head)?;
    let checksum = match head.header("x-amz-checksum-algorithm") {
        None => None,
        Some(v) => Some(
            Algorithm::by_name(v)
                .ok_or_else(|| Error::not_implemented(&format!("checksum algorithm {v:?}")))?,
        ),
    };
    match head.header("x-amz-checksum-type") {
        None => {}
        Some(v) if v.eq_ignore_ascii_case("COMPOSITE") => {}
        Some(v) => {
            return Err(Error::not_implemented(&format!(
                "x-amz-checksum-type {v:?} (parts are checked one by one)"
            )))
        }
    }
    Ok(Operation::CreateMultipartUpload(CreateSpec {
        checksum,
        meta,
    }))
}

fn classify_part(head: &RequestHead) -> Result<Operation<'_>, Error> {
    let spec = classify_put(head, &["partNumber", "uploadId"], "UploadPart", false)?;
    let upload_id = query(head, "uploadId")
        .ok_or_else(|| Error::msg(Code::InvalidRequest, "partNumber without uploadId"))?;
    let part = number_param(head, "partNumber", 1, u64::from(MAX_PARTS))?
        .ok_or_else(|| Error::msg(Code::InvalidRequest, "uploadId without partNumber"))?
        as u32;
    Ok(Operation::UploadPart {
        upload_id,
        part,
        spec,
    })
}

fn classify_part_copy(head: &RequestHead) -> Result<Operation<'_>, Error> {
    only_query(head, &["partNumber", "uploadId"], "UploadPartCopy")?;
    only_headers(
        head,
        &[
            "x-amz-copy-source",
            "x-amz-copy-source-range",
            "x-amz-copy-source-if-match",
            "x-amz-copy-source-if-none-match",
            "x-amz-copy-source-if-modified-since",
            "x-amz-copy-source-if-unmodified-since",
        ],
    )?;
    bodiless_payload_hash(head)?;
    if head.content_length.is_some_and(|n| n > 0) || head.chunked {
        return Err(Error::msg(
            Code::InvalidRequest,
            "UploadPartCopy takes no request body",
        ));
    }
    let upload_id = query(head, "uploadId")
        .ok_or_else(|| Error::msg(Code::InvalidRequest, "partNumber without uploadId"))?;
    let part = number_param(head, "partNumber", 1, u64::from(MAX_PARTS))?
        .ok_or_else(|| Error::msg(Code::InvalidRequest, "uploadId without partNumber"))?
        as u32;
    let range = head
        .header("x-amz-copy-source-range")
        .map(parse_copy_range)
        .transpose()?;
    let (bucket, key) = parse_copy_source(head.header("x-amz-copy-source").unwrap_or(""))?;
    Ok(Operation::UploadPartCopy {
        upload_id,
        part,
        copy: CopySpec {
            bucket,
            key,
            conditions: Conditions {
                if_match: head.header("x-amz-copy-source-if-match"),
                if_none_match: head.header("x-amz-copy-source-if-none-match"),
                if_modified_since: head.header("x-amz-copy-source-if-modified-since"),
                if_unmodified_since: head.header("x-amz-copy-source-if-unmodified-since"),
            },
            replace: None,
        },
        range,
    })
}

/// `x-amz-copy-source-range`: exactly `bytes=first-last` with `first <= last`. S3
/// takes no suffix or open-ended form here (unlike `Range`), and neither does this.
fn parse_copy_range(v: &str) -> Result<(u64, u64), Error> {
    let bad = || {
        Error::msg(
            Code::InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy",
        )
    };
    let (a, b) = v
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(bad)?
        .split_once('-')
        .ok_or_else(bad)?;
    let digits = |x: &str| !x.is_empty() && x.len() <= 19 && x.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return Err(bad());
    }
    let (a, b) = (
        a.parse::<u64>().map_err(|_| bad())?,
        b.parse::<u64>().map_err(|_| bad())?,
    );
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

fn classify_list_parts(head: &RequestHead) -> Result<Operation<'_>, Error> {
    only_query(
        head,
        &["uploadId", "max-parts", "part-number-marker"],
        "ListParts",
    )?;
    only_headers(head, &["cache-control", "pragma"])?;
    bodiless_payload_hash(head)?;
    let marker = number_param(head, "part-number-marker", 0, u64::from(MAX_PARTS))?.unwrap_or(0);
    Ok(Operation::ListParts {
        upload_id: query(head, "uploadId").unwrap_or(""),
        max_parts: limit_param(head, "max-parts")?,
        marker: marker as u32,
    })
}

fn classify_uploads(head: &RequestHead) -> Result<Operation<'_>, Error> {
    only_query(
        head,
        &[
            "uploads",
            "prefix",
            "key-marker",
            "upload-id-marker",
            "max-uploads",
            "encoding-type",
        ],
        "ListMultipartUploads",
    )?;
    only_headers(head, &["cache-control", "pragma"])?;
    bodiless_payload_hash(head)?;
    Ok(Operation::ListMultipartUploads(UploadsSpec {
        prefix: query(head, "prefix").unwrap_or(""),
        key_marker: query(head, "key-marker").filter(|v| !v.is_empty()),
        upload_id_marker: query(head, "upload-id-marker").filter(|v| !v.is_empty()),
        max_uploads: limit_param(head, "max-uploads")?,
        url_encode: encoding_param(head)?,
    }))
}

fn classify_delete(head: &RequestHead) -> Result<Operation<'_>, Error> {
    only_query(head, &["delete"], "DeleteObjects")?;
    only_headers(
        head,
        &[
            "content-type",
            "content-md5",
            "x-amz-sdk-checksum-algorithm",
            "x-amz-checksum-crc32",
            "x-amz-checksum-sha1",
            "x-amz-checksum-sha256",
        ],
    )?;
    let mut spec = checksum_headers(head, PutSpec::default())?;
    spec.content_sha256 = small_body_payload_hash(head)?;
    sdk_algorithm_sent(head, &spec)?;
    if spec.md5.is_none() && spec.crc32.is_none() && spec.sha1.is_none() && spec.sha256.is_none() {
        return Err(Error::msg(
            Code::InvalidRequest,
            "Missing required header for this request: Content-MD5 (or an x-amz-checksum-* header)",
        ));
    }
    Ok(Operation::DeleteObjects(spec))
}

/// Every query parameter must be in `allowed` (or be `x-id` naming `op`, which newer
/// SDKs add to every request).
fn only_query(head: &RequestHead, allowed: &[&str], op: &str) -> Result<(), Error> {
    for (k, v) in &head.query {
        if allowed.contains(&k.as_str()) || (k == "x-id" && v == op) {
            continue;
        }
        return Err(Error::not_implemented(&format!("query parameter {k:?}")));
    }
    Ok(())
}

/// Every header must be a transport/SDK header or in `allowed`.
fn only_headers(head: &RequestHead, allowed: &[&str]) -> Result<(), Error> {
    for (name, _) in &head.headers {
        if ANY_OP_HEADERS.contains(&name.as_str()) || allowed.contains(&name.as_str()) {
            continue;
        }
        return Err(Error::not_implemented(&format!("header {name}")));
    }
    Ok(())
}

/// [`only_headers`], and any `x-amz-meta-*` header (user metadata the operation
/// stores).
fn only_headers_or_meta(head: &RequestHead, allowed: &[&str]) -> Result<(), Error> {
    for (name, _) in &head.headers {
        if ANY_OP_HEADERS.contains(&name.as_str())
            || allowed.contains(&name.as_str())
            || name.starts_with("x-amz-meta-")
        {
            continue;
        }
        return Err(Error::not_implemented(&format!("header {name}")));
    }
    Ok(())
}

/// A request without a body may still carry a payload hash, which must then be the
/// hash of nothing (or a marker that makes no claim).
fn bodiless_payload_hash(head: &RequestHead) -> Result<(), Error> {
    match head.header("x-amz-content-sha256") {
        None | Some("UNSIGNED-PAYLOAD") => Ok(()),
        Some(v) if v.eq_ignore_ascii_case(EMPTY_SHA256_HEX) => Ok(()),
        Some(v) if is_hex64(v) => Err(Error::new(Code::XAmzContentSHA256Mismatch)),
        Some(_) => Err(Error::not_implemented("x-amz-content-sha256 value")),
    }
}

fn is_hex64(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

fn object_read(head: &RequestHead) -> Result<Conditions<'_>, Error> {
    let op = if head.method == Method::Head {
        "HeadObject"
    } else {
        "GetObject"
    };
    only_query(head, &[], op)?;
    only_headers(
        head,
        &[
            "range",
            "if-match",
            "if-none-match",
            "if-modified-since",
            "if-unmodified-since",
            "x-amz-checksum-mode",
            "cache-control",
            "pragma",
        ],
    )?;
    bodiless_payload_hash(head)?;
    if let Some(v) = head.header("x-amz-checksum-mode") {
        // GET always returns x-amz-checksum-sha256 for a whole object.
        if !v.eq_ignore_ascii_case("ENABLED") {
            return Err(Error::msg(
                Code::InvalidArgument,
                "x-amz-checksum-mode must be ENABLED",
            ));
        }
    }
    Ok(Conditions {
        if_match: head.header("if-match"),
        if_none_match: head.header("if-none-match"),
        if_modified_since: head.header("if-modified-since"),
        if_unmodified_since: head.header("if-unmodified-since"),
    })
}

fn classify_list(head: &RequestHead) -> Result<Operation<'_>, Error> {
    let v2 = match query(head, "list-type") {
        Some("2") => true,
        Some(_) => {
            return Err(Error::msg(
                Code::InvalidArgument,
                "list-type must be 2 (ListObjectsV2), or absent (ListObjects)",
            ))
        }
        None => false,
    };
    if v2 {
        only_query(
            head,
            &[
                "list-type",
                "prefix",
                "continuation-token",
                "max-keys",
                "start-after",
                "encoding-type",
                "fetch-owner",
                "delimiter",
            ],
            "ListObjectsV2",
        )?;
    } else {
        only_query(
            head,
            &["prefix", "marker", "max-keys", "encoding-type", "delimiter"],
            "ListObjects",
        )?;
    }
    only_headers(head, &["cache-control", "pragma"])?;
    bodiless_payload_hash(head)?;
    let max_keys = limit_param(head, "max-keys")?;
    let url_encode = encoding_param(head)?;
    // The store keeps no owners: asking for them cannot be honoured.
    match query(head, "fetch-owner") {
        None | Some("false") => {}
        Some(_) => return Err(Error::not_implemented("fetch-owner=true")),
    }
    let spec = ListSpec {
        prefix: query(head, "prefix").unwrap_or(""),
        continuation: query(head, "continuation-token"),
        start_after: if v2 {
            query(head, "start-after")
        } else {
            query(head, "marker")
        }
        .filter(|v| !v.is_empty()),
        max_keys,
        url_encode,
        delimiter: query(head, "delimiter").filter(|v| !v.is_empty()),
    };
    Ok(if v2 {
        Operation::ListObjectsV2(spec)
    } else {
        Operation::ListObjects(spec)
    })
}

/// A PUT body's checks; with `object` (PutObject, not UploadPart) also the metadata
/// to store and the write's preconditions.
fn classify_put(
    head: &RequestHead,
    params: &[&str],
    op: &str,
    object: bool,
) -> Result<PutSpec, Error> {
    only_query(head, params, op)?;
    const BODY: &[&str] = &[
        "content-md5",
        "content-type",
        "content-encoding",
        "x-amz-decoded-content-length",
        "x-amz-trailer",
        "x-amz-sdk-checksum-algorithm",
        "x-amz-checksum-crc32",
        "x-amz-checksum-sha1",
        "x-amz-checksum-sha256",
        "x-amz-storage-class",
        "x-amz-acl",
    ];
    let mut spec = PutSpec::default();
    if object {
        let mut allowed = BODY.to_vec();
        allowed.extend(["if-match", "if-none-match"]);
        only_headers_or_meta(head, &allowed)?;
        spec.meta = Metadata::of(head, true)?;
        spec.cond = WriteConditions::of(head)?;
    } else {
        only_headers(head, BODY)?;
        // A part's Content-Type is not the object's, and is not kept.
        octet_stream_only(head)?;
    }
    storage_and_acl(head)?;
    for (name, value) in &head.headers {
        if name != "content-encoding" {
            continue;
        }
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("aws-chunked") {
                spec.aws_chunked = true;
            } else {
                return Err(Error::not_implemented(&format!(
                    "Content-Encoding {coding:?} (not stored yet)"
                )));
            }
        }
    }
    if let Some(v) = head.header("x-amz-decoded-content-length") {
        if !spec.aws_chunked {
            return Err(Error::msg(
                Code::InvalidRequest,
                "x-amz-decoded-content-length without Content-Encoding: aws-chunked",
            ));
        }
        let n = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| {
                Error::msg(
                    Code::InvalidArgument,
                    "x-amz-decoded-content-length is not a number",
                )
            })?;
        spec.decoded_length = Some(n);
    }
    spec = checksum_headers(head, spec)?;
    if let Some(v) = head.header("x-amz-trailer") {
        if !spec.aws_chunked {
            return Err(Error::msg(
                Code::InvalidRequest,
                "x-amz-trailer without Content-Encoding: aws-chunked",
            ));
        }
        let alg = Algorithm::by_header(v.trim())
            .ok_or_else(|| Error::not_implemented(&format!("x-amz-trailer {v:?}")))?;
        spec.trailer = Some(alg);
    }
    match head.header("x-amz-content-sha256") {
        None | Some("UNSIGNED-PAYLOAD") => {}
        Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER") if spec.aws_chunked => {}
        Some(v) if is_hex64(v) && !spec.aws_chunked => {
            let mut raw = [0u8; 32];
            for (i, b) in raw.iter_mut().enumerate() {
                *b = u8::from_str_radix(&v[2 * i..2 * i + 2], 16).map_err(|_| {
                    Error::msg(Code::InvalidArgument, "x-amz-content-sha256 is not valid")
                })?;
            }
            spec.content_sha256 = Some(raw);
        }
        // Signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD...) need the signing key,
        // which the store does not have: their signatures could not be checked.
        Some(v) => {
            return Err(Error::not_implemented(&format!(
                "x-amz-content-sha256 {:?}",
                v.get(..64).unwrap_or(v)
            )))
        }
    }
    if spec.aws_chunked && spec.decoded_length.is_none() {
        return Err(Error::new(Code::MissingContentLength)
            .detail("aws-chunked without x-amz-decoded-content-length"));
    }
    sdk_algorithm_sent(head, &spec)?;
    Ok(spec)
}

/// Decode `Content-MD5` and the `x-amz-checksum-*` headers into `spec`.
fn checksum_headers(head: &RequestHead, mut spec: PutSpec) -> Result<PutSpec, Error> {
    let invalid = |what: &str| Error::msg(Code::InvalidDigest, format!("{what} is not valid"));
    if let Some(v) = head.header("content-md5") {
        spec.md5 = Some(b64_exact(v).ok_or_else(|| invalid("Content-MD5"))?);
    }
    if let Some(v) = head.header("x-amz-checksum-crc32") {
        spec.crc32 = Some(b64_exact(v).ok_or_else(|| invalid("x-amz-checksum-crc32"))?);
    }
    if let Some(v) = head.header("x-amz-checksum-sha1") {
        spec.sha1 = Some(b64_exact(v).ok_or_else(|| invalid("x-amz-checksum-sha1"))?);
    }
    if let Some(v) = head.header("x-amz-checksum-sha256") {
        spec.sha256 = Some(b64_exact(v).ok_or_else(|| invalid("x-amz-checksum-sha256"))?);
    }
    Ok(spec)
}

/// The algorithm the SDK says it used must be one whose value is here to check.
fn sdk_algorithm_sent(head: &RequestHead, spec: &PutSpec) -> Result<(), Error> {
    if let Some(v) = head.header("x-amz-sdk-checksum-algorithm") {
        let alg = Algorithm::by_name(v)
            .ok_or_else(|| Error::not_implemented(&format!("checksum algorithm {v:?}")))?;
        let sent = match alg {
            Algorithm::Crc32 => spec.crc32.is_some(),
            Algorithm::Sha1 => spec.sha1.is_some(),
            Algorithm::Sha256 => spec.sha256.is_some(),
        } || spec.trailer == Some(alg);
        if !sent {
            return Err(Error::msg(
                Code::InvalidRequest,
                format!("x-amz-sdk-checksum-algorithm {v} without its checksum value"),
            ));
        }
    }
    Ok(())
}

/// Percent-encode a key or prefix for `encoding-type=url` listings: everything but
/// RFC 3986 unreserved characters and `/`, so that `+` and spaces survive the
/// form-style decoding SDKs apply.
pub fn url_encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// XML request bodies (CompleteMultipartUpload, DeleteObjects) and result documents
// ---------------------------------------------------------------------------------------

/// Deepest element nesting accepted in a request body.
const XML_MAX_DEPTH: usize = 8;
/// Most elements accepted in a request body (10,000 parts of four elements each).
const XML_MAX_ELEMENTS: usize = 50_000;

/// One element of a small XML request body: its local name (any namespace prefix
/// dropped), its child elements and its text (entities decoded). Attributes, comments
/// and processing instructions are skipped; a DOCTYPE (and so any entity definition) is
/// refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XmlElement {
    /// Local name.
    pub name: String,
    /// Child elements in order.
    pub children: Vec<XmlElement>,
    /// The text directly inside, concatenated.
    pub text: String,
}

impl XmlElement {
    /// The text of the first child named `name`.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.children
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.text.as_str())
    }
}

fn malformed(why: &str) -> Error {
    Error::new(Code::MalformedXML).detail(why)
}

/// Parse a small XML document (the caller bounds its size) into its root element.
pub fn parse_xml(body: &[u8]) -> Result<XmlElement, Error> {
    let text = std::str::from_utf8(body).map_err(|_| malformed("not UTF-8"))?;
    let mut rest = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut stack: Vec<XmlElement> = Vec::new();
    let mut root: Option<XmlElement> = None;
    let mut elements = 0usize;
    loop {
        let lt = rest.find('<').unwrap_or(rest.len());
        let (chars, after) = rest.split_at(lt);
        match stack.last_mut() {
            Some(top) => decode_text_into(&mut top.text, chars)?,
            None if chars.trim().is_empty() => {}
            None => return Err(malformed("text outside the root element")),
        }
        rest = after;
        if rest.is_empty() {
            break;
        }
        if let Some(r) = rest.strip_prefix("<?") {
            let end = r.find("?>").ok_or_else(|| malformed("unterminated <?"))?;
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix("<!--") {
            let end = r
                .find("-->")
                .ok_or_else(|| malformed("unterminated comment"))?;
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("<![CDATA[") {
            let end = r
                .find("]]>")
                .ok_or_else(|| malformed("unterminated CDATA"))?;
            let top = stack
                .last_mut()
                .ok_or_else(|| malformed("CDATA outside the root element"))?;
            top.text.push_str(&r[..end]);
            rest = &r[end + 3..];
        } else if rest.starts_with("<!") {
            return Err(malformed("DOCTYPE and declarations are not accepted"));
        } else if let Some(r) = rest.strip_prefix("</") {
            let end = r
                .find('>')
                .ok_or_else(|| malformed("unterminated end tag"))?;
            let name = local_name(r[..end].trim());
            let done = stack
                .pop()
                .ok_or_else(|| malformed("end tag without start"))?;
            if done.name != name {
                return Err(malformed("mismatched end tag"));
            }
            rest = &r[end + 1..];
            match stack.last_mut() {
                Some(parent) => parent.children.push(done),
                None => root = Some(done),
            }
        } else {
            let r = &rest[1..];
            let end = tag_end(r).ok_or_else(|| malformed("unterminated start tag"))?;
            let inner = &r[..end];
            let (inner, empty) = match inner.strip_suffix('/') {
                Some(i) => (i, true),
                None => (inner, false),
            };
            let name_end = inner
                .find(|c: char| c.is_ascii_whitespace())
                .unwrap_or(inner.len());
            let name = local_name(&inner[..name_end]);
            if name.is_empty() {
                return Err(malformed("empty element name"));
            }
            if root.is_some() {
                return Err(malformed("a second root element"));
            }
            elements += 1;
            if elements > XML_MAX_ELEMENTS || stack.len() >= XML_MAX_DEPTH {
                return Err(malformed("too many or too deeply nested elements"));
            }
            let el = XmlElement {
                name: name.to_owned(),
                ..XmlElement::default()
            };
            rest = &r[end + 1..];
            if empty {
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            } else {
                stack.push(el);
            }
        }
    }
    if !stack.is_empty() {
        return Err(malformed("unclosed element"));
    }
    root.ok_or_else(|| malformed("no root element"))
}

/// Where a start tag ends (`>` outside quoted attribute values).
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '>') => return Some(i),
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    None
}

fn local_name(qname: &str) -> &str {
    qname.rsplit_once(':').map_or(qname, |(_, l)| l)
}

fn decode_text_into(out: &mut String, s: &str) -> Result<(), Error> {
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let r = &rest[amp + 1..];
        let semi = r
            .find(';')
            .filter(|&n| n <= 10)
            .ok_or_else(|| malformed("bad entity"))?;
        let ent = &r[..semi];
        let c = match ent {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let n = if let Some(h) = ent.strip_prefix("#x") {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse::<u32>().ok()
                } else {
                    None
                };
                n.and_then(char::from_u32)
                    .filter(|&c| c != '\0')
                    .ok_or_else(|| malformed("unknown entity"))?
            }
        };
        out.push(c);
        rest = &r[semi + 1..];
    }
    out.push_str(rest);
    Ok(())
}

/// One `<Part>` of a CompleteMultipartUpload body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletePart {
    /// `PartNumber`.
    pub number: u32,
    /// `ETag`, without its quotes.
    pub etag: String,
    /// `ChecksumCRC32` / `ChecksumSHA1` / `ChecksumSHA256` (base64), when sent.
    pub checksums: Vec<(Algorithm, String)>,
}

/// A part's ETag as compared: without the quotes, lowercase.
pub fn bare_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// The part list of a CompleteMultipartUpload: 1 to [`MAX_PARTS`] parts in strictly
/// ascending order (else `InvalidPartOrder`), each with a number and an ETag.
pub fn parse_complete(body: &[u8]) -> Result<Vec<CompletePart>, Error> {
    let root = parse_xml(body)?;
    if root.name != "CompleteMultipartUpload" {
        return Err(malformed("root is not CompleteMultipartUpload"));
    }
    let mut parts: Vec<CompletePart> = Vec::with_capacity(root.children.len());
    for p in &root.children {
        if p.name != "Part" {
            return Err(malformed(
                "CompleteMultipartUpload holds only Part elements",
            ));
        }
        let mut number = None;
        let mut etag = None;
        let mut checksums = Vec::new();
        for c in &p.children {
            let alg = match c.name.as_str() {
                "PartNumber" => {
                    number = Some(
                        c.text
                            .trim()
                            .parse::<u32>()
                            .ok()
                            .filter(|n| (1..=MAX_PARTS).contains(n))
                            .ok_or_else(|| {
                                Error::msg(
                                    Code::InvalidArgument,
                                    "PartNumber must be an integer from 1 to 10000",
                                )
                            })?,
                    );
                    continue;
                }
                "ETag" => {
                    etag = Some(bare_etag(&c.text));
                    continue;
                }
                "ChecksumCRC32" => Algorithm::Crc32,
                "ChecksumSHA1" => Algorithm::Sha1,
                "ChecksumSHA256" => Algorithm::Sha256,
                "ChecksumCRC32C" | "ChecksumCRC64NVME" => {
                    return Err(Error::not_implemented(&c.name));
                }
                _ => return Err(malformed("unknown element in Part")),
            };
            checksums.push((alg, c.text.trim().to_owned()));
        }
        let (Some(number), Some(etag)) = (number, etag) else {
            return Err(malformed("a Part without PartNumber or ETag"));
        };
        if parts.last().is_some_and(|last| last.number >= number) {
            return Err(Error::new(Code::InvalidPartOrder));
        }
        parts.push(CompletePart {
            number,
            etag,
            checksums,
        });
    }
    if parts.is_empty() {
        return Err(Error::msg(
            Code::MalformedXML,
            "You must specify at least one part",
        ));
    }
    Ok(parts)
}

/// A DeleteObjects body: the keys (with a VersionId if one was given) and Quiet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteRequest {
    /// `<Quiet>true</Quiet>`: report only the errors.
    pub quiet: bool,
    /// `(Key, VersionId)` in order.
    pub objects: Vec<(String, Option<String>)>,
}

/// Parse a DeleteObjects body: 1 to [`MAX_DELETE_KEYS`] objects.
pub fn parse_delete(body: &[u8]) -> Result<DeleteRequest, Error> {
    let root = parse_xml(body)?;
    if root.name != "Delete" {
        return Err(malformed("root is not Delete"));
    }
    let mut req = DeleteRequest::default();
    for c in &root.children {
        match c.name.as_str() {
            "Quiet" => {
                req.quiet = match c.text.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(malformed("Quiet must be true or false")),
                }
            }
            "Object" => {
                let mut key = None;
                let mut version = None;
                for f in &c.children {
                    match f.name.as_str() {
                        "Key" => key = Some(f.text.clone()),
                        "VersionId" => version = Some(f.text.clone()),
                        "ETag" | "LastModifiedTime" | "Size" => {
                            return Err(Error::not_implemented(&format!(
                                "conditional DeleteObjects ({})",
                                f.name
                            )))
                        }
                        _ => return Err(malformed("unknown element in Object")),
                    }
                }
                let key = key.ok_or_else(|| malformed("an Object without a Key"))?;
                req.objects.push((key, version));
            }
            _ => return Err(malformed("unknown element in Delete")),
        }
    }
    if req.objects.is_empty() || req.objects.len() > MAX_DELETE_KEYS {
        return Err(Error::msg(
            Code::MalformedXML,
            "DeleteObjects takes 1 to 1000 keys",
        ));
    }
    Ok(req)
}

const XML_DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

fn xml_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    xml_escape_into(&mut out, s);
    out
}

/// The CreateMultipartUpload result.
pub fn initiate_xml(bucket: &str, key: &str, upload_id: &str) -> String {
    format!(
        "{XML_DECL}<InitiateMultipartUploadResult xmlns=\"{S3_NS}\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{}</UploadId></InitiateMultipartUploadResult>",
        xml_text(bucket),
        xml_text(key),
        xml_text(upload_id)
    )
}

/// The CompleteMultipartUpload result.
pub fn complete_xml(bucket: &str, key: &str, etag: &str) -> String {
    let mut location = String::new();
    url_encode_into(&mut location, &format!("/{bucket}/{key}"));
    format!(
        "{XML_DECL}<CompleteMultipartUploadResult xmlns=\"{S3_NS}\"><Location>{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
        xml_text(&location),
        xml_text(bucket),
        xml_text(key),
        xml_text(etag)
    )
}

/// The CopyObject result.
pub fn copy_xml(etag: &str, last_modified_iso: &str) -> String {
    format!(
        "{XML_DECL}<CopyObjectResult xmlns=\"{S3_NS}\"><LastModified>{}</LastModified><ETag>{}</ETag></CopyObjectResult>",
        xml_text(last_modified_iso),
        xml_text(etag)
    )
}

/// The UploadPartCopy result.
pub fn copy_part_xml(etag: &str, last_modified_iso: &str) -> String {
    format!(
        "{XML_DECL}<CopyPartResult xmlns=\"{S3_NS}\"><LastModified>{}</LastModified><ETag>{}</ETag></CopyPartResult>",
        xml_text(last_modified_iso),
        xml_text(etag)
    )
}

/// The ListBuckets result: `owner` (the caller's identity) and the buckets as (name,
/// ISO 8601 creation time).
pub fn list_buckets_xml(owner: &str, buckets: &[(String, String)]) -> String {
    let mut x = format!(
        "{XML_DECL}<ListAllMyBucketsResult xmlns=\"{S3_NS}\"><Owner><ID>{}</ID><DisplayName>{}</DisplayName></Owner><Buckets>",
        xml_text(owner),
        xml_text(owner)
    );
    for (name, created) in buckets {
        let _ = write!(
            x,
            "<Bucket><Name>{}</Name><CreationDate>{}</CreationDate></Bucket>",
            xml_text(name),
            xml_text(created)
        );
    }
    x.push_str("</Buckets></ListAllMyBucketsResult>");
    x
}

/// The GetBucketLocation result: the store has one location, S3's default.
pub fn location_xml() -> String {
    format!("{XML_DECL}<LocationConstraint xmlns=\"{S3_NS}\"/>")
}

/// The DeleteObjects result: `deleted` keys (left out when `quiet`) and per-key errors.
pub fn delete_xml(deleted: &[String], errors: &[(String, Error)], quiet: bool) -> String {
    let mut x = format!("{XML_DECL}<DeleteResult xmlns=\"{S3_NS}\">");
    if !quiet {
        for k in deleted {
            let _ = write!(x, "<Deleted><Key>{}</Key></Deleted>", xml_text(k));
        }
    }
    for (k, e) in errors {
        let _ = write!(
            x,
            "<Error><Key>{}</Key><Code>{}</Code><Message>{}</Message></Error>",
            xml_text(k),
            e.code.as_str(),
            xml_text(&e.message)
        );
    }
    x.push_str("</DeleteResult>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::parse_head;

    fn head(text: &str) -> RequestHead {
        let raw = format!("{text}\r\n\r\n");
        parse_head(raw.as_bytes(), 64 * 1024)
            .expect("parses")
            .expect("complete")
            .0
    }

    fn code(text: &str, has_key: bool) -> Option<Code> {
        classify(&head(text), has_key).err().map(|e| e.code)
    }

    #[test]
    fn the_implemented_operations() {
        let put = head("PUT /b/k HTTP/1.1\r\nhost: x\r\ncontent-length: 1");
        assert!(matches!(classify(&put, true), Ok(Operation::PutObject(_))));
        let get = head("GET /b/k HTTP/1.1\r\nrange: bytes=0-1\r\nif-match: \"e\"");
        assert!(matches!(
            classify(&get, true),
            Ok(Operation::GetObject(Conditions {
                if_match: Some("\"e\""),
                if_none_match: None,
                ..
            }))
        ));
        let h = head("HEAD /b/k HTTP/1.1");
        assert!(matches!(classify(&h, true), Ok(Operation::HeadObject(_))));
        let d = head("DELETE /b/k HTTP/1.1\r\ncontent-length: 0");
        assert_eq!(classify(&d, true), Ok(Operation::DeleteObject));
        let l = head(
            "GET /b?list-type=2&prefix=p%2F&encoding-type=url&max-keys=5000&start-after=a&fetch-owner=false HTTP/1.1",
        );
        assert_eq!(
            classify(&l, false),
            Ok(Operation::ListObjectsV2(ListSpec {
                prefix: "p/",
                continuation: None,
                start_after: Some("a"),
                max_keys: 1000,
                url_encode: true,
                delimiter: None,
            }))
        );
    }

    #[test]
    fn a_steering_header_or_query_parameter_given_twice_is_refused() {
        for text in [
            "PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\nx-amz-checksum-sha256: a\r\nx-amz-checksum-sha256: b",
            "GET /b/k HTTP/1.1\r\nrange: bytes=0-1\r\nrange: bytes=2-3",
            "GET /b/k HTTP/1.1\r\nif-match: \"a\"\r\nif-match: \"b\"",
            "GET /b?list-type=2&prefix=a&prefix=b HTTP/1.1",
        ] {
            let has_key = !text.starts_with("GET /b?");
            assert_eq!(code(text, has_key), Some(Code::InvalidRequest), "{text}");
        }
        // Repeated headers that do not steer the operation are left alone.
        let h = head("GET /b/k HTTP/1.1\r\naccept: a\r\naccept: b");
        assert!(classify(&h, true).is_ok());
    }

    #[test]
    fn boto3_and_curl_defaults_are_accepted() {
        // botocore 1.44 put_object / upload_file over HTTPS (flexible checksums on).
        let put = head(
            "PUT /b/k HTTP/1.1\r\nHost: h\r\nAccept-Encoding: identity\r\nUser-Agent: Boto3/1.44.8\r\n\
             Expect: 100-continue\r\nTransfer-Encoding: chunked\r\nContent-Encoding: aws-chunked\r\n\
             X-Amz-Trailer: x-amz-checksum-crc32\r\nX-Amz-Decoded-Content-Length: 11\r\n\
             x-amz-sdk-checksum-algorithm: CRC32\r\nX-Amz-Date: 20261129T213116Z\r\n\
             X-Amz-Content-SHA256: STREAMING-UNSIGNED-PAYLOAD-TRAILER\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=A/20261129/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\
             amz-sdk-invocation-id: 64ab543d\r\namz-sdk-request: attempt=1; max=1",
        );
        let Ok(Operation::PutObject(spec)) = classify(&put, true) else {
            panic!("{:?}", classify(&put, true));
        };
        assert!(spec.aws_chunked);
        assert_eq!(spec.decoded_length, Some(11));
        assert_eq!(spec.trailer, Some(Algorithm::Crc32));
        assert_eq!(spec.wants(), (false, true, false));
        let get = head(
            "GET /b/k HTTP/1.1\r\nHost: h\r\nx-amz-checksum-mode: ENABLED\r\n\
             X-Amz-Content-SHA256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        assert!(classify(&get, true).is_ok());
        let curl = head("PUT /b/k HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\nAccept: */*\r\nContent-Length: 5\r\nExpect: 100-continue");
        assert!(classify(&curl, true).is_ok());
    }

    #[test]
    fn unimplemented_subresources_are_501() {
        for q in [
            "tagging",
            "acl",
            "versionId=3",
            "response-content-type=x",
            "retention",
            "legal-hold",
            "attributes",
        ] {
            for m in ["PUT", "GET", "HEAD", "DELETE"] {
                let t = format!("{m} /b/k?{q} HTTP/1.1\r\ncontent-length: 0");
                assert_eq!(code(&t, true), Some(Code::NotImplemented), "{t}");
            }
        }
        for t in [
            "GET /b/k?partNumber=1 HTTP/1.1",
            "HEAD /b/k?partNumber=1 HTTP/1.1",
            "GET /b/k?uploads HTTP/1.1",
            "PUT /b/k?uploads HTTP/1.1\r\ncontent-length: 0",
            "DELETE /b/k?uploads HTTP/1.1",
            "DELETE /b/k?uploadId=1&tagging HTTP/1.1",
            "POST /b/k?select HTTP/1.1\r\ncontent-length: 0",
            "POST /b/k?restore HTTP/1.1\r\ncontent-length: 0",
            "PUT /b/k?partNumber=1&uploadId=u&tagging HTTP/1.1\r\ncontent-length: 0\r\nx-amz-copy-source: /b/x",
        ] {
            assert_eq!(code(t, true), Some(Code::NotImplemented), "{t}");
        }
        for q in [
            "versioning",
            "lifecycle",
            "policy",
            "cors",
            "list-type=2&fetch-owner=true",
            "uploads&delimiter=/",
            "location&x=1",
        ] {
            let t = format!("GET /b?{q} HTTP/1.1");
            assert_eq!(code(&t, false), Some(Code::NotImplemented), "{t}");
        }
        assert_eq!(
            code("GET /b?list-type=1 HTTP/1.1", false),
            Some(Code::InvalidArgument)
        );
        for t in [
            "POST /b HTTP/1.1\r\ncontent-length: 0",
            "PUT /b?acl HTTP/1.1\r\ncontent-length: 0",
            "PUT /b?versioning HTTP/1.1\r\ncontent-length: 0",
            "DELETE /b?policy HTTP/1.1",
            "HEAD /b?acl HTTP/1.1",
        ] {
            assert_eq!(code(t, false), Some(Code::NotImplemented), "{t}");
        }
        assert_eq!(
            code("PATCH /b/k HTTP/1.1", true),
            Some(Code::MethodNotAllowed)
        );
        assert_eq!(
            code("OPTIONS /b/k HTTP/1.1", true),
            Some(Code::MethodNotAllowed)
        );
    }

    /// Every S3 API operation that the README's table marks "501": its request as the
    /// SDKs send it (method, sub-resource, the headers that carry its arguments) on a
    /// bucket or an object. Keep in step with that table.
    const REFUSED_OPERATIONS: &[(&str, &str, bool)] = &[
        // Bucket configuration sub-resources: Get/Put/Delete (and List where S3 has one).
        ("GetBucketAccelerateConfiguration", "GET /b?accelerate", false),
        ("PutBucketAccelerateConfiguration", "PUT /b?accelerate", false),
        ("GetBucketAcl", "GET /b?acl", false),
        ("PutBucketAcl", "PUT /b?acl\r\nx-amz-acl: private", false),
        ("GetBucketAnalyticsConfiguration", "GET /b?analytics&id=a", false),
        ("PutBucketAnalyticsConfiguration", "PUT /b?analytics&id=a", false),
        ("DeleteBucketAnalyticsConfiguration", "DELETE /b?analytics&id=a", false),
        ("ListBucketAnalyticsConfigurations", "GET /b?analytics", false),
        ("GetBucketCors", "GET /b?cors", false),
        ("PutBucketCors", "PUT /b?cors", false),
        ("DeleteBucketCors", "DELETE /b?cors", false),
        ("GetBucketEncryption", "GET /b?encryption", false),
        ("PutBucketEncryption", "PUT /b?encryption", false),
        ("DeleteBucketEncryption", "DELETE /b?encryption", false),
        ("GetBucketIntelligentTieringConfiguration", "GET /b?intelligent-tiering&id=a", false),
        ("PutBucketIntelligentTieringConfiguration", "PUT /b?intelligent-tiering&id=a", false),
        ("DeleteBucketIntelligentTieringConfiguration", "DELETE /b?intelligent-tiering&id=a", false),
        ("ListBucketIntelligentTieringConfigurations", "GET /b?intelligent-tiering", false),
        ("GetBucketInventoryConfiguration", "GET /b?inventory&id=a", false),
        ("PutBucketInventoryConfiguration", "PUT /b?inventory&id=a", false),
        ("DeleteBucketInventoryConfiguration", "DELETE /b?inventory&id=a", false),
        ("ListBucketInventoryConfigurations", "GET /b?inventory", false),
        ("GetBucketLifecycleConfiguration", "GET /b?lifecycle", false),
        ("PutBucketLifecycleConfiguration", "PUT /b?lifecycle", false),
        ("DeleteBucketLifecycle", "DELETE /b?lifecycle", false),
        ("GetBucketLogging", "GET /b?logging", false),
        ("PutBucketLogging", "PUT /b?logging", false),
        ("GetBucketMetricsConfiguration", "GET /b?metrics&id=a", false),
        ("PutBucketMetricsConfiguration", "PUT /b?metrics&id=a", false),
        ("DeleteBucketMetricsConfiguration", "DELETE /b?metrics&id=a", false),
        ("ListBucketMetricsConfigurations", "GET /b?metrics", false),
        ("GetBucketNotificationConfiguration", "GET /b?notification", false),
        ("PutBucketNotificationConfiguration", "PUT /b?notification", false),
        ("GetBucketOwnershipControls", "GET /b?ownershipControls", false),
        ("PutBucketOwnershipControls", "PUT /b?ownershipControls", false),
        ("DeleteBucketOwnershipControls", "DELETE /b?ownershipControls", false),
        ("GetBucketPolicy", "GET /b?policy", false),
        ("PutBucketPolicy", "PUT /b?policy", false),
        ("DeleteBucketPolicy", "DELETE /b?policy", false),
        ("GetBucketPolicyStatus", "GET /b?policyStatus", false),
        ("GetBucketReplication", "GET /b?replication", false),
        ("PutBucketReplication", "PUT /b?replication", false),
        ("DeleteBucketReplication", "DELETE /b?replication", false),
        ("GetBucketRequestPayment", "GET /b?requestPayment", false),
        ("PutBucketRequestPayment", "PUT /b?requestPayment", false),
        ("GetBucketTagging", "GET /b?tagging", false),
        ("PutBucketTagging", "PUT /b?tagging", false),
        ("DeleteBucketTagging", "DELETE /b?tagging", false),
        ("GetBucketVersioning", "GET /b?versioning", false),
        ("PutBucketVersioning", "PUT /b?versioning", false),
        ("GetBucketWebsite", "GET /b?website", false),
        ("PutBucketWebsite", "PUT /b?website", false),
        ("DeleteBucketWebsite", "DELETE /b?website", false),
        ("GetPublicAccessBlock", "GET /b?publicAccessBlock", false),
        ("PutPublicAccessBlock", "PUT /b?publicAccessBlock", false),
        ("DeletePublicAccessBlock", "DELETE /b?publicAccessBlock", false),
        ("GetObjectLockConfiguration", "GET /b?object-lock", false),
        ("PutObjectLockConfiguration", "PUT /b?object-lock", false),
        ("CreateBucketMetadataTableConfiguration", "POST /b?metadataTable", false),
        ("GetBucketMetadataTableConfiguration", "GET /b?metadataTable", false),
        ("DeleteBucketMetadataTableConfiguration", "DELETE /b?metadataTable", false),
        ("CreateBucketMetadataConfiguration", "POST /b?metadataConfiguration", false),
        ("GetBucketMetadataConfiguration", "GET /b?metadataConfiguration", false),
        ("DeleteBucketMetadataConfiguration", "DELETE /b?metadataConfiguration", false),
        // Other bucket-level operations.
        ("ListObjectVersions", "GET /b?versions", false),
        ("CreateSession", "GET /b?session", false),
        ("PostObject", "POST /b\r\ncontent-type: multipart/form-data; boundary=x", false),
        ("HeadBucket with a sub-resource", "HEAD /b?acl", false),
        // Object sub-resources and operations.
        ("GetObjectAcl", "GET /b/k?acl", true),
        ("PutObjectAcl", "PUT /b/k?acl\r\nx-amz-acl: public-read", true),
        ("GetObjectTagging", "GET /b/k?tagging", true),
        ("PutObjectTagging", "PUT /b/k?tagging", true),
        ("DeleteObjectTagging", "DELETE /b/k?tagging", true),
        ("GetObjectLegalHold", "GET /b/k?legal-hold", true),
        ("PutObjectLegalHold", "PUT /b/k?legal-hold", true),
        ("GetObjectRetention", "GET /b/k?retention", true),
        ("PutObjectRetention", "PUT /b/k?retention", true),
        ("GetObjectTorrent", "GET /b/k?torrent", true),
        ("GetObjectAttributes", "GET /b/k?attributes\r\nx-amz-object-attributes: ETag", true),
        ("RestoreObject", "POST /b/k?restore", true),
        ("SelectObjectContent", "POST /b/k?select&select-type=2", true),
        ("RenameObject", "PUT /b/k?renameObject\r\nx-amz-rename-source: /b/j", true),
        ("UploadPartCopy with a versionId", "PUT /b/k?partNumber=1&uploadId=u\r\nx-amz-copy-source: /b/j?versionId=v", true),
        ("UploadPartCopy with SSE-C of the source", "PUT /b/k?partNumber=1&uploadId=u\r\nx-amz-copy-source: /b/j\r\nx-amz-copy-source-server-side-encryption-customer-algorithm: AES256", true),
        ("GetObject partNumber", "GET /b/k?partNumber=1", true),
        ("GetObject versionId", "GET /b/k?versionId=v", true),
        ("DeleteObject versionId", "DELETE /b/k?versionId=v", true),
        ("GetObject response-* overrides", "GET /b/k?response-content-type=text/plain", true),
        ("PutObject with tagging", "PUT /b/k\r\nx-amz-tagging: a=b", true),
        ("PutObject with object lock", "PUT /b/k\r\nx-amz-object-lock-mode: GOVERNANCE", true),
        ("PutObject with SSE", "PUT /b/k\r\nx-amz-server-side-encryption: AES256", true),
        ("PutObject with SSE-C", "PUT /b/k\r\nx-amz-server-side-encryption-customer-algorithm: AES256", true),
        ("PutObject with a website redirect", "PUT /b/k\r\nx-amz-website-redirect-location: /x", true),
        ("PutObject with a public ACL", "PUT /b/k\r\nx-amz-acl: public-read", true),
        ("PutObject with a storage class", "PUT /b/k\r\nx-amz-storage-class: GLACIER", true),
        ("PutObject with request-payer", "PUT /b/k\r\nx-amz-request-payer: requester", true),
        ("PutObject with signed aws-chunked", "PUT /b/k\r\ncontent-encoding: aws-chunked\r\nx-amz-decoded-content-length: 1\r\nx-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD", true),
        ("CopyObject of a version", "PUT /b/k\r\nx-amz-copy-source: /b/j?versionId=v", true),
        ("GetObject with SSE-C", "GET /b/k\r\nx-amz-server-side-encryption-customer-algorithm: AES256", true),
    ];

    #[test]
    fn every_refused_s3_operation_is_501() {
        for (op, req, has_key) in REFUSED_OPERATIONS {
            let (line, headers) = req.split_once("\r\n").unwrap_or((req, ""));
            let mut text = format!("{line} HTTP/1.1\r\nhost: x\r\ncontent-length: 0");
            if !headers.is_empty() {
                text = format!("{text}\r\n{headers}");
            }
            assert_eq!(
                code(&text, *has_key),
                Some(Code::NotImplemented),
                "{op}: {text}"
            );
        }
    }

    #[test]
    fn upload_part_copy_is_classified_with_its_range_and_source_conditions() {
        let op = |t: &str| {
            let h: &'static RequestHead = Box::leak(Box::new(head(t)));
            classify(h, true)
        };
        let base = "PUT /b/k?partNumber=2&uploadId=u HTTP/1.1\r\ncontent-length: 0\r\nx-amz-copy-source: /src/a%20b";
        let Ok(Operation::UploadPartCopy {
            upload_id,
            part,
            copy,
            range,
        }) = op(&format!(
            "{base}\r\nx-amz-copy-source-range: bytes=5-10\r\nx-amz-copy-source-if-match: \"e\""
        ))
        else {
            panic!()
        };
        assert_eq!((upload_id, part, range), ("u", 2, Some((5, 10))));
        assert_eq!((copy.bucket.as_str(), copy.key.as_str()), ("src", "a b"));
        assert_eq!(copy.conditions.if_match, Some("\"e\""));
        assert!(copy.replace.is_none());
        let Ok(Operation::UploadPartCopy { range: None, .. }) = op(base) else {
            panic!("no range is the whole source")
        };
        // S3's copy range is only bytes=first-last, first <= last.
        for r in [
            "bytes=10-5",
            "bytes=-5",
            "bytes=5-",
            "5-10",
            "bytes=a-b",
            "bytes=1-2,4-5",
            "bytes=99999999999999999999-1",
        ] {
            let t = format!("{base}\r\nx-amz-copy-source-range: {r}");
            assert_eq!(code(&t, true), Some(Code::InvalidArgument), "{r}");
        }
        // A body, metadata (a part has none), or no partNumber are refused, not ignored.
        assert_eq!(
            code(
                &base.replace("content-length: 0", "content-length: 3"),
                true
            ),
            Some(Code::InvalidRequest)
        );
        assert_eq!(
            code(&format!("{base}\r\nx-amz-meta-a: b"), true),
            Some(Code::NotImplemented)
        );
        assert_eq!(
            code(&base.replace("partNumber=2&", ""), true),
            Some(Code::InvalidRequest)
        );
        assert_eq!(
            code(&base.replace("partNumber=2", "partNumber=0"), true),
            Some(Code::InvalidArgument)
        );
    }

    #[test]
    fn multipart_copy_delete_and_bucket_operations() {
        // Leaked so the operation may borrow from its head for the whole test.
        let op = |t: &str, key: bool| {
            let h: &'static RequestHead = Box::leak(Box::new(head(t)));
            classify(h, key)
        };
        assert_eq!(
            op("POST /b/k?uploads HTTP/1.1\r\ncontent-length: 0\r\nx-amz-checksum-algorithm: CRC32", true),
            Ok(Operation::CreateMultipartUpload(CreateSpec {
                checksum: Some(Algorithm::Crc32),
                meta: Metadata::default(),
            }))
        );
        assert_eq!(
            code("POST /b/k?uploads HTTP/1.1\r\ncontent-length: 0\r\nx-amz-checksum-algorithm: CRC32C", true),
            Some(Code::NotImplemented)
        );
        assert_eq!(
            code("POST /b/k?uploads HTTP/1.1\r\ncontent-length: 0\r\nx-amz-checksum-type: FULL_OBJECT", true),
            Some(Code::NotImplemented)
        );
        let Ok(Operation::UploadPart { upload_id, part, spec }) = op(
            "PUT /b/k?partNumber=7&uploadId=abc HTTP/1.1\r\ncontent-length: 3\r\ncontent-md5: kAFQmDzST7DWlj99KOF/cg==",
            true,
        ) else {
            panic!()
        };
        assert_eq!((upload_id, part, spec.md5.is_some()), ("abc", 7, true));
        for n in ["0", "10001", "x", "-1"] {
            let t = format!("PUT /b/k?partNumber={n}&uploadId=u HTTP/1.1\r\ncontent-length: 0");
            assert_eq!(code(&t, true), Some(Code::InvalidArgument), "{t}");
        }
        assert_eq!(
            code("PUT /b/k?uploadId=u HTTP/1.1\r\ncontent-length: 0", true),
            Some(Code::InvalidRequest)
        );
        assert!(matches!(
            op("POST /b/k?uploadId=u HTTP/1.1\r\ncontent-length: 9", true),
            Ok(Operation::CompleteMultipartUpload { upload_id: "u", .. })
        ));
        assert_eq!(
            op("DELETE /b/k?uploadId=u HTTP/1.1", true),
            Ok(Operation::AbortMultipartUpload { upload_id: "u" })
        );
        assert_eq!(
            op(
                "GET /b/k?uploadId=u&max-parts=5000&part-number-marker=3 HTTP/1.1",
                true
            ),
            Ok(Operation::ListParts {
                upload_id: "u",
                max_parts: 1000,
                marker: 3
            })
        );
        assert!(matches!(
            op("GET /b?uploads&prefix=a&max-uploads=2 HTTP/1.1", false),
            Ok(Operation::ListMultipartUploads(UploadsSpec {
                prefix: "a",
                max_uploads: 2,
                ..
            }))
        ));
        // DeleteObjects needs a checksum of its body.
        assert_eq!(
            code("POST /b?delete HTTP/1.1\r\ncontent-length: 9", false),
            Some(Code::InvalidRequest)
        );
        assert!(matches!(
            op("POST /b?delete HTTP/1.1\r\ncontent-length: 9\r\nx-amz-checksum-crc32: AAAAAA==\r\nx-amz-sdk-checksum-algorithm: CRC32", false),
            Ok(Operation::DeleteObjects(_))
        ));
        assert_eq!(op("HEAD /b HTTP/1.1", false), Ok(Operation::HeadBucket));
        assert_eq!(
            op("GET /b?location HTTP/1.1", false),
            Ok(Operation::GetBucketLocation)
        );
        let Ok(Operation::ListObjects(l)) = op(
            "GET /b?prefix=p&marker=m&delimiter=/&max-keys=2 HTTP/1.1",
            false,
        ) else {
            panic!()
        };
        assert_eq!(
            (l.prefix, l.start_after, l.delimiter, l.max_keys),
            ("p", Some("m"), Some("/"), 2)
        );
        let Ok(Operation::ListObjectsV2(l)) =
            op("GET /b?list-type=2&delimiter=%2F HTTP/1.1", false)
        else {
            panic!()
        };
        assert_eq!(l.delimiter, Some("/"));
        assert_eq!(
            code("GET /b?marker=m&continuation-token=t HTTP/1.1", false),
            Some(Code::NotImplemented)
        );

        // CopyObject: the source decoded, versions and REPLACE refused, no body.
        let Ok(Operation::CopyObject(c)) = op(
            "PUT /b/k HTTP/1.1\r\ncontent-length: 0\r\nx-amz-copy-source: /src/a%20b%2Bc\r\nx-amz-copy-source-if-match: \"e\"\r\nx-amz-metadata-directive: COPY",
            true,
        ) else {
            panic!()
        };
        assert_eq!((c.bucket.as_str(), c.key.as_str()), ("src", "a b+c"));
        assert_eq!(c.conditions.if_match, Some("\"e\""));
        assert_eq!(
            parse_copy_source("src/k/with/slash").unwrap(),
            ("src".to_owned(), "k/with/slash".to_owned())
        );
        for (h, want) in [
            (
                "x-amz-copy-source: /src/k?versionId=3",
                Code::NotImplemented,
            ),
            ("x-amz-copy-source: /src", Code::InvalidArgument),
            ("x-amz-copy-source: /src/%zz", Code::InvalidArgument),
            (
                "x-amz-copy-source: /s/k\r\nx-amz-meta-a: 1",
                Code::InvalidRequest,
            ),
            (
                "x-amz-copy-source: /s/k\r\ncontent-type: text/plain",
                Code::InvalidRequest,
            ),
            (
                "x-amz-copy-source: /s/k\r\nx-amz-metadata-directive: MERGE",
                Code::InvalidArgument,
            ),
            (
                "x-amz-copy-source: /s/k\r\nif-none-match: *",
                Code::NotImplemented,
            ),
            (
                "x-amz-copy-source: /s/k\r\nx-amz-tagging-directive: COPY",
                Code::NotImplemented,
            ),
        ] {
            let t = format!("PUT /b/k HTTP/1.1\r\ncontent-length: 0\r\n{h}");
            assert_eq!(code(&t, true), Some(want), "{h}");
        }
        assert_eq!(
            code(
                "PUT /b/k HTTP/1.1\r\ncontent-length: 4\r\nx-amz-copy-source: /s/k",
                true
            ),
            Some(Code::InvalidRequest)
        );
    }

    #[test]
    fn xml_bodies() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <!-- a comment -->
  <Part><ETag>&quot;AbC&quot;</ETag><PartNumber>1</PartNumber><ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part>
  <Part><PartNumber>3</PartNumber><ETag>"def"</ETag></Part>
</CompleteMultipartUpload>"#;
        let parts = parse_complete(body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].number, parts[0].etag.as_str()), (1, "abc"));
        assert_eq!(
            parts[0].checksums,
            vec![(Algorithm::Crc32, "AAAAAA==".to_owned())]
        );
        assert_eq!((parts[1].number, parts[1].etag.as_str()), (3, "def"));
        let c = |b: &str| parse_complete(b.as_bytes()).unwrap_err().code;
        let part = |n: u32| format!("<Part><PartNumber>{n}</PartNumber><ETag>x</ETag></Part>");
        assert_eq!(
            c(&format!(
                "<CompleteMultipartUpload>{}{}</CompleteMultipartUpload>",
                part(2),
                part(1)
            )),
            Code::InvalidPartOrder
        );
        assert_eq!(
            c(&format!(
                "<CompleteMultipartUpload>{}{}</CompleteMultipartUpload>",
                part(2),
                part(2)
            )),
            Code::InvalidPartOrder
        );
        assert_eq!(
            c("<CompleteMultipartUpload></CompleteMultipartUpload>"),
            Code::MalformedXML
        );
        assert_eq!(
            c(&format!(
                "<CompleteMultipartUpload>{}</CompleteMultipartUpload>",
                part(10001)
            )),
            Code::InvalidArgument
        );
        assert_eq!(c("<CompleteMultipartUpload><Part>"), Code::MalformedXML);
        assert_eq!(
            c("<!DOCTYPE x [<!ENTITY a \"b\">]><CompleteMultipartUpload/>"),
            Code::MalformedXML
        );
        assert_eq!(c("<Other/>"), Code::MalformedXML);
        assert_eq!(c("<a></b>"), Code::MalformedXML);
        assert_eq!(c("<a/><b/>"), Code::MalformedXML);
        assert_eq!(c("<a>&bogus;</a>"), Code::MalformedXML);
        assert_eq!(c(&"<a>".repeat(20)), Code::MalformedXML);
        assert_eq!(c("\u{ff}"), Code::MalformedXML);

        let d = parse_delete(
            b"<Delete><Quiet>true</Quiet><Object><Key>a&amp;b&#x1;</Key></Object><Object><Key><![CDATA[<c>]]></Key><VersionId>v</VersionId></Object></Delete>",
        )
        .unwrap();
        assert!(d.quiet);
        assert_eq!(
            d.objects,
            vec![
                ("a&b\u{1}".to_owned(), None),
                ("<c>".to_owned(), Some("v".to_owned()))
            ]
        );
        let many = format!(
            "<Delete>{}</Delete>",
            "<Object><Key>k</Key></Object>".repeat(1001)
        );
        assert_eq!(
            parse_delete(many.as_bytes()).unwrap_err().code,
            Code::MalformedXML
        );
        assert_eq!(
            parse_delete(b"<Delete/>").unwrap_err().code,
            Code::MalformedXML
        );
        assert_eq!(
            parse_delete(b"<Delete><Object><Key>k</Key><ETag>e</ETag></Object></Delete>")
                .unwrap_err()
                .code,
            Code::NotImplemented
        );

        let x = delete_xml(
            &["a<".to_owned()],
            &[("b".to_owned(), Error::new(Code::AccessDenied))],
            false,
        );
        assert!(x.contains("<Deleted><Key>a&lt;</Key></Deleted>"), "{x}");
        assert!(
            x.contains("<Error><Key>b</Key><Code>AccessDenied</Code>"),
            "{x}"
        );
        assert!(!delete_xml(&["a".to_owned()], &[], true).contains("Deleted>"));
        assert!(complete_xml("b", "k k", "\"e-2\"").contains("<Location>/b/k%20k</Location>"));
        assert!(initiate_xml("b", "k", "id").contains("<UploadId>id</UploadId>"));
    }

    #[test]
    fn unimplemented_headers_are_501() {
        for h in [
            "x-amz-copy-source-range: bytes=0-1",
            "x-amz-server-side-encryption: AES256",
            "x-amz-server-side-encryption-customer-algorithm: AES256",
            "x-amz-tagging: a=b",
            "x-amz-object-lock-mode: GOVERNANCE",
            "x-amz-website-redirect-location: /x",
            "x-amz-grant-read: id=1",
            "x-amz-acl: public-read",
            "x-amz-storage-class: GLACIER",
            "if-none-match: \"x\"",
            "if-none-match: *\r\nif-match: \"x\"",
            "if-modified-since: Sun, 06 Nov 1994 08:49:37 GMT",
            "if-unmodified-since: Sun, 06 Nov 1994 08:49:37 GMT",
            "content-encoding: gzip",
            "content-disposition: attachment",
            "cache-control: no-cache",
            "expires: 0",
            "x-amz-checksum-crc32c: AAAAAA==",
            "x-amz-checksum-crc64nvme: AAAAAAAAAAA=",
            "x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "x-amz-expected-bucket-owner: 1",
            "x-amz-request-payer: requester",
            "x-custom: 1",
        ] {
            let t = format!("PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\n{h}");
            assert_eq!(code(&t, true), Some(Code::NotImplemented), "{h}");
        }
        for h in [
            "x-amz-server-side-encryption-customer-key: AAAA",
            "x-amz-meta-a: 1",
            "content-type: text/plain",
        ] {
            assert_eq!(
                code(&format!("GET /b/k HTTP/1.1\r\n{h}"), true),
                Some(Code::NotImplemented),
                "{h}"
            );
        }
        assert_eq!(
            code("DELETE /b/k HTTP/1.1\r\nif-match: \"x\"", true),
            Some(Code::NotImplemented)
        );
        assert_eq!(
            code(
                "GET /b?list-type=2 HTTP/1.1\r\nx-amz-optional-object-attributes: RestoreStatus",
                false
            ),
            Some(Code::NotImplemented)
        );
    }

    #[test]
    fn malformed_values_are_400() {
        for (h, want) in [
            ("content-md5: nope", Code::InvalidDigest),
            ("x-amz-checksum-sha256: AAAA", Code::InvalidDigest),
            ("x-amz-checksum-crc32: !!", Code::InvalidDigest),
            ("x-amz-trailer: x-amz-checksum-crc32", Code::InvalidRequest),
            ("x-amz-decoded-content-length: 1", Code::InvalidRequest),
            ("x-amz-sdk-checksum-algorithm: CRC32", Code::InvalidRequest),
            ("x-amz-sdk-checksum-algorithm: CRC32C", Code::NotImplemented),
        ] {
            let t = format!("PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\n{h}");
            assert_eq!(code(&t, true), Some(want), "{h}");
        }
        assert_eq!(
            code("GET /b?list-type=2&max-keys=ten HTTP/1.1", false),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            code("GET /b?list-type=2&encoding-type=base64 HTTP/1.1", false),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            code("GET /b/k HTTP/1.1\r\nx-amz-content-sha256: 0000000000000000000000000000000000000000000000000000000000000000", true),
            Some(Code::XAmzContentSHA256Mismatch)
        );
        assert_eq!(
            code(
                "PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\ncontent-encoding: aws-chunked",
                true
            ),
            Some(Code::MissingContentLength)
        );
    }

    #[test]
    fn put_checksums_are_verified() {
        use base64::engine::general_purpose::STANDARD;
        let body = b"hello world";
        let sha256: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body)
            .as_ref()
            .try_into()
            .unwrap();
        let crc = crc32fast::hash(body).to_be_bytes();
        let d = BodyDigests {
            sha256: &sha256,
            md5: None,
            crc32: Some(&crc),
            sha1: None,
        };
        let put = |extra: &str| {
            let t = format!("PUT /b/k HTTP/1.1\r\ncontent-length: 11\r\n{extra}");
            match classify(&head(&t), true) {
                Ok(Operation::PutObject(spec)) => spec,
                other => panic!("{other:?}"),
            }
        };
        let spec = put(&format!("x-amz-checksum-crc32: {}", STANDARD.encode(crc)));
        assert_eq!(spec.verify(11, &d, b""), Ok(()));
        let spec = put(&format!(
            "x-amz-checksum-crc32: {}",
            STANDARD.encode([0u8; 4])
        ));
        assert_eq!(spec.verify(11, &d, b"").unwrap_err().code, Code::BadDigest);
        let hex: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
        let spec = put(&format!("x-amz-content-sha256: {hex}"));
        assert_eq!(spec.verify(11, &d, b""), Ok(()));
        let other = [7u8; 32];
        let d2 = BodyDigests {
            sha256: &other,
            ..d
        };
        assert_eq!(
            spec.verify(11, &d2, b"").unwrap_err().code,
            Code::XAmzContentSHA256Mismatch
        );

        // aws-chunked with a CRC32 trailer: right, wrong, missing, and a short body.
        let spec = put(
            "content-encoding: aws-chunked\r\nx-amz-decoded-content-length: 11\r\nx-amz-trailer: x-amz-checksum-crc32\r\nx-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        );
        let good = format!("x-amz-checksum-crc32:{}\r\n\r\n", STANDARD.encode(crc));
        assert_eq!(spec.verify(11, &d, good.as_bytes()), Ok(()));
        let bad = format!("x-amz-checksum-crc32:{}\r\n\r\n", STANDARD.encode([1u8; 4]));
        assert_eq!(
            spec.verify(11, &d, bad.as_bytes()).unwrap_err().code,
            Code::BadDigest
        );
        assert_eq!(
            spec.verify(11, &d, b"\r\n").unwrap_err().code,
            Code::InvalidRequest
        );
        assert_eq!(
            spec.verify(10, &d, good.as_bytes()).unwrap_err().code,
            Code::IncompleteBody
        );
    }

    #[test]
    fn conditions() {
        let e = "\"abc\"";
        let c = |m: Option<&'static str>, n: Option<&'static str>| {
            Conditions {
                if_match: m,
                if_none_match: n,
                ..Conditions::default()
            }
            .evaluate(e, 0)
        };
        assert_eq!(c(None, None), Precondition::Proceed);
        assert_eq!(c(Some("\"abc\""), None), Precondition::Proceed);
        assert_eq!(c(Some("\"x\", \"abc\""), None), Precondition::Proceed);
        assert_eq!(c(Some("*"), None), Precondition::Proceed);
        assert_eq!(c(Some("\"x\""), None), Precondition::Failed);
        assert_eq!(
            c(Some("W/\"abc\""), None),
            Precondition::Failed,
            "If-Match is strong"
        );
        assert_eq!(c(None, Some("W/\"abc\"")), Precondition::NotModified);
        assert_eq!(c(None, Some("*")), Precondition::NotModified);
        assert_eq!(c(None, Some("\"x\"")), Precondition::Proceed);
        assert_eq!(c(Some("\"x\""), Some("\"abc\"")), Precondition::Failed);
    }

    #[test]
    fn request_ids() {
        let p = RequestId::prefix(0xBEEF, 3);
        let a = RequestId::new(p, 0);
        let b = RequestId::new(p, 1);
        assert_eq!(a.as_str(), "BEEF003000000000");
        assert_eq!(b.as_str(), "BEEF003000000001");
        assert_ne!(RequestId::new(RequestId::prefix(0xBEEF, 4), 1), b);
        assert_eq!(a.as_str().len(), 16);
    }

    #[test]
    fn error_documents() {
        let id = RequestId::new(RequestId::prefix(1, 2), 3);
        let e = Error::new(Code::AccessDenied).detail("authz rule 0 (spiffe://x/*) lacks write");
        let mut out = Vec::new();
        error_xml(&mut out, &e, "/b/<k>", &id);
        let xml = String::from_utf8(out).unwrap();
        assert_eq!(
            xml,
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message><Resource>/b/&lt;k&gt;</Resource><RequestId>{id}</RequestId></Error>\n")
        );
        assert!(!xml.contains("authz"));
        let codes = [
            (Code::NoSuchKey, 404),
            (Code::NoSuchBucket, 404),
            (Code::EntityTooLarge, 413),
            (Code::RequestTimeout, 408),
            (Code::MissingContentLength, 411),
            (Code::RequestHeaderSectionTooLarge, 431),
            (Code::MethodNotAllowed, 405),
            (Code::InvalidRange, 416),
            (Code::NotImplemented, 501),
            (Code::SlowDown, 503),
            (Code::InternalError, 500),
            (Code::InsufficientStorage, 507),
        ];
        for (c, st) in codes {
            assert_eq!(c.status(), st, "{c:?}");
            assert_eq!(format!("{c:?}"), c.as_str());
        }
    }

    #[test]
    fn url_encoding_for_listings() {
        let mut s = String::new();
        url_encode_into(&mut s, "a b/c+d%\u{1}é");
        assert_eq!(s, "a%20b/c%2Bd%25%01%C3%A9");
    }

    #[test]
    fn metadata_and_write_conditions() {
        let op = |t: &str, key: bool| {
            let h: &'static RequestHead = Box::leak(Box::new(head(t)));
            classify(h, key)
        };
        let Ok(Operation::PutObject(spec)) = op(
            "PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\ncontent-type: text/csv; charset=utf-8\r\nx-amz-meta-mtime: 1700000000.5\r\nX-Amz-Meta-Md5chksum: abc\r\nif-none-match: *",
            true,
        ) else {
            panic!()
        };
        assert_eq!(
            spec.meta.content_type.as_deref(),
            Some("text/csv; charset=utf-8")
        );
        assert_eq!(
            spec.meta.user,
            vec![
                ("mtime".to_owned(), "1700000000.5".to_owned()),
                ("md5chksum".to_owned(), "abc".to_owned())
            ]
        );
        assert!(spec.cond.if_none_match_star && spec.cond.if_match.is_none());
        // 2 KiB of names and values is the limit, not one byte more.
        let at = format!("x-amz-meta-a: {}", "v".repeat(MAX_USER_METADATA - 1));
        assert!(op(
            &format!("PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\n{at}"),
            true
        )
        .is_ok());
        let over = format!("x-amz-meta-ab: {}", "v".repeat(MAX_USER_METADATA - 1));
        assert_eq!(
            code(
                &format!("PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\n{over}"),
                true
            ),
            Some(Code::MetadataTooLarge)
        );
        assert_eq!(
            code(
                "PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\nx-amz-meta-: v",
                true
            ),
            Some(Code::InvalidArgument)
        );
        // Under 2 KiB of names and values, but twice that once stored (every quote
        // escaped): more than the one attribute block holds.
        let quotes = format!("x-amz-meta-q: {}", "\"".repeat(2000));
        assert_eq!(
            code(
                &format!("PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\n{quotes}"),
                true
            ),
            Some(Code::MetadataTooLarge)
        );
        // Parts carry no metadata and no preconditions.
        for h in [
            "x-amz-meta-a: 1",
            "if-none-match: *",
            "content-type: text/plain",
        ] {
            let t =
                format!("PUT /b/k?partNumber=1&uploadId=u HTTP/1.1\r\ncontent-length: 1\r\n{h}");
            assert_eq!(code(&t, true), Some(Code::NotImplemented), "{h}");
        }
        // CreateMultipartUpload keeps them for the completed object.
        let Ok(Operation::CreateMultipartUpload(c)) = op(
            "POST /b/k?uploads HTTP/1.1\r\ncontent-length: 0\r\ncontent-type: image/png\r\nx-amz-meta-md5chksum: q",
            true,
        ) else {
            panic!()
        };
        assert_eq!(c.meta.content_type.as_deref(), Some("image/png"));
        assert_eq!(c.meta.user, vec![("md5chksum".to_owned(), "q".to_owned())]);
        // CompleteMultipartUpload takes the write preconditions.
        let Ok(Operation::CompleteMultipartUpload { checksums, .. }) = op(
            "POST /b/k?uploadId=u HTTP/1.1\r\ncontent-length: 9\r\nif-match: \"e-2\"",
            true,
        ) else {
            panic!()
        };
        assert_eq!(checksums.cond.if_match.as_deref(), Some("\"e-2\""));
        // CopyObject with REPLACE carries the request's metadata; COPY none.
        let Ok(Operation::CopyObject(c)) = op(
            "PUT /b/k HTTP/1.1\r\ncontent-length: 0\r\nx-amz-copy-source: /b/k\r\nx-amz-metadata-directive: REPLACE\r\nx-amz-meta-mtime: 2\r\ncontent-type: a/b\r\nx-amz-copy-source-if-unmodified-since: Sun, 06 Nov 1994 08:49:37 GMT",
            true,
        ) else {
            panic!()
        };
        let m = c.replace.expect("REPLACE");
        assert_eq!((m.content_type.as_deref(), m.user.len()), (Some("a/b"), 1));
        assert!(c.conditions.if_unmodified_since.is_some());
        let Ok(Operation::CopyObject(c)) = op(
            "PUT /b/k HTTP/1.1\r\ncontent-length: 0\r\nx-amz-copy-source: /b/j",
            true,
        ) else {
            panic!()
        };
        assert_eq!(c.replace, None);

        let w = |m: Option<&str>, star: bool| WriteConditions {
            if_none_match_star: star,
            if_match: m.map(str::to_owned),
        };
        assert!(w(None, true).holds(None));
        assert!(!w(None, true).holds(Some("\"e\"")));
        assert!(w(Some("\"e\""), false).holds(Some("\"e\"")));
        assert!(!w(Some("\"e\""), false).holds(Some("\"f\"")));
        assert!(
            !w(Some("\"e\""), false).holds(None),
            "If-Match on a missing key"
        );
        assert!(w(Some("*"), false).holds(Some("\"f\"")));
        assert!(w(None, false).holds(None) && w(None, false).is_empty());
    }

    #[test]
    fn http_dates_and_time_conditions() {
        const T: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
        for s in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(s), Some(T), "{s}");
        }
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for bad in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "1994-11-06T08:49:37Z",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        let before = "Sun, 06 Nov 1994 08:49:36 GMT";
        let at = "Sun, 06 Nov 1994 08:49:37 GMT";
        let c = |ims: Option<&'static str>, ius: Option<&'static str>| Conditions {
            if_modified_since: ims,
            if_unmodified_since: ius,
            ..Conditions::default()
        };
        let e = "\"abc\"";
        assert_eq!(c(Some(at), None).evaluate(e, T), Precondition::NotModified);
        assert_eq!(c(Some(before), None).evaluate(e, T), Precondition::Proceed);
        assert_eq!(c(None, Some(at)).evaluate(e, T), Precondition::Proceed);
        assert_eq!(c(None, Some(before)).evaluate(e, T), Precondition::Failed);
        // A date that does not parse is ignored.
        assert_eq!(
            c(Some("soon"), Some("later")).evaluate(e, T),
            Precondition::Proceed
        );
        // RFC 9110 order: If-Match decides instead of If-Unmodified-Since, and
        // If-None-Match instead of If-Modified-Since.
        let both = Conditions {
            if_match: Some(e),
            if_unmodified_since: Some(before),
            ..Conditions::default()
        };
        assert_eq!(both.evaluate(e, T), Precondition::Proceed);
        let both = Conditions {
            if_none_match: Some("\"other\""),
            if_modified_since: Some(at),
            ..Conditions::default()
        };
        assert_eq!(both.evaluate(e, T), Precondition::Proceed);
        // 412 wins over 304.
        let both = Conditions {
            if_unmodified_since: Some(before),
            if_modified_since: Some(at),
            ..Conditions::default()
        };
        assert_eq!(both.evaluate(e, T), Precondition::Failed);
        let get = head("GET /b/k HTTP/1.1\r\nif-modified-since: Sun, 06 Nov 1994 08:49:37 GMT\r\nif-unmodified-since: x");
        assert!(matches!(classify(&get, true), Ok(Operation::GetObject(_))));
    }

    #[test]
    fn bucket_and_service_operations() {
        assert_eq!(
            classify(&head("PUT /b HTTP/1.1\r\ncontent-length: 0"), false),
            Ok(Operation::CreateBucket(PutSpec::default()))
        );
        assert!(matches!(
            classify(
                &head("PUT /b HTTP/1.1\r\ncontent-length: 9\r\nx-amz-acl: private\r\ncontent-md5: kAFQmDzST7DWlj99KOF/cg=="),
                false
            ),
            Ok(Operation::CreateBucket(PutSpec { md5: Some(_), .. }))
        ));
        for h in [
            "x-amz-bucket-object-lock-enabled: true",
            "x-amz-object-ownership: BucketOwnerEnforced",
            "x-amz-grant-full-control: id=1",
            "x-amz-acl: public-read",
            "x-amz-meta-a: 1",
        ] {
            let t = format!("PUT /b HTTP/1.1\r\ncontent-length: 0\r\n{h}");
            assert_eq!(code(&t, false), Some(Code::NotImplemented), "{h}");
        }
        assert_eq!(
            classify(&head("DELETE /b HTTP/1.1"), false),
            Ok(Operation::DeleteBucket)
        );
        assert_eq!(
            code("DELETE /b HTTP/1.1\r\nif-match: *", false),
            Some(Code::NotImplemented)
        );
        assert_eq!(parse_create_bucket(b""), Ok(()));
        assert_eq!(parse_create_bucket(b" \n"), Ok(()));
        assert_eq!(
            parse_create_bucket(b"<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>us-east-1</LocationConstraint></CreateBucketConfiguration>"),
            Ok(())
        );
        assert_eq!(parse_create_bucket(b"<CreateBucketConfiguration/>"), Ok(()));
        let c = |b: &str| parse_create_bucket(b.as_bytes()).unwrap_err().code;
        assert_eq!(
            c("<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"),
            Code::InvalidLocationConstraint
        );
        assert_eq!(
            c("<CreateBucketConfiguration><Bucket><Type>Directory</Type></Bucket></CreateBucketConfiguration>"),
            Code::NotImplemented
        );
        assert_eq!(c("<Other/>"), Code::MalformedXML);
        assert_eq!(c("junk"), Code::MalformedXML);

        let svc = |t: &str| {
            let h: &'static RequestHead = Box::leak(Box::new(head(t)));
            classify_service(h).map_err(|e| e.code)
        };
        assert_eq!(svc("GET / HTTP/1.1"), Ok(Operation::ListBuckets));
        assert_eq!(
            svc("GET /?x-id=ListBuckets HTTP/1.1"),
            Ok(Operation::ListBuckets)
        );
        assert_eq!(
            svc("GET /?max-buckets=5 HTTP/1.1"),
            Err(Code::NotImplemented)
        );
        assert_eq!(
            svc("GET / HTTP/1.1\r\nx-amz-expected-bucket-owner: 1"),
            Err(Code::NotImplemented)
        );
        assert_eq!(
            svc("PUT / HTTP/1.1\r\ncontent-length: 0"),
            Err(Code::MethodNotAllowed)
        );
        assert_eq!(svc("DELETE / HTTP/1.1"), Err(Code::MethodNotAllowed));
        for (c, st) in [
            (Code::BucketNotEmpty, 409),
            (Code::BucketAlreadyOwnedByYou, 409),
            (Code::MetadataTooLarge, 400),
            (Code::InvalidLocationConstraint, 400),
        ] {
            assert_eq!(c.status(), st);
            assert_eq!(format!("{c:?}"), c.as_str());
        }
    }
}
