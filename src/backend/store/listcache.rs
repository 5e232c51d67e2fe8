//! The sorted entries of large folders, kept between LIST pages.
//!
//! A folder's entries come from the kernel in hash order, so without this every page of
//! a listing reads the whole folder to pick its 1,000 smallest keys: paging through a
//! folder of N objects cost O(N²/1000) entry reads (300 full reads of a 300k-object
//! folder). A folder read once is kept here sorted by where its keys fall in the
//! listing (a file by its name, a folder by its name and `/`), so a later page starts
//! by binary search and stops once the page is full.
//!
//! Freshness: an entry is used only while the folder's ctime is the one it was read
//! under. Any change to the folder's entries (create, unlink, rename in or out, by this
//! process or another) sets its ctime, and userspace cannot set a ctime. A change in
//! the same clock tick as the read could leave the ctime as it was, so a folder whose
//! ctime is less than [`SETTLED`] old is not kept (it is read each time, as before),
//! nor one whose ctime has no sub-second part (a filesystem that keeps whole seconds);
//! the ctime is also read again after the read, and a folder that changed meanwhile is
//! not kept. Only names and whether each is a file or a folder are kept: sizes, dates
//! and ETags are read from each object of the page, as before.
//!
//! Memory: each entry and its name's heap chunk ([`entry_cost`]) plus [`FOLDER_COST`]
//! per folder, all kept folders of the process together at most [`BUDGET`] (one cache
//! for every store a reload opens, [`shared`]), one folder at most a
//! quarter of it; the least recently used folder goes first. A folder that would take
//! more is not kept, and is remembered as such until it changes, so that it is not read
//! twice per page. One folder is read to be kept at a time: a LIST that finds another
//! read under way walks streaming, so the reading holds at most one folder's names
//! beside the budget. Folders whose size says they hold few entries are not kept: they
//! cost less to read than to keep.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::telemetry::ListCacheStats;

use super::{resolve_kind, sys, validate_segment, walk_entry, Kind, Picker};

/// What all kept folders may hold together: 128 MiB, about 2.4 million entries of
/// names up to 24 bytes (56 bytes each).
pub const BUDGET: usize = 128 << 20;
/// What one entry costs besides its name's own allocation.
const ENTRY_COST: usize = std::mem::size_of::<Entry>();
/// What a kept folder costs besides its entries: the folder, its `Arc`, its slots in
/// the two maps, their allocator chunks, rounded up.
pub const FOLDER_COST: usize = 256;

/// What an entry with a name of `len` bytes holds: the entry, and the name's heap
/// chunk as glibc's allocator rounds it (8 bytes of header, 16-byte steps, 32 at least).
fn entry_cost(len: usize) -> usize {
    ENTRY_COST + (len + 8).next_multiple_of(16).max(32)
}
/// A folder's `st_size` below which it is read each time: about 400 entries on tmpfs
/// (20 bytes each), two blocks on ext4.
pub const MIN_FOLDER_SIZE: u64 = 8 << 10;
/// How old a folder's ctime must be before its entries are kept: two seconds, as the
/// store's attribute cache asks of an object (`engine/attrcache.rs`).
pub const SETTLED: Duration = Duration::from_secs(2);
/// Folders remembered as too large to keep (cleared when full).
const TOO_LARGE_SLOTS: usize = 64;

/// One entry of a kept folder: a regular file or a folder whose name can be part of a
/// key (the filters of the streaming walk, applied when it was read).
pub struct Entry {
    name: Box<str>,
    dir: bool,
}

impl Entry {
    /// Where this entry's keys fall in a listing: a file at its name, a folder's keys
    /// at its name and `/` (so `a.txt` < `a/…` < `a0`).
    fn listing_cmp(&self, other: &Entry) -> Ordering {
        let a = self.name.bytes().chain(self.dir.then_some(b'/'));
        let b = other.name.bytes().chain(other.dir.then_some(b'/'));
        a.cmp(b)
    }

    fn kind(&self) -> Kind {
        if self.dir {
            Kind::Dir
        } else {
            Kind::File
        }
    }
}

/// A folder's entries in listing order, and the ctime they were read under.
pub struct Folder {
    ctime: (i64, i64),
    entries: Box<[Entry]>,
    bytes: usize,
}

/// Identity of a folder: device and inode.
type Id = (u64, u64);

struct Slot {
    folder: Arc<Folder>,
    used: u64,
}

#[derive(Default)]
struct Inner {
    folders: HashMap<Id, Slot>,
    /// The kept folders by last use, oldest first.
    lru: BTreeMap<u64, Id>,
    too_large: HashMap<Id, (i64, i64)>,
    bytes: usize,
    clock: u64,
    /// A folder is being read to be kept (by one pool thread at a time).
    filling: bool,
    hits: u64,
    fills: u64,
    oversize: u64,
}

impl Inner {
    /// Forget the folder `id`, handing its entries to `dropped` (freed by the caller
    /// once the lock is released: a million names take a while to free).
    fn remove(&mut self, id: &Id, dropped: &mut Vec<Arc<Folder>>) {
        if let Some(slot) = self.folders.remove(id) {
            self.lru.remove(&slot.used);
            self.bytes -= slot.folder.bytes;
            dropped.push(slot.folder);
        }
    }

    fn touch(&mut self, id: Id) -> Option<&Slot> {
        self.clock += 1;
        let now = self.clock;
        let slot = self.folders.get_mut(&id)?;
        self.lru.remove(&slot.used);
        slot.used = now;
        self.lru.insert(now, id);
        Some(slot)
    }
}

/// The store's cache of folders' sorted entries, shared by the blocking pool's threads
/// (a LIST runs there, never on a worker).
pub struct Cache {
    inner: Mutex<Inner>,
    budget: usize,
    min_folder_size: u64,
    settled: Duration,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("Cache")
            .field("folders", &g.folders.len())
            .field("bytes", &g.bytes)
            .field("budget", &self.budget)
            .finish()
    }
}

/// The process's cache, shared by every [`super::Store`]: a folder is known by its
/// device and inode, whatever root reached it, and a reload that opens the store again
/// while connections of the old generation still hold the old one keeps one budget.
pub fn shared() -> Arc<Cache> {
    static SHARED: std::sync::OnceLock<Arc<Cache>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| Arc::new(Cache::new(BUDGET, MIN_FOLDER_SIZE, SETTLED)))
        .clone()
}

/// Clears [`Inner::filling`] however the read ends.
struct Filling<'a>(&'a Cache);

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        self.0.lock().filling = false;
    }
}

impl Cache {
    /// A cache of at most `budget` bytes, for folders of at least `min_folder_size`
    /// whose ctime is `settled` old.
    pub fn new(budget: usize, min_folder_size: u64, settled: Duration) -> Cache {
        Cache {
            inner: Mutex::new(Inner::default()),
            budget,
            min_folder_size,
            settled,
        }
    }

    /// Folder walks served from kept entries, folders read to be kept, and folders
    /// read and found too large to keep.
    pub fn stats(&self) -> (u64, u64, u64) {
        let g = self.lock();
        (g.hits, g.fills, g.oversize)
    }

    /// What the scrape shows (`lakegate_list_cache_*`).
    pub fn snapshot(&self) -> ListCacheStats {
        let g = self.lock();
        ListCacheStats {
            hits: g.hits,
            fills: g.fills,
            oversize: g.oversize,
            folders: g.folders.len() as u64,
            bytes: g.bytes as u64,
            budget: self.budget as u64,
        }
    }

    /// Bytes held, recounted from the kept folders; panics if the accounts disagree.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        let g = self.lock();
        let counted: usize = g.folders.values().map(|s| s.folder.bytes).sum();
        assert_eq!(counted, g.bytes);
        assert_eq!(g.lru.len(), g.folders.len());
        assert!(g
            .folders
            .iter()
            .all(|(id, s)| g.lru.get(&s.used) == Some(id)));
        g.bytes
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each change to the maps is made whole before anything can panic, so a
        // poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The folder `dir`'s entries in listing order, read now if they were not kept or
    /// are stale; `None` when the folder is not to be kept (small, fresh, too large,
    /// changing while read, or another folder being read): walk it streaming then.
    pub fn folder(&self, dir: &File) -> io::Result<Option<Arc<Folder>>> {
        let md = dir.metadata()?;
        let id = (md.dev(), md.ino());
        let ctime = (md.ctime(), md.ctime_nsec());
        let mut dropped = Vec::new();
        {
            let mut g = self.lock();
            let current = g.folders.get(&id).map(|s| s.folder.ctime == ctime);
            match current {
                Some(true) => {
                    g.hits += 1;
                    return Ok(g.touch(id).map(|s| s.folder.clone()));
                }
                Some(false) => g.remove(&id, &mut dropped),
                None => {}
            }
            if g.too_large.get(&id) == Some(&ctime)
                || g.filling
                || md.size() < self.min_folder_size
                || !self.settled_at(ctime, SystemTime::now())
            {
                drop(g);
                drop(dropped);
                return Ok(None);
            }
            g.filling = true;
        }
        drop(dropped);
        let filling = Filling(self);
        let read = read(dir, ctime, self.budget / 4)?;
        let after = dir.metadata()?;
        let Some(folder) = read else {
            let mut g = self.lock();
            if g.too_large.len() >= TOO_LARGE_SLOTS {
                g.too_large.clear();
            }
            g.too_large.insert(id, ctime);
            g.oversize += 1;
            return Ok(None);
        };
        if (after.ctime(), after.ctime_nsec()) != ctime {
            return Ok(None);
        }
        let folder = Arc::new(folder);
        let mut dropped = Vec::new();
        {
            let mut g = self.lock();
            // Only one read at a time, so no other slot for this folder was made since
            // the lookup; should one be there anyway, it goes with its own accounts.
            g.remove(&id, &mut dropped);
            while g.bytes + folder.bytes > self.budget {
                let Some(&oldest) = g.lru.values().next() else {
                    break;
                };
                g.remove(&oldest, &mut dropped);
            }
            g.fills += 1;
            g.bytes += folder.bytes;
            g.clock += 1;
            let used = g.clock;
            g.lru.insert(used, id);
            g.folders.insert(
                id,
                Slot {
                    folder: folder.clone(),
                    used,
                },
            );
        }
        drop(filling);
        drop(dropped);
        Ok(Some(folder))
    }

    /// Whether a ctime is old enough that a change after it would show as a new one,
    /// and fine enough to tell changes within a second apart.
    fn settled_at(&self, (secs, nsecs): (i64, i64), now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let (Ok(secs), Ok(nsecs)) = (u64::try_from(secs), u32::try_from(nsecs)) else {
            return false;
        };
        nsecs != 0 && Duration::new(secs, nsecs.min(999_999_999)) + self.settled <= now
    }
}

/// Read `dir`'s entries that can be part of a key, sorted in listing order; `None`
/// when they would take more than `budget` bytes.
fn read(dir: &File, ctime: (i64, i64), budget: usize) -> io::Result<Option<Folder>> {
    let mut entries = Vec::new();
    let mut bytes = FOLDER_COST;
    let mut fits = true;
    sys::for_each_entry(dir, |name, kind| {
        if name == "." || name == ".." || validate_segment(name).is_err() || name.contains('\\') {
            return Ok(true);
        }
        let dir_entry = match resolve_kind(dir, name, kind)? {
            Kind::File => false,
            Kind::Dir => true,
            _ => return Ok(true),
        };
        bytes += entry_cost(name.len());
        if bytes > budget {
            fits = false;
            return Ok(false);
        }
        entries.push(Entry {
            name: name.into(),
            dir: dir_entry,
        });
        Ok(true)
    })?;
    if !fits || bytes > budget {
        return Ok(None);
    }
    entries.sort_unstable_by(Entry::listing_cmp);
    Ok(Some(Folder {
        ctime,
        entries: entries.into_boxed_slice(),
        bytes,
    }))
}

/// [`super::walk`] over a kept folder: from the first entry that can hold a wanted key
/// (binary search), in listing order, until the page is full.
pub fn walk_sorted(
    dir: &File,
    folder: &Folder,
    base: &mut String,
    pick: &mut Picker<'_>,
) -> io::Result<()> {
    let mut start = String::new();
    let from = folder.entries.partition_point(|e| {
        range_start(&mut start, base, e);
        entirely_unwanted(&start, e.dir, pick)
    });
    for e in folder.entries.get(from..).unwrap_or_default() {
        range_start(&mut start, base, e);
        // Past the prefix: every later key sorts after it too, so none starts with it.
        if start.as_str() > pick.prefix && !start.starts_with(pick.prefix) {
            break;
        }
        // Keys come in listing order from here on, and so do the common prefixes they
        // roll up into: once the page is full, none can be below the largest kept.
        if pick.best.len() >= pick.limit
            && pick
                .best
                .last()
                .is_some_and(|top| start.as_str() >= top.as_str())
        {
            break;
        }
        walk_entry(dir, &e.name, e.kind(), base, pick)?;
    }
    Ok(())
}

/// The smallest key `e` can hold: `base` + its name (+ `/` for a folder).
fn range_start(out: &mut String, base: &str, e: &Entry) {
    out.clear();
    out.push_str(base);
    out.push_str(&e.name);
    if e.dir {
        out.push('/');
    }
}

/// Whether every key at or under `start` sorts before the page: at or before
/// `start_after`, or before `prefix` without starting with it. In listing order this
/// holds for a leading run of entries and for none after it.
fn entirely_unwanted(start: &str, dir: bool, pick: &Picker<'_>) -> bool {
    if dir {
        // Every key below starts with `start`: all sort before `bound` exactly when
        // `start` does without being a prefix of it.
        let below = |bound: &str| start < bound && !bound.starts_with(start);
        pick.after.is_some_and(below) || below(pick.prefix)
    } else {
        pick.after.is_some_and(|a| start <= a) || start < pick.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, dir: bool) -> Entry {
        Entry {
            name: name.into(),
            dir,
        }
    }

    #[test]
    fn listing_order_puts_a_folders_keys_after_its_name_and_slash() {
        let mut v = [
            entry("a0", false),
            entry("a", true),
            entry("a.txt", false),
            entry("a-b", true),
            entry("b", false),
            entry("a", false),
        ];
        v.sort_unstable_by(Entry::listing_cmp);
        let got: Vec<String> = v
            .iter()
            .map(|e| format!("{}{}", e.name, if e.dir { "/" } else { "" }))
            .collect();
        assert_eq!(got, ["a", "a-b/", "a.txt", "a/", "a0", "b"]);
    }

    #[test]
    fn a_ctime_is_settled_only_once_the_margin_has_passed() {
        let c = Cache::new(BUDGET, 0, Duration::from_secs(1));
        let t = UNIX_EPOCH + Duration::new(1_000, 500);
        assert!(c.settled_at((999, 500), t));
        assert!(!c.settled_at((999, 501), t));
        assert!(!c.settled_at((1_000, 0), t));
        assert!(!c.settled_at((-1, 0), t));
        // Whole seconds: a filesystem that cannot tell two changes in a second apart.
        assert!(!c.settled_at((10, 0), t));
    }
}
