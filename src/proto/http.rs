//! HTTP/1.1 server-side request codec for the object API, sans-IO.
//!
//! Owns: turning the plaintext bytes the engine hands over into a validated
//! [`RequestHead`] (parsed by `httparse`, never by hand), deciding the body's framing
//! (Content-Length, chunked or none) and rejecting ambiguous framing that could be
//! used for request smuggling; decoding the body without copying ([`BodyDecoder`]
//! reports *which range* of the caller's buffer is body data); and serializing
//! response heads and small complete responses into a caller's `Vec`. Also the
//! `Range` header arithmetic for `GET` (a pure function of the header and the size).
//!
//! Must not touch: sockets, files, the runtime, threads or the clock. It knows nothing
//! about buckets, keys or authorization: the decoded path is handed to the backend,
//! which validates segments (`..`, empty segments, ...). Nothing here may panic on
//! peer-controlled input; `fuzz/fuzz_targets/http_request.rs` checks that.
//!
//! Limits the caller chooses: the head size (`max_head`, over → 431). Fixed limits:
//! 64 header fields (more → 431), chunk-size lines of 1 KiB and a trailer section of
//! 8 KiB (over → 400). The body size limit (413) is the caller's, using
//! [`BodyDecoder::remaining`] up front and [`BodyDecoder::delivered`] as chunks arrive.

use std::io::Write as _;
use std::ops::Range;

/// Most header fields accepted in one request head; the 65th is a 431, as a flood of
/// tiny fields is a head-size attack that the byte limit alone would let through.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (size, extensions, CRLF). Extensions are ignored, so a long
/// line is only ever a way to make the server buffer or scan without progress.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Largest trailer section (all trailer fields plus the final CRLF); trailers are
/// discarded, so this only bounds the work spent skipping them.
pub const MAX_TRAILERS: usize = 8 * 1024;

/// The request method, with the ones the object API serves broken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`: object or listing.
    Get,
    /// `HEAD`: object metadata.
    Head,
    /// `PUT`: store an object (needs a body length or chunked framing).
    Put,
    /// `DELETE`: remove an object.
    Delete,
    /// `POST`: not served by `store`, but framed like `PUT` (a body is expected).
    Post,
    /// Any other syntactically valid method; see [`RequestHead::method_str`].
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 section 9.1): `get` is not `GET`.
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "POST" => Method::Post,
            _ => Method::Other,
        }
    }
}

/// A parsed, validated request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, classified.
    pub method: Method,
    /// The method exactly as sent (meaningful for [`Method::Other`]).
    pub method_str: String,
    /// The percent-decoded path, e.g. `/datasets/a b/c`. `%2F` decodes to `/`; `+` is
    /// kept literally. Guaranteed valid UTF-8 without NUL.
    pub path: String,
    /// The request target as sent (path and query, still encoded).
    pub raw_target: String,
    /// Decoded query pairs in order; a key without `=` has the value `""`. In the
    /// query (unlike the path) `+` decodes to a space, as form encoding and S3 do.
    pub query: Vec<(String, String)>,
    /// The body length when framed by Content-Length.
    pub content_length: Option<u64>,
    /// True when the body is framed by `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// True for an HTTP/1.1 request with `Expect: 100-continue` (ignored for 1.0, as
    /// RFC 9110 section 10.1.1 requires).
    pub expect_continue: bool,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// All header fields in order: names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of the header `name_lowercase` (which must be given in lower
    /// case), if present.
    pub fn header(&self, name_lowercase: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name_lowercase)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request was rejected; each maps to one response status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head did not fit in the limit, or had too many fields (431).
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// Malformed or ambiguous request (400). The connection must be closed after the
    /// response: the framing of what follows cannot be trusted.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// `PUT`/`POST` with neither Content-Length nor chunked framing (411).
    #[error("length required")]
    LengthRequired,
    /// The request target does not decode (400; S3 calls it InvalidURI). The
    /// connection must be closed after the response, as for [`HttpError::BadRequest`].
    #[error("bad request target: {0}")]
    BadTarget(&'static str),
    /// A feature the codec does not implement, e.g. a transfer coding other than
    /// chunked (501).
    #[error("not implemented: {0}")]
    NotImplemented(String),
}

impl HttpError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge(_) => 431,
            HttpError::BadRequest(_) | HttpError::BadTarget(_) => 400,
            HttpError::LengthRequired => 411,
            HttpError::NotImplemented(_) => 501,
        }
    }
}

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::BadRequest(msg.into())
}

/// Parses a request head at the start of `buf`.
///
/// `Ok(None)` means the head is incomplete: read more and call again with the whole
/// buffer. On `Ok(Some((head, n)))` the head occupies `buf[..n]` and the body (or the
/// next pipelined request) starts at `buf[n]`. Only the first `max_head` bytes are
/// ever looked at: once `buf` holds `max_head` bytes without a complete head the
/// result is [`HttpError::HeadTooLarge`], as it is for more than [`MAX_HEADERS`]
/// fields. Never panics.
pub fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<(RequestHead, usize)>, HttpError> {
    // Parsing only the window means the limit holds no matter how much the caller has
    // buffered, and a head that ends exactly at the limit is still accepted.
    let window = buf.get(..max_head).unwrap_or(buf);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let n = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if window.len() >= max_head {
                Err(HttpError::HeadTooLarge(max_head))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge(max_head)),
        Err(e) => return Err(bad(format!("malformed request head: {e}"))),
    };

    // httparse fills these on Complete; treat their absence as malformed rather than
    // trusting that invariant with an unwrap.
    let (Some(method_str), Some(target), Some(version)) = (req.method, req.path, req.version)
    else {
        return Err(bad("incomplete request line"));
    };
    // httparse only recognizes HTTP/1.0 and HTTP/1.1 and reports anything else as a
    // version error above; this guards against a future minor version slipping by.
    let http11 = match version {
        1 => true,
        0 => false,
        _ => return Err(bad("unsupported HTTP version")),
    };
    let method = Method::from_token(method_str);

    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        // httparse allows obs-text (bytes >= 0x80) in values; we only carry UTF-8
        // strings upward, so anything else is rejected rather than lossily converted.
        let value = std::str::from_utf8(h.value)
            .map_err(|_| bad(format!("header {} is not valid UTF-8", h.name)))?;
        headers.push((
            h.name.to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_owned(),
        ));
    }

    let (path, query) = split_target(target)?;

    let mut content_length: Option<u64> = None;
    let mut transfer_codings: Vec<&str> = Vec::new();
    let mut saw_te = false;
    let mut hosts = 0usize;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expect_continue = false;
    for (name, value) in &headers {
        match name.as_str() {
            "content-length" => {
                let len = parse_content_length(value)?;
                // Identical repeats are harmless (RFC 9112 section 6.3 allows
                // accepting them); differing ones are the classic smuggling setup.
                if content_length.is_some_and(|prev| prev != len) {
                    return Err(bad("conflicting content-length headers"));
                }
                content_length = Some(len);
            }
            "transfer-encoding" => {
                saw_te = true;
                transfer_codings.extend(
                    value
                        .split(',')
                        .map(|c| c.trim_matches([' ', '\t']))
                        .filter(|c| !c.is_empty()),
                );
            }
            "host" => hosts += 1,
            "connection" => {
                for token in value.split(',').map(|t| t.trim_matches([' ', '\t'])) {
                    if token.eq_ignore_ascii_case("close") {
                        connection_close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        connection_keep_alive = true;
                    }
                }
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            _ => {}
        }
    }

    // Two Host fields give two answers to "which resource"; RFC 9112 section 3.2
    // requires a 400. (A missing Host is tolerated: behind mTLS the peer is known
    // and the object API does not route on Host.)
    if hosts > 1 {
        return Err(bad("more than one host header"));
    }

    let chunked = if saw_te {
        // Both framings at once is how a front end and a back end get to disagree
        // about where a request ends (RFC 9112 section 6.1); refuse outright.
        if content_length.is_some() {
            return Err(bad("both content-length and transfer-encoding"));
        }
        // A 1.0 recipient must treat TE as faulty framing (RFC 9112 section 6.1).
        if !http11 {
            return Err(bad("transfer-encoding in an HTTP/1.0 request"));
        }
        match transfer_codings.as_slice() {
            [only] if only.eq_ignore_ascii_case("chunked") => true,
            [] => return Err(bad("empty transfer-encoding")),
            // "chunked, chunked" is forbidden by RFC 9112 section 6.1, not merely
            // unsupported.
            many if many.iter().all(|c| c.eq_ignore_ascii_case("chunked")) => {
                return Err(bad("chunked applied more than once"));
            }
            _ => {
                return Err(HttpError::NotImplemented(format!(
                    "transfer-encoding {}",
                    transfer_codings.join(", ")
                )));
            }
        }
    } else {
        false
    };

    if matches!(method, Method::Put | Method::Post) && content_length.is_none() && !chunked {
        return Err(HttpError::LengthRequired);
    }

    let keep_alive = if http11 {
        !connection_close
    } else {
        connection_keep_alive && !connection_close
    };

    Ok(Some((
        RequestHead {
            method,
            method_str: method_str.to_owned(),
            path,
            raw_target: target.to_owned(),
            query,
            content_length,
            chunked,
            expect_continue: expect_continue && http11,
            keep_alive,
            headers,
        },
        n,
    )))
}

/// Content-Length must be 1*DIGIT: `str::parse` alone would also accept a leading `+`,
/// and lists like `5, 5` are refused rather than reconciled.
fn parse_content_length(value: &str) -> Result<u64, HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("content-length is not a decimal number"));
    }
    value
        .parse::<u64>()
        .map_err(|_| bad("content-length out of range"))
}

/// Splits an origin-form target into the decoded path and query pairs.
fn split_target(target: &str) -> Result<(String, Vec<(String, String)>), HttpError> {
    // Only origin-form is served: absolute-form is for proxies, asterisk-form for
    // OPTIONS *, authority-form for CONNECT, none of which the object API speaks.
    if !target.starts_with('/') {
        return Err(HttpError::BadTarget("request target is not origin-form"));
    }
    // Fragments are never sent by clients (RFC 9110 section 4.2.4); a '#' here would
    // be interpreted differently by different parsers, so it is refused.
    if target.contains('#') {
        return Err(HttpError::BadTarget("fragment in request target"));
    }
    let (raw_path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = percent_decode(raw_path, false)?;
    let mut query = Vec::new();
    if let Some(q) = raw_query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            query.push((percent_decode(k, true)?, percent_decode(v, true)?));
        }
    }
    Ok((path, query))
}

/// Percent-decode a path the way request targets are (`+` kept literally), for
/// headers that carry one (`x-amz-copy-source`). Strict: see [`percent_decode`].
pub fn percent_decode_path(s: &str) -> Result<String, HttpError> {
    percent_decode(s, false)
}

/// Strict percent-decoding: every `%` must be followed by two hex digits (a lenient
/// decoder that passes `%zz` through would let two layers see two different keys),
/// and the result must be UTF-8 without NUL, since keys become file names.
fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, HttpError> {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Ok(s.to_owned());
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(hex_value);
                let lo = bytes.next().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
                    _ => {
                        return Err(HttpError::BadTarget(
                            "invalid percent-escape in request target",
                        ))
                    }
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            other => out.push(other),
        }
    }
    if out.contains(&0) {
        return Err(HttpError::BadTarget("encoded NUL in request target"));
    }
    String::from_utf8(out)
        .map_err(|_| HttpError::BadTarget("request target does not decode to UTF-8"))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The result of one [`BodyDecoder::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input consumed (framing and data); the next call starts there.
    pub consumed: usize,
    /// Body data found, as a range of the input (within `..consumed`); may be empty.
    pub data: Range<usize>,
    /// The body is complete; input after `consumed` belongs to the next request.
    pub done: bool,
}

/// Where the chunked decoder is. Every state consumes at least one byte when input is
/// available, so a byte-at-a-time caller makes the same transitions as a bulk one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: `size` so far, `digits` seen, `line` bytes so far.
    Size {
        size: u64,
        digits: usize,
        line: usize,
        phase: SizePhase,
    },
    /// Inside chunk data with `remaining` bytes to go.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// In the trailer section, `total` bytes so far.
    Trailer { total: usize, phase: TrailerPhase },
    /// Last chunk and trailers consumed.
    Done,
    /// A previous step failed; the connection must be closed.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizePhase {
    /// Reading hex digits.
    Digits,
    /// Whitespace after the digits, which must lead to `;` (BWS before an extension).
    Bws,
    /// Inside extensions (ignored, but only printable bytes are allowed).
    Ext,
    /// Saw CR; LF must follow.
    Lf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrailerPhase {
    /// At the start of a trailer line (or of the final empty line).
    LineStart,
    /// In a field name.
    Name,
    /// After the colon.
    Value,
    /// Saw CR ending a field line.
    LineLf,
    /// Saw CR of the empty line ending the section.
    EndLf,
}

#[derive(Debug)]
enum Framing {
    /// No body, or the body is complete.
    Empty,
    /// Content-Length framing.
    Length { remaining: u64 },
    /// Chunked framing.
    Chunked(ChunkState),
}

/// Zero-copy request body decoder: reports which bytes of the caller's buffer are
/// body data, never copying them, so data can go straight from the decrypted TLS
/// buffer to the write path.
#[derive(Debug)]
pub struct BodyDecoder {
    framing: Framing,
    delivered: u64,
    /// The raw trailer section, kept only by [`BodyDecoder::aws_chunked`].
    trailer: Option<Vec<u8>>,
}

impl BodyDecoder {
    /// The decoder for `head`'s body: chunked, Content-Length, or empty (methods
    /// without either, e.g. `GET`, `HEAD` and `DELETE`, have no body).
    pub fn for_request(head: &RequestHead) -> BodyDecoder {
        let framing = if head.chunked {
            Framing::Chunked(ChunkState::Size {
                size: 0,
                digits: 0,
                line: 0,
                phase: SizePhase::Digits,
            })
        } else {
            match head.content_length {
                Some(n) if n > 0 => Framing::Length { remaining: n },
                _ => Framing::Empty,
            }
        };
        BodyDecoder {
            framing,
            delivered: 0,
            trailer: None,
        }
    }

    /// A decoder for S3's `aws-chunked` content coding, applied to the body's data
    /// after its HTTP framing: the same chunk syntax, with the checksum in a trailer
    /// field, so the trailer section is kept (at most [`MAX_TRAILERS`] bytes) for
    /// [`BodyDecoder::trailer`]. Chunk extensions (`chunk-signature=`) are skipped;
    /// the caller refuses signed payloads before it gets here.
    pub fn aws_chunked() -> BodyDecoder {
        BodyDecoder {
            framing: Framing::Chunked(ChunkState::Size {
                size: 0,
                digits: 0,
                line: 0,
                phase: SizePhase::Digits,
            }),
            delivered: 0,
            trailer: Some(Vec::new()),
        }
    }

    /// The raw trailer section (`name: value\r\n` lines and the final CRLF) of an
    /// [`BodyDecoder::aws_chunked`] body; empty for other decoders.
    pub fn trailer(&self) -> &[u8] {
        self.trailer.as_deref().unwrap_or_default()
    }

    /// True once the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        matches!(
            self.framing,
            Framing::Empty | Framing::Chunked(ChunkState::Done)
        )
    }

    /// Body bytes still expected, when known: the rest of a Content-Length body, 0
    /// once done, `None` while a chunked body is in progress.
    pub fn remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::Empty | Framing::Chunked(ChunkState::Done) => Some(0),
            Framing::Length { remaining } => Some(remaining),
            Framing::Chunked(_) => None,
        }
    }

    /// Total body bytes delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Decodes from the front of `input`, returning how much was consumed and the
    /// single contiguous range of body data found (possibly empty).
    ///
    /// Call repeatedly on `input[consumed..]` until `consumed == 0` or `done`; bytes
    /// not consumed must be presented again with more appended. Chunk-size lines
    /// (with optional extensions), CRLFs and trailers are consumed and discarded. A
    /// step stops before a second run of data so the range stays contiguous, and at
    /// the end of the body so pipelined bytes are left alone. After an error the
    /// decoder stays failed.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, HttpError> {
        match &mut self.framing {
            Framing::Empty => Ok(Step {
                consumed: 0,
                data: 0..0,
                done: true,
            }),
            Framing::Length { remaining } => {
                let take = clamp_len(*remaining, input.len());
                *remaining -= take as u64;
                let done = *remaining == 0;
                if done {
                    self.framing = Framing::Empty;
                }
                self.delivered = self.delivered.saturating_add(take as u64);
                Ok(Step {
                    consumed: take,
                    data: 0..take,
                    done,
                })
            }
            Framing::Chunked(state) => {
                let result = step_chunked(state, input, self.trailer.as_mut());
                match &result {
                    Ok(step) => {
                        self.delivered = self.delivered.saturating_add(step.data.len() as u64);
                    }
                    Err(_) => *state = ChunkState::Failed,
                }
                result
            }
        }
    }
}

/// `min(remaining, available)` without a lossy cast on 32-bit targets.
fn clamp_len(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

/// Bytes allowed in a trailer field value and in chunk extensions: HTAB, SP, VCHAR,
/// obs-text. Control bytes (including a bare LF) are refused: lenient line endings
/// are where chunked parsers disagree.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// RFC 9110 token characters (field names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn step_chunked(
    state: &mut ChunkState,
    input: &[u8],
    mut trailer: Option<&mut Vec<u8>>,
) -> Result<Step, HttpError> {
    let mut pos = 0usize;
    let mut data: Option<Range<usize>> = None;
    loop {
        if let ChunkState::Data { remaining } = state {
            // A second run of data would make the range non-contiguous: stop and let
            // the caller come back for it.
            if data.is_some() || pos >= input.len() {
                break;
            }
            let take = clamp_len(*remaining, input.len() - pos);
            data = Some(pos..pos + take);
            pos += take;
            *remaining -= take as u64;
            if *remaining == 0 {
                *state = ChunkState::DataCr;
            }
            continue;
        }
        match state {
            ChunkState::Done => break,
            ChunkState::Failed => return Err(bad("chunked body after an earlier error")),
            _ => {}
        }
        let Some(&b) = input.get(pos) else { break };
        pos += 1;
        let in_trailer = matches!(state, ChunkState::Trailer { .. });
        *state = next_framing_state(*state, b)?;
        if let (true, Some(t)) = (in_trailer, trailer.as_deref_mut()) {
            // Bounded by MAX_TRAILERS: next_framing_state fails past it.
            t.push(b);
        }
    }
    let data = data.unwrap_or(pos..pos);
    Ok(Step {
        consumed: pos,
        data,
        done: *state == ChunkState::Done,
    })
}

/// One byte of chunked framing (everything except chunk data).
fn next_framing_state(state: ChunkState, b: u8) -> Result<ChunkState, HttpError> {
    Ok(match state {
        ChunkState::Size {
            size,
            digits,
            line,
            phase,
        } => {
            let line = line + 1;
            if line > MAX_CHUNK_LINE {
                return Err(bad("chunk-size line too long"));
            }
            let size_state = |size, digits, phase| ChunkState::Size {
                size,
                digits,
                line,
                phase,
            };
            match phase {
                SizePhase::Digits => match (hex_value(b), b) {
                    (Some(v), _) => {
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(v)))
                            .ok_or_else(|| bad("chunk size overflows"))?;
                        size_state(size, digits + 1, SizePhase::Digits)
                    }
                    (None, _) if digits == 0 => return Err(bad("chunk size missing")),
                    (None, b' ' | b'\t') => size_state(size, digits, SizePhase::Bws),
                    (None, b';') => size_state(size, digits, SizePhase::Ext),
                    (None, b'\r') => size_state(size, digits, SizePhase::Lf),
                    (None, _) => return Err(bad("invalid chunk size")),
                },
                SizePhase::Bws => match b {
                    b' ' | b'\t' => size_state(size, digits, SizePhase::Bws),
                    b';' => size_state(size, digits, SizePhase::Ext),
                    _ => return Err(bad("invalid bytes after chunk size")),
                },
                SizePhase::Ext => match b {
                    b'\r' => size_state(size, digits, SizePhase::Lf),
                    b if is_field_byte(b) => size_state(size, digits, SizePhase::Ext),
                    _ => return Err(bad("invalid byte in chunk extension")),
                },
                SizePhase::Lf => match b {
                    b'\n' if size == 0 => ChunkState::Trailer {
                        total: 0,
                        phase: TrailerPhase::LineStart,
                    },
                    b'\n' => ChunkState::Data { remaining: size },
                    _ => return Err(bad("chunk-size line not ended by CRLF")),
                },
            }
        }
        ChunkState::DataCr => match b {
            b'\r' => ChunkState::DataLf,
            _ => return Err(bad("chunk data not followed by CRLF")),
        },
        ChunkState::DataLf => match b {
            b'\n' => ChunkState::Size {
                size: 0,
                digits: 0,
                line: 0,
                phase: SizePhase::Digits,
            },
            _ => return Err(bad("chunk data not followed by CRLF")),
        },
        ChunkState::Trailer { total, phase } => {
            let total = total + 1;
            if total > MAX_TRAILERS {
                return Err(bad("trailer section too large"));
            }
            let trailer = |phase| ChunkState::Trailer { total, phase };
            match (phase, b) {
                (TrailerPhase::LineStart, b'\r') => trailer(TrailerPhase::EndLf),
                // Leading whitespace would be obs-fold, which RFC 9112 forbids.
                (TrailerPhase::LineStart, b) if is_token_byte(b) => trailer(TrailerPhase::Name),
                (TrailerPhase::Name, b':') => trailer(TrailerPhase::Value),
                (TrailerPhase::Name, b) if is_token_byte(b) => trailer(TrailerPhase::Name),
                (TrailerPhase::Value, b'\r') => trailer(TrailerPhase::LineLf),
                (TrailerPhase::Value, b) if is_field_byte(b) => trailer(TrailerPhase::Value),
                (TrailerPhase::LineLf, b'\n') => trailer(TrailerPhase::LineStart),
                (TrailerPhase::EndLf, b'\n') => ChunkState::Done,
                _ => return Err(bad("malformed trailer section")),
            }
        }
        // Data, Done and Failed are handled by the caller before any byte is read.
        ChunkState::Data { .. } | ChunkState::Done | ChunkState::Failed => state,
    })
}

/// The reason phrase for `status`; empty for codes lakegate never sends (the phrase
/// is optional in the status line, RFC 9112 section 4).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// 1xx and 204 responses never have a body, so they must not carry Content-Length
/// (RFC 9110 section 8.6) and a 1xx is not where the connection's fate is announced.
fn is_bodiless(status: u16) -> bool {
    (100..200).contains(&status) || status == 204
}

/// Appends `s`, replacing CR, LF and NUL with spaces: header values may echo request
/// data (keys, ETags), and a CRLF there would let a peer split the response.
fn push_field(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        out.extend(s.bytes().map(|b| match b {
            b'\r' | b'\n' | 0 => b' ',
            other => other,
        }));
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Appends a response head: `HTTP/1.1 {status} {reason}`, the given headers, then
/// `content-length` when `Some`, `connection: close` when `!keep_alive`, then the
/// blank line. For 1xx and 204 the length and `connection` lines are omitted, as
/// those responses have no body and 1xx is interim.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_length: Option<u64>,
    keep_alive: bool,
) {
    // Writing into a Vec cannot fail; the Result only exists for io::Write's sake.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        push_field(out, name);
        out.extend_from_slice(b": ");
        push_field(out, value);
        out.extend_from_slice(b"\r\n");
    }
    if !is_bodiless(status) {
        if let Some(len) = content_length {
            let _ = write!(out, "content-length: {len}\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete small response (errors, XML listings): the head with
/// `content-type`, `extra` headers and the body's length, then the body. For 1xx and
/// 204 the body is dropped, since those responses cannot carry one.
pub fn write_simple_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    keep_alive: bool,
) {
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(extra.len() + 1);
    headers.push(("content-type", content_type));
    headers.extend_from_slice(extra);
    write_response_head(out, status, &headers, Some(body.len() as u64), keep_alive);
    if !is_bodiless(status) {
        out.extend_from_slice(body);
    }
}

/// Interprets a `Range` header against an object of `size` bytes.
///
/// `bytes=a-b`, `bytes=a-` and `bytes=-n` give `Ok(Some((start, end_inclusive)))`, with
/// an end beyond the object clamped to its last byte and a suffix longer than the
/// object meaning the whole object. A header that is not a single well-formed byte
/// range (other units, syntax errors, several ranges) is ignored with `Ok(None)`, as
/// RFC 9110 section 14.2 permits and S3 does. `Err(())` means unsatisfiable (416): the
/// start is at or past the end, `bytes=-0`, or any range of an empty object.
#[allow(clippy::result_unit_err)]
pub fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let value = value.trim_matches([' ', '\t']);
    // The unit is case-insensitive (RFC 9110 section 14.1); `get` avoids slicing
    // inside a multi-byte character.
    let Some(unit) = value.get(..6) else {
        return Ok(None);
    };
    if !unit.eq_ignore_ascii_case("bytes=") {
        return Ok(None);
    }
    let spec = value.get(6..).unwrap_or("").trim_matches([' ', '\t']);
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (
        first.trim_matches([' ', '\t']),
        last.trim_matches([' ', '\t']),
    );
    match (first.is_empty(), last.is_empty()) {
        (true, true) => Ok(None),
        (true, false) => {
            let Some(n) = parse_digits(last) else {
                return Ok(None);
            };
            if n == 0 || size == 0 {
                return Err(());
            }
            Ok(Some((size.saturating_sub(n), size - 1)))
        }
        (false, _) => {
            let Some(start) = parse_digits(first) else {
                return Ok(None);
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match parse_digits(last) {
                    Some(end) => end,
                    None => return Ok(None),
                }
            };
            // last < first is a syntactically invalid range, which is ignored.
            if end < start {
                return Ok(None);
            }
            if start >= size {
                return Err(());
            }
            Ok(Some((start, end.min(size - 1))))
        }
    }
}

/// 1*DIGIT, saturating at `u64::MAX`: a position beyond any object is still a valid
/// position (clamped or unsatisfiable), not a syntax error.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    fn head(req: &[u8]) -> RequestHead {
        match parse_head(req, MAX) {
            Ok(Some((h, n))) => {
                assert_eq!(n, req.len(), "whole input should be the head");
                h
            }
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn err(req: &[u8]) -> HttpError {
        match parse_head(req, MAX) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Drives a decoder over `input` as one buffer; returns body and bytes consumed.
    fn decode_all(dec: &mut BodyDecoder, input: &[u8]) -> Result<(Vec<u8>, usize), HttpError> {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let step = dec.step(rest)?;
            assert!(step.consumed <= rest.len());
            assert!(step.data.start <= step.data.end && step.data.end <= step.consumed);
            body.extend_from_slice(&rest[step.data.clone()]);
            pos += step.consumed;
            assert_eq!(step.done, dec.is_done());
            if step.done || step.consumed == 0 {
                return Ok((body, pos));
            }
        }
    }

    /// Drives a decoder as an engine would, with input arriving in `pieces`:
    /// unconsumed bytes are kept and presented again with the next piece.
    fn decode_pieces(
        dec: &mut BodyDecoder,
        pieces: &[&[u8]],
    ) -> Result<(Vec<u8>, usize), HttpError> {
        let mut body = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut total = 0;
        for piece in pieces {
            pending.extend_from_slice(piece);
            let (b, used) = decode_all(dec, &pending)?;
            body.extend_from_slice(&b);
            pending.drain(..used);
            total += used;
            if dec.is_done() {
                break;
            }
        }
        Ok((body, total))
    }

    fn chunked_head() -> RequestHead {
        head(b"PUT /b/k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    }

    #[test]
    fn simple_get() {
        let h = head(b"GET /datasets/a%20b/c?list-type=2&prefix=a%2F HTTP/1.1\r\nHost: lake\r\nX-Thing:  v  \r\n\r\n");
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.method_str, "GET");
        assert_eq!(h.path, "/datasets/a b/c");
        assert_eq!(h.raw_target, "/datasets/a%20b/c?list-type=2&prefix=a%2F");
        assert_eq!(
            h.query,
            vec![
                ("list-type".to_owned(), "2".to_owned()),
                ("prefix".to_owned(), "a/".to_owned())
            ]
        );
        assert_eq!(h.header("host"), Some("lake"));
        assert_eq!(h.header("x-thing"), Some("v"));
        assert_eq!(h.header("missing"), None);
        assert_eq!(h.content_length, None);
        assert!(!h.chunked && !h.expect_continue && h.keep_alive);
        let dec = BodyDecoder::for_request(&h);
        assert!(dec.is_done());
        assert_eq!(dec.remaining(), Some(0));
    }

    #[test]
    fn methods() {
        for (m, want) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Other),
            ("get", Method::Other),
        ] {
            let h = head(format!("{m} / HTTP/1.1\r\n\r\n").as_bytes());
            assert_eq!(h.method, want);
            assert_eq!(h.method_str, m);
        }
        let h = head(b"POST /x HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.method, Method::Post);
    }

    #[test]
    fn pipelined_requests_in_one_buffer() {
        let buf = b"GET /a HTTP/1.1\r\n\r\nPUT /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloDELETE /c HTTP/1.1\r\nconnection: close\r\n\r\nGET /d";
        let mut pos = 0;
        let mut seen = Vec::new();
        while let Some((h, n)) = parse_head(&buf[pos..], MAX).unwrap() {
            pos += n;
            let mut dec = BodyDecoder::for_request(&h);
            let (body, used) = decode_all(&mut dec, &buf[pos..]).unwrap();
            assert!(dec.is_done());
            pos += used;
            seen.push((h.method, h.path, body, h.keep_alive));
        }
        assert_eq!(
            seen,
            vec![
                (Method::Get, "/a".to_owned(), vec![], true),
                (Method::Put, "/b".to_owned(), b"hello".to_vec(), true),
                (Method::Delete, "/c".to_owned(), vec![], false),
            ]
        );
        assert_eq!(&buf[pos..], b"GET /d");
    }

    #[test]
    fn head_byte_by_byte() {
        let req = b"PUT /b/k%2Fx?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc";
        let (full, n) = parse_head(req, MAX).unwrap().unwrap();
        assert_eq!(n, req.len() - 3);
        for i in 0..n {
            assert_eq!(parse_head(&req[..i], MAX), Ok(None), "prefix {i}");
        }
        for i in n..=req.len() {
            assert_eq!(parse_head(&req[..i], MAX), Ok(Some((full.clone(), n))));
        }
    }

    #[test]
    fn content_length_body() {
        let h = head(b"PUT /b/k HTTP/1.1\r\ncontent-length: 10\r\n\r\n");
        assert_eq!(h.content_length, Some(10));
        let mut dec = BodyDecoder::for_request(&h);
        assert_eq!(dec.remaining(), Some(10));
        let s = dec.step(b"0123").unwrap();
        assert_eq!(
            s,
            Step {
                consumed: 4,
                data: 0..4,
                done: false
            }
        );
        assert_eq!(dec.remaining(), Some(6));
        assert_eq!(dec.delivered(), 4);
        let s = dec.step(b"").unwrap();
        assert_eq!(s.consumed, 0);
        assert!(!s.done);
        let s = dec.step(b"456789GET / HTTP/1.1").unwrap();
        assert_eq!(
            s,
            Step {
                consumed: 6,
                data: 0..6,
                done: true
            }
        );
        assert!(dec.is_done());
        assert_eq!(dec.delivered(), 10);
        assert_eq!(dec.remaining(), Some(0));
        assert_eq!(dec.step(b"more").unwrap().consumed, 0);
    }

    #[test]
    fn zero_length_and_bodyless() {
        let h = head(b"PUT /b/k HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert!(BodyDecoder::for_request(&h).is_done());
        let h = head(b"DELETE /b/k HTTP/1.1\r\n\r\n");
        let mut dec = BodyDecoder::for_request(&h);
        assert_eq!(
            dec.step(b"GET").unwrap(),
            Step {
                consumed: 0,
                data: 0..0,
                done: true
            }
        );
        // A GET with a declared body is still framed by it.
        let h = head(b"GET /b/k HTTP/1.1\r\ncontent-length: 2\r\n\r\n");
        let mut dec = BodyDecoder::for_request(&h);
        assert_eq!(decode_all(&mut dec, b"hiX").unwrap(), (b"hi".to_vec(), 2));
    }

    #[test]
    fn chunked_body() {
        let h = chunked_head();
        assert!(h.chunked);
        assert_eq!(h.content_length, None);
        let mut dec = BodyDecoder::for_request(&h);
        assert_eq!(dec.remaining(), None);
        let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
        let (body, used) = decode_all(&mut dec, input).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(&input[used..], b"NEXT");
        assert!(dec.is_done());
        assert_eq!(dec.delivered(), 11);
        assert_eq!(dec.remaining(), Some(0));
    }

    #[test]
    fn chunked_step_ranges_are_single_and_contiguous() {
        let mut dec = BodyDecoder::for_request(&chunked_head());
        let input = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        // First step: size line, data, CRLF and the next size line, stopping before
        // the second run of data.
        let s = dec.step(input).unwrap();
        assert_eq!(s.data, 3..6);
        assert_eq!(s.consumed, 11);
        assert!(!s.done);
        let s = dec.step(&input[11..]).unwrap();
        assert_eq!(&input[11..][s.data.clone()], b"de");
        assert!(s.done);
        assert_eq!(11 + s.consumed, input.len());
    }

    #[test]
    fn chunked_split_at_every_position() {
        let input: &[u8] = b"4;name=val;q=\"x y\"\r\nWiki\r\nA\r\npedia in\r\n\r\n0\r\nx-checksum: abc\r\nexpires: never\r\n\r\n";
        let want = b"Wikipedia in\r\n".to_vec();
        let whole = decode_all(&mut BodyDecoder::for_request(&chunked_head()), input).unwrap();
        assert_eq!(whole, (want.clone(), input.len()));
        for at in 0..=input.len() {
            let mut dec = BodyDecoder::for_request(&chunked_head());
            let got = decode_pieces(&mut dec, &[&input[..at], &input[at..]]).unwrap();
            assert_eq!(got, whole, "split at {at}");
            assert!(dec.is_done());
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let mut dec = BodyDecoder::for_request(&chunked_head());
        assert_eq!(decode_pieces(&mut dec, &bytes).unwrap(), whole);
        assert_eq!(dec.delivered(), want.len() as u64);
    }

    #[test]
    fn content_length_split_at_every_position() {
        let h = head(b"PUT /b/k HTTP/1.1\r\ncontent-length: 9\r\n\r\n");
        let input = b"123456789tail";
        for at in 0..=input.len() {
            let mut dec = BodyDecoder::for_request(&h);
            let got = decode_pieces(&mut dec, &[&input[..at], &input[at..]]).unwrap();
            assert_eq!(got, (b"123456789".to_vec(), 9));
        }
    }

    #[test]
    fn chunk_extensions_and_trailers() {
        let mut dec = BodyDecoder::for_request(&chunked_head());
        let input = b"2 ; a=b\r\nok\r\n0;last\r\ntrailer-one: 1\r\nTrailer-Two:\r\n\r\n";
        assert_eq!(
            decode_all(&mut dec, input).unwrap(),
            (b"ok".to_vec(), input.len())
        );
        // Hex sizes are case-insensitive and may have leading zeros.
        let mut dec = BodyDecoder::for_request(&chunked_head());
        let input = b"000a\r\n0123456789\r\n00\r\n\r\n";
        let (body, _) = decode_all(&mut dec, input).unwrap();
        assert_eq!(body.len(), 10);
        let mut dec = BodyDecoder::for_request(&chunked_head());
        assert!(decode_all(&mut dec, b"B\r\n0123456789a\r\n0\r\n\r\n").is_ok());
    }

    #[test]
    fn bad_chunk_syntax() {
        for input in [
            &b"\r\n"[..],
            b"x\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"0x5\r\n",
            b"5\nhello",
            b"5 \r\n",
            b"5\r\nhelloX",
            b"5\r\nhello\n0",
            b"5\r\nhello\r\r",
            b"1;\x01\r\n",
            b"11111111111111111\r\n", // 17 hex digits overflow u64
            b"0\r\n: no-name\r\n\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nname\r\n\r\n",
            b"0\r\nname: v\n\r\n",
            b"0\r\n\n",
            b"0\r\n\r\r",
        ] {
            let mut dec = BodyDecoder::for_request(&chunked_head());
            let r = decode_all(&mut dec, input);
            assert!(
                matches!(r, Err(HttpError::BadRequest(_))),
                "{:?} gave {r:?}",
                String::from_utf8_lossy(input)
            );
            // Stays failed.
            assert!(dec.step(b"0\r\n\r\n").is_err());
            assert!(!dec.is_done());
        }
    }

    #[test]
    fn aws_chunked_keeps_its_trailer() {
        // What botocore's AwsChunkedWrapper sends inside the HTTP body.
        let input = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n";
        let mut dec = BodyDecoder::aws_chunked();
        let (data, n) = decode_all(&mut dec, input).unwrap();
        assert_eq!((data.as_slice(), n), (&b"hello world"[..], input.len()));
        assert!(dec.is_done());
        assert_eq!(dec.trailer(), b"x-amz-checksum-crc32:DUoRhQ==\r\n\r\n");
        // Byte by byte, the same.
        let mut dec = BodyDecoder::aws_chunked();
        for b in input.chunks(1) {
            let s = dec.step(b).unwrap();
            assert_eq!(s.consumed, 1);
        }
        assert!(dec.is_done());
        assert_eq!(dec.trailer(), b"x-amz-checksum-crc32:DUoRhQ==\r\n\r\n");
        // A request decoder keeps none.
        let mut dec = BodyDecoder::for_request(&chunked_head());
        decode_all(&mut dec, input).unwrap();
        assert_eq!(dec.trailer(), b"");
    }

    #[test]
    fn chunk_line_and_trailer_limits() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE - 2, b'a');
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), MAX_CHUNK_LINE);
        let mut input = line.clone();
        input.extend_from_slice(b"x\r\n0\r\n\r\n");
        let mut dec = BodyDecoder::for_request(&chunked_head());
        assert!(decode_all(&mut dec, &input).is_ok());

        let mut long = b"1;".to_vec();
        long.resize(MAX_CHUNK_LINE - 1, b'a');
        long.extend_from_slice(b"\r\n");
        let mut dec = BodyDecoder::for_request(&chunked_head());
        assert!(matches!(
            decode_all(&mut dec, &long),
            Err(HttpError::BadRequest(_))
        ));
        // Leading zeros count toward the line too: no unbounded scan.
        let zeros = vec![b'0'; MAX_CHUNK_LINE + 1];
        let mut dec = BodyDecoder::for_request(&chunked_head());
        assert!(dec.step(&zeros).is_err());

        // Trailer section: exactly at the limit passes, one more byte fails.
        let trailers = |total: usize| {
            let mut t = b"0\r\nx: ".to_vec();
            let fixed = "x: ".len() + 2 + 2; // name, CRLF, final CRLF
            t.resize(3 + total - fixed + 3, b'v');
            t.extend_from_slice(b"\r\n\r\n");
            t
        };
        let ok = trailers(MAX_TRAILERS);
        let mut dec = BodyDecoder::for_request(&chunked_head());
        assert_eq!(decode_all(&mut dec, &ok).unwrap(), (vec![], ok.len()));
        let mut dec = BodyDecoder::for_request(&chunked_head());
        assert!(decode_all(&mut dec, &trailers(MAX_TRAILERS + 1)).is_err());
    }

    #[test]
    fn smuggling_cases() {
        assert!(matches!(
            err(b"PUT / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"),
            HttpError::BadRequest(_)
        ));
        assert!(matches!(
            err(b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
            HttpError::BadRequest(_)
        ));
        assert!(matches!(
            err(b"PUT / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"),
            HttpError::BadRequest(_)
        ));
        let h = head(b"PUT / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(h.content_length, Some(5));
        for cl in [
            "+5",
            "-1",
            "5, 5",
            "0x5",
            "5 5",
            "",
            "1e3",
            "99999999999999999999",
        ] {
            let req = format!("PUT / HTTP/1.1\r\ncontent-length: {cl}\r\n\r\n");
            assert!(
                matches!(err(req.as_bytes()), HttpError::BadRequest(_)),
                "cl {cl:?}"
            );
        }
        let e = err(b"PUT / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n");
        assert!(matches!(e, HttpError::NotImplemented(_)));
        assert_eq!(e.status(), 501);
        assert!(matches!(
            err(b"PUT / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            HttpError::NotImplemented(_)
        ));
        assert!(matches!(
            err(b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"),
            HttpError::BadRequest(_)
        ));
        assert!(matches!(
            err(b"PUT / HTTP/1.1\r\ntransfer-encoding: \r\n\r\n"),
            HttpError::BadRequest(_)
        ));
        assert!(matches!(
            err(b"PUT / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"),
            HttpError::BadRequest(_)
        ));
        assert!(head(b"PUT / HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\n\r\n").chunked);
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n"),
            HttpError::BadRequest(_)
        ));
        // Whitespace before the colon is a known smuggling vector; httparse refuses it.
        assert!(matches!(
            err(b"PUT / HTTP/1.1\r\ntransfer-encoding : chunked\r\n\r\n"),
            HttpError::BadRequest(_)
        ));
    }

    #[test]
    fn length_required() {
        let e = err(b"PUT /b/k HTTP/1.1\r\n\r\n");
        assert_eq!(e, HttpError::LengthRequired);
        assert_eq!(e.status(), 411);
        assert_eq!(err(b"POST /b HTTP/1.0\r\n\r\n"), HttpError::LengthRequired);
        assert!(head(b"OPTIONS /b HTTP/1.1\r\n\r\n")
            .content_length
            .is_none());
    }

    #[test]
    fn head_too_large_at_the_limit() {
        let req = b"GET /abc HTTP/1.1\r\nhost: x\r\n\r\n";
        let n = req.len();
        // Exactly at the limit: accepted.
        assert_eq!(parse_head(req, n).unwrap().unwrap().1, n);
        // One byte over: incomplete below the limit, 431 once the limit is buffered.
        assert_eq!(parse_head(&req[..n - 2], n - 1), Ok(None));
        let e = parse_head(&req[..n - 1], n - 1).unwrap_err();
        assert_eq!(e, HttpError::HeadTooLarge(n - 1));
        assert_eq!(e.status(), 431);
        // Extra buffered bytes beyond the limit change nothing.
        assert_eq!(parse_head(req, n - 1), Err(HttpError::HeadTooLarge(n - 1)));
        // A blank-line flood before the request line is bounded too.
        assert_eq!(
            parse_head(&[b'\r', b'\n'].repeat(100), 64),
            Err(HttpError::HeadTooLarge(64))
        );
    }

    #[test]
    fn too_many_headers() {
        let mut ok = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            ok.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        let mut over = ok.clone();
        ok.extend_from_slice(b"\r\n");
        assert_eq!(head(&ok).headers.len(), MAX_HEADERS);
        over.extend_from_slice(b"one-more: v\r\n\r\n");
        assert_eq!(err(&over), HttpError::HeadTooLarge(MAX));
    }

    #[test]
    fn request_line_rules() {
        for req in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTPS/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\n\r\n",
            b"GET http://lake/a HTTP/1.1\r\n\r\n",
            b"GET lake:443 HTTP/1.1\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: \x01\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
        ] {
            let e = err(req);
            assert_eq!(e.status(), 400, "{:?}: {e:?}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn header_values_must_be_utf8() {
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nx-name: caf\xe9\r\n\r\n"),
            HttpError::BadRequest(_)
        ));
        let h = head("GET / HTTP/1.1\r\nX-Name: \tcafé \t\r\n\r\n".as_bytes());
        assert_eq!(h.headers, vec![("x-name".to_owned(), "café".to_owned())]);
    }

    #[test]
    fn percent_decoding() {
        let path = |target: &str| {
            parse_head(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes(), MAX)
                .map(|r| r.map(|(h, _)| h.path))
        };
        assert_eq!(path("/a%2Fb"), Ok(Some("/a/b".to_owned())));
        assert_eq!(path("/a%2fb"), Ok(Some("/a/b".to_owned())));
        assert_eq!(path("/a+b"), Ok(Some("/a+b".to_owned())));
        assert_eq!(path("/a%2Bb"), Ok(Some("/a+b".to_owned())));
        assert_eq!(path("/caf%C3%A9"), Ok(Some("/café".to_owned())));
        assert_eq!(path("/caf\u{e9}"), Ok(Some("/café".to_owned())));
        assert_eq!(path("/%25"), Ok(Some("/%".to_owned())));
        assert_eq!(path("/%252F"), Ok(Some("/%2F".to_owned())));
        for bad_target in [
            "/%", "/%2", "/%zz", "/%2G", "/a%", "/%00", "/a%00b", "/%C3", "/%FF", "/%C3%28",
        ] {
            let r = path(bad_target);
            assert!(
                matches!(r, Err(HttpError::BadTarget(_))),
                "{bad_target}: {r:?}"
            );
        }
    }

    #[test]
    fn query_decoding() {
        let h =
            head(b"GET /b?list-type=2&prefix=a%2Fb+c&&flag&empty=&k=v=w&%2B=%26 HTTP/1.1\r\n\r\n");
        let q: Vec<(&str, &str)> = h
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            q,
            vec![
                ("list-type", "2"),
                ("prefix", "a/b c"),
                ("flag", ""),
                ("empty", ""),
                ("k", "v=w"),
                ("+", "&"),
            ]
        );
        assert_eq!(h.path, "/b");
        assert!(head(b"GET /b? HTTP/1.1\r\n\r\n").query.is_empty());
        assert!(matches!(
            err(b"GET /b?prefix=%zz HTTP/1.1\r\n\r\n"),
            HttpError::BadTarget(_)
        ));
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |req: &str| head(req.as_bytes()).keep_alive;
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nconnection: Upgrade, CLOSE\r\n\r\n"));
        assert!(ka("GET / HTTP/1.1\r\nconnection: keep-alive\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.0\r\nconnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn expect_continue() {
        let h = head(b"PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\nExpect: 100-Continue\r\n\r\n");
        assert!(h.expect_continue);
        let h = head(b"PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\n\r\n");
        assert!(!h.expect_continue);
        let h = head(b"PUT /b/k HTTP/1.1\r\ncontent-length: 1\r\nexpect: something\r\n\r\n");
        assert!(!h.expect_continue);
        // HTTP/1.0 clients cannot handle an interim response.
        let h = head(b"PUT /b/k HTTP/1.0\r\ncontent-length: 1\r\nexpect: 100-continue\r\n\r\n");
        assert!(!h.expect_continue);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=10-10", 100), Ok(Some((10, 10))));
        assert_eq!(parse_range("Bytes=5-", 100), Ok(Some((5, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(" bytes= 1 - 2 ", 100), Ok(Some((1, 2))));
        // End beyond the object clamps; a huge end saturates instead of failing.
        assert_eq!(parse_range("bytes=90-200", 100), Ok(Some((90, 99))));
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 100),
            Ok(Some((0, 99)))
        );
        // Suffix longer than the object means the whole object.
        assert_eq!(parse_range("bytes=-500", 100), Ok(Some((0, 99))));
        // Unsatisfiable.
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=100-200", 100), Err(()));
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), Err(()));
        assert_eq!(parse_range("bytes=-0", 100), Err(()));
        assert_eq!(parse_range("bytes=0-", 0), Err(()));
        assert_eq!(parse_range("bytes=-5", 0), Err(()));
        // Ignored: serve the whole object.
        for ignored in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5",
            "bytes=a-b",
            "bytes=9-5",
            "bytes=0-1,5-6",
            "bytes=0-1,",
            "items=0-5",
            "bytes=+1-2",
            "bytes=1--2",
            "bytés=0-1",
        ] {
            assert_eq!(parse_range(ignored, 100), Ok(None), "{ignored:?}");
        }
    }

    #[test]
    fn reason_phrases() {
        for (code, phrase) in [
            (100, "Continue"),
            (200, "OK"),
            (201, "Created"),
            (204, "No Content"),
            (206, "Partial Content"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (416, "Range Not Satisfiable"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (503, "Service Unavailable"),
            (507, "Insufficient Storage"),
        ] {
            assert_eq!(reason(code), phrase);
        }
        assert_eq!(reason(299), "");
    }

    #[test]
    fn error_statuses() {
        assert_eq!(HttpError::HeadTooLarge(1).status(), 431);
        assert_eq!(HttpError::BadRequest(String::new()).status(), 400);
        assert_eq!(HttpError::LengthRequired.status(), 411);
        assert_eq!(HttpError::NotImplemented(String::new()).status(), 501);
    }

    #[test]
    fn response_heads() {
        let mut out = Vec::new();
        write_response_head(&mut out, 200, &[("etag", "\"abc\"")], Some(42), true);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\netag: \"abc\"\r\ncontent-length: 42\r\n\r\n"
        );
        out.clear();
        write_response_head(&mut out, 206, &[], None, false);
        assert_eq!(
            out,
            b"HTTP/1.1 206 Partial Content\r\nconnection: close\r\n\r\n"
        );
        out.clear();
        write_response_head(&mut out, 100, &[], None, false);
        assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
        out.clear();
        write_response_head(&mut out, 204, &[], Some(0), true);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");
        // Response splitting through an echoed value is neutralized.
        out.clear();
        write_response_head(
            &mut out,
            200,
            &[("x-key", "a\r\nset-cookie: x")],
            None,
            true,
        );
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nx-key: a  set-cookie: x\r\n\r\n");
        // Appends rather than overwriting.
        let mut out = b"prev".to_vec();
        write_response_head(&mut out, 404, &[], Some(0), true);
        assert!(out.starts_with(b"prevHTTP/1.1 404 Not Found\r\n"));
    }

    #[test]
    fn simple_responses() {
        let mut out = Vec::new();
        write_simple_response(
            &mut out,
            404,
            "application/xml",
            b"<Error/>",
            &[("x-amz-request-id", "1")],
            false,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/xml\r\nx-amz-request-id: 1\r\ncontent-length: 8\r\nconnection: close\r\n\r\n<Error/>"
        );
        // The output parses back as a response with the declared body.
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut slots);
        let n = match resp.parse(&out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(resp.code, Some(404));
        assert_eq!(&out[n..], b"<Error/>");
    }
}
