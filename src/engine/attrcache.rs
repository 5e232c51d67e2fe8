//! A worker's memory of the objects it has looked up: what their extended attributes
//! said (digests and user metadata), so that a GET or HEAD of an unchanged object
//! skips the five `fgetxattr` operations, each a round through the kernel's io-wq
//! threads (`super::store::files`). Per worker: no lock, no atomic.
//!
//! An entry is keyed by the object's inode and its size, mtime and ctime from the
//! `statx` every lookup still makes. Any change to the object's bytes or attributes
//! moves its ctime (on Linux 6.13+ filesystems with multigrain timestamps, ext4, xfs,
//! btrfs and tmpfs among them, a change after a `statx` that asked for the ctime always
//! gets a new one, however soon), and a replaced object is a new inode; so an entry
//! that matches describes the object as it is. The digests inside were judged current
//! against the same size and mtime when the entry was made.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::backend::store::ObjectMeta;
use crate::proto::s3;

/// Entries kept per worker: under 1 MiB of memory.
pub const ENTRIES: usize = 2048;

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

/// What the attributes said: the metadata when it needed no hashing, and the user
/// metadata.
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

    /// Remember `entry` for `key`. When full, one entry (an arbitrary one) makes room:
    /// the cache only saves work, so which one goes matters little.
    pub fn put(&self, key: Key, entry: Entry) {
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
        c.put(key(1, 100), (None, user.clone()));
        assert_eq!(c.get(&key(1, 100)), Some((None, user)));
        assert_eq!(
            c.get(&key(1, 101)),
            None,
            "ctime moved: attributes may differ"
        );
        assert_eq!(c.get(&key(2, 100)), None, "another inode");
        for i in 0..(ENTRIES as u64 * 2) {
            c.put(key(10 + i, 1), (None, s3::Metadata::default()));
        }
        assert_eq!(c.len(), ENTRIES);
    }
}
