//! The store's per-request lookups on the worker's io_uring ring: opening a bucket's
//! folder, an object (`openat2` beneath its bucket), its `statx` and the extended
//! attributes that hold its digests and metadata, creating and removing a temporary.
//! The store ([`crate::backend::store::open`]) says which flags, names and error
//! meanings; this file only issues them as ring operations ([`crate::engine::fsops`]),
//! so a cold lookup waits in the kernel while the worker serves its other
//! connections. Everything else the store does runs on the blocking pool
//! ([`super::offload`]).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::sync::Arc;

use super::Conn;
use crate::backend::store::{self, open, Attrs, ObjectMeta, Stamp, Store, CACHED_ATTRS};
use crate::engine::attrcache::{self, AttrCache};
use crate::engine::fsops;
use crate::proto::s3::{self, Code};

/// The store's root folder, held open by the `Store` for as long as a ring operation
/// that starts there needs it.
struct Root(Arc<Store>);

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.root_dir().as_fd()
    }
}

/// Room offered for the small digest attributes (64 hex digits at most, or a stamp):
/// one read each. The metadata attribute gets [`META_FIRST`], and more if it needs it.
const ATTR_FIRST: usize = 128;
/// Room first offered for the user-metadata attribute (S3 caps user metadata at 2 KiB).
const META_FIRST: usize = 4096;

/// An I/O error of the store as an S3 error; a missing file is NoSuchBucket when the
/// bucket's folder is what is missing, else `missing`. It may open the bucket's folder
/// to tell which, so it is called only where blocking is allowed: in a pool job.
pub(super) fn missing_as(store: &Store, bucket: &str, e: &io::Error, missing: Code) -> s3::Error {
    let not_found = if e.kind() == io::ErrorKind::NotFound && store.bucket_dir(bucket).is_err() {
        Code::NoSuchBucket
    } else {
        missing
    };
    store::io_error(e, not_found)
}

/// [`missing_as`] for an object: a missing one is NoSuchKey. Pool jobs only.
pub(super) fn object_error(store: &Store, bucket: &str, e: &io::Error) -> s3::Error {
    missing_as(store, bucket, e, Code::NoSuchKey)
}

/// [`missing_as`] for an upload: a missing (or foreign) one is NoSuchUpload. Pool
/// jobs only.
pub(super) fn upload_error(store: &Store, bucket: &str, e: &io::Error) -> s3::Error {
    missing_as(store, bucket, e, Code::NoSuchUpload)
}

/// [`object_error`] on the ring, for a worker: a missing file is NoSuchBucket when the
/// bucket's folder is what is missing (opened on the ring to tell), else NoSuchKey.
pub(super) async fn ring_object_error(store: &Arc<Store>, bucket: &str, e: io::Error) -> s3::Error {
    let missing = if e.kind() == io::ErrorKind::NotFound && bucket_dir(store, bucket).await.is_err()
    {
        Code::NoSuchBucket
    } else {
        Code::NoSuchKey
    };
    lookup_error(&e, missing)
}

/// An error of one step of a ring lookup, where the step says what is missing.
fn lookup_error(e: &io::Error, missing: Code) -> s3::Error {
    store::io_error(e, missing)
}

/// Open the bucket's folder on the ring, with [`Store::bucket_dir`]'s answers: `NotFound`
/// when there is no such folder, `PermissionDenied` for a symlink.
pub(super) async fn bucket_dir(store: &Arc<Store>, bucket: &str) -> io::Result<File> {
    let name = open::bucket_name(bucket)?;
    open_dir(Root(store.clone()), name, bucket)
        .await
        .map_err(|e| open::bucket_error(bucket, e))
}

/// Open the folder `name` (`shown` in errors) in `at` on the ring, never following a
/// symlink: `NotFound` when there is none, `PermissionDenied` for a symlink, as the
/// store's blocking `open_dir_nofollow` answers.
pub(super) async fn open_dir<D: AsFd + 'static>(
    at: D,
    name: CString,
    shown: &str,
) -> io::Result<File> {
    let (r, at, name) = fsops::open_at(at, name, open::DIR_FLAGS, 0).await;
    let e = match r {
        Ok(dir) => return Ok(dir),
        Err(e) => e,
    };
    let symlink = if e.raw_os_error() == Some(libc::ELOOP) {
        true
    } else if open::dir_error_needs_type(&e) {
        let (st, _) = fsops::stat_nofollow(at, name).await;
        st.is_ok_and(|st| open::is_symlink_mode(u32::from(st.stx_mode)))
    } else {
        false
    };
    Err(open::dir_error(shown, e, symlink))
}

/// An object opened on the ring for GET or HEAD.
pub(super) struct Opened {
    /// Open for reading, a regular file.
    pub file: File,
    /// Its digests and stat, `None` when no current digest is stored and the bytes
    /// must be hashed (on the pool).
    pub meta: Option<ObjectMeta>,
    /// Its `Content-Type` and user metadata.
    pub user: s3::Metadata,
    /// This state of the object, as its `statx` said.
    pub seen: attrcache::Key,
}

/// Why a ring lookup of an object did not give one.
pub(super) enum NotOpened {
    /// The answer to send.
    Refused(s3::Error),
    /// The kernel has no `openat2`: the store's own blocking walk must resolve the key.
    NoOpenat2,
}

impl From<s3::Error> for NotOpened {
    fn from(e: s3::Error) -> NotOpened {
        NotOpened::Refused(e)
    }
}

/// Open `key` beneath its bucket on the ring, as [`Store::open_object`] does with
/// blocking calls (less its hashing): `openat2` with the store's resolve flags (a rename racing the
/// lookup is tried again), only a regular file, then its `statx` and, where the
/// filesystem keeps them, its digest and metadata attributes, read at once, unless
/// `cache` knows them for this exact state of the object ([`AttrCache`]).
pub(super) async fn lookup_object(
    store: &Arc<Store>,
    cache: &AttrCache,
    bucket: &str,
    key: &str,
) -> Result<Opened, NotOpened> {
    let path = open::key_name(key).map_err(|e| lookup_error(&e, Code::NoSuchKey))?;
    let mut dir = bucket_dir(store, bucket)
        .await
        .map_err(|e| lookup_error(&e, Code::NoSuchBucket))?;
    let mut path = path;
    let mut tries = 0;
    let file = loop {
        let (r, d, p) = fsops::open_beneath(dir, path, open::OBJECT_FLAGS, open::RESOLVE).await;
        (dir, path) = (d, p);
        match r {
            Ok(file) => break file,
            Err(e) if open::retry(&e) && tries < open::RETRIES => tries += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Err(NotOpened::NoOpenat2),
            Err(e) => return Err(lookup_error(&open::object_error(e), Code::NoSuchKey).into()),
        }
    };
    drop(dir);
    let (st, file) = fsops::stat(file).await;
    let st = st.map_err(|e| lookup_error(&e, Code::NoSuchKey))?;
    if !open::is_file_mode(u32::from(st.stx_mode)) {
        return Err(lookup_error(&open::not_an_object(), Code::NoSuchKey).into());
    }
    fsops::clear_nonblocking(&file).map_err(|e| lookup_error(&e, Code::InternalError))?;
    let stamp = Stamp {
        size: st.stx_size,
        mtime_sec: st.stx_mtime.tv_sec,
        mtime_nsec: st.stx_mtime.tv_nsec,
    };
    let seen = attrcache::Key::of(&st);
    if !store.keeps_attributes() {
        let user = s3::Metadata::default();
        return Ok(Opened {
            file,
            meta: None,
            user,
            seen,
        });
    }
    if let Some((meta, user)) = cache.get(&seen) {
        return Ok(Opened {
            file,
            meta,
            user,
            seen,
        });
    }
    // The five attribute reads are independent: issued together, they cost one round
    // through the kernel's io-wq instead of five.
    let file = Arc::new(file);
    let attr = |i: usize| fsops::get_xattr(file.clone(), CACHED_ATTRS[i], ATTR_FIRST);
    let (a0, a1, a2, a3, meta) = futures_util::future::join5(
        attr(0),
        attr(1),
        attr(2),
        attr(3),
        fsops::get_xattr(file.clone(), store::META_ATTR, META_FIRST),
    )
    .await;
    // Remembered only if every read gave an answer (a value, or "none"): a transient
    // error must spoil one response, not every one until the object changes.
    let mut answered = true;
    let mut attrs = Attrs::default();
    for (i, (value, _)) in [a0, a1, a2, a3].into_iter().enumerate() {
        answered &= value.is_ok();
        // As the blocking path: an attribute that cannot be read counts as absent.
        attrs.set(i, value.ok().flatten());
    }
    // Every op gives its handle on the file back; they must all be gone before the
    // file is taken out of its Arc.
    let (raw_user, handle) = meta;
    drop(handle);
    answered &= raw_user.is_ok();
    let raw_user = raw_user.ok().flatten();
    let user = store::parse_metadata(raw_user.as_deref());
    let file = Arc::into_inner(file).ok_or_else(|| {
        s3::Error::new(Code::InternalError).detail("an attribute read kept the object open")
    })?;
    let meta = store::cached_meta_from(&stamp, &attrs);
    // An object without a current digest is not remembered: the hash its GET runs on
    // the pool stores one, and the lookups after that must see it, not this state.
    let small = raw_user
        .as_ref()
        .is_none_or(|m| m.len() <= attrcache::MAX_META);
    if answered && small && meta.is_some() {
        cache.put(
            seen,
            (meta.clone(), user.clone()),
            std::time::SystemTime::now(),
        );
    }
    Ok(Opened {
        file,
        meta,
        user,
        seen,
    })
}

/// Create a new temporary in the bucket's folder on the ring, as
/// [`Store::create_temp`] does with blocking calls.
pub(super) async fn create_temp(
    store: &Arc<Store>,
    bucket: &str,
) -> Result<(File, String), s3::Error> {
    let mut dir = bucket_dir(store, bucket)
        .await
        .map_err(|e| lookup_error(&e, Code::NoSuchBucket))?;
    for _ in 0..open::TEMP_TRIES {
        let (name, c) = open::temp_name().map_err(|e| lookup_error(&e, Code::InternalError))?;
        let (r, d, _) = fsops::open_at(dir, c, open::TEMP_FLAGS, open::TEMP_MODE).await;
        dir = d;
        match r {
            Ok(file) => return Ok((file, name)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(lookup_error(&e, Code::NoSuchBucket)),
        }
    }
    Err(lookup_error(&open::no_temp_name(), Code::InternalError))
}

/// Remove a temporary on the ring, best effort, as [`Store::discard_temp`] does.
pub(super) async fn discard_temp(store: &Arc<Store>, bucket: &str, temp: &str) {
    let (Ok(name), Ok(dir)) = (open::temp_path(temp), bucket_dir(store, bucket).await) else {
        return;
    };
    let _ = fsops::unlink_at(dir, name).await;
}

impl Conn<'_> {
    /// The metadata of an object with no current stored digest: its bytes hashed on
    /// the pool, once per state of the object on this worker however many requests
    /// want it at once (they wait for the one job; a thousand GETs of a freshly
    /// written file must not fill the pool's queue with a thousand copies of it).
    async fn hash_once(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        file: &File,
        seen: attrcache::Key,
    ) -> Result<ObjectMeta, s3::Error> {
        let cell = self.w.hashing.borrow_mut().entry(seen).or_default().clone();
        let r = cell
            .get_or_try_init(|| async {
                let f = file
                    .try_clone()
                    .map_err(|e| store::io_error(&e, Code::InternalError))?;
                let b = bucket.to_owned();
                self.blocking(store, move |st| {
                    st.object_meta(&f).map_err(|e| object_error(st, &b, &e))
                })
                .await
            })
            .await
            .cloned();
        // The entry goes once it has its answer (the digest is stored now, and later
        // lookups read it) or when no one else waits on it.
        let mut map = self.w.hashing.borrow_mut();
        if map.get(&seen).is_some_and(|c| Rc::ptr_eq(c, &cell))
            && (cell.initialized() || Rc::strong_count(&cell) <= 2)
        {
            map.remove(&seen);
        }
        r
    }

    /// Open an object with its metadata for GET or HEAD: the lookup on the ring; the
    /// hashing of an object with no current stored digest (its whole length) on the
    /// pool, and the whole lookup there on a kernel without `openat2`.
    pub(super) async fn open_object(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        key: &str,
    ) -> Result<(File, ObjectMeta, s3::Metadata), s3::Error> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        match lookup_object(store, &self.w.attrs, bucket, key).await {
            Ok(Opened {
                file,
                meta: Some(meta),
                user,
                ..
            }) => Ok((file, meta, user)),
            Ok(Opened {
                file,
                meta: None,
                user,
                seen,
            }) => {
                let meta = self.hash_once(store, &b, &file, seen).await?;
                Ok((file, meta, user))
            }
            Err(NotOpened::Refused(e)) => Err(e),
            Err(NotOpened::NoOpenat2) => {
                self.blocking(store, move |st| {
                    st.open_object(&b, &k)
                        .map(|(file, m)| {
                            let user = store::read_metadata(&file);
                            (file, m, user)
                        })
                        .map_err(|e| object_error(st, &b, &e))
                })
                .await
            }
        }
    }
}
