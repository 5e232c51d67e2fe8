//! The io_uring shell's stream type: a TCP or unix stream driven by tokio-uring. Only
//! the engine sees tokio-uring; a change of runtime stays inside `engine/`.

use std::io;
use std::net::Shutdown;
use std::time::Instant;

use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_uring::buf::{BoundedBuf, BoundedBufMut};
use tokio_uring::net::{TcpStream, UnixStream};

/// A connected byte stream on the worker's ring.
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix domain stream socket.
    Unix(UnixStream),
}

impl Stream {
    /// Read into the buffer's spare room; returns bytes read and the buffer.
    pub async fn read<B: BoundedBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Unix(s) => s.read(buf).await,
        }
    }

    /// Wait until a read would not block (bytes, EOF or an error are there) without
    /// lending the kernel a buffer: tokio-uring 0.5 has no provided-buffer rings, so a
    /// read that waits owns its buffer, and a connection that waits for its client
    /// would hold 65 KiB for nothing. The wait goes through the epoll reactor under the
    /// ring (tokio-uring runs on tokio's), registered for this wait only: a fresh
    /// registration reports the socket's current state, so no wakeup is lost to an
    /// earlier read. It costs three syscalls, so callers use it only between bursts.
    pub async fn readable(&self) -> io::Result<()> {
        let fd = match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        };
        // SAFETY: `fd` belongs to `self`, which this future borrows for its whole life,
        // and a Stream closes its descriptor only when dropped; so the descriptor stays
        // open and names the same socket until `afd` is dropped at the end of this call.
        let afd = unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE) }
            .map_err(io::Error::from)?;
        let _ready = afd.readable().await?;
        Ok(())
    }

    /// Write all of `buf`.
    pub async fn write_all<B: BoundedBuf>(&self, buf: B) -> (io::Result<()>, B) {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Unix(s) => s.write_all(buf).await,
        }
    }

    /// Shut down one or both directions; errors on an already-dead socket are moot.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
}

/// A socket's descriptor as epoll registers it; owned by the stream, never closed here.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
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
            _ = tokio::time::sleep_until(deadline.into()) => {
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
