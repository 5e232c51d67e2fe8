//! The one rustls adapter: a sans-IO server connection over rustls 0.23's unbuffered API.
//!
//! Everything else in lakegate talks TLS through [`TlsConn`], so a move to another rustls
//! API (0.24 drops the unbuffered one) touches only this file. It owns no socket: the
//! caller hands in received bytes and gets back bytes to transmit and plaintext.
//!
//! rustls runs the handshake. After it, a TLS 1.3 connection is handed to lakegate's own
//! record layer ([`crate::tls::record`]) through rustls's `KernelConnection`, which keeps
//! the key schedule for KeyUpdate: records are opened in place in the caller's
//! `incoming` buffer and their content copied once, into the caller's plaintext buffer,
//! with no allocation per record (rustls 0.23's `ReadTraffic` hands each payload over
//! through an owned chunk first). TLS 1.2 (opt-in) stays on rustls. Encryption writes
//! straight into the caller's outgoing buffer either way.

use std::ops::Range;
use std::sync::Arc;

use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{HandshakeKind, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::CertificateDer;

use crate::tls::record::{RecordError, RecordLayer};
use crate::tls::resume::{self, ResumeRefusal, TicketCtx};

/// Room for one maximal TLS record (16 KiB payload + header + tag + padding slack).
pub const MAX_RECORD: usize = 16 * 1024 + 256;

/// A growable output region with a separate fill mark, so encryption never pays for
/// zeroing (the Vec is initialised once, when the buffer is first made).
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Backing storage; `buf.len()` is the capacity in use.
    pub buf: Vec<u8>,
    /// Bytes filled from the start.
    pub filled: usize,
}

impl OutBuf {
    /// A buffer with `cap` initialised bytes.
    pub fn with_capacity(cap: usize) -> Self {
        OutBuf {
            buf: vec![0; cap],
            filled: 0,
        }
    }

    /// Wrap an initialised Vec (as lent by the engine's pool).
    pub fn from_vec(buf: Vec<u8>) -> Self {
        OutBuf { buf, filled: 0 }
    }

    /// Bytes filled.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Whether nothing is filled.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Spare room after the fill mark, grown to at least `need` bytes.
    pub(crate) fn spare(&mut self, need: usize) -> &mut [u8] {
        if self.buf.len() - self.filled < need {
            self.buf.resize(self.filled + need, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Append bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.spare(data.len())[..data.len()].copy_from_slice(data);
        self.filled += data.len();
    }

    /// Forget the filled bytes.
    pub fn clear(&mut self) {
        self.filled = 0;
    }
}

/// What one call to [`TlsConn::handle_received`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes at the front of `incoming` that are consumed and must be discarded.
    pub consumed: usize,
    /// Plaintext bytes appended to the caller's plaintext buffer.
    pub plaintext: usize,
    /// The handshake completed during this call.
    pub handshake_completed: bool,
    /// The peer sent close_notify: no more plaintext will come.
    pub peer_closed: bool,
}

/// A failure of the TLS connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls rejected the peer or its data; alerts for the peer are already queued.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Traffic keys are exhausted (more than 2^64 records): the connection must end.
    #[error("tls: encrypter exhausted")]
    Exhausted,
    /// The peer split a post-handshake message across records (see `handle_received`).
    #[error("tls: fragmented post-handshake message")]
    FragmentedPostHandshake,
    /// Asked to send after we already closed.
    #[error("tls: connection closed")]
    Closed,
    /// lakegate's TLS 1.3 record layer refused the peer's records.
    #[error("tls: {0}")]
    Record(#[from] RecordError),
}

/// Facts of an established session, for identity, logs and metrics.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: &'static str,
    /// IANA suite name, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub suite: String,
    /// Whether the session was resumed from a ticket.
    pub resumed: bool,
}

/// Who carries the records.
enum State {
    /// The handshake, and TLS 1.2 throughout.
    /// Boxed, so an established connection does not keep rustls's 1 KiB inline.
    Rustls(Box<UnbufferedServerConnection>),
    /// An established TLS 1.3 session on lakegate's record layer.
    Records(Box<Established>),
    /// The hand-over failed; nothing more is carried.
    Gone,
}

/// What is kept of an established session once rustls keeps only the key schedule.
struct Established {
    layer: RecordLayer<KernelConnection<ServerConnectionData>>,
    certs: Vec<CertificateDer<'static>>,
    info: SessionInfo,
}

/// A server-side TLS connection with no I/O: bytes in, bytes and plaintext out.
pub struct TlsConn {
    state: State,
    handshaking: bool,
    peer_closed: bool,
    sent_close: bool,
    /// Set once `handle_received` failed: rustls may still hold offsets into a buffer
    /// it will never see again, so it must not be driven again (it would panic).
    failed: bool,
    /// What the ticketer knows of this connection (see [`crate::tls::resume`]).
    ticket: TicketCtx,
    /// The config lets rustls hand over the traffic secrets (`enable_secret_extraction`),
    /// so the record layer can take over after the handshake; else rustls keeps it.
    own_records: bool,
}

impl TlsConn {
    /// Start a server connection under `config`.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let own_records = config.enable_secret_extraction;
        Ok(TlsConn {
            own_records,
            state: State::Rustls(Box::new(UnbufferedServerConnection::new(config)?)),
            handshaking: true,
            peer_closed: false,
            sent_close: false,
            failed: false,
            ticket: TicketCtx::default(),
        })
    }

    /// The ticket this connection offered that was refused, and why (for the metric).
    pub fn resumption_refused(&self) -> Option<ResumeRefusal> {
        self.ticket.refused
    }

    /// Unix seconds of the full handshake that authenticated this client, once known:
    /// the original one for a resumed session.
    pub fn auth_time(&self) -> Option<u64> {
        self.ticket.auth_time
    }

    /// Run `f` (a call into rustls) with this connection's ticket context installed on
    /// the thread, where the ticketer finds it.
    fn in_ticket_ctx<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        resume::enter(self.ticket);
        let r = f(self);
        if let Some(ctx) = resume::leave() {
            self.ticket = ctx;
        }
        // A ticket may have been opened and then passed over (another suite, a bad
        // binder): only a resumed handshake keeps the ticket's authentication time.
        if let State::Rustls(conn) = &self.state {
            if conn
                .handshake_kind()
                .is_some_and(|k| k != HandshakeKind::Resumed)
            {
                self.ticket.auth_time = None;
            }
        }
        r
    }

    /// The rustls connection while it carries the records.
    fn rustls(&mut self) -> Result<&mut UnbufferedServerConnection, TlsError> {
        match &mut self.state {
            State::Rustls(c) => Ok(c),
            _ => Err(TlsError::Closed),
        }
    }

    /// Hand an established TLS 1.3 session to lakegate's record layer. rustls is at
    /// `WriteTraffic` with its tickets already encoded into our output, which is what
    /// `dangerous_into_kernel_connection` needs.
    fn hand_over_records(&mut self) -> Result<(), TlsError> {
        let State::Rustls(conn) = std::mem::replace(&mut self.state, State::Gone) else {
            return Ok(());
        };
        let info = session_info_of(&conn);
        let certs = conn
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
        let limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            #[allow(unreachable_patterns)]
            _ => return Err(TlsError::Closed),
        };
        let layer = RecordLayer::new(
            kernel,
            (secrets.rx.0, &secrets.rx.1),
            (secrets.tx.0, &secrets.tx.1),
            limit,
        )?;
        self.state = State::Records(Box::new(Established { layer, certs, info }));
        Ok(())
    }

    /// Whether the handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    /// Whether the peer has sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Process the TLS bytes in `incoming` (starting on a record boundary). Handshake and
    /// alert bytes to send are appended to `tls_out`, decrypted data to `plain_out`.
    /// Processes everything complete in `incoming`; a partial record is left unconsumed.
    pub fn handle_received(
        &mut self,
        incoming: &mut [u8],
        tls_out: &mut OutBuf,
        plain_out: &mut OutBuf,
    ) -> Result<Progress, TlsError> {
        if self.failed {
            return Err(TlsError::Closed);
        }
        let r = match &mut self.state {
            State::Records(e) => e.layer.open(incoming, tls_out, plain_out),
            State::Gone => Err(TlsError::Closed),
            State::Rustls(_) => {
                match self.in_ticket_ctx(|c| c.handle_received_inner(incoming, tls_out, plain_out))
                {
                    Ok(p)
                        if p.handshake_completed
                            && !p.peer_closed
                            && self.own_records
                            && self.is_tls13() =>
                    {
                        self.hand_over_records().map(|()| p)
                    }
                    r => r,
                }
            }
        };
        match &r {
            Ok(p) => self.peer_closed |= p.peer_closed,
            Err(_) => self.failed = true,
        }
        r
    }

    /// Whether lakegate's record layer carries this connection (tests).
    #[cfg(test)]
    pub(crate) fn on_own_records(&self) -> bool {
        matches!(self.state, State::Records(_))
    }

    /// Lower the records per send key, to see KeyUpdate without 2^24 records (tests).
    #[cfg(test)]
    pub(crate) fn set_send_key_limit(&mut self, n: u64) {
        if let State::Records(e) = &mut self.state {
            e.layer.set_send_key_limit(n);
        }
    }

    fn is_tls13(&self) -> bool {
        matches!(&self.state, State::Rustls(c)
            if c.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3))
    }

    fn handle_received_inner(
        &mut self,
        incoming: &mut [u8],
        tls_out: &mut OutBuf,
        plain_out: &mut OutBuf,
    ) -> Result<Progress, TlsError> {
        let mut p = Progress::default();
        loop {
            let UnbufferedStatus { discard, state } = self
                .rustls()?
                .process_tls_records(&mut incoming[p.consumed..]);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    // rustls queues a fatal alert for the peer: collect it so the shell can
                    // tell the client why (unknown_ca, certificate_required, ...). rustls
                    // must see the same buffer again, less what it discarded.
                    p.consumed += discard;
                    self.drain_alerts(&mut incoming[p.consumed..], tls_out);
                    return Err(e.into());
                }
            };
            let mut stop = false;
            match state {
                ConnectionState::ReadTraffic(mut rt) => {
                    while let Some(rec) = rt.next_record() {
                        let rec = rec?;
                        plain_out.extend(rec.payload);
                        p.plaintext += rec.payload.len();
                    }
                }
                ConnectionState::ReadEarlyData(mut ed) => {
                    // max_early_data_size = 0, so this never carries data; drain defensively.
                    while let Some(rec) = ed.next_record() {
                        rec?;
                    }
                }
                ConnectionState::EncodeTlsData(mut enc) => encode(&mut enc, tls_out)?,
                ConnectionState::TransmitTlsData(t) => {
                    // The shell transmits `tls_out` in order before anything encrypted
                    // later, so the data counts as sent from rustls's point of view.
                    t.done();
                }
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::WriteTraffic(_) => {
                    if self.handshaking {
                        self.handshaking = false;
                        p.handshake_completed = true;
                    }
                    stop = true;
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    p.peer_closed = true;
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    p.peer_closed = true;
                    stop = true;
                }
                _ => stop = true,
            }
            p.consumed += discard;
            if stop {
                if !self.handshaking && p.consumed < complete_records_len(incoming) {
                    // rustls is holding part of a handshake message split across records
                    // in our buffer. The writing direction drives rustls with an empty
                    // buffer, which is only sound when nothing is held, and after the
                    // handshake a client has no business fragmenting (KeyUpdate is 5
                    // bytes), so refuse it rather than juggle buffers for it.
                    return Err(TlsError::FragmentedPostHandshake);
                }
                return Ok(p);
            }
        }
    }

    fn drain_alerts(&mut self, rest: &mut [u8], tls_out: &mut OutBuf) {
        // The fatal alert is one queued message, handed out before rustls looks at the
        // input again; stop there, since a second pass would re-read the bad bytes.
        let State::Rustls(conn) = &mut self.state else {
            return;
        };
        let UnbufferedStatus { state, .. } = conn.process_tls_records(rest);
        if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
            let _ = encode(&mut enc, tls_out);
        }
    }

    /// Run the state machine with no input until it is ready for application data,
    /// flushing anything queued (key updates, tickets) into `tls_out` first, then hand
    /// the `WriteTraffic` state to `f`.
    fn with_write<R>(
        &mut self,
        tls_out: &mut OutBuf,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut OutBuf,
        ) -> Result<R, TlsError>,
    ) -> Result<R, TlsError> {
        if self.failed {
            return Err(TlsError::Closed);
        }
        self.in_ticket_ctx(|c| c.with_write_inner(tls_out, f))
    }

    fn with_write_inner<R>(
        &mut self,
        tls_out: &mut OutBuf,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut OutBuf,
        ) -> Result<R, TlsError>,
    ) -> Result<R, TlsError> {
        loop {
            let UnbufferedStatus { state, .. } = self.rustls()?.process_tls_records(&mut []);
            match state? {
                ConnectionState::EncodeTlsData(mut enc) => encode(&mut enc, tls_out)?,
                ConnectionState::TransmitTlsData(mut t) => {
                    if let Some(mut w) = t.may_encrypt_app_data() {
                        return f(&mut w, tls_out);
                    }
                    t.done();
                }
                ConnectionState::WriteTraffic(mut w) => return f(&mut w, tls_out),
                ConnectionState::PeerClosed => self.peer_closed = true,
                _ => return Err(TlsError::Closed),
            }
        }
    }

    /// Whether [`Self::seal_slots`] serves this connection: TLS 1.3 on lakegate's own
    /// record layer (a TLS 1.2 session stays on rustls and its copying path).
    pub fn seals_in_place(&self) -> bool {
        matches!(self.state, State::Records(_)) && !self.sent_close && !self.failed
    }

    /// Seal the `n` plaintext bytes a sender read into the record slots of `buf`
    /// ([`crate::tls::record::slots`]) where they are; returns the range of `buf` to
    /// send. Only while [`Self::seals_in_place`].
    pub fn seal_slots(&mut self, buf: &mut [u8], n: usize) -> Result<Range<usize>, TlsError> {
        if self.sent_close || self.failed {
            return Err(TlsError::Closed);
        }
        match &mut self.state {
            State::Records(e) => e.layer.seal_slots(buf, n),
            _ => Err(TlsError::Closed),
        }
    }

    /// Encrypt `plain` into TLS records appended to `tls_out`.
    pub fn encrypt(&mut self, plain: &[u8], tls_out: &mut OutBuf) -> Result<(), TlsError> {
        if self.sent_close || self.failed {
            return Err(TlsError::Closed);
        }
        if let State::Records(e) = &mut self.state {
            return e.layer.seal(plain, tls_out);
        }
        self.with_write(tls_out, |w, out| {
            // Worst case per 16 KiB record: 5 header + 1 content type + 16 tag; be generous.
            let need = plain.len() + (plain.len() / (16 * 1024) + 1) * 64;
            let room = out.spare(need);
            match w.encrypt(plain, room) {
                Ok(n) => {
                    out.filled += n;
                    Ok(())
                }
                Err(EncryptError::InsufficientSize(s)) => {
                    let room = out.spare(s.required_size);
                    let n = w.encrypt(plain, room).map_err(|_| TlsError::Exhausted)?;
                    out.filled += n;
                    Ok(())
                }
                Err(EncryptError::EncryptExhausted) => Err(TlsError::Exhausted),
            }
        })
    }

    /// Queue a close_notify alert into `tls_out` (idempotent).
    pub fn close_notify(&mut self, tls_out: &mut OutBuf) -> Result<(), TlsError> {
        if self.sent_close {
            return Ok(());
        }
        if let State::Records(e) = &mut self.state {
            e.layer.close_notify(tls_out)?;
            self.sent_close = true;
            return Ok(());
        }
        self.with_write(tls_out, |w, out| {
            let room = out.spare(64);
            let n = w
                .queue_close_notify(room)
                .map_err(|_| TlsError::Exhausted)?;
            out.filled += n;
            Ok(())
        })?;
        self.sent_close = true;
        Ok(())
    }

    /// The verified client certificate chain (leaf first); also present on resumption,
    /// since the ticket carries it.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match &self.state {
            State::Rustls(c) => c.peer_certificates(),
            State::Records(e) => Some(&e.certs[..]).filter(|c| !c.is_empty()),
            State::Gone => None,
        }
    }

    /// The client's chain, moved out where lakegate's record layer holds it (TLS 1.3;
    /// [`TlsConn::peer_certificates`] is empty afterwards), copied where rustls does.
    pub fn take_peer_certificates(&mut self) -> Vec<CertificateDer<'static>> {
        match &mut self.state {
            State::Rustls(c) => c.peer_certificates().map(<[_]>::to_vec).unwrap_or_default(),
            State::Records(e) => std::mem::take(&mut e.certs),
            State::Gone => Vec::new(),
        }
    }

    /// Version, suite and resumption of the established session.
    pub fn session_info(&self) -> SessionInfo {
        match &self.state {
            State::Rustls(c) => session_info_of(c),
            State::Records(e) => e.info.clone(),
            State::Gone => SessionInfo {
                version: "TLSv1.3",
                suite: String::new(),
                resumed: false,
            },
        }
    }
}

fn session_info_of(conn: &UnbufferedServerConnection) -> SessionInfo {
    SessionInfo {
        version: match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLSv1.3",
        },
        suite: conn
            .negotiated_cipher_suite()
            .map(|s| crate::tls::policy::suite_name(&s))
            .unwrap_or_default(),
        resumed: matches!(conn.handshake_kind(), Some(HandshakeKind::Resumed)),
    }
}

/// Length of the complete TLS records at the front of `buf` (5-byte header + payload).
fn complete_records_len(buf: &[u8]) -> usize {
    let mut off = 0;
    while let Some(h) = buf.get(off..off + 5) {
        let len = 5 + usize::from(u16::from_be_bytes([h[3], h[4]]));
        if off + len > buf.len() {
            break;
        }
        off += len;
    }
    off
}

fn encode(
    enc: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut OutBuf,
) -> Result<(), TlsError> {
    let room = out.spare(MAX_RECORD);
    match enc.encode(room) {
        Ok(n) => {
            out.filled += n;
            Ok(())
        }
        Err(EncodeError::InsufficientSize(s)) => {
            let room = out.spare(s.required_size);
            let n = enc.encode(room).map_err(|_| TlsError::Closed)?;
            out.filled += n;
            Ok(())
        }
        Err(EncodeError::AlreadyEncoded) => Ok(()),
    }
}
