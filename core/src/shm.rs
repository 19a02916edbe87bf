//! COUNTERS IN SHARED MEMORY
//!
//! Each engine keeps its counters in a directory that other processes can
//! read while it runs (`snabb-rs top`):
//!
//! ```text
//!   <root>/<pid>/program              the program's name (text)
//!   <root>/<pid>/engine/<name>.counter
//!   <root>/<pid>/links/<a.x -> b.y>/<name>.counter
//!   <root>/<pid>/apps/<app>/<name>.counter
//! ```
//!
//! A counter is one native-endian u64 in a file of 8 bytes (`od -t u8`
//! reads it). The root is `$SNABB_RS_SHM_ROOT` when set; else
//! `/var/run/snabb-rs`, and for a user who may not write there
//! `$XDG_RUNTIME_DIR/snabb-rs`, or `<temp dir>/snabb-rs-<uid>` (see
//! [`roots`]): readers (`snabb-rs top`, `ps`) look in all of them.
//! The hot path never touches these files: the engine keeps private counts
//! and commits them here every so many breaths (see `engine`), because
//! page-aligned counters would all share the same cache sets.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Mmap, MmapMut, MmapOptions};

/// Where counter directories live unless told otherwise.
pub fn default_root() -> PathBuf {
    roots().swap_remove(0)
}

/// Where counter directories may be, in the order a writer tries them:
/// `$SNABB_RS_SHM_ROOT` alone when it is set; else `/var/run/snabb-rs`
/// (root's), `$XDG_RUNTIME_DIR/snabb-rs` (a user's, when the variable is
/// set) and `<temp dir>/snabb-rs-<uid>`.
pub fn roots() -> Vec<PathBuf> {
    if let Some(r) = std::env::var_os("SNABB_RS_SHM_ROOT").filter(|r| !r.is_empty()) {
        return vec![PathBuf::from(r)];
    }
    let mut v = vec![PathBuf::from("/var/run/snabb-rs")];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        v.push(Path::new(&x).join("snabb-rs"));
    }
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    v.push(std::env::temp_dir().join(format!("snabb-rs-{uid}")));
    v
}

/// Make `root` for this user's counters: created with mode 0700 when it
/// does not exist; refused when it belongs to someone else (a shared
/// temp dir where another user made the name first).
pub fn prepare_root(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(root)?;
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || (meta.uid() != uid && uid != 0) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a directory of user {uid}", root.display()),
        ));
    }
    Ok(())
}

/// A counter this process writes.
pub struct Counter {
    map: MmapMut,
}

impl Counter {
    /// Create (or reopen) the counter file at `path`, creating parents.
    pub fn create(path: &Path) -> io::Result<Counter> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        f.set_len(8)?;
        // SAFETY: a shared mapping of our own 8-byte file; other processes
        // only read it, and all access goes through an AtomicU64.
        let map = unsafe { MmapOptions::new().len(8).map_mut(&f)? };
        Ok(Counter { map })
    }

    fn cell(&self) -> &AtomicU64 {
        // SAFETY: the mapping is 8 bytes, page-aligned, and lives as long as self.
        unsafe { &*(self.map.as_ptr() as *const AtomicU64) }
    }

    pub fn set(&self, v: u64) {
        self.cell().store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.cell().load(Ordering::Relaxed)
    }
}

/// A counter another process writes, mapped read-only.
pub struct CounterReader {
    map: Mmap,
}

impl CounterReader {
    pub fn open(path: &Path) -> io::Result<CounterReader> {
        let f = fs::File::open(path)?;
        if f.metadata()?.len() < 8 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "counter file shorter than 8 bytes"));
        }
        // SAFETY: a read-only shared mapping; the writer only stores whole
        // aligned u64s, read here atomically.
        let map = unsafe { MmapOptions::new().len(8).map(&f)? };
        Ok(CounterReader { map })
    }
    pub fn get(&self) -> u64 {
        // SAFETY: 8 mapped, page-aligned bytes.
        unsafe { &*(self.map.as_ptr() as *const AtomicU64) }.load(Ordering::Relaxed)
    }
}

/// A process's counter directory.
pub struct ShmDir {
    path: PathBuf,
    remove_on_drop: bool,
}

impl ShmDir {
    /// Create `<root>/<name>` (normally the pid), replacing a stale one.
    pub fn create(root: &Path, name: &str) -> io::Result<ShmDir> {
        let path = root.join(name);
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path)?;
        Ok(ShmDir { path, remove_on_drop: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A counter at `rel` (e.g. `links/a.x -> b.y/txpackets`), `.counter` added.
    pub fn counter(&self, rel: &str) -> io::Result<Counter> {
        Counter::create(&self.path.join(format!("{rel}.counter")))
    }

    /// Write a small text file (program name, current config).
    pub fn write_text(&self, rel: &str, text: &str) -> io::Result<()> {
        let p = self.path.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d)?;
        }
        fs::write(p, text)
    }

    /// Remove a subtree (an app or link that is gone).
    pub fn remove(&self, rel: &str) {
        let _ = fs::remove_dir_all(self.path.join(rel));
    }

    /// Leave the directory behind when dropped (for post-mortem reading).
    pub fn keep(&mut self) {
        self.remove_on_drop = false;
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Every counter under `dir`, by path relative to it without `.counter`.
pub fn read_tree(dir: &Path) -> io::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut |rel, path| {
        if let Ok(c) = CounterReader::open(path) {
            out.insert(rel.to_string(), c.get());
        }
    })?;
    Ok(out)
}

/// Call `f(relative name, path)` for each counter file under `dir`.
pub fn walk(base: &Path, dir: &Path, f: &mut dyn FnMut(&str, &Path)) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(base, &p, f)?;
        } else if let Some(name) =
            p.strip_prefix(base).ok().and_then(|r| r.to_str()).and_then(|r| r.strip_suffix(".counter"))
        {
            f(name, &p);
        }
    }
    Ok(())
}

/// Process directories under every root ([`roots`]) whose process still
/// runs, by pid.
pub fn live_everywhere() -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = roots().iter().flat_map(|r| live_processes(r)).collect();
    v.sort();
    v.dedup_by_key(|(p, _)| *p);
    v
}

/// Process directories under `root` whose process still runs, by pid.
pub fn live_processes(root: &Path) -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            Path::new(&format!("/proc/{pid}")).exists().then(|| (pid, e.path()))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_visible_through_the_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = ShmDir::create(root.path(), "1234").unwrap();
        let c = dir.counter("links/a.x -> b.y/txpackets").unwrap();
        c.set(42);
        let path = dir.path().join("links/a.x -> b.y/txpackets.counter");
        assert_eq!(fs::read(&path).unwrap(), 42u64.to_ne_bytes());
        let r = CounterReader::open(&path).unwrap();
        c.set(43);
        assert_eq!(r.get(), 43);
        let tree = read_tree(dir.path()).unwrap();
        assert_eq!(tree.get("links/a.x -> b.y/txpackets"), Some(&43));
        let p = dir.path().to_path_buf();
        drop(dir);
        assert!(!p.exists());
    }
}
