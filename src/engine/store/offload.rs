//! The request cycle's store calls that must not run on the worker's loop: each is
//! handed to the process's blocking pool ([`crate::engine::blocking`]) and awaited, so
//! the worker serves its other connections meanwhile. Kept apart from `store.rs` so
//! that file keeps only the call sites. What goes to the pool and what stays on the
//! worker, and why, is said in [`crate::engine::blocking`].

use std::sync::Arc;
use std::time::Duration;

use super::{files, Conn};
use crate::backend::store::{self, Listing, Store};
use crate::engine::blocking::{Pending, Refused};
use crate::proto::http::RequestHead;
use crate::proto::s3::{self, Code};

/// How long a commit waits for room in a full pool queue before it is refused: the
/// whole body is already on disk, so a short wait is cheaper for everyone than a 503
/// that makes the client send it all again. Other jobs are refused at once.
pub(super) const COMMIT_PATIENCE: Duration = Duration::from_secs(1);

impl Conn<'_> {
    /// Run `f` on the blocking pool and await its result. A full queue is 503
    /// `SlowDown` (counted in `lakegate_blocking_pool_rejected_total`), at once or,
    /// with `patience`, after retrying that long.
    pub(super) async fn offload<T: Send + 'static>(
        &self,
        store: &Arc<Store>,
        patience: Duration,
        f: impl FnOnce(&Store) -> Result<T, s3::Error> + Send + 'static,
    ) -> Result<T, s3::Error> {
        let st = store.clone();
        let mut job = Pending::new(move || f(&st));
        let give_up = std::time::Instant::now() + patience;
        loop {
            match self.w.shared.blocking.try_submit(job) {
                Ok(answer) => {
                    return answer.wait().await.unwrap_or_else(|_| {
                        Err(s3::Error::new(Code::InternalError)
                            .detail("a blocking store job failed (panicked)"))
                    });
                }
                Err((Refused::Full, back)) if std::time::Instant::now() < give_up => {
                    job = back;
                    compio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((Refused::Full, _)) => {
                    self.w.stats.blocking_rejected.inc();
                    return Err(s3::Error::new(Code::SlowDown)
                        .detail("the store's blocking pool queue is full"));
                }
                Err((Refused::Closed, _)) => {
                    return Err(s3::Error::new(Code::InternalError)
                        .detail("the store's blocking pool is gone"));
                }
            }
        }
    }

    /// Run `f` on the blocking pool; refused at once when its queue is full.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        store: &Arc<Store>,
        f: impl FnOnce(&Store) -> Result<T, s3::Error> + Send + 'static,
    ) -> Result<T, s3::Error> {
        self.offload(store, Duration::ZERO, f).await
    }

    /// A listing page: a walk of the bucket's folders (time grows with the bucket,
    /// memory does not; see [`Store::list_delimited`]), on the pool.
    pub(super) async fn list_page(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<String>,
        max_keys: usize,
    ) -> Result<Listing, s3::Error> {
        let (b, p, d) = (
            bucket.to_owned(),
            prefix.to_owned(),
            delimiter.map(str::to_owned),
        );
        self.blocking(store, move |st| {
            st.list_delimited(&b, &p, d.as_deref(), start_after.as_deref(), max_keys)
                .map_err(|e| store::io_error(&e, Code::NoSuchBucket))
        })
        .await
    }

    /// A store call about this identity's upload `id` of `key` on the pool. A missing,
    /// foreign or finished upload is NoSuchUpload (a missing bucket NoSuchBucket).
    pub(super) async fn upload_job<T: Send + 'static>(
        &self,
        store: &Arc<Store>,
        (bucket, key, id): (&str, &str, &str),
        f: impl FnOnce(&Store, &str, &str, &str, &str) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, s3::Error> {
        let (b, k, i, o) = (
            bucket.to_owned(),
            key.to_owned(),
            id.to_owned(),
            self.owner(),
        );
        self.blocking(store, move |st| {
            f(st, &b, &k, &i, &o).map_err(|e| files::upload_error(st, &b, &e))
        })
        .await
    }

    /// Whether `id` is an upload of this identity for `key`, on the pool (it reads the
    /// upload's record). A foreign upload is answered as a missing one.
    pub(super) async fn check_upload(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        key: &str,
        id: &str,
    ) -> Result<(), s3::Error> {
        self.upload_job(store, (bucket, key, id), |st, b, k, i, o| {
            st.check_upload(b, k, i, o).map(drop)
        })
        .await
    }

    /// Delete an object (unlink, prune empty folders, fsync the folder) on the pool.
    /// As S3: a key that is not there is deleted all the same, so a delete retried
    /// after its answer was lost, or `aws s3 rm` of a missing key, succeeds. A missing
    /// bucket is still NoSuchBucket.
    pub(super) async fn delete_off_loop(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        key: &str,
    ) -> Result<(), s3::Error> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.blocking(store, move |st| match st.delete_object(&b, &k) {
            Ok(()) => Ok(()),
            Err(e) => match files::object_error(st, &b, &e) {
                e if e.code == Code::NoSuchKey => Ok(()),
                e => Err(e),
            },
        })
        .await
    }

    /// DeleteObjects' deletes in one pool job, in the request's order: each key
    /// checked `Ok(())` is deleted; a refused one passes through with its error.
    #[allow(clippy::type_complexity)]
    pub(super) async fn delete_many_off_loop(
        &self,
        store: &Arc<Store>,
        bucket: &str,
        checked: Vec<(String, Result<(), s3::Error>)>,
    ) -> Result<Vec<(String, Result<std::io::Result<()>, s3::Error>)>, s3::Error> {
        let b = bucket.to_owned();
        self.blocking(store, move |st| {
            Ok(checked
                .into_iter()
                .map(|(k, c)| {
                    let r = c.map(|()| st.delete_object(&b, &k));
                    (k, r)
                })
                .collect())
        })
        .await
    }

    /// Whether the response to `head` may say keep-alive: not once the appliance is
    /// draining, even for a request that started before, so the client sends nothing
    /// more on a connection that is about to close.
    pub(super) fn keep_alive(&self, head: &RequestHead) -> bool {
        head.keep_alive
            && !self
                .w
                .shared
                .draining
                .load(std::sync::atomic::Ordering::Relaxed)
    }
}
