//! The `store` backend's filesystem side: which file a request names, whether it may be
//! touched, what metadata it carries, and the blocking helpers the engine calls to open,
//! commit, delete and list objects.
//!
//! Owns:
//! - bucket and key validation, and the mapping of `/{bucket}/{key}` onto
//!   `root/bucket/key`;
//! - temporary names (`.lakegate-tmp-<hex>` in the bucket folder): every name starting
//!   with `.lakegate` is reserved, so no key can address, overwrite or list one;
//! - object metadata: size and mtime from the inode, SHA-256 in the extended attribute
//!   `user.lakegate.sha256` (with `user.lakegate.stamp` = size and mtime it was computed
//!   for, so a file rewritten in place by someone else is re-hashed, not mislabelled);
//! - body digests (SHA-256 always; MD5, CRC-32 and SHA-1 when the request carries
//!   them), the ListObjectsV2 XML, and the mapping of filesystem errors to S3 error
//!   faults ([`fault_of`], whose [`Fault`] gives the S3 code, and so the status).
//!
//! The rules that keep a key inside its bucket:
//! - keys are validated first: no `.`/`..` or empty segments, not absolute, no NUL or
//!   backslash;
//! - every lookup starts from a directory descriptor (the root opened once, then the
//!   bucket with `O_NOFOLLOW | O_DIRECTORY`); no path string is ever joined onto the root;
//! - reads resolve the key with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS)`; writes, deletes and listings walk one component at a time
//!   with `O_NOFOLLOW | O_DIRECTORY`;
//! - a symlink inside a bucket is never followed: a read through it fails with `ELOOP`
//!   (403), a walk through it with `PermissionDenied` (403), a listing skips it; FIFOs,
//!   sockets and devices are not objects (404) and are opened non-blocking so they cannot
//!   stall a worker.
//!
//! Must not touch: sockets, TLS or the io_uring runtime. Object bytes are streamed by the
//! engine (io_uring, compio) on the files returned here; everything in this module is plain
//! blocking syscalls on the calling thread.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use md5::Digest as _;
use xattr::FileExt as _;

use crate::proto::s3::{self, Code, Fault};

mod listcache;
pub mod multipart;

/// Longest accepted key, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Longest accepted key segment, in bytes (the usual `NAME_MAX`).
pub const MAX_SEGMENT_LEN: usize = 255;
/// Most keys one listing returns, whatever the client asked for (S3's limit).
pub const MAX_LIST_KEYS: usize = 1000;

/// Names starting with this are ours (temporaries); no key segment may.
const RESERVED_PREFIX: &str = ".lakegate";
/// Temporary uploads: `.lakegate-tmp-<32 hex>` directly in the bucket folder.
const TEMP_PREFIX: &str = ".lakegate-tmp-";
/// The object's SHA-256, lowercase hex.
const XATTR_SHA256: &str = "user.lakegate.sha256";
/// The S3 ETag of an object assembled from a multipart upload (`<hex>-<parts>`), which
/// is not its SHA-256; such an object has no SHA-256 attribute until one is computed.
const XATTR_ETAG: &str = "user.lakegate.etag";
/// The object's MD5, lowercase hex, recorded at PutObject under `etag = "md5"`: its
/// ETag. Valid under the same stamp as the SHA-256.
const XATTR_MD5: &str = "user.lakegate.md5";
/// `Content-Type` and `x-amz-meta-*` as JSON ([`s3::Metadata`]). Set on the temporary
/// before the rename, so an object is never visible without the metadata it was
/// stored with; not stamped: it describes the object, not its bytes.
const XATTR_META: &str = "user.lakegate.meta";
/// `<size>:<mtime seconds>.<mtime nanoseconds>` the SHA-256 (or ETag) attribute was
/// computed for.
const XATTR_STAMP: &str = "user.lakegate.stamp";
/// Read size when an object's SHA-256 has to be computed from its bytes.
const HASH_CHUNK: usize = 256 * 1024;

/// Why a bucket name or object key was refused. Every variant is an HTTP 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The key is empty.
    #[error("object key is empty")]
    Empty,
    /// A segment is `.` or `..`.
    #[error("object key has a \".\" or \"..\" segment")]
    DotSegment,
    /// Two slashes in a row, or a trailing slash.
    #[error("object key has an empty segment (doubled or trailing '/')")]
    EmptySegment,
    /// The key contains a NUL byte.
    #[error("object key contains NUL")]
    Nul,
    /// The key contains a backslash.
    #[error("object key contains a backslash")]
    Backslash,
    /// The key starts with `/`.
    #[error("object key is absolute (starts with '/')")]
    Absolute,
    /// Over 1024 bytes, or a segment over 255 bytes.
    #[error("object key is longer than 1024 bytes or has a segment longer than 255 bytes")]
    TooLong,
    /// A segment starts with `.lakegate`, which names the store's own temporaries.
    #[error("object key has a segment starting with \".lakegate\", which is reserved")]
    ReservedName,
    /// The bucket name breaks the S3 naming rules; the reason says which.
    #[error("bad bucket name: {0}")]
    BadBucket(String),
}

impl KeyError {
    /// The HTTP status for this error: always 400.
    pub fn status(&self) -> u16 {
        400
    }
}

impl From<KeyError> for io::Error {
    fn from(e: KeyError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// Validate a bucket name by the S3 rules: 3–63 characters of `[a-z0-9.-]`, starting and
/// ending with a letter or digit, no `..`.
pub fn validate_bucket(bucket: &str) -> Result<(), KeyError> {
    let bad = |why: &str| Err(KeyError::BadBucket(why.to_owned()));
    if !(3..=63).contains(&bucket.len()) {
        return bad("must be 3 to 63 characters long");
    }
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bucket
        .as_bytes()
        .iter()
        .all(|b| alnum(b) || *b == b'.' || *b == b'-')
    {
        return bad("only lowercase letters, digits, '.' and '-' are allowed");
    }
    let bytes = bucket.as_bytes();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return bad("must start and end with a lowercase letter or digit");
    }
    if bucket.contains("..") {
        return bad("must not contain \"..\"");
    }
    Ok(())
}

/// Validate an object key: UTF-8 (by type), 1–1024 bytes, segments of 1–255 bytes
/// separated by `/`, none of them `.`, `..` or starting with `.lakegate`; no NUL, no
/// backslash, not absolute.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if key.contains('\0') {
        return Err(KeyError::Nul);
    }
    if key.contains('\\') {
        return Err(KeyError::Backslash);
    }
    if key.starts_with('/') {
        return Err(KeyError::Absolute);
    }
    for segment in key.split('/') {
        validate_segment(segment)?;
    }
    Ok(())
}

fn validate_segment(segment: &str) -> Result<(), KeyError> {
    if segment.is_empty() {
        return Err(KeyError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(KeyError::DotSegment);
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(KeyError::TooLong);
    }
    if segment.starts_with(RESERVED_PREFIX) {
        return Err(KeyError::ReservedName);
    }
    Ok(())
}

/// Split a percent-decoded request path `/bucket/key/with/slashes` into the bucket and
/// the key; `/bucket` and `/bucket/` give no key. Both parts are validated.
pub fn split_path(path: &str) -> Result<(&str, Option<&str>), KeyError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| KeyError::BadBucket("request path must begin with '/'".to_owned()))?;
    let (bucket, key) = match rest.split_once('/') {
        Some((bucket, key)) => (bucket, Some(key)),
        None => (rest, None),
    };
    validate_bucket(bucket)?;
    match key {
        None | Some("") => Ok((bucket, None)),
        Some(key) => {
            validate_key(key)?;
            Ok((bucket, Some(key)))
        }
    }
}

/// Objects on local disk under one root folder, one folder per bucket.
///
/// Cheap to share: it holds the root's path, an open descriptor of the root and two
/// flags. All methods block the calling thread on filesystem syscalls.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// The root, opened once: every lookup starts here, never at a path string.
    root_dir: File,
    fsync: bool,
    /// Whether the root's filesystem keeps `user.*` extended attributes. Without them
    /// every GET and HEAD re-hashes the object.
    xattrs: bool,
    /// Large folders' sorted entries, kept between LIST pages: one cache for the process
    /// ([`listcache::shared`]), so that a reload's new store does not keep a second copy.
    folders: std::sync::Arc<listcache::Cache>,
}

impl Store {
    /// Open the store at `root`, creating that one folder if it is missing (its parent
    /// must exist). `fsync` makes every commit durable before it returns.
    pub fn new(root: &Path, fsync: bool) -> io::Result<Store> {
        match std::fs::create_dir(root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let root_dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(root)?;
        // Probing with a read changes nothing: a filesystem without user xattrs says
        // EOPNOTSUPP, one with them says "no such attribute".
        let xattrs = !matches!(
            root_dir.get_xattr("user.lakegate.probe"),
            Err(e) if is_unsupported(&e)
        );
        if !xattrs {
            tracing::warn!(
                root = %root.display(),
                "the store's filesystem does not keep user extended attributes; \
                 every GET and HEAD will re-hash the whole object to find its SHA-256"
            );
        }
        Ok(Store {
            root: root.to_path_buf(),
            root_dir,
            fsync,
            xattrs,
            folders: listcache::shared(),
        })
    }

    /// Folder walks served from kept sorted entries, folders read to be kept, and
    /// folders read and found too large to keep ([`listcache`]).
    pub fn list_cache_stats(&self) -> (u64, u64, u64) {
        self.folders.stats()
    }

    /// The process's LIST folder cache as the scrape shows it: one cache whatever store
    /// a reload opens, so this needs no store.
    pub fn list_cache_snapshot() -> crate::telemetry::ListCacheStats {
        listcache::shared().snapshot()
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the filesystem keeps the extended attributes that hold an object's MD5
    /// ETag, Content-Type and user metadata; without them those cannot be stored.
    pub fn keeps_attributes(&self) -> bool {
        self.xattrs
    }

    /// The root folder's descriptor: where a caller that runs the open syscalls itself
    /// (the engine, on its io_uring ring; see [`open`]) starts every lookup.
    pub fn root_dir(&self) -> &File {
        &self.root_dir
    }

    /// Held around the rename (or unlink) that changes which object a key names, and
    /// across an `If-Match` check and its rename, so that no other commit or delete
    /// slips between the check and the write. One for the process, not one per
    /// `Store`: a reload builds a new `Store` while requests on the old one finish.
    /// Not on the per-byte path: one short critical section per commit.
    ///
    /// Blocking: for the pool's threads and callers outside the engine. A worker takes
    /// [`commit_lock`] with `.lock().await` instead, so that waiting for it never stops
    /// its loop, and holds it across its ring rename.
    fn lock(&self) -> tokio::sync::MutexGuard<'static, ()> {
        commit_lock().blocking_lock()
    }

    /// CreateBucket: a new folder for `bucket` under the root. `AlreadyExists` if
    /// there is one (or anything else by that name).
    pub fn create_bucket_new(&self, bucket: &str) -> io::Result<()> {
        validate_bucket(bucket)?;
        sys::mkdir_at(&self.root_dir, &sys::cstr(bucket)?, 0o750)?;
        if self.fsync {
            self.root_dir.sync_all()?;
        }
        Ok(())
    }

    /// DeleteBucket: remove the bucket's folder if it holds no object (and no
    /// multipart upload, temporary or anything else): `DirectoryNotEmpty` otherwise.
    /// An empty upload folder is removed with it. Nothing is ever removed recursively,
    /// so a racing PUT either lands first (and the bucket stays) or finds no bucket.
    pub fn delete_bucket(&self, bucket: &str) -> io::Result<()> {
        let dir = self.bucket_dir(bucket)?;
        let not_empty =
            |why: &str| io::Error::new(io::ErrorKind::DirectoryNotEmpty, why.to_owned());
        if has_object(&dir, 0)? {
            return Err(not_empty("the bucket holds objects"));
        }
        match sys::unlink_at(&dir, &sys::cstr(multipart::MPU_DIR)?, libc::AT_REMOVEDIR) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                return Err(not_empty("the bucket has multipart uploads in progress"))
            }
            Err(e) => return Err(e),
        }
        match sys::unlink_at(&self.root_dir, &sys::cstr(bucket)?, libc::AT_REMOVEDIR) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                return Err(not_empty("the bucket folder is not empty"))
            }
            Err(e) => return Err(e),
        }
        if self.fsync {
            self.root_dir.sync_all()?;
        }
        Ok(())
    }

    /// Every bucket: folders directly under the root whose names are valid bucket
    /// names (never a symlink), sorted, with their creation time (birth time where the
    /// filesystem keeps it, else the last change of the folder).
    pub fn list_buckets(&self) -> io::Result<Vec<(String, SystemTime)>> {
        let mut out = Vec::new();
        for (name, kind) in sys::read_dir(&self.root_dir)? {
            if validate_bucket(&name).is_err()
                || resolve_kind(&self.root_dir, &name, kind)? != Kind::Dir
            {
                continue;
            }
            let Ok(md) = self.bucket_dir(&name).and_then(|d| d.metadata()) else {
                continue; // removed or replaced meanwhile
            };
            let created = md.created().or_else(|_| md.modified())?;
            out.push((name, created));
        }
        out.sort();
        Ok(out)
    }

    /// Create the folder for `bucket` under the root if it is missing (the operator's or
    /// the configuration's job; the HTTP API never creates buckets).
    pub fn create_bucket(&self, bucket: &str) -> io::Result<()> {
        validate_bucket(bucket)?;
        match sys::mkdir_at(&self.root_dir, &sys::cstr(bucket)?, 0o750) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if self.fsync {
            self.root_dir.sync_all()?;
        }
        self.bucket_dir(bucket).map(drop)
    }

    /// Remove temporaries (`.lakegate-tmp-*` in every bucket folder) left by a crash;
    /// returns how many. Call it before serving: a temporary of a running upload looks
    /// the same as a stale one.
    pub fn clean_stale_temporaries(&self) -> io::Result<usize> {
        let mut removed = 0;
        for (name, kind) in sys::read_dir(&self.root_dir)? {
            if validate_bucket(&name).is_err()
                || resolve_kind(&self.root_dir, &name, kind)? != Kind::Dir
            {
                continue;
            }
            let dir = match self.bucket_dir(&name) {
                Ok(dir) => dir,
                Err(_) => continue, // raced with its removal or replacement
            };
            for (entry, _) in sys::read_dir(&dir)? {
                if entry.starts_with(TEMP_PREFIX)
                    && sys::unlink_at(&dir, &sys::cstr(&entry)?, 0).is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Open the bucket's folder directly under the root (`O_DIRECTORY | O_NOFOLLOW`).
    /// `NotFound` if there is no such folder; `PermissionDenied` if it is a symlink.
    pub fn bucket_dir(&self, bucket: &str) -> io::Result<File> {
        validate_bucket(bucket)?;
        open_dir_nofollow(&self.root_dir, bucket).map_err(|e| open::bucket_error(bucket, e))
    }

    /// Create and open a new temporary file in the bucket folder for writing:
    /// `.lakegate-tmp-<32 random hex>`, `O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC`, mode
    /// 0644 (less the umask). Returns the file and the temporary's name.
    pub fn create_temp(&self, bucket: &str) -> io::Result<(File, String)> {
        let dir = self.bucket_dir(bucket)?;
        for _ in 0..open::TEMP_TRIES {
            let (name, c) = open::temp_name()?;
            match sys::open_at(&dir, &c, open::TEMP_FLAGS, open::TEMP_MODE) {
                Ok(file) => return Ok((file, name)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(open::no_temp_name())
    }

    /// Make an upload visible under `key`: record the SHA-256 in the temporary's extended
    /// attributes, fsync it (if configured), create the key's parent folders beneath the
    /// bucket without following symlinks (a symlink component is `PermissionDenied`),
    /// rename the temporary onto the key, and fsync the folders whose entries changed
    /// (if configured). On any failure the temporary is removed before returning.
    pub fn commit(
        &self,
        bucket: &str,
        temp: &str,
        key: &str,
        file: &File,
        sha256_hex: &str,
    ) -> io::Result<()> {
        self.commit_tagged(bucket, temp, key, file, Tag::Sha256(sha256_hex))
    }

    /// [`Store::commit`] with the SHA-256 or, for an assembled multipart upload, the
    /// multipart ETag.
    pub fn commit_tagged(
        &self,
        bucket: &str,
        temp: &str,
        key: &str,
        file: &File,
        tag: Tag<'_>,
    ) -> io::Result<()> {
        self.commit_with(bucket, temp, key, file, tag, CommitOpts::default())
    }

    /// [`Store::commit_tagged`] that also records the MD5 ETag and the metadata of
    /// `opts`, and renames only if its write conditions hold at that moment
    /// ([`PreconditionFailed`] otherwise, and nothing changes).
    pub fn commit_with(
        &self,
        bucket: &str,
        temp: &str,
        key: &str,
        file: &File,
        tag: Tag<'_>,
        opts: CommitOpts<'_>,
    ) -> io::Result<()> {
        let result = self.commit_inner(bucket, temp, key, file, tag, opts);
        if result.is_err() {
            self.discard_temp(bucket, temp);
        }
        result
    }

    fn commit_inner(
        &self,
        bucket: &str,
        temp: &str,
        key: &str,
        file: &File,
        tag: Tag<'_>,
        opts: CommitOpts<'_>,
    ) -> io::Result<()> {
        self.commit_prepare(temp, key, file, tag, opts)?;
        let dir = self.bucket_dir(bucket)?;
        if self.fsync {
            file.sync_all()?;
        }

        let temp_c = sys::cstr(temp)?;
        let (parents, leaf) = match key.rsplit_once('/') {
            Some((parents, leaf)) => (Some(parents), leaf),
            None => (None, key),
        };
        let leaf_c = sys::cstr(leaf)?;
        let mut tries = 0;
        loop {
            let parent = match parents {
                Some(parents) => Some(self.make_parents(&dir, parents)?),
                None => None,
            };
            let target = parent.as_ref().unwrap_or(&dir);
            match self.place(&dir, &temp_c, target, &leaf_c, key, opts.cond) {
                Ok(()) => {
                    // The folders the rename changed (those made were synced as made).
                    if self.fsync {
                        target.sync_all()?;
                        if parent.is_some() {
                            dir.sync_all()?;
                        }
                    }
                    return Ok(());
                }
                Err(e) if commit_retries(&e, parent.is_some(), &mut tries) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A commit's first step, before its fsync: check the key, the temporary's name and
    /// the tag, that the upload is a regular file, and record the tag, the MD5 and the
    /// metadata of `opts` in its extended attributes (before the fsync, so that one
    /// fsync makes them durable too).
    pub fn commit_prepare(
        &self,
        temp: &str,
        key: &str,
        file: &File,
        tag: Tag<'_>,
        opts: CommitOpts<'_>,
    ) -> io::Result<()> {
        validate_key(key)?;
        open::check_temp_name(temp)?;
        let well_formed = match tag {
            Tag::Sha256(h) => is_sha256_hex(h),
            Tag::Multipart(e) => is_multipart_etag(e),
        };
        if !well_formed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "SHA-256 must be 64 lowercase hex digits, a multipart ETag <32 hex>-<parts>",
            ));
        }
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the upload is not a regular file",
            ));
        }
        if self.xattrs {
            match tag {
                Tag::Sha256(h) => store_sha256(file, h, &Stamp::of(&md).text())?,
                Tag::Multipart(e) => store_xattr(file, XATTR_ETAG, e, &Stamp::of(&md).text())?,
            }
            if let (Tag::Sha256(_), Some(m)) = (tag, opts.md5_hex) {
                if !(m.len() == 32 && m.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "MD5 must be 32 lowercase hex digits",
                    ));
                }
                store_xattr(file, XATTR_MD5, m, &Stamp::of(&md).text())?;
            }
        }
        if let Some(meta) = opts.meta.filter(|m| !m.is_empty()) {
            if !self.xattrs {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the store's filesystem keeps no user extended attributes for metadata",
                ));
            }
            let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
            // Not store_xattr: metadata that cannot be kept must fail the write.
            file.set_xattr(XATTR_META, &json)?;
        }
        Ok(())
    }

    /// Rename the temporary `temp` in the bucket folder `dir` onto `leaf` in `target`
    /// (the key's parent folder), under the commit lock, if the write conditions hold
    /// at that moment ([`PreconditionFailed`] otherwise, and nothing changes).
    pub fn place(
        &self,
        dir: &File,
        temp: &CStr,
        target: &File,
        leaf: &CStr,
        key: &str,
        cond: Option<&s3::WriteConditions>,
    ) -> io::Result<()> {
        match cond.filter(|c| !c.is_empty()) {
            None => {
                let _g = self.lock();
                sys::rename_at(dir, temp, target, leaf)
            }
            Some(c) if c.if_none_match_star && c.if_match.is_none() => {
                // The kernel refuses to replace: atomic against every writer, this
                // process or another.
                match sys::rename_noreplace(dir, temp, target, leaf) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(io::Error::other(
                        PreconditionFailed("an object has the key"),
                    )),
                    r => r,
                }
            }
            Some(c) => {
                let _g = self.lock();
                let current = match open_object_at(dir, key) {
                    Ok(f) => Some(object_meta(&f, self.xattrs)?.etag()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                if c.holds(current.as_deref()) {
                    sys::rename_at(dir, temp, target, leaf)
                } else {
                    Err(io::Error::other(PreconditionFailed(
                        "the object at the key does not match If-Match / If-None-Match",
                    )))
                }
            }
        }
    }

    /// Whether the store fsyncs what it writes (the `fsync` setting).
    pub fn fsyncs(&self) -> bool {
        self.fsync
    }

    /// Create (if missing) and open each folder of `parents` beneath `dir`, one component
    /// at a time, never following a symlink. When fsyncing, a folder that got a new
    /// entry is synced before going deeper: a deep key holds two descriptors at a time,
    /// not one per folder made.
    fn make_parents(&self, dir: &File, parents: &str) -> io::Result<File> {
        let mut cur: Option<File> = None;
        for component in parents.split('/') {
            let at = cur.as_ref().unwrap_or(dir);
            let name = sys::cstr(component)?;
            let created = match sys::mkdir_at(at, &name, FOLDER_MODE) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            };
            if created && self.fsync {
                at.sync_all()?;
            }
            cur = Some(open_dir_nofollow(at, component)?);
        }
        cur.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent folder"))
    }

    /// Remove a temporary, best effort (any failure of an upload: 400, 507, disconnect).
    pub fn discard_temp(&self, bucket: &str, temp: &str) {
        if open::check_temp_name(temp).is_err() {
            return;
        }
        let Ok(dir) = self.bucket_dir(bucket) else {
            return;
        };
        if let Ok(name) = sys::cstr(temp) {
            let _ = sys::unlink_at(&dir, &name, 0);
        }
    }

    /// Open an object for reading, resolved strictly beneath its bucket (`openat2` with
    /// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`), with its
    /// metadata. The SHA-256 comes from the extended attribute when it is current;
    /// otherwise it is computed from the bytes once and stored.
    ///
    /// `NotFound` for a missing key, a folder or anything but a regular file; `ELOOP`
    /// (403) when a symlink lies on the way.
    pub fn open_object(&self, bucket: &str, key: &str) -> io::Result<(File, ObjectMeta)> {
        validate_key(key)?;
        let dir = self.bucket_dir(bucket)?;
        let file = open_object_at(&dir, key)?;
        let meta = object_meta(&file, self.xattrs)?;
        Ok((file, meta))
    }

    /// The metadata of an open object, hashing its bytes (and storing the digest) when
    /// no current one is stored: blocks for as long as reading the whole file takes.
    pub fn object_meta(&self, file: &File) -> io::Result<ObjectMeta> {
        object_meta(file, self.xattrs)
    }

    /// The metadata [`Store::open_object`] would return, without keeping the file.
    pub fn head_object(&self, bucket: &str, key: &str) -> io::Result<ObjectMeta> {
        self.open_object(bucket, key).map(|(_, meta)| meta)
    }

    /// Delete an object (`unlinkat` beneath the bucket, parents opened without following
    /// symlinks), then remove parent folders that became empty, up to but not including
    /// the bucket. `NotFound` if there is no such object; `PermissionDenied` if the key
    /// or a parent is a symlink.
    pub fn delete_object(&self, bucket: &str, key: &str) -> io::Result<()> {
        validate_key(key)?;
        let dir = self.bucket_dir(bucket)?;
        let components: Vec<&str> = key.split('/').collect();
        let Some((leaf, parents)) = components.split_last() else {
            return Err(KeyError::Empty.into());
        };
        let mut chain: Vec<File> = Vec::with_capacity(parents.len());
        for component in parents {
            let at = chain.last().unwrap_or(&dir);
            let next = open_dir_nofollow(at, component).map_err(not_dir_is_not_found)?;
            chain.push(next);
        }
        let parent = chain.last().unwrap_or(&dir);
        let leaf_c = sys::cstr(leaf)?;
        match Kind::of_mode(sys::stat_mode_at(parent, &leaf_c)?) {
            Kind::File => {}
            Kind::Symlink => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the key names a symlink, which is not an object",
                ))
            }
            _ => return Err(not_found("the key names no object")),
        }
        {
            let _g = self.lock();
            sys::unlink_at(parent, &leaf_c, 0).map_err(not_dir_is_not_found)?;
        }

        // Prune folders that became empty, deepest first; stop at the first that is not.
        let mut last_changed = parent;
        for depth in (0..parents.len()).rev() {
            let holder = match depth.checked_sub(1) {
                Some(i) => chain.get(i).unwrap_or(&dir),
                None => &dir,
            };
            let Some(name) = parents.get(depth) else {
                break;
            };
            if sys::unlink_at(holder, &sys::cstr(name)?, libc::AT_REMOVEDIR).is_err() {
                break;
            }
            last_changed = holder;
        }
        if self.fsync {
            last_changed.sync_all()?;
        }
        Ok(())
    }

    /// ListObjectsV2: keys of regular files under the bucket that start with `prefix`,
    /// sorted bytewise, strictly after `start_after`, at most `max_keys` (capped at
    /// [`MAX_LIST_KEYS`]). Temporaries, symlinks, special files and names that are not
    /// valid keys are skipped; no symlink is followed.
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> io::Result<Listing> {
        self.list_delimited(bucket, prefix, None, start_after, max_keys)
    }

    /// [`Store::list`] with a `delimiter`: a key whose rest after `prefix` holds the
    /// delimiter is rolled up into the common prefix that ends with its first
    /// occurrence; common prefixes and keys share one sorted page of `max_keys`. A
    /// folder whose keys all roll up into one common prefix is not walked beyond its
    /// first object.
    ///
    /// Memory per call is bounded whatever the bucket's size: the page being picked
    /// (`max_keys + 1` ≤ 1,001 names of ≤ 1,024 bytes, about 1 MiB at worst) plus one
    /// [`sys::DIRENT_BUF`] (32 KiB) `getdents64` buffer and one descriptor per folder
    /// level open in the walk; entries are streamed from that buffer. Besides, a large
    /// folder that has not changed for two seconds is read once, sorted, and kept for
    /// the next pages in the process's [`listcache`], all such folders together at most
    /// [`listcache::BUDGET`] (128 MiB); a page of a kept folder starts by binary search
    /// and stops when full. Time is not bounded (a folder not kept is read whole on
    /// every page): call it off any event loop.
    pub fn list_delimited(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> io::Result<Listing> {
        let dir = self.bucket_dir(bucket)?;
        let max_keys = max_keys.min(MAX_LIST_KEYS);
        if max_keys == 0 {
            return Ok(Listing {
                entries: Vec::new(),
                common_prefixes: Vec::new(),
                truncated: false,
                next_start_after: None,
            });
        }
        let mut pick = Picker {
            folders: &self.folders,
            prefix,
            delimiter: delimiter.filter(|d| !d.is_empty()),
            after: start_after,
            limit: max_keys + 1,
            best: BTreeSet::new(),
        };
        let mut base = String::new();
        walk(&dir, &mut base, &mut pick)?;

        let mut keys: Vec<String> = std::mem::take(&mut pick.best).into_iter().collect();
        let truncated = keys.len() > max_keys;
        keys.truncate(max_keys);
        let next_start_after = if truncated {
            keys.last().cloned()
        } else {
            None
        };
        let mut entries = Vec::with_capacity(keys.len());
        let mut common_prefixes = Vec::new();
        for key in keys {
            if pick.rollup(&key).is_some() {
                common_prefixes.push(key);
                continue;
            }
            let meta = open_object_at(&dir, &key).and_then(|f| object_meta(&f, self.xattrs));
            match meta {
                Ok(meta) => entries.push((key, meta)),
                // Deleted or replaced since the walk saw it.
                Err(e) if status_for_io(&e) == 404 || status_for_io(&e) == 403 => {}
                Err(e) => {
                    tracing::warn!(bucket, key = %key, error = %e, "listing skips an unreadable object");
                }
            }
        }
        Ok(Listing {
            entries,
            common_prefixes,
            truncated,
            next_start_after,
        })
    }
}

/// What the store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Length in bytes.
    pub size: u64,
    /// Last modification time.
    pub mtime: SystemTime,
    /// SHA-256 of the bytes, lowercase hex; `None` for an object assembled from a
    /// multipart upload, whose bytes were never hashed whole (its ETag is then
    /// [`ObjectMeta::multipart_etag`]).
    pub sha256_hex: Option<String>,
    /// The S3 multipart ETag (`<hex>-<parts>`, without quotes) of an object assembled by
    /// CompleteMultipartUpload, while its bytes are unchanged.
    pub multipart_etag: Option<String>,
    /// The MD5 (lowercase hex) recorded when the object was stored under
    /// `etag = "md5"`, while its bytes are unchanged: then its ETag.
    pub md5_hex: Option<String>,
}

/// What a commit records besides the SHA-256 (or multipart) tag, and the write
/// conditions it checks atomically with the rename.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitOpts<'a> {
    /// The MD5 (lowercase hex) of a single-part object, to be its ETag.
    pub md5_hex: Option<&'a str>,
    /// `Content-Type` and user metadata.
    pub meta: Option<&'a s3::Metadata>,
    /// `If-None-Match: *` / `If-Match`.
    pub cond: Option<&'a s3::WriteConditions>,
}

/// A write's precondition did not hold at its commit; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("precondition failed: {0}")]
pub struct PreconditionFailed(pub &'static str);

/// What [`Store::commit_tagged`] records on an object: its SHA-256 (a single PUT, a
/// copy), or the multipart ETag of an assembled upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag<'a> {
    /// SHA-256, 64 lowercase hex digits.
    Sha256(&'a str),
    /// `<32 hex>-<parts>`.
    Multipart(&'a str),
}

impl ObjectMeta {
    /// The `ETag` header value in double quotes: the multipart ETag, else the MD5 the
    /// object was stored with, else the SHA-256 hex (objects stored before MD5 ETags,
    /// or under `etag = "sha256"`, keep answering with what they have).
    pub fn etag(&self) -> String {
        match (&self.multipart_etag, &self.md5_hex, &self.sha256_hex) {
            (Some(m), _, _) => format!("\"{m}\""),
            (None, Some(md5), _) => format!("\"{md5}\""),
            (None, None, Some(sha)) => format!("\"{sha}\""),
            (None, None, None) => "\"\"".to_owned(),
        }
    }

    /// Unix seconds of the last modification (the grain of HTTP dates).
    pub fn mtime_secs(&self) -> u64 {
        self.mtime
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// How a copy of this object is tagged.
    pub fn tag(&self) -> Option<Tag<'_>> {
        match (&self.multipart_etag, &self.sha256_hex) {
            (Some(m), _) => Some(Tag::Multipart(m)),
            (None, Some(s)) => Some(Tag::Sha256(s)),
            (None, None) => None,
        }
    }

    /// `Last-Modified` as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub fn last_modified_http(&self) -> String {
        const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        let t = Civil::of(self.mtime);
        format!(
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            DAYS.get(t.weekday).unwrap_or(&"Sun"),
            t.day,
            MONTHS.get(t.month.saturating_sub(1)).unwrap_or(&"Jan"),
            t.year,
            t.hour,
            t.minute,
            t.second
        )
    }

    /// `LastModified` for S3 listings: ISO 8601 UTC with milliseconds,
    /// e.g. `2026-11-29T02:03:04.000Z`.
    pub fn last_modified_iso(&self) -> String {
        let t = Civil::of(self.mtime);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
        )
    }

    /// `x-amz-checksum-sha256`: the SHA-256 in standard base64; empty if the hex is not a
    /// SHA-256 (which the store never produces).
    pub fn checksum_sha256_b64(&self) -> String {
        unhex32(self.sha256_hex.as_deref().unwrap_or(""))
            .map(|raw| base64::engine::general_purpose::STANDARD.encode(raw))
            .unwrap_or_default()
    }
}

/// One page of a bucket listing.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Keys with their metadata, sorted bytewise.
    pub entries: Vec<(String, ObjectMeta)>,
    /// Common prefixes (with a delimiter), sorted bytewise.
    pub common_prefixes: Vec<String>,
    /// More keys follow this page.
    pub truncated: bool,
    /// Where the next page starts (exclusive) when `truncated`.
    pub next_start_after: Option<String>,
}

/// S3 ListObjectsV2 result XML (`ListBucketResult`): Name, Prefix, KeyCount, MaxKeys,
/// IsTruncated, ContinuationToken (echoed when given), NextContinuationToken (base64url of
/// [`Listing::next_start_after`]) and one Contents per entry (Key, LastModified, ETag,
/// Size, StorageClass STANDARD). Text is XML-escaped; with `url_encode`
/// (`encoding-type=url`) Prefix and Key are percent-encoded first and EncodingType says
/// so, which is how S3 carries keys that XML 1.0 cannot.
pub fn list_xml(
    bucket: &str,
    prefix: &str,
    max_keys: usize,
    continuation: Option<&str>,
    l: &Listing,
    url_encode: bool,
) -> String {
    list_result_xml(
        &ListXml {
            v2: true,
            bucket,
            prefix,
            delimiter: None,
            max_keys,
            continuation,
            start_after: None,
            url_encode,
        },
        l,
    )
}

/// What a `ListBucketResult` echoes of its request.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListXml<'a> {
    /// ListObjectsV2 (KeyCount, continuation tokens) or ListObjects (Marker, NextMarker).
    pub v2: bool,
    /// The bucket.
    pub bucket: &'a str,
    /// `prefix`.
    pub prefix: &'a str,
    /// `delimiter`.
    pub delimiter: Option<&'a str>,
    /// `max-keys`.
    pub max_keys: usize,
    /// v2: `continuation-token` as sent.
    pub continuation: Option<&'a str>,
    /// v2: `start-after`; v1: `marker`.
    pub start_after: Option<&'a str>,
    /// `encoding-type=url`.
    pub url_encode: bool,
}

/// The `ListBucketResult` of ListObjectsV2 or ListObjects (v1), with CommonPrefixes
/// when a delimiter was given. See [`list_xml`].
pub fn list_result_xml(q: &ListXml<'_>, l: &Listing) -> String {
    let enc = |s: &str| {
        if q.url_encode {
            let mut e = String::with_capacity(s.len());
            s3::url_encode_into(&mut e, s);
            e
        } else {
            xml_escape(s)
        }
    };
    let mut x = String::with_capacity(256 + l.entries.len() * 256);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str("<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    let _ = write!(
        x,
        "<Name>{}</Name><Prefix>{}</Prefix>",
        xml_escape(q.bucket),
        enc(q.prefix)
    );
    if q.v2 {
        let _ = write!(
            x,
            "<KeyCount>{}</KeyCount>",
            l.entries.len() + l.common_prefixes.len()
        );
    } else {
        let _ = write!(x, "<Marker>{}</Marker>", enc(q.start_after.unwrap_or("")));
    }
    let _ = write!(
        x,
        "<MaxKeys>{}</MaxKeys><IsTruncated>{}</IsTruncated>",
        q.max_keys.min(MAX_LIST_KEYS),
        l.truncated
    );
    if let Some(d) = q.delimiter {
        let _ = write!(x, "<Delimiter>{}</Delimiter>", enc(d));
    }
    if q.url_encode {
        x.push_str("<EncodingType>url</EncodingType>");
    }
    if q.v2 {
        if let Some(token) = q.continuation {
            let _ = write!(
                x,
                "<ContinuationToken>{}</ContinuationToken>",
                xml_escape(token)
            );
        }
        if let Some(sa) = q.start_after {
            let _ = write!(x, "<StartAfter>{}</StartAfter>", enc(sa));
        }
    }
    if let (true, Some(next)) = (l.truncated, &l.next_start_after) {
        if q.v2 {
            let _ = write!(
                x,
                "<NextContinuationToken>{}</NextContinuationToken>",
                encode_continuation(next)
            );
        } else {
            let _ = write!(x, "<NextMarker>{}</NextMarker>", enc(next));
        }
    }
    for (key, meta) in &l.entries {
        let _ = write!(
            x,
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            enc(key),
            meta.last_modified_iso(),
            xml_escape(&meta.etag()),
            meta.size
        );
    }
    for cp in &l.common_prefixes {
        let _ = write!(
            x,
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            enc(cp)
        );
    }
    x.push_str("</ListBucketResult>");
    x
}

/// The continuation token for a listing that resumes after `start_after`: base64url
/// without padding.
pub fn encode_continuation(start_after: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(start_after)
}

/// The key a continuation token resumes after; `None` if the token is not one of ours.
pub fn decode_continuation(token: &str) -> Option<String> {
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let raw = LENIENT.decode(token.trim()).ok()?;
    if raw.len() > MAX_KEY_LEN {
        return None;
    }
    String::from_utf8(raw).ok()
}

/// Streaming integrity of a request body: SHA-256 always (it is the ETag), MD5, CRC-32
/// and SHA-1 only when the request carries a checksum of that kind.
pub struct BodyHasher {
    sha256: aws_lc_rs::digest::Context,
    md5: Option<md5::Md5>,
    crc32: Option<crc32fast::Hasher>,
    sha1: Option<aws_lc_rs::digest::Context>,
}

impl BodyHasher {
    /// A hasher; `want_md5` when the request carries `Content-MD5`.
    pub fn new(want_md5: bool) -> Self {
        Self::with(want_md5, false, false)
    }

    /// A hasher that also computes MD5, CRC-32 and SHA-1 as asked.
    pub fn with(md5: bool, crc32: bool, sha1: bool) -> Self {
        BodyHasher {
            sha256: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            md5: md5.then(md5::Md5::new),
            crc32: crc32.then(crc32fast::Hasher::new),
            sha1: sha1.then(|| {
                aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY)
            }),
        }
    }

    /// Feed the next body bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(md5) = &mut self.md5 {
            md5.update(data);
        }
        if let Some(crc) = &mut self.crc32 {
            crc.update(data);
        }
        if let Some(sha1) = &mut self.sha1 {
            sha1.update(data);
        }
    }

    /// The digests of everything fed.
    pub fn finish(self) -> Digests {
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(self.sha256.finish().as_ref());
        Digests {
            sha256,
            md5: self.md5.map(|m| m.finalize().into()),
            crc32: self.crc32.map(|c| c.finalize().to_be_bytes()),
            sha1: self.sha1.and_then(|c| c.finish().as_ref().try_into().ok()),
        }
    }
}

/// The digests of a complete body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// SHA-256.
    pub sha256: [u8; 32],
    /// MD5, when it was asked for.
    pub md5: Option<[u8; 16]>,
    /// CRC-32 (big-endian, as S3 encodes it), when asked for.
    pub crc32: Option<[u8; 4]>,
    /// SHA-1, when asked for.
    pub sha1: Option<[u8; 20]>,
}

impl Digests {
    /// The digests as [`s3::PutSpec::verify`] compares them.
    pub fn as_body(&self) -> s3::BodyDigests<'_> {
        s3::BodyDigests {
            sha256: &self.sha256,
            md5: self.md5.as_ref(),
            crc32: self.crc32.as_ref(),
            sha1: self.sha1.as_ref(),
        }
    }

    /// SHA-256 as lowercase hex (the ETag and the stored attribute).
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// MD5 as lowercase hex (a part's ETag), when it was computed.
    pub fn md5_hex(&self) -> Option<String> {
        self.md5.map(|m| hex(&m))
    }

    /// Verify a client-sent `x-amz-checksum-sha256` and/or `Content-MD5` (both base64).
    /// `Err(reason)` on a mismatch or a malformed value: the request is a 400 and nothing
    /// is stored.
    pub fn verify(
        &self,
        amz_sha256_b64: Option<&str>,
        content_md5_b64: Option<&str>,
    ) -> Result<(), String> {
        if let Some(value) = amz_sha256_b64 {
            let want: [u8; 32] = decode_b64_exact(value)
                .ok_or("x-amz-checksum-sha256 is not the base64 of 32 bytes")?;
            if want != self.sha256 {
                return Err("x-amz-checksum-sha256 does not match the body".to_owned());
            }
        }
        if let Some(value) = content_md5_b64 {
            let want: [u8; 16] =
                decode_b64_exact(value).ok_or("Content-MD5 is not the base64 of 16 bytes")?;
            match self.md5 {
                None => {
                    return Err(
                        "Content-MD5 was sent but the body's MD5 was not computed".to_owned()
                    )
                }
                Some(got) if got != want => {
                    return Err("Content-MD5 does not match the body".to_owned())
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// What the filesystem said, as a [`Fault`]: the one place the store reads an errno.
/// ENOENT → not_found; ENOSPC/EDQUOT → no_space; EACCES/EPERM/ELOOP (a symlink on
/// the way) → denied; ENOTDIR/EISDIR/ENOTEMPTY (a key that collides with a folder, or
/// an object used as a folder) → conflict; ENAMETOOLONG; EFBIG → too_large; EROFS →
/// read_only; EMFILE/ENFILE → no_descriptors; EIO → io; our own refused input →
/// invalid; a lost precondition → precondition; anything else → other.
pub fn fault_of(e: &io::Error) -> Fault {
    if e.get_ref().is_some_and(|i| i.is::<PreconditionFailed>()) {
        return Fault::Precondition;
    }
    if e.kind() == io::ErrorKind::Unsupported {
        return Fault::Unsupported;
    }
    if let Some(code) = e.raw_os_error() {
        match code {
            libc::ENOENT => return Fault::NotFound,
            libc::ENOSPC | libc::EDQUOT => return Fault::NoSpace,
            libc::EACCES | libc::EPERM | libc::ELOOP => return Fault::Denied,
            libc::ENOTDIR | libc::EISDIR | libc::ENOTEMPTY => return Fault::Conflict,
            libc::ENAMETOOLONG => return Fault::NameTooLong,
            libc::EFBIG => return Fault::TooLarge,
            libc::EROFS => return Fault::ReadOnly,
            libc::EMFILE | libc::ENFILE => return Fault::NoDescriptors,
            libc::EIO => return Fault::Io,
            _ => {}
        }
    }
    match e.kind() {
        io::ErrorKind::NotFound => Fault::NotFound,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Fault::NoSpace,
        io::ErrorKind::PermissionDenied => Fault::Denied,
        io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::DirectoryNotEmpty => Fault::Conflict,
        io::ErrorKind::InvalidInput => Fault::Invalid,
        io::ErrorKind::FileTooLarge => Fault::TooLarge,
        io::ErrorKind::ReadOnlyFilesystem => Fault::ReadOnly,
        _ => Fault::Other,
    }
}

/// The S3 code of an I/O error of the store ([`fault_of`], then [`Fault::code`]):
/// `not_found` is NoSuchKey or NoSuchBucket, which only the caller knows.
pub fn code_for_io(e: &io::Error, not_found: Code) -> Code {
    fault_of(e).code(not_found)
}

/// An I/O error of the store as the S3 error it is answered with, carrying its fault
/// (for the log line and `lakegate_store_errors_total`) and the OS error as the detail.
pub fn io_error(e: &io::Error, not_found: Code) -> s3::Error {
    s3::Error::store(fault_of(e), not_found, e)
}

/// The HTTP status of [`code_for_io`] (404 for a missing key).
pub fn status_for_io(e: &io::Error) -> u16 {
    code_for_io(e, Code::NoSuchKey).status()
}

/// The S3 error for a refused bucket name or key: the rule broken is about the
/// client's own request, so it is the message.
pub fn key_error(e: &KeyError) -> s3::Error {
    let code = match e {
        KeyError::BadBucket(_) => Code::InvalidBucketName,
        KeyError::TooLong => Code::KeyTooLongError,
        _ => Code::InvalidArgument,
    };
    s3::Error::msg(code, e.to_string())
}

// ---------------------------------------------------------------------------------------
// Resolution helpers.

/// What a directory entry is, never looking through a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
    /// The directory entry did not say (`DT_UNKNOWN`); ask with `fstatat`.
    Unknown,
}

impl Kind {
    fn of_mode(mode: libc::mode_t) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// `kind` from the directory entry, or from `fstatat(AT_SYMLINK_NOFOLLOW)` when the
/// filesystem did not fill it in.
fn resolve_kind(dir: &File, name: &str, kind: Kind) -> io::Result<Kind> {
    if kind != Kind::Unknown {
        return Ok(kind);
    }
    match sys::stat_mode_at(dir, &sys::cstr(name)?) {
        Ok(mode) => Ok(Kind::of_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Kind::Other),
        Err(e) => Err(e),
    }
}

/// The mode of the folders a commit makes for a key's parents (less the umask).
pub const FOLDER_MODE: libc::mode_t = 0o750;

/// The commit lock of [`Store::lock`]: one for the process, taken by the pool's
/// threads (blocking) and by the workers (awaited, so that a worker waiting for it
/// keeps serving its other connections). An async lock because a worker holds it
/// across its ring rename; it is never held across anything else that waits.
pub fn commit_lock() -> &'static tokio::sync::Mutex<()> {
    static COMMIT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    &COMMIT_LOCK
}

/// Whether a commit's rename that failed with `e` is tried again: a concurrent DELETE
/// pruned a parent folder that had just become empty between the mkdir and the
/// rename (`NotFound`), which making the folders again fixes; at most three times.
pub fn commit_retries(e: &io::Error, has_parent: bool, tries: &mut u32) -> bool {
    if e.kind() == io::ErrorKind::NotFound && has_parent && *tries < 3 {
        *tries += 1;
        return true;
    }
    false
}

/// Open the folder `name` in `at` without following a symlink. A symlink is
/// `PermissionDenied` (the kernel says `ELOOP` or, with `O_DIRECTORY`, `ENOTDIR`, so the
/// latter is checked with `fstatat`); any other non-folder keeps `ENOTDIR`.
fn open_dir_nofollow(at: &File, name: &str) -> io::Result<File> {
    let c = sys::cstr(name)?;
    sys::open_at(at, &c, open::DIR_FLAGS, 0).map_err(|e| {
        let symlink = match e.raw_os_error() {
            Some(libc::ELOOP) => true,
            Some(libc::ENOTDIR) => {
                sys::stat_mode_at(at, &c).is_ok_and(|m| Kind::of_mode(m) == Kind::Symlink)
            }
            _ => false,
        };
        open::dir_error(name, e, symlink)
    })
}

/// Open `key` for reading strictly beneath the bucket folder `dir`; only regular files.
fn open_object_at(dir: &File, key: &str) -> io::Result<File> {
    let c = sys::cstr(key)?;
    let mut tries = 0;
    let file = loop {
        match sys::open_beneath(dir, &c, open::OBJECT_FLAGS) {
            Ok(file) => break file,
            Err(e) if open::retry(&e) && tries < open::RETRIES => tries += 1,
            // Kernels before 5.6 (or a seccomp filter) lack openat2: walk instead, which
            // is as strict for validated keys (no "..", not absolute).
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                break walk_open(dir, key, open::OBJECT_FLAGS)?
            }
            Err(e) => return Err(open::object_error(e)),
        }
    };
    if !file.metadata()?.is_file() {
        return Err(open::not_an_object());
    }
    sys::set_nonblocking(&file, false)?;
    Ok(file)
}

/// The openat2 fallback: parents with `O_NOFOLLOW | O_DIRECTORY`, then the leaf with
/// `O_NOFOLLOW`.
fn walk_open(dir: &File, key: &str, flags: libc::c_int) -> io::Result<File> {
    let (parents, leaf) = match key.rsplit_once('/') {
        Some((parents, leaf)) => (Some(parents), leaf),
        None => (None, key),
    };
    let mut cur: Option<File> = None;
    for component in parents.into_iter().flat_map(|p| p.split('/')) {
        let next = open_dir_nofollow(cur.as_ref().unwrap_or(dir), component)
            .map_err(not_dir_is_not_found)?;
        cur = Some(next);
    }
    sys::open_at(cur.as_ref().unwrap_or(dir), &sys::cstr(leaf)?, flags, 0)
}

fn not_found(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, why)
}

/// On a read path, "an object used as a folder" simply means the key does not exist.
fn not_dir_is_not_found(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ENOTDIR) {
        not_found("an object is used as a folder in the key")
    } else {
        e
    }
}

// ---------------------------------------------------------------------------------------
// Metadata.

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::EOPNOTSUPP || code == libc::ENOTSUP)
}

fn store_sha256(file: &File, sha256_hex: &str, stamp: &str) -> io::Result<()> {
    store_xattr(file, XATTR_SHA256, sha256_hex, stamp)
}

fn store_xattr(file: &File, name: &str, value: &str, stamp: &str) -> io::Result<()> {
    let set = file
        .set_xattr(name, value.as_bytes())
        .and_then(|()| file.set_xattr(XATTR_STAMP, stamp.as_bytes()));
    match set {
        Err(e) if is_unsupported(&e) => Ok(()),
        other => other,
    }
}

/// The attributes an object's metadata is read from without touching its bytes, in
/// [`CACHED_ATTRS`]' order; `None` where the attribute is absent or unreadable.
#[derive(Debug, Default, Clone)]
pub struct Attrs {
    /// `user.lakegate.sha256`.
    pub sha256: Option<Vec<u8>>,
    /// `user.lakegate.etag`.
    pub etag: Option<Vec<u8>>,
    /// `user.lakegate.md5`.
    pub md5: Option<Vec<u8>>,
    /// `user.lakegate.stamp`.
    pub stamp: Option<Vec<u8>>,
}

/// The attribute names [`cached_meta_from`] reads, for a caller that reads them itself
/// (the engine does, on its io_uring ring): SHA-256, multipart ETag, MD5, stamp.
pub const CACHED_ATTRS: [&std::ffi::CStr; 4] = [
    c"user.lakegate.sha256",
    c"user.lakegate.etag",
    c"user.lakegate.md5",
    c"user.lakegate.stamp",
];

/// The user-metadata attribute's name, for a caller that reads it itself.
pub const META_ATTR: &std::ffi::CStr = c"user.lakegate.meta";

impl Attrs {
    /// Set the attribute `CACHED_ATTRS[i]`.
    pub fn set(&mut self, i: usize, value: Option<Vec<u8>>) {
        match i {
            0 => self.sha256 = value,
            1 => self.etag = value,
            2 => self.md5 = value,
            3 => self.stamp = value,
            _ => {}
        }
    }

    fn read(file: &File) -> Attrs {
        let get = |name: &str| file.get_xattr(name).ok().flatten();
        Attrs {
            sha256: get(XATTR_SHA256),
            etag: get(XATTR_ETAG),
            md5: get(XATTR_MD5),
            stamp: get(XATTR_STAMP),
        }
    }
}

/// What an object's stored digests were computed for: its size and mtime to the
/// nanosecond (from `fstat` or `statx`; both say the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Bytes.
    pub size: u64,
    /// Seconds since the epoch (negative before it).
    pub mtime_sec: i64,
    /// Nanoseconds within that second.
    pub mtime_nsec: u32,
}

impl Stamp {
    fn of(md: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: md.len(),
            mtime_sec: md.mtime(),
            mtime_nsec: u32::try_from(md.mtime_nsec()).unwrap_or(0),
        }
    }

    /// `<size>:<mtime seconds>.<mtime nanoseconds>`, as stored in `user.lakegate.stamp`.
    fn text(&self) -> String {
        format!("{}:{}.{:09}", self.size, self.mtime_sec, self.mtime_nsec)
    }

    /// The mtime as a `SystemTime`.
    pub fn mtime(&self) -> SystemTime {
        let nsec = Duration::from_nanos(u64::from(self.mtime_nsec));
        match u64::try_from(self.mtime_sec) {
            Ok(s) => UNIX_EPOCH + Duration::from_secs(s) + nsec,
            Err(_) => UNIX_EPOCH - Duration::from_secs(self.mtime_sec.unsigned_abs()) + nsec,
        }
    }
}

/// The metadata of an object whose stat says `st` and whose attributes are `a`, when it
/// can be had without reading its bytes: a current SHA-256 or multipart ETag. `None`
/// when the bytes must be hashed. An attribute counts only when well formed and
/// stamped for exactly this size and mtime, so a file changed behind the store's back
/// is re-hashed, never served with a stale digest.
pub fn cached_meta_from(st: &Stamp, a: &Attrs) -> Option<ObjectMeta> {
    let stamp = st.text();
    if a.stamp.as_deref() != Some(stamp.as_bytes()) {
        return None;
    }
    let text = |v: &Option<Vec<u8>>| v.as_ref().and_then(|v| String::from_utf8(v.clone()).ok());
    let sha256_hex = text(&a.sha256).filter(|s| is_sha256_hex(s));
    let multipart_etag = text(&a.etag).filter(|s| is_multipart_etag(s));
    if sha256_hex.is_none() && multipart_etag.is_none() {
        return None;
    }
    // An MD5 is only as current as the stamp, and counts only beside a current
    // SHA-256 (after a re-hash there is none).
    let md5_hex = sha256_hex.as_ref().and_then(|_| {
        text(&a.md5)
            .filter(|m| m.len() == 32 && m.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    });
    Some(ObjectMeta {
        size: st.size,
        mtime: st.mtime(),
        sha256_hex,
        multipart_etag,
        md5_hex,
    })
}

/// `<32 lowercase hex>-<1..=10000>`.
fn is_multipart_etag(s: &str) -> bool {
    s.split_once('-').is_some_and(|(h, n)| {
        h.len() == 32
            && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && n.parse::<u32>()
                .is_ok_and(|n| (1..=s3::MAX_PARTS).contains(&n))
    })
}

/// The metadata of `file` when it can be had without reading its bytes (see
/// [`cached_meta_from`]); `None` when [`object_meta`] would hash.
fn cached_meta(file: &File, xattrs: bool) -> io::Result<Option<ObjectMeta>> {
    if !xattrs {
        return Ok(None);
    }
    let md = file.metadata()?;
    Ok(cached_meta_from(&Stamp::of(&md), &Attrs::read(file)))
}

fn object_meta(file: &File, xattrs: bool) -> io::Result<ObjectMeta> {
    if let Some(meta) = cached_meta(file, xattrs)? {
        return Ok(meta);
    }
    let md = file.metadata()?;
    let stamp = Stamp::of(&md);
    let sha = hash_file(file)?;
    // Best effort: a read-only file or filesystem still serves, only slower.
    if xattrs && file.metadata().is_ok_and(|now| Stamp::of(&now) == stamp) {
        if let Err(e) = store_sha256(file, &sha, &stamp.text()) {
            tracing::debug!(error = %e, "could not cache an object's SHA-256");
        }
    }
    Ok(ObjectMeta {
        size: stamp.size,
        mtime: stamp.mtime(),
        sha256_hex: Some(sha),
        multipart_etag: None,
        md5_hex: None,
    })
}

/// An object's `Content-Type` and user metadata (empty when none was stored, or the
/// filesystem keeps no attributes).
pub fn read_metadata(file: &File) -> s3::Metadata {
    parse_metadata(file.get_xattr(XATTR_META).ok().flatten().as_deref())
}

/// [`read_metadata`] from the attribute's value, for a caller that read it itself.
pub fn parse_metadata(raw: Option<&[u8]>) -> s3::Metadata {
    match raw {
        Some(raw) => serde_json::from_slice(raw).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "an object's metadata attribute does not parse; ignored");
            s3::Metadata::default()
        }),
        None => s3::Metadata::default(),
    }
}

fn hash_file(file: &File) -> io::Result<String> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut offset = 0u64;
    loop {
        let n = match file.read_at(&mut buf, offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.update(buf.get(..n).unwrap_or_default());
        offset += n as u64;
    }
    Ok(hex(ctx.finish().as_ref()))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if !is_sha256_hex(s) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    Some(out)
}

fn decode_b64_exact<const N: usize>(value: &str) -> Option<[u8; N]> {
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(value.trim()).ok()?.try_into().ok()
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    s3::xml_escape_into(&mut out, s);
    out
}

// ---------------------------------------------------------------------------------------
// Time formatting, UTC, without a calendar crate.

/// `t` as S3 listings write times: ISO 8601 UTC with milliseconds.
pub fn iso_time(t: SystemTime) -> String {
    ObjectMeta {
        size: 0,
        mtime: t,
        sha256_hex: None,
        multipart_etag: None,
        md5_hex: None,
    }
    .last_modified_iso()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

struct Civil {
    year: u64,
    month: usize,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
    millis: u32,
    /// 0 = Sunday.
    weekday: usize,
}

impl Civil {
    /// Days-to-civil after Howard Hinnant's algorithm; times before 1970 clamp to it.
    fn of(t: SystemTime) -> Civil {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        Civil {
            year,
            month: usize::try_from(month).unwrap_or(1),
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            millis: since.subsec_millis(),
            weekday: usize::try_from((days + 4) % 7).unwrap_or(0),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Listing.

/// Keeps the smallest `limit` entries (keys, or common prefixes they roll up into) that
/// pass the filters, so memory stays bounded by the page size however large the bucket
/// is.
struct Picker<'a> {
    /// Where a large folder's sorted entries are kept between pages.
    folders: &'a listcache::Cache,
    prefix: &'a str,
    delimiter: Option<&'a str>,
    after: Option<&'a str>,
    limit: usize,
    /// Sorted; the last is the largest kept, the first to go.
    best: BTreeSet<String>,
}

impl Picker<'_> {
    fn below_bound(&self, s: &str) -> bool {
        self.best.len() < self.limit || self.best.last().is_some_and(|top| s < top.as_str())
    }

    /// The common prefix `s` (a key, or a folder path ending in '/') rolls up into:
    /// `prefix` + its rest up to and including the delimiter's first occurrence.
    fn rollup(&self, s: &str) -> Option<String> {
        let d = self.delimiter?;
        let rest = s.strip_prefix(self.prefix)?;
        let at = rest.find(d)?;
        Some(format!("{}{}", self.prefix, &rest[..at + d.len()]))
    }

    fn wants_entry(&self, entry: &str) -> bool {
        entry.starts_with(self.prefix)
            && self.after.is_none_or(|after| entry > after)
            && !self.best.contains(entry)
            && self.below_bound(entry)
    }

    /// Whether any key starting with `dir` (which ends in '/') could be wanted.
    fn wants_subtree(&self, dir: &str) -> bool {
        if !(dir.starts_with(self.prefix) || self.prefix.starts_with(dir)) {
            return false;
        }
        // Every key in the subtree is `dir` + more, so it is below `after` exactly when
        // `dir` sorts before `after` without being a prefix of it. The same holds for
        // the common prefixes they roll up into, which then also extend `dir`.
        if self
            .after
            .is_some_and(|after| dir < after && !after.starts_with(dir))
        {
            return false;
        }
        self.below_bound(dir)
    }

    fn offer(&mut self, entry: String) {
        self.best.insert(entry);
        if self.best.len() > self.limit {
            self.best.pop_last();
        }
    }
}

/// Depth-first walk of the folder `dir`, whose keys start with `base`. A large folder
/// is walked from its kept sorted entries ([`listcache`]); any other folder's entries
/// are streamed from one `getdents64` buffer per folder level, never collected: memory
/// is the Picker's `limit` keys plus [`sys::DIRENT_BUF`] per level of the walk,
/// whatever the number of entries (see [`Store::list_delimited`]).
fn walk(dir: &File, base: &mut String, pick: &mut Picker<'_>) -> io::Result<()> {
    if let Some(folder) = pick.folders.folder(dir)? {
        return listcache::walk_sorted(dir, &folder, base, pick);
    }
    sys::for_each_entry(dir, |name, kind| {
        walk_entry(dir, name, kind, base, pick).map(|()| true)
    })
}

fn walk_entry(
    dir: &File,
    name: &str,
    kind: Kind,
    base: &mut String,
    pick: &mut Picker<'_>,
) -> io::Result<()> {
    if name == "." || name == ".." || validate_segment(name).is_err() || name.contains('\\') {
        return Ok(());
    }
    let len = base.len();
    base.push_str(name);
    match resolve_kind(dir, name, kind)? {
        Kind::File if base.len() <= MAX_KEY_LEN => {
            let entry = pick.rollup(base).unwrap_or_else(|| base.clone());
            if pick.wants_entry(&entry) {
                pick.offer(entry);
            }
        }
        Kind::Dir if base.len() < MAX_KEY_LEN => {
            base.push('/');
            if let Some(cp) = pick.rollup(base) {
                // Every key below rolls up into `cp`: one object is enough.
                if pick.wants_entry(&cp) {
                    if let Ok(sub) = open_dir_nofollow(dir, name) {
                        if has_object(&sub, base.len())? {
                            pick.offer(cp);
                        }
                    }
                }
            } else if pick.wants_subtree(base) {
                // Raced with a rename or removal, or became a symlink: skip it.
                if let Ok(sub) = open_dir_nofollow(dir, name) {
                    walk(&sub, base, pick)?;
                }
            }
        }
        _ => {}
    }
    base.truncate(len);
    Ok(())
}

/// Whether the folder `dir` (whose keys are `depth` bytes long before its names) holds
/// at least one object a listing would show.
fn has_object(dir: &File, depth: usize) -> io::Result<bool> {
    let mut found = false;
    sys::for_each_entry(dir, |name, kind| {
        if name == "." || name == ".." || validate_segment(name).is_err() || name.contains('\\') {
            return Ok(true);
        }
        let len = depth + name.len();
        match resolve_kind(dir, name, kind)? {
            Kind::File if len <= MAX_KEY_LEN => found = true,
            Kind::Dir if len < MAX_KEY_LEN => {
                if let Ok(sub) = open_dir_nofollow(dir, name) {
                    found = has_object(&sub, len + 1)?;
                }
            }
            _ => {}
        }
        Ok(!found)
    })?;
    Ok(found)
}

// ---------------------------------------------------------------------------------------
// Resolution without the syscalls.

/// How the store opens what it opens, for a caller that runs the open syscalls itself:
/// the engine issues them as io_uring operations on its worker's ring, so that a cold
/// lookup waits in the kernel instead of stalling the worker. The flags, names and
/// error meanings here are the ones the store's own blocking calls above use, so both
/// paths resolve a key identically.
pub mod open {
    use std::ffi::CString;
    use std::io;

    /// A bucket (or any folder): a folder only, never through a symlink.
    pub const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    /// An object, with `openat2` and [`RESOLVE`] beneath its bucket. `O_NONBLOCK` so
    /// that a FIFO planted in the bucket cannot block the open; the caller clears it
    /// once the file is known to be a regular file (io_uring reads of a file left
    /// `O_NONBLOCK` would fail with `EAGAIN` instead of waiting).
    pub const OBJECT_FLAGS: libc::c_int =
        libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW;
    /// `openat2`'s resolve flags for an object: the whole key resolves beneath the
    /// bucket, through no symlink of any kind.
    pub const RESOLVE: u64 =
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    /// How often an `openat2` that says `EAGAIN` (a rename raced the lookup) is tried.
    pub const RETRIES: u32 = 3;
    /// A new temporary in the bucket folder.
    pub const TEMP_FLAGS: libc::c_int =
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    /// A temporary's mode (less the umask).
    pub const TEMP_MODE: libc::mode_t = 0o640;
    /// Random temporary names tried before giving up.
    pub const TEMP_TRIES: usize = 4;

    /// The bucket's folder name, validated, as the open syscalls take it.
    pub fn bucket_name(bucket: &str) -> io::Result<CString> {
        super::validate_bucket(bucket)?;
        super::sys::cstr(bucket)
    }

    /// The key, validated, as `openat2` takes it beneath the bucket.
    pub fn key_name(key: &str) -> io::Result<CString> {
        super::validate_key(key)?;
        super::sys::cstr(key)
    }

    /// A fresh random temporary name: `.lakegate-tmp-<32 hex>`.
    pub fn temp_name() -> io::Result<(String, CString)> {
        let mut raw = [0u8; 16];
        aws_lc_rs::rand::fill(&mut raw)
            .map_err(|_| io::Error::other("the system random generator failed"))?;
        let name = format!("{}{}", super::TEMP_PREFIX, super::hex(&raw));
        let c = super::sys::cstr(&name)?;
        Ok((name, c))
    }

    /// Every random name was taken.
    pub fn no_temp_name() -> io::Error {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no unused temporary name after 4 random tries",
        )
    }

    /// Only names [`temp_name`] makes are ever unlinked as temporaries.
    pub fn check_temp_name(temp: &str) -> io::Result<()> {
        let ok = temp
            .strip_prefix(super::TEMP_PREFIX)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()));
        if ok {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a temporary made by create_temp",
            ))
        }
    }

    /// A temporary's name as the unlink syscall takes it, only if [`temp_name`] made it.
    pub fn temp_path(temp: &str) -> io::Result<CString> {
        check_temp_name(temp)?;
        super::sys::cstr(temp)
    }

    /// Whether an object's `openat2` should be tried again.
    pub fn retry(e: &io::Error) -> bool {
        e.raw_os_error() == Some(libc::EAGAIN)
    }

    /// A failed `openat2` of an object as the store answers it: an object used as a
    /// folder is a missing key; a key resolving outside its bucket is refused.
    pub fn object_error(e: io::Error) -> io::Error {
        match e.raw_os_error() {
            Some(libc::ENOTDIR) => super::not_found("an object is used as a folder in the key"),
            Some(libc::EXDEV) => io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the key resolves outside its bucket",
            ),
            _ => e,
        }
    }

    /// The key opened something that is not a regular file (a folder, a FIFO, ...).
    pub fn not_an_object() -> io::Error {
        super::not_found("the key names no object")
    }

    /// A failed folder open; `symlink` when the name turned out to be a symlink (the
    /// kernel says `ELOOP`, or `ENOTDIR` under `O_DIRECTORY`: the caller checks which).
    pub fn dir_error(name: &str, e: io::Error, symlink: bool) -> io::Error {
        if symlink {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{name:?} is a symlink, which the store does not follow"),
            )
        } else {
            e
        }
    }

    /// Whether a failed folder open needs the name's type to tell a symlink from a file.
    pub fn dir_error_needs_type(e: &io::Error) -> bool {
        e.raw_os_error() == Some(libc::ENOTDIR)
    }

    /// Whether `mode` (`st_mode`) is a symlink's.
    pub fn is_symlink_mode(mode: u32) -> bool {
        mode & libc::S_IFMT == libc::S_IFLNK
    }

    /// Whether `mode` (`st_mode`) is a regular file's.
    pub fn is_file_mode(mode: u32) -> bool {
        mode & libc::S_IFMT == libc::S_IFREG
    }

    /// A failed bucket open as the store answers it: a bucket name that is not a
    /// folder is a missing bucket.
    pub fn bucket_error(bucket: &str, e: io::Error) -> io::Error {
        if e.raw_os_error() == Some(libc::ENOTDIR) {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("bucket {bucket:?} is not a folder"),
            )
        } else {
            e
        }
    }
}

// ---------------------------------------------------------------------------------------
// The syscalls. Every descriptor is passed as a borrowed `&File`, so it stays open for the
// whole call; every path is a `CString`, so it is NUL-terminated and outlives the call.

mod sys {
    use std::ffi::{CStr, CString};
    use std::fs::File;
    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::Kind;

    pub(super) fn cstr(s: &str) -> io::Result<CString> {
        CString::new(s)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
    }

    fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    /// Take ownership of a descriptor an open syscall just returned.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else owns or will close: the
    /// non-negative result of an open-family syscall that just succeeded.
    unsafe fn owned(fd: libc::c_int) -> File {
        // SAFETY: the caller guarantees `fd` is open and owned by no one else, which is
        // exactly `OwnedFd::from_raw_fd`'s contract.
        File::from(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `openat(dir, name, flags | O_CLOEXEC, mode)`.
    pub(super) fn open_at(
        dir: &File,
        name: &CStr,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> io::Result<File> {
        loop {
            // SAFETY: `dir` is an open descriptor borrowed for the call and `name` a
            // NUL-terminated string valid for the call; openat keeps neither. The
            // variadic mode is passed as the `unsigned int` the C prototype promotes to.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    flags | libc::O_CLOEXEC,
                    libc::c_uint::from(mode),
                )
            };
            match cvt(fd) {
                // SAFETY: openat succeeded, so `fd` is a fresh descriptor owned by no one.
                Ok(fd) => return Ok(unsafe { owned(fd) }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `openat2(dir, path, {flags | O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
    /// RESOLVE_NO_MAGICLINKS})`: the whole path resolves beneath `dir`, through no
    /// symlink of any kind.
    pub(super) fn open_beneath(dir: &File, path: &CStr, flags: libc::c_int) -> io::Result<File> {
        // SAFETY: `open_how` is three `u64`s; all zeroes is a valid value and the one the
        // kernel requires for every field we do not set.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = u64::try_from(flags | libc::O_CLOEXEC)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative open flags"))?;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        loop {
            // SAFETY: openat2(int dirfd, const char *path, struct open_how *how, size_t
            // size). `dir` is an open descriptor borrowed for the call, `path` is
            // NUL-terminated and valid for the call, `how` points to an initialised
            // `open_how` and `size` is exactly its size, so the kernel reads only that
            // struct; it writes through no pointer and keeps none after returning. The
            // integer arguments are widened to `c_long` as the raw syscall ABI expects.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::c_long::from(dir.as_raw_fd()),
                    path.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let fd = libc::c_int::try_from(r)
                .map_err(|_| io::Error::other("openat2 returned an impossible descriptor"))?;
            // SAFETY: openat2 succeeded, so `fd` is a fresh descriptor owned by no one.
            return Ok(unsafe { owned(fd) });
        }
    }

    /// `mkdirat(dir, name, mode)`.
    /// `copy_file_range(2)` of up to `len` bytes from `src` at `off_in` to `dst` at
    /// `off_out`; the number of bytes copied (0 at the end of `src`).
    pub(super) fn copy_file_range(
        src: &File,
        off_in: u64,
        dst: &File,
        off_out: u64,
        len: usize,
    ) -> io::Result<usize> {
        let mut a =
            i64::try_from(off_in).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut b =
            i64::try_from(off_out).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: both descriptors are borrowed open files for the whole call; the two
        // offsets are valid, exclusively borrowed i64s the kernel updates; no buffer of
        // ours is involved.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut a, dst.as_raw_fd(), &mut b, len, 0)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub(super) fn mkdir_at(dir: &File, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
        // SAFETY: `dir` is an open descriptor borrowed for the call and `name` a
        // NUL-terminated string valid for the call; mkdirat keeps neither.
        cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
    }

    /// `renameat(from_dir, from, to_dir, to)`: atomic replacement of `to`.
    pub(super) fn rename_at(
        from_dir: &File,
        from: &CStr,
        to_dir: &File,
        to: &CStr,
    ) -> io::Result<()> {
        // SAFETY: both descriptors are open and borrowed for the call; both names are
        // NUL-terminated strings valid for the call; renameat keeps none of them.
        cvt(unsafe {
            libc::renameat(
                from_dir.as_raw_fd(),
                from.as_ptr(),
                to_dir.as_raw_fd(),
                to.as_ptr(),
            )
        })
        .map(drop)
    }

    /// `renameat2(from_dir, from, to_dir, to, RENAME_NOREPLACE)`: `AlreadyExists` if
    /// `to` exists, atomically. Where the filesystem lacks the flag (`EINVAL`), a hard
    /// link (which never replaces either) and the unlink of `from`.
    pub(super) fn rename_noreplace(
        from_dir: &File,
        from: &CStr,
        to_dir: &File,
        to: &CStr,
    ) -> io::Result<()> {
        // SAFETY: both descriptors are open and borrowed for the call; both names are
        // NUL-terminated strings valid for the call; renameat2 keeps none of them.
        let r = cvt(unsafe {
            libc::renameat2(
                from_dir.as_raw_fd(),
                from.as_ptr(),
                to_dir.as_raw_fd(),
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        });
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // SAFETY: as above; linkat with flags 0 follows no symlink and keeps
                // neither name.
                cvt(unsafe {
                    libc::linkat(
                        from_dir.as_raw_fd(),
                        from.as_ptr(),
                        to_dir.as_raw_fd(),
                        to.as_ptr(),
                        0,
                    )
                })?;
                unlink_at(from_dir, from, 0)
            }
            r => r.map(drop),
        }
    }

    /// `unlinkat(dir, name, flags)`; `AT_REMOVEDIR` removes an empty folder. Never follows
    /// a symlink: it removes the link itself.
    pub(super) fn unlink_at(dir: &File, name: &CStr, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: `dir` is an open descriptor borrowed for the call and `name` a
        // NUL-terminated string valid for the call; unlinkat keeps neither.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
    }

    /// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`'s `st_mode`.
    pub(super) fn stat_mode_at(dir: &File, name: &CStr) -> io::Result<libc::mode_t> {
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is writable storage for exactly one `struct stat`, which is what
        // fstatat writes on success; `dir` is an open descriptor borrowed for the call
        // and `name` a NUL-terminated string valid for the call.
        cvt(unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        // SAFETY: fstatat returned 0, so it filled in the whole struct.
        Ok(unsafe { st.assume_init() }.st_mode)
    }

    /// Set or clear `O_NONBLOCK` on an open file.
    pub(super) fn set_nonblocking(file: &File, on: bool) -> io::Result<()> {
        // SAFETY: F_GETFL takes no third argument and touches no memory; the descriptor
        // is open, borrowed from `file` for the call.
        let flags = cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) })?;
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: F_SETFL takes an `int` of flags and touches no memory; the descriptor
        // is open, borrowed from `file` for the call.
        cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
    }

    /// A `getdents64` buffer, aligned for `struct linux_dirent64`.
    /// Bytes of one `getdents64` buffer: what a folder being read holds in memory,
    /// however many entries it has.
    pub(super) const DIRENT_BUF: usize = 32 * 1024;

    #[repr(C, align(8))]
    struct DirentBuf([u8; DIRENT_BUF]);

    /// Every entry of the folder `dir` (except `.` and `..`) whose name is UTF-8, with
    /// its type from the entry (`Kind::Unknown` when the filesystem does not say).
    /// Reads through a fresh descriptor so that `dir`'s own offset is untouched.
    pub(super) fn read_dir(dir: &File) -> io::Result<Vec<(String, Kind)>> {
        let mut out = Vec::new();
        for_each_entry(dir, |name, kind| {
            out.push((name.to_owned(), kind));
            Ok(true)
        })?;
        Ok(out)
    }

    /// [`read_dir`] without collecting: `f` sees each entry as it is decoded from one
    /// [`DIRENT_BUF`] buffer and returns whether to go on. Memory stays one buffer
    /// whatever the folder's size.
    pub(super) fn for_each_entry(
        dir: &File,
        mut f: impl FnMut(&str, Kind) -> io::Result<bool>,
    ) -> io::Result<()> {
        let dir = open_at(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let mut buf = Box::new(DirentBuf([0u8; DIRENT_BUF]));
        loop {
            let n = loop {
                // SAFETY: getdents64(fd, buf, len) writes at most `len` bytes into `buf`,
                // which is exclusively borrowed, 8-byte aligned and `len` bytes long for
                // the whole call; the descriptor is open and borrowed for the call.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        libc::c_long::from(dir.as_raw_fd()),
                        buf.0.as_mut_ptr(),
                        buf.0.len(),
                    )
                };
                if r >= 0 {
                    break usize::try_from(r).unwrap_or(0);
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            };
            if n == 0 {
                return Ok(());
            }
            if !parse_dirents(buf.0.get(..n).unwrap_or_default(), &mut f)? {
                return Ok(());
            }
        }
    }

    /// Parse `struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char
    /// name[]; }` records, handing each to `f`; `Ok(false)` when `f` said stop.
    fn parse_dirents(
        mut b: &[u8],
        f: &mut impl FnMut(&str, Kind) -> io::Result<bool>,
    ) -> io::Result<bool> {
        const HEADER: usize = 19;
        let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "malformed getdents64 record");
        while !b.is_empty() {
            let reclen = match (b.get(16), b.get(17)) {
                (Some(&lo), Some(&hi)) => usize::from(u16::from_ne_bytes([lo, hi])),
                _ => return Err(corrupt()),
            };
            if reclen <= HEADER {
                return Err(corrupt());
            }
            let (record, rest) = b.split_at_checked(reclen).ok_or_else(corrupt)?;
            let d_type = *record.get(18).ok_or_else(corrupt)?;
            let name = record.get(HEADER..).ok_or_else(corrupt)?;
            let name = CStr::from_bytes_until_nul(name).map_err(|_| corrupt())?;
            b = rest;
            let Ok(name) = name.to_str() else {
                continue; // not UTF-8: cannot be a key
            };
            if name == "." || name == ".." {
                continue;
            }
            let kind = match d_type {
                libc::DT_REG => Kind::File,
                libc::DT_DIR => Kind::Dir,
                libc::DT_LNK => Kind::Symlink,
                libc::DT_UNKNOWN => Kind::Unknown,
                _ => Kind::Other,
            };
            if !f(name, kind)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::symlink;

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(&tmp.path().join("root"), true).unwrap();
        store.create_bucket("data").unwrap();
        (tmp, store)
    }

    fn put(store: &Store, bucket: &str, key: &str, body: &[u8]) -> io::Result<Digests> {
        let (mut file, temp) = store.create_temp(bucket)?;
        file.write_all(body)?;
        let mut h = BodyHasher::new(false);
        h.update(body);
        let d = h.finish();
        store.commit(bucket, &temp, key, &file, &d.sha256_hex())?;
        Ok(d)
    }

    fn temporaries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect()
    }

    fn keys(l: &Listing) -> Vec<&str> {
        l.entries.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// A store on `root` whose kept-folder cache keeps every folder at once (`settled`
    /// zero) within `budget`; budget zero keeps none (every folder streamed).
    fn store_with_cache(root: &Path, budget: usize, settled: Duration) -> Store {
        let mut s = Store::new(root, false).unwrap();
        s.folders = std::sync::Arc::new(listcache::Cache::new(budget, 0, settled));
        s
    }

    /// Every page of a listing, walked to its end: (keys, common prefixes) of each.
    fn all_pages(
        s: &Store,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Vec<(Vec<String>, Vec<String>)> {
        let mut pages = Vec::new();
        let mut after = start_after.map(str::to_owned);
        loop {
            let l = s
                .list_delimited("data", prefix, delimiter, after.as_deref(), max_keys)
                .unwrap();
            pages.push((
                l.entries.iter().map(|(k, _)| k.clone()).collect(),
                l.common_prefixes.clone(),
            ));
            if !l.truncated {
                return pages;
            }
            after = l.next_start_after;
            assert!(pages.len() < 10_000, "the listing does not end");
        }
    }

    /// A bucket whose keys crowd around `/` in sort order (`a-b/…` < `a.txt` < `a/…` <
    /// `a0`), with folders several deep, a symlink, a FIFO and a temporary the listing
    /// must skip, and 400 flat keys.
    fn crowded_bucket(root: &Path) {
        let b = root.join("data");
        std::fs::create_dir_all(&b).unwrap();
        let mut keys: Vec<String> = (0..400).map(|i| format!("k{:04}", i * 7 % 400)).collect();
        keys.extend(
            [
                "a.txt",
                "a-b/x",
                "a-b/y/z",
                "a0",
                "a/1",
                "a/2/3",
                "a/2/3.5",
                "a/2/4/5",
                "a/b/c/d",
                "a/b/c.e",
                "b",
                "c/d/e/f/g",
                "z",
                "~",
            ]
            .iter()
            .map(|k| k.to_string()),
        );
        for k in &keys {
            let p = b.join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, k.as_bytes()).unwrap();
        }
        symlink("/etc", b.join("a/link")).unwrap();
        symlink("k0001", b.join("k9999")).unwrap();
        std::fs::write(b.join(format!("{TEMP_PREFIX}x")), b"t").unwrap();
        let fifo =
            std::ffi::CString::new(b.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path for the call only.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_listing_from_kept_sorted_folders_is_the_streamed_listing_page_by_page() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        crowded_bucket(&root);
        let kept = store_with_cache(&root, listcache::BUDGET, Duration::ZERO);
        let streamed = store_with_cache(&root, 0, Duration::ZERO);
        let mut compared = 0;
        for prefix in ["", "a", "a/", "a/2", "k0", "k01", "c/d/", "nothing"] {
            for delimiter in [None, Some("/"), Some("."), Some("0")] {
                for after in [None, Some("a"), Some("a/2/3"), Some("k0199"), Some("a-b/")] {
                    for max_keys in [1, 3, 1000] {
                        let want = all_pages(&streamed, prefix, delimiter, after, max_keys);
                        let got = all_pages(&kept, prefix, delimiter, after, max_keys);
                        assert_eq!(
                            got, want,
                            "prefix {prefix:?} delimiter {delimiter:?} after {after:?} max {max_keys}"
                        );
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(compared, 8 * 4 * 5 * 3);
        // The whole listing, flat: every object once, in byte order, nothing else.
        let flat: Vec<String> = all_pages(&kept, "", None, None, 1000)
            .into_iter()
            .flat_map(|(k, _)| k)
            .collect();
        let mut sorted = flat.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(flat, sorted);
        assert_eq!(flat.len(), 400 + 14, "{flat:?}");
        assert!(flat
            .iter()
            .all(|k| !k.contains("link") && k != "fifo" && k != "k9999"));
        let (hits, fills, _) = kept.list_cache_stats();
        assert!(fills >= 6 && hits > 1000, "hits {hits} fills {fills}");
        assert_eq!(streamed.list_cache_stats().1, 0);
    }

    #[test]
    fn a_kept_folder_is_read_again_once_its_entries_change() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let s = store_with_cache(&root, listcache::BUDGET, listcache::SETTLED);
        s.create_bucket("data").unwrap();
        for i in 0..20 {
            put(&s, "data", &format!("k{i:02}"), b"x").unwrap();
        }
        let page = |s: &Store| keys(&s.list("data", "", None, 1000).unwrap()).len();
        // Changed within the last second: not kept.
        assert_eq!(page(&s), 20);
        assert_eq!(s.list_cache_stats(), (0, 0, 0));
        std::thread::sleep(listcache::SETTLED + Duration::from_millis(100));
        assert_eq!(page(&s), 20);
        assert_eq!(s.list_cache_stats(), (0, 1, 0));
        assert_eq!(page(&s), 20);
        assert_eq!(s.list_cache_stats(), (1, 1, 0));
        // A new object, a removed one, and a file written behind the store's back: each
        // shows at once, the folder read streaming until it settles again.
        put(&s, "data", "k99", b"x").unwrap();
        assert_eq!(page(&s), 21);
        s.delete_object("data", "k00").unwrap();
        assert_eq!(page(&s), 20);
        std::fs::write(root.join("data/k50"), b"y").unwrap();
        let l = s.list("data", "", None, 1000).unwrap();
        assert_eq!(keys(&l).len(), 21);
        assert!(keys(&l).contains(&"k50") && !keys(&l).contains(&"k00"));
        std::fs::rename(root.join("data/k50"), root.join("data/k51")).unwrap();
        let l = s.list("data", "", None, 1000).unwrap();
        assert!(keys(&l).contains(&"k51") && !keys(&l).contains(&"k50"));
        assert_eq!(s.list_cache_stats(), (1, 1, 0));
        std::thread::sleep(listcache::SETTLED + Duration::from_millis(100));
        let l = s.list("data", "", None, 1000).unwrap();
        assert_eq!(keys(&l).len(), 21);
        assert_eq!(s.list_cache_stats(), (1, 2, 0));
    }

    #[test]
    fn every_store_of_the_process_shares_one_folder_cache() {
        // A reload opens the store again while the old generation's connections still
        // hold the old one: both must keep within one budget.
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let one = Store::new(&a.path().join("root"), false).unwrap();
        let again = Store::new(&a.path().join("root"), false).unwrap();
        let other = Store::new(&b.path().join("root"), false).unwrap();
        assert!(std::sync::Arc::ptr_eq(&one.folders, &again.folders));
        assert!(std::sync::Arc::ptr_eq(&one.folders, &other.folders));
    }

    #[test]
    fn a_folder_over_the_budget_is_listed_streaming_and_not_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        crowded_bucket(&root);
        // Room for the small folders (12 of about 0.5 KiB) but not for the bucket's
        // (414 entries, over a quarter of the budget).
        let s = store_with_cache(&root, 16 << 10, Duration::ZERO);
        let streamed = store_with_cache(&root, 0, Duration::ZERO);
        for max_keys in [7, 1000] {
            assert_eq!(
                all_pages(&s, "", None, None, max_keys),
                all_pages(&streamed, "", None, None, max_keys)
            );
        }
        // The bucket's folder was read once to learn it does not fit, then streamed;
        // it is not read to be kept again while it is unchanged.
        let (_, fills, oversize) = s.list_cache_stats();
        assert_eq!(oversize, 1);
        s.folders.held();
        all_pages(&s, "", None, None, 1000);
        assert_eq!(s.list_cache_stats(), (s.list_cache_stats().0, fills, 1));
        // Room for a few small folders at a time: they are kept and evicted in turn,
        // the listing stays the same and the accounts within the budget.
        let tight = store_with_cache(&root, 2 << 10, Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(
                all_pages(&tight, "", None, None, 1000),
                all_pages(&streamed, "", None, None, 1000)
            );
            assert!(tight.folders.held() <= 2 << 10);
        }
        let (_, fills, _) = tight.list_cache_stats();
        assert!(fills > 12, "{fills} fills: nothing was evicted");
        // A budget of nothing keeps nothing, not even a folder with no keys in it.
        std::fs::create_dir(root.join("data/empty")).unwrap();
        let none = store_with_cache(&root, 0, Duration::ZERO);
        assert_eq!(
            all_pages(&none, "empty/", None, None, 1000),
            [(vec![], vec![])]
        );
        assert_eq!(none.list_cache_stats().1, 0);
    }

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_MD5: &str = "900150983cd24fb0d6963f7d28e17f72";

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.01", "a.b-c", &"a".repeat(63)] {
            assert_eq!(validate_bucket(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ab",
            &"a".repeat(64),
            "Abc",
            "a_b",
            "-ab",
            "ab-",
            ".ab",
            "ab.",
            "a..b",
            "a/b",
            "ab c",
            "ä-bc",
        ] {
            assert!(
                matches!(validate_bucket(bad), Err(KeyError::BadBucket(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_errors() {
        assert_eq!(validate_key("a"), Ok(()));
        assert_eq!(validate_key("dir/sub/file.bin"), Ok(()));
        assert_eq!(validate_key("x/.hidden/..y/y..z/.lake"), Ok(()));
        assert_eq!(validate_key("ключ/日本"), Ok(()));
        let cases: &[(&str, KeyError)] = &[
            ("", KeyError::Empty),
            (".", KeyError::DotSegment),
            ("..", KeyError::DotSegment),
            ("a/../b", KeyError::DotSegment),
            ("a/./b", KeyError::DotSegment),
            ("a/..", KeyError::DotSegment),
            ("a//b", KeyError::EmptySegment),
            ("a/", KeyError::EmptySegment),
            ("a\0b", KeyError::Nul),
            ("a\\b", KeyError::Backslash),
            ("..\\x", KeyError::Backslash),
            ("/a", KeyError::Absolute),
            ("/", KeyError::Absolute),
            (".lakegate-tmp-00", KeyError::ReservedName),
            ("a/.lakegate", KeyError::ReservedName),
        ];
        for (key, want) in cases {
            assert_eq!(validate_key(key).as_ref(), Err(want), "{key:?}");
        }
        let long_segment = "s".repeat(256);
        assert_eq!(validate_key(&long_segment), Err(KeyError::TooLong));
        assert_eq!(validate_key(&"s".repeat(255)), Ok(()));
        let long_key = vec!["s".repeat(200); 6].join("/"); // 1205 bytes
        assert_eq!(validate_key(&long_key), Err(KeyError::TooLong));
        let max_key = [
            &*"s".repeat(255),
            &*"s".repeat(255),
            &*"s".repeat(255),
            &*"s".repeat(256),
        ]
        .join("/");
        assert_eq!(max_key.len(), 1024);
        assert_eq!(validate_key(&max_key), Err(KeyError::TooLong)); // last segment 256
        for e in [KeyError::Empty, KeyError::BadBucket("x".into())] {
            assert_eq!(e.status(), 400);
            assert_eq!(status_for_io(&io::Error::from(e)), 400);
        }
    }

    #[test]
    fn split_paths() {
        assert_eq!(split_path("/data/a/b/c"), Ok(("data", Some("a/b/c"))));
        assert_eq!(split_path("/data/a"), Ok(("data", Some("a"))));
        assert_eq!(split_path("/data"), Ok(("data", None)));
        assert_eq!(split_path("/data/"), Ok(("data", None)));
        assert!(matches!(split_path("data/a"), Err(KeyError::BadBucket(_))));
        assert!(matches!(split_path("/"), Err(KeyError::BadBucket(_))));
        assert!(matches!(split_path("//a"), Err(KeyError::BadBucket(_))));
        assert!(matches!(split_path("/Data/a"), Err(KeyError::BadBucket(_))));
        assert_eq!(split_path("/data//a"), Err(KeyError::Absolute));
        assert_eq!(split_path("/data/a/"), Err(KeyError::EmptySegment));
        assert_eq!(split_path("/data/a/../b"), Err(KeyError::DotSegment));
        assert_eq!(
            split_path("/data/.lakegate-tmp-1"),
            Err(KeyError::ReservedName)
        );
    }

    #[test]
    fn store_round_trip_nested() {
        let (_tmp, store) = store();
        let body = b"hello, lake";
        let d = put(&store, "data", "2026/11/29/shard-0.bin", body).unwrap();
        let bucket = store.root().join("data");
        assert_eq!(
            std::fs::read(bucket.join("2026/11/29/shard-0.bin")).unwrap(),
            body
        );

        let (file, meta) = store.open_object("data", "2026/11/29/shard-0.bin").unwrap();
        let mut got = vec![0u8; body.len()];
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, body);
        assert_eq!(meta.size, body.len() as u64);
        assert_eq!(meta.sha256_hex, Some(d.sha256_hex()));
        assert_eq!(meta.etag(), format!("\"{}\"", d.sha256_hex()));
        assert_eq!(
            meta.checksum_sha256_b64(),
            base64::engine::general_purpose::STANDARD.encode(d.sha256)
        );
        // The returned file is a plain blocking read handle.
        let fl = fd_flags(&file);
        assert_eq!(fl & libc::O_NONBLOCK, 0);
        assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);

        let head = store.head_object("data", "2026/11/29/shard-0.bin").unwrap();
        assert_eq!(head, meta);

        // Overwrite replaces atomically.
        put(&store, "data", "2026/11/29/shard-0.bin", b"v2").unwrap();
        assert_eq!(
            store
                .head_object("data", "2026/11/29/shard-0.bin")
                .unwrap()
                .size,
            2
        );

        // A sibling keeps the shared parents alive through the first delete.
        put(&store, "data", "2026/11/other", b"x").unwrap();
        store
            .delete_object("data", "2026/11/29/shard-0.bin")
            .unwrap();
        assert!(!bucket.join("2026/11/29").exists());
        assert!(bucket.join("2026/11").is_dir());
        store.delete_object("data", "2026/11/other").unwrap();
        assert!(!bucket.join("2026").exists());
        assert!(bucket.is_dir(), "the bucket itself is never pruned");

        let e = store.delete_object("data", "2026/11/other").unwrap_err();
        assert_eq!(status_for_io(&e), 404);
        let e = store.open_object("data", "2026/11/other").unwrap_err();
        assert_eq!(status_for_io(&e), 404);
        let e = store.head_object("nope", "x").unwrap_err();
        assert_eq!(status_for_io(&e), 404);
        assert!(temporaries(&bucket).is_empty());
    }

    /// The open file's status flags (`fcntl(F_GETFL)`).
    fn fd_flags(file: &File) -> libc::c_int {
        use std::os::fd::AsRawFd as _;
        // SAFETY: F_GETFL takes no third argument and touches no memory; the descriptor
        // is open, borrowed from `file` for the call.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) }
    }

    #[test]
    fn store_keys_collide_with_folders() {
        let (_tmp, store) = store();
        put(&store, "data", "a/b", b"1").unwrap();
        // "a" is a folder: an object cannot replace it.
        let e = put(&store, "data", "a", b"2").unwrap_err();
        assert_eq!(status_for_io(&e), 409, "{e}");
        // "a/b" is an object: it cannot be a folder.
        let e = put(&store, "data", "a/b/c", b"3").unwrap_err();
        assert_eq!(status_for_io(&e), 409, "{e}");
        assert!(temporaries(&store.root().join("data")).is_empty());
        // Reads of such keys are plain misses.
        assert_eq!(
            status_for_io(&store.open_object("data", "a").unwrap_err()),
            404
        );
        assert_eq!(
            status_for_io(&store.open_object("data", "a/b/c").unwrap_err()),
            404
        );
        assert_eq!(
            status_for_io(&store.delete_object("data", "a").unwrap_err()),
            404
        );
        assert_eq!(
            status_for_io(&store.delete_object("data", "a/b/c").unwrap_err()),
            404
        );
        // Refused keys and buckets never reach the disk.
        assert_eq!(
            status_for_io(&store.open_object("data", "../x").unwrap_err()),
            400
        );
        assert_eq!(status_for_io(&store.bucket_dir("..").unwrap_err()), 400);
        assert_eq!(status_for_io(&store.create_temp("A").unwrap_err()), 400);
    }

    #[test]
    fn store_xattr_stored_and_read_back() {
        let (_tmp, store) = store();
        let d = put(&store, "data", "x/y", b"abc").unwrap();
        assert_eq!(d.sha256_hex(), ABC_SHA256);
        let path = store.root().join("data/x/y");
        let f = File::open(&path).unwrap();
        assert_eq!(
            f.get_xattr(XATTR_SHA256).unwrap().unwrap(),
            ABC_SHA256.as_bytes()
        );
        assert_eq!(
            store
                .head_object("data", "x/y")
                .unwrap()
                .sha256_hex
                .as_deref(),
            Some(ABC_SHA256)
        );

        // Attribute wins over the bytes while the stamp is current: proves it is read.
        let fake = "0".repeat(64);
        f.set_xattr(XATTR_SHA256, fake.as_bytes()).unwrap();
        assert_eq!(
            store.head_object("data", "x/y").unwrap().sha256_hex,
            Some(fake)
        );

        // Rewritten in place (cp onto an existing file keeps xattrs): re-hashed and
        // stored again.
        std::fs::write(&path, b"abcd").unwrap();
        let meta = store.head_object("data", "x/y").unwrap();
        let mut h = BodyHasher::new(false);
        h.update(b"abcd");
        let want = h.finish().sha256_hex();
        assert_eq!(meta.sha256_hex.as_deref(), Some(want.as_str()));
        assert_eq!(f.get_xattr(XATTR_SHA256).unwrap().unwrap(), want.as_bytes());

        // A file the operator dropped in directly: computed once, then cached.
        std::fs::write(store.root().join("data/plain"), b"abc").unwrap();
        assert_eq!(
            store
                .head_object("data", "plain")
                .unwrap()
                .sha256_hex
                .as_deref(),
            Some(ABC_SHA256)
        );
        let plain = File::open(store.root().join("data/plain")).unwrap();
        assert_eq!(
            plain.get_xattr(XATTR_SHA256).unwrap().unwrap(),
            ABC_SHA256.as_bytes()
        );
    }

    #[test]
    fn store_commit_never_leaves_temp() {
        let (_tmp, store) = store();
        let bucket = store.root().join("data");
        put(&store, "data", "k", b"v").unwrap();
        assert!(temporaries(&bucket).is_empty());

        // Failures remove the temporary too: bad hash, bad key, collision.
        let (_f, temp) = store.create_temp("data").unwrap();
        assert_eq!(temporaries(&bucket), vec![temp.clone()]);
        let f = File::open(bucket.join(&temp)).unwrap();
        let e = store
            .commit("data", &temp, "k2", &f, "not-hex")
            .unwrap_err();
        assert_eq!(status_for_io(&e), 400);
        assert!(temporaries(&bucket).is_empty());

        let (f, temp) = store.create_temp("data").unwrap();
        assert!(store
            .commit("data", &temp, "a/../k", &f, ABC_SHA256)
            .is_err());
        assert!(temporaries(&bucket).is_empty());

        let (f, temp) = store.create_temp("data").unwrap();
        assert!(store
            .commit("data", &temp, "k/sub", &f, ABC_SHA256)
            .is_err());
        assert!(temporaries(&bucket).is_empty());
        assert_eq!(std::fs::read(bucket.join("k")).unwrap(), b"v");

        // A temporary name that is not ours is never touched.
        std::fs::write(bucket.join("victim"), b"keep").unwrap();
        let (f, _temp) = store.create_temp("data").unwrap();
        assert!(store
            .commit("data", "victim", "k3", &f, ABC_SHA256)
            .is_err());
        assert_eq!(std::fs::read(bucket.join("victim")).unwrap(), b"keep");
    }

    #[test]
    fn store_temp_files_and_discard() {
        let (_tmp, store) = store();
        let bucket = store.root().join("data");
        let (_f, temp) = store.create_temp("data").unwrap();
        assert!(temp.starts_with(TEMP_PREFIX) && temp.len() == TEMP_PREFIX.len() + 32);
        let md = std::fs::metadata(bucket.join(&temp)).unwrap();
        assert!(md.is_file());
        assert_eq!(md.mode() & 0o7000, 0);
        // Objects are never for other local users, whatever the umask.
        assert_eq!(md.mode() & 0o007, 0);
        let (_g, other) = store.create_temp("data").unwrap();
        assert_ne!(temp, other);

        store.discard_temp("data", &temp);
        assert_eq!(temporaries(&bucket), vec![other.clone()]);
        store.discard_temp("data", &temp); // already gone: fine
        store.discard_temp("data", "../../etc/passwd"); // not ours: ignored
        store.discard_temp("nope", &other);
        assert_eq!(temporaries(&bucket), vec![other]);
        assert_eq!(status_for_io(&store.create_temp("nope").unwrap_err()), 404);
    }

    #[test]
    fn store_clean_stale_temporaries() {
        let (_tmp, store) = store();
        store.create_bucket("logs").unwrap();
        store.create_temp("data").unwrap();
        store.create_temp("data").unwrap();
        store.create_temp("logs").unwrap();
        put(&store, "data", "keep/me", b"1").unwrap();
        // Not a bucket, not a temporary of a bucket: left alone.
        std::fs::write(store.root().join(".lakegate-tmp-00"), b"").unwrap();
        std::fs::write(store.root().join("data/keep/.lakegate-tmp-00"), b"").unwrap();
        assert_eq!(store.clean_stale_temporaries().unwrap(), 3);
        assert!(temporaries(&store.root().join("data")).is_empty());
        assert!(temporaries(&store.root().join("logs")).is_empty());
        assert!(store.root().join(".lakegate-tmp-00").exists());
        assert_eq!(store.head_object("data", "keep/me").unwrap().size, 1);
        assert_eq!(store.clean_stale_temporaries().unwrap(), 0);
    }

    #[test]
    fn store_list_order_prefix_pages() {
        let (_tmp, store) = store();
        let all = ["x", "a/b", "a-b", "a.b", "a/c/d", "ab", "b", "a/c/e/f"];
        for k in all {
            put(&store, "data", k, k.as_bytes()).unwrap();
        }
        let _pending = store.create_temp("data").unwrap(); // an upload in flight
        std::fs::create_dir(store.root().join("data/empty")).unwrap();

        let l = store.list("data", "", None, 1000).unwrap();
        let sorted = ["a-b", "a.b", "a/b", "a/c/d", "a/c/e/f", "ab", "b", "x"];
        assert_eq!(keys(&l), sorted);
        assert!(!l.truncated && l.next_start_after.is_none());
        let (_, m) = &l.entries[2];
        assert_eq!(m.size, 3);
        assert_eq!(
            m.sha256_hex,
            store.head_object("data", "a/b").unwrap().sha256_hex
        );

        assert_eq!(
            keys(&store.list("data", "a/", None, 1000).unwrap()),
            ["a/b", "a/c/d", "a/c/e/f"]
        );
        assert_eq!(
            keys(&store.list("data", "a/c", None, 1000).unwrap()),
            ["a/c/d", "a/c/e/f"]
        );
        assert_eq!(keys(&store.list("data", "a", None, 1000).unwrap()).len(), 6);
        assert!(store
            .list("data", "zz", None, 1000)
            .unwrap()
            .entries
            .is_empty());
        assert_eq!(
            keys(&store.list("data", "", Some("a/c/d"), 1000).unwrap()),
            &sorted[4..]
        );

        // Pages of 3, chained by continuation tokens as a client would.
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let after = token.as_deref().map(|t| decode_continuation(t).unwrap());
            let l = store.list("data", "", after.as_deref(), 3).unwrap();
            pages += 1;
            assert!(l.entries.len() <= 3);
            seen.extend(keys(&l).iter().map(|k| k.to_string()));
            let xml = list_xml("data", "", 3, token.as_deref(), &l, false);
            if !l.truncated {
                assert!(!xml.contains("NextContinuationToken"));
                break;
            }
            let next = encode_continuation(l.next_start_after.as_deref().unwrap());
            assert!(xml.contains(&format!(
                "<NextContinuationToken>{next}</NextContinuationToken>"
            )));
            token = Some(next);
        }
        assert_eq!(seen, sorted);
        assert_eq!(pages, 3);

        let zero = store.list("data", "", None, 0).unwrap();
        assert!(zero.entries.is_empty() && !zero.truncated);
        assert_eq!(
            status_for_io(&store.list("nope", "", None, 10).unwrap_err()),
            404
        );
    }

    #[test]
    fn store_list_xml_escapes() {
        let (_tmp, store) = store();
        put(&store, "data", "a&b<c", b"abc").unwrap();
        put(&store, "data", "z", b"z").unwrap();
        let l = store.list("data", "a&", None, 1).unwrap();
        assert_eq!(keys(&l), ["a&b<c"]);
        let l = store.list("data", "", None, 1).unwrap();
        assert!(l.truncated);
        let xml = list_xml("data", "a\"'>", 1, Some("tok&"), &l, false);
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult"));
        assert!(xml.contains("<Key>a&amp;b&lt;c</Key>"), "{xml}");
        assert!(!xml.contains("a&b"));
        assert!(xml.contains("<Prefix>a&quot;&apos;&gt;</Prefix>"));
        assert!(xml.contains("<ContinuationToken>tok&amp;</ContinuationToken>"));
        assert!(xml
            .contains("<KeyCount>1</KeyCount><MaxKeys>1</MaxKeys><IsTruncated>true</IsTruncated>"));
        assert!(xml.contains(&format!("<ETag>&quot;{ABC_SHA256}&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass>")));
        let token = encode_continuation("a&b<c");
        assert!(xml.contains(&format!(
            "<NextContinuationToken>{token}</NextContinuationToken>"
        )));
        assert_eq!(decode_continuation(&token).as_deref(), Some("a&b<c"));
        assert_eq!(decode_continuation("YSZiPGM=").as_deref(), Some("a&b<c"));
        assert_eq!(decode_continuation("!!!"), None);
        assert_eq!(xml_escape("t\u{1}"), "t&#x1;");
        assert!(xml.ends_with("</ListBucketResult>"));
    }

    #[test]
    fn store_symlinks_never_escape() {
        let (tmp, store) = store();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
        let bucket = store.root().join("data");
        symlink(outside.join("secret.txt"), bucket.join("link-file")).unwrap();
        symlink(&outside, bucket.join("link-dir")).unwrap();
        symlink("../../outside", bucket.join("rel-dir")).unwrap();
        std::fs::create_dir(bucket.join("real")).unwrap();
        symlink("../link-dir", bucket.join("real/hop")).unwrap();
        put(&store, "data", "real/ok", b"ok").unwrap();

        // Reads: a symlink anywhere on the way is 403, never the target's bytes.
        for key in [
            "link-file",
            "link-dir/secret.txt",
            "rel-dir/secret.txt",
            "real/hop/secret.txt",
        ] {
            let e = store.open_object("data", key).unwrap_err();
            assert_eq!(status_for_io(&e), 403, "{key}: {e}");
            let e = store.head_object("data", key).unwrap_err();
            assert_eq!(status_for_io(&e), 403, "{key}: {e}");
        }
        // Also through the openat2 fallback walk.
        let dir = store.bucket_dir("data").unwrap();
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW;
        for key in ["link-file", "link-dir/secret.txt", "real/hop/secret.txt"] {
            assert!(walk_open(&dir, key, flags).is_err(), "{key}");
        }
        assert!(walk_open(&dir, "real/ok", flags).is_ok());

        // Writes: commit's mkdir walk refuses to go through the symlink; nothing lands
        // outside and the temporary is gone.
        for key in [
            "link-dir/new.txt",
            "rel-dir/new.txt",
            "real/hop/new.txt",
            "link-dir/deep/new.txt",
        ] {
            let e = put(&store, "data", key, b"pwned").unwrap_err();
            assert_eq!(status_for_io(&e), 403, "{key}: {e}");
        }
        // Overwriting a symlink replaces the link, never writes through it.
        put(&store, "data", "link-file", b"mine").unwrap();
        assert_eq!(
            std::fs::read(outside.join("secret.txt")).unwrap(),
            b"secret"
        );
        assert!(!bucket.join("link-file").is_symlink());
        std::fs::remove_file(bucket.join("link-file")).unwrap();
        symlink(outside.join("secret.txt"), bucket.join("link-file")).unwrap();
        let mut entries: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        assert_eq!(entries, ["secret.txt"]);
        assert!(temporaries(&bucket).is_empty());

        // Listing skips symlinks and does not descend through them.
        let l = store.list("data", "", None, 1000).unwrap();
        assert_eq!(keys(&l), ["real/ok"]);

        // Deletes: never through a symlink, never the link's target.
        for key in ["link-file", "link-dir/secret.txt", "real/hop/secret.txt"] {
            let e = store.delete_object("data", key).unwrap_err();
            assert_eq!(status_for_io(&e), 403, "{key}: {e}");
        }
        assert_eq!(
            std::fs::read(outside.join("secret.txt")).unwrap(),
            b"secret"
        );

        // A bucket folder that is itself a symlink is refused.
        symlink(&outside, store.root().join("evil")).unwrap();
        assert_eq!(status_for_io(&store.bucket_dir("evil").unwrap_err()), 403);
        assert_eq!(
            status_for_io(&store.open_object("evil", "secret.txt").unwrap_err()),
            403
        );
        assert_eq!(status_for_io(&store.create_temp("evil").unwrap_err()), 403);
    }

    #[test]
    fn store_special_files_are_not_objects() {
        let (_tmp, store) = store();
        let bucket = store.root().join("data");
        let fifo = bucket.join("fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(ok.success());
        // Would block forever without O_NONBLOCK.
        assert_eq!(
            status_for_io(&store.open_object("data", "fifo").unwrap_err()),
            404
        );
        assert_eq!(
            status_for_io(&store.delete_object("data", "fifo").unwrap_err()),
            404
        );
        std::fs::create_dir(bucket.join("dir")).unwrap();
        assert_eq!(
            status_for_io(&store.open_object("data", "dir").unwrap_err()),
            404
        );
        assert!(store.list("data", "", None, 10).unwrap().entries.is_empty());
        assert!(fifo.exists());
    }

    #[test]
    fn store_digests_verify() {
        let mut h = BodyHasher::new(true);
        h.update(b"a");
        h.update(b"bc");
        let d = h.finish();
        assert_eq!(d.sha256_hex(), ABC_SHA256);
        assert_eq!(hex(&d.md5.unwrap()), ABC_MD5);
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let sha = b64(&unhex32(ABC_SHA256).unwrap());
        assert_eq!(sha, "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
        let md5 = "kAFQmDzST7DWlj99KOF/cg==";
        assert_eq!(d.verify(None, None), Ok(()));
        assert_eq!(d.verify(Some(&sha), None), Ok(()));
        assert_eq!(d.verify(None, Some(md5)), Ok(()));
        assert_eq!(d.verify(Some(&sha), Some(md5)), Ok(()));
        assert_eq!(d.verify(Some(sha.trim_end_matches('=')), None), Ok(()));

        let other = b64(&[0u8; 32]);
        assert!(d
            .verify(Some(&other), None)
            .unwrap_err()
            .contains("does not match"));
        assert!(d
            .verify(None, Some(&b64(&[0u8; 16])))
            .unwrap_err()
            .contains("does not match"));
        assert!(d
            .verify(Some("not base64!"), None)
            .unwrap_err()
            .contains("not the base64"));
        assert!(d.verify(Some(md5), None).unwrap_err().contains("32 bytes"));
        assert!(d.verify(None, Some(&sha)).unwrap_err().contains("16 bytes"));
        assert!(d.verify(Some(&sha), Some(&other)).is_err());

        let no_md5 = BodyHasher::new(false).finish();
        assert!(no_md5.md5.is_none());
        assert!(no_md5
            .verify(None, Some(md5))
            .unwrap_err()
            .contains("not computed"));
        assert_eq!(
            no_md5.sha256_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn store_status_for_io() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(status_for_io(&os(libc::ENOSPC)), 507);
        assert_eq!(status_for_io(&os(libc::EDQUOT)), 507);
        assert_eq!(status_for_io(&os(libc::EACCES)), 403);
        assert_eq!(status_for_io(&os(libc::EPERM)), 403);
        assert_eq!(status_for_io(&os(libc::ELOOP)), 403);
        assert_eq!(status_for_io(&os(libc::ENOENT)), 404);
        assert_eq!(status_for_io(&os(libc::EISDIR)), 409);
        assert_eq!(status_for_io(&os(libc::EFBIG)), 413);
        assert_eq!(status_for_io(&os(libc::EIO)), 500);
        assert_eq!(
            status_for_io(&io::Error::new(io::ErrorKind::NotFound, "x")),
            404
        );
        assert_eq!(
            status_for_io(&io::Error::new(io::ErrorKind::StorageFull, "x")),
            507
        );
        assert_eq!(
            status_for_io(&io::Error::new(io::ErrorKind::PermissionDenied, "x")),
            403
        );
        assert_eq!(status_for_io(&io::Error::other("x")), 500);
    }

    #[test]
    fn each_errno_is_one_fault_and_the_store_failures_are_500_or_507() {
        let os = io::Error::from_raw_os_error;
        for (errno, fault) in [
            (libc::ENOENT, Fault::NotFound),
            (libc::ENOSPC, Fault::NoSpace),
            (libc::EDQUOT, Fault::NoSpace),
            (libc::EACCES, Fault::Denied),
            (libc::ELOOP, Fault::Denied),
            (libc::ENOTEMPTY, Fault::Conflict),
            (libc::ENAMETOOLONG, Fault::NameTooLong),
            (libc::EFBIG, Fault::TooLarge),
            (libc::EROFS, Fault::ReadOnly),
            (libc::EMFILE, Fault::NoDescriptors),
            (libc::ENFILE, Fault::NoDescriptors),
            (libc::EIO, Fault::Io),
            (libc::EOPNOTSUPP, Fault::Unsupported),
            (libc::EINVAL, Fault::Invalid),
            (libc::ENOMEM, Fault::Other),
        ] {
            let e = os(errno);
            assert_eq!(fault_of(&e), fault, "errno {errno}");
            let refused = io_error(&e, Code::NoSuchKey);
            assert_eq!(
                (refused.code, refused.fault),
                (fault.code(Code::NoSuchKey), Some(fault))
            );
            assert_eq!(refused.detail.as_deref(), Some(e.to_string().as_str()));
        }
        let lost = io::Error::other(PreconditionFailed("an object has the key"));
        assert_eq!(fault_of(&lost), Fault::Precondition);
        assert_eq!(
            io_error(&lost, Code::NoSuchKey).code,
            Code::PreconditionFailed
        );
    }

    /// Commit `body` onto `key` with `opts` (MD5 and SHA-256 of the body computed here).
    fn put_with(
        store: &Store,
        key: &str,
        body: &[u8],
        md5: bool,
        meta: Option<&s3::Metadata>,
        cond: Option<&s3::WriteConditions>,
    ) -> io::Result<Digests> {
        let (mut file, temp) = store.create_temp("data")?;
        file.write_all(body)?;
        let mut h = BodyHasher::new(true);
        h.update(body);
        let d = h.finish();
        let md5_hex = d.md5_hex();
        let opts = CommitOpts {
            md5_hex: md5_hex.as_deref().filter(|_| md5),
            meta,
            cond,
        };
        store.commit_with(
            "data",
            &temp,
            key,
            &file,
            Tag::Sha256(&d.sha256_hex()),
            opts,
        )?;
        Ok(d)
    }

    #[test]
    fn md5_etags_metadata_and_write_conditions() {
        let (_tmp, store) = store();
        if !store.keeps_attributes() {
            return; // the ETag and metadata attributes need user xattrs
        }
        let meta = s3::Metadata {
            content_type: Some("text/plain".into()),
            user: vec![("mtime".into(), "1".into())],
        };
        let d = put_with(&store, "k/obj", b"abc", true, Some(&meta), None).unwrap();
        let (file, m) = store.open_object("data", "k/obj").unwrap();
        assert_eq!(m.etag(), format!("\"{ABC_MD5}\""));
        assert_eq!(m.sha256_hex.as_deref(), Some(ABC_SHA256));
        assert_eq!(read_metadata(&file), meta);
        assert_eq!(d.md5_hex().as_deref(), Some(ABC_MD5));

        // If-None-Match: * onto an existing key: refused, the object unchanged, no
        // temporary left.
        let star = s3::WriteConditions {
            if_none_match_star: true,
            if_match: None,
        };
        let e = put_with(&store, "k/obj", b"new", true, None, Some(&star)).unwrap_err();
        assert_eq!(code_for_io(&e, Code::NoSuchKey), Code::PreconditionFailed);
        let m = store.head_object("data", "k/obj").unwrap();
        assert_eq!((m.size, m.etag()), (3, format!("\"{ABC_MD5}\"")));
        assert!(temporaries(&store.root().join("data")).is_empty());
        // If-Match with another ETag: refused; with this one: replaced.
        let other = s3::WriteConditions {
            if_none_match_star: false,
            if_match: Some("\"0123\"".into()),
        };
        let e = put_with(&store, "k/obj", b"new", false, None, Some(&other)).unwrap_err();
        assert_eq!(code_for_io(&e, Code::NoSuchKey), Code::PreconditionFailed);
        let this = s3::WriteConditions {
            if_none_match_star: false,
            if_match: Some(format!("\"{ABC_MD5}\"")),
        };
        let d = put_with(&store, "k/obj", b"new", false, None, Some(&this)).unwrap();
        let (file, m) = store.open_object("data", "k/obj").unwrap();
        // Stored under "sha256": the SHA-256 ETag, and no metadata left from before.
        assert_eq!(m.etag(), format!("\"{}\"", d.sha256_hex()));
        assert_eq!(read_metadata(&file), s3::Metadata::default());
        // A file rewritten behind the store's back loses its MD5 ETag with its stamp.
        put_with(&store, "k/obj", b"abc", true, None, None).unwrap();
        std::fs::write(store.root().join("data/k/obj"), b"abcd").unwrap();
        let m = store.head_object("data", "k/obj").unwrap();
        assert_eq!((m.md5_hex, m.size), (None, 4));
        store.delete_object("data", "k/obj").unwrap();
        // If-None-Match: * onto a free key goes through.
        put_with(&store, "k/obj", b"abc", true, None, Some(&star)).unwrap();
        // The largest stored form classify() lets through fits beside the other
        // attributes (one 4 KiB block on ext4).
        let big = s3::Metadata {
            content_type: None,
            user: vec![(
                "q".into(),
                format!("{}{}", "\"".repeat(1020), "v".repeat(1000)),
            )],
        };
        let json = serde_json::to_vec(&big).unwrap().len();
        assert!(json <= s3::MAX_STORED_METADATA && json > 3000, "{json}");
        put_with(&store, "k/big", b"abc", true, Some(&big), None).unwrap();
        let (file, _) = store.open_object("data", "k/big").unwrap();
        assert_eq!(read_metadata(&file), big);
    }

    #[test]
    fn buckets_are_listed_created_and_deleted_only_when_empty() {
        let (_tmp, store) = store();
        store.create_bucket_new("second").unwrap();
        assert_eq!(
            store.create_bucket_new("second").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert!(store.create_bucket_new("No_Such").is_err());
        std::fs::write(store.root().join("afile"), b"x").unwrap();
        symlink(store.root().join("data"), store.root().join("linked")).unwrap();
        let names: Vec<String> = store
            .list_buckets()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["data", "second"]);
        put(&store, "second", "a/b", b"x").unwrap();
        let e = store.delete_bucket("second").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::DirectoryNotEmpty);
        store.delete_object("second", "a/b").unwrap();
        let id = store
            .create_upload("second", "k", "me", None, &s3::Metadata::default())
            .unwrap();
        assert_eq!(
            store.delete_bucket("second").unwrap_err().kind(),
            io::ErrorKind::DirectoryNotEmpty
        );
        store.abort_upload("second", "k", &id, "me").unwrap();
        store.delete_bucket("second").unwrap();
        assert!(!store.root().join("second").exists());
        assert_eq!(
            status_for_io(&store.delete_bucket("second").unwrap_err()),
            404
        );
        // A symlinked bucket is never removed through.
        assert_eq!(
            status_for_io(&store.delete_bucket("linked").unwrap_err()),
            403
        );
        assert!(store.root().join("data").is_dir());
    }

    #[test]
    fn store_time_formats() {
        let at = |secs: u64, ms: u64| ObjectMeta {
            size: 0,
            mtime: UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms),
            sha256_hex: None,
            multipart_etag: None,
            md5_hex: None,
        };
        let m = at(784_111_777, 0);
        assert_eq!(m.last_modified_http(), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(m.last_modified_iso(), "1994-11-06T08:49:37.000Z");
        let m = at(1_709_164_800 + 3_661, 42); // 2024-02-29, a leap day
        assert_eq!(m.last_modified_http(), "Thu, 29 Feb 2024 01:01:01 GMT");
        assert_eq!(m.last_modified_iso(), "2024-02-29T01:01:01.042Z");
        let m = at(0, 0);
        assert_eq!(m.last_modified_http(), "Thu, 01 Jan 1970 00:00:00 GMT");
        let m = at(1_795_917_784, 0);
        assert_eq!(m.last_modified_iso(), "2026-11-29T02:03:04.000Z");
        assert_eq!(m.last_modified_http(), "Sun, 29 Nov 2026 02:03:04 GMT");
        assert_eq!(m.checksum_sha256_b64(), "");
    }
}
