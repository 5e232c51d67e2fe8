//! Files that hold secrets (private keys, ticket keys, tokens, upstream credentials):
//! the one check they all pass before they are read.
//!
//! A plain function of the file's metadata, below every layer that reads a secret
//! (`config`, `tls`, `authz`, `backend`). Must not import anything from the crate.

use std::path::Path;

/// Whether a secret file is readable only by its owner, and owned by the user lakegate
/// runs as or by root; the message names the mode or owner and what to do.
pub fn check_private_file(path: &Path) -> Result<(), String> {
    let m =
        std::fs::metadata(path).map_err(|e| format!("cannot access {}: {e}", path.display()))?;
    check_private_metadata(path, &m)
}

/// [`check_private_file`] on metadata already taken (of an open file, so the check
/// and the read are of the same file).
pub fn check_private_metadata(path: &Path, m: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mode = m.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}, which lets group or others use it; expected 0600 \
             (chmod 600 {}): this file is a secret",
            path.display(),
            path.display()
        ));
    }
    // SAFETY: geteuid has no preconditions, touches no memory of ours and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if m.uid() != euid && m.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}; expected the user lakegate runs as (uid {euid}) or root",
            path.display(),
            m.uid()
        ));
    }
    Ok(())
}
