//! An upload's commit, with its waits for the disk on the worker's ring: the upload's
//! fsync, the key's parent folders (`mkdirat`, then opened without following a
//! symlink), the rename onto the key and the folders' fsyncs are ring operations
//! ([`crate::engine::fsops`]); the kernel's io-wq threads wait for the disk, neither
//! the worker's loop nor a pool thread. What stays on the blocking pool is short and
//! touches no file's bytes: the extended attributes, and a conditional rename
//! (`If-Match` must read the current object's attributes under the commit lock). The
//! steps and their order are [`Store::commit_with`]'s, which the pool and the tests
//! still run as one blocking call.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::offload::COMMIT_PATIENCE;
use super::{files, Conn};
use crate::backend::store::{self, open, Store};
use crate::engine::fsops;
use crate::proto::s3;

impl Conn<'_> {
    /// Commit an upload (xattrs, fsync, parent folders, rename, folder fsyncs). The
    /// temporary is gone afterwards unless the commit succeeded, including when the pool
    /// refused its job.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        temp: &str,
        key: &str,
        file: File,
        sha256_hex: &str,
        md5_hex: Option<String>,
        meta: s3::Metadata,
        cond: s3::WriteConditions,
    ) -> Result<(), s3::Error> {
        let r = self
            .commit_steps(
                store,
                bucket,
                temp,
                key,
                file,
                (sha256_hex, md5_hex),
                meta,
                cond,
            )
            .await;
        if r.is_err() {
            files::discard_temp(store, bucket, temp).await;
        }
        r
    }

    /// Commit a multipart part: its fsync on the ring, then its record and rename on
    /// the pool. The temporary is gone afterwards unless it succeeded.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit_part_off_loop(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        key: &str,
        id: &str,
        temp: &str,
        file: File,
        info: store::multipart::PartInfo,
    ) -> Result<(), s3::Error> {
        let file = if store.fsyncs() {
            match fsops::sync(file).await {
                (Ok(()), file) => file,
                (Err(e), _) => {
                    files::discard_temp(store, bucket, temp).await;
                    return Err(files::ring_object_error(store, bucket, e).await);
                }
            }
        } else {
            file
        };
        let (b, k, i, o, t) = (
            bucket.to_owned(),
            key.to_owned(),
            id.to_owned(),
            self.owner(),
            temp.to_owned(),
        );
        // The store removes the temporary itself when the commit fails; only one the
        // pool never took is removed here.
        let r = self
            .offload(store, COMMIT_PATIENCE, move |st| {
                Ok(st
                    .commit_part(&b, &k, &i, &o, (&t, &file, true), info)
                    .map_err(|e| files::upload_error(st, &b, &e)))
            })
            .await;
        match r {
            Ok(r) => r,
            Err(e) => {
                files::discard_temp(store, bucket, temp).await;
                Err(e)
            }
        }
    }

    /// [`Conn::commit`] but for the removal of the temporary on failure.
    #[allow(clippy::too_many_arguments)]
    async fn commit_steps(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        temp: &str,
        key: &str,
        file: File,
        (sha256_hex, md5_hex): (&str, Option<String>),
        meta: s3::Metadata,
        cond: s3::WriteConditions,
    ) -> Result<(), s3::Error> {
        let (b, t, k, h) = (
            bucket.to_owned(),
            temp.to_owned(),
            key.to_owned(),
            sha256_hex.to_owned(),
        );
        // Attributes before the fsync, so that one fsync makes them durable too.
        let file = self
            .offload(store, COMMIT_PATIENCE, move |st| {
                let opts = store::CommitOpts {
                    md5_hex: md5_hex.as_deref(),
                    meta: Some(&meta),
                    cond: None,
                };
                st.commit_prepare(&t, &k, &file, store::Tag::Sha256(&h), opts)
                    .map(|()| file)
                    .map_err(|e| files::object_error(st, &b, &e))
            })
            .await?;
        match self
            .commit_on_ring(store, bucket, temp, key, file, &cond)
            .await
        {
            Ok(()) => Ok(()),
            Err(Failed::Io(e)) => Err(files::ring_object_error(store, bucket, e).await),
            Err(Failed::S3(e)) => Err(e),
        }
    }

    /// The commit's steps after its attributes: fsync, parent folders, rename, folder
    /// fsyncs.
    async fn commit_on_ring(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        temp: &str,
        key: &str,
        file: File,
        cond: &s3::WriteConditions,
    ) -> Result<(), Failed> {
        let fsync = store.fsyncs();
        if fsync {
            fsops::sync(file).await.0?;
        }
        let dir = Arc::new(files::bucket_dir(store, bucket).await?);
        let (parents, leaf) = match key.rsplit_once('/') {
            Some((parents, leaf)) => (Some(parents), leaf),
            None => (None, key),
        };
        let (temp_c, leaf_c) = (open::temp_path(temp)?, open::key_name(leaf)?);
        let mut tries = 0;
        let (parent, target) = loop {
            let parent = match parents {
                Some(p) => Some(make_parents(dir.clone(), p, fsync).await?),
                None => None,
            };
            let target = parent.clone().unwrap_or_else(|| dir.clone());
            let renamed = if cond.is_empty() {
                // Under the lock, as the pool's renames are: no conditional write may
                // slip between its check and its rename. The operation keeps the guard
                // until the kernel has renamed, should this request be cut meanwhile.
                let held = store::commit_lock().lock().await;
                let (d, tc, tg, lc) = (dir.clone(), temp_c.clone(), target.clone(), leaf_c.clone());
                fsops::rename_at(d, tc, tg, lc, held).await
            } else {
                let (d, tc, tg, lc, k, c) = (
                    dir.clone(),
                    temp_c.clone(),
                    target.clone(),
                    leaf_c.clone(),
                    key.to_owned(),
                    cond.clone(),
                );
                self.offload(store, COMMIT_PATIENCE, move |st| {
                    Ok(st.place(&d, &tc, &tg, &lc, &k, Some(&c)))
                })
                .await
                .map_err(Failed::S3)?
            };
            match renamed {
                Ok(()) => break (parent, target),
                Err(e) if store::commit_retries(&e, parent.is_some(), &mut tries) => {}
                Err(e) => return Err(e.into()),
            }
        };
        if fsync {
            // The folders the rename changed: the key's parent gained the entry, and the
            // bucket's lost the temporary's (the folders made were synced as made).
            fsops::sync(target).await.0?;
            if parent.is_some() {
                fsops::sync(dir).await.0?;
            }
        }
        Ok(())
    }
}

/// How a ring step of a commit failed: a system call (its answer depends on whether
/// the bucket is still there), or a pool job that already said what to answer.
enum Failed {
    Io(io::Error),
    S3(s3::Error),
}

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Failed {
        Failed::Io(e)
    }
}

/// Create (if missing) and open each folder of `parents` beneath `dir` on the ring, one
/// component at a time, never following a symlink (a symlink component is
/// `PermissionDenied`), as the store's blocking `make_parents` does. With `fsync`, a
/// folder that got a new entry is synced before going deeper, so that a key of 500
/// components holds two descriptors at a time, not one per folder made.
async fn make_parents(dir: Arc<File>, parents: &str, fsync: bool) -> io::Result<Arc<File>> {
    let mut cur = dir;
    for component in parents.split('/') {
        let name = open::key_name(component)?;
        match fsops::mkdir_at(cur.clone(), name.clone(), store::FOLDER_MODE).await {
            Ok(()) if fsync => fsops::sync(cur.clone()).await.0?,
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        cur = Arc::new(files::open_dir(cur, name, component).await?);
    }
    Ok(cur)
}
