//! One mTLS client connection for the load generator: a blocking std socket driven by a
//! rustls `ClientConnection`, wire bytes counted, plus just enough HTTP/1.1 (request
//! heads out, response heads parsed with httparse, bodies counted and discarded).

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

/// Plaintext read buffer size; also the largest response head accepted.
const RBUF: usize = 256 * 1024;
/// Response heads larger than this are a protocol error (the server caps at 16 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// Why an operation failed; `key()` is the name it is counted under.
#[derive(Debug)]
pub enum Fail {
    /// TCP connect failed (refused, unreachable, timed out).
    Connect(io::ErrorKind),
    /// TLS failed before any application data was exchanged; the rustls error category.
    TlsHandshake(String),
    /// TLS failed after the handshake (bad record, alert mid-stream).
    Tls(String),
    /// The server answered with a status outside 2xx.
    Status(u16),
    /// The peer reset or aborted the connection, or the pipe broke.
    Reset,
    /// A socket read or write timed out.
    Timeout,
    /// The connection ended in the middle of a response (or before one).
    ShortRead,
    /// The response could not be parsed.
    Protocol(String),
    /// Any other I/O error, by kind.
    Io(io::ErrorKind),
}

impl Fail {
    /// The counter name: connect, tls_handshake:CATEGORY, http_status_non_2xx, io_reset, ...
    pub fn key(&self) -> String {
        match self {
            Fail::Connect(_) => "connect".into(),
            Fail::TlsHandshake(c) => format!("tls_handshake:{c}"),
            Fail::Tls(c) => format!("tls:{c}"),
            Fail::Status(_) => "http_status_non_2xx".into(),
            Fail::Reset => "io_reset".into(),
            Fail::Timeout => "timeout".into(),
            Fail::ShortRead => "short_read".into(),
            Fail::Protocol(_) => "http_protocol".into(),
            Fail::Io(k) => format!("io:{k:?}"),
        }
    }

    /// Classify an I/O error; rustls errors count as handshake failures while
    /// `handshaking` (nothing from the application seen yet), else as TLS failures.
    pub fn from_io(e: &io::Error, handshaking: bool) -> Fail {
        if let Some(te) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            let c = tls_category(te);
            return if handshaking {
                Fail::TlsHandshake(c)
            } else {
                Fail::Tls(c)
            };
        }
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Fail::Reset,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Fail::Timeout,
            io::ErrorKind::UnexpectedEof => Fail::ShortRead,
            k => Fail::Io(k),
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Connect(k) => write!(f, "connect: {k}"),
            Fail::TlsHandshake(c) => write!(f, "TLS handshake: {c}"),
            Fail::Tls(c) => write!(f, "TLS: {c}"),
            Fail::Status(s) => write!(f, "HTTP status {s}"),
            Fail::Reset => write!(f, "connection reset by peer"),
            Fail::Timeout => write!(f, "timed out"),
            Fail::ShortRead => write!(f, "connection closed early"),
            Fail::Protocol(m) => write!(f, "bad HTTP response: {m}"),
            Fail::Io(k) => write!(f, "I/O: {k}"),
        }
    }
}

/// A short, stable name for a rustls error: the variant, and for alerts, certificate
/// errors and misbehaviour the inner variant too (e.g. `AlertReceived(UnknownCA)`).
pub fn tls_category(e: &rustls::Error) -> String {
    fn head(s: String) -> String {
        s.split(['(', '{', ' '])
            .next()
            .unwrap_or_default()
            .to_string()
    }
    match e {
        rustls::Error::AlertReceived(a) => format!("AlertReceived({a:?})"),
        rustls::Error::InvalidCertificate(c) => {
            format!("InvalidCertificate({})", head(format!("{c:?}")))
        }
        rustls::Error::PeerMisbehaved(m) => format!("PeerMisbehaved({})", head(format!("{m:?}"))),
        other => head(format!("{other:?}")),
    }
}

/// A socket that counts the bytes that cross it (TLS records, i.e. the wire).
pub struct Counted {
    sock: TcpStream,
    /// Bytes written to the socket.
    pub sent: u64,
    /// Bytes read from the socket.
    pub recv: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.recv += n as u64;
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sock.write(buf)?;
        self.sent += n as u64;
        Ok(n)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.sock.write_vectored(bufs)?;
        self.sent += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// The resolved address.
    pub addr: SocketAddr,
    /// SNI and certificate name check.
    pub name: ServerName<'static>,
    /// Connect, read and write timeout.
    pub timeout: Duration,
}

/// What the handshake took.
pub struct Handshake {
    /// From TCP connect start to the TLS handshake being complete on the client side.
    pub time: Duration,
    /// The session was resumed from a ticket.
    pub resumed: bool,
}

/// A parsed response.
pub struct Response {
    /// The final (non-1xx) status.
    pub status: u16,
    /// Body bytes read.
    pub body: u64,
    /// From `t0` to the first plaintext byte of the response.
    pub ttfb: Duration,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// One established mTLS connection.
pub struct Conn {
    tls: ClientConnection,
    io: Counted,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Ciphertext read off the socket, not yet handed to rustls.
    nbuf: Vec<u8>,
    nstart: usize,
    nend: usize,
    /// The socket is in non-blocking mode (drain_ready): WouldBlock is not a timeout.
    nonblocking: bool,
    /// The handshake is done but no application byte has been read yet: a rustls error
    /// now is the server refusing us (TLS 1.3 sends that alert after the handshake).
    fresh: bool,
}

impl Conn {
    /// TCP connect and full TLS handshake.
    pub fn connect(t: &Target, cfg: &Arc<ClientConfig>) -> Result<(Conn, Handshake), Fail> {
        let t0 = Instant::now();
        let sock =
            TcpStream::connect_timeout(&t.addr, t.timeout).map_err(|e| Fail::Connect(e.kind()))?;
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(t.timeout))?;
            s.set_write_timeout(Some(t.timeout))
        };
        setup(&sock).map_err(|e| Fail::from_io(&e, true))?;
        let mut tls = ClientConnection::new(cfg.clone(), t.name.clone())
            .map_err(|e| Fail::TlsHandshake(tls_category(&e)))?;
        // We hand rustls whole chunks and flush right after: no partial writes.
        tls.set_buffer_limit(None);
        let mut io = Counted {
            sock,
            sent: 0,
            recv: 0,
        };
        while tls.is_handshaking() {
            tls.complete_io(&mut io)
                .map_err(|e| Fail::from_io(&e, true))?;
        }
        let mut c = Conn {
            tls,
            io,
            rbuf: vec![0u8; RBUF],
            rstart: 0,
            rend: 0,
            nbuf: vec![0u8; RBUF],
            nstart: 0,
            nend: 0,
            nonblocking: false,
            fresh: true,
        };
        c.flush().map_err(|e| Fail::from_io(&e, true))?;
        let hs = Handshake {
            time: t0.elapsed(),
            resumed: c.tls.handshake_kind() == Some(HandshakeKind::Resumed),
        };
        Ok((c, hs))
    }

    /// Wire bytes (sent, received) so far.
    pub fn wire(&self) -> (u64, u64) {
        (self.io.sent, self.io.recv)
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.io)?;
        }
        Ok(())
    }

    fn fail(&self, e: &io::Error) -> Fail {
        Fail::from_io(e, self.fresh)
    }

    /// Encrypt and send `data`.
    pub fn send(&mut self, data: &[u8]) -> Result<(), Fail> {
        let r = self.tls.writer().write_all(data);
        r.map_err(|e| self.fail(&e))?;
        self.flush().map_err(|e| self.fail(&e))
    }

    /// Hand rustls more ciphertext and process it. The socket is read in big gulps into
    /// `nbuf` and fed from there: rustls' `read_tls` takes at most what fits its deframer
    /// buffer (one 18 KiB record at most, and only 4 KiB more per call after that buffer
    /// has shrunk), so reading the socket through it would cost a syscall per few KiB and
    /// make the client, not the server, the bottleneck. From a slice that limit costs
    /// only a function call; rustls copies what it takes either way.
    /// Ok(false): nothing to read right now (non-blocking socket).
    fn pump(&mut self) -> io::Result<bool> {
        if self.nstart == self.nend {
            let n = match self.io.read(&mut self.nbuf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.nonblocking => {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            };
            self.nstart = 0;
            self.nend = n;
            if n == 0 {
                // Tell rustls about the EOF; its reader then says how the stream ended.
                self.tls.read_tls(&mut &[][..])?;
            }
        }
        if self.nstart < self.nend {
            let mut rd = &self.nbuf[self.nstart..self.nend];
            let k = self.tls.read_tls(&mut rd)?;
            self.nstart += k;
        }
        self.tls
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // Post-handshake messages (tickets, key updates) can ask for a reply.
        self.flush()?;
        Ok(true)
    }

    /// Read more plaintext into the buffer; Ok(0) is the server's close_notify.
    fn fill(&mut self) -> io::Result<usize> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        loop {
            // rbuf always has room here, so Ok(0) really is the end of the stream.
            match self.tls.reader().read(&mut self.rbuf[self.rend..]) {
                Ok(n) => {
                    self.rend += n;
                    if n > 0 {
                        self.fresh = false;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.pump()?;
        }
    }

    /// Take whatever plaintext has already arrived without blocking; returns the bytes
    /// taken (discarded). Lets a writer keep an echoing upstream from stalling.
    pub fn drain_ready(&mut self) -> Result<u64, Fail> {
        let mut got = (self.rend - self.rstart) as u64;
        self.rstart = 0;
        self.rend = 0;
        self.io
            .sock
            .set_nonblocking(true)
            .map_err(|e| self.fail(&e))?;
        self.nonblocking = true;
        let r = (|| -> io::Result<()> {
            loop {
                match self.tls.reader().read(&mut self.rbuf) {
                    // End of stream: left for the closing read to see.
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        self.fresh = false;
                        got += n as u64;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
                if !self.pump()? {
                    return Ok(());
                }
            }
        })();
        self.nonblocking = false;
        let back = self.io.sock.set_nonblocking(false);
        r.and(back).map_err(|e| self.fail(&e))?;
        Ok(got)
    }

    /// Read plaintext until `limit` bytes or the end of the stream; returns (bytes, time
    /// of the first byte after `t0`). A TCP close without close_notify counts as an end.
    pub fn read_stream(
        &mut self,
        limit: u64,
        t0: Instant,
    ) -> Result<(u64, Option<Duration>), Fail> {
        let mut got = 0u64;
        let mut first = None;
        while got < limit {
            match self.discard(limit - got) {
                Ok(0) => break,
                Ok(n) => {
                    first.get_or_insert_with(|| t0.elapsed());
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(self.fail(&e)),
            }
        }
        Ok((got, first))
    }

    /// Send close_notify; with `drain`, read (and discard) until the server ends the
    /// connection, which is when its side of the books is closed too (and when TLS 1.3
    /// session tickets and a late refusal have arrived). Returns plaintext bytes drained.
    pub fn close(mut self, drain: bool) -> Result<(u64, u64, u64), Fail> {
        self.tls.send_close_notify();
        let r = self.flush().map_err(|e| self.fail(&e));
        let mut got = 0u64;
        let r = r.and_then(|()| {
            if drain {
                got = self.read_stream(u64::MAX, Instant::now())?.0;
            }
            Ok(())
        });
        let _ = self.io.sock.shutdown(Shutdown::Both);
        r.map(|()| (got, self.io.sent, self.io.recv))
    }

    /// Read one HTTP/1.1 response (1xx skipped). `t0` is when the request started.
    pub fn read_response(&mut self, t0: Instant, head_only: bool) -> Result<Response, Fail> {
        let mut ttfb = None;
        loop {
            let (status, len, chunked, close) = loop {
                if self.rend > self.rstart {
                    ttfb.get_or_insert_with(|| t0.elapsed());
                }
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut headers);
                match r.parse(&self.rbuf[self.rstart..self.rend]) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = r.code.unwrap_or(0);
                        let mut len = None;
                        let mut chunked = false;
                        let mut close = false;
                        for h in r.headers.iter() {
                            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                            if h.name.eq_ignore_ascii_case("content-length") {
                                len = Some(v.parse::<u64>().map_err(|_| {
                                    Fail::Protocol(format!("bad content-length {v:?}"))
                                })?);
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                chunked = v.to_ascii_lowercase().contains("chunked");
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                close = v.eq_ignore_ascii_case("close");
                            }
                        }
                        self.rstart += n;
                        break (status, len, chunked, close);
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.rend - self.rstart >= MAX_HEAD {
                            return Err(Fail::Protocol("response head over 64 KiB".into()));
                        }
                        match self.fill() {
                            Ok(0) => return Err(Fail::ShortRead),
                            Ok(_) => {}
                            Err(e) => return Err(self.fail(&e)),
                        }
                    }
                    Err(e) => return Err(Fail::Protocol(e.to_string())),
                }
            };
            if (100..200).contains(&status) {
                continue;
            }
            let ttfb = ttfb.unwrap_or_else(|| t0.elapsed());
            let body = if head_only || status == 204 || status == 304 {
                0
            } else if chunked {
                self.chunked_body()?
            } else if let Some(len) = len {
                self.skip(len)?;
                len
            } else {
                // Delimited by the end of the connection.
                let (n, _) = self.read_stream(u64::MAX, t0)?;
                n
            };
            return Ok(Response {
                status,
                body,
                ttfb,
                close: close || (!chunked && len.is_none()),
            });
        }
    }

    /// Consume up to `max` (> 0) plaintext bytes: buffered ones first, then straight
    /// from rustls' buffer without copying them out. Ok(0) is the server's close_notify.
    fn discard(&mut self, max: u64) -> io::Result<u64> {
        let buffered = (self.rend - self.rstart) as u64;
        if buffered > 0 {
            let k = buffered.min(max);
            self.rstart += k as usize;
            return Ok(k);
        }
        loop {
            let mut r = self.tls.reader();
            let avail = r.fill_buf().map(|b| b.len());
            match avail {
                Ok(n) => {
                    let k = (n as u64).min(max);
                    r.consume(k as usize);
                    if k > 0 {
                        self.fresh = false;
                    }
                    return Ok(k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.pump()?;
        }
    }

    /// Consume exactly `n` body bytes.
    fn skip(&mut self, mut n: u64) -> Result<(), Fail> {
        while n > 0 {
            match self.discard(n) {
                Ok(0) => return Err(Fail::ShortRead),
                Ok(k) => n -= k,
                Err(e) => return Err(self.fail(&e)),
            }
        }
        Ok(())
    }

    /// One CRLF-terminated line (without the CRLF), as a String.
    fn line(&mut self) -> Result<String, Fail> {
        loop {
            let have = &self.rbuf[self.rstart..self.rend];
            if let Some(i) = have.windows(2).position(|w| w == b"\r\n") {
                let s = String::from_utf8_lossy(&have[..i]).into_owned();
                self.rstart += i + 2;
                return Ok(s);
            }
            if have.len() >= MAX_HEAD {
                return Err(Fail::Protocol("chunk line too long".into()));
            }
            match self.fill() {
                Ok(0) => return Err(Fail::ShortRead),
                Ok(_) => {}
                Err(e) => return Err(self.fail(&e)),
            }
        }
    }

    fn chunked_body(&mut self) -> Result<u64, Fail> {
        let mut total = 0u64;
        loop {
            let l = self.line()?;
            let size = l.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| Fail::Protocol(format!("bad chunk size {l:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.line()?.is_empty() {}
                return Ok(total);
            }
            self.skip(size)?;
            total += size;
            if !self.line()?.is_empty() {
                return Err(Fail::Protocol("chunk not followed by CRLF".into()));
            }
        }
    }
}
