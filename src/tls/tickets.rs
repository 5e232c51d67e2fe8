//! Session-ticket keys shared by a fleet: `[tls] ticket_key_file`.
//!
//! rustls's own ticketer draws a random key per process, so a client that got a
//! ticket from one appliance makes a full handshake on the next one behind the same
//! load balancer. With a key file distributed to every appliance, any of them can
//! open a ticket any of them sealed, and the client (with its certificate identity,
//! which the ticket carries) resumes wherever it lands.
//!
//! File format: one key per line, base64 of 32 random bytes (`openssl rand -base64 32`);
//! blank lines and `#` comments are ignored. The first key seals new tickets; every
//! key opens them. Rotation without a failed resumption: (1) add the new key as the
//! *second* line on every appliance and reload them all; (2) once all have it, move it
//! to the first line and reload; (3) after the ticket lifetime, drop the old key.
//!
//! Tickets are sealed with AES-256-GCM from aws-lc-rs: `name(16) ‖ nonce(12) ‖
//! ciphertext ‖ tag`, where `name` identifies the key (a SHA-256 prefix of it, so the
//! key itself never appears) and is bound as associated data.

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use rustls::server::ProducesTickets;

/// How long a ticket may be used, in seconds (what rustls's own ticketer uses).
pub const TICKET_LIFETIME_SECS: u32 = 6 * 60 * 60;

const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// One ticket key: its public name and the AEAD key.
struct TicketKey {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// A ticketer whose keys come from a file shared by every appliance of a fleet.
pub struct FileTicketer {
    keys: Vec<TicketKey>,
    rng: SystemRandom,
}

impl fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: key material never reaches a log.
        f.debug_struct("FileTicketer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl FileTicketer {
    /// Read the key file at `path`; the message names the line at fault.
    pub fn from_file(path: &Path) -> Result<FileTicketer, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        FileTicketer::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse the key file's text.
    pub fn parse(text: &str) -> Result<FileTicketer, String> {
        let mut keys: Vec<TicketKey> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|e| format!("line {}: expected base64 of 32 bytes: {e}", i + 1))?;
            if raw.len() != 32 {
                return Err(format!(
                    "line {}: expected base64 of 32 bytes, found {} bytes",
                    i + 1,
                    raw.len()
                ));
            }
            let mut ctx = digest::Context::new(&digest::SHA256);
            ctx.update(b"lakegate ticket key name\0");
            ctx.update(&raw);
            let mut name = [0u8; NAME_LEN];
            name.copy_from_slice(&ctx.finish().as_ref()[..NAME_LEN]);
            if keys.iter().any(|k| k.name == name) {
                return Err(format!("line {}: the same key is listed twice", i + 1));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &raw)
                .map_err(|_| format!("line {}: unusable key", i + 1))?;
            keys.push(TicketKey {
                name,
                key: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() {
            return Err("expected at least one key line (base64 of 32 bytes)".into());
        }
        Ok(FileTicketer {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Number of keys that open tickets.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

impl ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let k = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&k.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = k
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&k.name),
                &mut out[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let k = self.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = k
            .key
            .open_in_place(nonce, Aad::from(&k.name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn a_ticket_sealed_by_one_appliance_opens_on_another_with_the_same_file() {
        let a = FileTicketer::parse(K1).unwrap();
        let b = FileTicketer::parse(&format!("# fleet keys\n\n{K1}\n")).unwrap();
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&t).unwrap(), b"session state");
        // Two seals of the same state differ (fresh nonce each time).
        assert_ne!(a.encrypt(b"session state").unwrap(), t);
    }

    #[test]
    fn rotation_keeps_old_tickets_open_and_seals_with_the_first_key() {
        let old = FileTicketer::parse(K1).unwrap();
        let t_old = old.encrypt(b"old").unwrap();
        let rotated = FileTicketer::parse(&format!("{K2}\n{K1}\n")).unwrap();
        assert_eq!(rotated.key_count(), 2);
        assert_eq!(rotated.decrypt(&t_old).unwrap(), b"old");
        let t_new = rotated.encrypt(b"new").unwrap();
        // Sealed with K2: an appliance that only has K1 cannot open it.
        assert!(old.decrypt(&t_new).is_none());
        let staged = FileTicketer::parse(&format!("{K1}\n{K2}\n")).unwrap();
        assert_eq!(staged.decrypt(&t_new).unwrap(), b"new");
    }

    #[test]
    fn tampered_truncated_or_foreign_tickets_are_refused() {
        let a = FileTicketer::parse(K1).unwrap();
        let other = FileTicketer::parse(K2).unwrap();
        let t = a.encrypt(b"state").unwrap();
        assert!(other.decrypt(&t).is_none());
        for i in [0, NAME_LEN, NAME_LEN + NONCE_LEN, t.len() - 1] {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert!(a.decrypt(&bad).is_none(), "flipped byte {i} accepted");
        }
        assert!(a.decrypt(&t[..t.len() - 1]).is_none());
        assert!(a
            .decrypt(&t[..NAME_LEN + NONCE_LEN + TAG_LEN - 1])
            .is_none());
        assert!(a.decrypt(&[]).is_none());
    }

    #[test]
    fn bad_files_name_the_line() {
        assert_eq!(
            FileTicketer::parse("# nothing\n").unwrap_err(),
            "expected at least one key line (base64 of 32 bytes)"
        );
        let e = FileTicketer::parse(&format!("{K1}\nAAAA\n")).unwrap_err();
        assert_eq!(e, "line 2: expected base64 of 32 bytes, found 3 bytes");
        let e = FileTicketer::parse("not base64!\n").unwrap_err();
        assert!(e.starts_with("line 1: expected base64 of 32 bytes"), "{e}");
        let e = FileTicketer::parse(&format!("{K1}\n{K1}\n")).unwrap_err();
        assert_eq!(e, "line 2: the same key is listed twice");
    }
}
