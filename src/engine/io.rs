//! The io_uring shell's stream type: a TCP or unix stream on the worker's compio ring.
//! Only the engine sees compio; a change of runtime stays inside `engine/`.

use std::io;
use std::net::Shutdown;
use std::time::Instant;

use compio::buf::{BufResult, IoBuf, IoBufMut};
use compio::driver::op::{Interest, PollOnce};
use compio::driver::{OpCode, OpEntry, SharedFd, ToSharedFd};
use io_uring_07::{opcode, types};
use std::os::fd::AsRawFd;

use crate::tls::record::slots;
use compio::io::{AsyncRead, AsyncReadManaged, AsyncWrite, AsyncWriteExt};
use compio::net::{TcpStream, UnixStream};

/// A connected byte stream on the worker's ring.
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix domain stream socket.
    Unix(UnixStream),
}

impl Stream {
    /// Read into the buffer's room (a slice's whole range, from its start); returns
    /// bytes read and the buffer. A read never shrinks the buffer's length: compio
    /// only advances it.
    pub async fn read<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        match self {
            Stream::Tcp(s) => RingStream::read(s, buf).await,
            Stream::Unix(s) => RingStream::read(s, buf).await,
        }
    }

    /// Wait until a read would not block (bytes, EOF or an error are there) without
    /// lending the kernel a buffer, so a connection that waits for its client holds
    /// no 65 KiB for nothing. One `IORING_OP_POLL_ADD` on the worker's ring: it reports
    /// the socket's current state when submitted, so no wakeup is lost to an earlier
    /// read.
    pub async fn readable(&self) -> io::Result<()> {
        let op = match self {
            Stream::Tcp(s) => PollOnce::new(s.to_shared_fd(), Interest::Readable),
            Stream::Unix(s) => PollOnce::new(s.to_shared_fd(), Interest::Readable),
        };
        let BufResult(res, _) = compio::runtime::submit(op).await;
        res.map(|_| ())
    }

    /// One buffer-select receive on the worker's provided buffer ring (see
    /// [`super::ring`]): `None` or an empty buffer at EOF, `ENOBUFS` when the ring is
    /// empty.
    pub async fn recv_ring(&self) -> io::Result<Option<compio::driver::BufferRef>> {
        match self {
            Stream::Tcp(s) => {
                let mut r = s;
                AsyncReadManaged::read_managed(&mut r, 0).await
            }
            Stream::Unix(s) => {
                let mut r = s;
                AsyncReadManaged::read_managed(&mut r, 0).await
            }
        }
    }

    /// One `readv` into the record slots of `buf` ([`slots`]), so the plaintext lands
    /// where it will be sealed: bytes read and the buffer. `buf` must be at least
    /// [`slots::LEN`] long.
    pub async fn read_slots(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        assert!(buf.len() >= slots::LEN);
        let mut op = match self {
            Stream::Tcp(s) => ReadSlots::new(s.to_shared_fd(), buf),
            Stream::Unix(s) => ReadSlots::new(s.to_shared_fd(), buf),
        };
        loop {
            let BufResult(res, back) = compio::runtime::submit(op).await;
            match res {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => op = back,
                res => return (res, back.buf),
            }
        }
    }

    /// Write all of `buf`.
    pub async fn write_all<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B) {
        match self {
            Stream::Tcp(s) => RingStream::write_all(s, buf).await,
            Stream::Unix(s) => RingStream::write_all(s, buf).await,
        }
    }

    /// Shut down one or both directions; errors on an already-dead socket are moot.
    /// A plain `shutdown(2)`: it never blocks, and it must happen now, not when an
    /// async op would run.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).shutdown(how),
            Stream::Unix(s) => socket2::SockRef::from(s).shutdown(how),
        };
    }
}

/// `readv(fd, [the slots' plaintext rooms])`: the buffer and the vector the kernel
/// reads through are the op's own, and compio keeps an op in place (boxed, never moved)
/// until its completion, also when its future was dropped.
struct ReadSlots {
    fd: SharedFd<socket2::Socket>,
    buf: Vec<u8>,
    iov: [libc::iovec; slots::COUNT],
}

impl ReadSlots {
    fn new(fd: SharedFd<socket2::Socket>, buf: Vec<u8>) -> Self {
        ReadSlots {
            fd,
            buf,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; slots::COUNT],
        }
    }

    /// Point the vector at the slots (again: the op may have moved since it was made).
    fn aim(&mut self) {
        let base = self.buf.as_mut_ptr();
        for (i, v) in self.iov.iter_mut().enumerate() {
            let r = slots::room(i);
            // `buf` is at least `slots::LEN` long (checked in `read_slots`), so every
            // room lies inside it.
            *v = libc::iovec {
                iov_base: base.wrapping_add(r.start).cast(),
                iov_len: r.len(),
            };
        }
    }
}

// SAFETY: the entry points at `self.iov`, whose entries point into `self.buf`'s
// disjoint slot rooms; the op owns both and compio keeps it in place until the
// completion, and `self.fd` keeps the socket open for as long. The kernel writes only
// inside the rooms the vector names.
unsafe impl OpCode for ReadSlots {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        self.aim();
        OpEntry::Submission(
            opcode::Readv::new(
                types::Fd(self.fd.as_raw_fd()),
                self.iov.as_ptr(),
                slots::COUNT as u32,
            )
            .build(),
        )
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        self.aim();
        // SAFETY: as for the ring entry: the vector names `slots::COUNT` rooms inside
        // `self.buf`, which is borrowed mutably for the call, and the fd is open.
        let r = unsafe {
            libc::readv(
                self.fd.as_raw_fd(),
                self.iov.as_ptr(),
                slots::COUNT as libc::c_int,
            )
        };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    }
}

/// Reads and writes with the (result, buffer) shape the shell uses everywhere, for any
/// of the ring's streams (the s3 backend holds bare TCP streams; [`Stream`] wraps both
/// kinds).
pub(crate) trait RingStream {
    /// Read into `buf`'s range, from its start.
    async fn read<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B);
    /// Write all of `buf`.
    async fn write_all<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B);
}

impl<S> RingStream for S
where
    for<'a> &'a S: AsyncRead + AsyncWrite,
{
    async fn read<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        let mut r = self;
        let BufResult(res, buf) = AsyncRead::read(&mut r, buf).await;
        (res, buf)
    }

    async fn write_all<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B) {
        let mut w = self;
        let BufResult(res, buf) = AsyncWriteExt::write_all(&mut w, buf).await;
        (res, buf)
    }
}

/// Positional file I/O on the ring, with the same (result, buffer) shape.
pub(crate) trait RingFile {
    /// Read into `buf`'s range from `pos`.
    async fn read_at<B: IoBufMut>(&self, buf: B, pos: u64) -> (io::Result<usize>, B);
    /// Write all of `buf` at `pos`.
    async fn write_all_at<B: IoBuf>(&self, buf: B, pos: u64) -> (io::Result<()>, B);
}

impl RingFile for compio::fs::File {
    async fn read_at<B: IoBufMut>(&self, buf: B, pos: u64) -> (io::Result<usize>, B) {
        let BufResult(res, buf) = compio::io::AsyncReadAt::read_at(self, buf, pos).await;
        (res, buf)
    }

    async fn write_all_at<B: IoBuf>(&self, buf: B, pos: u64) -> (io::Result<()>, B) {
        let mut w = self;
        let BufResult(res, buf) = compio::io::AsyncWriteAtExt::write_all_at(&mut w, buf, pos).await;
        (res, buf)
    }
}

/// Hand an open std file to the ring (its reads and writes become io_uring ops).
pub fn ring_file(f: std::fs::File) -> compio::fs::File {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` gives up the std file's ownership of a descriptor that is
    // open (a `File` always is), so the compio file becomes its only owner and closes
    // it exactly once; nothing else holds or closes that number.
    unsafe { compio::fs::File::from_raw_fd(f.into_raw_fd()) }
}

/// Why a read gave up waiting.
#[derive(Debug)]
pub enum WaitError {
    /// Nothing moved in either direction for the idle timeout.
    Idle,
    /// The read failed.
    Io(io::Error),
    /// The appliance is draining and this read was waiting between requests.
    Draining,
}

/// Await a read without ever cancelling it early: io_uring reads that are dropped in
/// flight may still complete and lose their bytes. The timer only decides, each time it
/// fires, whether the connection is idle: `idle_at()` is asked of the session machine
/// (its idle deadline, which bytes moving in either direction push out), and only once
/// the instant it names has passed is the connection idle, in which case it is being
/// torn down anyway. With `drain`, a read that waits for the next request on a
/// keep-alive connection also gives up when the appliance starts draining: an idle
/// connection must not hold the drain to its deadline (HTTP clients retry a request
/// that meets a closed keep-alive).
pub async fn read_until<F, B>(
    fut: F,
    idle_at: impl Fn() -> Instant,
    drain: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<(usize, B), (WaitError, Option<B>)>
where
    F: std::future::Future<Output = (io::Result<usize>, B)>,
{
    tokio::pin!(fut);
    let drained = async move {
        if let Some(mut rx) = drain {
            if rx.wait_for(|d| *d).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(drained);
    loop {
        let deadline = idle_at();
        tokio::select! {
            (res, buf) = &mut fut => {
                return match res {
                    Ok(n) => Ok((n, buf)),
                    Err(e) => Err((WaitError::Io(e), Some(buf))),
                };
            }
            _ = &mut drained => return Err((WaitError::Draining, None)),
            _ = compio::time::sleep_until(deadline) => {
                if idle_at() <= Instant::now() {
                    return Err((WaitError::Idle, None));
                }
            }
        }
    }
}

/// The wall clock as rustls's verifier takes it (certificate validity is wall time).
pub fn unix_now() -> rustls_pki_types::UnixTime {
    rustls_pki_types::UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// The wall clock in Unix seconds.
pub fn unix_secs() -> i64 {
    i64::try_from(unix_now().as_secs()).unwrap_or(i64::MAX)
}
