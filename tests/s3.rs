//! End-to-end: the S3 operations real tools use by default, against the real binary
//! with the `store` backend, driven by boto3 with its DEFAULT settings (flexible
//! checksums, 8 MiB multipart threshold and parts) and a client certificate: multipart
//! upload (and its errors, ownership and expiry), CopyObject, DeleteObjects,
//! HeadBucket, GetBucketLocation, ListObjects v1 and v2 with a delimiter.
//!
//! Contract: ../shared/DESIGN.md "HTTP object API" and the README's S3 table.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A store root under the lab with the two buckets the tests use.
fn store_root(lab: &Lab) -> PathBuf {
    let root = lab.path("store");
    for b in ["datasets", "models"] {
        std::fs::create_dir_all(root.join(b)).unwrap();
    }
    root
}

fn store_backend(root: &Path, extra: &str) -> String {
    format!(
        "kind = \"store\"\nroot = \"{}\"\nfsync = \"never\"\n{extra}",
        root.display()
    )
}

/// Every file (not folder) under `dir`, recursively, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// What is left under the buckets' `.lakegate-mpu` folders (upload folders and files).
fn mpu_residue(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for b in ["datasets", "models"] {
        let mpu = root.join(b).join(".lakegate-mpu");
        if let Ok(rd) = std::fs::read_dir(&mpu) {
            for e in rd.flatten() {
                out.push(format!(
                    "{b}/.lakegate-mpu/{}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

/// Run `script` with boto3: argv = endpoint, ca, alice cert/key, carol cert/key, work
/// dir, store root, then `extra`. Panics with both logs unless it prints `ok`.
fn run_boto3(
    py: &Path,
    lab: &Lab,
    srv: &Server,
    root: &Path,
    name: &str,
    script: &str,
    extra: &[&str],
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
        .arg(root)
        .args(extra)
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

/// boto3 clients with default settings (flexible checksums on, default transfer
/// config); only the endpoint, path-style addressing, the CA, the client certificate
/// and fake credentials are given. `code(f)` is the S3 error code and status of a call.
const PRELUDE: &str = r#"
import hashlib, os, sys
import boto3, botocore
from botocore.config import Config

endpoint, ca, cert, key, carol_cert, carol_key, work, root = sys.argv[1:9]
extra = sys.argv[9:]
MiB = 1024 * 1024

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

def sha_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

def get_bytes(bucket, k):
    return s3.get_object(Bucket=bucket, Key=k)["Body"].read()
"#;

const TRANSFER_SCRIPT: &str = r#"
# upload_file of 40 MiB with the default TransferConfig: 8 MiB threshold, 8 MiB parts.
src = os.path.join(work, "big.bin")
with open(src, "wb") as f:
    for _ in range(40):
        f.write(os.urandom(MiB))
s3.upload_file(src, "datasets", "mp/big.bin")
h = s3.head_object(Bucket="datasets", Key="mp/big.bin")
assert h["ContentLength"] == 40 * MiB, h
assert h["ETag"].endswith('-5"'), h["ETag"]   # five 8 MiB parts: a multipart ETag
dst = os.path.join(work, "big.back")
s3.download_file("datasets", "mp/big.bin", dst)
assert sha_file(dst) == sha_file(src), "download_file differs"
listed = s3.list_objects_v2(Bucket="datasets", Prefix="mp/")["Contents"]
assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [("mp/big.bin", 40 * MiB, h["ETag"])], listed

# CopyObject in the same bucket and into another, byte-exact.
small = os.urandom(3 * MiB + 7)
s3.put_object(Bucket="datasets", Key="c/src.bin", Body=small)
r = s3.copy_object(Bucket="datasets", Key="c/copy.bin", CopySource={"Bucket": "datasets", "Key": "c/src.bin"})
assert r["CopyObjectResult"]["ETag"] == '"%s"' % hashlib.md5(small).hexdigest(), r
assert get_bytes("datasets", "c/copy.bin") == small
r = s3.copy_object(Bucket="models", Key="from datasets/big+copy.bin",
                   CopySource={"Bucket": "datasets", "Key": "mp/big.bin"})
assert r["CopyObjectResult"]["ETag"] == h["ETag"], r
s3.download_file("models", "from datasets/big+copy.bin", dst)
assert sha_file(dst) == sha_file(src), "copy of the multipart object differs"
# Preconditions on the source.
assert code(lambda: s3.copy_object(Bucket="datasets", Key="c/never.bin", CopySource="datasets/c/src.bin",
                                   CopySourceIfMatch='"nope"')) == ("PreconditionFailed", 412)
s3.copy_object(Bucket="datasets", Key="c/if.bin", CopySource="datasets/c/src.bin",
               CopySourceIfMatch='"%s"' % hashlib.md5(small).hexdigest())
# A missing source: 404 and nothing at the destination (the bug issue 12 reports).
assert code(lambda: s3.copy_object(Bucket="datasets", Key="c/ghost.bin",
                                   CopySource={"Bucket": "datasets", "Key": "c/absent"})) == ("NoSuchKey", 404)
assert code(lambda: s3.head_object(Bucket="datasets", Key="c/ghost.bin"))[1] == 404
assert code(lambda: s3.copy_object(Bucket="datasets", Key="c/ghost.bin",
                                   CopySource={"Bucket": "nobucket", "Key": "x"})) == ("NoSuchBucket", 404)
assert code(lambda: s3.copy_object(Bucket="datasets", Key="c/src.bin",
                                   CopySource={"Bucket": "datasets", "Key": "c/src.bin"}))[1] == 400
assert code(lambda: s3.copy_object(Bucket="datasets", Key="c/v.bin",
                                   CopySource={"Bucket": "datasets", "Key": "c/src.bin", "VersionId": "3"})) == ("NotImplemented", 501)

# DeleteObjects: three real keys, a missing one (reported deleted, as S3 does) and a
# symlink the store refuses to delete (per-key AccessDenied); then quiet mode.
for k in ("d/1", "d/2", "d/3"):
    s3.put_object(Bucket="datasets", Key=k, Body=b"x")
os.symlink("/etc/hostname", os.path.join(root, "datasets", "d", "link"))
r = s3.delete_objects(Bucket="datasets", Delete={"Objects": [{"Key": k} for k in ("d/1", "d/link", "d/2", "d/absent")]})
assert sorted(d["Key"] for d in r["Deleted"]) == ["d/1", "d/2", "d/absent"], r
assert [(e["Key"], e["Code"]) for e in r["Errors"]] == [("d/link", "AccessDenied")], r
assert os.path.islink(os.path.join(root, "datasets", "d", "link"))
r = s3.delete_objects(Bucket="datasets", Delete={"Objects": [{"Key": "d/3"}, {"Key": "d/link"}], "Quiet": True})
assert "Deleted" not in r or r["Deleted"] == [], r
assert [(e["Key"], e["Code"]) for e in r["Errors"]] == [("d/link", "AccessDenied")], r
assert code(lambda: s3.head_object(Bucket="datasets", Key="d/3"))[1] == 404
# Carol has no delete: the whole request is refused.
assert code(lambda: carol.delete_objects(Bucket="datasets", Delete={"Objects": [{"Key": "c/src.bin"}]})) == ("AccessDenied", 403)

# HeadBucket and GetBucketLocation.
assert s3.head_bucket(Bucket="datasets")["ResponseMetadata"]["HTTPStatusCode"] == 200
assert code(lambda: s3.head_bucket(Bucket="nobucket"))[1] == 404
assert s3.get_bucket_location(Bucket="datasets")["LocationConstraint"] is None

# Listings with a delimiter, a page of two entries at a time, v2 and v1.
for k in ("t/a/1", "t/a/2", "t/b/x/1", "t/c", "t/d", "t/e/1"):
    s3.put_object(Bucket="datasets", Key=k, Body=b"k")
for name in ("list_objects_v2", "list_objects"):
    keys, prefixes, pages = [], [], 0
    for page in s3.get_paginator(name).paginate(Bucket="datasets", Prefix="t/", Delimiter="/",
                                                PaginationConfig={"PageSize": 2}):
        pages += 1
        got = len(page.get("Contents", [])) + len(page.get("CommonPrefixes", []))
        assert got <= 2, page
        keys += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert keys == ["t/c", "t/d"], (name, keys)
    assert prefixes == ["t/a/", "t/b/", "t/e/"], (name, prefixes)
    assert pages == 3, (name, pages)
r = s3.list_objects(Bucket="datasets", Prefix="t/", Marker="t/b/x/1")
assert [o["Key"] for o in r["Contents"]] == ["t/c", "t/d", "t/e/1"], r
r = s3.list_objects_v2(Bucket="datasets", Prefix="t/", Delimiter="/", StartAfter="t/c")
assert [o["Key"] for o in r["Contents"]] == ["t/d"] and [p["Prefix"] for p in r["CommonPrefixes"]] == ["t/e/"], r
print("ok")
"#;

#[test]
fn boto3_defaults_multipart_copy_delete_head_bucket_and_delimited_listings() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let lab = Lab::new();
    let root = store_root(&lab);
    let authz = r#"[[authz]]
identity = "spiffe://lake.example/trainer/carol"
buckets = ["datasets", "models"]
access = ["read", "write", "list"]

[[authz]]
identity = "spiffe://lake.example/trainer/*"
"#;
    let srv = Server::start_with_authz(&lab, "", &store_backend(&root, ""), authz);
    run_boto3(&py, &lab, &srv, &root, "transfer.py", TRANSFER_SCRIPT, &[]);
    // What the multipart upload left: the object, and no upload folder or temporary.
    assert_eq!(
        std::fs::metadata(root.join("datasets/mp/big.bin"))
            .unwrap()
            .len(),
        40 << 20
    );
    assert!(mpu_residue(&root).is_empty(), "{:?}", mpu_residue(&root));
    let stray: Vec<String> = files_under(&root)
        .into_iter()
        .filter(|f| f.contains(".lakegate"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    assert!(!root.join("datasets/c/ghost.bin").exists());
    assert!(!root.join("datasets/c/never.bin").exists());

    // HEAD on a bucket has no body: the next response on the connection parses.
    let mut c = TlsClient::connect(srv.port, client_config(&lab, Some("alice"), false)).unwrap();
    let (st, h, b) = c.request(b"HEAD /datasets HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((st, b.len()), (200, 0));
    assert!(header(&h, "x-amz-request-id").is_some());
    let (st, _, b) = c.request(b"HEAD /nobucket HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((st, b.len()), (404, 0));
    let (st, _, b) = c.request(b"GET /datasets/c/src.bin HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((st, b.len()), (200, 3 * 1024 * 1024 + 7));
}

const MULTIPART_ERRORS_SCRIPT: &str = r#"
B = "datasets"
def create(k, who=s3):
    return who.create_multipart_upload(Bucket=B, Key=k)["UploadId"]
def part(k, u, n, body, who=s3):
    return {"PartNumber": n, "ETag": who.upload_part(Bucket=B, Key=k, UploadId=u, PartNumber=n, Body=body)["ETag"]}
def complete(k, u, parts, who=s3):
    return who.complete_multipart_upload(Bucket=B, Key=k, UploadId=u, MultipartUpload={"Parts": parts})

five = os.urandom(5 * MiB)
# Part ETags are the MD5 of the part, as S3's.
u = create("e/ok.bin")
p1 = part("e/ok.bin", u, 1, five)
assert p1["ETag"] == '"%s"' % hashlib.md5(five).hexdigest(), p1
p2 = part("e/ok.bin", u, 2, b"tail")
lp = s3.list_parts(Bucket=B, Key="e/ok.bin", UploadId=u)
assert [(p["PartNumber"], p["Size"]) for p in lp["Parts"]] == [(1, 5 * MiB), (2, 4)], lp
ups = s3.list_multipart_uploads(Bucket=B)
assert [(x["Key"], x["UploadId"]) for x in ups.get("Uploads", [])] == [("e/ok.bin", u)], ups

# Pages of two, followed by their markers: every upload once, by key then id (two on
# one key, so a page ends inside a key and the id marker matters).
extra = [(k, create(k)) for k in ("e/p3", "e/p1", "e/p2", "e/p1")]
want = sorted(extra + [("e/ok.bin", u)])
got, kw, pages = [], {}, 0
for _ in range(10):  # a server repeating its markers fails here, never hangs
    r = s3.list_multipart_uploads(Bucket=B, MaxUploads=2, **kw)
    got += [(x["Key"], x["UploadId"]) for x in r.get("Uploads", [])]
    pages += 1
    assert len(r.get("Uploads", [])) <= 2, r
    if not r["IsTruncated"]:
        break
    kw = {"KeyMarker": r["NextKeyMarker"], "UploadIdMarker": r["NextUploadIdMarker"]}
else:
    raise AssertionError("pages never ended: %r" % got)
assert got == want and pages == 3, (got, want, pages)
# A page of 0 is empty and says nothing follows (there is no marker to resume after).
r = s3.list_multipart_uploads(Bucket=B, MaxUploads=0)
assert r.get("Uploads", []) == [] and not r["IsTruncated"], r
for k, x in extra:
    s3.abort_multipart_upload(Bucket=B, Key=k, UploadId=x)

# Another identity: every use of the upload is NoSuchUpload (404), never 403, and it
# does not see it listed.
assert code(lambda: carol.upload_part(Bucket=B, Key="e/ok.bin", UploadId=u, PartNumber=3, Body=b"x")) == ("NoSuchUpload", 404)
assert code(lambda: complete("e/ok.bin", u, [p1, p2], carol)) == ("NoSuchUpload", 404)
assert code(lambda: carol.abort_multipart_upload(Bucket=B, Key="e/ok.bin", UploadId=u)) == ("NoSuchUpload", 404)
assert code(lambda: carol.list_parts(Bucket=B, Key="e/ok.bin", UploadId=u)) == ("NoSuchUpload", 404)
assert carol.list_multipart_uploads(Bucket=B).get("Uploads", []) == []
# The same identity with another key, or a made-up id: NoSuchUpload too.
assert code(lambda: complete("e/other.bin", u, [p1, p2])) == ("NoSuchUpload", 404)
assert code(lambda: complete("e/ok.bin", "0" * 32, [p1, p2])) == ("NoSuchUpload", 404)
assert code(lambda: complete("e/ok.bin", "../../x", [p1, p2])) == ("NoSuchUpload", 404)

# The errors of CompleteMultipartUpload, each leaving the upload usable.
assert code(lambda: complete("e/ok.bin", u, [p2, p1])) == ("InvalidPartOrder", 400)
assert code(lambda: complete("e/ok.bin", u, [p1, {"PartNumber": 2, "ETag": '"%s"' % ("0" * 32)}])) == ("InvalidPart", 400)
assert code(lambda: complete("e/ok.bin", u, [p1, p2, {"PartNumber": 3, "ETag": p2["ETag"]}])) == ("InvalidPart", 400)
assert code(lambda: s3.head_object(Bucket=B, Key="e/ok.bin"))[1] == 404
r = complete("e/ok.bin", u, [p1, p2])
md5s = hashlib.md5(hashlib.md5(five).digest() + hashlib.md5(b"tail").digest()).hexdigest()
assert r["ETag"] == '"%s-2"' % md5s, r
assert s3.head_object(Bucket=B, Key="e/ok.bin")["ETag"] == r["ETag"]
assert get_bytes(B, "e/ok.bin") == five + b"tail"
assert code(lambda: complete("e/ok.bin", u, [p1, p2])) == ("NoSuchUpload", 404)

u = create("e/small.bin")
s1 = part("e/small.bin", u, 1, os.urandom(MiB))
s2 = part("e/small.bin", u, 2, os.urandom(MiB))
assert code(lambda: complete("e/small.bin", u, [s1, s2])) == ("EntityTooSmall", 400)
# A part uploaded again replaces the first.
s1 = part("e/small.bin", u, 1, five)
r = complete("e/small.bin", u, [s1, s2])
assert s3.head_object(Bucket=B, Key="e/small.bin")["ContentLength"] == 6 * MiB

# Aborted half way: two of four parts in, then abort: nothing left.
u = create("e/aborted.bin")
part("e/aborted.bin", u, 1, five)
part("e/aborted.bin", u, 2, five)
assert s3.abort_multipart_upload(Bucket=B, Key="e/aborted.bin", UploadId=u)["ResponseMetadata"]["HTTPStatusCode"] == 204
assert code(lambda: part("e/aborted.bin", u, 3, five)) == ("NoSuchUpload", 404)
assert code(lambda: s3.head_object(Bucket=B, Key="e/aborted.bin"))[1] == 404
assert s3.list_multipart_uploads(Bucket=B).get("Uploads", []) == []

# A part whose checksum does not match its body is refused and not stored.
u = create("e/bad.bin")
import base64
assert code(lambda: s3.upload_part(Bucket=B, Key="e/bad.bin", UploadId=u, PartNumber=1, Body=b"abc",
                                   ChecksumSHA256=base64.b64encode(b"\0" * 32).decode()))[0] in ("BadDigest", "InvalidRequest")
assert s3.list_parts(Bucket=B, Key="e/bad.bin", UploadId=u).get("Parts", []) == []
s3.abort_multipart_upload(Bucket=B, Key="e/bad.bin", UploadId=u)

# CopyObject without read on the source: 403 and nothing created. (Carol may write
# models but not read datasets.)
assert code(lambda: carol.copy_object(Bucket="models", Key="stolen.bin",
                                      CopySource={"Bucket": "datasets", "Key": "e/ok.bin"})) == ("AccessDenied", 403)
print("ok")
"#;

#[test]
fn multipart_errors_ownership_abort_and_copy_without_read() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let lab = Lab::new();
    let root = store_root(&lab);
    // Carol may write both buckets and list, never read or delete.
    let authz = r#"[[authz]]
identity = "spiffe://lake.example/trainer/carol"
buckets = ["datasets", "models"]
access = ["write", "list"]

[[authz]]
identity = "spiffe://lake.example/trainer/*"
"#;
    let srv = Server::start_with_authz(&lab, "", &store_backend(&root, ""), authz);
    run_boto3(
        &py,
        &lab,
        &srv,
        &root,
        "mperrors.py",
        MULTIPART_ERRORS_SCRIPT,
        &[],
    );
    assert!(!root.join("datasets/e/aborted.bin").exists());
    assert!(!root.join("models/stolen.bin").exists());
    assert!(mpu_residue(&root).is_empty(), "{:?}", mpu_residue(&root));
    let objects: Vec<String> = files_under(&root)
        .into_iter()
        .filter(|f| !f.contains(".lakegate"))
        .collect();
    assert_eq!(objects, ["datasets/e/ok.bin", "datasets/e/small.bin"]);
    assert!(files_under(&root)
        .iter()
        .all(|f| !f.contains(".lakegate-tmp")));
}

const PART_COPY_SCRIPT: &str = r#"
import base64
B = "datasets"
src = os.urandom(11 * MiB + 123)
s3.put_object(Bucket="models", Key="src/big.bin", Body=src)
etag_src = s3.head_object(Bucket="models", Key="src/big.bin")["ETag"]
SRC = {"Bucket": "models", "Key": "src/big.bin"}
K = "pc/assembled.bin"
u = s3.create_multipart_upload(Bucket=B, Key=K, ChecksumAlgorithm="CRC32")["UploadId"]
cp = lambda **kw: s3.upload_part_copy(Bucket=B, Key=K, UploadId=u, **kw)

# Two ranges of another bucket's object, the second under a source precondition,
# then a received part: one upload.
r1 = cp(PartNumber=1, CopySource=SRC, CopySourceRange="bytes=0-%d" % (5 * MiB - 1))
assert r1["CopyPartResult"]["ETag"] == '"%s"' % hashlib.md5(src[:5 * MiB]).hexdigest(), r1
r2 = cp(PartNumber=2, CopySource=SRC, CopySourceRange="bytes=%d-%d" % (5 * MiB, len(src) - 1),
        CopySourceIfMatch=etag_src)
assert r2["CopyPartResult"]["ETag"] == '"%s"' % hashlib.md5(src[5 * MiB:]).hexdigest(), r2
s3.upload_part(Bucket=B, Key=K, UploadId=u, PartNumber=3, Body=b"tail")

# Refused, and part 4 never appears: a range past the end, a failed precondition, a
# missing source, an unknown upload.
assert code(lambda: cp(PartNumber=4, CopySource=SRC, CopySourceRange="bytes=0-%d" % len(src))) == ("InvalidArgument", 400)
assert code(lambda: cp(PartNumber=4, CopySource=SRC, CopySourceIfMatch='"0000"')) == ("PreconditionFailed", 412)
assert code(lambda: cp(PartNumber=4, CopySource=SRC, CopySourceIfNoneMatch=etag_src)) == ("PreconditionFailed", 412)
assert code(lambda: cp(PartNumber=4, CopySource={"Bucket": "models", "Key": "missing"})) == ("NoSuchKey", 404)
assert code(lambda: s3.upload_part_copy(Bucket=B, Key=K, UploadId="0" * 32, PartNumber=4, CopySource=SRC)) == ("NoSuchUpload", 404)

# carol may write datasets but read nothing: her own upload cannot take bytes she may
# not read, from another bucket or from her destination bucket.
cu = carol.create_multipart_upload(Bucket=B, Key="pc/carol.bin")["UploadId"]
for source in (SRC, {"Bucket": B, "Key": "pc/assembled.bin"}):
    got = code(lambda: carol.upload_part_copy(Bucket=B, Key="pc/carol.bin", UploadId=cu,
                                              PartNumber=1, CopySource=source))
    assert got == ("AccessDenied", 403), got
assert carol.list_parts(Bucket=B, Key="pc/carol.bin", UploadId=cu).get("Parts", []) == []
carol.abort_multipart_upload(Bucket=B, Key="pc/carol.bin", UploadId=cu)

parts = s3.list_parts(Bucket=B, Key=K, UploadId=u)["Parts"]
assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MiB), (2, 6 * MiB + 123), (3, 4)], parts
crc = lambda d: base64.b64encode(__import__("zlib").crc32(d).to_bytes(4, "big")).decode()
assert [p.get("ChecksumCRC32") for p in parts] == [crc(src[:5 * MiB]), crc(src[5 * MiB:]), crc(b"tail")], parts
s3.complete_multipart_upload(Bucket=B, Key=K, UploadId=u, MultipartUpload={"Parts": [
    {"PartNumber": p["PartNumber"], "ETag": p["ETag"], "ChecksumCRC32": p["ChecksumCRC32"]} for p in parts]})
assert get_bytes(B, K) == src + b"tail"

# A large object given new metadata in place, as the AWS CLI does it: an upload on its
# own key whose one part is a copy of that key.
u2 = s3.create_multipart_upload(Bucket=B, Key=K, Metadata={"stage": "two"})["UploadId"]
r = s3.upload_part_copy(Bucket=B, Key=K, UploadId=u2, PartNumber=1, CopySource={"Bucket": B, "Key": K})
s3.complete_multipart_upload(Bucket=B, Key=K, UploadId=u2, MultipartUpload={"Parts": [
    {"PartNumber": 1, "ETag": r["CopyPartResult"]["ETag"]}]})
h = s3.head_object(Bucket=B, Key=K)
assert h["Metadata"] == {"stage": "two"} and h["ContentLength"] == len(src) + 4, h
assert get_bytes(B, K) == src + b"tail"
print("ok")
"#;

#[test]
fn upload_part_copy_ranges_preconditions_and_read_on_the_source() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let lab = Lab::new();
    let root = store_root(&lab);
    // carol: write and list on datasets, never read.
    let authz = r#"[[authz]]
identity = "spiffe://lake.example/trainer/carol"
buckets = ["datasets"]
access = ["write", "list", "delete"]

[[authz]]
identity = "spiffe://lake.example/trainer/*"
"#;
    let srv = Server::start_with_authz(&lab, "", &store_backend(&root, ""), authz);
    run_boto3(&py, &lab, &srv, &root, "partcopy.py", PART_COPY_SCRIPT, &[]);
    assert!(mpu_residue(&root).is_empty(), "{:?}", mpu_residue(&root));
    assert!(!root.join("datasets/pc/carol.bin").exists());
    assert!(files_under(&root)
        .iter()
        .all(|f| !f.contains(".lakegate-tmp")));
}

const EXPIRY_SCRIPT: &str = r#"
u = s3.create_multipart_upload(Bucket="datasets", Key="x/abandoned.bin")["UploadId"]
s3.upload_part(Bucket="datasets", Key="x/abandoned.bin", UploadId=u, PartNumber=1, Body=b"part")
print(u)
print("ok")
"#;

#[test]
fn abandoned_uploads_expire_and_are_counted() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let lab = Lab::new();
    let root = store_root(&lab);
    let srv = Server::start(&lab, "", &store_backend(&root, "multipart_expiry = \"2s\""));
    let out = run_boto3(&py, &lab, &srv, &root, "expiry.py", EXPIRY_SCRIPT, &[]);
    let id = out.lines().next().unwrap().trim().to_owned();
    assert!(root.join("datasets/.lakegate-mpu").join(&id).is_dir());
    let t = Instant::now();
    while !mpu_residue(&root).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "upload not expired: {:?}\n{}",
            mpu_residue(&root),
            srv.log_plain()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        srv.metric("lakegate_multipart_uploads_expired_total", ""),
        1.0
    );
    assert!(!root.join("datasets/x/abandoned.bin").exists());
}

const METADATA_CONDITIONS_SCRIPT: &str = r#"
import base64, datetime, email.utils, threading
B = "datasets"
b64 = lambda d: base64.b64encode(d).decode()

# Single part: the ETag is the MD5 of the bytes (what rclone and the AWS CLI compare);
# the SHA-256 comes back on GET and HEAD when asked.
body = os.urandom(100 * 1024 + 3)
meta = {"mtime": "1700000000.123456789", "md5chksum": b64(hashlib.md5(body).digest()), "note": "a b=c;d"}
r = s3.put_object(Bucket=B, Key="m/a.bin", Body=body, ContentType="text/csv; charset=utf-8", Metadata=meta)
assert r["ETag"] == '"%s"' % hashlib.md5(body).hexdigest(), r
for h in (s3.head_object(Bucket=B, Key="m/a.bin", ChecksumMode="ENABLED"),
          s3.get_object(Bucket=B, Key="m/a.bin", ChecksumMode="ENABLED")):
    assert h["ETag"] == r["ETag"], h
    assert h["ContentType"] == "text/csv; charset=utf-8", h
    assert h["Metadata"] == meta, h["Metadata"]
    assert h["ChecksumSHA256"] == b64(hashlib.sha256(body).digest()), h
assert get_bytes(B, "m/a.bin") == body
assert [o["ETag"] for o in s3.list_objects_v2(Bucket=B, Prefix="m/a.bin")["Contents"]] == [r["ETag"]]
# Without a Content-Type the object answers application/octet-stream and no metadata.
s3.put_object(Bucket=B, Key="m/plain.bin", Body=b"p")
h = s3.head_object(Bucket=B, Key="m/plain.bin")
assert h["Metadata"] == {} and h["ContentType"] in ("application/octet-stream", "binary/octet-stream"), h

# Over 2 KiB of user metadata: 400 and nothing stored.
assert code(lambda: s3.put_object(Bucket=B, Key="m/fat.bin", Body=b"x", Metadata={"a": "v" * 2048})) == ("MetadataTooLarge", 400)
assert code(lambda: s3.head_object(Bucket=B, Key="m/fat.bin"))[1] == 404

# CopyObject: COPY keeps the source's metadata and ETag; REPLACE takes the request's.
s3.copy_object(Bucket=B, Key="m/copy.bin", CopySource="datasets/m/a.bin")
h = s3.head_object(Bucket=B, Key="m/copy.bin")
assert (h["Metadata"], h["ContentType"], h["ETag"]) == (meta, "text/csv; charset=utf-8", r["ETag"]), h
s3.copy_object(Bucket="models", Key="m/repl.bin", CopySource="datasets/m/a.bin", MetadataDirective="REPLACE",
               Metadata={"mtime": "2"}, ContentType="application/json")
h = s3.head_object(Bucket="models", Key="m/repl.bin")
assert (h["Metadata"], h["ContentType"], h["ETag"]) == ({"mtime": "2"}, "application/json", r["ETag"]), h
assert s3.get_object(Bucket="models", Key="m/repl.bin")["Body"].read() == body
# REPLACE onto itself: a metadata update in place (rclone's way of setting mtime).
s3.copy_object(Bucket=B, Key="m/copy.bin", CopySource="datasets/m/copy.bin", MetadataDirective="REPLACE",
               Metadata={"mtime": "3"})
h = s3.head_object(Bucket=B, Key="m/copy.bin")
assert h["Metadata"] == {"mtime": "3"} and get_bytes(B, "m/copy.bin") == body, h
# Metadata without REPLACE would be dropped: refused instead, nothing created.
assert code(lambda: s3.copy_object(Bucket=B, Key="m/nope.bin", CopySource="datasets/m/a.bin",
                                   Metadata={"x": "1"}, MetadataDirective="COPY")) == ("InvalidRequest", 400)
assert code(lambda: s3.head_object(Bucket=B, Key="m/nope.bin"))[1] == 404

# Multipart (upload_file of 20 MiB: three parts): the create's metadata reaches the object.
src = os.path.join(work, "meta-mp.bin")
with open(src, "wb") as f:
    f.write(os.urandom(20 * MiB))
mmeta = {"mtime": "1700000001", "md5chksum": b64(hashlib.md5(open(src, "rb").read()).digest())}
s3.upload_file(src, B, "m/mp.bin", ExtraArgs={"Metadata": mmeta, "ContentType": "video/mp4"})
h = s3.head_object(Bucket=B, Key="m/mp.bin")
assert (h["Metadata"], h["ContentType"]) == (mmeta, "video/mp4") and h["ETag"].endswith('-3"'), h
s3.copy_object(Bucket=B, Key="m/mp-copy.bin", CopySource="datasets/m/mp.bin")
assert s3.head_object(Bucket=B, Key="m/mp-copy.bin")["Metadata"] == mmeta
os.remove(src)

# Conditional GET and HEAD: If-Modified-Since (304), If-Unmodified-Since (412), and
# the RFC 9110 order with If-Match / If-None-Match.
h = s3.head_object(Bucket=B, Key="m/a.bin")
lm, etag = h["LastModified"], h["ETag"]
day = datetime.timedelta(days=1)
for f in (s3.head_object, s3.get_object):
    assert code(lambda: f(Bucket=B, Key="m/a.bin", IfModifiedSince=lm))[1] == 304
    assert code(lambda: f(Bucket=B, Key="m/a.bin", IfModifiedSince=lm + day))[1] == 304
    assert f(Bucket=B, Key="m/a.bin", IfModifiedSince=lm - day)["ETag"] == etag
    assert code(lambda: f(Bucket=B, Key="m/a.bin", IfUnmodifiedSince=lm - day))[1] == 412
    assert f(Bucket=B, Key="m/a.bin", IfUnmodifiedSince=lm)["ETag"] == etag
    # If-Match decides instead of If-Unmodified-Since; If-None-Match instead of
    # If-Modified-Since.
    assert f(Bucket=B, Key="m/a.bin", IfMatch=etag, IfUnmodifiedSince=lm - day)["ETag"] == etag
    assert f(Bucket=B, Key="m/a.bin", IfNoneMatch='"other"', IfModifiedSince=lm)["ETag"] == etag
    assert code(lambda: f(Bucket=B, Key="m/a.bin", IfMatch='"other"', IfModifiedSince=lm - day))[1] == 412
    assert code(lambda: f(Bucket=B, Key="m/a.bin", IfUnmodifiedSince=lm - day, IfModifiedSince=lm))[1] == 412
assert code(lambda: s3.get_object(Bucket=B, Key="m/a.bin", IfUnmodifiedSince=lm - day)) == ("PreconditionFailed", 412)

# Conditional PUT: If-None-Match: * refuses an existing key (412) and changes nothing.
s3.put_object(Bucket=B, Key="c/once", Body=b"first", IfNoneMatch="*")
assert code(lambda: s3.put_object(Bucket=B, Key="c/once", Body=b"second", IfNoneMatch="*")) == ("PreconditionFailed", 412)
assert get_bytes(B, "c/once") == b"first"
first = '"%s"' % hashlib.md5(b"first").hexdigest()
assert code(lambda: s3.put_object(Bucket=B, Key="c/once", Body=b"third", IfMatch='"%s"' % ("0" * 32))) == ("PreconditionFailed", 412)
assert code(lambda: s3.put_object(Bucket=B, Key="c/absent", Body=b"x", IfMatch=first)) == ("PreconditionFailed", 412)
assert code(lambda: s3.head_object(Bucket=B, Key="c/absent"))[1] == 404
assert get_bytes(B, "c/once") == b"first"
s3.put_object(Bucket=B, Key="c/once", Body=b"fourth", IfMatch=first)
assert get_bytes(B, "c/once") == b"fourth"
# Eight writers race for one new key: exactly one wins, the rest get 412, and the
# object is the winner's.
results = [None] * 8
def race(i):
    try:
        s3.put_object(Bucket=B, Key="c/race", Body=b"writer %d" % i, IfNoneMatch="*")
        results[i] = "ok"
    except botocore.exceptions.ClientError as e:
        results[i] = e.response["Error"]["Code"]
ts = [threading.Thread(target=race, args=(i,)) for i in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
assert sorted(results) == ["PreconditionFailed"] * 7 + ["ok"], results
assert get_bytes(B, "c/race") == b"writer %d" % results.index("ok")
# CompleteMultipartUpload with If-None-Match: * onto an existing key: 412, the upload
# stays (it can still be listed and aborted), the key is unchanged.
u = s3.create_multipart_upload(Bucket=B, Key="c/once")["UploadId"]
p = s3.upload_part(Bucket=B, Key="c/once", UploadId=u, PartNumber=1, Body=b"mp")
assert code(lambda: s3.complete_multipart_upload(Bucket=B, Key="c/once", UploadId=u, IfNoneMatch="*",
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]})) == ("PreconditionFailed", 412)
assert len(s3.list_parts(Bucket=B, Key="c/once", UploadId=u)["Parts"]) == 1
s3.abort_multipart_upload(Bucket=B, Key="c/once", UploadId=u)
assert get_bytes(B, "c/once") == b"fourth"

# A key with a character XML 1.0 cannot carry stays listable with encoding-type=url
# (boto3 asks for it and decodes; asked for explicitly, the keys come back encoded).
s3.put_object(Bucket=B, Key="ctl/a\x01b", Body=b"ctl")
assert [o["Key"] for o in s3.list_objects_v2(Bucket=B, Prefix="ctl/")["Contents"]] == ["ctl/a\x01b"]
r = s3.list_objects_v2(Bucket=B, Prefix="ctl/", EncodingType="url")
assert [o["Key"] for o in r["Contents"]] == ["ctl/a%01b"], r
assert [o["Key"] for o in s3.list_objects_v2(Bucket=B, Prefix="ctl/", StartAfter="ctl/a")["Contents"]] == ["ctl/a\x01b"]
assert [o["Key"] for o in s3.list_objects(Bucket=B, Prefix="ctl/")["Contents"]] == ["ctl/a\x01b"]
assert get_bytes(B, "ctl/a\x01b") == b"ctl"
print("ok")
"#;

#[test]
fn boto3_metadata_conditional_requests_md5_etags_and_url_listing() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let lab = Lab::new();
    let root = store_root(&lab);
    let srv = Server::start(&lab, "", &store_backend(&root, ""));
    run_boto3(
        &py,
        &lab,
        &srv,
        &root,
        "meta.py",
        METADATA_CONDITIONS_SCRIPT,
        &[],
    );
    assert!(!root.join("datasets/m/fat.bin").exists());
    assert!(!root.join("datasets/m/nope.bin").exists());
    assert!(!root.join("datasets/c/absent").exists());
    assert!(mpu_residue(&root).is_empty(), "{:?}", mpu_residue(&root));
    let stray: Vec<String> = files_under(&root)
        .into_iter()
        .filter(|f| f.contains(".lakegate-tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

const BUCKETS_SCRIPT: &str = r#"
names = lambda who: [b["Name"] for b in who.list_buckets()["Buckets"]]
# Only what each may list: alice's rule covers datasets, models and scratch-*, carol's
# only datasets; "hidden", a symlink and a file under the root are nobody's buckets.
assert names(s3) == ["datasets", "models"], names(s3)
assert names(carol) == ["datasets"], names(carol)

# CreateBucket and DeleteBucket need "manage": carol has none, alice only on scratch-*.
assert code(lambda: carol.create_bucket(Bucket="scratch-carol")) == ("AccessDenied", 403)
assert code(lambda: carol.delete_bucket(Bucket="datasets")) == ("AccessDenied", 403)
# An existing bucket the caller works in: S3's 409 for one's own bucket (rclone asks
# before a server-side move), without manage and without changing anything; a bucket
# the caller has no rule for stays 403, whether or not it exists.
assert code(lambda: carol.create_bucket(Bucket="datasets")) == ("BucketAlreadyOwnedByYou", 409)
assert code(lambda: carol.create_bucket(Bucket="hidden")) == ("AccessDenied", 403)
assert code(lambda: carol.create_bucket(Bucket="models")) == ("AccessDenied", 403)
assert code(lambda: s3.create_bucket(Bucket="other-1")) == ("AccessDenied", 403)
assert code(lambda: s3.delete_bucket(Bucket="hidden")) == ("AccessDenied", 403)
s3.create_bucket(Bucket="scratch-1")
assert names(s3) == ["datasets", "models", "scratch-1"], names(s3)
assert names(carol) == ["datasets"]
assert code(lambda: s3.create_bucket(Bucket="scratch-1")) == ("BucketAlreadyOwnedByYou", 409)
s3.create_bucket(Bucket="scratch-2", CreateBucketConfiguration={"LocationConstraint": "us-east-1"})
assert code(lambda: s3.create_bucket(Bucket="scratch-3", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})) == ("InvalidLocationConstraint", 400)
assert code(lambda: s3.create_bucket(Bucket="scratch-UPPER")) in (("InvalidBucketName", 400), ("AccessDenied", 403))
assert code(lambda: s3.create_bucket(Bucket="scratch_under")) in (("InvalidBucketName", 400), ("AccessDenied", 403))
assert code(lambda: s3.create_bucket(Bucket="scratch-x", ObjectLockEnabledForBucket=True)) == ("NotImplemented", 501)

# A bucket with an object, or with an upload in progress, is not deleted.
s3.put_object(Bucket="scratch-1", Key="deep/k", Body=b"x")
assert code(lambda: s3.delete_bucket(Bucket="scratch-1")) == ("BucketNotEmpty", 409)
s3.delete_object(Bucket="scratch-1", Key="deep/k")
u = s3.create_multipart_upload(Bucket="scratch-1", Key="k")["UploadId"]
assert code(lambda: s3.delete_bucket(Bucket="scratch-1")) == ("BucketNotEmpty", 409)
s3.abort_multipart_upload(Bucket="scratch-1", Key="k", UploadId=u)
s3.delete_bucket(Bucket="scratch-1")
s3.delete_bucket(Bucket="scratch-2")
assert code(lambda: s3.head_bucket(Bucket="scratch-1"))[1] == 404
assert code(lambda: s3.delete_bucket(Bucket="scratch-1")) == ("NoSuchBucket", 404)
assert names(s3) == ["datasets", "models"], names(s3)
print("ok")
"#;

#[test]
fn list_buckets_shows_only_listable_and_create_delete_need_manage() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let lab = Lab::new();
    let root = store_root(&lab);
    std::fs::create_dir_all(root.join("hidden")).unwrap();
    std::fs::write(root.join("notabucket"), b"x").unwrap();
    std::os::unix::fs::symlink(root.join("datasets"), root.join("scratch-link")).unwrap();
    let authz = r#"[[authz]]
identity = "spiffe://lake.example/trainer/carol"
buckets = ["datasets"]
access = ["read", "list", "write", "delete"]

[[authz]]
identity = "spiffe://lake.example/trainer/alice"
buckets = ["datasets", "models", "scratch-*"]
access = ["read", "write", "delete", "list", "manage"]
"#;
    // `lakegate check` says what each rule means, manage included, and the ETag kind.
    let cfg = lab.config_with_authz(
        free_port(),
        free_port(),
        "",
        &store_backend(&root, "etag = \"sha256\""),
        authz,
    );
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("read, write, delete, list, manage (create/delete the bucket) on buckets [\"datasets\", \"models\", \"scratch-*\"]"),
        "{out}"
    );
    assert!(out.contains("backend.etag = sha256"), "{out}");
    let srv = Server::start_with_authz(&lab, "", &store_backend(&root, ""), authz);
    run_boto3(&py, &lab, &srv, &root, "buckets.py", BUCKETS_SCRIPT, &[]);
    // Refused creations made nothing; the symlink and the foreign folder are intact.
    for b in [
        "scratch-carol",
        "other-1",
        "scratch-3",
        "scratch-x",
        "scratch-1",
    ] {
        assert!(!root.join(b).exists(), "{b}");
    }
    assert!(root.join("hidden").is_dir() && root.join("datasets").is_dir());
    assert!(root.join("scratch-link").is_symlink());
    assert!(srv.log_line_with(&["bucket created"]).is_some());
    assert!(srv.log_line_with(&["bucket deleted"]).is_some());
}

const ONE_GIB_SCRIPT: &str = r#"
# 1 GiB through boto3's default upload_file (multipart, 8 MiB parts, 10 threads) and
# download_file (ranged GETs), byte-exact. The file is a random 16 MiB block with the
# MiB index written at the start of every MiB, so that no two 8 MiB parts are alike and
# any misplaced part is caught; generated in a second or two.
import tempfile, time
tmp = tempfile.mkdtemp(prefix="lakegate-1gib-", dir="/tmp")
src, dst = os.path.join(tmp, "src.bin"), os.path.join(tmp, "dst.bin")
try:
    block = bytearray(os.urandom(16 * MiB))
    with open(src, "wb") as f:
        for i in range(64):
            for j in range(16):
                block[j * MiB:j * MiB + 8] = (i * 16 + j).to_bytes(8, "little")
            f.write(block)
    assert os.path.getsize(src) == 1024 * MiB
    t = time.monotonic()
    s3.upload_file(src, "datasets", "gib/one.bin")
    up = time.monotonic() - t
    h = s3.head_object(Bucket="datasets", Key="gib/one.bin")
    assert h["ContentLength"] == 1024 * MiB and h["ETag"].endswith('-128"'), h
    t = time.monotonic()
    s3.download_file("datasets", "gib/one.bin", dst)
    down = time.monotonic() - t
    assert sha_file(dst) == sha_file(src), "1 GiB round trip differs"
    print("upload %.1f s, download %.1f s" % (up, down))
finally:
    for p in (src, dst):
        if os.path.exists(p):
            os.remove(p)
    os.rmdir(tmp)
print("ok")
"#;

#[test]
fn boto3_default_upload_and_download_of_one_gib_are_byte_exact() {
    let Some(py) = python_with("boto3") else {
        return;
    };
    let lab = Lab::new();
    let root = store_root(&lab);
    let srv = Server::start(&lab, "", &store_backend(&root, ""));
    let t = Instant::now();
    let out = run_boto3(&py, &lab, &srv, &root, "gib.py", ONE_GIB_SCRIPT, &[]);
    eprintln!(
        "1 GiB: {} (whole script {:?})",
        out.lines().next().unwrap_or(""),
        t.elapsed()
    );
    assert_eq!(
        std::fs::metadata(root.join("datasets/gib/one.bin"))
            .unwrap()
            .len(),
        1 << 30
    );
    // The stored copy goes with the lab; remove it now rather than at drop.
    std::fs::remove_file(root.join("datasets/gib/one.bin")).unwrap();
}
