//! The lab configuration template: the one place a lakegate TOML file for a lab is
//! written. `lakegate demo`, the end-to-end tests (`tests/common`) and the bench
//! scripts (through `lakegate pki config`) all render it, so a key renamed in the
//! contract is renamed here once, and every lab names the PKI's files the same way.
//!
//! Owns: the shape of a lab config (a `[server]` listener, the files `lakegate pki`
//! writes named in `[tls]`, an `[admin]` listener or none, the `[backend]` lines, one
//! `[[authz]]` rule admitting every trainer unless told otherwise) and nothing of what
//! the keys mean. Plain text: it neither parses nor validates (`lakegate check` does),
//! and imports nothing from the crate, so it sits at the bottom of the layers and any
//! test may use it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The identity pattern the lab's client certificates match (`lakegate pki client
/// NAME --spiffe spiffe://lake.example/trainer/NAME`).
pub const TRAINERS: &str = "spiffe://lake.example/trainer/*";

/// A lab configuration, rendered by [`LabConfig::render`]. Lines are TOML as written
/// (comments allowed), added to their section in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// A comment put first (without the `# `).
    pub header: Option<String>,
    /// `[server] listen`.
    pub listen: SocketAddr,
    /// More `[server]` lines (`workers = 1`, timeouts).
    pub server: Vec<String>,
    /// The folder of the lab PKI. `None` names its files relative to the config file,
    /// which is then written in that folder.
    pub pki: Option<PathBuf>,
    /// Whether `[tls] crl` names the PKI's `crl.pem` (made by `lakegate pki crl`).
    pub crl: bool,
    /// More `[tls]` lines.
    pub tls: Vec<String>,
    /// `[admin] listen`; `None` turns the admin endpoint off (`listen = ""`).
    pub admin: Option<SocketAddr>,
    /// More `[admin]` lines (`token_file = "admin.token"`).
    pub admin_lines: Vec<String>,
    /// The `[backend]` lines.
    pub backend: Vec<String>,
    /// The `[[authz]]` blocks, as text; [`LabConfig::new`] sets [`trainer_rule`] with
    /// no restriction.
    pub authz: String,
    /// Anything after the rules (a `[tokens]` section).
    pub tail: String,
}

/// One `[[authz]]` block admitting [`TRAINERS`], with `lines` (bucket and access
/// restrictions) added.
pub fn trainer_rule(lines: &[String]) -> String {
    let mut s = format!("[[authz]]\nidentity = \"{TRAINERS}\"\n");
    for l in lines {
        let _ = writeln!(s, "{l}");
    }
    s
}

impl LabConfig {
    /// A config listening on `listen` with the PKI beside the file, its CRL, no admin
    /// endpoint, no backend lines yet and the trainer rule.
    pub fn new(listen: SocketAddr) -> LabConfig {
        LabConfig {
            header: None,
            listen,
            server: Vec::new(),
            pki: None,
            crl: true,
            tls: Vec::new(),
            admin: None,
            admin_lines: Vec::new(),
            backend: Vec::new(),
            authz: trainer_rule(&[]),
            tail: String::new(),
        }
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let q = |s: &str| toml_string(s);
        let file = |name: &str| match &self.pki {
            Some(dir) => q(&dir.join(name).display().to_string()),
            None => q(name),
        };
        let mut s = String::new();
        if let Some(h) = &self.header {
            let _ = writeln!(s, "# {h}");
        }
        let _ = writeln!(s, "[server]\nlisten = {}", q(&self.listen.to_string()));
        lines(&mut s, &self.server);
        let _ = writeln!(
            s,
            "\n[tls]\ncert = {}\nkey = {}\nclient_ca = {}",
            file("server.crt"),
            file("server.key"),
            file("ca.crt")
        );
        if self.crl {
            let _ = writeln!(s, "crl = [{}]", file("crl.pem"));
        }
        lines(&mut s, &self.tls);
        let admin = self.admin.map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(s, "\n[admin]\nlisten = {}", q(&admin));
        lines(&mut s, &self.admin_lines);
        s.push_str("\n[backend]\n");
        lines(&mut s, &self.backend);
        let _ = write!(s, "\n{}", self.authz);
        if !self.tail.is_empty() {
            let _ = write!(s, "\n{}", self.tail);
        }
        s
    }

    /// Write [`LabConfig::render`] to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.render())
    }
}

fn lines(s: &mut String, ls: &[String]) {
    for l in ls {
        let _ = writeln!(s, "{l}");
    }
}

/// A TOML basic string: quotes, backslashes and control characters escaped, so a path
/// with any of them still names itself.
pub fn toml_string(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{:04X}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section_in_order() {
        let mut c = LabConfig::new("127.0.0.1:8443".parse().unwrap());
        c.server.push("workers = 1".into());
        c.admin = Some("127.0.0.1:9090".parse().unwrap());
        c.admin_lines.push("token_file = \"admin.token\"".into());
        c.backend = vec!["kind = \"store\"".into(), "root = \"data\"".into()];
        assert_eq!(
            c.render(),
            "[server]\nlisten = \"127.0.0.1:8443\"\nworkers = 1\n\n\
             [tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\n\
             crl = [\"crl.pem\"]\n\n\
             [admin]\nlisten = \"127.0.0.1:9090\"\ntoken_file = \"admin.token\"\n\n\
             [backend]\nkind = \"store\"\nroot = \"data\"\n\n\
             [[authz]]\nidentity = \"spiffe://lake.example/trainer/*\"\n"
        );
    }

    #[test]
    fn pki_elsewhere_no_crl_no_admin() {
        let mut c = LabConfig::new("127.0.0.1:1".parse().unwrap());
        c.pki = Some(PathBuf::from("/tmp/a \"b\""));
        c.crl = false;
        c.authz = trainer_rule(&["buckets = [\"d\"]".into()]);
        let t = c.render();
        assert!(
            t.contains("cert = \"/tmp/a \\\"b\\\"/server.crt\"\n"),
            "{t}"
        );
        assert!(!t.contains("crl"), "{t}");
        assert!(t.contains("[admin]\nlisten = \"\"\n"), "{t}");
        assert!(t.ends_with("identity = \"spiffe://lake.example/trainer/*\"\nbuckets = [\"d\"]\n"));
    }
}
