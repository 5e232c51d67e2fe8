//! The store backend's I/O shell: HTTP/1.1 requests over the mTLS connection, bodies
//! streamed between decrypted TLS records and files through io_uring. The HTTP state
//! machine ([`crate::proto::http`]) and the filesystem rules ([`crate::backend::store`])
//! are apart from this file; here is only the plumbing between them.

use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use tokio_uring::buf::BoundedBuf;

use super::driver::{ConnLog, Established};
use super::io::{read_idle, Stream, WaitError};
use super::shared::Generation;
use super::worker::Worker;
use crate::authz::{Access, Decision};
use crate::backend::store::{self, BodyHasher, Store};
use crate::proto::http::{self, BodyDecoder, Method, RequestHead};
use crate::tls::conn::{OutBuf, TlsConn};
use crate::tls::identity::Identity;

/// Largest request head accepted; larger is 431.
pub const MAX_HEAD: usize = 16 * 1024;

/// Why a connection ends.
type End = &'static str;

struct Conn<'a> {
    w: &'a Rc<Worker>,
    gen: &'a Generation,
    client: Stream,
    tls: TlsConn,
    inb: Vec<u8>,
    used: usize,
    /// Decrypted bytes; `plain.buf[pstart..plain.filled]` is not yet processed.
    plain: OutBuf,
    pstart: usize,
    out: OutBuf,
    peer_closed: bool,
    /// We answered before reading a whole request body: drain for a moment before
    /// closing, or the unread bytes make the kernel reset the connection and the client
    /// never sees the status.
    linger: bool,
    last: std::cell::Cell<Instant>,
    log: &'a ConnLog,
    identity: Identity,
    peer: SocketAddr,
}

/// Serve HTTP requests until the client closes or an error ends the connection.
pub async fn serve(
    w: &Rc<Worker>,
    gen: &Generation,
    store: &Store,
    client: Stream,
    peer: SocketAddr,
    est: Established,
    log: &ConnLog,
) -> End {
    let Established {
        tls,
        inb,
        used,
        plain,
        out,
        identity,
        ..
    } = est;
    let tls_closed = tls.peer_closed();
    let mut c = Conn {
        w,
        gen,
        client,
        tls,
        inb,
        used,
        plain,
        pstart: 0,
        out,
        peer_closed: tls_closed,
        linger: false,
        last: std::cell::Cell::new(Instant::now()),
        log,
        identity,
        peer,
    };
    let end = c.run(store).await;
    c.close().await;
    let Conn {
        inb, plain, out, ..
    } = c;
    w.pool.give(inb);
    w.pool.give(plain.buf);
    w.pool.give(out.buf);
    end
}

impl Conn<'_> {
    async fn run(&mut self, store: &Store) -> End {
        loop {
            let head = match self.read_head().await {
                Ok(Some(h)) => h,
                Ok(None) => return "closed",
                Err(e) => return e,
            };
            let start = Instant::now();
            let keep = match self.request(store, &head, start).await {
                Ok(keep) => keep,
                Err(e) => return e,
            };
            if !keep || !head.keep_alive {
                return "closed by request";
            }
            if self
                .w
                .shared
                .draining
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return "draining";
            }
        }
    }

    /// Read until a full request head is buffered. Ok(None) on a clean close between
    /// requests.
    async fn read_head(&mut self) -> Result<Option<RequestHead>, End> {
        loop {
            let pending = &self.plain.buf[self.pstart..self.plain.filled];
            match http::parse_head(pending, MAX_HEAD) {
                Ok(Some((head, n))) => {
                    self.pstart += n;
                    return Ok(Some(head));
                }
                Ok(None) => {}
                Err(e) => {
                    let status = e.status();
                    self.simple(
                        status,
                        "text/plain",
                        format!("{e}\n").as_bytes(),
                        &[],
                        false,
                    )
                    .await?;
                    self.access("-", "-", "-", status, 0, Instant::now());
                    return Err("bad request head");
                }
            }
            if self.peer_closed {
                return if pending.is_empty() {
                    Ok(None)
                } else {
                    Err("eof inside request head")
                };
            }
            match self.fill().await {
                Ok(()) => {}
                Err("client eof") if self.pstart == self.plain.filled => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Read more TLS from the client and decrypt it onto the end of `plain`.
    async fn fill(&mut self) -> Result<(), End> {
        if self.pstart == self.plain.filled {
            self.pstart = 0;
            self.plain.filled = 0;
        } else if self.pstart > 0
            && self.plain.filled + crate::tls::conn::MAX_RECORD * 4 > self.plain.buf.len()
        {
            self.plain
                .buf
                .copy_within(self.pstart..self.plain.filled, 0);
            self.plain.filled -= self.pstart;
            self.pstart = 0;
        }
        loop {
            if self.used == self.inb.len() {
                return Err("record larger than buffer");
            }
            // Between requests (nothing buffered) a drain may end the wait.
            let between = self.pstart == self.plain.filled && self.used == 0;
            let cap = self.inb.len();
            let inb = std::mem::take(&mut self.inb);
            let idle = self.gen.config.server.idle_timeout;
            let (n, slice) = match read_idle(
                self.client.read(inb.slice(self.used..cap)),
                &self.last,
                idle,
                between.then(|| self.w.drain.clone()),
            )
            .await
            {
                Ok(x) => x,
                Err((WaitError::Idle, _)) => {
                    self.inb = self.w.pool.take();
                    return Err("idle timeout");
                }
                Err((WaitError::Draining, _)) => {
                    self.inb = self.w.pool.take();
                    return Err("draining");
                }
                Err((WaitError::Io(_), buf)) => {
                    self.inb = buf
                        .map(|b| b.into_inner())
                        .unwrap_or_else(|| self.w.pool.take());
                    return Err("client read error");
                }
            };
            self.inb = slice.into_inner();
            if n == 0 {
                return Err("client eof");
            }
            self.last.set(Instant::now());
            self.used += n;
            self.log.bytes_in.set(self.log.bytes_in.get() + n as u64);
            self.w.stats.bytes_received.add(n as u64);
            let mut scratch = OutBuf::default();
            let p = self
                .tls
                .handle_received(&mut self.inb[..self.used], &mut scratch, &mut self.plain)
                .map_err(|_| "tls error from client")?;
            self.inb.copy_within(p.consumed..self.used, 0);
            self.used -= p.consumed;
            if p.peer_closed {
                self.peer_closed = true;
            }
            if p.plaintext > 0 || p.peer_closed {
                return Ok(());
            }
        }
    }

    /// Encrypt and send plaintext bytes.
    async fn send(&mut self, data: &[u8]) -> Result<(), End> {
        self.out.clear();
        self.tls
            .encrypt(data, &mut self.out)
            .map_err(|_| "tls encrypt error")?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), End> {
        let len = self.out.filled;
        if len == 0 {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out.buf);
        // A client that stops reading must not pin the connection forever: past the
        // idle timeout the socket is shut, which also completes the pending write.
        let idle = self.gen.config.server.idle_timeout;
        let (res, slice) =
            match tokio::time::timeout(idle, self.client.write_all(buf.slice(..len))).await {
                Ok(x) => x,
                Err(_) => {
                    self.client.shutdown(Shutdown::Both);
                    self.out.buf = self.w.pool.take();
                    self.out.clear();
                    return Err("client write timeout");
                }
            };
        self.out.buf = slice.into_inner();
        self.out.clear();
        res.map_err(|_| "client write error")?;
        self.last.set(Instant::now());
        self.log
            .bytes_out
            .set(self.log.bytes_out.get() + len as u64);
        self.w.stats.bytes_sent.add(len as u64);
        Ok(())
    }

    async fn simple(
        &mut self,
        status: u16,
        ctype: &str,
        body: &[u8],
        extra: &[(&str, &str)],
        keep_alive: bool,
    ) -> Result<(), End> {
        let mut resp = Vec::with_capacity(256 + body.len());
        http::write_simple_response(&mut resp, status, ctype, body, extra, keep_alive);
        self.send(&resp).await
    }

    async fn close(&mut self) {
        self.out.clear();
        if self.tls.close_notify(&mut self.out).is_ok() {
            let _ = self.flush().await;
        }
        if self.linger && !self.peer_closed {
            self.client.shutdown(Shutdown::Write);
            let client = &self.client;
            let mut buf = std::mem::take(&mut self.inb);
            // Bounded: at most 2 s and 64 MiB of discarded body.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                let mut total = 0usize;
                while total < 64 << 20 {
                    let cap = buf.len();
                    let (r, slice) = client.read(buf.slice(..cap)).await;
                    buf = slice.into_inner();
                    match r {
                        Ok(n) if n > 0 => total += n,
                        _ => break,
                    }
                }
            })
            .await;
        }
        self.client.shutdown(Shutdown::Both);
    }

    fn access(
        &self,
        method: &str,
        bucket: &str,
        key: &str,
        status: u16,
        bytes: u64,
        start: Instant,
    ) {
        let stats = &self.w.stats;
        stats.requests[crate::telemetry::request_slot(method, status)].inc();
        stats.request_duration.observe_in(
            &crate::telemetry::REQUEST_BUCKETS,
            start.elapsed().as_secs_f64(),
        );
        tracing::info!(
            target: "access",
            worker = self.w.id, peer = %self.peer, identity = self.identity.name(), method, bucket, key,
            status, bytes, duration_ms = start.elapsed().as_secs_f64() * 1e3, "request"
        );
    }

    /// Answer an error; the connection stays open only if the request had no unread body.
    async fn error(
        &mut self,
        head: &RequestHead,
        bucket: &str,
        key: &str,
        status: u16,
        why: &str,
        start: Instant,
    ) -> Result<bool, End> {
        let body_pending = !BodyDecoder::for_request(head).is_done();
        let keep = !body_pending && head.keep_alive;
        self.linger |= body_pending;
        let xml = error_xml(status, why);
        self.simple(status, "application/xml", xml.as_bytes(), &[], keep)
            .await?;
        tracing::info!(target: "access", reason = why, "request refused");
        self.access(&head.method_str, bucket, key, status, 0, start);
        Ok(keep)
    }

    async fn request(
        &mut self,
        store: &Store,
        head: &RequestHead,
        start: Instant,
    ) -> Result<bool, End> {
        let (bucket, key) = match store::split_path(&head.path) {
            Ok(x) => x,
            Err(e) => return self.error(head, "-", "-", 400, &e.to_string(), start).await,
        };
        let (bucket, key) = (bucket.to_string(), key.map(str::to_string));
        let k = key.as_deref().unwrap_or("");
        if let Err(e) = store::validate_bucket(&bucket) {
            return self
                .error(head, &bucket, k, 400, &e.to_string(), start)
                .await;
        }
        if let Some(key) = &key {
            if let Err(e) = store::validate_key(key) {
                return self
                    .error(head, &bucket, k, 400, &e.to_string(), start)
                    .await;
            }
        }
        if head.method != Method::Put && !BodyDecoder::for_request(head).is_done() {
            // Unread body bytes would be parsed as the next request head.
            return self
                .error(head, &bucket, k, 400, "unexpected request body", start)
                .await;
        }
        let access = match (head.method, key.is_some()) {
            (Method::Put, true) => Access::Write,
            (Method::Get | Method::Head, true) => Access::Read,
            (Method::Delete, true) => Access::Delete,
            (Method::Get, false) => Access::List,
            _ => {
                return self
                    .error(head, &bucket, k, 405, "method not allowed", start)
                    .await
            }
        };
        if let Decision::Denied { reason } = self.gen.authz.check(&self.identity, &bucket, access) {
            tracing::warn!(identity = self.identity.name(), bucket, key = k, reason = %reason, "denied");
            return self.error(head, &bucket, k, 403, &reason, start).await;
        }
        match (head.method, key) {
            (Method::Put, Some(key)) => self.put(store, head, &bucket, &key, start).await,
            (Method::Get, Some(key)) => self.get(store, head, &bucket, &key, start, true).await,
            (Method::Head, Some(key)) => self.get(store, head, &bucket, &key, start, false).await,
            (Method::Delete, Some(key)) => match store.delete_object(&bucket, &key) {
                Ok(()) => {
                    self.simple(204, "text/plain", b"", &[], head.keep_alive)
                        .await?;
                    self.access("DELETE", &bucket, &key, 204, 0, start);
                    Ok(true)
                }
                Err(e) => {
                    let st = store::status_for_io(&e);
                    self.error(head, &bucket, &key, st, &e.to_string(), start)
                        .await
                }
            },
            _ => self.list(store, head, &bucket, start).await,
        }
    }

    async fn list(
        &mut self,
        store: &Store,
        head: &RequestHead,
        bucket: &str,
        start: Instant,
    ) -> Result<bool, End> {
        let q = |name: &str| {
            head.query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let prefix = q("prefix").unwrap_or("");
        let max_keys = q("max-keys")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000usize)
            .min(1000);
        let token = q("continuation-token");
        let start_after = match token {
            Some(t) => match store::decode_continuation(t) {
                Some(s) => Some(s),
                None => {
                    return self
                        .error(head, bucket, "", 400, "bad continuation-token", start)
                        .await
                }
            },
            None => q("start-after").map(str::to_string),
        };
        match store.list(bucket, prefix, start_after.as_deref(), max_keys) {
            Ok(l) => {
                let xml = store::list_xml(bucket, prefix, max_keys, token, &l);
                self.simple(200, "application/xml", xml.as_bytes(), &[], head.keep_alive)
                    .await?;
                self.access("LIST", bucket, prefix, 200, xml.len() as u64, start);
                Ok(true)
            }
            Err(e) => {
                let st = store::status_for_io(&e);
                self.error(head, bucket, "", st, &e.to_string(), start)
                    .await
            }
        }
    }

    async fn get(
        &mut self,
        store: &Store,
        head: &RequestHead,
        bucket: &str,
        key: &str,
        start: Instant,
        body: bool,
    ) -> Result<bool, End> {
        let (file, meta) = match store.open_object(bucket, key) {
            Ok(x) => x,
            Err(e) => {
                let st = store::status_for_io(&e);
                return self
                    .error(head, bucket, key, st, &e.to_string(), start)
                    .await;
            }
        };
        let range = match head
            .header("range")
            .map(|r| http::parse_range(r, meta.size))
        {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(r))) => Some(r),
            Some(Err(())) => {
                let cr = format!("bytes */{}", meta.size);
                self.simple(
                    416,
                    "text/plain",
                    b"range not satisfiable\n",
                    &[("content-range", &cr)],
                    head.keep_alive,
                )
                .await?;
                self.access(&head.method_str, bucket, key, 416, 0, start);
                return Ok(true);
            }
        };
        let (status, from, len) = match range {
            Some((a, b)) => (206, a, b - a + 1),
            None => (200, 0, meta.size),
        };
        let etag = meta.etag();
        let lm = meta.last_modified_http();
        let sum = meta.checksum_sha256_b64();
        let cr = range.map(|(a, b)| format!("bytes {a}-{b}/{}", meta.size));
        let mut headers: Vec<(&str, &str)> = vec![
            ("etag", &etag),
            ("last-modified", &lm),
            ("accept-ranges", "bytes"),
            ("content-type", "application/octet-stream"),
        ];
        if range.is_none() {
            headers.push(("x-amz-checksum-sha256", &sum));
        }
        if let Some(cr) = &cr {
            headers.push(("content-range", cr));
        }
        let mut h = Vec::with_capacity(512);
        http::write_response_head(&mut h, status, &headers, Some(len), head.keep_alive);
        self.send(&h).await?;
        if body && len > 0 {
            let f = tokio_uring::fs::File::from_std(file);
            let r = self.stream_file(&f, from, len).await;
            let _ = f.close().await;
            r?;
        }
        self.access(
            &head.method_str,
            bucket,
            key,
            status,
            if body { len } else { 0 },
            start,
        );
        Ok(true)
    }

    /// File → TLS records → client. One user-space copy: rustls encrypts from the read
    /// buffer into the outgoing buffer.
    async fn stream_file(
        &mut self,
        f: &tokio_uring::fs::File,
        from: u64,
        len: u64,
    ) -> Result<(), End> {
        let mut buf = self.w.pool.take();
        let mut pos = from;
        let end = from + len;
        let res = loop {
            if pos >= end {
                break Ok(());
            }
            let n = ((end - pos) as usize).min(buf.len());
            let (r, slice) = f.read_at(buf.slice(..n), pos).await;
            buf = slice.into_inner();
            let got = match r {
                Ok(0) => break Err("object shorter than its size"),
                Ok(k) => k,
                Err(_) => break Err("object read error"),
            };
            self.out.clear();
            if self.tls.encrypt(&buf[..got], &mut self.out).is_err() {
                break Err("tls encrypt error");
            }
            if let Err(e) = self.flush().await {
                break Err(e);
            }
            pos += got as u64;
        };
        self.w.pool.give(buf);
        res
    }

    async fn put(
        &mut self,
        store: &Store,
        head: &RequestHead,
        bucket: &str,
        key: &str,
        start: Instant,
    ) -> Result<bool, End> {
        let max = self.gen.config.server.max_object_size;
        if head.method == Method::Put && head.content_length.is_none() && !head.chunked {
            return self
                .error(head, bucket, key, 411, "length required", start)
                .await;
        }
        if head.content_length.is_some_and(|l| l > max) {
            return self
                .error(
                    head,
                    bucket,
                    key,
                    413,
                    "object larger than max_object_size",
                    start,
                )
                .await;
        }
        let (std_file, temp) = match store.create_temp(bucket) {
            Ok(x) => x,
            Err(e) => {
                let st = store::status_for_io(&e);
                return self
                    .error(head, bucket, key, st, &e.to_string(), start)
                    .await;
            }
        };
        if head.expect_continue {
            if let Err(e) = self.send(b"HTTP/1.1 100 Continue\r\n\r\n").await {
                store.discard_temp(bucket, &temp);
                return Err(e);
            }
        }
        let uring = match std_file.try_clone() {
            Ok(f) => tokio_uring::fs::File::from_std(f),
            Err(e) => {
                store.discard_temp(bucket, &temp);
                return self
                    .error(head, bucket, key, 500, &e.to_string(), start)
                    .await;
            }
        };
        let mut hasher = BodyHasher::new(head.header("content-md5").is_some());
        let r = self.receive_body(head, &uring, &mut hasher, max).await;
        let _ = uring.close().await;
        let size = match r {
            Ok(n) => n,
            Err(BodyError::Client(e)) => {
                store.discard_temp(bucket, &temp);
                tracing::warn!(
                    identity = self.identity.name(),
                    bucket,
                    key,
                    reason = e,
                    "upload aborted; nothing stored"
                );
                self.access("PUT", bucket, key, 499, 0, start);
                return Err(e);
            }
            Err(BodyError::Status(st, why)) => {
                store.discard_temp(bucket, &temp);
                self.linger = true;
                // The body was not read to its end: answer and close.
                let xml = error_xml(st, &why);
                let _ = self
                    .simple(st, "application/xml", xml.as_bytes(), &[], false)
                    .await;
                tracing::warn!(identity = self.identity.name(), bucket, key, status = st, reason = %why, "upload refused; nothing stored");
                self.access("PUT", bucket, key, st, 0, start);
                return Ok(false);
            }
        };
        let digests = hasher.finish();
        if let Err(why) = digests.verify(
            head.header("x-amz-checksum-sha256"),
            head.header("content-md5"),
        ) {
            store.discard_temp(bucket, &temp);
            return self.error(head, bucket, key, 400, &why, start).await;
        }
        let hex = digests.sha256_hex();
        if let Err(e) = store.commit(bucket, &temp, key, &std_file, &hex) {
            store.discard_temp(bucket, &temp);
            let st = store::status_for_io(&e);
            return self
                .error(head, bucket, key, st, &e.to_string(), start)
                .await;
        }
        drop(std_file);
        let etag = format!("\"{hex}\"");
        let b64 =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digests.sha256);
        let mut resp = Vec::with_capacity(256);
        http::write_response_head(
            &mut resp,
            201,
            &[("etag", &etag), ("x-amz-checksum-sha256", &b64)],
            Some(0),
            head.keep_alive,
        );
        self.send(&resp).await?;
        self.access("PUT", bucket, key, 201, size, start);
        Ok(true)
    }

    /// Decode the body from decrypted records and write it at increasing offsets. The
    /// write of one buffer's data overlaps the read and decryption of the next (two
    /// buffers per upload), so the socket and the disk work at once; when the disk is
    /// slower, the next read waits for it, and TCP pushes back on the client.
    async fn receive_body(
        &mut self,
        head: &RequestHead,
        f: &tokio_uring::fs::File,
        hasher: &mut BodyHasher,
        max: u64,
    ) -> Result<u64, BodyError> {
        let mut dec = BodyDecoder::for_request(head);
        let mut off = 0u64;
        loop {
            // Gather this buffer's body bytes into one contiguous region. With
            // Content-Length they already are; chunked framing is squeezed out in place.
            let mut region: Option<(usize, usize)> = None;
            while self.pstart < self.plain.filled && !dec.is_done() {
                let step = dec
                    .step(&self.plain.buf[self.pstart..self.plain.filled])
                    .map_err(|e| BodyError::Status(e.status(), e.to_string()))?;
                let a = self.pstart + step.data.start;
                let b = self.pstart + step.data.end;
                self.pstart += step.consumed;
                if b > a {
                    hasher.update(&self.plain.buf[a..b]);
                    region = Some(match region {
                        None => (a, b),
                        Some((s, e)) if e == a => (s, b),
                        Some((s, e)) => {
                            self.plain.buf.copy_within(a..b, e);
                            (s, e + (b - a))
                        }
                    });
                }
                if step.consumed == 0 {
                    break;
                }
            }
            let done = dec.is_done();
            let Some((s, e)) = region else {
                if done {
                    return Ok(off);
                }
                self.need_more().await?;
                continue;
            };
            let len = (e - s) as u64;
            if off + len > max {
                return Err(BodyError::Status(
                    413,
                    "object larger than max_object_size".into(),
                ));
            }
            // Hand this buffer to the write; bytes after the body region (framing of the
            // next chunk, or the next pipelined request) move to a fresh buffer.
            let full = std::mem::replace(&mut self.plain.buf, self.w.pool.take());
            let rest = self.plain.filled - self.pstart;
            if self.plain.buf.len() < rest {
                self.plain.buf.resize(rest, 0);
            }
            self.plain.buf[..rest].copy_from_slice(&full[self.pstart..self.plain.filled]);
            self.plain.filled = rest;
            self.pstart = 0;
            let write = f.write_all_at(full.slice(s..e), off);
            let (wres, more) = if done {
                (write.await, Ok(()))
            } else {
                tokio::join!(write, self.need_more())
            };
            let (r, slice) = wres;
            self.w.pool.give(slice.into_inner());
            if let Err(err) = r {
                let st = store::status_for_io(&err);
                return Err(BodyError::Status(st, format!("write: {err}")));
            }
            off += len;
            more?;
            if done {
                return Ok(off);
            }
        }
    }

    /// Read more of a body; a close before its end is a truncated upload.
    async fn need_more(&mut self) -> Result<(), BodyError> {
        if self.peer_closed {
            return Err(BodyError::Client(
                "truncated body (close_notify before the end)",
            ));
        }
        match self.fill().await {
            Ok(()) => Ok(()),
            Err("client eof") => Err(BodyError::Client(
                "truncated body (eof without close_notify)",
            )),
            Err(e) => Err(BodyError::Client(e)),
        }
    }
}

enum BodyError {
    /// The client went away or broke TLS: no response possible.
    Client(End),
    /// Refuse with this status.
    Status(u16, String),
}

/// The S3-style error document.
fn error_xml(status: u16, why: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{status}</Code><Message>{}</Message></Error>\n",
        xml_escape(why)
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
