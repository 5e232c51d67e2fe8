//! End-to-end: lakegate's `s3` backend in front of a real SeaweedFS cluster (one
//! master, three volume servers with one extra replica, a filer, two S3 gateways):
//! byte-exact transfers through curl, boto3 and rclone with client certificates;
//! authorization that stops requests before SeaweedFS; tenants that cannot see each
//! other; a dead volume server and a dead gateway; two appliances sharing one ticket key.
//!
//! Contract: ../shared/DESIGN.md `[backend] kind = "s3"`, README "Beyond one machine".

mod common;
#[path = "common/seaweed.rs"]
mod seaweed;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rustls::HandshakeKind;
use seaweed::Cluster;

const MIB: usize = 1 << 20;

/// alice: read, write, delete, list on `datasets` (upstream `lake-datasets`);
/// carol: read and list only.
const AUTHZ: &str = r#"
[[authz]]
identity = "spiffe://lake.example/trainer/alice"
buckets = ["datasets"]
access = ["read", "write", "delete", "list"]

[[authz]]
identity = "spiffe://lake.example/trainer/carol"
buckets = ["datasets"]
access = ["read", "list"]
"#;

/// The `[backend]` section for `cluster`, gateways in `order`.
fn s3_backend(lab: &Lab, cluster: &Cluster, order: &[usize], extra: &str) -> String {
    let creds = lab.path("s3-credentials.toml");
    cluster.write_credentials(&creds);
    let endpoints: Vec<String> = order
        .iter()
        .map(|&i| format!("\"{}\"", cluster.endpoint(i)))
        .collect();
    format!(
        "kind = \"s3\"\nendpoints = [{}]\nregion = \"us-east-1\"\ncredentials = \"{}\"\n\
         bucket_map = {{ datasets = \"lake-datasets\" }}\n{extra}",
        endpoints.join(", "),
        creds.display()
    )
}

/// Run a Python script (with boto3) and require it to print `ok`. argv: endpoint of
/// lakegate, CA, alice cert/key, carol cert/key, work dir, then `extra`. The prologue
/// defines `s3` (alice), `carol`, `code(f)` and `direct` (straight to gateway 0).
fn py(
    lab: &Lab,
    cluster: &Cluster,
    srv: &Server,
    name: &str,
    script: &str,
    extra: &[&str],
) -> Option<String> {
    let python = python_with("boto3")?;
    let path = lab.path(name);
    std::fs::write(
        &path,
        format!("{}\n{PRELUDE}\n{script}", cluster.boto3_direct(0)),
    )
    .unwrap();
    let (cert, key) = lab.client("alice");
    let (ccert, ckey) = lab.client("carol");
    let o = python_cmd(&python)
        .arg(&path)
        .arg(format!("https://127.0.0.1:{}", srv.port))
        .arg(lab.path("ca.crt"))
        .args([&cert, &key, &ccert, &ckey])
        .arg(lab.dir.path())
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && stdout.lines().any(|l| l == "ok"),
        "{name} failed ({}):\n{stdout}\n{}\nlakegate log:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        srv.log_plain()
    );
    Some(stdout)
}

const PRELUDE: &str = r#"
import hashlib, os, sys
import botocore
endpoint, ca, cert, key, carol_cert, carol_key, work = sys.argv[1:8]
extra = sys.argv[8:]

def client(c, k):
    cfg = Config(s3={"addressing_style": "path"}, client_cert=(c, k),
                 retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, verify=ca, config=cfg,
                        region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="not-a-secret")

s3 = client(cert, key)
carol = client(carol_cert, carol_key)

def code(f):
    try:
        f()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("no ClientError")

def direct_keys(prefix=""):
    r = direct.list_objects_v2(Bucket="lake-datasets", Prefix=prefix)
    return [o["Key"] for o in r.get("Contents", [])]

def sha_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
"#;

/// The upstream bucket, made straight on SeaweedFS.
fn make_upstream_bucket(cluster: &Cluster) -> bool {
    let Some(python) = python_with("boto3") else {
        return false;
    };
    let script = format!(
        "{}direct.create_bucket(Bucket='lake-datasets')\nprint('ok')\n",
        cluster.boto3_direct(0)
    );
    let o = python_cmd(&python).args(["-c", &script]).output().unwrap();
    assert!(
        o.status.success(),
        "create_bucket on SeaweedFS: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    true
}

/// A cluster with the upstream bucket, and a lab; None (skipped) without SeaweedFS or
/// boto3 outside CI.
fn setup() -> Option<(Lab, Cluster)> {
    let cluster = Cluster::start()?;
    if !make_upstream_bucket(&cluster) {
        return None;
    }
    Some((Lab::new(), cluster))
}

fn start(lab: &Lab, cluster: &Cluster, order: &[usize], extra: &str, server: &str) -> Server {
    Server::start_with_authz(lab, server, &s3_backend(lab, cluster, order, extra), AUTHZ)
}

/// A file of `len` pseudo-random bytes under the lab.
fn data_file(lab: &Lab, name: &str, len: usize) -> PathBuf {
    let p = lab.path(name);
    std::fs::write(&p, pseudo_random(len, len as u64 ^ 0x5eed)).unwrap();
    p
}

fn file_sha(p: &Path) -> String {
    sha256_hex(&std::fs::read(p).unwrap())
}

fn curl(lab: &Lab, who: &str, args: &[&str]) -> (String, String) {
    let (cert, key) = lab.client(who);
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(lab.path("ca.crt"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(args)
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn need_rclone() -> bool {
    let ok = Command::new("rclone")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false" || v == "0"),
            "CI: rclone is missing (.ci/run installs Debian's rclone)"
        );
        eprintln!("SKIPPED (rclone part): rclone is not installed");
    }
    ok
}

/// rclone with a remote `lg:` on lakegate and alice's certificate; its SDK refuses the
/// AWS_CA_BUNDLE this environment may set.
fn rclone(lab: &Lab, srv: &Server, args: &[&str]) -> std::process::Output {
    let (cert, key) = lab.client("alice");
    Command::new("rclone")
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", lab.path("rclone.conf"))
        .env("RCLONE_CONFIG_LG_TYPE", "s3")
        .env("RCLONE_CONFIG_LG_PROVIDER", "Other")
        .env("RCLONE_CONFIG_LG_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("RCLONE_CONFIG_LG_SECRET_ACCESS_KEY", "not-a-secret")
        .env("RCLONE_CONFIG_LG_REGION", "us-east-1")
        .env(
            "RCLONE_CONFIG_LG_ENDPOINT",
            format!("https://127.0.0.1:{}", srv.port),
        )
        .arg("--ca-cert")
        .arg(lab.path("ca.crt"))
        .arg("--client-cert")
        .arg(&cert)
        .arg("--client-key")
        .arg(&key)
        .args(args)
        .output()
        .expect("rclone")
}

#[test]
fn curl_boto3_and_rclone_move_256_mib_byte_exact_through_lakegate_to_seaweedfs() {
    let Some((lab, cluster)) = setup() else {
        return;
    };
    let srv = start(&lab, &cluster, &[0, 1], "", "");
    let big = data_file(&lab, "big.bin", 256 * MIB);
    let want = file_sha(&big);
    let url = |k: &str| format!("https://127.0.0.1:{}/datasets/{k}", srv.port);

    // curl: one 256 MiB PUT and GET.
    let (out, err) = curl(
        &lab,
        "alice",
        &[
            "-T",
            big.to_str().unwrap(),
            "-w",
            "%{http_code}",
            &url("curl/big.bin"),
        ],
    );
    assert!(
        out.ends_with("200") || out.ends_with("201"),
        "{out} {err}\n{}",
        srv.log_plain()
    );
    let back = lab.path("curl.back");
    let (out, err) = curl(
        &lab,
        "alice",
        &[
            "-o",
            back.to_str().unwrap(),
            "-w",
            "%{http_code}",
            &url("curl/big.bin"),
        ],
    );
    assert_eq!(out, "200", "{err}");
    assert_eq!(file_sha(&back), want, "curl GET differs");

    // boto3 defaults: multipart upload (8 MiB parts) and download; listing, copy, delete.
    py(
        &lab,
        &cluster,
        &srv,
        "via_boto3.py",
        r#"
src = extra[0]
s3.upload_file(src, "datasets", "boto3/big.bin")
dst = os.path.join(work, "boto3.back")
s3.download_file("datasets", "boto3/big.bin", dst)
assert sha_file(dst) == sha_file(src), "boto3 round trip differs"
assert "boto3/big.bin" in direct_keys("boto3/"), direct_keys()
r = s3.list_objects_v2(Bucket="datasets", Prefix="", Delimiter="/")
assert sorted(p["Prefix"] for p in r.get("CommonPrefixes", [])) == ["boto3/", "curl/"], r
s3.copy_object(Bucket="datasets", Key="copies/big.bin", CopySource={"Bucket": "datasets", "Key": "boto3/big.bin"})
s3.download_file("datasets", "copies/big.bin", dst)
assert sha_file(dst) == sha_file(src), "copy differs"
s3.delete_object(Bucket="datasets", Key="copies/big.bin")
assert code(lambda: s3.head_object(Bucket="datasets", Key="copies/big.bin"))[1] == 404
assert "copies/big.bin" not in direct_keys()
r = s3.delete_objects(Bucket="datasets", Delete={"Objects": [{"Key": "boto3/big.bin"}, {"Key": "curl/big.bin"}]})
assert sorted(d["Key"] for d in r["Deleted"]) == ["boto3/big.bin", "curl/big.bin"], r
assert direct_keys() == [], direct_keys()
print("ok")
"#,
        &[big.to_str().unwrap()],
    );

    // rclone: copy a folder holding the big file (multipart) and a small one, check it.
    if need_rclone() {
        let folder = lab.path("rc");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::rename(&big, folder.join("big.bin")).unwrap();
        std::fs::write(folder.join("small.txt"), b"small file\n").unwrap();
        let log = lab.path("rclone.log");
        let o = rclone(
            &lab,
            &srv,
            &[
                "copy",
                folder.to_str().unwrap(),
                "lg:datasets/rc",
                "--log-file",
                log.to_str().unwrap(),
                "-v",
            ],
        );
        assert!(
            o.status.success(),
            "rclone copy: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let o = rclone(
            &lab,
            &srv,
            &["check", folder.to_str().unwrap(), "lg:datasets/rc"],
        );
        let text = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && text.contains("0 differences found"),
            "rclone check: {text}"
        );
        let back = lab.path("rc.back");
        let o = rclone(
            &lab,
            &srv,
            &["copy", "lg:datasets/rc", back.to_str().unwrap()],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            file_sha(&back.join("big.bin")),
            want,
            "rclone round trip differs"
        );
    }
}

#[test]
fn an_identity_without_write_is_refused_and_nothing_reaches_seaweedfs() {
    let Some((lab, cluster)) = setup() else {
        return;
    };
    let srv = start(&lab, &cluster, &[0, 1], "", "");
    py(
        &lab,
        &cluster,
        &srv,
        "readonly.py",
        r#"
before = direct_keys()
assert code(lambda: carol.put_object(Bucket="datasets", Key="x/carol.bin", Body=b"nope")) == ("AccessDenied", 403)
assert code(lambda: carol.create_multipart_upload(Bucket="datasets", Key="x/mp.bin")) == ("AccessDenied", 403)
assert code(lambda: carol.delete_object(Bucket="datasets", Key="x/any")) == ("AccessDenied", 403)
s3.put_object(Bucket="datasets", Key="x/alice.bin", Body=b"hello")
assert code(lambda: carol.copy_object(Bucket="datasets", Key="x/copy.bin", CopySource="datasets/x/alice.bin")) == ("AccessDenied", 403)
assert carol.get_object(Bucket="datasets", Key="x/alice.bin")["Body"].read() == b"hello"
assert direct_keys() == before + ["x/alice.bin"], direct_keys()
up = direct.list_multipart_uploads(Bucket="lake-datasets").get("Uploads", [])
assert up == [], up
# A bucket no rule names is refused before any upstream request.
assert code(lambda: s3.list_objects_v2(Bucket="lake-datasets"))[1] == 403
print("ok")
"#,
        &[],
    );
}

#[test]
fn tenants_under_tenant_prefix_cannot_list_or_read_each_other() {
    let Some((lab, cluster)) = setup() else {
        return;
    };
    let authz = AUTHZ.replace(
        "access = [\"read\", \"list\"]",
        "access = [\"read\", \"write\", \"delete\", \"list\"]",
    );
    let port = free_port();
    let admin = free_port();
    let backend = s3_backend(&lab, &cluster, &[0, 1], "tenant_prefix = true");
    let cfg = lab.config_with_authz(port, admin, "", &backend, &authz);
    let srv = Server::spawn_config(&lab, port, admin, &cfg);
    py(
        &lab,
        &cluster,
        &srv,
        "tenants.py",
        r#"
s3.put_object(Bucket="datasets", Key="shared/name.txt", Body=b"alice's")
carol.put_object(Bucket="datasets", Key="shared/name.txt", Body=b"carol's")
assert s3.get_object(Bucket="datasets", Key="shared/name.txt")["Body"].read() == b"alice's"
assert carol.get_object(Bucket="datasets", Key="shared/name.txt")["Body"].read() == b"carol's"
for who, other in ((s3, "carol"), (carol, "alice")):
    r = who.list_objects_v2(Bucket="datasets")
    keys = [o["Key"] for o in r.get("Contents", [])]
    assert keys == ["shared/name.txt"], keys           # the prefix is stripped
    r = who.list_objects(Bucket="datasets", Prefix="", Delimiter="/")
    assert [p["Prefix"] for p in r.get("CommonPrefixes", [])] == ["shared/"], r
# Upstream, two keys under two different prefixes.
keys = direct_keys()
assert len(keys) == 2 and keys[0] != keys[1] and all(k.endswith("/shared/name.txt") for k in keys), keys
# A key that spells out the other tenant's prefix stays inside one's own.
other = [k for k in keys if "carol" in k]
assert other, keys
assert code(lambda: s3.get_object(Bucket="datasets", Key=other[0]))[1] == 404
assert code(lambda: s3.get_object(Bucket="datasets", Key="../" + other[0]))[1] in (400, 404)
# Copy cannot reach into the other tenant either.
assert code(lambda: s3.copy_object(Bucket="datasets", Key="stolen", CopySource="datasets/" + other[0]))[1] == 404
print("ok")
"#,
        &[],
    );
}

#[test]
fn a_volume_server_dies_during_20_gets_and_every_get_is_byte_exact() {
    let Some((lab, mut cluster)) = setup() else {
        return;
    };
    let srv = start(&lab, &cluster, &[0, 1], "", "");
    let obj = data_file(&lab, "obj.bin", 24 * MIB);
    let want = file_sha(&obj);
    let url = format!("https://127.0.0.1:{}/datasets/rep/obj.bin", srv.port);
    let (out, err) = curl(
        &lab,
        "alice",
        &["-T", obj.to_str().unwrap(), "-w", "%{http_code}", &url],
    );
    assert!(out.ends_with("200") || out.ends_with("201"), "{out} {err}");
    for i in 0..20 {
        if i == 5 {
            // The object is on two of the three; killing any one leaves a copy.
            cluster.kill_volume(1);
        }
        let back = lab.path(&format!("get{i}.bin"));
        let (out, err) = curl(
            &lab,
            "alice",
            &["-o", back.to_str().unwrap(), "-w", "%{http_code}", &url],
        );
        assert_eq!(out, "200", "GET {i}: {err}\n{}", srv.log_plain());
        assert_eq!(file_sha(&back), want, "GET {i} differs");
        std::fs::remove_file(&back).unwrap();
    }
}

#[test]
fn a_dead_gateway_fails_over_and_is_used_again_once_healthy() {
    let Some((lab, mut cluster)) = setup() else {
        return;
    };
    let srv = start(&lab, &cluster, &[0, 1], "", "");
    let url = |k: &str| format!("https://127.0.0.1:{}/datasets/fo/{k}", srv.port);
    let put = |k: &str| {
        let (out, err) = curl(
            &lab,
            "alice",
            &[
                "-X",
                "PUT",
                "--data-binary",
                k,
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                &url(k),
            ],
        );
        assert!(
            out == "200" || out == "201",
            "PUT {k}: {out} {err}\n{}",
            srv.log_plain()
        );
    };
    let ep0 = format!("endpoint=\"{}\"", cluster.endpoint(0));
    let ep1 = format!("endpoint=\"{}\"", cluster.endpoint(1));
    let ok = |ep: &str| {
        let m = srv.metrics();
        m.lines()
            .filter(|l| {
                l.starts_with("lakegate_upstream_requests_total")
                    && l.contains(ep)
                    && l.contains("result=\"ok\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    put("a");
    assert!(ok(&ep0) > 0.0, "the first endpoint serves while healthy");

    cluster.kill_gateway(0);
    let before1 = ok(&ep1);
    for k in ["b", "c", "d"] {
        put(k);
    }
    assert!(
        ok(&ep1) >= before1 + 3.0,
        "failover to the second gateway:\n{}",
        srv.metrics()
    );
    let m = srv.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("lakegate_upstream_requests_total")
                && l.contains(&ep0)
                && !l.contains("result=\"ok\"")
                && !l.ends_with(" 0")),
        "the failed endpoint is visible in the metrics:\n{m}"
    );

    cluster.restart_gateway(0);
    let before0 = ok(&ep0);
    assert!(
        eventually(Duration::from_secs(20), || {
            put("e");
            ok(&ep0) > before0
        }),
        "the restarted first gateway is used again after its health check:\n{}",
        srv.metrics()
    );
}

#[test]
fn two_appliances_with_one_ticket_key_share_objects_and_sessions() {
    let Some((lab, cluster)) = setup() else {
        return;
    };
    write_secret(&lab.path("fleet.key"), &random_ticket_key());
    let spawn = |order: &[usize]| {
        let backend = s3_backend(&lab, &cluster, order, "");
        let (port, admin) = (free_port(), free_port());
        let cfg = config_with_tls(
            &lab,
            port,
            admin,
            &backend,
            "ticket_key_file = \"fleet.key\"",
        );
        let text = std::fs::read_to_string(&cfg).unwrap();
        let at = text.find("[[authz]]").unwrap();
        std::fs::write(&cfg, format!("{}{AUTHZ}", &text[..at])).unwrap();
        Server::spawn_config(&lab, port, admin, &cfg)
    };
    let a = spawn(&[0, 1]);
    let b = spawn(&[1, 0]);

    let alice = client_config(&lab, Some("alice"), false);
    let body = b"written through appliance A";
    let mut ca = TlsClient::connect(a.port, alice.clone()).unwrap();
    let r = ca.request(
        format!(
            "PUT /datasets/fleet/obj HTTP/1.1\r\nHost: lake\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            std::str::from_utf8(body).unwrap()
        )
        .as_bytes(),
    );
    assert!(
        r.0 == 200 || r.0 == 201,
        "PUT via A: {r:?}\n{}",
        a.log_plain()
    );
    assert_eq!(ca.handshake_kind(), Some(HandshakeKind::Full));
    drop(ca);

    let t = Instant::now();
    let mut cb = TlsClient::connect(b.port, alice).unwrap();
    let r = cb.request(b"GET /datasets/fleet/obj HTTP/1.1\r\nHost: lake\r\n\r\n");
    assert_eq!(r.0, 200, "GET via B: {r:?}\n{}", b.log_plain());
    assert_eq!(r.2, body, "the object written through A, read through B");
    assert_eq!(
        cb.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "the session from A resumes on B"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(
        b.metric("lakegate_tls_sessions_total", "resumed=\"true\""),
        1.0
    );
}
