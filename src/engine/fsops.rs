//! File-system calls as io_uring operations on the worker's ring: `openat`, `openat2`,
//! `statx`, `fgetxattr`, `unlinkat`, `mkdirat`, `renameat` and `fsync`. A lookup whose
//! dentries or inode are not in the kernel's caches waits for the disk, and an fsync
//! waits for it always; as a plain syscall that wait stalls every connection of the
//! worker, as a ring operation only the request that asked. The
//! kernel runs what cannot finish at once (and `statx`, `fgetxattr`, `unlinkat`,
//! `mkdirat`, `renameat`, `fsync`, and an `openat2` whose lookup is not cached) on its
//! io-wq threads.
//!
//! compio 0.19 carries `openat`, `statx` and `unlinkat` only relative to the current
//! folder or as its own types; these are the same operations through its public
//! [`OpCode`] trait, built with the io-uring crate compio itself uses. On a kernel
//! without one of these opcodes compio runs [`OpCode::call_blocking`] on its own
//! thread pool instead, never on the worker.
//!
//! Every operation owns what the kernel reads or writes (the folder's descriptor, the
//! path, the result buffer) until it completes: compio keeps an operation whose future
//! was dropped alive until its completion arrives, and a descriptor opened after its
//! future was dropped is closed with the operation.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use compio::buf::BufResult;
use compio::driver::{Extra, OpCode, OpEntry};
use io_uring_07::{opcode, types};

/// `-1` → the thread's `errno`, for the blocking fallbacks.
fn cvt(r: libc::c_long) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// The descriptor an open operation returned, owned from here on, so that it is closed
/// even when no one collects it (the future was dropped before the completion).
///
/// # Safety
/// `res` must be the result of an open-family operation that just completed: on
/// success a fresh descriptor that nothing else owns.
unsafe fn opened(res: &io::Result<usize>) -> Option<OwnedFd> {
    let fd = libc::c_int::try_from(*res.as_ref().ok()?).ok()?;
    // SAFETY: the caller guarantees `fd` is fresh and owned by no one else, which is
    // `OwnedFd::from_raw_fd`'s contract.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Submit `op` to the worker's ring, again while it is interrupted (`EINTR`), as the
/// store's blocking wrappers do.
async fn run<T: OpCode + 'static>(mut op: T) -> (io::Result<usize>, T) {
    loop {
        let BufResult(r, back) = compio::runtime::submit(op).await;
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => op = back,
            r => return (r, back),
        }
    }
}

/// `openat(dir, path, flags | O_CLOEXEC, mode)`.
struct OpenAt<D> {
    dir: D,
    path: CString,
    flags: libc::c_int,
    mode: libc::mode_t,
    fd: Option<OwnedFd>,
}

// SAFETY: the entry points at `self.path`, which this op owns and which compio keeps
// in place (boxed, never moved) until the completion, and at `self.dir`'s descriptor,
// which `self.dir` keeps open for as long.
unsafe impl<D: AsFd> OpCode for OpenAt<D> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        OpEntry::Submission(
            opcode::OpenAt::new(types::Fd(self.dir.as_fd().as_raw_fd()), self.path.as_ptr())
                .flags(self.flags | libc::O_CLOEXEC)
                .mode(self.mode)
                .build(),
        )
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        // SAFETY: the descriptor is open (owned by `self.dir`) and the path is a
        // NUL-terminated string owned by `self`; openat keeps neither. The variadic mode
        // is passed as the `unsigned int` the C prototype promotes it to.
        let fd = unsafe {
            libc::openat(
                self.dir.as_fd().as_raw_fd(),
                self.path.as_ptr(),
                self.flags | libc::O_CLOEXEC,
                libc::c_uint::from(self.mode),
            )
        };
        cvt(libc::c_long::from(fd))
    }

    unsafe fn set_result(&mut self, _: &mut (), res: &io::Result<usize>, _: &Extra) {
        // SAFETY: `res` is this open's own result (compio's contract for set_result).
        self.fd = unsafe { opened(res) };
    }
}

/// `openat2(dir, path, how)`.
struct OpenAt2<D> {
    dir: D,
    path: CString,
    how: types::OpenHow,
    fd: Option<OwnedFd>,
}

// SAFETY: as for `OpenAt`; `self.how` is owned by the op and stays in place as well.
unsafe impl<D: AsFd> OpCode for OpenAt2<D> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        OpEntry::Submission(
            opcode::OpenAt2::new(
                types::Fd(self.dir.as_fd().as_raw_fd()),
                self.path.as_ptr(),
                &self.how,
            )
            .build(),
        )
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        // SAFETY: openat2(int dirfd, const char *path, struct open_how *how, size_t
        // size): the descriptor is open, the path NUL-terminated, `how` an initialised
        // `open_how` (io-uring's `OpenHow` is `#[repr(transparent)]` over it) of exactly
        // that size; the kernel keeps none of them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::c_long::from(self.dir.as_fd().as_raw_fd()),
                self.path.as_ptr(),
                std::ptr::from_ref(&self.how),
                std::mem::size_of::<libc::open_how>(),
            )
        };
        cvt(r)
    }

    unsafe fn set_result(&mut self, _: &mut (), res: &io::Result<usize>, _: &Extra) {
        // SAFETY: as for `OpenAt`.
        self.fd = unsafe { opened(res) };
    }
}

/// `statx(dir, path, flags, STATX_BASIC_STATS)`; with an empty path and
/// `AT_EMPTY_PATH`, of `dir` itself.
struct Statx<D> {
    dir: D,
    path: CString,
    flags: libc::c_int,
    out: libc::statx,
}

// SAFETY: the entry points at `self.path` and `self.out`, owned by the op and kept in
// place until the completion; the kernel writes only `self.out`.
unsafe impl<D: AsFd> OpCode for Statx<D> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        OpEntry::Submission(
            opcode::Statx::new(
                types::Fd(self.dir.as_fd().as_raw_fd()),
                self.path.as_ptr(),
                std::ptr::from_mut(&mut self.out).cast::<types::statx>(),
            )
            .flags(self.flags)
            .mask(libc::STATX_BASIC_STATS)
            .build(),
        )
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        // SAFETY: the descriptor is open, the path NUL-terminated, and `out` a
        // `struct statx` exclusively borrowed for the call, which is all it writes.
        let r = unsafe {
            libc::statx(
                self.dir.as_fd().as_raw_fd(),
                self.path.as_ptr(),
                self.flags,
                libc::STATX_BASIC_STATS,
                &mut self.out,
            )
        };
        cvt(libc::c_long::from(r))
    }
}

/// `fgetxattr(fd, name, buf, capacity)`.
struct GetXattr<F> {
    file: F,
    name: &'static CStr,
    buf: Vec<u8>,
}

// SAFETY: the entry points at `name` (static), and at `self.buf`'s heap allocation,
// which the op owns and which neither moves nor shrinks before the completion; the
// kernel writes at most its capacity there.
unsafe impl<F: AsFd> OpCode for GetXattr<F> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        OpEntry::Submission(
            opcode::FGetXattr::new(
                types::Fd(self.file.as_fd().as_raw_fd()),
                self.name.as_ptr(),
                self.buf.as_mut_ptr().cast(),
                u32::try_from(self.buf.capacity()).unwrap_or(u32::MAX),
            )
            .build(),
        )
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        // SAFETY: the descriptor is open, the name NUL-terminated, and the kernel
        // writes at most `capacity` bytes into the buffer's allocation.
        let r = unsafe {
            libc::fgetxattr(
                self.file.as_fd().as_raw_fd(),
                self.name.as_ptr(),
                self.buf.as_mut_ptr().cast(),
                self.buf.capacity(),
            )
        };
        cvt(r as libc::c_long)
    }
}

/// `unlinkat(dir, path, 0)`.
struct UnlinkAt<D> {
    dir: D,
    path: CString,
}

// SAFETY: as for `OpenAt`.
unsafe impl<D: AsFd> OpCode for UnlinkAt<D> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        OpEntry::Submission(
            opcode::UnlinkAt::new(types::Fd(self.dir.as_fd().as_raw_fd()), self.path.as_ptr())
                .build(),
        )
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        // SAFETY: the descriptor is open and the path NUL-terminated; unlinkat keeps
        // neither.
        let r = unsafe { libc::unlinkat(self.dir.as_fd().as_raw_fd(), self.path.as_ptr(), 0) };
        cvt(libc::c_long::from(r))
    }
}

/// `mkdirat(dir, path, mode)`.
struct MkDirAt<D> {
    dir: D,
    path: CString,
    mode: libc::mode_t,
}

// SAFETY: as for `OpenAt`.
unsafe impl<D: AsFd> OpCode for MkDirAt<D> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        OpEntry::Submission(
            opcode::MkDirAt::new(types::Fd(self.dir.as_fd().as_raw_fd()), self.path.as_ptr())
                .mode(self.mode)
                .build(),
        )
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        // SAFETY: the descriptor is open and the path NUL-terminated; mkdirat keeps
        // neither.
        let r =
            unsafe { libc::mkdirat(self.dir.as_fd().as_raw_fd(), self.path.as_ptr(), self.mode) };
        cvt(libc::c_long::from(r))
    }
}

/// `renameat(from_dir, from, to_dir, to)`, holding `hold` until it is done.
struct RenameAt<D, T, H> {
    from_dir: D,
    from: CString,
    to_dir: T,
    to: CString,
    _hold: H,
}

// SAFETY: the entry points at both paths, which this op owns and which compio keeps in
// place until the completion, and at both folders' descriptors, which `from_dir` and
// `to_dir` keep open for as long.
unsafe impl<D: AsFd, T: AsFd, H> OpCode for RenameAt<D, T, H> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        OpEntry::Submission(
            opcode::RenameAt::new(
                types::Fd(self.from_dir.as_fd().as_raw_fd()),
                self.from.as_ptr(),
                types::Fd(self.to_dir.as_fd().as_raw_fd()),
                self.to.as_ptr(),
            )
            .build(),
        )
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        // SAFETY: both descriptors are open and both paths NUL-terminated; renameat
        // keeps none of them.
        let r = unsafe {
            libc::renameat(
                self.from_dir.as_fd().as_raw_fd(),
                self.from.as_ptr(),
                self.to_dir.as_fd().as_raw_fd(),
                self.to.as_ptr(),
            )
        };
        cvt(libc::c_long::from(r))
    }
}

/// `fsync(file)`: its data and its metadata.
struct Fsync<F> {
    file: F,
}

// SAFETY: the entry points at no memory, only at `self.file`'s descriptor, which
// `self.file` keeps open until the completion.
unsafe impl<F: AsFd> OpCode for Fsync<F> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        OpEntry::Submission(opcode::Fsync::new(types::Fd(self.file.as_fd().as_raw_fd())).build())
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        // SAFETY: the descriptor is open (owned by `self.file`).
        let r = unsafe { libc::fsync(self.file.as_fd().as_raw_fd()) };
        cvt(libc::c_long::from(r))
    }
}

/// `openat(dir, path, flags | O_CLOEXEC, mode)` on the ring; `dir` and `path` come
/// back with the result.
pub async fn open_at<D: AsFd + 'static>(
    dir: D,
    path: CString,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> (io::Result<std::fs::File>, D, CString) {
    let op = OpenAt {
        dir,
        path,
        flags,
        mode,
        fd: None,
    };
    let (r, mut op) = run(op).await;
    let r = r.and_then(|_| op.fd.take().map(std::fs::File::from).ok_or_else(lost_fd));
    (r, op.dir, op.path)
}

/// `openat2(dir, path, {flags | O_CLOEXEC, 0, resolve})` on the ring.
pub async fn open_beneath<D: AsFd + 'static>(
    dir: D,
    path: CString,
    flags: libc::c_int,
    resolve: u64,
) -> (io::Result<std::fs::File>, D, CString) {
    let Ok(oflags) = u64::try_from(flags | libc::O_CLOEXEC) else {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "negative open flags");
        return (Err(e), dir, path);
    };
    let op = OpenAt2 {
        dir,
        path,
        how: types::OpenHow::new().flags(oflags).resolve(resolve),
        fd: None,
    };
    let (r, mut op) = run(op).await;
    let r = r.and_then(|_| op.fd.take().map(std::fs::File::from).ok_or_else(lost_fd));
    (r, op.dir, op.path)
}

/// `mkdirat(dir, path, mode)` on the ring.
pub async fn mkdir_at<D: AsFd + 'static>(
    dir: D,
    path: CString,
    mode: libc::mode_t,
) -> io::Result<()> {
    run(MkDirAt { dir, path, mode }).await.0.map(drop)
}

/// `renameat(from_dir, from, to_dir, to)` on the ring: replaces what `to` names.
/// `hold` (a lock's guard) is dropped only once the kernel is done with the rename, even
/// when this future is dropped first (compio keeps the operation until its completion):
/// a lock held for a rename stays held for as long as the rename may still happen.
pub async fn rename_at<D: AsFd + 'static, T: AsFd + 'static, H: 'static>(
    from_dir: D,
    from: CString,
    to_dir: T,
    to: CString,
    hold: H,
) -> io::Result<()> {
    let op = RenameAt {
        from_dir,
        from,
        to_dir,
        to,
        _hold: hold,
    };
    run(op).await.0.map(drop)
}

/// `fsync(file)` on the ring: the disk's wait is the kernel's (io-wq), not the loop's.
pub async fn sync<F: AsFd + 'static>(file: F) -> (io::Result<()>, F) {
    let (r, op) = run(Fsync { file }).await;
    (r.map(drop), op.file)
}

fn lost_fd() -> io::Error {
    io::Error::other("an open completed without its descriptor")
}

/// `statx` of an open file (`AT_EMPTY_PATH`) on the ring.
pub async fn stat<F: AsFd + 'static>(file: F) -> (io::Result<libc::statx>, F) {
    stat_at(file, CString::default(), libc::AT_EMPTY_PATH).await
}

/// `statx(dir, path, AT_SYMLINK_NOFOLLOW)` on the ring: what `path` itself is.
pub async fn stat_nofollow<D: AsFd + 'static>(
    dir: D,
    path: CString,
) -> (io::Result<libc::statx>, D) {
    stat_at(dir, path, libc::AT_SYMLINK_NOFOLLOW).await
}

async fn stat_at<D: AsFd + 'static>(
    dir: D,
    path: CString,
    flags: libc::c_int,
) -> (io::Result<libc::statx>, D) {
    let op = Statx {
        dir,
        path,
        flags,
        // SAFETY: `struct statx` is plain integers; all zeroes is a valid value.
        out: unsafe { std::mem::zeroed() },
    };
    let (r, op) = run(op).await;
    (r.map(|_| op.out), op.dir)
}

/// Most bytes an extended attribute may hold (Linux's `XATTR_SIZE_MAX`).
const XATTR_MAX: usize = 64 * 1024;

/// `fgetxattr(file, name)` on the ring: `None` when the file has no such attribute
/// or its filesystem keeps none. `first` bytes are offered first; a larger value is
/// read again with room for the largest possible one.
pub async fn get_xattr<F: AsFd + 'static>(
    file: F,
    name: &'static CStr,
    first: usize,
) -> (io::Result<Option<Vec<u8>>>, F) {
    let mut op = GetXattr {
        file,
        name,
        buf: Vec::with_capacity(first.clamp(1, XATTR_MAX)),
    };
    loop {
        let (r, back) = run(op).await;
        op = back;
        match r {
            Ok(n) => {
                let n = n.min(op.buf.capacity());
                // SAFETY: the kernel wrote `n` bytes (at most the capacity) at the
                // start of the buffer's allocation.
                unsafe { op.buf.set_len(n) };
                return (Ok(Some(op.buf)), op.file);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && op.buf.capacity() < XATTR_MAX => {
                op.buf = Vec::with_capacity(XATTR_MAX);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => {
                return (Ok(None), op.file)
            }
            Err(e) => return (Err(e), op.file),
        }
    }
}

/// `unlinkat(dir, path, 0)` on the ring.
pub async fn unlink_at<D: AsFd + 'static>(dir: D, path: CString) -> (io::Result<()>, D) {
    let (r, op) = run(UnlinkAt { dir, path }).await;
    (r.map(drop), op.dir)
}

/// `fcntl(F_SETFL)` without `O_NONBLOCK`: a flag change on an open descriptor, which
/// touches no disk and cannot wait (io_uring has no such operation).
pub fn clear_nonblocking(file: &std::fs::File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL takes no third argument and touches no memory; `fd` is open,
    // borrowed from `file` for the call.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL takes an `int` of flags and touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        compio::runtime::Runtime::new()
            .expect("a compio runtime")
            .block_on(f)
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lg-fsops-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    #[test]
    fn mkdir_rename_and_fsync_do_what_their_system_calls_do() {
        let root = scratch("ops");
        let dir = std::sync::Arc::new(std::fs::File::open(&root).unwrap());
        std::fs::write(root.join("temp"), b"bytes").unwrap();
        let file = std::fs::File::open(root.join("temp")).unwrap();
        let hold = Rc::new(());
        block_on(async {
            mkdir_at(dir.clone(), c("sub"), 0o750).await.unwrap();
            let again = mkdir_at(dir.clone(), c("sub"), 0o750).await.unwrap_err();
            assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
            let (r, _) = sync(file).await;
            r.unwrap();
            let sub = std::fs::File::open(root.join("sub")).unwrap();
            rename_at(dir.clone(), c("temp"), sub, c("leaf"), hold.clone())
                .await
                .unwrap();
            // Held for the rename only: released with the operation.
            assert_eq!(Rc::strong_count(&hold), 1);
            let gone = rename_at(dir.clone(), c("temp"), dir.clone(), c("x"), ())
                .await
                .unwrap_err();
            assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        });
        assert_eq!(std::fs::read(root.join("sub/leaf")).unwrap(), b"bytes");
        assert!(!root.join("temp").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
