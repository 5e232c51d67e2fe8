//! The admin credential: the bearer token that guards the admin endpoint's mutating
//! requests (`POST /reload`), from `[admin] token_file`.
//!
//! Owns: the token's rules (one line of printable ASCII, at least [`MIN_TOKEN_LEN`]
//! characters) and the constant-time check of a presented token. Must not touch files
//! or sockets: the engine reads the file with each generation (its mode checked by
//! `crate::secrets`), the control plane's admin endpoint asks [`AdminToken::admits`].

use std::fmt;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest;

/// Shortest token accepted from the token file (`openssl rand -hex 32` gives 64).
pub const MIN_TOKEN_LEN: usize = 32;

/// The credential of mutating admin requests, read from `[admin] token_file` at every
/// load and reload (so rotating it is: write the file, reload). Only its SHA-256 is
/// kept, and presented tokens are hashed before the constant-time comparison, so
/// neither the token nor its length shows in memory dumps or timing.
pub struct AdminToken {
    digest: [u8; 32],
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// The token in a file's text (surrounding whitespace and the newline trimmed).
    pub fn parse(text: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "expected one line of printable ASCII without spaces, like `openssl rand -hex 32` writes"
                    .into(),
            );
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "expected a token of at least {MIN_TOKEN_LEN} characters (`openssl rand -hex 32`), found {}",
                token.len()
            ));
        }
        Ok(AdminToken {
            digest: sha256(token.as_bytes()),
        })
    }

    /// Whether `presented` is the token.
    pub fn admits(&self, presented: &[u8]) -> bool {
        verify_slices_are_equal(&sha256(presented), &self.digest).is_ok()
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, b).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn token_file_text() {
        assert!(AdminToken::parse(&format!("  {TOKEN}\n")).is_ok());
        let e = AdminToken::parse("short\n").unwrap_err();
        assert!(e.contains("at least 32 characters"), "{e}");
        assert!(e.contains("found 5"), "{e}");
        let e = AdminToken::parse(&format!("{TOKEN}\n{TOKEN}\n")).unwrap_err();
        assert!(e.contains("one line"), "{e}");
        let t = AdminToken::parse(TOKEN).unwrap();
        assert!(t.admits(TOKEN.as_bytes()));
        assert!(!t.admits(&TOKEN.as_bytes()[1..]));
        assert!(!t.admits(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(..)");
    }
}
