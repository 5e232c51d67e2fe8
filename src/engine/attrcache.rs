//! A worker's memory of the objects it has looked up: what their extended attributes
//! said (digests and user metadata), so that a GET or HEAD of an unchanged object
//! skips the five `fgetxattr` operations, each a round through the kernel's io-wq
//! threads (`super::store::files`). Per worker: no lock, no atomic.
//!
//! An entry is keyed by the object's inode and its size, mtime and ctime from the
//! `statx` every lookup still makes. Any change to the object's bytes or attributes
//! moves its ctime, and a replaced object is a new inode; so an entry that matches
//! describes the object as it is. The digests inside were judged current against the
//! same size and mtime when the entry was made.
//!
//! Except within one tick of the clock that stamps the ctime (coarse, 1-10 ms, on
//! kernels or filesystems without multigrain timestamps): two changes in one tick
//! leave the same ctime, and an inode number freed by a rename can come back on the
//! next new file in the same tick. So, as git does for its "racy" index entries, an
//! object whose ctime is less than [`SETTLED`] old is never remembered: it is read
//! afresh until it has been left alone that long.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::backend::store::ObjectMeta;
use crate::proto::s3;

/// Entries kept per worker: with [`MAX_META`], at most about 3 MiB, typically a few
/// hundred KiB.
pub const ENTRIES: usize = 1024;

/// Longest user-metadata attribute an entry keeps (S3 caps user metadata at 2 KiB);
/// an object with more is read afresh each time.
pub const MAX_META: usize = 2048;

/// How old an object's ctime must be before its attributes are remembered.
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// What identifies one state of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Device (major, minor) and inode.
    pub dev: (u32, u32),
    /// Inode number.
    pub ino: u64,
    /// Bytes.
    pub size: u64,
    /// mtime, seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// ctime, seconds and nanoseconds.
    pub ctime: (i64, u32),
}

impl Key {
    /// Whether the object was last changed at least [`SETTLED`] before `now` (seconds
    /// and nanoseconds since the epoch), so that no later change can share its ctime.
    pub fn settled(&self, now: std::time::SystemTime) -> bool {
        let Ok(now) = now.duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let Ok(secs) = u64::try_from(self.ctime.0) else {
            return false;
        };
        let ctime = std::time::Duration::new(secs, self.ctime.1.min(999_999_999));
        now.checked_sub(ctime).is_some_and(|age| age >= SETTLED)
    }

    /// The key of what `statx` said.
    pub fn of(st: &libc::statx) -> Key {
        Key {
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size: st.stx_size,
            mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
            ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
        }
    }
}

/// What the attributes said: the metadata (only states that needed no hashing are
/// remembered, so it is `Some` in practice), and the user metadata.
pub type Entry = (Option<ObjectMeta>, s3::Metadata);

/// The cache (see the module's text).
#[derive(Default)]
pub struct AttrCache {
    map: RefCell<HashMap<Key, Entry>>,
}

impl AttrCache {
    /// The entry for `key`, if the object is unchanged since it was made.
    pub fn get(&self, key: &Key) -> Option<Entry> {
        self.map.borrow().get(key).cloned()
    }

    /// Remember `entry` for `key`, if the object has [`Key::settled`] at `now`. When
    /// full, one entry (an arbitrary one) makes room: the cache only saves work, so
    /// which one goes matters little.
    pub fn put(&self, key: Key, entry: Entry, now: std::time::SystemTime) {
        if !key.settled(now) {
            return;
        }
        let mut map = self.map.borrow_mut();
        if map.len() >= ENTRIES && !map.contains_key(&key) {
            if let Some(old) = map.keys().next().copied() {
                map.remove(&old);
            }
        }
        map.insert(key, entry);
    }

    /// Entries now (tests).
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    /// Whether there are none (tests).
    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: std::time::Duration = std::time::Duration::from_secs(1_000);

    fn now() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + NOW
    }

    fn key(ino: u64, ctime: i64) -> Key {
        Key {
            dev: (8, 1),
            ino,
            size: 10,
            mtime: (1, 0),
            ctime: (ctime, 0),
        }
    }

    #[test]
    fn a_changed_ctime_or_inode_misses_and_the_size_stays_bounded() {
        let c = AttrCache::default();
        let user = s3::Metadata {
            content_type: Some("text/plain".into()),
            user: vec![],
        };
        c.put(key(1, 100), (None, user.clone()), now());
        assert_eq!(c.get(&key(1, 100)), Some((None, user)));
        assert_eq!(
            c.get(&key(1, 101)),
            None,
            "ctime moved: attributes may differ"
        );
        assert_eq!(c.get(&key(2, 100)), None, "another inode");
        for i in 0..(ENTRIES as u64 * 2) {
            c.put(key(10 + i, 1), (None, s3::Metadata::default()), now());
        }
        assert_eq!(c.len(), ENTRIES);
    }

    #[test]
    fn an_object_changed_within_the_last_two_seconds_is_not_remembered() {
        let c = AttrCache::default();
        let entry = (None, s3::Metadata::default());
        c.put(key(1, 999), entry.clone(), now());
        assert_eq!(
            c.get(&key(1, 999)),
            None,
            "changed 1 s ago: same-tick changes possible"
        );
        c.put(key(1, 998), entry.clone(), now());
        assert_eq!(c.get(&key(1, 998)), Some(entry.clone()), "changed 2 s ago");
        c.put(key(2, 1_005), entry, now());
        assert!(c.get(&key(2, 1_005)).is_none(), "a ctime in the future");
    }
}
