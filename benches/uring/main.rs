//! io_uring lever prototype: what the runtime's missing levers would buy on this machine.
//!
//! A loopback TCP pair, the receiver pinned to one core and the sender to the other, moves
//! `--gib` GiB (default 4) in 256 KiB chunks. One side is the variant under test, built
//! directly on the `io-uring` crate (the same 0.6 release tokio-uring 0.5 links); the other
//! side is plain blocking std I/O. Each side meters its own thread with
//! `getrusage(RUSAGE_THREAD)` and, separately, the kernel's io_uring helper threads of this
//! process (`iou-sqp-*`, `iou-wrk-*`) from `/proc/self/task/*/stat`.
//!
//! Receiver variants (the sender is std `write`):
//!   a   single-shot IORING_OP_RECV into one 256 KiB buffer, submit_and_wait(1) per op
//!   b   (a) on a ring with IORING_SETUP_SQPOLL (the `[server] sqpoll = true` lever)
//!   c   (a) on a ring with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
//!   d   one multishot IORING_OP_RECV over a provided buffer ring, buffers recycled
//!   dc  (d) on a SINGLE_ISSUER | DEFER_TASKRUN ring
//!   e   IORING_OP_READ_FIXED on the socket into a registered 256 KiB buffer
//!   f   blocking std `read` (reference)
//!   t   tokio-uring 0.5's actual pattern: IORING_OP_READ, `submit()` on park, then
//!       epoll_wait on the ring fd until the CQE is there (two syscalls per op)
//! Sender variants (the receiver is std `read`):
//!   g   IORING_OP_SEND from one 256 KiB buffer, submit_and_wait(1) per op
//!   h   IORING_OP_SEND_ZC, `--zc-bufs` rotating buffers, a buffer reused only after its
//!       notification CQE (IORING_CQE_F_NOTIF); IORING_SEND_ZC_REPORT_USAGE counts copies
//!   i   blocking std `write` (reference)
//! Then a kTLS probe: setsockopt(SOL_TCP, TCP_ULP, "tls") on a connected socket.
//!
//! Usage: `cargo bench --bench uring -- [--gib N] [--runs N] [--variants a,b,...]
//!         [--sqpoll-cpu N] [--pbufs N] [--pbuf-kib N] [--zc-bufs N] [--rx-core N] [--tx-core N]`
//! See benches/uring/README.md for the results on the lab machine.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const CHUNK: usize = 256 * 1024;
const GIB: f64 = (1u64 << 30) as f64;
/// Provided-buffer group id of the multishot variants.
const BGID: u16 = 7;
/// `IORING_SEND_ZC_REPORT_USAGE` (io_uring.h): the notification CQE says whether the kernel
/// fell back to copying.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in a notification's `res` when data was copied.
const NOTIF_USAGE_ZC_COPIED: i32 = i32::MIN;
/// `IORING_CQE_F_NOTIF`: this CQE is the zero-copy notification, not the send result.
const CQE_F_NOTIF: u32 = 1 << 3;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Variant {
    A,
    B,
    C,
    D,
    Dc,
    E,
    F,
    T,
    G,
    H,
    I,
}

impl Variant {
    const ALL: [Variant; 11] = [
        Variant::A,
        Variant::B,
        Variant::C,
        Variant::D,
        Variant::Dc,
        Variant::E,
        Variant::F,
        Variant::T,
        Variant::G,
        Variant::H,
        Variant::I,
    ];

    fn key(self) -> &'static str {
        match self {
            Variant::A => "a",
            Variant::B => "b",
            Variant::C => "c",
            Variant::D => "d",
            Variant::Dc => "dc",
            Variant::E => "e",
            Variant::F => "f",
            Variant::T => "t",
            Variant::G => "g",
            Variant::H => "h",
            Variant::I => "i",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Variant::A => "recv: RECV single-shot, submit_and_wait(1)",
            Variant::B => "recv: (a) + SQPOLL",
            Variant::C => "recv: (a) + SINGLE_ISSUER|DEFER_TASKRUN",
            Variant::D => "recv: multishot RECV + provided buf ring",
            Variant::Dc => "recv: (d) + SINGLE_ISSUER|DEFER_TASKRUN",
            Variant::E => "recv: READ_FIXED, registered buffer",
            Variant::F => "recv: std read()",
            Variant::T => "recv: READ + submit + epoll park (tokio-uring)",
            Variant::G => "send: SEND single-shot",
            Variant::H => "send: SEND_ZC, reuse after notif",
            Variant::I => "send: std write()",
        }
    }

    fn is_sender(self) -> bool {
        matches!(self, Variant::G | Variant::H | Variant::I)
    }

    fn parse(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.key() == s)
    }
}

#[derive(Clone, Debug)]
struct Opts {
    bytes: u64,
    runs: usize,
    variants: Vec<Variant>,
    sqpoll_cpu: Option<u32>,
    pbufs: usize,
    pbuf_size: usize,
    zc_bufs: usize,
    rx_core: usize,
    tx_core: usize,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        bytes: 4 << 30,
        runs: 3,
        variants: Variant::ALL.to_vec(),
        sqpoll_cpu: None,
        pbufs: 64,
        pbuf_size: 64 * 1024,
        zc_bufs: 4,
        rx_core: 0,
        tx_core: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // `cargo bench` appends `--bench` to every harness=false target.
        if a == "--bench" {
            continue;
        }
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<f64>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--gib" => o.bytes = (num(val()?)? * GIB) as u64,
            "--runs" => o.runs = num(val()?)? as usize,
            "--variants" => {
                o.variants = val()?
                    .split(',')
                    .map(|k| Variant::parse(k.trim()).ok_or(format!("unknown variant {k}")))
                    .collect::<Result<_, _>>()?
            }
            "--sqpoll-cpu" => o.sqpoll_cpu = Some(num(val()?)? as u32),
            "--pbufs" => o.pbufs = num(val()?)? as usize,
            "--pbuf-kib" => o.pbuf_size = num(val()?)? as usize * 1024,
            "--zc-bufs" => o.zc_bufs = num(val()?)? as usize,
            "--rx-core" => o.rx_core = num(val()?)? as usize,
            "--tx-core" => o.tx_core = num(val()?)? as usize,
            "-h" | "--help" => {
                return Err(
                    "usage: uring [--gib N] [--runs N] [--variants a,b,c,d,dc,e,f,t,g,h,i] \
                            [--sqpoll-cpu N] [--pbufs N] [--pbuf-kib N] [--zc-bufs N] \
                            [--rx-core N] [--tx-core N]"
                        .into(),
                )
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if !o.pbufs.is_power_of_two() || o.pbufs > MAX_PBUFS {
        return Err(format!("--pbufs must be a power of two <= {MAX_PBUFS}"));
    }
    if o.zc_bufs == 0 || o.runs == 0 || o.bytes == 0 {
        return Err("--zc-bufs, --runs and --gib must be positive".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// Metering

/// The calling thread's user+system CPU seconds.
fn thread_cpu() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `struct rusage` into the pointer we pass, which points at a
    // zero-initialised (hence valid) `rusage` on our stack; RUSAGE_THREAD is a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
    // SAFETY: zeroed() already made every field valid, and getrusage succeeded.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a configuration value; _SC_CLK_TCK is a valid name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU ticks of this process's io_uring kernel helper threads (`iou-sqp-*`, `iou-wrk-*`).
fn helper_ticks() -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("iou-") {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the ")" that closes comm start at field 3 (state); utime and stime
        // are fields 14 and 15.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 12 {
                let t = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
                out.insert(tid, t);
            }
        }
    }
    out
}

/// What one side of a transfer measured about itself.
#[derive(Clone, Debug)]
struct Side {
    cpu: f64,
    helper_cpu: f64,
    syscalls: u64,
    bytes: u64,
    start: Instant,
    end: Instant,
    note: String,
}

struct Meter {
    start: Instant,
    cpu: f64,
    helpers: HashMap<u32, u64>,
}

impl Meter {
    fn start() -> Meter {
        Meter {
            helpers: helper_ticks(),
            cpu: thread_cpu(),
            start: Instant::now(),
        }
    }

    /// Must run before the ring is dropped, while its helper threads still exist.
    fn stop(self, bytes: u64, syscalls: u64, note: String) -> Side {
        let end = Instant::now();
        let cpu = thread_cpu() - self.cpu;
        let now = helper_ticks();
        let ticks: u64 = now
            .iter()
            .map(|(tid, t)| t - self.helpers.get(tid).copied().unwrap_or(0).min(*t))
            .sum();
        Side {
            cpu,
            helper_cpu: ticks as f64 / clk_tck(),
            syscalls,
            bytes,
            start: self.start,
            end,
            note,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rings

#[derive(Clone, Copy, PartialEq, Eq)]
enum RingKind {
    Plain,
    Sqpoll,
    Defer,
}

fn build_ring(kind: RingKind, o: &Opts) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    match kind {
        RingKind::Plain => {}
        RingKind::Sqpoll => {
            // Same idle as the engine's worker (src/engine/worker.rs: setup_sqpoll(50)).
            b.setup_sqpoll(50);
            if let Some(cpu) = o.sqpoll_cpu {
                b.setup_sqpoll_cpu(cpu);
            }
        }
        RingKind::Defer => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
    }
    b.build(64)
}

fn push(ring: &mut IoUring, sqe: &squeue::Entry) -> io::Result<()> {
    // SAFETY (of the push itself): the entry is a plain value copied into the SQ; every
    // caller documents, at the call site, why the memory its SQE points to stays valid and
    // untouched until the matching CQE is reaped.
    unsafe { ring.submission().push(sqe) }.map_err(|_| io::Error::other("submission queue full"))
}

/// Reap one CQE, entering the kernel with submit_and_wait(1) while none is there.
fn wait_one(ring: &mut IoUring, enters: &mut u64) -> io::Result<cqueue::Entry> {
    loop {
        if let Some(c) = ring.completion().next() {
            return Ok(c);
        }
        *enters += 1;
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

fn os_err(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

// ---------------------------------------------------------------------------------------
// Receivers

#[derive(Clone, Copy, PartialEq, Eq)]
enum SingleOp {
    Recv,
    ReadFixed,
    /// IORING_OP_READ, waited on the tokio-uring way (submit, then epoll on the ring fd).
    ReadEpoll,
}

fn recv_single(
    s: TcpStream,
    o: &Opts,
    bar: &Barrier,
    kind: RingKind,
    op: SingleOp,
) -> io::Result<Side> {
    // Declared before the ring so it is dropped after it: the kernel may hold a pointer to it
    // (and, for READ_FIXED, a registration) for as long as the ring lives.
    let mut buf = vec![0u8; CHUNK];
    let mut ring = build_ring(kind, o)?;
    let fd = types::Fd(s.as_raw_fd());
    let ptr = buf.as_mut_ptr();
    if op == SingleOp::ReadFixed {
        let iov = libc::iovec {
            iov_base: ptr.cast(),
            iov_len: CHUNK,
        };
        // SAFETY: the iovec describes `buf`, a live heap allocation of CHUNK bytes that is
        // never reallocated and is dropped only after `ring` (declaration order above), so
        // the registration never outlives the memory.
        unsafe { ring.submitter().register_buffers(&[iov])? };
    }
    let epfd = if op == SingleOp::ReadEpoll {
        Some(Epoll::new(ring.as_raw_fd())?)
    } else {
        None
    };
    bar.wait();
    let m = Meter::start();
    let (mut got, mut enters, mut ops) = (0u64, 0u64, 0u64);
    while got < o.bytes {
        ops += 1;
        let sqe = match op {
            SingleOp::Recv => opcode::Recv::new(fd, ptr, CHUNK as u32).build(),
            SingleOp::ReadFixed => opcode::ReadFixed::new(fd, ptr, CHUNK as u32, 0)
                .offset(0)
                .build(),
            SingleOp::ReadEpoll => opcode::Read::new(fd, ptr, CHUNK as u32).build(),
        };
        // The SQE points at `buf` (CHUNK bytes, outlives the ring); we neither read nor
        // reuse `buf` until this op's CQE has been reaped just below.
        push(&mut ring, &sqe)?;
        let cqe = if let Some(ep) = &epfd {
            // tokio-uring: on_thread_park flushes the SQ with submit(), then tokio's reactor
            // sleeps in epoll_wait until the ring fd is readable, then dispatch_completions.
            enters += 1;
            ring.submit()?;
            loop {
                if let Some(c) = ring.completion().next() {
                    break c;
                }
                enters += 1;
                ep.wait()?;
            }
        } else {
            wait_one(&mut ring, &mut enters)?
        };
        match cqe.result() {
            r if r < 0 => return Err(os_err(r)),
            0 => break,
            r => got += r as u64,
        }
    }
    let note = format!("ops/GiB={:.0}", ops as f64 / (got as f64 / GIB));
    Ok(m.stop(got, enters, note))
}

const MAX_PBUFS: usize = 256;

/// Page-aligned memory for a provided-buffer ring of up to 256 16-byte entries.
#[repr(C, align(4096))]
struct RingMem([u8; 4096]);

fn recv_multishot(s: TcpStream, o: &Opts, bar: &Barrier, kind: RingKind) -> io::Result<Side> {
    let (n, bsz) = (o.pbufs, o.pbuf_size);
    let mask = n - 1;
    // Both declared before the ring: the kernel reads the ring memory and writes into the
    // pool until the ring (and with it the buffer-group registration) is gone.
    let mut pool = vec![0u8; n * bsz];
    let mut ringmem = Box::new(RingMem([0; 4096]));
    let mut ring = build_ring(kind, o)?;
    let pool_base = pool.as_mut_ptr() as u64;
    let base: *mut types::BufRingEntry = (&mut *ringmem as *mut RingMem).cast();
    let set = |slot: usize, bid: usize| {
        // SAFETY: slot < n <= 256, so the entry lies inside the 4096-byte page-aligned
        // `ringmem`; BufRingEntry is a repr(transparent) io_uring_buf (16 bytes, align 8).
        // The kernel only reads entries between its head and our published tail; `slot` is
        // at our tail, which callers guarantee is not such an entry (see below).
        let e = unsafe { &mut *base.add(slot) };
        e.set_addr(pool_base + (bid * bsz) as u64);
        e.set_len(bsz as u32);
        e.set_bid(bid as u16);
    };
    for i in 0..n {
        set(i, i); // Not yet registered: the kernel cannot be reading any entry.
    }
    // SAFETY: `base` is the address of entry 0 of an initialised ring (loop above).
    let tail_ptr = unsafe { types::BufRingEntry::tail(base) } as *const AtomicU16;
    // SAFETY: tail_ptr points at entry 0's 2-byte-aligned `resv` field inside `ringmem`,
    // which AtomicU16 (same size and alignment as u16) may alias; the kernel only reads it.
    let tail = unsafe { &*tail_ptr };
    let mut t = n as u16;
    tail.store(t, Ordering::Release);
    // SAFETY: `base` is page-aligned (RingMem's align(4096)) and backs `n` entries; it stays
    // valid and in place (boxed, never moved) until after `ring` is dropped, which
    // unregisters the group.
    unsafe {
        ring.submitter()
            .register_buf_ring(base as u64, n as u16, BGID)?
    };
    let fd = types::Fd(s.as_raw_fd());
    // RecvMulti carries no pointer: the kernel picks buffers from group BGID (the pool).
    let arm = opcode::RecvMulti::new(fd, BGID).build().user_data(1);
    bar.wait();
    let m = Meter::start();
    push(&mut ring, &arm)?;
    let (mut got, mut enters, mut enobufs, mut rearms, mut cqes) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut eof = false;
    while got < o.bytes && !eof {
        let mut rearm = false;
        let mut reaped = 0;
        let mut done: Vec<(i32, u32)> = Vec::with_capacity(n);
        done.extend(ring.completion().map(|c| (c.result(), c.flags())));
        for (res, flags) in done {
            reaped += 1;
            match res {
                r if r > 0 => {
                    got += r as u64;
                    let bid = cqueue::buffer_select(flags)
                        .ok_or_else(|| io::Error::other("recv CQE without a buffer id"))?;
                    // Recycle at slot t & mask. The ring holds at most n - 1 unconsumed
                    // entries here (all n buffers exist once, and `bid` is in our hands,
                    // not in the ring), so t - head < n and slot t & mask is not one the
                    // kernel may still read.
                    set(t as usize & mask, bid as usize);
                    t = t.wrapping_add(1);
                    if !cqueue::more(flags) {
                        rearm = true;
                    }
                }
                0 => eof = true,
                r if r == -libc::ENOBUFS => {
                    enobufs += 1;
                    rearm = true;
                }
                r => return Err(os_err(r)),
            }
        }
        cqes += reaped;
        // Publish the recycled entries (their stores happen-before the kernel's acquire).
        tail.store(t, Ordering::Release);
        if rearm && !eof && got < o.bytes {
            rearms += 1;
            push(&mut ring, &arm)?;
        }
        if reaped == 0 || rearm {
            enters += 1;
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let note = format!(
        "cqes/GiB={:.0} rearms={rearms} enobufs={enobufs}",
        cqes as f64 / (got as f64 / GIB)
    );
    let side = m.stop(got, enters, note);
    drop(ring);
    drop(ringmem);
    drop(pool);
    Ok(side)
}

fn recv_std(mut s: TcpStream, o: &Opts, bar: &Barrier) -> io::Result<Side> {
    let mut buf = vec![0u8; CHUNK];
    bar.wait();
    let m = Meter::start();
    let (mut got, mut calls) = (0u64, 0u64);
    while got < o.bytes {
        calls += 1;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => got += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(m.stop(got, calls, String::new()))
}

/// An epoll instance watching a ring fd for readability (= CQ not empty).
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new(ring_fd: i32) -> io::Result<Epoll> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall with a valid flag.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` is a fresh fd we own; OwnedFd closes it exactly once.
        let ep = Epoll(unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) });
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both fds are open; `ev` is a valid epoll_event the kernel copies.
        let rc =
            unsafe { libc::epoll_ctl(ep.0.as_raw_fd(), libc::EPOLL_CTL_ADD, ring_fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ep)
    }

    fn wait(&self) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: the kernel writes at most 1 event into `ev`, which has room for 1.
        let rc = unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut ev, 1, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Senders

fn send_std(mut s: TcpStream, o: &Opts, bar: &Barrier) -> io::Result<Side> {
    let buf = vec![0xA5u8; CHUNK];
    bar.wait();
    let m = Meter::start();
    let (mut sent, mut calls) = (0u64, 0u64);
    while sent < o.bytes {
        let len = CHUNK.min((o.bytes - sent) as usize);
        calls += 1;
        match s.write(&buf[..len]) {
            Ok(k) => sent += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let side = m.stop(sent, calls, String::new());
    s.shutdown(Shutdown::Write)?;
    Ok(side)
}

fn send_uring(s: TcpStream, o: &Opts, bar: &Barrier) -> io::Result<Side> {
    let buf = vec![0xA5u8; CHUNK];
    let mut ring = build_ring(RingKind::Plain, o)?;
    let fd = types::Fd(s.as_raw_fd());
    bar.wait();
    let m = Meter::start();
    let (mut sent, mut enters, mut short) = (0u64, 0u64, 0u64);
    while sent < o.bytes {
        let len = CHUNK.min((o.bytes - sent) as usize);
        let mut off = 0;
        while off < len {
            let sqe = opcode::Send::new(fd, buf[off..].as_ptr(), (len - off) as u32).build();
            // `buf` outlives the ring and is not written; the op completes (CQE reaped
            // below) before the next one is pushed.
            push(&mut ring, &sqe)?;
            let r = wait_one(&mut ring, &mut enters)?.result();
            if r < 0 {
                return Err(os_err(r));
            }
            if (r as usize) < len - off {
                short += 1;
            }
            off += r as usize;
        }
        sent += len as u64;
    }
    let side = m.stop(sent, enters, format!("short={short}"));
    s.shutdown(Shutdown::Write)?;
    Ok(side)
}

fn send_zc(s: TcpStream, o: &Opts, bar: &Barrier) -> io::Result<Side> {
    let nb = o.zc_bufs;
    let bufs: Vec<Vec<u8>> = (0..nb).map(|_| vec![0xA5u8; CHUNK]).collect();
    let mut ring = build_ring(RingKind::Plain, o)?;
    let fd = types::Fd(s.as_raw_fd());
    // Per buffer: CQEs still owed (the result, plus a notification if the result had F_MORE).
    // A buffer may be rewritten or resent only when its count is back at zero.
    let mut owed = vec![0u32; nb];
    let (mut notifs, mut copied, mut short) = (0u64, 0u64, 0u64);
    // Returns Some(res) when the CQE was a send result, None for a notification.
    let mut handle = |c: cqueue::Entry, owed: &mut [u32]| -> Option<i32> {
        let i = c.user_data() as usize;
        if c.flags() & CQE_F_NOTIF != 0 {
            owed[i] -= 1;
            notifs += 1;
            if c.result() & NOTIF_USAGE_ZC_COPIED != 0 {
                copied += 1;
            }
            None
        } else {
            if !cqueue::more(c.flags()) {
                owed[i] -= 1; // no notification will follow (error or nothing pinned)
            }
            Some(c.result())
        }
    };
    bar.wait();
    let m = Meter::start();
    let (mut sent, mut enters, mut k) = (0u64, 0u64, 0usize);
    while sent < o.bytes {
        let i = k % nb;
        k += 1;
        while owed[i] > 0 {
            let c = wait_one(&mut ring, &mut enters)?;
            handle(c, &mut owed);
        }
        let len = CHUNK.min((o.bytes - sent) as usize);
        let mut off = 0;
        while off < len {
            let sqe = opcode::SendZc::new(fd, bufs[i][off..].as_ptr(), (len - off) as u32)
                .zc_flags(SEND_ZC_REPORT_USAGE)
                .build()
                .user_data(i as u64);
            // `bufs[i]` outlives the ring, is never written, and is not reused for another
            // send until owed[i] == 0, i.e. until the kernel's notification says it has
            // released the pages.
            push(&mut ring, &sqe)?;
            owed[i] += 1;
            let r = loop {
                let c = wait_one(&mut ring, &mut enters)?;
                if let Some(r) = handle(c, &mut owed) {
                    break r;
                }
            };
            if r < 0 {
                return Err(os_err(r));
            }
            if (r as usize) < len - off {
                short += 1;
            }
            off += r as usize;
        }
        sent += len as u64;
    }
    // Every buffer must be released before the ring and the buffers go away.
    while owed.iter().any(|&x| x > 0) {
        let c = wait_one(&mut ring, &mut enters)?;
        handle(c, &mut owed);
    }
    let side = m.stop(
        sent,
        enters,
        format!("notifs={notifs} copied={copied} short={short}"),
    );
    s.shutdown(Shutdown::Write)?;
    drop(ring);
    drop(bufs);
    Ok(side)
}

// ---------------------------------------------------------------------------------------
// One run

struct Run {
    measured: Side,
    peer: Side,
    wall: f64,
}

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("warning: could not pin to core {core}");
    }
}

fn run_one(v: Variant, o: &Opts) -> io::Result<Run> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let bar = Arc::new(Barrier::new(2));
    let (o_rx, bar_rx) = (o.clone(), bar.clone());
    let rx = thread::Builder::new().name("rx".into()).spawn(move || {
        pin(o_rx.rx_core);
        let (s, _) = listener.accept()?;
        let o = &o_rx;
        match v {
            Variant::A => recv_single(s, o, &bar_rx, RingKind::Plain, SingleOp::Recv),
            Variant::B => recv_single(s, o, &bar_rx, RingKind::Sqpoll, SingleOp::Recv),
            Variant::C => recv_single(s, o, &bar_rx, RingKind::Defer, SingleOp::Recv),
            Variant::D => recv_multishot(s, o, &bar_rx, RingKind::Plain),
            Variant::Dc => recv_multishot(s, o, &bar_rx, RingKind::Defer),
            Variant::E => recv_single(s, o, &bar_rx, RingKind::Plain, SingleOp::ReadFixed),
            Variant::T => recv_single(s, o, &bar_rx, RingKind::Plain, SingleOp::ReadEpoll),
            Variant::F | Variant::G | Variant::H | Variant::I => recv_std(s, o, &bar_rx),
        }
    })?;
    let (o_tx, bar_tx) = (o.clone(), bar);
    let tx = thread::Builder::new().name("tx".into()).spawn(move || {
        pin(o_tx.tx_core);
        let s = TcpStream::connect(addr)?;
        let o = &o_tx;
        match v {
            Variant::G => send_uring(s, o, &bar_tx),
            Variant::H => send_zc(s, o, &bar_tx),
            _ => send_std(s, o, &bar_tx),
        }
    })?;
    let join = |h: thread::JoinHandle<io::Result<Side>>| {
        h.join()
            .map_err(|_| io::Error::other("thread panicked"))
            .and_then(|r| r)
    };
    let (r, t) = (join(rx)?, join(tx)?);
    if r.bytes != o.bytes {
        return Err(io::Error::other(format!(
            "receiver got {} of {} bytes",
            r.bytes, o.bytes
        )));
    }
    let wall = r.end.max(t.end) - r.start.min(t.start);
    let (measured, peer) = if v.is_sender() { (t, r) } else { (r, t) };
    Ok(Run {
        measured,
        peer,
        wall: wall.as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------
// kTLS probe

fn ktls_probe() {
    println!("\n## kTLS probe");
    let ulp = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<unreadable: {e}>"));
    println!("/proc/sys/net/ipv4/tcp_available_ulp: {ulp:?}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let moddir = format!("/lib/modules/{}", release.trim());
    println!(
        "{moddir} exists: {} (no module tree = tls.ko cannot be loaded on demand)",
        std::path::Path::new(&moddir).exists()
    );
    let probe = || -> io::Result<(i32, io::Error)> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let c = TcpStream::connect(l.local_addr()?)?;
        let (_srv, _) = l.accept()?;
        let name = b"tls";
        // SAFETY: `c` is an open, connected TCP socket; optval points at 3 readable bytes
        // and optlen says 3; the kernel only reads them.
        let rc = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_TCP,
                libc::TCP_ULP,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        Ok((rc, io::Error::last_os_error()))
    };
    match probe() {
        Ok((0, _)) => println!(
            "setsockopt(SOL_TCP, TCP_ULP, \"tls\") = 0: kTLS ULP available (data path not built here)"
        ),
        Ok((rc, e)) => println!(
            "setsockopt(SOL_TCP, TCP_ULP, \"tls\") = {rc}, errno {} ({e}): kTLS is unavailable on this kernel",
            e.raw_os_error().unwrap_or(0)
        ),
        Err(e) => println!("probe setup failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Report

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Summary {
    cpu: f64,
    helper: f64,
    total: f64,
    sys: f64,
    gbps: f64,
    peer: f64,
}

fn summarize(runs: &[Run]) -> Summary {
    let per_gib = |f: &dyn Fn(&Run) -> f64| {
        median(
            runs.iter()
                .map(|r| f(r) / (r.measured.bytes as f64 / GIB))
                .collect(),
        )
    };
    Summary {
        cpu: per_gib(&|r| r.measured.cpu),
        helper: per_gib(&|r| r.measured.helper_cpu),
        total: per_gib(&|r| r.measured.cpu + r.measured.helper_cpu),
        sys: per_gib(&|r| r.measured.syscalls as f64),
        gbps: median(
            runs.iter()
                .map(|r| r.measured.bytes as f64 / r.wall / 1e9)
                .collect(),
        ),
        peer: per_gib(&|r| r.peer.cpu + r.peer.helper_cpu),
    }
}

fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: nproc={nproc} cpu=\"{cpu}\" kernel={} loadavg={}",
        kernel.trim(),
        load.trim()
    );
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    machine();
    println!(
        "transfer {:.2} GiB per run in {} KiB chunks, rx core {}, tx core {}, {} runs, interleaved; \
         pbufs {} x {} KiB, zc bufs {}, sqpoll cpu {:?}",
        o.bytes as f64 / GIB,
        CHUNK / 1024,
        o.rx_core,
        o.tx_core,
        o.runs,
        o.pbufs,
        o.pbuf_size / 1024,
        o.zc_bufs,
        o.sqpoll_cpu
    );
    let mut results: HashMap<Variant, Vec<Run>> = HashMap::new();
    for run in 0..o.runs {
        for &v in &o.variants {
            match run_one(v, &o) {
                Ok(r) => {
                    let gib = r.measured.bytes as f64 / GIB;
                    println!(
                        "run {run} {:>2}: cpu {:.3} s/GiB helper {:.3} s/GiB syscalls {:.0}/GiB \
                         {:.2} GB/s peer {:.3} s/GiB {}",
                        v.key(),
                        r.measured.cpu / gib,
                        r.measured.helper_cpu / gib,
                        r.measured.syscalls as f64 / gib,
                        r.measured.bytes as f64 / r.wall / 1e9,
                        (r.peer.cpu + r.peer.helper_cpu) / gib,
                        r.measured.note
                    );
                    results.entry(v).or_default().push(r);
                }
                Err(e) => println!("run {run} {:>2}: FAILED: {e}", v.key()),
            }
        }
    }
    let sums: HashMap<Variant, Summary> = results
        .iter()
        .map(|(v, runs)| (*v, summarize(runs)))
        .collect();
    println!("\n## medians ({} runs each)", o.runs);
    println!(
        "| var | what | thread CPU-s/GiB | helper CPU-s/GiB | total CPU-s/GiB | syscalls/GiB | GB/s | CPU vs base | GB/s vs base | peer CPU-s/GiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &v in &o.variants {
        let Some(s) = sums.get(&v) else { continue };
        let base = sums.get(if v.is_sender() {
            &Variant::G
        } else {
            &Variant::A
        });
        let ratio = |x: f64, b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2}", x / b));
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {:.2} | {} | {} | {:.3} |",
            v.key(),
            v.what(),
            s.cpu,
            s.helper,
            s.total,
            s.sys,
            s.gbps,
            ratio(s.total, base.map(|b| b.total)),
            ratio(s.gbps, base.map(|b| b.gbps)),
            s.peer
        );
    }
    println!("(base = a for receivers, g for senders; CPU ratio on total = thread + helper)");
    machine();
    ktls_probe();
}
