//! End-to-end: the real binary with the `store` backend (HTTP object API on local disk),
//! driven by real clients: curl, boto3, raw HTTP over a rustls mTLS connection.
//!
//! Contract: ../shared/DESIGN.md "HTTP object API". Objects live at root/bucket/key;
//! uploads go to root/bucket/.lakegate-tmp-* and are renamed into place when complete,
//! so a partial upload is never visible and never left behind.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

const ALICE: &str = "spiffe://lake.example/trainer/alice";
const CAROL: &str = "spiffe://lake.example/trainer/carol";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn sha256_b64(data: &[u8]) -> String {
    b64(digest::digest(&digest::SHA256, data).as_ref())
}

/// A store root under the lab with the two buckets the tests use.
fn store_root(lab: &Lab, name: &str) -> PathBuf {
    let root = lab.path(name);
    for b in ["datasets", "models"] {
        std::fs::create_dir_all(root.join(b)).unwrap();
    }
    root
}

/// The store under test. These tests pin single-part ETags to the SHA-256
/// (`etag = "sha256"`), which they assert; the MD5 default is tested in tests/s3.rs.
fn store_backend(root: &Path, fsync: &str) -> String {
    format!(
        "kind = \"store\"\nroot = \"{}\"\nfsync = \"{fsync}\"\netag = \"sha256\"",
        root.display()
    )
}

/// Every file (not directory) under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                _ => out.push(p),
            }
        }
    }
    out
}

/// Upload temporaries (`.lakegate-tmp-*`) anywhere under `root`.
fn temporaries(root: &Path) -> Vec<PathBuf> {
    files_under(root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".lakegate-tmp"))
        })
        .collect()
}

/// Objects under `root` (relative paths): files none of whose path components is
/// reserved for the server (`.lakegate*`), sorted.
fn objects(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = files_under(root)
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .filter(|rel| !rel.split('/').any(|c| c.starts_with(".lakegate")))
        .collect();
    v.sort();
    v
}

/// Poll `cond` every 50 ms for up to `limit`; true as soon as it holds.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SHA-256 hex of a file, streamed.
fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    hex(ctx.finish().as_ref())
}

fn read_at(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(p).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

/// Every `<tag>...</tag>` text in an XML document, in order.
fn xml_all(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else {
            break;
        };
        out.push(rest[..j].to_string());
        rest = &rest[j + close.len()..];
    }
    out
}

/// Percent-encode everything but RFC 3986 unreserved characters (for query values).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

struct Reply {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

static CURL_SEQ: AtomicUsize = AtomicUsize::new(0);

fn curl_cmd(lab: &Lab, who: &str) -> Command {
    let (cert, key) = lab.client(who);
    let mut c = Command::new("curl");
    c.args(["-sS", "--cert", cert.to_str().unwrap()])
        .args(["--key", key.to_str().unwrap()])
        .args(["--cacert", lab.path("ca.crt").to_str().unwrap()]);
    c
}

/// Run curl as `who` against `path` on the server with `args`; the body goes to `out`
/// when given (then `Reply::body` is empty). Panics if curl itself fails.
fn curl(
    srv: &Server,
    lab: &Lab,
    who: &str,
    path: &str,
    args: &[&str],
    out: Option<&Path>,
) -> Reply {
    let n = CURL_SEQ.fetch_add(1, Ordering::Relaxed);
    let hdr = lab.path(&format!("curl-{n}.headers"));
    let body_file = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| lab.path(&format!("curl-{n}.body")));
    let url = format!("https://127.0.0.1:{}{path}", srv.port);
    let o = curl_cmd(lab, who)
        .args(args)
        .args(["-D", hdr.to_str().unwrap()])
        .args(["-o", body_file.to_str().unwrap()])
        .args(["-w", "%{http_code}"])
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl {args:?} {url} failed ({}): {}\nserver log:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        srv.log_plain()
    );
    let code: u16 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    // The last header block (after any 100 Continue).
    let text = std::fs::read_to_string(&hdr).unwrap_or_default();
    let block = text
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or_default();
    let headers = block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if out.is_some() {
        Vec::new()
    } else {
        std::fs::read(&body_file).unwrap_or_default()
    };
    Reply {
        code,
        headers,
        body,
    }
}

fn make_random_file(p: &Path, len: u64) {
    let st = Command::new("head")
        .args(["-c", &len.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(p).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::metadata(p).unwrap().len(), len);
}

// ---------------------------------------------------------------------------------------
// 1. curl: 1 GiB up and down, HEAD, list, Range, DELETE
// ---------------------------------------------------------------------------------------

#[test]
fn curl_uploads_1_gib_then_gets_heads_lists_ranges_and_deletes_it() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(&lab, "", &store_backend(&root, "always"));
    let src = lab.path("1g.bin");
    make_random_file(&src, GIB);
    let src_sha = sha256_file(&src);
    let key = "/datasets/big/1g.bin";

    // PUT (curl -T sends Content-Length; it also sends Expect: 100-continue).
    let r = curl(
        &srv,
        &lab,
        "alice",
        key,
        &["-T", src.to_str().unwrap()],
        None,
    );
    assert_eq!(r.code, 201, "PUT: {:?}\n{}", r.headers, srv.log_plain());
    assert_eq!(r.header("etag"), Some(format!("\"{src_sha}\"").as_str()));
    let want_b64 = b64(&(0..32)
        .map(|i| u8::from_str_radix(&src_sha[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>());
    assert_eq!(r.header("x-amz-checksum-sha256"), Some(want_b64.as_str()));
    let on_disk = root.join("datasets/big/1g.bin");
    assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), GIB);
    assert!(temporaries(&root).is_empty(), "{:?}", temporaries(&root));

    // GET back, byte-identical.
    let back = lab.path("1g.back");
    let r = curl(&srv, &lab, "alice", key, &[], Some(&back));
    assert_eq!(r.code, 200);
    assert_eq!(r.header("content-length"), Some(GIB.to_string().as_str()));
    assert_eq!(std::fs::metadata(&back).unwrap().len(), GIB);
    assert_eq!(sha256_file(&back), src_sha, "downloaded object differs");
    std::fs::remove_file(&back).unwrap();

    // HEAD.
    let r = curl(&srv, &lab, "alice", key, &["-I"], None);
    assert_eq!(r.code, 200);
    assert_eq!(r.header("content-length"), Some(GIB.to_string().as_str()));
    assert_eq!(r.header("etag"), Some(format!("\"{src_sha}\"").as_str()));
    let lm = r.header("last-modified").expect("HEAD has Last-Modified");
    assert!(lm.ends_with("GMT"), "Last-Modified is an HTTP date: {lm:?}");

    // ListObjectsV2.
    let r = curl(
        &srv,
        &lab,
        "alice",
        "/datasets?list-type=2&prefix=big/",
        &[],
        None,
    );
    assert_eq!(r.code, 200);
    let xml = String::from_utf8(r.body).unwrap();
    assert!(xml.contains("<ListBucketResult"), "{xml}");
    assert_eq!(
        xml_all(&xml, "Key"),
        vec!["big/1g.bin".to_string()],
        "{xml}"
    );
    assert_eq!(xml_all(&xml, "Size"), vec![GIB.to_string()], "{xml}");
    // The prefix filters.
    let r = curl(
        &srv,
        &lab,
        "alice",
        "/datasets?list-type=2&prefix=nope/",
        &[],
        None,
    );
    assert_eq!(r.code, 200);
    let xml = String::from_utf8(r.body).unwrap();
    assert!(xml_all(&xml, "Key").is_empty(), "{xml}");

    // Range.
    let r = curl(
        &srv,
        &lab,
        "alice",
        key,
        &["-H", "Range: bytes=1000-1999"],
        None,
    );
    assert_eq!(r.code, 206);
    assert_eq!(r.body, read_at(&src, 1000, 1000));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-1999/{GIB}").as_str())
    );
    assert_eq!(r.header("content-length"), Some("1000"));
    // The last byte, too.
    let r = curl(
        &srv,
        &lab,
        "alice",
        key,
        &["-H", &format!("Range: bytes={}-{}", GIB - 1, GIB - 1)],
        None,
    );
    assert_eq!(r.code, 206);
    assert_eq!(r.body, read_at(&src, GIB - 1, 1));

    // A chunked upload (curl -T - reads stdin and sends Transfer-Encoding: chunked).
    let small = pseudo_random(3 * MIB as usize + 17, 7);
    let small_path = lab.path("small.bin");
    std::fs::write(&small_path, &small).unwrap();
    let url = format!("https://127.0.0.1:{}/datasets/chunked/3m.bin", srv.port);
    let o = curl_cmd(&lab, "alice")
        .args(["-T", "-", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .stdin(std::fs::File::open(&small_path).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "201", "chunked PUT");
    assert_eq!(
        std::fs::read(root.join("datasets/chunked/3m.bin")).unwrap(),
        small
    );
    let r = curl(&srv, &lab, "alice", "/datasets/chunked/3m.bin", &[], None);
    assert_eq!((r.code, r.body == small), (200, true));

    // DELETE, then it is gone.
    let r = curl(&srv, &lab, "alice", key, &["-X", "DELETE"], None);
    assert_eq!(r.code, 204);
    assert!(!on_disk.exists());
    let r = curl(&srv, &lab, "alice", key, &[], None);
    assert_eq!(r.code, 404);
    let r = curl(&srv, &lab, "alice", key, &["-I"], None);
    assert_eq!(r.code, 404);
    let r = curl(&srv, &lab, "alice", key, &["-X", "DELETE"], None);
    assert_eq!(r.code, 204, "DELETE of an absent object succeeds, as in S3");
    let r = curl(
        &srv,
        &lab,
        "alice",
        "/datasets?list-type=2&prefix=big/",
        &[],
        None,
    );
    assert!(xml_all(&String::from_utf8_lossy(&r.body), "Key").is_empty());

    // One access-log line per request with identity, method, bucket, key, status.
    for (method, status) in [
        ("PUT", "201"),
        ("GET", "206"),
        ("DELETE", "204"),
        ("GET", "404"),
    ] {
        assert!(
            srv.log_line_with(&[ALICE, method, "datasets", "big/1g.bin", status])
                .is_some(),
            "no access-log line for {method} {status}:\n{}",
            srv.log_plain()
        );
    }
    assert!(temporaries(&root).is_empty());
}

// ---------------------------------------------------------------------------------------
// 2. boto3
// ---------------------------------------------------------------------------------------

const BOTO3_SCRIPT: &str = r#"
import hashlib, os, sys
import boto3, botocore
from botocore.config import Config
from boto3.s3.transfer import TransferConfig

endpoint, ca, cert, key, work = sys.argv[1:6]
MiB = 1024 * 1024

def sha(b):
    return hashlib.sha256(b).hexdigest()

cfg = Config(
    signature_version=botocore.UNSIGNED,
    s3={"addressing_style": "path"},
    client_cert=(cert, key),
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    retries={"total_max_attempts": 1, "mode": "standard"},
)
s3 = boto3.client("s3", endpoint_url=endpoint, verify=ca, config=cfg, region_name="us-east-1")
single = TransferConfig(multipart_threshold=64 * MiB, use_threads=False)

a = os.urandom(5 * MiB)
r = s3.put_object(Bucket="datasets", Key="boto/put.bin", Body=a)
assert r["ETag"] == '"%s"' % sha(a), r["ETag"]

b = os.urandom(5 * MiB)
src = os.path.join(work, "boto-upload.bin")
with open(src, "wb") as f:
    f.write(b)
s3.upload_file(src, "datasets", "boto/upload.bin", Config=single)

resp = s3.list_objects_v2(Bucket="datasets", Prefix="boto/")
got = {o["Key"]: o["Size"] for o in resp.get("Contents", [])}
assert got == {"boto/put.bin": 5 * MiB, "boto/upload.bin": 5 * MiB}, resp
assert not resp.get("IsTruncated"), resp

# One key per page: the continuation tokens must walk both keys in order.
keys = []
pages = s3.get_paginator("list_objects_v2").paginate(
    Bucket="datasets", Prefix="boto/", PaginationConfig={"PageSize": 1})
for page in pages:
    assert len(page.get("Contents", [])) <= 1, page
    keys += [o["Key"] for o in page.get("Contents", [])]
assert keys == ["boto/put.bin", "boto/upload.bin"], keys

o = s3.get_object(Bucket="datasets", Key="boto/put.bin")
assert o["ContentLength"] == 5 * MiB, o
assert o["Body"].read() == a, "get_object body differs"

dst = os.path.join(work, "boto-download.bin")
s3.download_file("datasets", "boto/upload.bin", dst, Config=single)
with open(dst, "rb") as f:
    assert f.read() == b, "download_file content differs"

h = s3.head_object(Bucket="datasets", Key="boto/upload.bin")
assert h["ContentLength"] == 5 * MiB, h
assert h["ETag"] == '"%s"' % sha(b), h

rg = s3.get_object(Bucket="datasets", Key="boto/put.bin", Range="bytes=100-199")
assert rg["Body"].read() == a[100:200], "range body differs"
assert rg["ContentRange"] == "bytes 100-199/%d" % (5 * MiB), rg

s3.delete_object(Bucket="datasets", Key="boto/upload.bin")
try:
    s3.head_object(Bucket="datasets", Key="boto/upload.bin")
    raise AssertionError("deleted object still answers HEAD")
except botocore.exceptions.ClientError as e:
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 404, e.response

print("put.bin", sha(a))
print("boto3-ok")
"#;

#[test]
fn boto3_puts_uploads_lists_and_gets_identical_objects() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(&lab, "", &store_backend(&root, "never"));
    let script = lab.path("boto3_roundtrip.py");
    std::fs::write(&script, BOTO3_SCRIPT).unwrap();
    let (cert, key) = lab.client("alice");
    let o = python_cmd(&py)
        .arg(&script)
        .arg(format!("https://127.0.0.1:{}", srv.port))
        .arg(lab.path("ca.crt"))
        .arg(&cert)
        .arg(&key)
        .arg(lab.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("boto3-ok"),
        "boto3 script failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        srv.log_plain()
    );
    // What boto3 stored is on disk where the contract says, and the deleted one is gone.
    let sha = stdout
        .lines()
        .find_map(|l| l.strip_prefix("put.bin "))
        .unwrap()
        .trim();
    let put = root.join("datasets/boto/put.bin");
    assert_eq!(std::fs::metadata(&put).unwrap().len(), 5 * MIB);
    assert_eq!(sha256_file(&put), sha);
    assert!(!root.join("datasets/boto/upload.bin").exists());
    assert!(temporaries(&root).is_empty());
}

// ---------------------------------------------------------------------------------------
// 3. authz: 403
// ---------------------------------------------------------------------------------------

#[test]
fn authz_gives_403_by_identity_bucket_and_access_first_match_wins() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let authz = format!(
        r#"[[authz]]
identity = "{CAROL}"
buckets = ["datasets"]
access = ["read", "list"]

[[authz]]
identity = "spiffe://lake.example/trainer/*"
"#
    );
    let srv = Server::start_with_authz(&lab, "", &store_backend(&root, "never"), &authz);
    let body = pseudo_random(4 * KIB as usize, 3);
    let file = lab.path("4k.bin");
    std::fs::write(&file, &body).unwrap();
    let put = ["-T", file.to_str().unwrap()];

    // Alice (catch-all trainer rule) writes to both buckets.
    assert_eq!(
        curl(&srv, &lab, "alice", "/datasets/shared/a.bin", &put, None).code,
        201
    );
    assert_eq!(
        curl(&srv, &lab, "alice", "/models/m.bin", &put, None).code,
        201
    );

    // Carol may not write: 403, nothing created, not even a temporary.
    let r = curl(&srv, &lab, "carol", "/datasets/carol/x.bin", &put, None);
    assert_eq!(r.code, 403, "{}", srv.log_plain());
    assert!(!root.join("datasets/carol/x.bin").exists());
    assert!(!root.join("datasets/carol").exists());
    // Overwriting alice's object is refused too, and it is untouched.
    let other = lab.path("other.bin");
    std::fs::write(&other, b"carol was here").unwrap();
    let r = curl(
        &srv,
        &lab,
        "carol",
        "/datasets/shared/a.bin",
        &["-T", other.to_str().unwrap()],
        None,
    );
    assert_eq!(r.code, 403);
    assert_eq!(
        std::fs::read(root.join("datasets/shared/a.bin")).unwrap(),
        body
    );
    // ... nor delete.
    let r = curl(
        &srv,
        &lab,
        "carol",
        "/datasets/shared/a.bin",
        &["-X", "DELETE"],
        None,
    );
    assert_eq!(r.code, 403);
    assert!(root.join("datasets/shared/a.bin").exists());

    // Carol reads and lists datasets.
    let r = curl(&srv, &lab, "carol", "/datasets/shared/a.bin", &[], None);
    assert_eq!(r.code, 200);
    assert_eq!(r.body, body);
    assert_eq!(
        curl(&srv, &lab, "carol", "/datasets/shared/a.bin", &["-I"], None).code,
        200
    );
    let r = curl(
        &srv,
        &lab,
        "carol",
        "/datasets?list-type=2&prefix=shared/",
        &[],
        None,
    );
    assert_eq!(r.code, 200);
    assert_eq!(
        xml_all(&String::from_utf8_lossy(&r.body), "Key"),
        vec!["shared/a.bin".to_string()]
    );

    // Her rule matched first and covers only datasets: models is closed to her although
    // the later catch-all would allow it.
    let r = curl(&srv, &lab, "carol", "/models/m.bin", &[], None);
    assert_eq!(r.code, 403);
    assert!(r.body.windows(body.len()).all(|w| w != body.as_slice()));
    let r = curl(&srv, &lab, "carol", "/models?list-type=2", &[], None);
    assert_eq!(r.code, 403);

    // Alice still writes after all that.
    let r = curl(&srv, &lab, "alice", "/datasets/alice/y.bin", &put, None);
    assert_eq!(r.code, 201);
    assert_eq!(
        std::fs::read(root.join("datasets/alice/y.bin")).unwrap(),
        body
    );

    assert!(
        srv.log_line_with(&[CAROL, "PUT", "carol/x.bin", "403"])
            .is_some(),
        "no 403 log line with carol's identity:\n{}",
        srv.log_plain()
    );
    assert!(temporaries(&root).is_empty());
}

// ---------------------------------------------------------------------------------------
// 4. 400 / 411 / 413 / 431 over raw HTTP on an mTLS connection
// ---------------------------------------------------------------------------------------

fn alice(srv: &Server, lab: &Lab) -> TlsClient {
    TlsClient::connect(srv.port, client_config(lab, Some("alice"), false))
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", srv.log_plain()))
}

/// One request on a fresh connection.
fn raw(srv: &Server, lab: &Lab, req: &[u8]) -> Response {
    alice(srv, lab).request(req)
}

fn put_req(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut v = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn post_req(path: &str, body: &[u8]) -> Vec<u8> {
    let mut v = put_req(path, body, "");
    v.splice(..3, *b"POST");
    v
}

fn get_req(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

#[test]
fn bad_keys_checksums_and_protocol_errors_are_refused_and_store_nothing() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(
        &lab,
        "max_object_size = \"1MiB\"",
        &store_backend(&root, "never"),
    );

    // Positive controls first, so a server that refuses everything fails here.
    let (st, h, _) = raw(&srv, &lab, &put_req("/datasets/ok/plain.txt", b"hello", ""));
    assert_eq!(st, 201, "{h:?}\n{}", srv.log_plain());
    assert_eq!(
        header(&h, "etag"),
        Some(format!("\"{}\"", sha256_hex(b"hello")).as_str())
    );
    // Percent-encoded UTF-8 is decoded into the file name.
    let (st, ..) = raw(&srv, &lab, &put_req("/datasets/caf%C3%A9.txt", b"cafe", ""));
    assert_eq!(st, 201);
    assert_eq!(
        std::fs::read(root.join("datasets/café.txt")).unwrap(),
        b"cafe"
    );
    // An empty object.
    let (st, h, _) = raw(&srv, &lab, &put_req("/datasets/ok/empty", b"", ""));
    assert_eq!(st, 201);
    assert_eq!(
        header(&h, "etag"),
        Some(format!("\"{}\"", sha256_hex(b"")).as_str())
    );
    let (st, h, b) = raw(&srv, &lab, &get_req("GET", "/datasets/ok/empty"));
    assert_eq!((st, b.len()), (200, 0));
    assert_eq!(header(&h, "content-length"), Some("0"));
    // A raw chunked upload.
    let (st, h, _) = raw(
        &srv,
        &lab,
        b"PUT /datasets/ok/chunked.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(st, 201, "{h:?}");
    assert_eq!(
        header(&h, "etag"),
        Some(format!("\"{}\"", sha256_hex(b"hello world")).as_str())
    );
    assert_eq!(
        std::fs::read(root.join("datasets/ok/chunked.txt")).unwrap(),
        b"hello world"
    );
    // Keep-alive: several requests on one connection.
    let mut c = alice(&srv, &lab);
    for i in 0..3 {
        let (st, _, b) = c.request(&get_req("GET", "/datasets/ok/chunked.txt"));
        assert_eq!(
            (st, b.as_slice()),
            (200, &b"hello world"[..]),
            "request {i}"
        );
    }
    // The longest key allowed: 1024 bytes.
    let seg = |n: usize| "k".repeat(n);
    let key1024 = [seg(200), seg(200), seg(200), seg(200), seg(220)].join("/");
    assert_eq!(key1024.len(), 1024);
    let (st, ..) = raw(
        &srv,
        &lab,
        &put_req(&format!("/datasets/{key1024}"), b"x", ""),
    );
    assert_eq!(st, 201, "a 1024-byte key is allowed");
    assert!(root.join("datasets").join(&key1024).is_file());

    // Bad keys: 400 for PUT and GET, and nothing written anywhere (inside the root or
    // outside it). Every probe's name contains "evil".
    let key1025 = format!("evil{}", &key1024[3..]);
    assert_eq!(key1025.len(), 1025);
    let bad = [
        "/datasets/../../evil-dotdot".to_string(),
        "/datasets/a/../evil-dotdot".to_string(),
        "/datasets/evil/..".to_string(),
        "/datasets/a/%2e%2e/%2E%2E/%2e%2e/evil-encoded-dotdot".to_string(),
        "/datasets/a//evil-empty-segment".to_string(),
        "/datasets/a/evil-trailing-empty/".to_string(),
        "/datasets/evil%00nul".to_string(),
        "/datasets/a%5C..%5C..%5Cevil-backslash".to_string(),
        format!("/datasets/{key1025}"),
        "/datasets/.lakegate-tmp-evil".to_string(),
        "/datasets/sub/.lakegate-evil".to_string(),
        "/datasets/.lakegate/evil".to_string(),
    ];
    for path in &bad {
        let (st, h, _) = raw(&srv, &lab, &put_req(path, b"evil payload", ""));
        assert_eq!(st, 400, "PUT {path}: {h:?}\n{}", srv.log_plain());
        let (st, ..) = raw(&srv, &lab, &get_req("GET", path));
        assert_eq!(st, 400, "GET {path}");
        let (st, ..) = raw(&srv, &lab, &get_req("DELETE", path));
        assert_eq!(st, 400, "DELETE {path}");
    }
    let evil: Vec<_> = files_under(lab.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("evil"))
        .collect();
    assert!(evil.is_empty(), "bad keys wrote files: {evil:?}");

    // Checksums: a wrong x-amz-checksum-sha256 or Content-MD5 is 400 and stores nothing.
    let body = b"the quick brown fox jumps over the lazy dog";
    let (st, ..) = raw(
        &srv,
        &lab,
        &put_req(
            "/datasets/sum/wrong-sha",
            body,
            &format!(
                "x-amz-checksum-sha256: {}\r\n",
                sha256_b64(b"something else")
            ),
        ),
    );
    assert_eq!(st, 400, "wrong x-amz-checksum-sha256");
    let (st, ..) = raw(
        &srv,
        &lab,
        &put_req(
            "/datasets/sum/junk-sha",
            body,
            "x-amz-checksum-sha256: not base64!\r\n",
        ),
    );
    assert_eq!(st, 400, "x-amz-checksum-sha256 that is not base64");
    // MD5("") = d41d8cd98f00b204e9800998ecf8427e: right for an empty body only.
    let (st, ..) = raw(
        &srv,
        &lab,
        &put_req(
            "/datasets/sum/wrong-md5",
            body,
            "Content-MD5: 1B2M2Y8AsgTpgAmY7PhCfg==\r\n",
        ),
    );
    assert_eq!(st, 400, "wrong Content-MD5");
    for k in ["wrong-sha", "junk-sha", "wrong-md5"] {
        let (st, ..) = raw(&srv, &lab, &get_req("HEAD", &format!("/datasets/sum/{k}")));
        assert_eq!(st, 404, "{k} must not be stored");
        assert!(!root.join("datasets/sum").join(k).exists());
    }
    // ... and right ones are accepted.
    let (st, h, _) = raw(
        &srv,
        &lab,
        &put_req(
            "/datasets/sum/right-sha",
            body,
            &format!("x-amz-checksum-sha256: {}\r\n", sha256_b64(body)),
        ),
    );
    assert_eq!(st, 201);
    assert_eq!(
        header(&h, "x-amz-checksum-sha256"),
        Some(sha256_b64(body).as_str())
    );
    let (st, ..) = raw(
        &srv,
        &lab,
        &put_req(
            "/datasets/sum/right-md5",
            b"",
            "Content-MD5: 1B2M2Y8AsgTpgAmY7PhCfg==\r\n",
        ),
    );
    assert_eq!(st, 201);

    // 411: PUT without Content-Length or Transfer-Encoding.
    let (st, ..) = raw(
        &srv,
        &lab,
        b"PUT /datasets/nolen.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    assert_eq!(st, 411);
    assert!(!root.join("datasets/nolen.bin").exists());

    // 413: one byte over max_object_size (1 MiB), decided on Content-Length alone: like
    // curl for large bodies, the client says Expect: 100-continue and sends no body
    // until told to. Exactly 1 MiB is fine.
    let (st, ..) = raw(
        &srv,
        &lab,
        format!(
            "PUT /datasets/too-big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            MIB + 1
        )
        .as_bytes(),
    );
    assert_eq!(st, 413);
    assert!(!root.join("datasets/too-big.bin").exists());
    let (resp, sha, _) = alice(&srv, &lab).put_streaming(
        &format!(
            "PUT /datasets/exactly-1mib.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {MIB}\r\n\r\n"
        ),
        MIB,
        12,
    );
    let (st, h, _) = resp.expect("a 201 response");
    assert_eq!(st, 201);
    assert_eq!(header(&h, "etag"), Some(format!("\"{sha}\"").as_str()));

    // 431: a request head over 16 KiB.
    let big = format!(
        "GET /datasets/ok/plain.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nx-filler: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let (st, ..) = raw(&srv, &lab, big.as_bytes());
    assert_eq!(st, 431);

    // Still serving, and nothing half-written anywhere.
    let (st, _, b) = raw(&srv, &lab, &get_req("GET", "/datasets/ok/plain.txt"));
    assert_eq!((st, b.as_slice()), (200, &b"hello"[..]));
    assert!(temporaries(&root).is_empty(), "{:?}", temporaries(&root));
}

// ---------------------------------------------------------------------------------------
// 5. A client killed mid-upload
// ---------------------------------------------------------------------------------------

fn kill_and_reap(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn client_killed_mid_upload_leaves_no_object_and_no_temporary() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(&lab, "", &store_backend(&root, "always"));
    // 512 MiB of zeros (sparse: no disk I/O to make it).
    let src = lab.path("512m.bin");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();

    // An existing object that an aborted overwrite must leave untouched.
    let old = pseudo_random(KIB as usize, 5);
    let (st, ..) = raw(&srv, &lab, &put_req("/datasets/big/existing.bin", &old, ""));
    assert_eq!(st, 201);

    // Two rate-limited uploads (each would take ~13 s): a new key, and over the old one.
    let spawn = |key: &str| {
        curl_cmd(&lab, "alice")
            .args([
                "--limit-rate",
                "40M",
                "-o",
                "/dev/null",
                "-T",
                src.to_str().unwrap(),
            ])
            .arg(format!("https://127.0.0.1:{}/datasets/big/{key}", srv.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut up_new = spawn("partial.bin");
    let mut up_old = spawn("existing.bin");

    // Wait until ~100 MiB of each have reached the server.
    let t = Instant::now();
    let reached = loop {
        let m = srv.metric("lakegate_bytes_received_total", "");
        let tmps = temporaries(&root);
        let tmp_sizes: Vec<u64> = tmps
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .collect();
        if m >= (200 * MIB) as f64
            || (tmp_sizes.len() == 2 && tmp_sizes.iter().all(|&s| s >= 100 * MIB))
        {
            break true;
        }
        if t.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let still_running =
        up_new.try_wait().unwrap().is_none() && up_old.try_wait().unwrap().is_none();
    if !reached || !still_running {
        kill_and_reap(&mut up_new);
        kill_and_reap(&mut up_old);
        panic!(
            "uploads never reached 100 MiB each while running (reached {reached}, running {still_running}, metric {}):\n{}",
            srv.metric("lakegate_bytes_received_total", ""),
            srv.log_plain()
        );
    }

    // Mid-upload, nothing partial is visible: not by HEAD/GET, not in a listing, not on
    // disk under the final name.
    let (st, ..) = raw(&srv, &lab, &get_req("HEAD", "/datasets/big/partial.bin"));
    assert_eq!(st, 404, "an upload in progress is visible");
    let (st, _, b) = raw(&srv, &lab, &get_req("GET", "/datasets/big/existing.bin"));
    assert_eq!(
        (st, b == old),
        (200, true),
        "an overwrite in progress is visible"
    );
    let (st, _, b) = raw(&srv, &lab, &get_req("GET", "/datasets?list-type=2&prefix="));
    assert_eq!(st, 200);
    let xml = String::from_utf8_lossy(&b).into_owned();
    assert_eq!(
        xml_all(&xml, "Key"),
        vec!["big/existing.bin".to_string()],
        "{xml}"
    );
    assert_eq!(xml_all(&xml, "Size"), vec![KIB.to_string()], "{xml}");
    assert!(!root.join("datasets/big/partial.bin").exists());

    kill_and_reap(&mut up_new);
    kill_and_reap(&mut up_old);

    // The server notices the dead connections and removes the temporaries.
    let clean = eventually(Duration::from_secs(10), || temporaries(&root).is_empty());
    assert!(
        clean,
        "temporaries left after the client died: {:?}\n{}",
        temporaries(&root),
        srv.log_plain()
    );
    assert!(!root.join("datasets/big/partial.bin").exists());
    assert_eq!(
        std::fs::read(root.join("datasets/big/existing.bin")).unwrap(),
        old
    );
    assert_eq!(
        objects(&root),
        vec!["datasets/big/existing.bin".to_string()]
    );
    let (st, ..) = raw(&srv, &lab, &get_req("GET", "/datasets/big/partial.bin"));
    assert_eq!(st, 404);

    // And it still takes uploads.
    let (st, ..) = raw(
        &srv,
        &lab,
        &put_req("/datasets/big/after.bin", b"after", ""),
    );
    assert_eq!(st, 201);
}

// ---------------------------------------------------------------------------------------
// 6. Disk full: 507
// ---------------------------------------------------------------------------------------

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Bytes in use on the filesystem.
    fn used(&self) -> u64 {
        let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        (st.f_blocks - st.f_bfree) as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn disk_full_gives_507_and_leaves_nothing_behind() {
    let lab = Lab::new();
    let root = lab.path("small-disk");
    // Declared before the server: dropped (unmounted) after it is killed.
    let fs = match Tmpfs::mount(&root, "32m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipped: cannot mount tmpfs: {e}");
            return;
        }
    };
    std::fs::create_dir(root.join("datasets")).unwrap();
    let srv = Server::start(&lab, "", &store_backend(&root, "always"));
    let before = fs.used();

    let (resp, _, _) = alice(&srv, &lab).put_streaming(
        &format!(
            "PUT /datasets/huge.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            64 * MIB
        ),
        64 * MIB,
        21,
    );
    let (st, h, _) = resp.unwrap_or_else(|e| panic!("no response: {e}\n{}", srv.log_plain()));
    assert_eq!(st, 507, "{h:?}\n{}", srv.log_plain());

    // The partial upload is removed: no object, no temporary, and the space is free
    // again (an unlinked file the server still holds open would keep it).
    let clean = eventually(Duration::from_secs(10), || {
        temporaries(&root).is_empty() && fs.used() <= before + 256 * KIB
    });
    assert!(
        clean,
        "left behind: {:?}, {} bytes used (was {before})",
        files_under(&root),
        fs.used()
    );
    assert!(objects(&root).is_empty(), "{:?}", files_under(&root));
    let (st, ..) = raw(&srv, &lab, &get_req("HEAD", "/datasets/huge.bin"));
    assert_eq!(st, 404);
    assert_eq!(
        srv.metric(
            "lakegate_request_errors_total",
            "code=\"InsufficientStorage\""
        ),
        1.0
    );

    // With the space back, a small upload works.
    let data = pseudo_random(MIB as usize, 22);
    let (st, ..) = raw(&srv, &lab, &put_req("/datasets/fits.bin", &data, ""));
    assert_eq!(st, 201, "{}", srv.log_plain());
    assert_eq!(std::fs::read(root.join("datasets/fits.bin")).unwrap(), data);

    // UploadPartCopy fills the disk too: the second 12 MiB copy does not fit, and it is
    // the same 507 (its write's fault, not a blanket 500), with nothing left behind.
    let src = pseudo_random(12 * MIB as usize, 23);
    let (st, ..) = raw(&srv, &lab, &put_req("/datasets/src.bin", &src, ""));
    assert_eq!(st, 201);
    let mut c = alice(&srv, &lab);
    let (st, _, x) = c.request(&post_req("/datasets/mp?uploads", b""));
    assert_eq!(st, 200);
    let id = xml_all(&String::from_utf8_lossy(&x), "UploadId").remove(0);
    let copy = |n: u32| {
        format!(
            "PUT /datasets/mp?partNumber={n}&uploadId={id} HTTP/1.1\r\nHost: x\r\nx-amz-copy-source: datasets/src.bin\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    let (st, ..) = c.request(&copy(1));
    assert_eq!(st, 200, "{}", srv.log_plain());
    let (st, _, b) = c.request(&copy(2));
    assert_eq!((st, xml_code(&b).as_str()), (507, "InsufficientStorage"));
    let (st, ..) = c.request(&get_req("DELETE", &format!("/datasets/mp?uploadId={id}")));
    assert_eq!(st, 204);
    let (st, ..) = c.request(&get_req("DELETE", "/datasets/src.bin"));
    assert_eq!(st, 204);
    assert!(
        eventually(Duration::from_secs(10), || temporaries(&root).is_empty()),
        "{:?}",
        files_under(&root)
    );

    // The same filesystem remounted read-only: a write is the store's failure (500),
    // told apart from a full disk by its fault, and reads go on.
    let ro = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(ro.success());
    let (st, _, b) = raw(&srv, &lab, &put_req("/datasets/late.bin", b"late", ""));
    assert_eq!((st, xml_code(&b).as_str()), (500, "InternalError"));
    let (st, _, b) = raw(&srv, &lab, &get_req("GET", "/datasets/fits.bin"));
    assert_eq!((st, b.len()), (200, data.len()));
    let fault = |f: &str| srv.metric("lakegate_store_errors_total", &format!("fault=\"{f}\""));
    assert_eq!((fault("no_space"), fault("read_only")), (2.0, 1.0));
    assert_eq!(fault("io"), 0.0);
    assert!(
        srv.log_line_with(&["request refused", "InsufficientStorage", "no_space"])
            .is_some()
            && srv
                .log_line_with(&["request refused", "InternalError", "read_only"])
                .is_some(),
        "{}",
        srv.log_plain()
    );
    drop(srv);
}

// ---------------------------------------------------------------------------------------
// 7. 50 concurrent clients
// ---------------------------------------------------------------------------------------

#[test]
fn fifty_concurrent_clients_put_and_get_1_mib_each() {
    const N: usize = 50;
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(&lab, "workers = 2", &store_backend(&root, "always"));
    let cfg = client_config(&lab, Some("alice"), false);
    let port = srv.port;
    let start = Arc::new(Barrier::new(N));
    let hs: Vec<_> = (0..N)
        .map(|i| {
            let cfg = cfg.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                let mut c = TlsClient::connect(port, cfg).unwrap();
                let data = pseudo_random(MIB as usize, 1000 + i as u64);
                let path = format!("/datasets/conc/obj-{i:02}.bin");
                // All 50 connections are up before any upload starts.
                start.wait();
                let (st, h, _) = c.request(&put_req(&path, &data, ""));
                let etag = header(&h, "etag").map(str::to_string);
                // GET back on the same (kept-alive) connection.
                let (st2, _, back) = c.request(&get_req("GET", &path));
                (i, st, etag, sha256_hex(&data), st2, back == data)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for h in hs {
        let (i, st, etag, sha, st2, same) = h.join().unwrap();
        if st != 201
            || etag.as_deref() != Some(format!("\"{sha}\"").as_str())
            || st2 != 200
            || !same
        {
            failures.push(format!(
                "client {i}: PUT {st} etag {etag:?} (want {sha}), GET {st2}, identical {same}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", srv.log_plain());

    // On disk, each object is the client's data.
    for i in 0..N {
        let p = root.join(format!("datasets/conc/obj-{i:02}.bin"));
        assert_eq!(
            sha256_file(&p),
            sha256_hex(&pseudo_random(MIB as usize, 1000 + i as u64)),
            "{}",
            p.display()
        );
    }
    assert!(temporaries(&root).is_empty());

    // ListObjectsV2 pages of 20 with continuation tokens: every key exactly once, in order.
    let mut c = TlsClient::connect(port, cfg).unwrap();
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/datasets?list-type=2&prefix=conc/&max-keys=20".to_string();
        if let Some(t) = &token {
            path += &format!("&continuation-token={}", pct(t));
        }
        let (st, _, b) = c.request(&get_req("GET", &path));
        assert_eq!(st, 200);
        let xml = String::from_utf8(b).unwrap();
        let page = xml_all(&xml, "Key");
        assert!(page.len() <= 20, "max-keys=20 gave {}: {xml}", page.len());
        for s in xml_all(&xml, "Size") {
            assert_eq!(s, MIB.to_string());
        }
        keys.extend(page);
        pages += 1;
        assert!(pages <= 10, "listing does not end: {xml}");
        let truncated = xml_all(&xml, "IsTruncated") == vec!["true".to_string()];
        if !truncated {
            break;
        }
        token = xml_all(&xml, "NextContinuationToken").into_iter().next();
        assert!(
            token.is_some(),
            "IsTruncated without NextContinuationToken: {xml}"
        );
    }
    let want: Vec<String> = (0..N).map(|i| format!("conc/obj-{i:02}.bin")).collect();
    assert_eq!(keys, want);
    assert_eq!(pages, 3);
}

// ---------------------------------------------------------------------------------------
// 8. DESIGN.md metrics: lakegate_requests_total{method, status}, and errors by S3 code
// ---------------------------------------------------------------------------------------

/// The sum of `name` samples whose labels contain every one of `labels`.
fn metric_with(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every key of the bucket, paged with `start-after`, 1,000 a page.
fn list_whole(c: &mut TlsClient) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    loop {
        let after = keys
            .last()
            .map_or(String::new(), |k| format!("&start-after={k}"));
        let (st, _, body) = c.request(&get_req(
            "GET",
            &format!("/datasets?list-type=2&max-keys=1000{after}"),
        ));
        let xml = String::from_utf8(body).unwrap();
        assert_eq!(st, 200, "{xml}");
        let page = xml_all(&xml, "Key");
        keys.extend(page);
        if !xml.contains("<IsTruncated>true</IsTruncated>") {
            return keys;
        }
    }
}

/// A large folder's sorted entries are kept between LIST pages
/// (`src/backend/store/listcache.rs`); what changes in it, through the object API or
/// behind the store's back, shows in the very next LIST.
#[test]
fn a_large_bucket_lists_whole_and_shows_each_change_at_once() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let mut want: Vec<String> = (0..1500).map(|i| format!("k{i:05}")).collect();
    for k in &want {
        std::fs::write(root.join("datasets").join(k), b"").unwrap();
    }
    // Old enough to be kept.
    std::thread::sleep(Duration::from_millis(2200));
    let srv = Server::start(&lab, "", &store_backend(&root, "never"));
    let mut c = alice(&srv, &lab);
    assert_eq!(list_whole(&mut c), want);
    assert_eq!(list_whole(&mut c), want);
    // The scrape shows it: one folder read and kept, the later pages served from it.
    let cache = |name: &str| srv.metric(&format!("lakegate_list_cache_{name}"), "");
    assert_eq!(
        (
            cache("fills_total"),
            cache("folders"),
            cache("oversize_total")
        ),
        (1.0, 1.0, 0.0)
    );
    assert!(cache("hits_total") >= 2.0, "{}", srv.metrics());
    assert!(cache("bytes") > 1500.0 * 8.0 && cache("bytes") <= cache("budget_bytes"));
    let (st, ..) = c.request(&put_req("/datasets/k00000a", b"new", ""));
    assert_eq!(st, 201);
    want.insert(1, "k00000a".into());
    assert_eq!(list_whole(&mut c), want);
    std::fs::write(root.join("datasets/zz"), b"behind").unwrap();
    std::fs::remove_file(root.join("datasets/k00007")).unwrap();
    want.push("zz".into());
    want.retain(|k| k != "k00007");
    assert_eq!(list_whole(&mut c), want);
    // Settled again: kept again, and still the same.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(list_whole(&mut c), want);
    assert_eq!(list_whole(&mut c), want);
    assert_eq!((cache("fills_total"), cache("folders")), (2.0, 1.0));
    std::fs::rename(root.join("datasets/zz"), root.join("datasets/k00007")).unwrap();
    want.pop();
    want.insert(8, "k00007".into());
    assert_eq!(list_whole(&mut c), want);
}

#[test]
fn requests_are_counted_by_method_and_status_and_errors_by_s3_code() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(&lab, "", &store_backend(&root, "never"));
    let mut c = alice(&srv, &lab);
    for i in 0..3 {
        let (st, ..) = c.request(&put_req(&format!("/datasets/m/{i}"), b"x", ""));
        assert_eq!(st, 201);
    }
    for _ in 0..2 {
        let (st, ..) = c.request(&get_req("GET", "/datasets/m/absent"));
        assert_eq!(st, 404);
    }
    // A Content-MD5 that is not the body's: 400 BadDigest, nothing stored.
    let (st, ..) = raw(
        &srv,
        &lab,
        &put_req(
            "/datasets/m/bad",
            b"x",
            "Content-MD5: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
        ),
    );
    assert_eq!(st, 400);
    let (st, ..) = c.request(&get_req("DELETE", "/datasets/m/0"));
    assert_eq!(st, 204);
    // The worker counts a request right after its response leaves, so a scrape that
    // races the last response may miss it: wait until the last one shows.
    let t = std::time::Instant::now();
    let mut m = srv.metrics();
    while metric_with(&m, "lakegate_requests_total", &["method=\"DELETE\""]) < 1.0
        && t.elapsed() < std::time::Duration::from_secs(5)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        m = srv.metrics();
    }
    let count = |method: &str, status: &str| {
        metric_with(
            &m,
            "lakegate_requests_total",
            &[
                &format!("method=\"{method}\""),
                &format!("status=\"{status}\""),
            ],
        )
    };
    assert_eq!(count("PUT", "201"), 3.0, "{m}");
    assert_eq!(count("GET", "404"), 2.0, "{m}");
    assert_eq!(count("DELETE", "204"), 1.0, "{m}");
    let errors = |code: &str| {
        metric_with(
            &m,
            "lakegate_request_errors_total",
            &[&format!("code=\"{code}\"")],
        )
    };
    assert_eq!(errors("NoSuchKey"), 2.0, "{m}");
    assert_eq!(errors("BadDigest"), 1.0, "{m}");
    // The two misses are what the filesystem said (ENOENT); the bad digest is not a
    // store fault at all.
    assert_eq!(
        metric_with(&m, "lakegate_store_errors_total", &["fault=\"not_found\""]),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_with(&m, "lakegate_store_errors_total", &[]),
        2.0,
        "{m}"
    );
    // Answers that are not errors are not counted, and every code is a series.
    assert_eq!(
        metric_with(&m, "lakegate_request_errors_total", &[]),
        3.0,
        "{m}"
    );
    assert!(
        m.contains("lakegate_request_errors_total{code=\"InsufficientStorage\"} 0"),
        "{m}"
    );
}

#[test]
fn an_error_answered_after_the_whole_body_keeps_the_connection() {
    // A client that gets a 400 or a 412 for a body it sent whole (boto3 retrying a bad
    // digest, a conditional write losing its race) keeps its connection, and with it
    // the mTLS handshake it paid for. Refusals before the body is read still close.
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(
        &lab,
        "max_object_size = \"1KiB\"",
        &store_backend(&root, "never"),
    );
    let closes = |h: &[(String, String)]| header(h, "connection") == Some("close");
    let mut c = alice(&srv, &lab);
    let (st, h, _) = c.request(&put_req("/datasets/k/one", b"first", ""));
    assert_eq!((st, closes(&h)), (201, false));

    let answers = [
        // Content-MD5 checked once the body is in. The body is a request of its own:
        // were it read as one, the next GET would find the object deleted.
        (
            put_req(
                "/datasets/k/two",
                SMUGGLED,
                "Content-MD5: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
            ),
            400,
            "BadDigest",
        ),
        // The same on a chunked body with a trailer, whose end only the empty line
        // after the trailer marks.
        (
            [
                &b"PUT /datasets/k/two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-MD5: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n"[..],
                format!("{:x}\r\n", SMUGGLED.len()).as_bytes(),
                SMUGGLED,
                b"\r\n0\r\nx-trailer: 1\r\n\r\n",
            ]
            .concat(),
            400,
            "BadDigest",
        ),
        // A conditional write over an existing object, judged at commit.
        (
            put_req("/datasets/k/one", b"second", "If-None-Match: *\r\n"),
            412,
            "PreconditionFailed",
        ),
        // An XML body read whole and found malformed.
        (
            {
                let xml = b"<Delete><Object>";
                let sum = format!("x-amz-checksum-sha256: {}\r\n", sha256_b64(xml));
                let mut v = put_req("/datasets?delete", xml, &sum);
                v.splice(..3, *b"POST");
                v
            },
            400,
            "MalformedXML",
        ),
    ];
    for (req, status, code) in &answers {
        let (st, h, b) = c.request(req);
        let doc = String::from_utf8_lossy(&b);
        assert_eq!((st, xml_code(&b).as_str()), (*status, *code), "{doc}");
        assert!(!closes(&h), "{code}: {h:?}");
        // The same connection serves the next request.
        let (st, _, b) = c.request(&get_req("GET", "/datasets/k/one"));
        assert_eq!((st, b.as_slice()), (200, &b"first"[..]), "after {code}");
    }
    // Pipelined behind a refused body: the next request is read from where it ended.
    let mut two = answers[0].0.clone();
    two.extend_from_slice(&get_req("GET", "/datasets/k/one"));
    c.send(&two).unwrap();
    let mut r = c.plain_reader();
    let (st, ..) = read_response(&mut r, false).unwrap();
    assert_eq!(st, 400);
    let (st, _, b) = read_response(&mut r, false).unwrap();
    assert_eq!((st, b.as_slice()), (200, &b"first"[..]));
    assert!(!root.join("datasets/k/two").exists());

    // Refused before its body is read (announced over max_object_size): the answer
    // says close, and the connection ends, for the body's bytes are still coming; the
    // requests they spell are never served.
    let big = put_req("/datasets/k/big", &SMUGGLED.repeat(40), "");
    let (st, h, b) = c.request(&big);
    assert_eq!((st, xml_code(&b).as_str()), (413, "EntityTooLarge"));
    assert!(closes(&h), "{h:?}");
    assert!(c.try_request(&get_req("GET", "/datasets/k/one")).is_err());
    let (st, _, b) = alice(&srv, &lab).request(&get_req("GET", "/datasets/k/one"));
    assert_eq!((st, b.as_slice()), (200, &b"first"[..]));
}

/// A request hidden in a body: served only if the body were misread as requests.
const SMUGGLED: &[u8] = b"DELETE /datasets/k/one HTTP/1.1\r\nHost: x\r\n\r\n";

// ---------------------------------------------------------------------------------------
// 9. What the store does not implement is refused (501) and changes nothing
// ---------------------------------------------------------------------------------------

/// Every file under `root` with its SHA-256: the store's whole visible state.
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = files_under(root)
        .iter()
        .map(|p| {
            (
                p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                sha256_file(p),
            )
        })
        .collect();
    v.sort();
    v
}

fn xml_code(body: &[u8]) -> String {
    xml_all(&String::from_utf8_lossy(body), "Code")
        .into_iter()
        .next()
        .unwrap_or_default()
}

#[test]
fn unimplemented_operations_headers_and_subresources_get_501_and_change_nothing() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(&lab, "", &store_backend(&root, "never"));
    let keep = pseudo_random(4096, 77);
    let (st, ..) = raw(&srv, &lab, &put_req("/datasets/keep.bin", &keep, ""));
    assert_eq!(st, 201);
    let before = snapshot(&root);
    let body = b"this must never be stored";

    // (method, target, extra header lines, body)
    let mut cases: Vec<(&str, String, String, bool)> = vec![
        // CopyObject with what it does not implement, onto an existing key.
        (
            "PUT",
            "/datasets/keep.bin".into(),
            "x-amz-copy-source: datasets/keep.bin\r\nx-amz-tagging-directive: REPLACE\r\n".into(),
            false,
        ),
        (
            "PUT",
            "/datasets/copy.bin".into(),
            "x-amz-copy-source: datasets/keep.bin?versionId=1\r\n".into(),
            false,
        ),
        (
            "PUT",
            "/datasets/copy.bin".into(),
            "x-amz-copy-source: datasets/keep.bin\r\nIf-None-Match: *\r\n".into(),
            false,
        ),
        // UploadPartCopy from an SSE-C source (UploadPartCopy itself is supported).
        (
            "PUT",
            "/datasets/keep.bin?partNumber=1&uploadId=abc".into(),
            "x-amz-copy-source: datasets/keep.bin\r\nx-amz-copy-source-server-side-encryption-customer-algorithm: AES256\r\n".into(),
            false,
        ),
        // Sub-resources on an existing key.
        (
            "PUT",
            "/datasets/keep.bin?tagging".into(),
            String::new(),
            true,
        ),
        ("PUT", "/datasets/keep.bin?acl".into(), String::new(), true),
        (
            "PUT",
            "/datasets/keep.bin?retention".into(),
            String::new(),
            true,
        ),
        (
            "PUT",
            "/datasets/keep.bin?legal-hold".into(),
            String::new(),
            true,
        ),
        (
            "DELETE",
            "/datasets/keep.bin?tagging".into(),
            String::new(),
            false,
        ),
        (
            "DELETE",
            "/datasets/keep.bin?versionId=1".into(),
            String::new(),
            false,
        ),
        ("DELETE", "/datasets?policy".into(), String::new(), false),
        ("PUT", "/newbucket?acl".into(), String::new(), false),
        (
            "PUT",
            "/newbucket".into(),
            "x-amz-bucket-object-lock-enabled: true\r\n".into(),
            false,
        ),
        (
            "GET",
            "/datasets/keep.bin?tagging".into(),
            String::new(),
            false,
        ),
        ("GET", "/datasets/keep.bin?acl".into(), String::new(), false),
        (
            "GET",
            "/datasets/keep.bin?partNumber=1".into(),
            String::new(),
            false,
        ),
        (
            "GET",
            "/datasets/keep.bin?versionId=1".into(),
            String::new(),
            false,
        ),
        (
            "GET",
            "/datasets/keep.bin?response-content-type=text/html".into(),
            String::new(),
            false,
        ),
        ("GET", "/datasets?versioning".into(), String::new(), false),
        ("GET", "/datasets?lifecycle".into(), String::new(), false),
        ("GET", "/datasets?policy".into(), String::new(), false),
        ("GET", "/datasets?cors".into(), String::new(), false),
        (
            "GET",
            "/datasets?uploads&delimiter=/".into(),
            String::new(),
            false,
        ),
        (
            "POST",
            "/datasets/keep.bin?select&select-type=2".into(),
            String::new(),
            true,
        ),
        ("POST", "/datasets/keep.bin".into(), String::new(), true),
        ("HEAD", "/datasets?acl".into(), String::new(), false),
        (
            "GET",
            "/datasets?list-type=2&fetch-owner=true".into(),
            String::new(),
            false,
        ),
    ];
    // Headers that would change what a PUT means, each onto the existing key.
    for h in [
        "x-amz-copy-source-range: bytes=0-1",
        "x-amz-server-side-encryption: AES256",
        "x-amz-server-side-encryption-aws-kms-key-id: k",
        "x-amz-server-side-encryption-customer-algorithm: AES256",
        "x-amz-server-side-encryption-customer-key: AAAA",
        "x-amz-tagging: a=b",
        "x-amz-object-lock-mode: GOVERNANCE",
        "x-amz-object-lock-retain-until-date: 2030-01-01T00:00:00Z",
        "x-amz-object-lock-legal-hold: ON",
        "x-amz-website-redirect-location: /elsewhere",
        "x-amz-grant-read: id=1",
        "x-amz-grant-full-control: id=1",
        "x-amz-acl: public-read",
        "x-amz-storage-class: GLACIER",
        "If-None-Match: \"x\"",
        "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
        "If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
        "Content-Encoding: gzip",
        "Content-Disposition: attachment",
        "Cache-Control: max-age=1",
        "x-amz-checksum-crc32c: AAAAAA==",
        "x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "x-amz-expected-bucket-owner: 123",
        "x-unknown-extension: 1",
    ] {
        cases.push(("PUT", "/datasets/keep.bin".into(), format!("{h}\r\n"), true));
    }
    // Preconditions the store does not evaluate on reads and deletes.
    for (m, h) in [
        ("GET", "x-amz-server-side-encryption-customer-key: AAAA"),
        ("GET", "x-amz-meta-color: blue"),
        ("DELETE", "If-Match: \"x\""),
        ("DELETE", "x-amz-bypass-governance-retention: true"),
    ] {
        cases.push((m, "/datasets/keep.bin".into(), format!("{h}\r\n"), false));
    }

    let mut failures = Vec::new();
    for (method, target, extra, with_body) in &cases {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}");
        if *with_body || matches!(*method, "PUT" | "POST") {
            let b: &[u8] = if *with_body { body } else { b"" };
            req += &format!("Content-Length: {}\r\n\r\n", b.len());
            let mut v = req.into_bytes();
            v.extend_from_slice(b);
            req = String::from_utf8(v).unwrap();
        } else {
            req += "\r\n";
        }
        let (st, h, b) = raw(&srv, &lab, req.as_bytes());
        let code = xml_code(&b);
        let head_only = *method == "HEAD";
        if st != 501
            || (!head_only && code != "NotImplemented")
            || header(&h, "x-amz-request-id").is_none()
        {
            failures.push(format!(
                "{method} {target} [{}]: {st} {code:?}",
                extra.trim()
            ));
        }
        let now = snapshot(&root);
        if now != before {
            failures.push(format!(
                "{method} {target} [{}] changed the store: {now:?}",
                extra.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", srv.log_plain());
    assert_eq!(std::fs::read(root.join("datasets/keep.bin")).unwrap(), keep);
    assert!(!root.join("datasets/copy.bin").exists());
    assert!(!root.join("newbucket").exists());

    // What is implemented still works, and the store is still serving.
    let (st, _, b) = raw(&srv, &lab, &get_req("GET", "/datasets/keep.bin"));
    assert_eq!((st, b == keep), (200, true));
    let etag = format!("\"{}\"", sha256_hex(&keep));
    let (st, ..) = raw(
        &srv,
        &lab,
        format!("GET /datasets/keep.bin HTTP/1.1\r\nHost: x\r\nIf-Match: {etag}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(st, 200, "If-Match with the object's ETag");
    let (st, _, b) = raw(
        &srv,
        &lab,
        b"GET /datasets/keep.bin HTTP/1.1\r\nHost: x\r\nIf-Match: \"other\"\r\n\r\n",
    );
    assert_eq!((st, xml_code(&b).as_str()), (412, "PreconditionFailed"));
    let (st, _, b) = raw(
        &srv,
        &lab,
        format!("GET /datasets/keep.bin HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!((st, b.len()), (304, 0));
    let (st, ..) = raw(
        &srv,
        &lab,
        &put_req("/datasets/typed.bin", b"x", "Content-Type: application/octet-stream\r\nx-amz-storage-class: STANDARD\r\nx-amz-acl: private\r\n"),
    );
    assert_eq!(st, 201);
}

// ---------------------------------------------------------------------------------------
// 10. Errors: S3 XML with codes and request ids; HEAD carries no body
// ---------------------------------------------------------------------------------------

#[test]
fn errors_are_s3_xml_with_a_request_id_and_keep_the_reason_in_the_log() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let authz = r#"[[authz]]
identity = "spiffe://lake.example/trainer/car*"
buckets = ["datasets"]
access = ["read", "list"]

[[authz]]
identity = "spiffe://lake.example/trainer/*"
"#;
    let srv = Server::start_with_authz(&lab, "", &store_backend(&root, "never"), authz);
    let mut ids = Vec::new();

    // Success responses carry a request id too: 201, 200, 204.
    let mut c = alice(&srv, &lab);
    let (st, h, _) = c.request(&put_req("/datasets/e/a.bin", b"abc", ""));
    assert_eq!(st, 201);
    ids.push(
        header(&h, "x-amz-request-id")
            .expect("201 has x-amz-request-id")
            .to_string(),
    );
    let (st, h, _) = c.request(&get_req("GET", "/datasets/e/a.bin"));
    assert_eq!(st, 200);
    ids.push(
        header(&h, "x-amz-request-id")
            .expect("200 has x-amz-request-id")
            .to_string(),
    );
    let (st, h, _) = c.request(&get_req("GET", "/datasets?list-type=2"));
    assert_eq!(st, 200);
    ids.push(
        header(&h, "x-amz-request-id")
            .expect("list has x-amz-request-id")
            .to_string(),
    );

    // 403: S3 code and a request id; no rule text in the body; the reason in the log.
    let mut carol =
        TlsClient::connect(srv.port, client_config(&lab, Some("carol"), false)).unwrap();
    let (st, h, b) = carol.request(&put_req("/datasets/e/c.bin", b"nope", ""));
    assert_eq!(st, 403);
    let text = String::from_utf8_lossy(&b).into_owned();
    assert_eq!(xml_code(&b), "AccessDenied", "{text}");
    let rid = xml_all(&text, "RequestId")
        .pop()
        .expect("RequestId in the body");
    assert_eq!(rid.len(), 16, "{rid}");
    assert!(rid.bytes().all(|c| c.is_ascii_hexdigit()), "{rid}");
    assert_eq!(header(&h, "x-amz-request-id"), Some(rid.as_str()));
    for secret in ["trainer/car*", "authz rule", "rule 0", "does not grant"] {
        assert!(!text.contains(secret), "403 body leaks {secret:?}: {text}");
    }
    assert!(
        text.contains("<Message>") && text.contains("<Resource>/datasets/e/c.bin</Resource>"),
        "{text}"
    );
    let line = srv
        .log_line_with(&[&rid, "authz rule 0"])
        .unwrap_or_else(|| {
            panic!(
                "no log line with {rid} and the reason:\n{}",
                srv.log_plain()
            )
        });
    assert!(line.contains("write"), "{line}");
    ids.push(rid);
    // A refused PUT's body is not read, so that connection closes: a new one.
    let mut carol =
        TlsClient::connect(srv.port, client_config(&lab, Some("carol"), false)).unwrap();
    let (st, _, b) = carol.request(&get_req("GET", "/models?list-type=2"));
    assert_eq!((st, xml_code(&b).as_str()), (403, "AccessDenied"));

    // 404: NoSuchKey for a missing object, NoSuchBucket for a missing bucket.
    let (st, h, b) = c.request(&get_req("GET", "/datasets/e/absent"));
    assert_eq!((st, xml_code(&b).as_str()), (404, "NoSuchKey"));
    ids.push(header(&h, "x-amz-request-id").unwrap().to_string());
    let (st, _, b) = c.request(&get_req("GET", "/nobucket/k"));
    assert_eq!((st, xml_code(&b).as_str()), (404, "NoSuchBucket"));
    let (st, _, b) = c.request(&get_req("GET", "/nobucket?list-type=2"));
    assert_eq!((st, xml_code(&b).as_str()), (404, "NoSuchBucket"));
    // DELETE of a missing key succeeds as in S3 (a retried delete must not fail); in
    // a missing bucket, or through a missing folder, it is still what S3 answers.
    let (st, _, b) = c.request(&get_req("DELETE", "/datasets/e/absent"));
    assert_eq!((st, b.len()), (204, 0));
    let (st, _, b) = c.request(&get_req("DELETE", "/datasets/no/such/folder"));
    assert_eq!((st, b.len()), (204, 0));
    let (st, _, b) = c.request(&get_req("DELETE", "/nobucket/k"));
    assert_eq!((st, xml_code(&b).as_str()), (404, "NoSuchBucket"));
    let (st, _, b) = raw(&srv, &lab, &put_req("/nobucket/k", b"x", ""));
    assert_eq!((st, xml_code(&b).as_str()), (404, "NoSuchBucket"));
    let (st, _, b) = c.request(&get_req("GET", "/datasets/a/../b"));
    assert_eq!((st, xml_code(&b).as_str()), (400, "InvalidArgument"));
    let (st, _, b) = c.request(&get_req("GET", "/Bad_Bucket/k"));
    assert_eq!((st, xml_code(&b).as_str()), (400, "InvalidBucketName"));
    let (st, h, b) =
        c.request(b"GET /datasets/e/a.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=10-20\r\n\r\n");
    assert_eq!((st, xml_code(&b).as_str()), (416, "InvalidRange"));
    assert_eq!(header(&h, "content-range"), Some("bytes */3"));
    let (st, _, b) = raw(&srv, &lab, b"GET /datasets/%zz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((st, xml_code(&b).as_str()), (400, "InvalidURI"));
    let (st, _, b) = raw(
        &srv,
        &lab,
        b"PATCH /datasets/e/a.bin HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!((st, xml_code(&b).as_str()), (405, "MethodNotAllowed"));
    let (st, _, b) = raw(&srv, &lab, b"PUT /datasets/e/n HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((st, xml_code(&b).as_str()), (411, "MissingContentLength"));
    let big = format!(
        "GET /datasets/e/a.bin HTTP/1.1\r\nHost: x\r\nx-f: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let (st, _, b) = raw(&srv, &lab, big.as_bytes());
    assert_eq!(
        (st, xml_code(&b).as_str()),
        (431, "RequestHeaderSectionTooLarge")
    );
    let (st, _, b) = raw(
        &srv,
        &lab,
        &put_req(
            "/datasets/e/bad-md5",
            b"abc",
            "Content-MD5: 1B2M2Y8AsgTpgAmY7PhCfg==\r\n",
        ),
    );
    assert_eq!((st, xml_code(&b).as_str()), (400, "BadDigest"));
    let (st, _, b) = raw(
        &srv,
        &lab,
        &put_req("/datasets/e/junk-md5", b"abc", "Content-MD5: junk\r\n"),
    );
    assert_eq!((st, xml_code(&b).as_str()), (400, "InvalidDigest"));

    // HEAD: the error's headers, no body; the next request on the connection parses.
    let h2 = alice(&srv, &lab);
    h2.send(&get_req("HEAD", "/datasets/e/absent")).unwrap();
    h2.send(&get_req("GET", "/datasets/e/a.bin")).unwrap();
    let mut r = h2.plain_reader();
    let (st, h, _) = read_response(&mut r, true).unwrap();
    assert_eq!(st, 404);
    assert!(header(&h, "x-amz-request-id").is_some());
    let (st, _, b) = read_response(&mut r, false).unwrap();
    assert_eq!(
        (st, b.as_slice()),
        (200, &b"abc"[..]),
        "the HEAD's body leaked into the next response"
    );

    let (st, h, _) = c.request(&get_req("DELETE", "/datasets/e/a.bin"));
    assert_eq!(st, 204);
    ids.push(
        header(&h, "x-amz-request-id")
            .expect("204 has x-amz-request-id")
            .to_string(),
    );
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), ids.len(), "request ids repeat: {ids:?}");
    assert!(srv
        .log_settled()
        .lines()
        .all(|l| !l.contains("os error") || !l.contains("<Error>")));
}

// ---------------------------------------------------------------------------------------
// 11. Slow clients: request_head_timeout and min_body_rate give 408
// ---------------------------------------------------------------------------------------

/// Send `bytes` in pieces of `piece` every `every` on `c` while another thread reads the
/// response; stop once it is in. Returns the response and when it came.
fn trickle(
    c: TlsClient,
    bytes: Vec<u8>,
    piece: usize,
    every: Duration,
) -> (std::io::Result<Response>, Duration) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut r = c.plain_reader();
    let d2 = done.clone();
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || {
        let resp = read_response(&mut r, false);
        d2.store(true, Ordering::SeqCst);
        (resp, t0.elapsed())
    });
    for chunk in bytes.chunks(piece) {
        if done.load(Ordering::SeqCst) || c.send(chunk).is_err() {
            break;
        }
        std::thread::sleep(every);
    }
    reader.join().unwrap()
}

#[test]
fn slow_heads_and_bodies_get_408_and_store_nothing() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(
        &lab,
        "request_head_timeout = \"2s\"\nmin_body_rate = \"64KiB/2s\"",
        &store_backend(&root, "never"),
    );
    // A fast upload is not affected.
    let data = pseudo_random(4 * MIB as usize, 31);
    let (st, ..) = raw(&srv, &lab, &put_req("/datasets/fast.bin", &data, ""));
    assert_eq!(st, 201);

    // A head trickled one byte per 300 ms (idle_timeout is 30 s): 408 after ~2 s.
    let head =
        b"GET /datasets/fast.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n\r\n"
            .to_vec();
    let (resp, took) = trickle(alice(&srv, &lab), head, 1, Duration::from_millis(300));
    let (st, h, b) = resp.unwrap_or_else(|e| panic!("no response: {e}\n{}", srv.log_plain()));
    assert_eq!(st, 408, "{h:?}");
    assert_eq!(xml_code(&b), "RequestTimeout");
    assert!(header(&h, "x-amz-request-id").is_some());
    assert_eq!(header(&h, "connection"), Some("close"));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "408 after {took:?}"
    );

    // A body trickled at ~3 KiB/s (under 64 KiB per 2 s): 408, nothing stored.
    let mut req = format!(
        "PUT /datasets/slow.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {MIB}\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&pseudo_random(MIB as usize, 32));
    let (resp, took) = trickle(alice(&srv, &lab), req, 1024, Duration::from_millis(300));
    let (st, h, b) = resp.unwrap_or_else(|e| panic!("no response: {e}\n{}", srv.log_plain()));
    assert_eq!(st, 408, "{h:?}");
    assert_eq!(xml_code(&b), "RequestTimeout");
    assert!(took < Duration::from_secs(6), "408 after {took:?}");
    assert!(!root.join("datasets/slow.bin").exists());
    assert!(
        eventually(Duration::from_secs(5), || temporaries(&root).is_empty()),
        "{:?}",
        temporaries(&root)
    );

    // Counted and logged with the reason.
    assert!(
        eventually(Duration::from_secs(5), || {
            metric_with(
                &srv.metrics(),
                "lakegate_requests_total",
                &["status=\"408\""],
            ) >= 2.0
        }),
        "{}",
        srv.metrics()
    );
    assert!(
        srv.log_line_with(&["request_head_timeout"]).is_some(),
        "{}",
        srv.log_plain()
    );
    assert!(
        srv.log_line_with(&["min_body_rate"]).is_some(),
        "{}",
        srv.log_plain()
    );

    // And the store still serves.
    let (st, _, b) = raw(&srv, &lab, &get_req("GET", "/datasets/fast.bin"));
    assert_eq!((st, b == data), (200, true));
}

// ---------------------------------------------------------------------------------------
// 12. boto3 with its defaults: flexible checksums (aws-chunked + CRC32 trailer),
//     encoding-type=url listings, If-Match on ranged downloads, S3 error codes
// ---------------------------------------------------------------------------------------

const BOTO3_DEFAULTS_SCRIPT: &str = r#"
import hashlib, os, sys
import boto3, botocore
from botocore.config import Config

endpoint, ca, cert, key, carol_cert, carol_key, work = sys.argv[1:8]
MiB = 1024 * 1024

def client(c, k, signed):
    kw = dict(s3={"addressing_style": "path"}, client_cert=(c, k),
              retries={"total_max_attempts": 1, "mode": "standard"})
    if not signed:
        kw["signature_version"] = botocore.UNSIGNED
    # Fake credentials: the identity is the client certificate; a SigV4 signature is
    # not what lakegate checks.
    return boto3.client("s3", endpoint_url=endpoint, verify=ca, config=Config(**kw),
                        region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="not-a-secret")

def code(f):
    try:
        f()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("no ClientError")

for signed in (False, True):
    s3 = client(cert, key, signed)
    p = "signed/" if signed else "unsigned/"
    a = os.urandom(3 * MiB + 5)
    r = s3.put_object(Bucket="datasets", Key=p + "a b+c.bin", Body=a)
    assert r["ETag"] == '"%s"' % hashlib.sha256(a).hexdigest(), r
    src = os.path.join(work, "defaults-upload.bin")
    b = os.urandom(5 * MiB)
    with open(src, "wb") as f:
        f.write(b)
    s3.upload_file(src, "datasets", p + "upload.bin")
    big = os.urandom(20 * MiB)
    s3.put_object(Bucket="datasets", Key=p + "big.bin", Body=big)
    # 20 MiB with the default TransferConfig: threaded ranged GETs with If-Match.
    dst = os.path.join(work, "defaults-download.bin")
    s3.download_file("datasets", p + "big.bin", dst)
    with open(dst, "rb") as f:
        assert f.read() == big, "download_file differs"
    o = s3.get_object(Bucket="datasets", Key=p + "a b+c.bin")
    assert o["Body"].read() == a
    keys = sorted(x["Key"] for x in s3.list_objects_v2(Bucket="datasets", Prefix=p)["Contents"])
    assert keys == [p + "a b+c.bin", p + "big.bin", p + "upload.bin"], keys
    h = s3.head_object(Bucket="datasets", Key=p + "upload.bin")
    assert h["ContentLength"] == 5 * MiB, h
    assert code(lambda: s3.get_object(Bucket="datasets", Key=p + "absent")) == ("NoSuchKey", 404)
    assert code(lambda: s3.get_object(Bucket="nobucket", Key="k")) == ("NoSuchBucket", 404)
    assert code(lambda: s3.head_object(Bucket="datasets", Key=p + "absent"))[1] == 404
    assert code(lambda: s3.copy_object(Bucket="datasets", Key=p + "copy.bin",
                                        CopySource={"Bucket": "datasets", "Key": p + "absent"})) == ("NoSuchKey", 404)
    assert code(lambda: s3.put_object_tagging(Bucket="datasets", Key=p + "upload.bin",
                                              Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})) == ("NotImplemented", 501)
    assert code(lambda: s3.put_bucket_versioning(Bucket="datasets",
                                                 VersioningConfiguration={"Status": "Enabled"})) == ("NotImplemented", 501)
    s3.delete_object(Bucket="datasets", Key=p + "upload.bin")
    carol = client(carol_cert, carol_key, signed)
    assert code(lambda: carol.put_object(Bucket="models", Key="x", Body=b"x")) == ("AccessDenied", 403)
print("boto3-defaults-ok")
"#;

#[test]
fn boto3_with_default_settings_works_and_sees_s3_error_codes() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let authz = r#"[[authz]]
identity = "spiffe://lake.example/trainer/carol"
buckets = ["datasets"]

[[authz]]
identity = "spiffe://lake.example/trainer/*"
"#;
    let srv = Server::start_with_authz(&lab, "", &store_backend(&root, "never"), authz);
    let script = lab.path("boto3_defaults.py");
    std::fs::write(&script, BOTO3_DEFAULTS_SCRIPT).unwrap();
    let (cert, key) = lab.client("alice");
    let (ccert, ckey) = lab.client("carol");
    let o = python_cmd(&py)
        .arg(&script)
        .arg(format!("https://127.0.0.1:{}", srv.port))
        .arg(lab.path("ca.crt"))
        .args([&cert, &key, &ccert, &ckey])
        .arg(lab.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("boto3-defaults-ok"),
        "boto3 script failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        srv.log_plain()
    );
    for p in ["unsigned", "signed"] {
        assert_eq!(
            std::fs::metadata(root.join(format!("datasets/{p}/a b+c.bin")))
                .unwrap()
                .len(),
            3 * MIB + 5
        );
        assert!(!root.join(format!("datasets/{p}/upload.bin")).exists());
        assert!(!root.join(format!("datasets/{p}/copy.bin")).exists());
    }
    assert!(!root.join("models/x").exists());
    assert!(temporaries(&root).is_empty());
}

// ---------------------------------------------------------------------------------------
// No file syscall on a worker's loop
// ---------------------------------------------------------------------------------------

/// `strace`, or None (skip loudly) outside CI; under CI a missing one fails.
fn strace() -> Option<&'static str> {
    let ok = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("strace");
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "CI: strace is not installed (.ci/run installs it)");
    eprintln!("SKIPPED: strace is not installed");
    None
}

/// `strace` and a store server with `fsync = "always"` that has served one PUT (what
/// a first request sets up once is not the point of a trace); None (skipped loudly)
/// without strace.
fn store_to_trace(lab: &Lab) -> Option<(&'static str, PathBuf, Server)> {
    let strace = strace()?;
    let root = store_root(lab, "store");
    let srv = Server::start(lab, "", &store_backend(&root, "always"));
    let (st, h, _) = raw(&srv, lab, &put_req("/datasets/warm", b"w", ""));
    assert_eq!(st, 201, "{h:?}\n{}", srv.log_plain());
    Some((strace, root, srv))
}

/// The threads of process `pid`, by id, with their names.
fn threads(pid: u32) -> std::collections::HashMap<u32, String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| {
            let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            Some((tid, name.trim().to_owned()))
        })
        .collect()
}

/// `strace -f` of the running process `pid`, for the system calls of `filter` (an
/// `-e` expression), writing to `out`; returns once every thread has a tracer.
fn attach_strace(strace: &str, pid: u32, filter: &str, out: &Path) -> Child {
    let tracer = Command::new(strace)
        .args(["-f", "-qq", "-e", filter, "-o"])
        .arg(out)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let traced = |tid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
    };
    assert!(
        eventually(Duration::from_secs(10), || threads(pid).keys().all(traced)),
        "strace did not attach to every thread"
    );
    tracer
}

/// Stop `tracer` (SIGINT makes strace detach and write out what it has) and return
/// what it wrote to `out`.
fn detach_strace(mut tracer: Child, out: &Path) -> String {
    Command::new("kill")
        .args(["-INT", &tracer.id().to_string()])
        .status()
        .unwrap();
    let st = tracer.wait().unwrap();
    let mut err = String::new();
    tracer
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        std::fs::metadata(out).is_ok(),
        "strace wrote nothing ({st}): {err}"
    );
    std::fs::read_to_string(out).unwrap()
}

/// The calls that touch the filesystem (by path or by a file's descriptor). A worker
/// makes none of them: it opens, stats, reads attributes, creates and unlinks through
/// its io_uring ring, and leaves the rest to the blocking pool.
const FILE_CALLS: &str = "trace=%file,fstat,fgetxattr,fsetxattr,flistxattr,fremovexattr,\
     fsync,fdatasync,getdents64,ftruncate,fallocate,copy_file_range,pread64,pwrite64,\
     preadv,pwritev,preadv2,pwritev2,sync_file_range";

#[test]
fn worker_loop_makes_no_file_syscalls_for_any_store_operation() {
    let lab = Lab::new();
    // fsync = "always": the multipart records' and assembly's fsyncs must show up, on
    // the pool (a PUT's are ring operations:
    // a_commit_fsyncs_makes_folders_and_renames_through_the_workers_ring).
    let Some((strace, root, srv)) = store_to_trace(&lab) else {
        return;
    };
    // An object planted behind the store's back has no stored digest: its GET hashes.
    std::fs::write(root.join("datasets/planted"), b"planted bytes").unwrap();

    let pid = srv.child.id();
    let out = lab.path("strace.txt");
    let tracer = attach_strace(strace, pid, FILE_CALLS, &out);
    let names = threads(pid);

    let body = pseudo_random(300 * KIB as usize, 7);
    let ask = |req: Vec<u8>, want: u16| -> Response {
        // A fresh connection each: a refused body closes its connection.
        let r = alice(&srv, &lab).request(&req);
        assert_eq!(
            r.0,
            want,
            "{}\n{:?}\n{}",
            String::from_utf8_lossy(&req[..req.len().min(200)]),
            r.1,
            String::from_utf8_lossy(&r.2)
        );
        r
    };
    ask(
        put_req(
            "/datasets/deep/a/b.bin",
            &body,
            "x-amz-meta-color: teal\r\n",
        ),
        201,
    );
    let (_, h, got) = ask(get_req("GET", "/datasets/deep/a/b.bin"), 200);
    assert!(got == body, "GET returned other bytes");
    assert_eq!(header(&h, "x-amz-meta-color"), Some("teal"));
    ask(get_req("HEAD", "/datasets/deep/a/b.bin"), 200);
    ask(get_req("GET", "/datasets/planted"), 200);
    ask(get_req("GET", "/datasets/missing"), 404);
    ask(
        get_req("GET", "/datasets/deep/a/b.bin/under-an-object"),
        404,
    );
    ask(get_req("HEAD", "/datasets"), 200);
    ask(get_req("GET", "/datasets?list-type=2&prefix=deep/"), 200);
    ask(get_req("GET", "/"), 200);
    // A body that fails its checksum: the temporary is unlinked.
    ask(
        put_req(
            "/datasets/bad",
            b"abc",
            &format!("x-amz-checksum-sha256: {}\r\n", sha256_b64(b"xyz")),
        ),
        400,
    );
    // Multipart: create, a part, list, complete; and one aborted.
    let (_, _, x) = ask(post_req("/datasets/mp?uploads", b""), 200);
    let id = xml_all(&String::from_utf8_lossy(&x), "UploadId").remove(0);
    let (_, h, _) = ask(
        put_req(
            &format!("/datasets/mp?partNumber=1&uploadId={id}"),
            &body,
            "",
        ),
        200,
    );
    let etag = header(&h, "etag").unwrap().to_owned();
    ask(get_req("GET", &format!("/datasets/mp?uploadId={id}")), 200);
    ask(get_req("GET", "/datasets?uploads"), 200);
    let done = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
    );
    ask(
        post_req(&format!("/datasets/mp?uploadId={id}"), done.as_bytes()),
        200,
    );
    assert!(
        std::fs::read(root.join("datasets/mp")).unwrap() == body,
        "assembled object differs"
    );
    let (_, _, x) = ask(post_req("/datasets/gone?uploads", b""), 200);
    let id2 = xml_all(&String::from_utf8_lossy(&x), "UploadId").remove(0);
    ask(
        get_req("DELETE", &format!("/datasets/gone?uploadId={id2}")),
        204,
    );
    ask(get_req("DELETE", "/datasets/deep/a/b.bin"), 204);
    ask(get_req("DELETE", "/datasets/never-there"), 204);

    let trace = detach_strace(tracer, &out);

    let mut on_workers = Vec::new();
    let mut on_pool = std::collections::BTreeSet::new();
    let mut elsewhere = std::collections::BTreeSet::new();
    for line in trace.lines() {
        let Some((tid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        let Some(name) = call.split('(').next().filter(|n| {
            !n.is_empty() && !n.starts_with("---") && !n.starts_with("+++") && !n.starts_with('<')
        }) else {
            continue;
        };
        let thread = tid
            .parse()
            .ok()
            .and_then(|t| names.get(&t))
            .map_or("?", String::as_str);
        if thread.starts_with("lg-worker") {
            on_workers.push(line.to_owned());
        } else if thread.starts_with("lg-blocking") {
            on_pool.insert(name.to_owned());
        } else {
            elsewhere.insert(format!("{thread}: {name}"));
        }
    }
    eprintln!(
        "file syscalls on the pool: {on_pool:?}; elsewhere: {elsewhere:?}; on workers: {}",
        on_workers.len()
    );
    assert!(
        on_workers.is_empty(),
        "file syscalls on a worker's loop:\n{}",
        on_workers.join("\n")
    );
    // The workers' lookups ran in the kernel (io_uring), not on compio's fallback
    // threads, which this kernel has no reason to use.
    assert!(
        !elsewhere
            .iter()
            .any(|c| c.ends_with(" openat2") || c.ends_with(" fgetxattr")),
        "object lookups ran as syscalls outside the ring: {elsewhere:?}"
    );
    // The trace saw the pool's work, so an empty worker list means something.
    for call in ["fsync", "getdents64"] {
        assert!(
            on_pool.contains(call),
            "no {call} on the pool in the trace: {on_pool:?}\n{trace}"
        );
    }
    assert!(
        on_pool.iter().any(|c| c.starts_with("rename")),
        "no rename on the pool in the trace: {on_pool:?}"
    );
}

/// A tracefs instance of its own (its own buffer, so nothing else that traces is
/// disturbed) recording the io_uring operations the threads `tids` submit (filtered in
/// the kernel: the other tests' servers, running meanwhile, cannot overwrite them in
/// the buffer); removed on drop. None (skip loudly) outside CI where tracefs cannot be
/// had.
struct RingTrace(PathBuf);

impl RingTrace {
    fn start(tids: &[u32]) -> Option<RingTrace> {
        let base = Path::new("/sys/kernel/tracing");
        if !base.join("instances").is_dir() {
            // Root may mount it where the machine did not.
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
                .stderr(Stdio::null())
                .status();
        }
        let dir = base.join(format!("instances/lakegate-test-{}", std::process::id()));
        let event = dir.join("events/io_uring/io_uring_submit_req");
        let only: Vec<String> = tids.iter().map(|t| format!("common_pid == {t}")).collect();
        let made = std::fs::create_dir(&dir).is_ok()
            && std::fs::write(event.join("filter"), only.join(" || ")).is_ok()
            && std::fs::write(event.join("enable"), "1").is_ok();
        if made {
            return Some(RingTrace(dir));
        }
        let _ = std::fs::remove_dir(&dir);
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(
            !ci,
            "CI: no tracefs with io_uring events at /sys/kernel/tracing"
        );
        eprintln!("SKIPPED: no tracefs with io_uring events (needs root and /sys/kernel/tracing)");
        None
    }

    /// The opcodes submitted so far by the threads `tids` (a line starts with the
    /// thread's `<name>-<tid>`).
    fn ops(&self, tids: &[u32]) -> Vec<String> {
        let _ = std::fs::write(self.0.join("tracing_on"), "0");
        let trace = std::fs::read_to_string(self.0.join("trace")).unwrap();
        trace
            .lines()
            .filter(|l| {
                let task = l.split_whitespace().next().unwrap_or("");
                task.rsplit_once('-')
                    .and_then(|(_, t)| t.parse().ok())
                    .is_some_and(|t: u32| tids.contains(&t))
            })
            .filter_map(|l| l.split("opcode ").nth(1)?.split(',').next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RingTrace {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.0.join("events/io_uring/io_uring_submit_req/enable"),
            "0",
        );
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A commit's waits for the disk are the kernel's: the upload's fsync, the parent
/// folders' mkdirs, the rename onto the key and the folders' fsyncs are io_uring
/// operations a worker submits (seen in the kernel's own io_uring trace), not system
/// calls of any thread of lakegate (seen by strace), and the object is where it should
/// be, whole.
#[test]
fn a_commit_fsyncs_makes_folders_and_renames_through_the_workers_ring() {
    let lab = Lab::new();
    let Some((strace, root, srv)) = store_to_trace(&lab) else {
        return;
    };
    let pid = srv.child.id();
    let workers: Vec<u32> = threads(pid)
        .into_iter()
        .filter(|(_, name)| name.starts_with("lg-worker"))
        .map(|(tid, _)| tid)
        .collect();
    assert!(!workers.is_empty(), "no lg-worker threads in {pid}");
    let Some(ring) = RingTrace::start(&workers) else {
        return;
    };
    let out = lab.path("strace.txt");
    let calls = "trace=fsync,fdatasync,mkdir,mkdirat,rename,renameat,renameat2";
    let tracer = attach_strace(strace, pid, calls, &out);

    let body = pseudo_random(200 * KIB as usize, 11);
    for key in [
        "/datasets/ring/a/b.bin",
        "/datasets/ring/a/c.bin",
        "/datasets/top.bin",
    ] {
        let (st, h, _) = raw(&srv, &lab, &put_req(key, &body, ""));
        assert_eq!(st, 201, "{key}: {h:?}\n{}", srv.log_plain());
    }
    // Overwritten in place: the rename replaces.
    let again = pseudo_random(1000, 12);
    assert_eq!(
        raw(&srv, &lab, &put_req("/datasets/top.bin", &again, "")).0,
        201
    );

    let syscalls = detach_strace(tracer, &out);
    let ops = ring.ops(&workers);
    let count = |op: &str| ops.iter().filter(|o| o.as_str() == op).count();

    assert!(std::fs::read(root.join("datasets/ring/a/b.bin")).unwrap() == body);
    assert!(std::fs::read(root.join("datasets/ring/a/c.bin")).unwrap() == body);
    assert!(std::fs::read(root.join("datasets/top.bin")).unwrap() == again);
    assert!(temporaries(&root).is_empty());
    assert!(
        syscalls.trim().is_empty(),
        "a commit made blocking system calls:\n{syscalls}"
    );
    // The folders `ring` and `ring/a`: made by the first upload, found by the second.
    assert_eq!(count("MKDIRAT"), 4, "{ops:?}");
    assert_eq!(count("RENAMEAT"), 4, "{ops:?}");
    // Each upload, then the folders whose entries changed: b.bin the bucket and ring as
    // folders are made in them, then ring/a and the bucket after the rename (5 in all);
    // c.bin ring/a and the bucket (3); top.bin the bucket (2, twice).
    assert_eq!(count("FSYNC"), 5 + 3 + 2 + 2, "{ops:?}");
}

/// The ring commit's folder walk, tried as an attacker with write access would, on
/// a store where someone planted symlinks in the bucket: a PUT through a symlinked
/// folder (absolute, relative, one hop inside a real folder, deeper under it) is 403
/// and writes nothing outside; a key under an object is 409; a key that names a symlink
/// replaces the link itself, never its target. No temporary is left behind.
#[test]
fn a_put_through_a_symlinked_folder_is_refused_and_writes_nothing_outside() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let outside = lab.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("target.txt"), b"theirs").unwrap();
    let bucket = root.join("datasets");
    std::os::unix::fs::symlink(&outside, bucket.join("link-dir")).unwrap();
    std::os::unix::fs::symlink("../../outside", bucket.join("rel-dir")).unwrap();
    std::fs::create_dir(bucket.join("real")).unwrap();
    std::os::unix::fs::symlink("../link-dir", bucket.join("real/hop")).unwrap();
    std::os::unix::fs::symlink(outside.join("target.txt"), bucket.join("link-file")).unwrap();
    let srv = Server::start(&lab, "", &store_backend(&root, "always"));

    for key in [
        "link-dir/new.txt",
        "rel-dir/new.txt",
        "real/hop/new.txt",
        "link-dir/deep/new.txt",
        "real/hop/deeper/still/new.txt",
    ] {
        let (st, h, b) = raw(
            &srv,
            &lab,
            &put_req(&format!("/datasets/{key}"), b"pwned", ""),
        );
        assert_eq!(st, 403, "{key}: {h:?} {}", String::from_utf8_lossy(&b));
    }
    let (st, ..) = raw(&srv, &lab, &put_req("/datasets/real/obj", b"x", ""));
    assert_eq!(st, 201);
    let (st, ..) = raw(&srv, &lab, &put_req("/datasets/real/obj/under", b"x", ""));
    assert_eq!(st, 409, "a key under an object");
    // A key that names a symlink: the rename replaces the link, not what it points to.
    let (st, ..) = raw(&srv, &lab, &put_req("/datasets/link-file", b"mine", ""));
    assert_eq!(st, 201);
    assert!(!bucket.join("link-file").is_symlink());
    assert_eq!(std::fs::read(bucket.join("link-file")).unwrap(), b"mine");

    let mut outside_now: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    outside_now.sort();
    assert_eq!(outside_now, ["target.txt"], "something was written outside");
    assert_eq!(
        std::fs::read(outside.join("target.txt")).unwrap(),
        b"theirs"
    );
    assert!(temporaries(&root).is_empty(), "{:?}", files_under(&root));
}

/// A key 300 folders deep, committed with `fsync = "always"` by a server whose
/// descriptor limit is lowered to 100 above what it holds idle: the commit holds a
/// couple of folder descriptors at a time, not one per folder it made (which an
/// authenticated client could multiply with concurrent deep PUTs until every open of
/// the process failed with EMFILE).
#[test]
fn a_deep_key_commits_within_a_small_descriptor_limit() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(&lab, "", &store_backend(&root, "always"));
    let pid = srv.child.id();
    let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let limit = libc::rlimit {
        rlim_cur: held + 100,
        rlim_max: held + 100,
    };
    // SAFETY: `limit` is a valid rlimit borrowed for the call; no old value is asked for.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());

    let key = format!("deep/{}leaf.bin", "d/".repeat(300));
    let body = pseudo_random(64 * KIB as usize, 31);
    let (st, h, b) = raw(&srv, &lab, &put_req(&format!("/datasets/{key}"), &body, ""));
    assert_eq!(
        st,
        201,
        "{h:?} {}\n{}",
        String::from_utf8_lossy(&b),
        srv.log_plain()
    );
    assert!(std::fs::read(root.join("datasets").join(&key)).unwrap() == body);
    assert!(temporaries(&root).is_empty());
}

/// A worker remembers what an object's attributes said (its digests, its metadata)
/// for that exact state of the object; a change made behind the store's back (new
/// bytes of the same length, a rewritten attribute) is seen by the very next GET.
#[test]
fn changes_behind_the_stores_back_are_seen_by_the_next_get() {
    let lab = Lab::new();
    let root = store_root(&lab, "store");
    let srv = Server::start(&lab, "", &store_backend(&root, "never"));
    let a = pseudo_random(1000, 1);
    let b = pseudo_random(1000, 2);
    let put = put_req("/datasets/k", &a, "content-type: text/plain\r\n");
    assert_eq!(raw(&srv, &lab, &put).0, 201);
    // A worker remembers an object only once it has been left alone for 2 s (changes
    // within one tick of the ctime clock could not be told apart).
    let settle = || std::thread::sleep(Duration::from_millis(2100));
    settle();
    let get = get_req("GET", "/datasets/k");
    let etag = |h: &[(String, String)]| header(h, "etag").unwrap().to_owned();
    for _ in 0..2 {
        let (st, h, body) = raw(&srv, &lab, &get);
        assert_eq!((st, body == a), (200, true));
        assert_eq!(etag(&h), format!("\"{}\"", sha256_hex(&a)));
        assert_eq!(header(&h, "content-type"), Some("text/plain"));
    }
    // New bytes of the same length, at once: the stored digest no longer applies.
    let path = root.join("datasets/k");
    std::fs::write(&path, &b).unwrap();
    let (st, h, body) = raw(&srv, &lab, &get);
    assert_eq!((st, body == b), (200, true));
    assert_eq!(
        etag(&h),
        format!("\"{}\"", sha256_hex(&b)),
        "a stale digest was served"
    );
    // A rewritten metadata attribute (same bytes), after the new state was remembered.
    settle();
    for _ in 0..2 {
        let (_, h, _) = raw(&srv, &lab, &get);
        assert_eq!(header(&h, "content-type"), Some("text/plain"));
    }
    let name = std::ffi::CString::new("user.lakegate.meta").unwrap();
    let value = br#"{"content_type":"image/png"}"#;
    let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: both strings are NUL-terminated and live across the call, and `value`
    // is `value.len()` readable bytes; setxattr keeps none of them.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
    let (_, h, _) = raw(&srv, &lab, &get);
    assert_eq!(
        header(&h, "content-type"),
        Some("image/png"),
        "stale metadata was served"
    );
}
