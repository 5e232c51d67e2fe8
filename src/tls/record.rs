//! The TLS 1.3 record layer after the handshake, run by lakegate itself so records are
//! opened where the bytes landed.
//!
//! rustls 0.23's unbuffered API decrypts in place but then hands each record's payload
//! over through an owned chunk (an allocation and a copy per record) before we copy it
//! into the caller's plaintext buffer. Once the handshake is done (and the tickets are
//! out), [`crate::tls::conn::TlsConn`] turns the rustls connection into a
//! [`rustls::kernel::KernelConnection`], which keeps only the key schedule, and this
//! layer does the rest with aws-lc-rs AEAD keys: each record is opened in the receive
//! buffer and its content copied once, into the plaintext buffer; no allocation per
//! record. Sending seals in the outgoing buffer, as rustls did.
//!
//! What RFC 8446 section 5 asks of a receiver, and what this layer does:
//! - every record is `application_data` on the outside (legacy version ignored, as the
//!   RFC says, though it is authenticated as part of the header); a ciphertext over
//!   2^14 + 256 bytes is `record_overflow`; one that does not open is `bad_record_mac`;
//! - the inner type is the last non-zero byte (zero padding is stripped); plaintext
//!   over 2^14 bytes is `record_overflow`; all-zero is `unexpected_message`;
//! - handshake records after the handshake may carry only `KeyUpdate`, which must end
//!   its record; a message split across records is refused (a client has no reason to
//!   fragment a 5-byte message, and refusing keeps no state between reads);
//! - `close_notify` ends the input (later records are ignored); `user_canceled` is a
//!   warning; any other alert is fatal.
//!
//! Keys: nonce = IV xor the 64-bit record sequence, the sequence counted here and never
//! reused (a new key starts at 0). aws-lc-rs's `TlsRecordSealingKey` would check that
//! too, but it takes its first nonce as sequence 0, while ours starts after the session
//! tickets rustls already sealed; so a plain AEAD key with our own counter. Before a
//! send key reaches the suite's confidentiality limit (2^24 records for AES-128-GCM in
//! rustls's table) we send a `KeyUpdate` and move on. The limit protects what the
//! sender encrypts, and rustls peers send their KeyUpdate at (not before) the limit, so
//! a receiving key is refused only when its 64-bit sequence would wrap. A peer's
//! `update_requested` is answered before our next record, as the RFC requires ("prior
//! to sending its next Application Data record").
//!
//! The layer is generic over where new secrets come from ([`KeySchedule`]), so unit
//! tests and the fuzz target drive it without a handshake.

use std::ops::Range;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::ConnectionTrafficSecrets;

use crate::tls::conn::{OutBuf, Progress, TlsError};

/// Record content types (RFC 8446 section 5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message type of KeyUpdate.
const KEY_UPDATE: u8 = 24;

/// Largest plaintext in one record, and the ciphertext expansion TLS 1.3 allows.
pub const MAX_PLAINTEXT: usize = 1 << 14;
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 5;

/// Alert descriptions we send or name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum AlertDescription {
    CloseNotify = 0,
    UnexpectedMessage = 10,
    BadRecordMac = 20,
    RecordOverflow = 22,
    IllegalParameter = 47,
    DecodeError = 50,
    InternalError = 80,
    UserCanceled = 90,
}

/// Why the record layer gave up on the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A record did not open (wrong key, sequence, or tampered bytes).
    #[error("record does not authenticate")]
    BadRecordMac,
    /// A ciphertext over 2^14 + 256 bytes or a plaintext over 2^14.
    #[error("record over the size limit")]
    RecordOverflow,
    /// Something other than application data, alerts or one KeyUpdate per record.
    #[error("unexpected message after the handshake")]
    UnexpectedMessage,
    /// An alert or KeyUpdate of the wrong length.
    #[error("malformed alert or handshake message")]
    DecodeError,
    /// A KeyUpdate request value other than 0 or 1.
    #[error("KeyUpdate with an unknown request value")]
    IllegalParameter,
    /// The peer's alert (its description) ended the connection.
    #[error("peer sent fatal alert {0}")]
    PeerAlert(u8),
    /// The peer's record sequence would wrap.
    #[error("peer's record sequence would wrap")]
    PeerKeyExhausted,
    /// rustls could not give the next traffic secret, or a key could not be made.
    #[error("new traffic secrets unavailable")]
    KeySchedule,
}

impl RecordError {
    /// The alert we owe the peer for this error, if any.
    fn alert(self) -> Option<AlertDescription> {
        Some(match self {
            RecordError::BadRecordMac => AlertDescription::BadRecordMac,
            RecordError::RecordOverflow => AlertDescription::RecordOverflow,
            RecordError::UnexpectedMessage => AlertDescription::UnexpectedMessage,
            RecordError::DecodeError => AlertDescription::DecodeError,
            RecordError::IllegalParameter => AlertDescription::IllegalParameter,
            RecordError::PeerKeyExhausted | RecordError::KeySchedule => {
                AlertDescription::InternalError
            }
            RecordError::PeerAlert(_) => return None,
        })
    }
}

/// Where the next traffic secrets come from: rustls's key schedule in production.
pub trait KeySchedule {
    /// The peer's next secret (after it sent KeyUpdate).
    fn next_rx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError>;
    /// Our next secret (after we sent KeyUpdate).
    fn next_tx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError>;
}

impl<D> KeySchedule for rustls::kernel::KernelConnection<D> {
    fn next_rx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError> {
        self.update_rx_secret()
            .map(|(_, s)| s)
            .map_err(|_| RecordError::KeySchedule)
    }
    fn next_tx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError> {
        self.update_tx_secret()
            .map(|(_, s)| s)
            .map_err(|_| RecordError::KeySchedule)
    }
}

/// One direction's key, IV and record sequence.
struct Keys {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    /// Records this key may protect.
    limit: u64,
}

impl Keys {
    fn new(secrets: &ConnectionTrafficSecrets, seq: u64, limit: u64) -> Result<Keys, RecordError> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(RecordError::KeySchedule),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| RecordError::KeySchedule)?;
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::KeySchedule)?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
            limit,
        })
    }

    /// The nonce of the next record: the IV xor the sequence number (RFC 8446 5.3).
    /// None once the key has protected `limit` records.
    fn next_nonce(&mut self) -> Option<Nonce> {
        if self.seq >= self.limit {
            return None;
        }
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Some(Nonce::assume_unique_for_key(n))
    }
}

/// The record layer of an established TLS 1.3 connection.
pub struct RecordLayer<K> {
    schedule: K,
    rx: Keys,
    tx: Keys,
    /// Records a key may protect (the suite's confidentiality limit).
    limit: u64,
    /// The peer asked for our KeyUpdate; sent before our next record.
    owe_key_update: bool,
    peer_closed: bool,
    sent_close: bool,
    failed: bool,
}

impl<K: KeySchedule> RecordLayer<K> {
    /// A layer taking over at `rx_seq` / `tx_seq` (the records rustls already
    /// protected under these secrets), each key good for `limit` records.
    pub fn new(
        schedule: K,
        rx: (u64, &ConnectionTrafficSecrets),
        tx: (u64, &ConnectionTrafficSecrets),
        limit: u64,
    ) -> Result<Self, RecordError> {
        // One record of every key is kept for the KeyUpdate that retires it, and a
        // fresh key must fit a whole batch of slots.
        let limit = limit.max(slots::COUNT as u64 + 1);
        Ok(RecordLayer {
            schedule,
            rx: Keys::new(rx.1, rx.0, u64::MAX)?,
            tx: Keys::new(tx.1, tx.0, limit)?,
            limit,
            owe_key_update: false,
            peer_closed: false,
            sent_close: false,
            failed: false,
        })
    }

    /// Whether the peer has sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Lower the records per send key (tests): the current key too.
    #[cfg(test)]
    pub(crate) fn set_send_key_limit(&mut self, n: u64) {
        self.limit = n.max(slots::COUNT as u64 + 1);
        self.tx.limit = self.tx.seq + self.limit;
    }

    /// Open the complete records at the front of `incoming` (which starts on a record
    /// boundary) in place; application data is appended to `plain_out`, alerts we owe
    /// to `tls_out`. A partial record is left unconsumed.
    pub fn open(
        &mut self,
        incoming: &mut [u8],
        tls_out: &mut OutBuf,
        plain_out: &mut OutBuf,
    ) -> Result<Progress, TlsError> {
        if self.failed {
            return Err(TlsError::Closed);
        }
        let mut p = Progress::default();
        match self.open_inner(incoming, plain_out, &mut p) {
            Ok(()) => Ok(p),
            Err(e) => {
                self.failed = true;
                if let Some(alert) = e.alert() {
                    // Best effort: the peer learns why if the shell still sends.
                    let _ = self.seal_record(ALERT, &[2, alert as u8], tls_out);
                }
                Err(TlsError::Record(e))
            }
        }
    }

    fn open_inner(
        &mut self,
        incoming: &mut [u8],
        plain_out: &mut OutBuf,
        p: &mut Progress,
    ) -> Result<(), RecordError> {
        loop {
            if self.peer_closed {
                // RFC 8446 6.1: data after close_notify is ignored.
                p.consumed = complete_len(incoming, p.consumed);
                p.peer_closed = true;
                return Ok(());
            }
            let Some(h) = incoming.get(p.consumed..p.consumed + HEADER_LEN) else {
                return Ok(());
            };
            let header: [u8; HEADER_LEN] = [h[0], h[1], h[2], h[3], h[4]];
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != APPLICATION_DATA {
                // change_cipher_spec is dropped only until the peer's Finished (RFC 8446
                // 5); plaintext alerts and handshakes are too late now.
                return Err(RecordError::UnexpectedMessage);
            }
            if len > MAX_CIPHERTEXT {
                return Err(RecordError::RecordOverflow);
            }
            let start = p.consumed + HEADER_LEN;
            let Some(body) = incoming.get_mut(start..start + len) else {
                return Ok(()); // partial: wait for the rest
            };
            let nonce = self.rx.next_nonce().ok_or(RecordError::PeerKeyExhausted)?;
            let inner = self
                .rx
                .key
                .open_in_place(nonce, Aad::from(header), body)
                .map_err(|_| RecordError::BadRecordMac)?;
            let (typ, content) = split_inner(inner)?;
            match typ {
                APPLICATION_DATA => {
                    plain_out.extend(content);
                    p.plaintext += content.len();
                }
                HANDSHAKE => {
                    let update_requested = parse_key_update(content)?;
                    // The rest of this buffer is under the peer's next key.
                    let s = self.schedule.next_rx()?;
                    self.rx = Keys::new(&s, 0, u64::MAX)?;
                    self.owe_key_update |= update_requested;
                }
                ALERT => {
                    let [level, desc] = content else {
                        return Err(RecordError::DecodeError);
                    };
                    let _ = level; // TLS 1.3 decides by description, not level.
                    match *desc {
                        d if d == AlertDescription::CloseNotify as u8 => {
                            self.peer_closed = true;
                        }
                        d if d == AlertDescription::UserCanceled as u8 => {}
                        d => return Err(RecordError::PeerAlert(d)),
                    }
                }
                _ => return Err(RecordError::UnexpectedMessage),
            }
            p.consumed = start + len;
            if self.peer_closed {
                p.peer_closed = true;
            }
        }
    }

    /// Seal `plain` into application-data records appended to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut OutBuf) -> Result<(), TlsError> {
        if self.sent_close || self.failed {
            return Err(TlsError::Closed);
        }
        for chunk in plain.chunks(MAX_PLAINTEXT) {
            self.seal_record(APPLICATION_DATA, chunk, out)
                .map_err(TlsError::Record)?;
        }
        Ok(())
    }

    /// Queue close_notify (idempotent).
    pub fn close_notify(&mut self, out: &mut OutBuf) -> Result<(), TlsError> {
        if self.sent_close {
            return Ok(());
        }
        self.seal_record(ALERT, &[1, AlertDescription::CloseNotify as u8], out)
            .map_err(TlsError::Record)?;
        self.sent_close = true;
        Ok(())
    }

    /// One record of inner type `typ`; first any KeyUpdate we owe or need.
    fn seal_record(
        &mut self,
        typ: u8,
        content: &[u8],
        out: &mut OutBuf,
    ) -> Result<(), RecordError> {
        let retire = self.tx.seq + 1 >= self.tx.limit;
        if self.owe_key_update || retire {
            self.owe_key_update = false;
            self.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
            let s = self.schedule.next_tx()?;
            self.tx = Keys::new(&s, 0, self.limit)?;
        }
        self.seal_one(typ, content, out)
    }

    fn seal_one(&mut self, typ: u8, content: &[u8], out: &mut OutBuf) -> Result<(), RecordError> {
        let room = out.spare(HEADER_LEN + content.len() + 1 + TAG_LEN);
        room[HEADER_LEN..HEADER_LEN + content.len()].copy_from_slice(content);
        out.filled += self.seal_in_place(typ, room, content.len())?;
        Ok(())
    }

    /// Seal the record whose `len` content bytes already sit at `room[HEADER_LEN..]`:
    /// the header, the inner type and the tag are written around them. Returns the
    /// record's length.
    fn seal_in_place(
        &mut self,
        typ: u8,
        room: &mut [u8],
        len: usize,
    ) -> Result<usize, RecordError> {
        debug_assert!(len <= MAX_PLAINTEXT);
        let body = len + 1 + TAG_LEN;
        let nonce = self.tx.next_nonce().ok_or(RecordError::KeySchedule)?;
        let room = &mut room[..HEADER_LEN + body];
        let wire_len = (body as u16).to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, wire_len[0], wire_len[1]];
        room[..HEADER_LEN].copy_from_slice(&header);
        let (inner, tag_room) = room[HEADER_LEN..].split_at_mut(len + 1);
        inner[len] = typ;
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), inner)
            .map_err(|_| RecordError::KeySchedule)?;
        tag_room.copy_from_slice(tag.as_ref());
        Ok(HEADER_LEN + body)
    }

    /// Seal, where they were read, the `n` plaintext bytes a sender put into the record
    /// slots of `buf` (see [`slots`]: slot `i` holds bytes `i * 2^14 ..`, filled in
    /// order as one `readv` fills them; whatever else a slot holds, from a pooled
    /// buffer's earlier use, is sealed and sent if `n` says so). Returns the
    /// range of `buf` to send: the records lie back to back (a full slot is exactly one
    /// record long), after the KeyUpdate record when one was due.
    pub fn seal_slots(&mut self, buf: &mut [u8], n: usize) -> Result<Range<usize>, TlsError> {
        if self.sent_close || self.failed {
            return Err(TlsError::Closed);
        }
        assert!(buf.len() >= slots::LEN && n <= slots::COUNT * MAX_PLAINTEXT);
        let records = n.div_ceil(MAX_PLAINTEXT);
        let mut start = slots::KEY_UPDATE_ROOM;
        // As `seal_record`, once for the batch: every record of it must fit the key.
        if self.owe_key_update || self.tx.seq + records as u64 >= self.tx.limit {
            self.owe_key_update = false;
            let msg = [KEY_UPDATE, 0, 0, 1, 0];
            let room = &mut buf[..slots::KEY_UPDATE_ROOM];
            room[HEADER_LEN..HEADER_LEN + msg.len()].copy_from_slice(&msg);
            self.seal_in_place(HANDSHAKE, room, msg.len())
                .map_err(TlsError::Record)?;
            let s = self.schedule.next_tx().map_err(TlsError::Record)?;
            self.tx = Keys::new(&s, 0, self.limit).map_err(TlsError::Record)?;
            start = 0;
        }
        let mut end = start;
        for i in 0..records {
            let len = (n - i * MAX_PLAINTEXT).min(MAX_PLAINTEXT);
            let at = slots::KEY_UPDATE_ROOM + i * slots::STRIDE;
            end = at
                + self
                    .seal_in_place(APPLICATION_DATA, &mut buf[at..], len)
                    .map_err(TlsError::Record)?;
        }
        Ok(start..end)
    }
}

/// A buffer laid out so a sender reads plaintext where it will be sealed (the forward
/// relay reads its upstream into these with one `readv`): room for one KeyUpdate
/// record, then [`COUNT`](slots::COUNT) slots of one maximal record each.
pub mod slots {
    use super::{HEADER_LEN, MAX_PLAINTEXT, TAG_LEN};
    use std::ops::Range;

    /// A KeyUpdate record: header, the 5-byte message, its inner type, the tag.
    pub const KEY_UPDATE_ROOM: usize = HEADER_LEN + 5 + 1 + TAG_LEN;
    /// One maximal record: header, 2^14 bytes of content, the inner type, the tag.
    pub const STRIDE: usize = HEADER_LEN + MAX_PLAINTEXT + 1 + TAG_LEN;
    /// Slots per buffer: 128 KiB of plaintext per read. Per-read costs (the ring
    /// round trip, the wakeups on both sockets) dominate a relay. In interleaved A/B
    /// downloads (CPU-s/GiB): 64 KiB per read 0.77-0.80 against 128 KiB 0.62-0.685;
    /// in a noisier second set, 128 KiB 0.675-0.815 against 256 KiB 0.53-0.615.
    /// 128 KiB keeps an active download at what the copying path held (two 65 KiB
    /// buffers).
    pub const COUNT: usize = 8;
    /// The bytes a slotted buffer needs.
    pub const LEN: usize = KEY_UPDATE_ROOM + COUNT * STRIDE;

    /// Where slot `i`'s plaintext goes.
    pub fn room(i: usize) -> Range<usize> {
        let at = KEY_UPDATE_ROOM + i * STRIDE + HEADER_LEN;
        at..at + MAX_PLAINTEXT
    }
}

/// The inner plaintext's content type and content: the last non-zero byte is the type,
/// the zeros after it are padding.
pub fn split_inner(inner: &[u8]) -> Result<(u8, &[u8]), RecordError> {
    let at = inner
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(RecordError::UnexpectedMessage)?;
    if at > MAX_PLAINTEXT {
        return Err(RecordError::RecordOverflow);
    }
    Ok((inner[at], &inner[..at]))
}

/// Parse the handshake content of a record after the handshake: exactly one whole
/// KeyUpdate, which must end the record (RFC 8446 5.1: the key changes after it).
/// Returns whether the peer asked for our KeyUpdate.
pub fn parse_key_update(content: &[u8]) -> Result<bool, RecordError> {
    match content {
        [KEY_UPDATE, 0, 0, 1, request] => match request {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::IllegalParameter),
        },
        [KEY_UPDATE, a, b, c, ..] if [*a, *b, *c] != [0, 0, 1] => Err(RecordError::DecodeError),
        // Another message, a fragment, or a KeyUpdate with more after it.
        _ => Err(RecordError::UnexpectedMessage),
    }
}

/// End of the complete records of `buf` from `from` on.
fn complete_len(buf: &[u8], mut from: usize) -> usize {
    while let Some(h) = buf.get(from..from + HEADER_LEN) {
        let len = HEADER_LEN + usize::from(u16::from_be_bytes([h[3], h[4]]));
        if from + len > buf.len() {
            break;
        }
        from += len;
    }
    from
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_stripped_and_all_zero_is_refused() {
        assert_eq!(split_inner(b"abc\x17\0\0\0"), Ok((23, &b"abc"[..])));
        assert_eq!(split_inner(b"\x15"), Ok((21, &b""[..])));
        assert_eq!(split_inner(b"\0\0\0"), Err(RecordError::UnexpectedMessage));
        assert_eq!(split_inner(b""), Err(RecordError::UnexpectedMessage));
        let mut big = vec![1u8; MAX_PLAINTEXT + 1];
        big.push(23);
        assert_eq!(split_inner(&big), Err(RecordError::RecordOverflow));
    }

    #[test]
    fn only_one_whole_key_update_that_ends_its_record_passes() {
        let ku = |r| [KEY_UPDATE, 0, 0, 1, r];
        assert_eq!(parse_key_update(&ku(0)), Ok(false));
        assert_eq!(parse_key_update(&ku(1)), Ok(true));
        assert_eq!(parse_key_update(&ku(2)), Err(RecordError::IllegalParameter));
        // Two in one record: the first changes the key, so it must have ended it.
        let two = [ku(0), ku(0)].concat();
        assert_eq!(parse_key_update(&two), Err(RecordError::UnexpectedMessage));
        // Fragments, other messages, bad lengths.
        for bad in [&ku(0)[..3], &ku(0)[..4], &[4, 0, 0, 1, 0][..], &[][..]] {
            assert_eq!(
                parse_key_update(bad),
                Err(RecordError::UnexpectedMessage),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_key_update(&[KEY_UPDATE, 0, 0, 2, 0, 0]),
            Err(RecordError::DecodeError)
        );
    }
}
