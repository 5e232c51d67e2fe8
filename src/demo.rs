//! `lakegate demo`: the embedded default. Makes a throwaway PKI, an admin token, a
//! config with a `store` backend and a `datasets` bucket under one folder, prints
//! ready-to-paste `curl` commands for an allowed and a forbidden identity and for a
//! reload, then serves.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::pki::{self, KeyType};

/// Identity the demo's allowed client carries.
pub const TRAINER: &str = "spiffe://lake.example/trainer/demo";
/// Identity the demo's forbidden client carries.
pub const INTRUDER: &str = "spiffe://lake.example/intruder/demo";

/// Prepare DIR (idempotent: an existing PKI is reused) and return the config path.
pub fn prepare(dir: &Path, port: u16, admin: u16) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::path::absolute(dir)?;
    if !dir.join("ca.crt").exists() {
        let ip: IpAddr = "127.0.0.1".parse()?;
        pki::init(
            &dir,
            "lakegate demo CA",
            &["localhost".to_string()],
            &[ip],
            KeyType::EcdsaP256,
            825,
        )?;
        pki::client(
            &dir,
            "trainer",
            Some(TRAINER),
            &[],
            false,
            KeyType::EcdsaP256,
            365,
        )?;
        pki::client(
            &dir,
            "intruder",
            Some(INTRUDER),
            &[],
            false,
            KeyType::EcdsaP256,
            365,
        )?;
        pki::crl(&dir, &[], 30, false)?;
    }
    if !dir.join("admin.token").exists() {
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw)
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let token = format!("{}\n", pki::hex(&raw));
        pki::write_file(&dir.join("admin.token"), &token, true)?;
    }
    std::fs::create_dir_all(dir.join("data/datasets"))?;
    let cfg = dir.join("lakegate.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"# Written by `lakegate demo`. Paths are relative to this file.
[server]
listen = "127.0.0.1:{port}"
workers = "auto"
max_object_size = "64GiB"

[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
crl = ["crl.pem"]

[admin]
listen = "127.0.0.1:{admin}"
token_file = "admin.token"   # POST /reload needs this token (file mode 0600)

[backend]
kind = "store"
root = "data"
fsync = "always"

[[authz]]
identity = "spiffe://lake.example/trainer/*"
buckets = ["datasets"]
access = ["read", "write", "delete", "list"]
"#
        ),
    )?;
    Ok(cfg)
}

/// The commands printed for the newcomer.
pub fn instructions(dir: &Path, port: u16, admin: u16) -> String {
    let d = dir.display();
    let tls = |who: &str| format!("--cert {d}/{who}.crt --key {d}/{who}.key --cacert {d}/ca.crt");
    let url = format!("https://127.0.0.1:{port}");
    format!(
        "lakegate demo: store backend under {d}/data, bucket 'datasets'\n\
         \n\
         # upload, read back, list, delete as the allowed identity ({TRAINER}):\n\
         head -c 10M /dev/urandom > /tmp/sample.bin\n\
         curl {t} -T /tmp/sample.bin {url}/datasets/sample.bin\n\
         curl {t} {url}/datasets/sample.bin -o /tmp/sample.copy && cmp /tmp/sample.bin /tmp/sample.copy\n\
         curl {t} '{url}/datasets?list-type=2'\n\
         curl {t} -X DELETE {url}/datasets/sample.bin\n\
         \n\
         # the forbidden identity ({INTRUDER}) gets 403:\n\
         curl {i} -T /tmp/sample.bin {url}/datasets/sample.bin\n\
         \n\
         # no client certificate: the handshake is refused\n\
         curl --cacert {d}/ca.crt {url}/datasets/sample.bin\n\
         \n\
         # health and metrics\n\
         curl http://127.0.0.1:{admin}/readyz\n\
         curl http://127.0.0.1:{admin}/metrics\n\
         \n\
         # reload the configuration (needs the admin token; SIGHUP does the same)\n\
         curl -X POST -H \"Authorization: Bearer $(cat {d}/admin.token)\" http://127.0.0.1:{admin}/reload\n\
         \n\
         Ctrl-C drains and stops.\n",
        t = tls("trainer"),
        i = tls("intruder"),
    )
}
