//! `lakegate demo`: the embedded default. Makes a throwaway PKI, an admin token, a
//! config with a `store` backend, a `datasets` bucket and a token-protected `models`
//! bucket under one folder (a lab token issuer: `issuer.key`, `jwks.json`, and a bearer
//! token bound to the trainer's certificate in `trainer.token`), prints ready-to-paste
//! `curl` commands for an allowed and a forbidden identity, the bound token and a
//! reload, then serves.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::authz::token::Alg;
use crate::lab::{trainer_rule, LabConfig};
use crate::pki::{self, KeyType};

/// Issuer of the demo's tokens.
const DEMO_ISSUER: &str = "https://auth.lake.example";
/// Key id of the demo issuer's key.
const DEMO_KID: &str = "demo-1";

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
    std::fs::create_dir_all(dir.join("data/models"))?;
    // A fresh token at every start (the last one may have expired), bound to the
    // trainer's certificate, for the models bucket only.
    let issuer = pki::jwt::load_or_generate(&dir.join("issuer.key"), Alg::Es256)?;
    pki::jwt::extend_jwks(&dir.join("jwks.json"), &issuer.jwk(DEMO_KID))?;
    let x5t = pki::jwt::thumbprint_of(&dir.join("trainer.crt"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = pki::jwt::claims(
        DEMO_ISSUER,
        "lakegate",
        "trainer-demo",
        Some("lakegate-demo"),
        "lake:read:models lake:write:models lake:list:models lake:delete:models",
        now,
        std::time::Duration::from_secs(12 * 3600),
        Some(&x5t),
    )?;
    let mut header = serde_json::Map::new();
    header.insert("typ".into(), serde_json::json!("JWT"));
    header.insert("kid".into(), serde_json::json!(DEMO_KID));
    let token = issuer.sign(&header, &claims)?;
    pki::write_file(&dir.join("trainer.token"), &format!("{token}\n"), true)?;
    let cfg = dir.join("lakegate.toml");
    let mut c = LabConfig::new(SocketAddr::from(([127, 0, 0, 1], port)));
    c.header = Some("Written by `lakegate demo`. Paths are relative to this file.".into());
    c.server = lines(&["workers = \"auto\"", "max_object_size = \"64GiB\""]);
    c.admin = Some(SocketAddr::from(([127, 0, 0, 1], admin)));
    c.admin_lines =
        lines(&["token_file = \"admin.token\"   # POST /reload needs this token (file mode 0600)"]);
    c.backend = lines(&[
        "kind = \"store\"",
        "root = \"data\"",
        "fsync = \"always\"",
        "etag = \"md5\"                 # single-part ETag: \"md5\" (as S3; rclone/AWS CLI check it) | \"sha256\"",
        "# In front of an S3-compatible store instead (SeaweedFS, MinIO, Ceph RGW):",
        "# kind = \"s3\"",
        "# endpoints = [\"http://127.0.0.1:8333\"]        # failover in order; http only for now",
        "# region = \"us-east-1\"",
        "# credentials = \"s3-credentials.toml\"          # access_key_id, secret_access_key (0600)",
        "# bucket_map = { datasets = \"lake-datasets\" }  # client bucket -> upstream bucket",
        "# tenant_prefix = false                        # true: each identity under its own prefix",
    ]);
    c.authz = trainer_rule(&lines(&[
        "buckets = [\"datasets\", \"models\"]",
        "access = [\"read\", \"write\", \"delete\", \"list\"]   # + \"manage\": CreateBucket/DeleteBucket of these names",
    ]));
    c.tail = format!(
        r#"# Bearer tokens (RFC 8705: bound to the client certificate), required on the models
# bucket; `lakegate pki token` mints more (trainer.token is made at every start).
[tokens]
jwks = "jwks.json"
issuer = "{DEMO_ISSUER}"
audience = "lakegate"
cert_bound = true
required = ["models"]
"#
    );
    c.write(&cfg)
        .with_context(|| format!("writing {}", cfg.display()))?;
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
         # the models bucket needs the bearer token bound to the trainer's certificate:\n\
         curl {t} -H \"Authorization: Bearer $(cat {d}/trainer.token)\" -T /tmp/sample.bin {url}/models/sample.bin\n\
         curl {t} -H \"Authorization: Bearer $(cat {d}/trainer.token)\" {url}/models/sample.bin -o /tmp/model.copy\n\
         # without it: 401; the same token over the other certificate: 401 (invalid_token, bound to another certificate)\n\
         curl -i {t} {url}/models/sample.bin\n\
         curl -i {i} -H \"Authorization: Bearer $(cat {d}/trainer.token)\" {url}/models/sample.bin\n\
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

fn lines(ls: &[&str]) -> Vec<String> {
    ls.iter().map(|l| l.to_string()).collect()
}
