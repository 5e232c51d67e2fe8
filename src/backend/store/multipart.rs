//! Multipart uploads and server-side copies on the store's filesystem.
//!
//! Owns the upload folders: `bucket/.lakegate-mpu/<upload id>/` (the reserved
//! `.lakegate` prefix keeps them out of keys and listings) holding `upload.json` (the
//! key, the identity that created the upload, when, and the announced checksum
//! algorithm), and per part a data file `part-NNNNN.<16 hex>` and its record
//! `part-NNNNN.json` (size, MD5, the checksums computed, the data file's name). A part
//! is received into an ordinary temporary in the bucket folder, then renamed into the
//! upload folder under a fresh name, then its record is renamed over the old one: a
//! re-upload of a part number replaces it whole, and a record never names a file that
//! is not complete. Completion assembles the parts in one temporary with
//! `copy_file_range` (the kernel copies, or shares extents on filesystems that can;
//! read/write where it cannot), records the multipart ETag, and renames the result into
//! place like a PUT. Abort and expiry rename the upload folder to `dead-<id>` first, so
//! that the id stops resolving at once, then remove it.
//!
//! Must not touch: sockets, TLS, the runtime, authorization. Ownership is checked here
//! by comparing the identity string the engine passes; any mismatch (another identity,
//! another key, a malformed id) is `NotFound`, like an id that never existed.

use std::fs::File;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::Digest as _;

use super::{
    hex, object_meta, open_dir_nofollow, open_object_at, sys, validate_bucket, validate_key, Kind,
    ObjectMeta, Store, Tag,
};
use crate::proto::s3::{self, Code, CompletePart, MAX_PARTS, MIN_PART_SIZE};

/// The folder of a bucket's multipart uploads.
pub const MPU_DIR: &str = ".lakegate-mpu";
/// An upload's own record.
const UPLOAD_RECORD: &str = "upload.json";
/// Prefix of an upload folder that is being removed.
const DEAD_PREFIX: &str = "dead-";
/// Largest record file read back (a key is at most 1 KiB, an identity a few hundred
/// bytes).
const MAX_RECORD: u64 = 16 * 1024;
/// Read/write fallback buffer when `copy_file_range` cannot be used.
const COPY_CHUNK: usize = 1 << 20;

/// What an upload's `upload.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadInfo {
    /// The object key the upload completes into.
    pub key: String,
    /// The identity that created it (see the engine for the form); the only one that
    /// may use it.
    pub owner: String,
    /// When it was created, unix seconds.
    pub created: u64,
    /// `x-amz-checksum-algorithm` of the create, if any.
    pub checksum: Option<String>,
    /// `Content-Type` and `x-amz-meta-*` of the create, given to the completed object
    /// (absent in records written before metadata was kept).
    #[serde(default)]
    pub meta: s3::Metadata,
}

/// What a part's record holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartInfo {
    /// 1 to 10,000.
    pub number: u32,
    /// The data file's name in the upload folder.
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// MD5 of the bytes, lowercase hex: the part's ETag.
    pub md5: String,
    /// SHA-256, standard base64.
    pub sha256: Option<String>,
    /// CRC-32, standard base64 of the 4 big-endian bytes, when computed.
    pub crc32: Option<String>,
    /// SHA-1, standard base64, when computed.
    pub sha1: Option<String>,
    /// When it was stored, unix seconds.
    pub modified: u64,
}

impl PartInfo {
    /// The record of part `number` of `size` bytes from its digests, before it is
    /// committed (which names its file and time); `None` without the MD5 (its ETag).
    pub fn of(number: u32, size: u64, d: &super::Digests) -> Option<PartInfo> {
        let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
        Some(PartInfo {
            number,
            file: String::new(),
            size,
            md5: d.md5_hex()?,
            sha256: Some(b64(&d.sha256)),
            crc32: d.crc32.map(|c| b64(&c)),
            sha1: d.sha1.map(|c| b64(&c)),
            modified: 0,
        })
    }

    /// The checksum recorded for `alg`, base64.
    pub fn checksum(&self, alg: s3::Algorithm) -> Option<&str> {
        match alg {
            s3::Algorithm::Crc32 => self.crc32.as_deref(),
            s3::Algorithm::Sha1 => self.sha1.as_deref(),
            s3::Algorithm::Sha256 => self.sha256.as_deref(),
        }
    }
}

/// One upload in a ListMultipartUploads page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadEntry {
    /// The key.
    pub key: String,
    /// The upload id.
    pub id: String,
    /// Created, unix seconds.
    pub created: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn not_found(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, why)
}

/// Upload ids are 32 lowercase hex digits; anything else names no upload.
pub fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut raw = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut raw)
        .map_err(|_| io::Error::other("the system random generator failed"))?;
    Ok(hex(&raw))
}

fn part_record(n: u32) -> String {
    format!("part-{n:05}.json")
}

/// Read a small file in `dir` whole.
fn read_small(dir: &File, name: &str) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let f = sys::open_at(
        dir,
        &sys::cstr(name)?,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    )?;
    let md = f.metadata()?;
    if !md.is_file() || md.len() > MAX_RECORD {
        return Err(not_found("not a record"));
    }
    let mut out = Vec::with_capacity(md.len() as usize);
    (&f).take(MAX_RECORD).read_to_end(&mut out)?;
    Ok(out)
}

/// Write `data` to `name` in `dir` through a temporary and a rename (fsynced first
/// when `fsync`).
fn write_record(dir: &File, name: &str, data: &[u8], fsync: bool) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = format!(".tmp-{}", random_hex(8)?);
    let tmp_c = sys::cstr(&tmp)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let mut f = sys::open_at(dir, &tmp_c, flags, 0o640)?;
    let written = f
        .write_all(data)
        .and_then(|()| if fsync { f.sync_all() } else { Ok(()) });
    let renamed = written.and_then(|()| sys::rename_at(dir, &tmp_c, dir, &sys::cstr(name)?));
    if renamed.is_err() {
        let _ = sys::unlink_at(dir, &tmp_c, 0);
    }
    renamed
}

/// Remove every entry of `dir` (files only: upload folders hold no folders), then the
/// folder `name` itself from `parent`.
fn remove_folder(parent: &File, name: &str) -> io::Result<()> {
    let c = sys::cstr(name)?;
    for _ in 0..3 {
        let dir = match open_dir_nofollow(parent, name) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for (entry, _) in sys::read_dir(&dir)? {
            if entry == "." || entry == ".." {
                continue;
            }
            let _ = sys::unlink_at(&dir, &sys::cstr(&entry)?, 0);
        }
        match sys::unlink_at(parent, &c, libc::AT_REMOVEDIR) {
            Ok(()) => return Ok(()),
            // A part renamed in meanwhile: empty it again.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "upload folder kept filling while being removed",
    ))
}

/// Copy `len` bytes of `src` from offset 0 to `dst` at `dst_off`: `copy_file_range`,
/// so the bytes never enter user space (and filesystems with reflinks share extents);
/// read/write when the kernel or filesystem cannot. `UnexpectedEof` if `src` is
/// shorter.
pub fn copy_range(src: &File, dst: &File, dst_off: u64, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    let mut kernel = true;
    while done < len {
        if kernel {
            let chunk = (len - done).min(1 << 30) as usize;
            match sys::copy_file_range(src, done, dst, dst_off + done, chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    done += n as u64;
                    continue;
                }
                Err(e)
                    if done == 0
                        && matches!(
                            e.raw_os_error(),
                            Some(
                                libc::EXDEV
                                    | libc::EINVAL
                                    | libc::ENOSYS
                                    | libc::EOPNOTSUPP
                                    | libc::EBADF
                            )
                        ) =>
                {
                    kernel = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        copy_user_space(src, dst, done, dst_off, len)?;
        done = len;
    }
    Ok(())
}

fn copy_user_space(src: &File, dst: &File, from: u64, dst_off: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut pos = from;
    while pos < len {
        let want = ((len - pos) as usize).min(COPY_CHUNK);
        let n = match src.read_at(&mut buf[..want], pos) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all_at(&buf[..n], dst_off + pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// What a CompleteMultipartUpload assembles: the parts in order, the object's size and
/// its ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The records of the listed parts, in the list's (ascending) order.
    pub parts: Vec<PartInfo>,
    /// Bytes of the assembled object.
    pub size: u64,
    /// The multipart ETag, S3's: hex MD5 of the parts' raw MD5s, `-`, the part count.
    pub etag: String,
}

/// Decide a CompleteMultipartUpload from the client's part list and the stored part
/// records (`record(n)`: part `n`'s record, or `None` if it was never stored), without
/// touching a file: every listed part must be stored with the listed ETag and checksums
/// (`InvalidPart`), every part but the last at least 5 MiB (`EntityTooSmall`), and the
/// whole at most `max_size` (`EntityTooLarge`). A missing or different part is reported
/// before any size, as S3 does. The list's order and numbering were checked when it was
/// parsed (`proto::s3`).
pub fn plan_completion(
    want: &[CompletePart],
    mut record: impl FnMut(u32) -> Option<PartInfo>,
    max_size: u64,
) -> Result<Completion, s3::Error> {
    let mut parts = Vec::with_capacity(want.len());
    let mut size = 0u64;
    for w in want {
        let invalid = |why: String| s3::Error::new(Code::InvalidPart).detail(why);
        let info = record(w.number)
            .filter(|i| i.number == w.number)
            .ok_or_else(|| invalid(format!("part {} was not uploaded", w.number)))?;
        if info.md5 != w.etag {
            return Err(invalid(format!("part {} has another ETag", w.number)));
        }
        for (alg, value) in &w.checksums {
            if info.checksum(*alg) != Some(value.as_str()) {
                return Err(invalid(format!(
                    "part {} has another {}",
                    w.number,
                    alg.header()
                )));
            }
        }
        size = size.saturating_add(info.size);
        parts.push(info);
    }
    if let Some(small) = parts
        .iter()
        .take(parts.len().saturating_sub(1))
        .find(|p| p.size < MIN_PART_SIZE)
    {
        return Err(s3::Error::new(Code::EntityTooSmall).detail(format!(
            "part {} is {} bytes, and only the last may be under 5 MiB",
            small.number, small.size
        )));
    }
    if size > max_size {
        return Err(s3::Error::new(Code::EntityTooLarge)
            .detail(format!("{size} bytes, max_object_size {max_size}")));
    }
    let mut md5s = md5::Md5::new();
    for p in &parts {
        let raw = unhex16(&p.md5)
            .ok_or_else(|| s3::Error::new(Code::InternalError).detail("bad part record"))?;
        md5s.update(raw);
    }
    let etag = format!("{}-{}", hex(&md5s.finalize()), parts.len());
    Ok(Completion { parts, size, etag })
}

/// One ListMultipartUploads page, built from uploads offered in any order (a folder's
/// listing order): the uploads after the markers, by key then upload id, at most `max`;
/// [`UploadPage::finish`] says whether more follow. S3's markers: `key_marker` alone
/// skips every upload of that key and before; with `id_marker` too, uploads of that key
/// resume after that id (S3 ignores an `id_marker` without a `key_marker`). Uploads of
/// one key are in id order, not S3's initiation order: the id is what the marker names.
///
/// It holds at most `max + 1` entries however many are offered (the smallest seen so
/// far, in a max-heap), so a bucket with a million uploads costs one page of keys of up
/// to 1 KiB each, not a million.
pub struct UploadPage<'m> {
    key_marker: Option<&'m str>,
    id_marker: Option<&'m str>,
    max: usize,
    heap: std::collections::BinaryHeap<ByKeyId>,
}

/// An upload ordered by (key, id) only.
struct ByKeyId(UploadEntry);

impl ByKeyId {
    fn key(&self) -> (&str, &str) {
        (&self.0.key, &self.0.id)
    }
}

impl PartialEq for ByKeyId {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}

impl Eq for ByKeyId {}

impl PartialOrd for ByKeyId {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for ByKeyId {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

impl<'m> UploadPage<'m> {
    /// An empty page after these markers, of at most `max` uploads.
    pub fn new(key_marker: Option<&'m str>, id_marker: Option<&'m str>, max: usize) -> Self {
        UploadPage {
            key_marker,
            id_marker,
            max,
            heap: std::collections::BinaryHeap::with_capacity(max.saturating_add(1).min(1024)),
        }
    }

    /// Whether an upload of `key` with `id` comes after the markers.
    fn after_markers(&self, key: &str, id: &str) -> bool {
        match (self.key_marker, self.id_marker) {
            (None, _) => true,
            (Some(k), None) => key > k,
            (Some(k), Some(i)) => (key, id) > (k, i),
        }
    }

    /// Consider one upload.
    pub fn offer(&mut self, e: UploadEntry) {
        if !self.after_markers(&e.key, &e.id) {
            return;
        }
        if self.heap.len() <= self.max {
            self.heap.push(ByKeyId(e));
        } else if self
            .heap
            .peek()
            .is_some_and(|top| (e.key.as_str(), e.id.as_str()) < top.key())
        {
            // Full: the new one displaces the largest kept.
            self.heap.pop();
            self.heap.push(ByKeyId(e));
        }
    }

    /// The page, sorted, and whether more follow. A page of 0 says none follow: there
    /// would be no last upload to name as the next marker.
    pub fn finish(self) -> (Vec<UploadEntry>, bool) {
        let mut page: Vec<UploadEntry> = self
            .heap
            .into_sorted_vec()
            .into_iter()
            .map(|b| b.0)
            .collect();
        let more = self.max > 0 && page.len() > self.max;
        page.truncate(self.max);
        (page, more)
    }
}

impl Store {
    /// The bucket's upload folder, created if `create`.
    fn mpu_root(&self, bucket: &str, create: bool) -> io::Result<File> {
        let dir = self.bucket_dir(bucket)?;
        if create {
            match sys::mkdir_at(&dir, &sys::cstr(MPU_DIR)?, 0o750) {
                Ok(()) => {
                    if self.fsync {
                        dir.sync_all()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        open_dir_nofollow(&dir, MPU_DIR)
    }

    /// Start an upload of `key` for `owner`; returns the new upload id.
    pub fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        owner: &str,
        checksum: Option<&str>,
        meta: &s3::Metadata,
    ) -> io::Result<String> {
        validate_key(key)?;
        if !meta.is_empty() && !self.keeps_attributes() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the store's filesystem keeps no user extended attributes for metadata",
            ));
        }
        let root = self.mpu_root(bucket, true)?;
        let info = UploadInfo {
            key: key.to_owned(),
            owner: owner.to_owned(),
            created: unix(SystemTime::now()),
            checksum: checksum.map(str::to_owned),
            meta: meta.clone(),
        };
        let record = serde_json::to_vec(&info).map_err(io::Error::other)?;
        for _ in 0..4 {
            let id = random_hex(16)?;
            match sys::mkdir_at(&root, &sys::cstr(&id)?, 0o750) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            let dir = open_dir_nofollow(&root, &id)?;
            if let Err(e) = write_record(&dir, UPLOAD_RECORD, &record, self.fsync) {
                let _ = remove_folder(&root, &id);
                return Err(e);
            }
            if self.fsync {
                root.sync_all()?;
            }
            return Ok(id);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no unused upload id after 4 random tries",
        ))
    }

    /// The upload `id` of `key`, if it exists and `owner` created it: its folder and
    /// record. `NotFound` otherwise, whatever the reason.
    fn upload(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        owner: &str,
    ) -> io::Result<(File, File, UploadInfo)> {
        if !valid_upload_id(id) {
            return Err(not_found("malformed upload id"));
        }
        let root = self.mpu_root(bucket, false).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound && self.bucket_dir(bucket).is_ok() {
                not_found("no uploads in this bucket")
            } else {
                e
            }
        })?;
        let dir = open_dir_nofollow(&root, id)?;
        let info: UploadInfo = serde_json::from_slice(&read_small(&dir, UPLOAD_RECORD)?)
            .map_err(|_| not_found("unreadable upload record"))?;
        if info.owner != owner || info.key != key {
            return Err(not_found("upload of another identity or key"));
        }
        Ok((root, dir, info))
    }

    /// Whether `owner` may use upload `id` of `key` (`NotFound` if not).
    pub fn check_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        owner: &str,
    ) -> io::Result<UploadInfo> {
        self.upload(bucket, key, id, owner).map(|(_, _, info)| info)
    }

    /// Make a received part (the temporary `temp` in the bucket folder, written through
    /// `file`) part `info.number` of the upload, replacing an earlier one. `synced`: the
    /// caller has already made the part's bytes durable (the engine fsyncs on its ring,
    /// so that the wait for the disk holds no pool thread); the folder entries are
    /// fsynced here either way, if configured. On any failure the temporary is removed.
    pub fn commit_part(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        owner: &str,
        (temp, file, synced): (&str, &File, bool),
        mut info: PartInfo,
    ) -> io::Result<()> {
        let sync_file = self.fsync && !synced;
        let r = self.commit_part_inner(bucket, key, id, owner, temp, file, &mut info, sync_file);
        if r.is_err() {
            self.discard_temp(bucket, temp);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_part_inner(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        owner: &str,
        temp: &str,
        file: &File,
        info: &mut PartInfo,
        sync_file: bool,
    ) -> io::Result<()> {
        super::open::check_temp_name(temp)?;
        if !(1..=MAX_PARTS).contains(&info.number) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "part number out of range",
            ));
        }
        let bucket_dir = self.bucket_dir(bucket)?;
        let (_, dir, _) = self.upload(bucket, key, id, owner)?;
        if sync_file {
            file.sync_all()?;
        }
        let record_name = part_record(info.number);
        let previous: Option<PartInfo> = read_small(&dir, &record_name)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        info.file = format!("part-{:05}.{}", info.number, random_hex(8)?);
        info.modified = unix(SystemTime::now());
        sys::rename_at(
            &bucket_dir,
            &sys::cstr(temp)?,
            &dir,
            &sys::cstr(&info.file)?,
        )?;
        let record = serde_json::to_vec(&info).map_err(io::Error::other)?;
        if let Err(e) = write_record(&dir, &record_name, &record, self.fsync) {
            let _ = sys::unlink_at(&dir, &sys::cstr(&info.file)?, 0);
            return Err(e);
        }
        if self.fsync {
            dir.sync_all()?;
        }
        if let Some(prev) = previous.filter(|p| p.file != info.file && p.file.starts_with("part-"))
        {
            let _ = sys::unlink_at(&dir, &sys::cstr(&prev.file)?, 0);
        }
        Ok(())
    }

    /// The parts of an upload, by number.
    pub fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        owner: &str,
    ) -> io::Result<Vec<PartInfo>> {
        let (_, dir, _) = self.upload(bucket, key, id, owner)?;
        let mut parts = Vec::new();
        for (name, _) in sys::read_dir(&dir)? {
            if !(name.starts_with("part-") && name.ends_with(".json")) {
                continue;
            }
            if let Ok(p) = read_small(&dir, &name)
                .ok()
                .and_then(|b| serde_json::from_slice::<PartInfo>(&b).ok())
                .ok_or(())
            {
                if part_record(p.number) == name {
                    parts.push(p);
                }
            }
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    /// Remove an upload and its parts.
    pub fn abort_upload(&self, bucket: &str, key: &str, id: &str, owner: &str) -> io::Result<()> {
        let (root, _, _) = self.upload(bucket, key, id, owner)?;
        self.remove_upload(&root, id)
    }

    /// Rename the upload folder out of the way (the id stops resolving), then remove it.
    fn remove_upload(&self, root: &File, id: &str) -> io::Result<()> {
        let dead = format!("{DEAD_PREFIX}{id}");
        sys::rename_at(root, &sys::cstr(id)?, root, &sys::cstr(&dead)?)?;
        let r = remove_folder(root, &dead);
        if self.fsync {
            root.sync_all()?;
        }
        r
    }

    /// CompleteMultipartUpload: check the listed parts against the stored ones, assemble
    /// them in a temporary, record the multipart ETag and rename it onto the key, then
    /// remove the upload. Returns the ETag (without quotes) and the new object's
    /// metadata. `parts` must already be in ascending order ([`s3::parse_complete`]).
    #[allow(clippy::too_many_arguments)]
    pub fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        owner: &str,
        parts: &[CompletePart],
        max_size: u64,
        cond: &s3::WriteConditions,
    ) -> Result<(String, ObjectMeta), s3::Error> {
        let io_err = |e: io::Error, not_found: Code| super::io_error(&e, not_found);
        let (root, dir, info) = self
            .upload(bucket, key, id, owner)
            .map_err(|e| io_err(e, Code::NoSuchUpload))?;
        let Completion {
            parts: stored,
            size: total,
            etag,
        } = plan_completion(
            parts,
            |n| {
                read_small(&dir, &part_record(n))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            },
            max_size,
        )?;

        let (out, temp) = self
            .create_temp(bucket)
            .map_err(|e| io_err(e, Code::NoSuchBucket))?;
        let assembled = (|| -> io::Result<()> {
            let mut off = 0u64;
            for p in &stored {
                let f = sys::open_at(
                    &dir,
                    &sys::cstr(&p.file)?,
                    libc::O_RDONLY | libc::O_NOFOLLOW,
                    0,
                )?;
                copy_range(&f, &out, off, p.size)?;
                off += p.size;
            }
            Ok(())
        })();
        if let Err(e) = assembled {
            self.discard_temp(bucket, &temp);
            // A part vanished under us: the upload was aborted or completed meanwhile.
            return Err(io_err(e, Code::NoSuchUpload));
        }
        let opts = super::CommitOpts {
            md5_hex: None,
            meta: Some(&info.meta),
            cond: Some(cond),
        };
        // A failed precondition leaves the upload as it was, to be retried or aborted.
        self.commit_with(bucket, &temp, key, &out, Tag::Multipart(&etag), opts)
            .map_err(|e| io_err(e, Code::NoSuchBucket))?;
        if let Err(e) = self.remove_upload(&root, id) {
            tracing::warn!(bucket, upload_id = id, error = %e, "completed upload not fully removed; the sweep will");
        }
        let mtime = out
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|e| io_err(e, Code::NoSuchKey))?;
        let meta = ObjectMeta {
            size: total,
            mtime,
            sha256_hex: None,
            multipart_etag: Some(etag.clone()),
            md5_hex: None,
        };
        Ok((etag, meta))
    }

    /// `owner`'s uploads in `bucket` whose key starts with `prefix`, sorted by key then
    /// id, after (`key_marker`, `id_marker`); at most `max`. The bool: more follow.
    pub fn list_uploads(
        &self,
        bucket: &str,
        owner: &str,
        prefix: &str,
        key_marker: Option<&str>,
        id_marker: Option<&str>,
        max: usize,
    ) -> io::Result<(Vec<UploadEntry>, bool)> {
        validate_bucket(bucket)?;
        let root = match self.mpu_root(bucket, false) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.bucket_dir(bucket)?;
                return Ok((Vec::new(), false));
            }
            Err(e) => return Err(e),
        };
        // Streamed from the folder: neither the ids nor the keys of every upload are
        // held, only one page.
        let mut page = UploadPage::new(key_marker, id_marker, max);
        sys::for_each_entry(&root, |id, _| {
            if !valid_upload_id(id) {
                return Ok(true);
            }
            let Ok(dir) = open_dir_nofollow(&root, id) else {
                return Ok(true);
            };
            let info = read_small(&dir, UPLOAD_RECORD)
                .ok()
                .and_then(|b| serde_json::from_slice::<UploadInfo>(&b).ok());
            if let Some(info) = info.filter(|i| i.owner == owner && i.key.starts_with(prefix)) {
                page.offer(UploadEntry {
                    key: info.key,
                    id: id.to_owned(),
                    created: info.created,
                });
            }
            Ok(true)
        })?;
        Ok(page.finish())
    }

    /// Remove uploads untouched (no part stored) for longer than `max_age`, and the
    /// remains of removals that were interrupted; returns how many uploads expired.
    pub fn sweep_uploads(&self, max_age: Duration, now: SystemTime) -> io::Result<usize> {
        let mut expired = 0;
        for (bucket, kind) in sys::read_dir(&self.root_dir)? {
            if validate_bucket(&bucket).is_err()
                || super::resolve_kind(&self.root_dir, &bucket, kind)? != Kind::Dir
            {
                continue;
            }
            let Ok(root) = self.mpu_root(&bucket, false) else {
                continue;
            };
            for (name, _) in sys::read_dir(&root)? {
                if name.starts_with(DEAD_PREFIX) {
                    let _ = remove_folder(&root, &name);
                    continue;
                }
                if !valid_upload_id(&name) {
                    continue;
                }
                let Ok(dir) = open_dir_nofollow(&root, &name) else {
                    continue;
                };
                let touched = dir.metadata().and_then(|m| m.modified()).unwrap_or(now);
                if now.duration_since(touched).unwrap_or(Duration::ZERO) > max_age {
                    match self.remove_upload(&root, &name) {
                        Ok(()) => expired += 1,
                        Err(e) => {
                            tracing::warn!(bucket, upload_id = name, error = %e, "could not remove an expired upload")
                        }
                    }
                }
            }
        }
        Ok(expired)
    }

    /// UploadPartCopy: make `range` (inclusive; `None`: the whole object) of `src_key`
    /// in `src_bucket` part `number` of upload `id` on `key`, once `check` approved the
    /// source's metadata (the `x-amz-copy-source-if-*` preconditions). The part is
    /// hashed as a received one is (MD5, its ETag; SHA-256; CRC-32 or SHA-1 when the
    /// upload announced that algorithm) and committed the same way, replacing an
    /// earlier part of that number only once whole. Nothing is kept on any failure.
    /// A part is at most `max_len` bytes (the smaller of S3's 5 GiB and
    /// `max_object_size`, as for a received part). Returns the part's MD5 (hex) and its
    /// LastModified (ISO 8601).
    pub fn upload_part_copy(
        &self,
        (src_bucket, src_key, range): (&str, &str, Option<(u64, u64)>),
        (bucket, key, id, owner): (&str, &str, &str, &str),
        (number, max_len): (u32, u64),
        check: impl FnOnce(&ObjectMeta) -> Result<(), s3::Error>,
    ) -> Result<(String, String), s3::Error> {
        let no_bucket_or = |e: &io::Error, bucket: &str, code: Code| {
            let nf = if e.kind() == io::ErrorKind::NotFound && self.bucket_dir(bucket).is_err() {
                Code::NoSuchBucket
            } else {
                code
            };
            super::io_error(e, nf)
        };
        // The upload first: a foreign or unknown one is NoSuchUpload before the source
        // is even looked at.
        let upload = self
            .check_upload(bucket, key, id, owner)
            .map_err(|e| no_bucket_or(&e, bucket, Code::NoSuchUpload))?;
        let src_missing = |e: io::Error| {
            no_bucket_or(&e, src_bucket, Code::NoSuchKey).detail(format!("copy source: {e}"))
        };
        let src_dir = self.bucket_dir(src_bucket).map_err(src_missing)?;
        let src = open_object_at(&src_dir, src_key).map_err(src_missing)?;
        let meta = object_meta(&src, self.xattrs).map_err(src_missing)?;
        check(&meta)?;
        let (off, len) = match range {
            None => (0, meta.size),
            Some((first, last)) if last < meta.size => (first, last - first + 1),
            Some(_) => {
                return Err(s3::Error::msg(
                    Code::InvalidArgument,
                    format!(
                        "Range specified is not valid for source object of size: {}",
                        meta.size
                    ),
                ))
            }
        };
        if len > s3::MAX_PART_SIZE {
            return Err(s3::Error::msg(
                Code::InvalidRequest,
                format!(
                    "The specified copy source is larger than the maximum allowable size for a copy source: {}",
                    s3::MAX_PART_SIZE
                ),
            ));
        }
        if len > max_len {
            return Err(s3::Error::new(Code::EntityTooLarge)
                .detail(format_args!("a {len}-byte part, limit {max_len}")));
        }
        let announced = upload.checksum.as_deref().and_then(s3::Algorithm::by_name);
        let mut hasher = super::BodyHasher::with(
            true,
            announced == Some(s3::Algorithm::Crc32),
            announced == Some(s3::Algorithm::Sha1),
        );
        let dst_err = |e: io::Error| no_bucket_or(&e, bucket, Code::NoSuchUpload);
        let (out, temp) = self.create_temp(bucket).map_err(dst_err)?;
        if let Err(e) = copy_hashing(&src, off, &out, len, &mut hasher) {
            self.discard_temp(bucket, &temp);
            if e.kind() == io::ErrorKind::UnexpectedEof {
                // The source shrank under us: it is not the object `check` approved.
                return Err(s3::Error::new(Code::InternalError).detail("copy source shrank"));
            }
            // A failing disk or a full one, on either side: its fault, its code.
            return Err(super::io_error(&e, Code::InternalError).detail(format!("copy: {e}")));
        }
        let Some(info) = PartInfo::of(number, len, &hasher.finish()) else {
            self.discard_temp(bucket, &temp);
            return Err(s3::Error::new(Code::InternalError).detail("part without its MD5"));
        };
        let md5 = info.md5.clone();
        // commit_part removes the temporary on failure.
        self.commit_part(bucket, key, id, owner, (&temp, &out, false), info)
            .map_err(|e| no_bucket_or(&e, bucket, Code::NoSuchUpload))?;
        let mtime = out.metadata().and_then(|m| m.modified()).map_err(dst_err)?;
        Ok((md5, ObjectMeta { mtime, ..meta }.last_modified_iso()))
    }

    /// CopyObject: copy `src_key` of `src_bucket` onto `key` of `bucket` through a
    /// temporary and a rename, after `check` approved the source's metadata (the
    /// `x-amz-copy-source-if-*` preconditions). The copy keeps the source's ETag, and
    /// its Content-Type and user metadata unless `replace` gives new ones. Nothing is
    /// created unless the source opens, passes `check` and is copied whole. Returns
    /// the new object's metadata.
    pub fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        bucket: &str,
        key: &str,
        replace: Option<&s3::Metadata>,
        check: impl FnOnce(&ObjectMeta) -> Result<(), s3::Error>,
    ) -> Result<ObjectMeta, s3::Error> {
        let src_missing = |e: io::Error| {
            let nf = if e.kind() == io::ErrorKind::NotFound && self.bucket_dir(src_bucket).is_err()
            {
                Code::NoSuchBucket
            } else {
                Code::NoSuchKey
            };
            super::io_error(&e, nf).detail(format!("copy source: {e}"))
        };
        validate_key(key).map_err(|e| super::key_error(&e))?;
        let src_dir = self.bucket_dir(src_bucket).map_err(src_missing)?;
        let src = open_object_at(&src_dir, src_key).map_err(src_missing)?;
        let meta = object_meta(&src, self.xattrs).map_err(src_missing)?;
        check(&meta)?;
        let dst_err = |e: io::Error| {
            let nf = if self.bucket_dir(bucket).is_err() {
                Code::NoSuchBucket
            } else {
                Code::NoSuchKey
            };
            super::io_error(&e, nf)
        };
        let (out, temp) = self.create_temp(bucket).map_err(dst_err)?;
        if let Err(e) = copy_range(&src, &out, 0, meta.size) {
            self.discard_temp(bucket, &temp);
            return Err(dst_err(e));
        }
        let Some(tag) = meta.tag() else {
            self.discard_temp(bucket, &temp);
            return Err(s3::Error::new(Code::InternalError).detail("copy source without a tag"));
        };
        let kept;
        let meta_out = match replace {
            Some(m) => m,
            None => {
                kept = super::read_metadata(&src);
                &kept
            }
        };
        let opts = super::CommitOpts {
            md5_hex: meta.md5_hex.as_deref(),
            meta: Some(meta_out),
            cond: None,
        };
        self.commit_with(bucket, &temp, key, &out, tag, opts)
            .map_err(dst_err)?;
        let mtime = out.metadata().and_then(|m| m.modified()).map_err(dst_err)?;
        Ok(ObjectMeta { mtime, ..meta })
    }
}

/// Copy `len` bytes of `src` from `src_off` to the start of `dst`, feeding them to
/// `hasher` on the way: one pass through user space, since a part's digests need every
/// byte anyway (a `copy_file_range` would have to be read back to hash).
/// `UnexpectedEof` if `src` is shorter.
fn copy_hashing(
    src: &File,
    src_off: u64,
    dst: &File,
    len: u64,
    hasher: &mut super::BodyHasher,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(COPY_CHUNK);
        let n = match src.read_at(&mut buf[..want], src_off + done) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        dst.write_all_at(&buf[..n], done)?;
        done += n as u64;
    }
    Ok(())
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let h = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(h, 16).ok()?;
    }
    Some(out)
}

fn iso(secs: u64) -> String {
    ObjectMeta {
        size: 0,
        mtime: UNIX_EPOCH + Duration::from_secs(secs),
        sha256_hex: None,
        multipart_etag: None,
        md5_hex: None,
    }
    .last_modified_iso()
}

fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    s3::xml_escape_into(&mut out, s);
    out
}

/// The ListParts result: the page of `parts` after `marker`, at most `max`.
pub fn list_parts_xml(
    bucket: &str,
    key: &str,
    id: &str,
    parts: &[PartInfo],
    marker: u32,
    max: usize,
) -> String {
    use std::fmt::Write as _;
    let page: Vec<&PartInfo> = parts
        .iter()
        .filter(|p| p.number > marker)
        .take(max)
        .collect();
    let truncated = parts.iter().filter(|p| p.number > marker).count() > page.len();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListPartsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{}</UploadId><PartNumberMarker>{marker}</PartNumberMarker>",
        text(bucket),
        text(key),
        text(id)
    );
    if let Some(last) = page.last() {
        let _ = write!(
            x,
            "<NextPartNumberMarker>{}</NextPartNumberMarker>",
            last.number
        );
    }
    let _ = write!(
        x,
        "<MaxParts>{max}</MaxParts><IsTruncated>{truncated}</IsTruncated><StorageClass>STANDARD</StorageClass>"
    );
    for p in page {
        let _ = write!(
            x,
            "<Part><PartNumber>{}</PartNumber><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag><Size>{}</Size>",
            p.number,
            iso(p.modified),
            p.md5,
            p.size
        );
        for (tag, v) in [
            ("ChecksumCRC32", &p.crc32),
            ("ChecksumSHA1", &p.sha1),
            ("ChecksumSHA256", &p.sha256),
        ] {
            if let Some(v) = v {
                let _ = write!(x, "<{tag}>{}</{tag}>", text(v));
            }
        }
        x.push_str("</Part>");
    }
    x.push_str("</ListPartsResult>");
    x
}

/// The ListMultipartUploads result.
pub fn list_uploads_xml(
    bucket: &str,
    spec: &s3::UploadsSpec<'_>,
    uploads: &[UploadEntry],
    truncated: bool,
) -> String {
    use std::fmt::Write as _;
    let enc = |s: &str| {
        if spec.url_encode {
            let mut e = String::new();
            s3::url_encode_into(&mut e, s);
            e
        } else {
            text(s)
        }
    };
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket><KeyMarker>{}</KeyMarker><UploadIdMarker>{}</UploadIdMarker>",
        text(bucket),
        enc(spec.key_marker.unwrap_or("")),
        text(spec.upload_id_marker.unwrap_or(""))
    );
    if let (true, Some(last)) = (truncated, uploads.last()) {
        let _ = write!(
            x,
            "<NextKeyMarker>{}</NextKeyMarker><NextUploadIdMarker>{}</NextUploadIdMarker>",
            enc(&last.key),
            text(&last.id)
        );
    }
    let _ = write!(
        x,
        "<Prefix>{}</Prefix><MaxUploads>{}</MaxUploads><IsTruncated>{truncated}</IsTruncated>",
        enc(spec.prefix),
        spec.max_uploads
    );
    if spec.url_encode {
        x.push_str("<EncodingType>url</EncodingType>");
    }
    for u in uploads {
        let _ = write!(
            x,
            "<Upload><Key>{}</Key><UploadId>{}</UploadId><StorageClass>STANDARD</StorageClass><Initiated>{}</Initiated></Upload>",
            enc(&u.key),
            text(&u.id),
            iso(u.created)
        );
    }
    x.push_str("</ListMultipartUploadsResult>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// [`UploadPage`] over a whole collection.
    fn upload_page(
        candidates: impl IntoIterator<Item = UploadEntry>,
        key_marker: Option<&str>,
        id_marker: Option<&str>,
        max: usize,
    ) -> (Vec<UploadEntry>, bool) {
        let mut page = UploadPage::new(key_marker, id_marker, max);
        for e in candidates {
            page.offer(e);
        }
        page.finish()
    }

    fn entry(key: &str, id: &str) -> UploadEntry {
        UploadEntry {
            key: key.into(),
            id: id.into(),
            created: 0,
        }
    }

    /// The page as the old code made it: everything after the markers, sorted, cut.
    fn reference(
        all: &[UploadEntry],
        km: Option<&str>,
        im: Option<&str>,
        max: usize,
    ) -> (Vec<UploadEntry>, bool) {
        let mut v: Vec<UploadEntry> = all
            .iter()
            .filter(|e| match (km, im) {
                (None, _) => true,
                (Some(k), None) => e.key.as_str() > k,
                (Some(k), Some(i)) => (e.key.as_str(), e.id.as_str()) > (k, i),
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.key, &a.id).cmp(&(&b.key, &b.id)));
        // A page of 0 says none follow (there is no last upload to resume after).
        let more = max > 0 && v.len() > max;
        v.truncate(max);
        (v, more)
    }

    #[test]
    fn an_uploads_page_is_the_smallest_after_the_markers_in_any_listing_order() {
        // Keys a..e, three uploads each, in a scrambled order (a folder lists in hash
        // order); the same page whatever the order.
        let mut all = Vec::new();
        for k in ["c", "a", "e", "b", "d"] {
            for i in ["2", "0", "1"] {
                all.push(entry(k, i));
            }
        }
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..50 {
            for j in (1..all.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                all.swap(j, (x % (j as u64 + 1)) as usize);
            }
            for (km, im) in [
                (None, None),
                (None, Some("1")),
                (Some("b"), None),
                (Some("b"), Some("0")),
                (Some("b"), Some("2")),
                (Some("e"), Some("2")),
                (Some("0"), None),
                (Some("z"), None),
            ] {
                for max in [0, 1, 2, 3, 7, 14, 15, 16, 1000] {
                    let got = upload_page(all.iter().cloned(), km, im, max);
                    assert_eq!(
                        got,
                        reference(&all, km, im, max),
                        "round {round} markers {km:?}/{im:?} max {max}"
                    );
                }
            }
        }
        // The markers' meaning, spelled out.
        let keys = |v: Vec<UploadEntry>| -> Vec<String> {
            v.into_iter()
                .map(|e| format!("{}/{}", e.key, e.id))
                .collect()
        };
        let (p, more) = upload_page(all.iter().cloned(), Some("b"), Some("0"), 3);
        assert_eq!(keys(p), ["b/1", "b/2", "c/0"]);
        assert!(more);
        let (p, more) = upload_page(all.iter().cloned(), Some("d"), None, 10);
        assert_eq!(keys(p), ["e/0", "e/1", "e/2"]);
        assert!(!more);
        // An id marker without a key marker is ignored, as S3 does.
        assert_eq!(
            upload_page(all.iter().cloned(), None, Some("9"), 1).0,
            [entry("a", "0")]
        );
    }

    #[test]
    fn an_uploads_page_holds_one_page_however_many_uploads_there_are() {
        // 200,000 candidates, streamed: a page of 2 is the two smallest, and "more".
        let many = (0..200_000u32)
            .rev()
            .map(|n| entry(&format!("k{n:06}"), "id"));
        let (p, more) = upload_page(many, None, None, 2);
        assert_eq!(p, [entry("k000000", "id"), entry("k000001", "id")]);
        assert!(more);
    }

    /// Parts 1-3 of 5 MiB of `a`, 5 MiB of `b` and the byte `c`; the MD5s and the
    /// multipart ETag were computed by Python's hashlib, not by this code.
    fn stored(n: u32) -> Option<PartInfo> {
        let (md5, size) = match n {
            1 => ("79b281060d337b9b2b84ccf390adcf74", 5 * MIB),
            2 => ("74843a3ab193a389bced899402d99d5f", 5 * MIB),
            3 => ("4a8a08f09d37b73795649038408b5f33", 1),
            _ => return None,
        };
        Some(PartInfo {
            number: n,
            file: format!("part-{n:05}.x"),
            size,
            md5: md5.into(),
            sha256: (n == 3).then(|| "Ln0sA6lQeuJl7PW1NWiFpTOTogKdJBOUmXJloaJa78Y=".into()),
            crc32: None,
            sha1: None,
            modified: 0,
        })
    }

    fn part(n: u32) -> CompletePart {
        CompletePart {
            number: n,
            etag: stored(n).map_or("00000000000000000000000000000000".into(), |p| p.md5),
            checksums: Vec::new(),
        }
    }

    fn code(r: Result<Completion, s3::Error>) -> (Code, String) {
        let e = r.unwrap_err();
        (e.code, e.detail.unwrap_or_default())
    }

    #[test]
    fn a_completion_is_the_parts_in_order_with_s3s_etag() {
        let c = plan_completion(&[part(1), part(2), part(3)], stored, 11 * MIB).unwrap();
        assert_eq!(c.etag, "0a97f1336a2298a6c3e9adaa562a9eec-3");
        assert_eq!(c.size, 10 * MIB + 1);
        let numbers: Vec<u32> = c.parts.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 3]);
        // Any part may be left out, and the last may be small; one small part is whole.
        assert!(plan_completion(&[part(1), part(3)], stored, u64::MAX).is_ok());
        assert_eq!(
            plan_completion(&[part(3)], stored, u64::MAX).unwrap().size,
            1
        );
    }

    #[test]
    fn a_part_not_stored_or_different_is_invalid_and_named() {
        let missing = code(plan_completion(&[part(1), part(4)], stored, u64::MAX));
        assert_eq!(
            missing,
            (Code::InvalidPart, "part 4 was not uploaded".into())
        );
        let mut other = part(2);
        other.etag = part(1).etag;
        assert_eq!(
            code(plan_completion(&[part(1), other], stored, u64::MAX)),
            (Code::InvalidPart, "part 2 has another ETag".into())
        );
        let mut sum = part(3);
        sum.checksums = vec![(s3::Algorithm::Sha256, "AAAA".into())];
        assert_eq!(
            code(plan_completion(&[sum.clone()], stored, u64::MAX)).0,
            Code::InvalidPart
        );
        sum.checksums = vec![(
            s3::Algorithm::Sha256,
            "Ln0sA6lQeuJl7PW1NWiFpTOTogKdJBOUmXJloaJa78Y=".into(),
        )];
        assert!(plan_completion(&[sum.clone()], stored, u64::MAX).is_ok());
        // A checksum the part was not stored with cannot match.
        sum.checksums = vec![(s3::Algorithm::Crc32, "AAAAAA==".into())];
        assert_eq!(
            code(plan_completion(&[sum], stored, u64::MAX)).0,
            Code::InvalidPart
        );
        // A record that names another part than the one asked for is not that part.
        let shifted = |n: u32| stored(n + 1);
        assert_eq!(
            code(plan_completion(&[part(1)], shifted, u64::MAX)).0,
            Code::InvalidPart
        );
    }

    #[test]
    fn only_the_last_part_may_be_small_and_the_whole_must_fit() {
        assert_eq!(
            code(plan_completion(&[part(3), part(1)], stored, u64::MAX)),
            (
                Code::EntityTooSmall,
                "part 3 is 1 bytes, and only the last may be under 5 MiB".into()
            )
        );
        // A missing part is reported before a size.
        assert_eq!(
            code(plan_completion(&[part(3), part(9)], stored, u64::MAX)).0,
            Code::InvalidPart
        );
        assert_eq!(
            code(plan_completion(
                &[part(1), part(2), part(3)],
                stored,
                10 * MIB
            ))
            .0,
            Code::EntityTooLarge
        );
        assert!(plan_completion(&[part(1), part(2), part(3)], stored, 10 * MIB + 1).is_ok());
    }
}
