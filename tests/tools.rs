//! End-to-end: real S3 tools with their DEFAULT settings and a client certificate,
//! against the real binary with the `store` backend: rclone (Debian's package), s3fs
//! with pyarrow (PyPI), and the AWS CLI v1 (PyPI, through a ten-line plugin: it has no
//! setting for a client certificate, see README "Real tools").
//!
//! A tool that is missing is a loud SKIPPED here, and a failure under CI (`CI` set):
//! `.ci/run` installs all of them.
//!
//! Contract: ../shared/DESIGN.md "HTTP object API" and the README's S3 table.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

const MIB: usize = 1 << 20;

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `program` if it runs (`program ARGS` exits 0); else a loud SKIPPED, or a panic under CI.
fn tool(program: &str, version_args: &[&str]) -> Option<PathBuf> {
    let ok = Command::new(program)
        .args(version_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(PathBuf::from(program));
    }
    assert!(
        !under_ci(),
        "CI: {program} is not installed (.ci/run installs it)"
    );
    eprintln!(
        "\n********** SKIPPED: {program} is not installed (.ci/run installs it) **********\n"
    );
    None
}

/// A store root under the lab with the bucket the tests use.
fn store_server(lab: &Lab) -> (Server, PathBuf) {
    let root = lab.path("store");
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    let backend = format!(
        "kind = \"store\"\nroot = \"{}\"\nfsync = \"never\"\n",
        root.display()
    );
    (Server::start(lab, "", &backend), root)
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The hex SHA-256 of a file, read 1 MiB at a time.
fn file_sha256(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    hex(ctx.finish().as_ref())
}

fn write_file(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// rclone with its defaults (S3 provider "Other": path-style, 200 MiB upload cutoff, 5
/// MiB chunks, 4 concurrent parts), the lab CA and alice's certificate. Each run logs
/// at -vv into its own file under the lab; returns (output, log).
struct Rclone<'a> {
    bin: PathBuf,
    lab: &'a Lab,
    srv: &'a Server,
    runs: usize,
}

impl Rclone<'_> {
    fn run(&mut self, args: &[&str]) -> (Output, String) {
        self.runs += 1;
        let log = self.lab.path(&format!("rclone-{}.log", self.runs));
        let (cert, key) = self.lab.client("alice");
        let o = Command::new(&self.bin)
            .args(["--config", self.lab.path("rclone.conf").to_str().unwrap()])
            .arg("--client-cert")
            .arg(&cert)
            .arg("--client-key")
            .arg(&key)
            .arg("--ca-cert")
            .arg(self.lab.path("ca.crt"))
            .args(["-vv", "--log-file", log.to_str().unwrap()])
            .args(args)
            // rclone's SDK refuses AWS_CA_BUNDLE together with --ca-cert.
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_CONFIG_LAKE_TYPE", "s3")
            .env("RCLONE_CONFIG_LAKE_PROVIDER", "Other")
            .env(
                "RCLONE_CONFIG_LAKE_ENDPOINT",
                format!("https://127.0.0.1:{}", self.srv.port),
            )
            .env("RCLONE_CONFIG_LAKE_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("RCLONE_CONFIG_LAKE_SECRET_ACCESS_KEY", "not-a-secret")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !log.contains("Unsolicited response"),
            "rclone {args:?}: a response arrived on an idle connection:\n{log}"
        );
        (o, log)
    }

    /// Run and require exit 0.
    fn ok(&mut self, args: &[&str]) -> (String, String) {
        let (o, log) = self.run(args);
        assert!(
            o.status.success(),
            "rclone {args:?} failed: {}\nlog:\n{log}\nserver log:\n{}",
            text(&o),
            self.srv.log_plain()
        );
        (String::from_utf8_lossy(&o.stdout).into_owned(), log)
    }
}

#[test]
fn rclone_copy_check_sync_and_lsf() {
    let Some(bin) = tool("rclone", &["version"]) else {
        return;
    };
    let lab = Lab::new();
    let (srv, root) = store_server(&lab);
    // A folder as a user has it: one file over the 200 MiB upload cutoff (multipart, 60
    // parts of 5 MiB), small files of several types, nested folders, a key with a space
    // and a plus, an empty file.
    let src = lab.path("src");
    let big = pseudo_random(300 * MIB, 1);
    write_file(&src.join("big.bin"), &big);
    let big_sha = sha256_hex(&big);
    drop(big);
    write_file(&src.join("a.txt"), b"alpha\n");
    write_file(&src.join("sub/b.csv"), b"x,y\n1,2\n");
    write_file(&src.join("sub/c.bin"), &pseudo_random(3 * MIB + 5, 2));
    write_file(&src.join("sub/deep/d e+f.json"), b"{\"k\": 1}\n");
    write_file(&src.join("empty.dat"), b"");
    let src_s = src.to_str().unwrap();
    let mut rc = Rclone {
        bin,
        lab: &lab,
        srv: &srv,
        runs: 0,
    };

    rc.ok(&["copy", src_s, "lake:datasets/r"]);
    assert_eq!(
        file_sha256(&root.join("datasets/r/big.bin")),
        big_sha,
        "big.bin differs in the store"
    );
    for f in [
        "a.txt",
        "sub/b.csv",
        "sub/c.bin",
        "sub/deep/d e+f.json",
        "empty.dat",
    ] {
        assert_eq!(
            std::fs::read(root.join("datasets/r").join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }

    // check: sizes and hashes of every file (MD5: the single-part ETag, and rclone's
    // X-Amz-Meta-Md5chksum for the multipart one).
    let (_, log) = rc.ok(&["check", src_s, "lake:datasets/r"]);
    assert!(log.contains(": 0 differences found"), "{log}");
    assert!(log.contains(": 6 matching files"), "{log}");
    assert!(
        !log.contains("hashes could not be checked"),
        "rclone could not compare hashes:\n{log}"
    );
    // A changed file is found (by size, and by hash at the same size).
    write_file(&src.join("a.txt"), b"ALPHA\n");
    let (o, log) = rc.run(&["check", src_s, "lake:datasets/r"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(log.contains(": 1 differences found"), "{log}");

    // sync: the changed file is sent again, a file gone from the source is deleted.
    std::fs::remove_file(src.join("sub/b.csv")).unwrap();
    let (_, log) = rc.ok(&["sync", src_s, "lake:datasets/r"]);
    assert!(log.contains("b.csv: Deleted"), "{log}");
    assert!(!root.join("datasets/r/sub/b.csv").exists());
    assert_eq!(
        std::fs::read(root.join("datasets/r/a.txt")).unwrap(),
        b"ALPHA\n"
    );
    let (_, log) = rc.ok(&["check", src_s, "lake:datasets/r"]);
    assert!(log.contains(": 0 differences found"), "{log}");

    // A ranged read; a server-side copy (CopyObject) of a key with a space and a plus.
    let (out, _) = rc.ok(&[
        "cat",
        "--offset",
        "1",
        "--count",
        "3",
        "lake:datasets/r/a.txt",
    ]);
    assert_eq!(out, "LPH");
    rc.ok(&[
        "copyto",
        "lake:datasets/r/sub/deep/d e+f.json",
        "lake:datasets/r/sub/deep/copy.json",
    ]);
    assert_eq!(
        std::fs::read(root.join("datasets/r/sub/deep/copy.json")).unwrap(),
        b"{\"k\": 1}\n"
    );
    std::fs::remove_file(root.join("datasets/r/sub/deep/copy.json")).unwrap();

    // lsf of a prefix: one level, then recursive; a prefix that names nothing.
    let (out, _) = rc.ok(&["lsf", "lake:datasets/r/sub"]);
    assert_eq!(out, "c.bin\ndeep/\n");
    let (out, _) = rc.ok(&["lsf", "-R", "lake:datasets/r"]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "a.txt",
            "big.bin",
            "empty.dat",
            "sub/",
            "sub/c.bin",
            "sub/deep/",
            "sub/deep/d e+f.json"
        ]
    );
    let (out, _) = rc.ok(&[
        "lsf",
        "--files-only",
        "-R",
        "--include",
        "*.json",
        "lake:datasets/r",
    ]);
    assert_eq!(out, "sub/deep/d e+f.json\n");
    let (out, _) = rc.ok(&["lsf", "lake:datasets/r/nothing"]);
    assert_eq!(out, "");
    // moveto (server-side copy, then delete) into another folder: rclone first makes
    // the parent "directory", which on S3 means CreateBucket (PUT /datasets), and goes
    // on only on S3's answer for a bucket that exists and is the caller's (200 in
    // us-east-1, or 409 BucketAlreadyOwnedByYou).
    rc.ok(&[
        "moveto",
        "lake:datasets/r/a.txt",
        "lake:datasets/r/archive/a.txt",
    ]);
    assert!(!root.join("datasets/r/a.txt").exists());
    assert_eq!(
        std::fs::read(root.join("datasets/r/archive/a.txt")).unwrap(),
        b"ALPHA\n"
    );
    // Nothing of an upload or a temporary is left in the bucket.
    assert!(
        !root.join("datasets/.lakegate-mpu").exists()
            || std::fs::read_dir(root.join("datasets/.lakegate-mpu"))
                .unwrap()
                .next()
                .is_none()
    );
}

const S3FS_SCRIPT: &str = r#"
import hashlib, os, sys
import s3fs
import pyarrow as pa, pyarrow.parquet as pq

endpoint, ca, cert, key = sys.argv[1:5]
MiB = 1024 * 1024
# Defaults of s3fs; only what it needs to reach lakegate: the endpoint, the CA, fake
# credentials, path-style addressing, and the client certificate (botocore's
# client_cert setting).
fs = s3fs.S3FileSystem(key="AKIDEXAMPLE", secret="not-a-secret", endpoint_url=endpoint,
                       client_kwargs={"verify": ca, "region_name": "us-east-1"},
                       config_kwargs={"client_cert": (cert, key),
                                      "s3": {"addressing_style": "path"}})

data = os.urandom(100 * MiB)
with fs.open("datasets/fs/big.bin", "wb") as f:
    for i in range(0, len(data), 4 * MiB):
        f.write(data[i:i + 4 * MiB])
info = fs.info("datasets/fs/big.bin")
assert info["size"] == 100 * MiB and info["type"] == "file", info
with fs.open("datasets/fs/big.bin", "rb") as f:
    back = f.read()
assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest(), "100 MiB read back differs"
# A ranged read through the file object.
with fs.open("datasets/fs/big.bin", "rb") as f:
    f.seek(77 * MiB + 3)
    assert f.read(1000) == data[77 * MiB + 3:77 * MiB + 1003]

fs.pipe("datasets/fs/small/one.txt", b"one")
fs.pipe("datasets/fs/small/two.txt", b"two")
assert fs.cat("datasets/fs/small/two.txt") == b"two"
assert fs.ls("datasets/fs") == ["datasets/fs/big.bin", "datasets/fs/small"], fs.ls("datasets/fs")
assert fs.ls("datasets/fs/small", refresh=True) == ["datasets/fs/small/one.txt", "datasets/fs/small/two.txt"]
assert sorted(fs.find("datasets/fs")) == ["datasets/fs/big.bin", "datasets/fs/small/one.txt", "datasets/fs/small/two.txt"]
assert fs.exists("datasets/fs/small/one.txt") and not fs.exists("datasets/fs/small/three.txt")
fs.rm("datasets/fs/small/one.txt")
assert fs.ls("datasets/fs/small", refresh=True) == ["datasets/fs/small/two.txt"]
assert not fs.exists("datasets/fs/small/one.txt")

# pyarrow writes and reads a Parquet file through s3fs.
table = pa.table({"id": list(range(10000)), "name": ["row %d" % i for i in range(10000)]})
pq.write_table(table, "datasets/fs/t.parquet", filesystem=fs)
assert pq.read_table("datasets/fs/t.parquet", filesystem=fs).equals(table)

# Server-side copy and move, a ranged read, du and glob.
fs.copy("datasets/fs/small/two.txt", "datasets/fs/c d+e.txt")
fs.mv("datasets/fs/c d+e.txt", "datasets/fs/moved.txt")
assert not fs.exists("datasets/fs/c d+e.txt") and fs.cat("datasets/fs/moved.txt") == b"two"
assert fs.cat_file("datasets/fs/big.bin", start=5, end=9) == data[5:9]
assert fs.du("datasets/fs/small") == 3
assert fs.glob("datasets/fs/**/*.txt") == ["datasets/fs/moved.txt", "datasets/fs/small/two.txt"], fs.glob("datasets/fs/**/*.txt")
# A missing object is FileNotFoundError, as on any filesystem.
try:
    fs.open("datasets/fs/absent.bin").read()
    raise AssertionError("read of a missing object")
except FileNotFoundError:
    pass

fs.rm("datasets/fs", recursive=True)
assert fs.ls("datasets", refresh=True) == [], fs.ls("datasets")
print("ok")
"#;

/// s3fs calls that need what is being added for issue 12 (Content-Type kept with the
/// object, ListBuckets): `put_file` sends the type guessed from the file name.
const S3FS_METADATA_SCRIPT: &str = r#"
import os, sys
import s3fs

endpoint, ca, cert, key = sys.argv[1:5]
fs = s3fs.S3FileSystem(key="AKIDEXAMPLE", secret="not-a-secret", endpoint_url=endpoint,
                       client_kwargs={"verify": ca, "region_name": "us-east-1"},
                       config_kwargs={"client_cert": (cert, key),
                                      "s3": {"addressing_style": "path"}})
local = os.path.join(os.path.dirname(sys.argv[0]), "table.csv")
with open(local, "w") as f:
    f.write("id,name\n1,one\n")
fs.put_file(local, "datasets/meta/table.csv")
assert fs.cat("datasets/meta/table.csv") == b"id,name\n1,one\n"
info = fs.info("datasets/meta/table.csv", refresh=True)
assert info["ContentType"] == "text/csv", info
assert "datasets" in fs.ls("", refresh=True), fs.ls("")
print("ok")
"#;

fn run_python(py: &Path, lab: &Lab, srv: &Server, name: &str, script: &str) {
    let path = lab.path(name);
    std::fs::write(&path, script).unwrap();
    let (cert, key) = lab.client("alice");
    let o = python_cmd(py)
        .arg(&path)
        .arg(format!("https://127.0.0.1:{}", srv.port))
        .arg(lab.path("ca.crt"))
        .args([&cert, &key])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "ok"),
        "{name} failed: {}\nserver log:\n{}",
        text(&o),
        srv.log_plain()
    );
}

#[test]
fn s3fs_and_pyarrow_write_read_ls_rm() {
    let Some(py) = python_with("s3fs, pyarrow.parquet") else {
        return;
    };
    let lab = Lab::new();
    let (srv, root) = store_server(&lab);
    run_python(&py, &lab, &srv, "s3fs_test.py", S3FS_SCRIPT);
    assert!(!root.join("datasets/fs").exists());
}

#[test]
fn s3fs_put_file_keeps_its_content_type_and_lists_buckets() {
    let Some(py) = python_with("s3fs") else {
        return;
    };
    let lab = Lab::new();
    let (srv, _root) = store_server(&lab);
    run_python(&py, &lab, &srv, "s3fs_meta.py", S3FS_METADATA_SCRIPT);
}

/// The AWS CLI v1 has no setting for a client certificate (botocore reads
/// `client_cert` only from a `Config` object; the config file knows only
/// `proxy_client_cert`, for a proxy). A plugin, named in the `[plugins]` section of
/// `AWS_CONFIG_FILE`, sets it on the session.
const AWS_PLUGIN: &str = r#"import os
from botocore.config import Config

def awscli_initialize(cli):
    cli.register("session-initialized", _client_cert)

def _client_cert(session, **kwargs):
    pair = (os.environ["LAKEGATE_CLIENT_CERT"], os.environ["LAKEGATE_CLIENT_KEY"])
    session.set_default_client_config(Config(client_cert=pair))
"#;

#[test]
fn aws_cli_cp_multipart_up_and_down_and_ls() {
    let Some(py) = python_with("awscli") else {
        return;
    };
    let lab = Lab::new();
    let (srv, root) = store_server(&lab);
    let plugins = lab.path("aws-plugins");
    write_file(
        &plugins.join("lakegate_client_cert.py"),
        AWS_PLUGIN.as_bytes(),
    );
    std::fs::write(
        lab.path("aws-config"),
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n\n\
         [plugins]\nlakegate_client_cert = lakegate_client_cert\n",
    )
    .unwrap();
    std::fs::write(
        lab.path("aws-config-plain"),
        "[default]\nregion = us-east-1\n",
    )
    .unwrap();
    let (cert, key) = lab.client("alice");
    let aws = |config: &str, args: &[&str]| {
        python_cmd(&py)
            .args(["-m", "awscli"])
            .args(["--endpoint-url", &format!("https://127.0.0.1:{}", srv.port)])
            .args(args)
            .env("AWS_CONFIG_FILE", lab.path(config))
            .env("AWS_SHARED_CREDENTIALS_FILE", lab.path("no-credentials"))
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
            .env("AWS_CA_BUNDLE", lab.path("ca.crt"))
            .env(
                "PYTHONPATH",
                std::env::join_paths([
                    plugins.clone(),
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py"),
                ])
                .unwrap(),
            )
            .env("LAKEGATE_CLIENT_CERT", &cert)
            .env("LAKEGATE_CLIENT_KEY", &key)
            .current_dir(lab.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let o = aws("aws-config", args);
        assert!(
            o.status.success(),
            "aws {args:?}: {}\nserver log:\n{}",
            text(&o),
            srv.log_plain()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    // Without the plugin the CLI presents no certificate and the handshake is refused.
    let o = aws("aws-config-plain", &["s3", "ls", "s3://datasets/"]);
    assert!(!o.status.success(), "{}", text(&o));

    // 20 MiB: over the 8 MiB multipart threshold, three parts.
    let data = pseudo_random(20 * MIB + 11, 3);
    std::fs::write(lab.path("up.bin"), &data).unwrap();
    ok(&[
        "s3",
        "cp",
        "--no-progress",
        "up.bin",
        "s3://datasets/cli/up.bin",
    ]);
    assert!(std::fs::read(root.join("datasets/cli/up.bin")).unwrap() == data);
    let head = ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "datasets",
        "--key",
        "cli/up.bin",
    ]);
    assert!(head.contains("-3\\\""), "not a three-part upload: {head}");
    ok(&[
        "s3",
        "cp",
        "--no-progress",
        "s3://datasets/cli/up.bin",
        "down.bin",
    ]);
    assert!(std::fs::read(lab.path("down.bin")).unwrap() == data);
    ok(&[
        "s3",
        "cp",
        "--no-progress",
        "up.bin",
        "s3://datasets/cli/sub/again.bin",
    ]);

    let out = ok(&["s3", "ls", "s3://datasets/cli/"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].trim() == "PRE sub/", "{out}");
    assert!(
        lines[1].ends_with(&format!(" {} up.bin", data.len())),
        "{out}"
    );
    let out = ok(&["s3", "ls", "--recursive", "s3://datasets/"]);
    assert!(
        out.contains(" cli/sub/again.bin") && out.contains(" cli/up.bin"),
        "{out}"
    );
    // Server-side copy and move of a small object (CopyObject). A copy over the
    // multipart threshold is UploadPartCopy, refused (501): the CLI aborts its upload
    // and nothing is left.
    let o = aws(
        "aws-config",
        &[
            "s3",
            "cp",
            "s3://datasets/cli/up.bin",
            "s3://datasets/cli/x.bin",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("NotImplemented"), "{}", text(&o));
    assert!(!root.join("datasets/cli/x.bin").exists());
    let mpu = root.join("datasets/.lakegate-mpu");
    assert!(!mpu.exists() || std::fs::read_dir(&mpu).unwrap().next().is_none());
    std::fs::write(lab.path("small.dat"), b"small").unwrap();
    ok(&["s3", "cp", "small.dat", "s3://datasets/cli/small.dat"]);
    ok(&[
        "s3",
        "cp",
        "s3://datasets/cli/small.dat",
        "s3://datasets/cli/small2.dat",
    ]);
    ok(&[
        "s3",
        "mv",
        "s3://datasets/cli/small2.dat",
        "s3://datasets/cli/small3.dat",
    ]);
    assert_eq!(
        std::fs::read(root.join("datasets/cli/small3.dat")).unwrap(),
        b"small"
    );
    assert!(!root.join("datasets/cli/small2.dat").exists());

    // sync up: a second run sends nothing; --delete removes what the folder lost.
    let tree = lab.path("tree");
    write_file(&tree.join("one.dat"), b"1");
    write_file(&tree.join("deep/two.dat"), &pseudo_random(9 * MIB, 4));
    ok(&["s3", "sync", "--no-progress", "tree", "s3://datasets/tree/"]);
    assert_eq!(
        ok(&["s3", "sync", "--no-progress", "tree", "s3://datasets/tree/"]),
        ""
    );
    std::fs::remove_file(tree.join("one.dat")).unwrap();
    let out = ok(&[
        "s3",
        "sync",
        "--no-progress",
        "--delete",
        "tree",
        "s3://datasets/tree/",
    ]);
    assert!(out.contains("delete: s3://datasets/tree/one.dat"), "{out}");
    assert!(!root.join("datasets/tree/one.dat").exists());
    assert_eq!(
        std::fs::metadata(root.join("datasets/tree/deep/two.dat"))
            .unwrap()
            .len(),
        9 << 20
    );

    ok(&["s3", "rm", "--recursive", "s3://datasets/cli/"]);
    ok(&["s3", "rm", "--recursive", "s3://datasets/tree/"]);
    // rm of a key that is not there succeeds, as against S3.
    ok(&["s3", "rm", "s3://datasets/cli/never-there.bin"]);
    assert_eq!(ok(&["s3", "ls", "--recursive", "s3://datasets/"]), "");
    assert!(!root.join("datasets/cli/up.bin").exists());

    // What is being added for issue 12: `cp` sends the Content-Type guessed from the
    // file name (text/csv here), kept and returned; ListBuckets lists the buckets
    // alice may list.
    std::fs::write(lab.path("table.csv"), b"id\n1\n").unwrap();
    ok(&["s3", "cp", "table.csv", "s3://datasets/cli/table.csv"]);
    let head = ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "datasets",
        "--key",
        "cli/table.csv",
    ]);
    assert!(head.contains("\"ContentType\": \"text/csv\""), "{head}");
    let out = ok(&["s3", "ls"]);
    assert!(out.lines().any(|l| l.ends_with(" datasets")), "{out}");
}
