//! The receive path of engine v2 (issue 11, item 2) beside today's, on this machine.
//!
//! (A) what the engine does now on tokio-uring 0.5 (src/engine/io.rs, pool.rs, forward.rs):
//!     wait for readability through a one-shot tokio `AsyncFd` registration holding no
//!     buffer, then take a 65 KiB pool buffer and `TcpStream::read` into it; after a read
//!     shorter than 16 KiB (`TRICKLE`) give the buffer back and wait for readability again.
//! (B) compio 0.19.2: one multishot `IORING_OP_RECV` per connection over the runtime's
//!     provided buffer ring (`AsyncReadMulti::read_multi`), on a SINGLE_ISSUER |
//!     DEFER_TASKRUN ring, multishot accept (`TcpListener::incoming`); every buffer goes back
//!     to the ring as soon as its bytes are consumed (`BufferRef` dropped).
//!
//! Variants (servers; each runs in a child process of its own, pinned to `--rx-core`):
//!   a   (A) above: tokio-uring 0.5, `readable()` then read into a pool buffer
//!   ah  tokio-uring 0.5, the engine before `readable()`: a read always pending in an owned
//!       65 KiB buffer (filled once, so resident as a buffer that has carried traffic is)
//!   b   (B) above
//!   bn  (b) on compio's default ring (no SINGLE_ISSUER, no DEFER_TASKRUN)
//!   bs  compio, single-shot buffer-select recv (`read_managed`) re-issued per read, SI|DT
//!   bw  (b), but a connection whose multishot ended on ENOBUFS re-arms only when a buffer
//!       has gone back to the ring since (one waiter per recycled buffer, FIFO; at most
//!       1 ms wait): the shell-side gate the engine would need against a re-arm storm
//!
//! Parts:
//!   idle   `--conns` (10,000) connections each send 512 bytes, which the server reads, then
//!          stay open; each server task is parked in its next receive. RSS (VmRSS) of the
//!          server after all have parked minus before the first connect, per connection.
//!   bulk   one connection streams `--gib` GiB (4) from a std `write` sender pinned to
//!          `--tx-core`; the server's process CPU (`getrusage(RUSAGE_SELF)`) and its runtime
//!          thread's syscalls (perf tracepoint `raw_syscalls:sys_enter`) from accept to EOF.
//!   burst  ENOBUFS: `--burst-conns` (2,000) connections are armed, then all are sent
//!          `--burst-kib` KiB (64) each with no pause on a tiny pool (`--burst-pbufs` x
//!          `--burst-pbuf-kib`, 8 x 4 KiB); the server counts ENOBUFS terminations, re-arms,
//!          and checks every byte (a position pattern: a lost, repeated or reordered
//!          buffer shows) and every connection's total.
//!
//! The clients are this process (the orchestrator); the server is a child, so neither
//! holds more than ~10,000 descriptors (the cap is 20,000 per process). Variants run
//! interleaved (a, b, ... then the next round).
//!
//! Usage: `cargo bench --bench uring-compio -- [--runs N] [--parts idle,bulk,burst]
//!         [--variants a,ah,b,bn,bs] [--conns N] [--gib N] [--pbufs N] [--pbuf-kib N]
//!         [--burst-conns N] [--burst-kib N] [--burst-pbufs N] [--burst-pbuf-kib N]
//!         [--rx-core N] [--tx-core N]`
//! See benches/uring/README.md ("compio vs tokio-uring") for the results.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::num::NonZeroU16;
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The engine's pool buffer (src/engine/pool.rs `BUF_SIZE`).
const BUF_SIZE: usize = 64 * 1024 + 1024;
/// A read shorter than this means the peer is between bursts (src/engine/forward.rs).
const TRICKLE: usize = 16 * 1024;
/// Buffers the engine's pool keeps (src/engine/worker.rs `Pool::new(256)`).
const POOL_KEEP: usize = 256;
/// The first message of an idle connection (a small request).
const IDLE_MSG: usize = 512;
const CHUNK: usize = 256 * 1024;
const GIB: f64 = (1u64 << 30) as f64;

// ---------------------------------------------------------------------------------------
// Shared helpers

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    A,
    Ah,
    B,
    Bn,
    Bs,
    Bw,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::A,
        Variant::Ah,
        Variant::B,
        Variant::Bn,
        Variant::Bs,
        Variant::Bw,
    ];

    fn key(self) -> &'static str {
        match self {
            Variant::A => "a",
            Variant::Ah => "ah",
            Variant::B => "b",
            Variant::Bn => "bn",
            Variant::Bs => "bs",
            Variant::Bw => "bw",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Variant::A => "tokio-uring 0.5: AsyncFd readable(), then read into a 65 KiB pool buffer (main)",
            Variant::Ah => "tokio-uring 0.5: read pending in an owned 65 KiB buffer (main before readable())",
            Variant::B => "compio 0.19.2: multishot recv + provided ring, SINGLE_ISSUER|DEFER_TASKRUN",
            Variant::Bn => "compio 0.19.2: (b) on the default ring flags",
            Variant::Bs => "compio 0.19.2: single-shot buffer-select recv, SINGLE_ISSUER|DEFER_TASKRUN",
            Variant::Bw => "compio 0.19.2: (b), but after ENOBUFS re-arm only once a buffer is recycled (FIFO, 1 ms cap)",
        }
    }

    fn parse(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.key() == s)
    }

    fn is_compio(self) -> bool {
        matches!(self, Variant::B | Variant::Bn | Variant::Bs | Variant::Bw)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Idle,
    Bulk,
    Burst,
}

impl Part {
    fn parse(s: &str) -> Option<Part> {
        match s {
            "idle" => Some(Part::Idle),
            "bulk" => Some(Part::Bulk),
            "burst" => Some(Part::Burst),
            _ => None,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Part::Idle => "idle",
            Part::Bulk => "bulk",
            Part::Burst => "burst",
        }
    }
}

#[derive(Clone, Debug)]
struct Opts {
    runs: usize,
    parts: Vec<Part>,
    variants: Vec<Variant>,
    conns: usize,
    gib: u64,
    pbufs: u16,
    pbuf_kib: usize,
    burst_conns: usize,
    burst_kib: usize,
    burst_pbufs: u16,
    burst_pbuf_kib: usize,
    rx_core: usize,
    tx_core: usize,
    /// Child mode: serve this variant for this part.
    serve: Option<(Variant, Part)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            runs: 3,
            parts: vec![Part::Idle, Part::Bulk, Part::Burst],
            variants: Variant::ALL.to_vec(),
            conns: 10_000,
            gib: 4,
            pbufs: 64,
            pbuf_kib: 64,
            burst_conns: 2_000,
            burst_kib: 64,
            burst_pbufs: 8,
            burst_pbuf_kib: 4,
            rx_core: 0,
            tx_core: 1,
            serve: None,
        }
    }
}

fn parse_args() -> Opts {
    let mut o = Opts::default();
    let mut args = std::env::args().skip(1);
    let mut serve_variant = None;
    let mut serve_part = None;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--runs" => o.runs = val().parse().expect("--runs"),
            "--parts" => {
                o.parts = val()
                    .split(',')
                    .map(|s| Part::parse(s).unwrap_or_else(|| panic!("unknown part {s}")))
                    .collect()
            }
            "--variants" => {
                o.variants = val()
                    .split(',')
                    .map(|s| Variant::parse(s).unwrap_or_else(|| panic!("unknown variant {s}")))
                    .collect()
            }
            "--conns" => o.conns = val().parse().expect("--conns"),
            "--gib" => o.gib = val().parse().expect("--gib"),
            "--pbufs" => o.pbufs = val().parse().expect("--pbufs"),
            "--pbuf-kib" => o.pbuf_kib = val().parse().expect("--pbuf-kib"),
            "--burst-conns" => o.burst_conns = val().parse().expect("--burst-conns"),
            "--burst-kib" => o.burst_kib = val().parse().expect("--burst-kib"),
            "--burst-pbufs" => o.burst_pbufs = val().parse().expect("--burst-pbufs"),
            "--burst-pbuf-kib" => o.burst_pbuf_kib = val().parse().expect("--burst-pbuf-kib"),
            "--rx-core" => o.rx_core = val().parse().expect("--rx-core"),
            "--tx-core" => o.tx_core = val().parse().expect("--tx-core"),
            "--serve" => serve_variant = Variant::parse(&val()),
            "--part" => serve_part = Part::parse(&val()),
            // `cargo bench` passes --bench; ignore it and anything libtest-like.
            _ => {}
        }
    }
    if let (Some(v), Some(p)) = (serve_variant, serve_part) {
        o.serve = Some((v, p));
    }
    o
}

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("could not pin to core {core}");
    }
}

/// VmRSS of this process in KiB.
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// user + system CPU seconds of the whole process (all threads).
fn process_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Counts the syscalls the calling thread makes (perf tracepoint `raw_syscalls:sys_enter`,
/// no inherit: both runtimes do all their I/O on the thread that runs them).
struct SyscallCounter(RawFd);

impl SyscallCounter {
    fn open() -> Option<SyscallCounter> {
        let id: u64 =
            std::fs::read_to_string("/sys/kernel/tracing/events/raw_syscalls/sys_enter/id")
                .ok()?
                .trim()
                .parse()
                .ok()?;
        // struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): type, size, config, ...,
        // flags at byte 40 (bit 0 = disabled).
        let mut attr = [0u64; 8];
        attr[0] = 2 /* PERF_TYPE_TRACEPOINT */ | (64u64 << 32);
        attr[1] = id;
        attr[5] = 1;
        // SAFETY: attr is a valid perf_event_attr of the size it states.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                0,
                -1,
                -1,
                8, /* PERF_FLAG_FD_CLOEXEC */
            )
        };
        if fd < 0 {
            eprintln!("perf_event_open: {}", io::Error::last_os_error());
            return None;
        }
        Some(SyscallCounter(fd as RawFd))
    }

    fn ioctl(&self, req: u64) {
        // SAFETY: PERF_EVENT_IOC_* on our own perf fd, no argument.
        unsafe { libc::ioctl(self.0, req as _, 0) };
    }

    fn start(&self) {
        self.ioctl(0x2403); // PERF_EVENT_IOC_RESET
        self.ioctl(0x2400); // PERF_EVENT_IOC_ENABLE
    }

    fn stop(&self) -> u64 {
        self.ioctl(0x2401); // PERF_EVENT_IOC_DISABLE
        let mut v = 0u64;
        // SAFETY: reading a u64 count from the perf fd into v.
        let n = unsafe { libc::read(self.0, (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            v
        } else {
            0
        }
    }
}

/// The burst pattern: byte `i` of every connection's stream.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

fn fill_pattern(buf: &mut [u8], off: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(off + k as u64);
    }
}

/// A listener of the reuseport kind the engine uses, with a backlog for 10k connects.
fn listener() -> io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// What every server child reports, as `key=value` on its last line.
#[derive(Default)]
struct Report(BTreeMap<&'static str, f64>);

impl Report {
    fn set(&mut self, k: &'static str, v: f64) {
        self.0.insert(k, v);
    }
    fn print(&self, tag: &str) {
        let mut line = tag.to_string();
        for (k, v) in &self.0 {
            line.push_str(&format!(" {k}={v}"));
        }
        println!("{line}");
    }
}

/// Per-server-process counters (one thread: plain cells).
#[derive(Default)]
struct St {
    accepted: Cell<usize>,
    parked: Cell<usize>,
    closed: Cell<usize>,
    bytes: Cell<u64>,
    enobufs: Cell<u64>,
    enobuf_conns: Cell<u64>,
    max_enobufs: Cell<u64>,
    bad_bytes: Cell<u64>,
    short_conns: Cell<u64>,
    reads: Cell<u64>,
    readables: Cell<u64>,
    errors: Cell<u64>,
}

impl St {
    /// One connection's receive loop has ended.
    fn conn_done(&self, got: u64, enobufs: u64, bad: u64, expect: u64) {
        self.closed.set(self.closed.get() + 1);
        self.bytes.set(self.bytes.get() + got);
        self.enobufs.set(self.enobufs.get() + enobufs);
        if enobufs > 0 {
            self.enobuf_conns.set(self.enobuf_conns.get() + 1);
        }
        self.max_enobufs.set(self.max_enobufs.get().max(enobufs));
        self.bad_bytes.set(self.bad_bytes.get() + bad);
        if expect > 0 && got != expect {
            self.short_conns.set(self.short_conns.get() + 1);
        }
    }

    /// Bytes of one connection seen so far; counts it parked once its first message is in.
    fn note(&self, before: u64, n: usize) {
        if before < IDLE_MSG as u64 && before + n as u64 >= IDLE_MSG as u64 {
            self.parked.set(self.parked.get() + 1);
        }
    }
}

/// Check received bytes against the pattern (burst only); returns mismatches.
fn check(buf: &[u8], off: u64) -> u64 {
    buf.iter()
        .enumerate()
        .filter(|(k, b)| **b != pattern(off + *k as u64))
        .count() as u64
}

// ---------------------------------------------------------------------------------------
// Server (child process)

struct ServeCfg {
    variant: Variant,
    part: Part,
    conns: usize,
    pbufs: u16,
    pbuf_len: usize,
    expect: u64,
}

fn serve(o: &Opts, variant: Variant, part: Part) -> io::Result<()> {
    pin(o.rx_core);
    let (conns, pbufs, pbuf_len, expect) = match part {
        Part::Idle => (o.conns, o.pbufs, o.pbuf_kib * 1024, 0),
        Part::Bulk => (1, o.pbufs, o.pbuf_kib * 1024, o.gib << 30),
        Part::Burst => (
            o.burst_conns,
            o.burst_pbufs,
            o.burst_pbuf_kib * 1024,
            (o.burst_kib * 1024) as u64,
        ),
    };
    let cfg = ServeCfg {
        variant,
        part,
        conns,
        pbufs,
        pbuf_len,
        expect,
    };
    let l = listener()?;
    let sc = SyscallCounter::open();
    if variant.is_compio() {
        serve_compio(cfg, l, sc)
    } else {
        serve_tokio_uring(cfg, l, sc)
    }
}

/// Printed once the runtime is up (and compio's pool built), before any connect.
fn ready(port: u16) {
    println!("READY {port} {}", rss_kib());
    let _ = io::stdout().flush();
}

/// Printed when every connection has parked in its next receive (idle) or is armed (burst).
fn parked(st: &St) {
    println!("PARKED {} {}", rss_kib(), st.parked.get());
    let _ = io::stdout().flush();
}

/// The final report of a server.
fn report(cfg: &ServeCfg, st: &St, rss0: u64, rss_parked: u64, cpu: f64, sys: u64, wall: f64) {
    let mut r = Report::default();
    r.set("accepted", st.accepted.get() as f64);
    r.set("closed", st.closed.get() as f64);
    r.set("bytes", st.bytes.get() as f64);
    r.set("rss0_kib", rss0 as f64);
    r.set("rss_parked_kib", rss_parked as f64);
    r.set("cpu_s", cpu);
    r.set("syscalls", sys as f64);
    r.set("wall_s", wall);
    r.set("enobufs", st.enobufs.get() as f64);
    r.set("enobuf_conns", st.enobuf_conns.get() as f64);
    r.set("max_enobufs_per_conn", st.max_enobufs.get() as f64);
    r.set("bad_bytes", st.bad_bytes.get() as f64);
    r.set("short_conns", st.short_conns.get() as f64);
    r.set("reads", st.reads.get() as f64);
    r.set("readables", st.readables.get() as f64);
    r.set("errors", st.errors.get() as f64);
    r.set("conns", cfg.conns as f64);
    r.print("DONE");
}

// ---- (A) tokio-uring 0.5 ----

/// src/engine/pool.rs, verbatim in behaviour.
struct Pool {
    free: std::cell::RefCell<Vec<Vec<u8>>>,
}

impl Pool {
    fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; BUF_SIZE])
    }
    fn give(&self, b: Vec<u8>) {
        let mut f = self.free.borrow_mut();
        if f.len() < POOL_KEEP && b.capacity() >= BUF_SIZE {
            f.push(b);
        }
    }
}

/// src/engine/io.rs `Stream::readable`: a one-shot AsyncFd registration on the reactor
/// under tokio-uring's ring, for this wait only.
async fn readable(fd: RawFd) -> io::Result<()> {
    struct Fd(RawFd);
    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0
        }
    }
    // SAFETY: `fd` belongs to the connection's stream, which outlives this call and closes
    // its descriptor only when dropped (as in src/engine/io.rs).
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)?;
    let _ready = afd.readable().await?;
    Ok(())
}

async fn conn_tokio_uring(s: tokio_uring::net::TcpStream, v: Variant, st: Rc<St>, pool: Rc<Pool>) {
    let fd = s.as_raw_fd();
    let mut got = 0u64;
    let mut buf = Vec::new();
    if v == Variant::Ah {
        // A buffer that has carried traffic is resident; a fresh calloc'd one is not.
        buf = vec![0xA5u8; BUF_SIZE];
    }
    let mut quiet = true;
    loop {
        if v == Variant::A && quiet {
            // forward.rs client_to_upstream / store.rs wait_between_requests.
            pool.give(std::mem::take(&mut buf));
            st.readables.set(st.readables.get() + 1);
            if readable(fd).await.is_err() {
                st.errors.set(st.errors.get() + 1);
                break;
            }
            buf = pool.take();
        }
        let (res, b) = s.read(buf).await;
        buf = b;
        st.reads.set(st.reads.get() + 1);
        match res {
            Ok(0) => break,
            Ok(n) => {
                st.note(got, n);
                got += n as u64;
                quiet = n < TRICKLE;
            }
            Err(_) => {
                st.errors.set(st.errors.get() + 1);
                break;
            }
        }
    }
    pool.give(buf);
    st.conn_done(got, 0, 0, 0);
}

fn serve_tokio_uring(
    cfg: ServeCfg,
    l: std::net::TcpListener,
    sc: Option<SyscallCounter>,
) -> io::Result<()> {
    let port = l.local_addr()?.port();
    tokio_uring::builder().entries(1024).start(async move {
        let listener = tokio_uring::net::TcpListener::from_std(l);
        let st = Rc::new(St::default());
        let pool = Rc::new(Pool {
            free: Default::default(),
        });
        let rss0 = rss_kib();
        ready(port);
        let mut rss_parked = 0;
        let (mut cpu, mut sys, mut wall) = (0.0, 0, 0.0);
        match cfg.part {
            Part::Bulk => {
                let (s, _) = listener.accept().await?;
                st.accepted.set(1);
                let (c0, t0) = (process_cpu(), Instant::now());
                if let Some(c) = &sc {
                    c.start();
                }
                conn_tokio_uring(s, cfg.variant, st.clone(), pool.clone()).await;
                sys = sc.as_ref().map_or(0, |c| c.stop());
                cpu = process_cpu() - c0;
                wall = t0.elapsed().as_secs_f64();
            }
            Part::Idle | Part::Burst => {
                for _ in 0..cfg.conns {
                    let (s, _) = listener.accept().await?;
                    st.accepted.set(st.accepted.get() + 1);
                    tokio_uring::spawn(conn_tokio_uring(s, cfg.variant, st.clone(), pool.clone()));
                }
                while st.parked.get() + st.closed.get() < cfg.conns {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                rss_parked = rss_kib();
                parked(&st);
                while st.closed.get() < cfg.conns {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        report(&cfg, &st, rss0, rss_parked, cpu, sys, wall);
        io::Result::Ok(())
    })
}

// ---- (B) compio 0.19.2 ----

/// Is this the error compio makes of a CQE's -ENOBUFS? compio-driver 0.12.5
/// (src/sys/driver/iour/mod.rs `create_result`) turns it into `ErrorKind::ResourceBusy`
/// with a message and no raw errno; nothing else on a recv maps there (EBUSY does not
/// come from recv).
fn is_enobufs(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ResourceBusy
}

/// Connections waiting to re-arm after ENOBUFS, woken one per buffer given back to the
/// ring (the shell knows every give-back: it is the drop of a `BufferRef`).
#[derive(Default)]
struct Gate {
    waiters: std::cell::RefCell<std::collections::VecDeque<Rc<Slot>>>,
}

#[derive(Default)]
struct Slot {
    ready: Cell<bool>,
    waker: std::cell::RefCell<Option<std::task::Waker>>,
}

impl Gate {
    /// A buffer went back to the ring: let the longest waiter re-arm.
    fn recycled(&self) {
        if let Some(s) = self.waiters.borrow_mut().pop_front() {
            s.ready.set(true);
            if let Some(w) = s.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Wait for a recycled buffer (or 1 ms: a buffer may have gone back before we queued).
    async fn wait(&self) {
        let slot = Rc::new(Slot::default());
        self.waiters.borrow_mut().push_back(slot.clone());
        let ready = std::future::poll_fn(|cx| {
            if slot.ready.get() {
                std::task::Poll::Ready(())
            } else {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        });
        let timer = compio::time::sleep(Duration::from_millis(1));
        futures_util::future::select(std::pin::pin!(ready), std::pin::pin!(timer)).await;
        if !slot.ready.get() {
            self.waiters.borrow_mut().retain(|w| !Rc::ptr_eq(w, &slot));
        }
    }
}

async fn conn_compio(s: compio::net::TcpStream, cfg: Rc<ServeCfg>, st: Rc<St>, gate: Rc<Gate>) {
    use compio::io::{AsyncReadManaged, AsyncReadMulti};
    use futures_util::StreamExt;
    let check_bytes = cfg.part == Part::Burst;
    let (mut got, mut enobufs, mut bad) = (0u64, 0u64, 0u64);
    let on_bytes = |buf: &[u8], got: &mut u64, bad: &mut u64| {
        st.reads.set(st.reads.get() + 1);
        st.note(*got, buf.len());
        if check_bytes {
            *bad += check(buf, *got);
        }
        *got += buf.len() as u64;
    };
    if cfg.variant == Variant::Bs {
        let mut r = &s;
        loop {
            match r.read_managed(0).await {
                Ok(Some(buf)) if !buf.is_empty() => on_bytes(&buf, &mut got, &mut bad),
                Ok(_) => break,
                Err(e) if is_enobufs(&e) => enobufs += 1,
                Err(_) => {
                    st.errors.set(st.errors.get() + 1);
                    break;
                }
            }
        }
    } else {
        let mut r = &s;
        let stream = r.read_multi(0);
        let mut stream = std::pin::pin!(stream);
        loop {
            match stream.next().await {
                Some(Ok(buf)) => {
                    on_bytes(&buf, &mut got, &mut bad);
                    drop(buf);
                    gate.recycled();
                }
                None => break,
                // The multishot ended on an empty ring; the stream submits a new one on
                // its next poll (compio-runtime src/future/stream.rs SubmitMultiStream).
                Some(Err(e)) if is_enobufs(&e) => {
                    enobufs += 1;
                    if cfg.variant == Variant::Bw {
                        gate.wait().await;
                    }
                }
                Some(Err(_)) => {
                    st.errors.set(st.errors.get() + 1);
                    break;
                }
            }
        }
    }
    st.conn_done(got, enobufs, bad, cfg.expect);
}

/// A custom op (a NOP) through compio's public `OpCode` trait: what the shell would use for
/// the ops compio 0.19.2 lacks (READ_FIXED/WRITE_FIXED, openat2, incremental rings).
struct Nop;

// SAFETY: the entry refers to no memory.
unsafe impl compio::driver::OpCode for Nop {
    type Control = ();
    fn create_entry(&mut self, _: &mut ()) -> compio::driver::OpEntry {
        compio::driver::OpEntry::Submission(io_uring_07::opcode::Nop::new().build())
    }
}

fn serve_compio(
    cfg: ServeCfg,
    l: std::net::TcpListener,
    sc: Option<SyscallCounter>,
) -> io::Result<()> {
    use futures_util::StreamExt;
    let port = l.local_addr()?.port();
    let mut pb = compio::driver::ProactorBuilder::new();
    pb.capacity(1024)
        .buffer_pool_size(NonZeroU16::new(cfg.pbufs).expect("--pbufs > 0"))
        .buffer_pool_buffer_len(cfg.pbuf_len);
    if cfg.variant != Variant::Bn {
        pb.single_issuer(true).defer_taskrun(true);
    }
    let rt = compio::runtime::RuntimeBuilder::new()
        .with_proactor(pb)
        .build()?;
    let cfg = Rc::new(cfg);
    rt.block_on(async move {
        // The pool is built lazily on first use: build it now, so the baseline has it.
        compio::runtime::Runtime::with_current(|rt| rt.buffer_pool())?;
        let compio::BufResult(nop, _) = compio::runtime::submit(Nop).await;
        nop?;
        let listener = compio::net::TcpListener::from_std(l)?;
        let st = Rc::new(St::default());
        let gate = Rc::new(Gate::default());
        let rss0 = rss_kib();
        ready(port);
        let mut rss_parked = 0;
        let (mut cpu, mut sys) = (0.0, 0);
        let wall;
        let mut incoming = listener.incoming();
        match cfg.part {
            Part::Bulk => {
                let s = incoming.next().await.expect("incoming never ends")?;
                st.accepted.set(1);
                let (c0, t0) = (process_cpu(), Instant::now());
                if let Some(c) = &sc {
                    c.start();
                }
                conn_compio(s, cfg.clone(), st.clone(), gate.clone()).await;
                sys = sc.as_ref().map_or(0, |c| c.stop());
                cpu = process_cpu() - c0;
                wall = t0.elapsed().as_secs_f64();
            }
            Part::Idle | Part::Burst => {
                let mut t0 = None;
                for _ in 0..cfg.conns {
                    let s = incoming.next().await.expect("incoming never ends")?;
                    st.accepted.set(st.accepted.get() + 1);
                    compio::runtime::spawn(conn_compio(s, cfg.clone(), st.clone(), gate.clone()))
                        .detach();
                }
                if cfg.part == Part::Burst {
                    // Every task has run to its first receive (armed), none has bytes yet.
                    compio::time::sleep(Duration::from_millis(200)).await;
                    st.parked.set(cfg.conns);
                    t0 = Some(Instant::now());
                }
                while st.parked.get() + st.closed.get() < cfg.conns {
                    compio::time::sleep(Duration::from_millis(20)).await;
                }
                if cfg.part == Part::Idle {
                    compio::time::sleep(Duration::from_millis(300)).await;
                }
                rss_parked = rss_kib();
                parked(&st);
                while st.closed.get() < cfg.conns {
                    compio::time::sleep(Duration::from_millis(5)).await;
                }
                wall = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
            }
        }
        drop(incoming);
        report(&cfg, &st, rss0, rss_parked, cpu, sys, wall);
        io::Result::Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Orchestrator (this process: clients, senders, tables)

struct Server {
    child: Child,
    out: BufReader<ChildStdout>,
    port: u16,
}

impl Server {
    fn spawn(o: &Opts, v: Variant, p: Part) -> io::Result<Server> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["--serve", v.key(), "--part", p.key()])
            .args(["--conns", &o.conns.to_string(), "--gib", &o.gib.to_string()])
            .args([
                "--pbufs",
                &o.pbufs.to_string(),
                "--pbuf-kib",
                &o.pbuf_kib.to_string(),
            ])
            .args(["--burst-conns", &o.burst_conns.to_string()])
            .args(["--burst-kib", &o.burst_kib.to_string()])
            .args(["--burst-pbufs", &o.burst_pbufs.to_string()])
            .args(["--burst-pbuf-kib", &o.burst_pbuf_kib.to_string()])
            .args(["--rx-core", &o.rx_core.to_string()])
            .stdout(Stdio::piped());
        let mut child = cmd.spawn()?;
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let line = read_line(&mut out)?;
        let port = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| io::Error::other(format!("server said {line:?}")))?;
        Ok(Server { child, out, port })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Wait for the final `DONE k=v ...` line and the child's exit.
    fn finish(mut self) -> io::Result<BTreeMap<String, f64>> {
        loop {
            let line = read_line(&mut self.out)?;
            if let Some(rest) = line.strip_prefix("DONE") {
                let _ = self.child.wait();
                return Ok(rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .collect());
            }
        }
    }
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::other("server exited"));
    }
    Ok(line.trim().to_string())
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut tries = 0;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("connect: {e}, retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

type Row = BTreeMap<String, f64>;

fn run_idle(o: &Opts, v: Variant) -> io::Result<Row> {
    let mut srv = Server::spawn(o, v, Part::Idle)?;
    let msg = [b'x'; IDLE_MSG];
    let mut socks = Vec::with_capacity(o.conns);
    for _ in 0..o.conns {
        let mut s = connect(srv.addr())?;
        s.write_all(&msg)?;
        socks.push(s);
    }
    let line = read_line(&mut srv.out)?;
    if !line.starts_with("PARKED") {
        return Err(io::Error::other(format!("server said {line:?}")));
    }
    // RST on close: no TIME_WAIT pile-up across runs.
    for s in &socks {
        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    }
    drop(socks);
    let mut r = srv.finish()?;
    let per = (r["rss_parked_kib"] - r["rss0_kib"]) / o.conns as f64;
    r.insert("kib_per_conn".into(), per);
    Ok(r)
}

fn run_bulk(o: &Opts, v: Variant) -> io::Result<Row> {
    let srv = Server::spawn(o, v, Part::Bulk)?;
    let addr = srv.addr();
    let total = o.gib << 30;
    let tx = std::thread::spawn(move || -> io::Result<f64> {
        let mut s = connect(addr)?;
        let buf = vec![0x5Au8; CHUNK];
        let t0 = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(CHUNK as u64) as usize;
            s.write_all(&buf[..n])?;
            sent += n as u64;
        }
        s.shutdown(Shutdown::Write)?;
        // Wait for the server to close.
        let _ = s.read(&mut [0u8; 1]);
        Ok(t0.elapsed().as_secs_f64())
    });
    let _ = tx
        .join()
        .map_err(|_| io::Error::other("sender panicked"))??;
    let mut r = srv.finish()?;
    let gib = r["bytes"] / GIB;
    r.insert("cpu_per_gib".into(), r["cpu_s"] / gib);
    r.insert("syscalls_per_gib".into(), r["syscalls"] / gib);
    r.insert("gbps".into(), r["bytes"] / r["wall_s"] / 1e9);
    Ok(r)
}

fn run_burst(o: &Opts, v: Variant) -> io::Result<Row> {
    let mut srv = Server::spawn(o, v, Part::Burst)?;
    let mut socks = Vec::with_capacity(o.burst_conns);
    for _ in 0..o.burst_conns {
        socks.push(connect(srv.addr())?);
    }
    let line = read_line(&mut srv.out)?;
    if !line.starts_with("PARKED") {
        return Err(io::Error::other(format!("server said {line:?}")));
    }
    // All at once: every connection gets its whole payload back to back, in slices, so
    // bytes land on many sockets before the server's thread runs.
    let len = o.burst_kib * 1024;
    let mut payload = vec![0u8; len];
    fill_pattern(&mut payload, 0);
    let slice = 16 * 1024;
    let mut off = 0;
    while off < len {
        let end = (off + slice).min(len);
        for s in &mut socks {
            s.write_all(&payload[off..end])?;
        }
        off = end;
    }
    for s in &socks {
        s.shutdown(Shutdown::Write)?;
    }
    let r = srv.finish()?;
    drop(socks);
    Ok(r)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn machine() {
    let sh = |c: &str| {
        Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    println!("# uptime: {}", sh("uptime"));
    println!("# kernel: {}", sh("uname -r"));
    println!("# nproc: {}", sh("nproc"));
    println!(
        "# RLIMIT_MEMLOCK: {} KiB, RLIMIT_NOFILE: {}",
        sh("ulimit -l"),
        sh("ulimit -n")
    );
}

fn main() {
    let o = parse_args();
    if let Some((v, p)) = o.serve {
        if let Err(e) = serve(&o, v, p) {
            eprintln!("server {}: {e}", v.key());
            std::process::exit(1);
        }
        return;
    }
    machine();
    // The bulk sender runs on a thread of this process; pin the whole orchestrator there.
    pin(o.tx_core);
    println!("# opts: {o:?}");
    for v in &o.variants {
        println!("# {:3} {}", v.key(), v.what());
    }
    let mut rows: BTreeMap<(usize, Variant), Vec<Row>> = BTreeMap::new();
    let part_idx = |p: Part| o.parts.iter().position(|q| *q == p).unwrap_or(0);
    for run in 1..=o.runs {
        for &p in &o.parts {
            for &v in &o.variants {
                if p == Part::Burst && !v.is_compio() {
                    continue; // no provided ring on tokio-uring: nothing to run dry
                }
                let res = match p {
                    Part::Idle => run_idle(&o, v),
                    Part::Bulk => run_bulk(&o, v),
                    Part::Burst => run_burst(&o, v),
                };
                match res {
                    Ok(r) => {
                        let show: Vec<String> =
                            r.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
                        println!("run {run} {} {}: {}", p.key(), v.key(), show.join(" "));
                        rows.entry((part_idx(p), v)).or_default().push(r);
                    }
                    Err(e) => println!("run {run} {} {}: FAILED {e}", p.key(), v.key()),
                }
                let _ = io::stdout().flush();
            }
        }
    }
    println!("# uptime after: {}", {
        let out = Command::new("uptime").output().ok();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    });
    let med = |p: Part, v: Variant, k: &str| -> f64 {
        rows.get(&(part_idx(p), v))
            .map(|rs| median(rs.iter().filter_map(|r| r.get(k).copied()).collect()))
            .unwrap_or(f64::NAN)
    };
    let base = Variant::A;
    for &p in &o.parts {
        println!();
        match p {
            Part::Idle => {
                println!(
                    "idle: {} connections, {} B each, medians of {} runs; ratio vs a",
                    o.conns, IDLE_MSG, o.runs
                );
                println!(
                    "| var | RSS before (KiB) | RSS parked (KiB) | KiB per idle conn | vs a |"
                );
                println!("|---|---|---|---|---|");
                for &v in &o.variants {
                    let k = med(p, v, "kib_per_conn");
                    println!(
                        "| {} | {:.0} | {:.0} | {:.2} | {:.2} |",
                        v.key(),
                        med(p, v, "rss0_kib"),
                        med(p, v, "rss_parked_kib"),
                        k,
                        k / med(p, base, "kib_per_conn")
                    );
                }
            }
            Part::Bulk => {
                println!(
                    "bulk: {} GiB, medians of {} runs; ratio vs a",
                    o.gib, o.runs
                );
                println!("| var | CPU-s/GiB | syscalls/GiB | recv CQEs or reads/GiB | readable() waits/GiB | GB/s | CPU vs a | syscalls vs a |");
                println!("|---|---|---|---|---|---|---|---|");
                for &v in &o.variants {
                    let c = med(p, v, "cpu_per_gib");
                    let s = med(p, v, "syscalls_per_gib");
                    println!(
                        "| {} | {:.3} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
                        v.key(),
                        c,
                        s,
                        med(p, v, "reads") / o.gib as f64,
                        med(p, v, "readables") / o.gib as f64,
                        med(p, v, "gbps"),
                        c / med(p, base, "cpu_per_gib"),
                        s / med(p, base, "syscalls_per_gib"),
                    );
                }
            }
            Part::Burst => {
                println!(
                    "burst: {} connections x {} KiB at once, pool {} x {} KiB; medians of {} runs",
                    o.burst_conns, o.burst_kib, o.burst_pbufs, o.burst_pbuf_kib, o.runs
                );
                println!("| var | ENOBUFS | conns that saw one | max per conn | bytes ok | short conns | bad bytes | errors | wall s |");
                println!("|---|---|---|---|---|---|---|---|---|");
                for &v in o.variants.iter().filter(|v| v.is_compio()) {
                    let want = (o.burst_conns * o.burst_kib * 1024) as f64;
                    println!(
                        "| {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.3} |",
                        v.key(),
                        med(p, v, "enobufs"),
                        med(p, v, "enobuf_conns"),
                        med(p, v, "max_enobufs_per_conn"),
                        med(p, v, "bytes") == want,
                        med(p, v, "short_conns"),
                        med(p, v, "bad_bytes"),
                        med(p, v, "errors"),
                        med(p, v, "wall_s"),
                    );
                }
            }
        }
    }
}
