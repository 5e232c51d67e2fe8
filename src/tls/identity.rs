//! The client identity, read from the verified leaf certificate.
//!
//! Owns: turning the DER of a client leaf that rustls has *already verified* into the
//! names lakegate authorizes and logs (SPIFFE URI SAN, other URI SANs, DNS SANs, the
//! subject CN), its RFC 8705 `x5t#S256` thumbprint, serial and expiry.
//!
//! Must not touch: chain or signature verification, revocation and time checks (the
//! TLS policy and rustls own those; nothing here makes a certificate trustworthy), and
//! any I/O or clock. It is a pure function of the bytes, so it runs once per handshake
//! on the worker and is trivially testable.

use std::fmt::Write as _;

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The scheme prefix that marks a URI SAN as a SPIFFE ID.
const SPIFFE_PREFIX: &str = "spiffe://";

/// Who the client is, as far as lakegate's policy, logs and upstream headers care.
///
/// Built by [`Identity::from_der`] from the verified leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The certificate's SPIFFE ID: its one URI SAN with the `spiffe` scheme, if any
    /// (a certificate with two, or with a malformed one, is refused by
    /// [`Identity::from_der`], as the X.509-SVID specification requires).
    pub spiffe: Option<String>,
    /// Every URI SAN in certificate order (the SPIFFE ID included).
    pub uris: Vec<String>,
    /// Every DNS SAN in certificate order.
    pub dns: Vec<String>,
    /// The first Common Name of the subject, if any.
    pub cn: Option<String>,
    /// SHA-256 of the whole certificate DER, base64url without padding: the RFC 8705
    /// `x5t#S256` confirmation a bound token must carry.
    pub thumbprint: String,
    /// The serial number as lowercase hex without separators, with DER sign-padding
    /// zero octets removed (so it reads like `openssl x509 -serial`, in lowercase).
    pub serial: String,
    /// The end of the validity period, in Unix seconds.
    pub not_after: i64,
    /// The issuer's distinguished name as x509-parser renders it; with `serial` it is
    /// the key a CRL entry names.
    pub issuer: String,
}

/// Why a leaf certificate could not be read into an [`Identity`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("client certificate is not valid DER X.509: {0}")]
    Parse(String),
    /// Bytes follow the certificate; a leaf is exactly one certificate, and silently
    /// ignoring a suffix would let two different byte strings share a thumbprint's name.
    #[error("client certificate has {0} trailing bytes after the DER certificate")]
    TrailingData(usize),
    /// The subjectAltName extension is malformed or present more than once.
    #[error("client certificate has an invalid subjectAltName extension: {0}")]
    SubjectAltName(String),
    /// The subject CN uses a string type that is not text (e.g. BMPString) or is not
    /// valid UTF-8; refusing is safer than authorizing on a lossy conversion.
    #[error("client certificate subject CN is not a UTF-8 string: {0}")]
    CommonName(String),
    /// More than one `spiffe://` URI SAN: an X.509-SVID carries exactly one SPIFFE ID,
    /// and with two there is no telling which one the CA meant.
    #[error("client certificate has {0} SPIFFE ID URI SANs; an X.509-SVID has exactly one")]
    MultipleSpiffeIds(usize),
    /// A `spiffe` URI SAN that is not a well-formed SPIFFE ID (e.g. a `..` segment,
    /// which a `spiffe://td/trainer/*` glob would otherwise match).
    #[error("client certificate has a malformed SPIFFE ID {0:?}")]
    InvalidSpiffeId(String),
}

impl Identity {
    /// Reads the identity from the DER of a verified client leaf certificate.
    pub fn from_der(der: &[u8]) -> Result<Identity, IdentityError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(IdentityError::TrailingData(rest.len()));
        }

        let mut uris = Vec::new();
        let mut dns = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::SubjectAltName(e.to_string()))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                    // IP, e-mail, directory names...: not names lakegate authorizes on.
                    _ => {}
                }
            }
        }
        let spiffe = spiffe_id(&uris)?;

        // The first CN, as HAProxy's ssl_c_s_dn(cn) and the PROXY v2 CN TLV use it.
        let cn = match cert.subject().iter_common_name().next() {
            Some(attr) => Some(
                attr.as_str()
                    .map_err(|e| IdentityError::CommonName(e.to_string()))?
                    .to_owned(),
            ),
            None => None,
        };

        Ok(Identity {
            spiffe,
            uris,
            dns,
            cn,
            thumbprint: thumbprint(der),
            serial: serial_hex(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
            issuer: cert.issuer().to_string(),
        })
    }

    /// The one name logs show: the SPIFFE ID, else the first DNS SAN, else the CN,
    /// else the thumbprint (every certificate has one).
    pub fn name(&self) -> &str {
        self.spiffe
            .as_deref()
            .or_else(|| self.dns.first().map(String::as_str))
            .or(self.cn.as_deref())
            .unwrap_or(&self.thumbprint)
    }
}

/// The one SPIFFE ID among the URI SANs. The scheme is compared case-insensitively
/// here so that `SPIFFE://…` cannot ride beside a real one unnoticed; the ID itself
/// must then be in the canonical form the SPIFFE ID specification gives.
fn spiffe_id(uris: &[String]) -> Result<Option<String>, IdentityError> {
    let mut ids = uris.iter().filter(|u| {
        u.get(..SPIFFE_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(SPIFFE_PREFIX))
    });
    let Some(first) = ids.next() else {
        return Ok(None);
    };
    let extra = ids.count();
    if extra > 0 {
        return Err(IdentityError::MultipleSpiffeIds(extra + 1));
    }
    if !valid_spiffe_id(first) {
        return Err(IdentityError::InvalidSpiffeId(first.clone()));
    }
    Ok(Some(first.clone()))
}

/// SPIFFE ID syntax (SPIFFE-ID.md §2): lowercase scheme, a trust domain of
/// `[a-z0-9._-]`, and a path of non-empty segments of `[A-Za-z0-9._-]` that are not
/// `.` or `..`; no port, user info, query, fragment or percent-encoding; at most 2048
/// bytes.
fn valid_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix(SPIFFE_PREFIX) else {
        return false;
    };
    if id.len() > 2048 {
        return false;
    }
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let td_ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    let path_ok = path.is_empty()
        || path.split('/').skip(1).all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    td_ok && path_ok
}

/// RFC 8705 `x5t#S256`: base64url (no padding) of SHA-256 over the certificate DER.
fn thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der))
}

/// Lowercase hex of the serial, without the leading zero octets DER adds to keep a
/// positive INTEGER positive; a zero serial stays "00".
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let first = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let significant = raw.get(first..).unwrap_or_default();
    let significant: &[u8] = if significant.is_empty() {
        &[0]
    } else {
        significant
    };
    let mut s = String::with_capacity(significant.len() * 2);
    for b in significant {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType, SerialNumber};

    fn make_cert(
        sans: Vec<SanType>,
        cn: Option<&str>,
        serial: Option<&[u8]>,
    ) -> (Vec<u8>, time::OffsetDateTime) {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(DnType::OrganizationName, "Lake");
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        if let Some(s) = serial {
            params.serial_number = Some(SerialNumber::from_slice(s));
        }
        let not_after = rcgen::date_time_ymd(2031, 5, 17);
        params.not_after = not_after;
        let key = KeyPair::generate().expect("keygen");
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.der().to_vec(), not_after)
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().expect("ia5"))
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().expect("ia5"))
    }

    #[test]
    fn reads_sans_cn_serial_and_expiry() {
        let (der, not_after) = make_cert(
            vec![
                uri("https://lake.example/not-spiffe"),
                dns("trainer-7.lake.example"),
                uri("spiffe://lake.example/trainer/7"),
                dns("trainer.lake.example"),
            ],
            Some("trainer-7"),
            Some(&[0x00, 0xab, 0x01]),
        );
        let id = Identity::from_der(&der).expect("identity");
        assert_eq!(
            id.spiffe.as_deref(),
            Some("spiffe://lake.example/trainer/7")
        );
        assert_eq!(
            id.uris,
            [
                "https://lake.example/not-spiffe",
                "spiffe://lake.example/trainer/7",
            ]
        );
        assert_eq!(id.dns, ["trainer-7.lake.example", "trainer.lake.example"]);
        assert_eq!(id.cn.as_deref(), Some("trainer-7"));
        assert_eq!(id.not_after, not_after.unix_timestamp());
        assert_eq!(id.serial, "ab01");
        assert_eq!(id.name(), "spiffe://lake.example/trainer/7");
    }

    #[test]
    fn two_spiffe_ids_or_a_malformed_one_are_refused() {
        let (der, _) = make_cert(
            vec![
                uri("spiffe://lake.example/trainer/7"),
                uri("spiffe://lake.example/second"),
            ],
            None,
            None,
        );
        assert!(matches!(
            Identity::from_der(&der),
            Err(IdentityError::MultipleSpiffeIds(2))
        ));
        // An upper-case scheme still counts as a second SPIFFE ID.
        let (der, _) = make_cert(
            vec![
                uri("spiffe://lake.example/trainer/7"),
                uri("SPIFFE://lake.example/admin"),
            ],
            None,
            None,
        );
        assert!(Identity::from_der(&der).is_err());
        for bad in [
            "spiffe://lake.example/trainer/../admin",
            "spiffe://lake.example/trainer/./x",
            "spiffe://lake.example/trainer//x",
            "spiffe://lake.example/trainer/",
            "spiffe://Lake.Example/trainer/x",
            "spiffe://lake.example:8443/x",
            "spiffe://lake.example/x?y=1",
            "spiffe://lake.example/x%2e",
            "spiffe:///x",
            "SPIFFE://lake.example/x",
        ] {
            let (der, _) = make_cert(vec![uri(bad)], None, None);
            assert!(
                matches!(
                    Identity::from_der(&der),
                    Err(IdentityError::InvalidSpiffeId(_))
                ),
                "{bad} accepted"
            );
        }
        for good in ["spiffe://lake.example", "spiffe://lake.example/a/B-c_d.e"] {
            let (der, _) = make_cert(vec![uri(good)], None, None);
            let id = Identity::from_der(&der).expect(good);
            assert_eq!(id.spiffe.as_deref(), Some(good));
        }
    }

    #[test]
    fn name_falls_back_dns_then_cn_then_thumbprint() {
        let (der, _) = make_cert(vec![dns("a.lake.example")], Some("cn-a"), None);
        let id = Identity::from_der(&der).expect("identity");
        assert_eq!(id.spiffe, None);
        assert_eq!(id.name(), "a.lake.example");

        let (der, _) = make_cert(vec![uri("https://x.example/")], Some("cn-b"), None);
        let id = Identity::from_der(&der).expect("identity");
        assert_eq!(id.spiffe, None);
        assert_eq!(id.name(), "cn-b");

        let (der, _) = make_cert(vec![], None, None);
        let id = Identity::from_der(&der).expect("identity");
        assert_eq!(id.cn, None);
        assert!(id.uris.is_empty() && id.dns.is_empty());
        assert_eq!(id.name(), id.thumbprint);
    }

    #[test]
    fn thumbprint_is_base64url_sha256_of_der() {
        let (der, _) = make_cert(vec![dns("t.example")], None, None);
        let id = Identity::from_der(&der).expect("identity");
        assert_eq!(id.thumbprint, thumbprint(&der));
        assert_eq!(id.thumbprint.len(), 43, "32 bytes, unpadded base64");
        assert!(!id.thumbprint.contains(['+', '/', '=']));
        // Different certificate, different thumbprint.
        let (der2, _) = make_cert(vec![dns("t.example")], None, None);
        assert_ne!(
            Identity::from_der(&der2).expect("identity").thumbprint,
            id.thumbprint
        );
    }

    #[test]
    fn thumbprint_known_vectors() {
        // printf 'lakegate' | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '='
        assert_eq!(
            thumbprint(b"lakegate"),
            "Lm5mzh0KwZw7UV9fW0ujcvQu_wGPKUnRsxy4NmRczro"
        );
        // SHA-256 of the empty string, e3b0c442...b855, in base64url.
        assert_eq!(
            thumbprint(b""),
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
    }

    /// Made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256
    /// -subj "/O=Lake/CN=fixture-client" -set_serial 0x00c0ffee -addext
    /// "subjectAltName=URI:spiffe://lake.example/fixture,DNS:fixture.lake.example"`;
    /// the expected values come from openssl, not from this code.
    const FIXTURE_DER_B64: &str = "MIIB1zCCAX2gAwIBAgIEAMD/7jAKBggqhkjOPQQDAjAoMQ0wCwYDVQQKDARMYWtlMRcwFQYDVQQDDA5maXh0dXJlLWNsaWVudDAeFw0yNjExMjkwMjA0MTlaFw0zNjExMjYwMjA0MTlaMCgxDTALBgNVBAoMBExha2UxFzAVBgNVBAMMDmZpeHR1cmUtY2xpZW50MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEnOAKj9UBo4EifkjL6wvjwNQm48FkLL/YMEIrBX6nMw3JdoOs+jHpOG95UUQlN+3EbKudAmlWQpY3xbFOLbzNNKOBlDCBkTAdBgNVHQ4EFgQUEDxr4wyjTJzzpsBVprDPkhhezd4wHwYDVR0jBBgwFoAUEDxr4wyjTJzzpsBVprDPkhhezd4wDwYDVR0TAQH/BAUwAwEB/zA+BgNVHREENzA1hh1zcGlmZmU6Ly9sYWtlLmV4YW1wbGUvZml4dHVyZYIUZml4dHVyZS5sYWtlLmV4YW1wbGUwCgYIKoZIzj0EAwIDSAAwRQIgJ07qvDEFBce1DKVMO/0wdAgzPvCFUI+d1Pueh97YJoMCIQCWB5lfMfiQvF6s73ibFsAvN/0MX1rEoC3Wqqpz2U7Y6A==";

    #[test]
    fn openssl_fixture() {
        let der = base64::engine::general_purpose::STANDARD
            .decode(FIXTURE_DER_B64)
            .expect("base64");
        let id = Identity::from_der(&der).expect("identity");
        assert_eq!(
            id,
            Identity {
                spiffe: Some("spiffe://lake.example/fixture".to_owned()),
                uris: vec!["spiffe://lake.example/fixture".to_owned()],
                dns: vec!["fixture.lake.example".to_owned()],
                cn: Some("fixture-client".to_owned()),
                // openssl dgst -sha256 -binary fx.der | base64 | tr '+/' '-_' | tr -d '='
                thumbprint: "HhH7x7EmgHAOl4AuFnwql-9e4C93qKX1vAN3vDGZoHA".to_owned(),
                // openssl x509 -serial: C0FFEE (DER: 00 c0 ff ee)
                serial: "c0ffee".to_owned(),
                // notAfter=Nov 26 02:04:19 2036 GMT
                not_after: 2_111_277_859,
                // Self-signed: openssl x509 -issuer says "O = Lake, CN = fixture-client".
                issuer: "O=Lake, CN=fixture-client".to_owned(),
            }
        );
    }

    #[test]
    fn serial_hex_strips_sign_padding() {
        assert_eq!(serial_hex(&[0x00, 0x80]), "80");
        assert_eq!(serial_hex(&[0x01, 0x00]), "0100");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "00");
    }

    #[test]
    fn rejects_garbage_and_trailing_bytes() {
        assert!(matches!(
            Identity::from_der(b"not a certificate"),
            Err(IdentityError::Parse(_))
        ));
        assert!(matches!(
            Identity::from_der(&[]),
            Err(IdentityError::Parse(_))
        ));
        let (mut der, _) = make_cert(vec![dns("t.example")], None, None);
        der.extend_from_slice(&[0, 0]);
        assert!(matches!(
            Identity::from_der(&der),
            Err(IdentityError::TrailingData(2))
        ));
        // Truncations of a real certificate never panic and never succeed.
        der.truncate(der.len() - 2);
        for n in 0..der.len() {
            assert!(Identity::from_der(der.get(..n).expect("prefix")).is_err());
        }
    }
}
