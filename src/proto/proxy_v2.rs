//! PROXY protocol version 2 (HAProxy's `doc/proxy-protocol.txt`), sans-IO.
//!
//! Owns: the bytes of the binary v2 header that the `forward` backend writes before
//! the plaintext, carrying the client's addresses and what the TLS layer learned
//! (version, cipher, CN, verification result, optionally the DER leaf) plus lakegate's
//! SPIFFE TLV; and a strict decoder of the same format for tests, fuzzing and
//! upstream-side tooling.
//!
//! Must not touch: sockets, buffers owned by the engine, the runtime or the clock. The
//! encoder appends to a caller's `Vec`, the decoder reads a caller's slice; deciding
//! *whether* to send or accept a header is configuration, never auto-detection (spec
//! section 5). The version 1 text format is not implemented.
//!
//! Wire layout (all integers big-endian):
//!
//! ```text
//! 12 signature | ver_cmd 0x21 | fam 0x11 (TCP4) or 0x21 (TCP6) | len u16
//! src addr | dst addr | src port | dst port          (12 or 36 bytes)
//! TLV 0x20 PP2_TYPE_SSL: client u8 | verify u32 | sub-TLVs 0x21 version, 0x22 CN,
//!                        0x23 cipher, 0x28 client certificate (DER)
//! TLV 0xE0 lakegate SPIFFE ID (UTF-8)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The 12-byte v2 signature; it contains a NUL so must never be treated as a C string.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Length of the fixed part: signature, version/command, family, length.
pub const FIXED_LEN: usize = 16;
/// The longest header the 16-bit length field can describe.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + u16::MAX as usize;

/// Version 2, command PROXY: the connection is relayed on behalf of a client.
const VER_CMD_PROXY: u8 = 0x21;
/// Version 2, command LOCAL (health checks); decoded as unsupported, never sent.
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
/// TCP over IPv4 / IPv6: the only families lakegate emits.
const FAM_TCP4: u8 = 0x11;
const FAM_TCP6: u8 = 0x21;
const ADDR_LEN_V4: usize = 12;
const ADDR_LEN_V6: usize = 36;
/// A TLV's header: type u8, length u16.
const TLV_HEADER_LEN: usize = 3;
/// PP2_TYPE_SSL's fixed part: client u8, verify u32.
const SSL_FIXED_LEN: usize = 5;

/// Top-level TLV: CRC32c of the whole header (verified by [`decode`] when present).
pub const PP2_TYPE_CRC32C: u8 = 0x03;
/// Top-level TLV to be ignored (padding).
pub const PP2_TYPE_NOOP: u8 = 0x04;
/// Top-level TLV: TLS information, with sub-TLVs.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// SSL sub-TLV: the TLS version, US-ASCII (e.g. `TLSv1.3`).
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// SSL sub-TLV: the client certificate's subject CN, UTF-8.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// SSL sub-TLV: the cipher suite name, US-ASCII.
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// SSL sub-TLV: the client's DER leaf certificate (lakegate's assignment; sent only
/// when `proxy_protocol_client_cert` is on).
pub const PP2_SUBTYPE_SSL_CLIENT_CERT: u8 = 0x28;
/// Top-level TLV in the application range 0xE0..=0xEF: the client's SPIFFE ID, UTF-8.
pub const PP2_TYPE_LAKEGATE_SPIFFE: u8 = 0xE0;

/// `client` bit: the client connected over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// `client` bit: the client presented a certificate on this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// `client` bit: the client presented a certificate in this TLS session.
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// What the TLS layer knows about the client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsInfo<'a> {
    /// Protocol version as OpenSSL spells it, e.g. `"TLSv1.3"`.
    pub version: &'a str,
    /// IANA cipher suite name, e.g. `"TLS13_AES_128_GCM_SHA256"`.
    pub cipher: &'a str,
    /// Subject CN of the client certificate.
    pub cn: Option<&'a str>,
    /// The client's SPIFFE ID (sent as a top-level [`PP2_TYPE_LAKEGATE_SPIFFE`] TLV).
    pub spiffe: Option<&'a str>,
    /// The DER leaf, only when `proxy_protocol_client_cert` is on.
    pub client_cert: Option<&'a [u8]>,
    /// The client certificate chain was verified.
    pub verified: bool,
}

/// Everything one header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The client's address (the peer of the TLS connection).
    pub src: SocketAddr,
    /// The address the client connected to (lakegate's listener).
    pub dst: SocketAddr,
    /// TLS details; `None` sends no TLVs at all.
    pub tls: Option<TlsInfo<'a>>,
}

/// Why a header could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Addresses plus TLVs exceed the 65535 bytes the length field can describe
    /// (in practice: a huge client certificate with `proxy_protocol_client_cert`).
    #[error("PROXY v2 header body would be {len} bytes, over the 65535-byte limit")]
    TooLong {
        /// The body length that was needed.
        len: usize,
    },
}

/// Appends the v2 header for `h` to `out`. On error `out` is left unchanged.
///
/// Two IPv4 endpoints are sent as TCP over IPv4; any IPv6 endpoint makes both IPv6,
/// with IPv4 addresses mapped (`::ffff:a.b.c.d`). IPv6 flow info and scope id are not
/// representable and are dropped.
pub fn encode(h: &Header<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let (fam, addr_len) = match (h.src, h.dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => (FAM_TCP4, ADDR_LEN_V4),
        _ => (FAM_TCP6, ADDR_LEN_V6),
    };

    // Size everything first so nothing is written unless it fits.
    let ssl_len = h.tls.as_ref().map(ssl_value_len);
    let spiffe = h.tls.as_ref().and_then(|t| t.spiffe);
    let mut len = addr_len;
    if let Some(l) = ssl_len {
        len = len.saturating_add(TLV_HEADER_LEN).saturating_add(l);
    }
    if let Some(s) = spiffe {
        len = len.saturating_add(TLV_HEADER_LEN).saturating_add(s.len());
    }
    // Every inner length is below `len`, so this one check bounds them all.
    let Ok(len16) = u16::try_from(len) else {
        return Err(EncodeError::TooLong { len });
    };

    out.reserve(FIXED_LEN + len);
    out.extend_from_slice(&SIGNATURE);
    out.push(VER_CMD_PROXY);
    out.push(fam);
    out.extend_from_slice(&len16.to_be_bytes());
    match fam {
        FAM_TCP4 => {
            out.extend_from_slice(&v4_of(h.src).octets());
            out.extend_from_slice(&v4_of(h.dst).octets());
        }
        _ => {
            out.extend_from_slice(&v6_of(h.src).octets());
            out.extend_from_slice(&v6_of(h.dst).octets());
        }
    }
    out.extend_from_slice(&h.src.port().to_be_bytes());
    out.extend_from_slice(&h.dst.port().to_be_bytes());

    if let (Some(tls), Some(ssl_len)) = (h.tls.as_ref(), ssl_len) {
        put_tlv_header(out, PP2_TYPE_SSL, ssl_len);
        let cert_seen =
            tls.verified || tls.client_cert.is_some() || tls.cn.is_some() || tls.spiffe.is_some();
        let mut client = PP2_CLIENT_SSL;
        if cert_seen {
            // lakegate requires a client certificate in every handshake, so a
            // certificate seen on this connection is also the session's.
            client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;
        }
        out.push(client);
        // Zero means "presented and verified"; the spec only asks for non-zero else.
        let verify: u32 = if tls.verified { 0 } else { 1 };
        out.extend_from_slice(&verify.to_be_bytes());
        put_tlv(out, PP2_SUBTYPE_SSL_VERSION, tls.version.as_bytes());
        if let Some(cn) = tls.cn {
            put_tlv(out, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
        }
        put_tlv(out, PP2_SUBTYPE_SSL_CIPHER, tls.cipher.as_bytes());
        if let Some(der) = tls.client_cert {
            put_tlv(out, PP2_SUBTYPE_SSL_CLIENT_CERT, der);
        }
    }
    if let Some(s) = spiffe {
        put_tlv(out, PP2_TYPE_LAKEGATE_SPIFFE, s.as_bytes());
    }
    Ok(())
}

/// Length of the PP2_TYPE_SSL value (without its own TLV header).
fn ssl_value_len(t: &TlsInfo<'_>) -> usize {
    let sub = |len: usize| TLV_HEADER_LEN.saturating_add(len);
    let mut len = SSL_FIXED_LEN
        .saturating_add(sub(t.version.len()))
        .saturating_add(sub(t.cipher.len()));
    if let Some(cn) = t.cn {
        len = len.saturating_add(sub(cn.len()));
    }
    if let Some(der) = t.client_cert {
        len = len.saturating_add(sub(der.len()));
    }
    len
}

/// Callers have checked that the whole header, hence `len`, fits in 16 bits.
fn put_tlv_header(out: &mut Vec<u8>, ty: u8, len: usize) {
    out.push(ty);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
}

fn put_tlv(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    put_tlv_header(out, ty, value.len());
    out.extend_from_slice(value);
}

fn v4_of(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        IpAddr::V4(ip) => ip,
        // Only called when both ends are IPv4.
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

fn v6_of(a: SocketAddr) -> Ipv6Addr {
    match a.ip() {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}

/// A decoded header.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Source (client) address. IPv6 addresses are returned as sent, mapped or not.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// Every top-level TLV in wire order, PP2_TYPE_SSL included (also parsed into
    /// [`Decoded::ssl`]), so tooling sees exactly what was sent.
    pub tlvs: Vec<(u8, Vec<u8>)>,
    /// The PP2_TYPE_SSL TLV, parsed.
    pub ssl: Option<DecodedSsl>,
}

/// A parsed PP2_TYPE_SSL value.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedSsl {
    /// Bit field of [`PP2_CLIENT_SSL`], [`PP2_CLIENT_CERT_CONN`], [`PP2_CLIENT_CERT_SESS`].
    pub client: u8,
    /// Zero when a client certificate was presented and verified.
    pub verify: u32,
    /// The sub-TLVs in wire order.
    pub subtlvs: Vec<(u8, Vec<u8>)>,
}

/// Why bytes are not a valid (or not a supported) v2 header. Any error means the
/// connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input does not start with the v2 signature.
    #[error("not a PROXY v2 header: bad signature")]
    BadSignature,
    /// The version nibble is not 2.
    #[error("PROXY header version {0} is not 2")]
    BadVersion(u8),
    /// The command nibble is neither LOCAL nor PROXY.
    #[error("PROXY v2 command {0:#x} is not assigned")]
    BadCommand(u8),
    /// The family/transport byte has a value the spec says to reject.
    #[error("PROXY v2 family/transport byte {0:#04x} is invalid")]
    BadFamily(u8),
    /// A valid header this decoder cannot represent: LOCAL command, or anything but
    /// TCP over IPv4/IPv6 (lakegate emits only those).
    #[error("PROXY v2 command {command:#x} with family/transport {family:#04x} is not supported")]
    Unsupported {
        /// The command nibble.
        command: u8,
        /// The family/transport byte.
        family: u8,
    },
    /// The length field is smaller than the address block of the announced family.
    #[error("PROXY v2 length {len} is shorter than the {need}-byte address block")]
    AddressTooShort {
        /// The announced length.
        len: usize,
        /// The address block size of the family.
        need: usize,
    },
    /// A top-level TLV runs past the end of the header.
    #[error("PROXY v2 TLV at byte {offset} overruns the header")]
    TlvOverrun {
        /// Offset of the TLV from the start of the header.
        offset: usize,
    },
    /// The PP2_TYPE_SSL value is shorter than its fixed `client` + `verify` fields.
    #[error("PROXY v2 SSL TLV is {0} bytes, shorter than its 5-byte fixed part")]
    SslTooShort(usize),
    /// A sub-TLV of PP2_TYPE_SSL runs past the end of the SSL TLV.
    #[error("PROXY v2 SSL sub-TLV at byte {offset} overruns the SSL TLV")]
    SslSubTlvOverrun {
        /// Offset of the sub-TLV from the start of the header.
        offset: usize,
    },
    /// A TLV that must appear at most once (SSL, CRC32c) appears again: two
    /// different answers to one question would let a sender confuse a receiver.
    #[error("PROXY v2 TLV type {0:#04x} appears more than once")]
    DuplicateTlv(u8),
    /// The PP2_TYPE_CRC32C value is not 4 bytes.
    #[error("PROXY v2 CRC32c TLV is {0} bytes, not 4")]
    BadCrc32cLength(usize),
    /// The header's CRC32c does not match its contents.
    #[error("PROXY v2 CRC32c mismatch: header says {sent:#010x}, computed {computed:#010x}")]
    Crc32cMismatch {
        /// The value in the TLV.
        sent: u32,
        /// The checksum of the received header.
        computed: u32,
    },
}

/// Decodes one v2 header at the start of `buf`.
///
/// `Ok(None)` means every byte so far is consistent with a header but more are needed;
/// bytes that cannot start a header are an error as early as possible (the spec asks
/// to abort promptly). On success, returns the header and its length, after which the
/// payload begins. A CRC32c TLV, when present, is verified. Never panics.
pub fn decode(buf: &[u8]) -> Result<Option<(Decoded, usize)>, DecodeError> {
    let sig_seen = buf.len().min(SIGNATURE.len());
    if buf.get(..sig_seen) != SIGNATURE.get(..sig_seen) {
        return Err(DecodeError::BadSignature);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    let (version, command) = (ver_cmd >> 4, ver_cmd & 0x0f);
    if version != 2 {
        return Err(DecodeError::BadVersion(version));
    }
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(DecodeError::BadCommand(command));
    }
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    // Families 0..=3 (UNSPEC, INET, INET6, UNIX), transports 0..=2 (UNSPEC, STREAM,
    // DGRAM) are valid; anything else must be rejected.
    if fam >> 4 > 3 || fam & 0x0f > 2 {
        return Err(DecodeError::BadFamily(fam));
    }
    let addr_len = match (command, fam) {
        (CMD_PROXY, FAM_TCP4) => ADDR_LEN_V4,
        (CMD_PROXY, FAM_TCP6) => ADDR_LEN_V6,
        _ => {
            return Err(DecodeError::Unsupported {
                command,
                family: fam,
            })
        }
    };
    let (Some(&len_hi), Some(&len_lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if len < addr_len {
        return Err(DecodeError::AddressTooShort {
            len,
            need: addr_len,
        });
    }
    let total = FIXED_LEN + len;
    let Some(header) = buf.get(..total) else {
        return Ok(None);
    };

    let (src, dst) = match addr_len {
        ADDR_LEN_V4 => (
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(array_at::<4>(header, 16)),
                u16::from_be_bytes(array_at(header, 24)),
            )),
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(array_at::<4>(header, 20)),
                u16::from_be_bytes(array_at(header, 26)),
            )),
        ),
        _ => (
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(array_at::<16>(header, 16)),
                u16::from_be_bytes(array_at(header, 48)),
                0,
                0,
            )),
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(array_at::<16>(header, 32)),
                u16::from_be_bytes(array_at(header, 50)),
                0,
                0,
            )),
        ),
    };

    let tlv_start = FIXED_LEN + addr_len;
    let tlvs = parse_tlvs(header, tlv_start, total)
        .map_err(|offset| DecodeError::TlvOverrun { offset })?;

    let mut ssl = None;
    let mut crc_seen = false;
    for &(ty, start, end) in &tlvs {
        let value = header.get(start..end).unwrap_or_default();
        match ty {
            PP2_TYPE_SSL => {
                if ssl.is_some() {
                    return Err(DecodeError::DuplicateTlv(ty));
                }
                ssl = Some(parse_ssl(header, start, end)?);
            }
            PP2_TYPE_CRC32C => {
                if crc_seen {
                    return Err(DecodeError::DuplicateTlv(ty));
                }
                crc_seen = true;
                let sent: [u8; 4] = value
                    .try_into()
                    .map_err(|_| DecodeError::BadCrc32cLength(value.len()))?;
                let sent = u32::from_be_bytes(sent);
                let computed = crc32c_zeroed(header, start);
                if sent != computed {
                    return Err(DecodeError::Crc32cMismatch { sent, computed });
                }
            }
            _ => {}
        }
    }

    let tlvs = tlvs
        .iter()
        .map(|&(ty, start, end)| (ty, header.get(start..end).unwrap_or_default().to_vec()))
        .collect();
    Ok(Some((
        Decoded {
            src,
            dst,
            tlvs,
            ssl,
        },
        total,
    )))
}

/// Splits `buf[start..end]` into TLVs, returning (type, value start, value end) with
/// offsets into `buf`, or the offset of the first TLV that does not fit.
fn parse_tlvs(buf: &[u8], start: usize, end: usize) -> Result<Vec<(u8, usize, usize)>, usize> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let (Some(&ty), Some(&hi), Some(&lo)) = (buf.get(at), buf.get(at + 1), buf.get(at + 2))
        else {
            return Err(at);
        };
        let value_start = at + TLV_HEADER_LEN;
        let value_end = value_start + usize::from(u16::from_be_bytes([hi, lo]));
        if value_start > end || value_end > end {
            return Err(at);
        }
        out.push((ty, value_start, value_end));
        at = value_end;
    }
    Ok(out)
}

/// Parses the PP2_TYPE_SSL value at `buf[start..end]`.
fn parse_ssl(buf: &[u8], start: usize, end: usize) -> Result<DecodedSsl, DecodeError> {
    let value = buf.get(start..end).unwrap_or_default();
    let (Some(&client), Some(verify)) = (value.first(), value.get(1..SSL_FIXED_LEN)) else {
        return Err(DecodeError::SslTooShort(value.len()));
    };
    let verify: [u8; 4] = verify
        .try_into()
        .map_err(|_| DecodeError::SslTooShort(value.len()))?;
    let subtlvs = parse_tlvs(buf, start + SSL_FIXED_LEN, end)
        .map_err(|offset| DecodeError::SslSubTlvOverrun { offset })?
        .into_iter()
        .map(|(ty, s, e)| (ty, buf.get(s..e).unwrap_or_default().to_vec()))
        .collect();
    Ok(DecodedSsl {
        client,
        verify: u32::from_be_bytes(verify),
        subtlvs,
    })
}

/// `N` bytes of `buf` at `at`; zeros if out of range, which callers rule out by
/// checking the length first (kept total so the decoder cannot panic).
fn array_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    buf.get(at..at.saturating_add(N))
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; N])
}

/// CRC32c lookup table (Castagnoli, reflected polynomial 0x82F63B78, RFC 4960 App. B).
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc32c_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        let idx = usize::from((crc as u8) ^ b);
        crc = (crc >> 8) ^ CRC32C_TABLE.get(idx).copied().unwrap_or(0);
    }
    crc
}

/// CRC32c of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    !crc32c_update(!0, bytes)
}

/// CRC32c of `header` with the 4 bytes at `field` taken as zero, as the spec defines
/// the checksum (computed over the header with its own field cleared).
fn crc32c_zeroed(header: &[u8], field: usize) -> u32 {
    let before = header.get(..field).unwrap_or_default();
    let after = header.get(field.saturating_add(4)..).unwrap_or_default();
    !crc32c_update(crc32c_update(crc32c_update(!0, before), &[0; 4]), after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn tls<'a>() -> TlsInfo<'a> {
        TlsInfo {
            version: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            cn: Some("trainer-7"),
            spiffe: Some("spiffe://lake.example/trainer/7"),
            client_cert: None,
            verified: true,
        }
    }

    fn encoded(h: &Header<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(h, &mut out).expect("encode");
        out
    }

    #[test]
    fn byte_exact_v4_without_tls() {
        let h = Header {
            src: v4("192.0.2.1:56324"),
            dst: v4("198.51.100.7:443"),
            tls: None,
        };
        let mut out = vec![0xAA]; // encode appends
        encode(&h, &mut out).expect("encode");
        #[rustfmt::skip]
        let want: &[u8] = &[
            0xAA,
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            0x21, 0x11, 0x00, 0x0C,
            192, 0, 2, 1,
            198, 51, 100, 7,
            0xDC, 0x04, // 56324
            0x01, 0xBB, // 443
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn byte_exact_v4_with_tlvs() {
        let h = Header {
            src: v4("10.0.0.1:1"),
            dst: v4("10.0.0.2:2"),
            tls: Some(TlsInfo {
                version: "TLSv1.3",
                cipher: "X",
                cn: None,
                spiffe: Some("spiffe://a/b"),
                client_cert: None,
                verified: true,
            }),
        };
        let mut want = SIGNATURE.to_vec();
        // 12 address bytes + SSL (3 + 19) + SPIFFE (3 + 12) = 49.
        want.extend_from_slice(&[0x21, 0x11, 0x00, 49]);
        want.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]);
        // SSL: client SSL|CERT_CONN|CERT_SESS, verify 0, version, cipher.
        want.extend_from_slice(&[0x20, 0x00, 19, 0x07, 0, 0, 0, 0]);
        want.extend_from_slice(&[0x21, 0x00, 7]);
        want.extend_from_slice(b"TLSv1.3");
        want.extend_from_slice(&[0x23, 0x00, 1, b'X']);
        want.extend_from_slice(&[0xE0, 0x00, 12]);
        want.extend_from_slice(b"spiffe://a/b");
        assert_eq!(encoded(&h), want);
    }

    #[test]
    fn round_trip_v4_with_tls_and_cert() {
        let der = vec![0x30u8; 1500];
        let mut info = tls();
        info.client_cert = Some(&der);
        let h = Header {
            src: v4("203.0.113.9:50000"),
            dst: v4("0.0.0.0:8443"),
            tls: Some(info),
        };
        let mut bytes = encoded(&h);
        let header_len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (d, used) = decode(&bytes).expect("decode").expect("complete");
        assert_eq!(used, header_len);
        assert_eq!(d.src, h.src);
        assert_eq!(d.dst, h.dst);
        let ssl = d.ssl.expect("ssl");
        assert_eq!(
            ssl.client,
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        );
        assert_eq!(ssl.verify, 0);
        assert_eq!(
            ssl.subtlvs,
            vec![
                (PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3".to_vec()),
                (PP2_SUBTYPE_SSL_CN, b"trainer-7".to_vec()),
                (PP2_SUBTYPE_SSL_CIPHER, b"TLS13_AES_128_GCM_SHA256".to_vec()),
                (PP2_SUBTYPE_SSL_CLIENT_CERT, der.clone()),
            ]
        );
        // Top level: SSL then SPIFFE, nothing else; the SPIFFE ID is not inside SSL.
        let types: Vec<u8> = d.tlvs.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, [PP2_TYPE_SSL, PP2_TYPE_LAKEGATE_SPIFFE]);
        assert_eq!(
            d.tlvs.get(1).map(|(_, v)| v.as_slice()),
            Some(&b"spiffe://lake.example/trainer/7"[..])
        );
    }

    #[test]
    fn round_trip_v6_and_mixed() {
        let h = Header {
            src: "[2001:db8::1]:40000".parse().expect("addr"),
            dst: "[2001:db8::2]:443".parse().expect("addr"),
            tls: Some(tls()),
        };
        let bytes = encoded(&h);
        assert_eq!(bytes.get(13), Some(&FAM_TCP6));
        let (d, used) = decode(&bytes).expect("decode").expect("complete");
        assert_eq!((d.src, d.dst, used), (h.src, h.dst, bytes.len()));
        assert!(d.ssl.is_some());

        // Mixed families: the IPv4 end is sent IPv4-mapped.
        let h = Header {
            src: v4("192.0.2.1:1234"),
            dst: "[2001:db8::2]:443".parse().expect("addr"),
            tls: None,
        };
        let bytes = encoded(&h);
        assert_eq!(bytes.get(13..16), Some(&[FAM_TCP6, 0, 36][..]));
        let (d, _) = decode(&bytes).expect("decode").expect("complete");
        assert_eq!(
            d.src,
            "[::ffff:192.0.2.1]:1234"
                .parse::<SocketAddr>()
                .expect("addr")
        );
        assert_eq!(d.dst, h.dst);
        assert!(d.tlvs.is_empty() && d.ssl.is_none());
    }

    #[test]
    fn unverified_and_certless_flags() {
        let h = Header {
            src: v4("10.0.0.1:1"),
            dst: v4("10.0.0.2:2"),
            tls: Some(TlsInfo {
                version: "TLSv1.2",
                cipher: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                cn: None,
                spiffe: None,
                client_cert: None,
                verified: false,
            }),
        };
        let (d, _) = decode(&encoded(&h)).expect("decode").expect("complete");
        let ssl = d.ssl.expect("ssl");
        assert_eq!(ssl.client, PP2_CLIENT_SSL);
        assert_ne!(ssl.verify, 0);
        assert_eq!(d.tlvs.len(), 1, "no SPIFFE TLV without a SPIFFE ID");
    }

    #[test]
    fn too_long_is_an_error_and_leaves_out_untouched() {
        let der = vec![0u8; 65535];
        let mut info = tls();
        info.client_cert = Some(&der);
        let h = Header {
            src: v4("10.0.0.1:1"),
            dst: v4("10.0.0.2:2"),
            tls: Some(info),
        };
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            encode(&h, &mut out),
            Err(EncodeError::TooLong { len }) if len > 65535
        ));
        assert_eq!(out, [1, 2, 3]);

        // The largest certificate that still fits encodes and decodes.
        let fixed = encoded(&Header {
            tls: Some(TlsInfo {
                client_cert: Some(&[]),
                ..tls()
            }),
            ..h
        })
        .len();
        let room = MAX_HEADER_LEN - fixed;
        let der = vec![7u8; room];
        let bytes = encoded(&Header {
            tls: Some(TlsInfo {
                client_cert: Some(&der),
                ..tls()
            }),
            ..h
        });
        assert_eq!(bytes.len(), MAX_HEADER_LEN);
        let (_, used) = decode(&bytes).expect("decode").expect("complete");
        assert_eq!(used, MAX_HEADER_LEN);
    }

    #[test]
    fn truncated_input_needs_more() {
        let bytes = encoded(&Header {
            src: v4("10.0.0.1:1"),
            dst: v4("10.0.0.2:2"),
            tls: Some(tls()),
        });
        for n in 0..bytes.len() {
            assert_eq!(
                decode(bytes.get(..n).expect("prefix")),
                Ok(None),
                "prefix of {n} bytes"
            );
        }
        assert!(decode(&bytes).expect("decode").is_some());
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n\r\n"),
            Err(DecodeError::BadSignature)
        );
        assert_eq!(decode(b"PROXY TCP4 "), Err(DecodeError::BadSignature));
        // Wrong early byte is an error before 16 bytes arrive.
        assert_eq!(decode(b"\r\n\r\n\x01"), Err(DecodeError::BadSignature));

        let good = encoded(&Header {
            src: v4("10.0.0.1:1"),
            dst: v4("10.0.0.2:2"),
            tls: Some(tls()),
        });
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            if let Some(x) = v.get_mut(i) {
                *x = b;
            }
            v
        };
        assert_eq!(decode(&with(12, 0x11)), Err(DecodeError::BadVersion(1)));
        assert_eq!(decode(&with(12, 0x22)), Err(DecodeError::BadCommand(2)));
        assert_eq!(decode(&with(13, 0x41)), Err(DecodeError::BadFamily(0x41)));
        assert_eq!(decode(&with(13, 0x13)), Err(DecodeError::BadFamily(0x13)));
        assert_eq!(
            decode(&with(12, 0x20)),
            Err(DecodeError::Unsupported {
                command: 0,
                family: 0x11
            })
        );
        assert_eq!(
            decode(&with(13, 0x12)),
            Err(DecodeError::Unsupported {
                command: 1,
                family: 0x12
            })
        );
        // Length shorter than the address block.
        let mut short = with(14, 0);
        if let Some(x) = short.get_mut(15) {
            *x = 11;
        }
        assert_eq!(
            decode(&short),
            Err(DecodeError::AddressTooShort { len: 11, need: 12 })
        );
        // SSL TLV length one past the end of the header.
        let ssl_len_lo = FIXED_LEN + ADDR_LEN_V4 + 2;
        let v = with(ssl_len_lo, good.get(ssl_len_lo).copied().unwrap_or(0) + 200);
        assert_eq!(
            decode(&v),
            Err(DecodeError::TlvOverrun {
                offset: FIXED_LEN + ADDR_LEN_V4
            })
        );
    }

    /// Builds a v4 header from raw TLV bytes.
    fn raw_header(tlvs: &[u8]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        let len = u16::try_from(ADDR_LEN_V4 + tlvs.len()).expect("len");
        v.extend_from_slice(&[VER_CMD_PROXY, FAM_TCP4]);
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 2, 0, 80, 0, 81]);
        v.extend_from_slice(tlvs);
        v
    }

    #[test]
    fn malformed_tlvs() {
        // Dangling partial TLV header.
        assert!(matches!(
            decode(&raw_header(&[0x04, 0x00])),
            Err(DecodeError::TlvOverrun { offset: 28 })
        ));
        // SSL value too short for client + verify.
        assert_eq!(
            decode(&raw_header(&[0x20, 0x00, 0x04, 1, 0, 0, 0])),
            Err(DecodeError::SslTooShort(4))
        );
        // SSL sub-TLV overrunning the SSL value.
        assert!(matches!(
            decode(&raw_header(&[
                0x20, 0x00, 0x08, 1, 0, 0, 0, 0, 0x21, 0x00, 0x09
            ])),
            Err(DecodeError::SslSubTlvOverrun { offset: 36 })
        ));
        // Two SSL TLVs.
        let one = [0x20, 0x00, 0x05, 1, 0, 0, 0, 0];
        assert_eq!(
            decode(&raw_header(&[one, one].concat())),
            Err(DecodeError::DuplicateTlv(PP2_TYPE_SSL))
        );
        // Empty TLVs, NOOP and unknown types are kept as sent.
        let (d, _) = decode(&raw_header(&[0x04, 0, 0, 0xEF, 0, 1, 9]))
            .expect("decode")
            .expect("complete");
        assert_eq!(d.tlvs, vec![(0x04, vec![]), (0xEF, vec![9])]);
        assert_eq!(d.ssl, None);
    }

    #[test]
    fn crc32c_is_verified() {
        // RFC 3720 / iSCSI check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let mut v = raw_header(&[PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0, 0xE0, 0, 1, b'x']);
        let crc = crc32c(&v);
        let field = FIXED_LEN + ADDR_LEN_V4 + TLV_HEADER_LEN;
        if let Some(f) = v.get_mut(field..field + 4) {
            f.copy_from_slice(&crc.to_be_bytes());
        }
        let (d, _) = decode(&v).expect("valid crc").expect("complete");
        assert_eq!(
            d.tlvs.first(),
            Some(&(PP2_TYPE_CRC32C, crc.to_be_bytes().to_vec()))
        );

        let last = v.len() - 1;
        if let Some(x) = v.get_mut(last) {
            *x = b'y';
        }
        assert!(matches!(
            decode(&v),
            Err(DecodeError::Crc32cMismatch { sent, .. }) if sent == crc
        ));
        assert_eq!(
            decode(&raw_header(&[PP2_TYPE_CRC32C, 0, 2, 0, 0])),
            Err(DecodeError::BadCrc32cLength(2))
        );
    }

    /// Deterministic pseudo-random inputs (Knuth's MMIX LCG): random bytes, random
    /// bytes behind a valid prefix, and mutations of valid headers. Nothing may panic,
    /// and a success must report a length within the input.
    #[test]
    fn no_panic_on_pseudo_random_input() {
        let mut state: u64 = 0x1a6e_9a7e_5eed_0001;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u32
        };
        let der = [0x30u8; 40];
        let valid = [
            encoded(&Header {
                src: v4("10.0.0.1:1"),
                dst: v4("10.0.0.2:2"),
                tls: Some(TlsInfo {
                    client_cert: Some(&der),
                    ..tls()
                }),
            }),
            encoded(&Header {
                src: "[2001:db8::1]:1".parse().expect("addr"),
                dst: v4("10.0.0.2:2"),
                tls: Some(tls()),
            }),
        ];
        let mut ok = 0;
        for case in 0..6000u32 {
            let input: Vec<u8> = match case % 3 {
                0 => (0..next() % 300).map(|_| next() as u8).collect(),
                1 => {
                    let mut v = SIGNATURE.to_vec();
                    let ver = [0x21, 0x20, 0x11, 0x2f][(next() % 4) as usize];
                    let fam = [0x11, 0x21, 0x12, 0x31, 0x00, 0xff][(next() % 6) as usize];
                    v.extend_from_slice(&[ver, fam]);
                    v.extend((0..next() % 120).map(|_| next() as u8));
                    v
                }
                _ => {
                    let mut v = valid[(next() % 2) as usize].clone();
                    for _ in 0..1 + next() % 4 {
                        let i = next() as usize % v.len();
                        v[i] ^= 1 << (next() % 8);
                    }
                    let keep = v.len() - next() as usize % 8;
                    v.truncate(keep);
                    v
                }
            };
            if let Ok(Some((_, used))) = decode(&input) {
                assert!((FIXED_LEN..=input.len()).contains(&used));
                ok += 1;
            }
        }
        // The mutations leave some headers valid, so the deep paths were exercised.
        assert!(ok > 0);
    }
}
