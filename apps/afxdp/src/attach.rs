//! THE XDP PROGRAM on an interface: loaded once per interface and shared
//! by every AfXdp app of the process on it (one per queue), taken off when
//! the last of them lets go.
//!
//! ```text
//!   Attachment::get(&Request) -> Arc<Attachment>   ours already, or load and attach
//!   a.insert(queue, fd) / a.remove(queue)           a queue's socket in the XSKMAP
//!   a.mode()                                        native or generic
//! ```
//!
//! The program (bpf/xsk_redirect.c, compiled by build.rs and embedded) sends
//! queue q's frames to the socket at index q of its XSKMAP and passes the
//! frames of queues without a socket to the kernel. aya loads it and
//! attaches it through a BPF link, so it comes off when the process exits
//! however it exits, `kill -9` included; kernels before 5.9 have no XDP
//! links and aya then attaches through netlink, where a program outlives a
//! process that dies (`SNABB_RS_XDP_NETLINK=1` attaches that way on any
//! kernel, to test what follows).
//!
//! Whose program is on an interface: while it uses an interface, a process
//! holds an exclusive `flock` on a file named after the interface's network
//! namespace and index in /run/lock/snabb-rs, with its pid in it (Snabb's
//! apps/xdp takes a lock for the same purpose). A lock dies with its
//! process. So a program of ours (by name: `snabb_xsk…`) found on an
//! interface whose lock we got is stale, and is replaced; an interface whose
//! lock another process holds is refused, naming it; any other program is
//! refused unless `replace` says to take it off.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, Weak};

use anyhow::{anyhow, bail};
use aya::maps::{MapData, XskMap};
use aya::programs::{Xdp, XdpMode as AyaMode};
use aya::{Ebpf, EbpfLoader};

use crate::netlink::{self, XdpMode};

/// The object build.rs made from bpf/xsk_redirect.c.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xsk_redirect.o"));
/// The embedded eBPF object (for tests that play a process that died).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Our programs' names start with this (the kernel keeps 15 characters).
pub const PROGRAM_PREFIX: &str = "snabb_xsk";
const MAP: &str = "snabb_xsks";
const LOCK_DIR: &str = "/run/lock/snabb-rs";

/// Where the XDP program should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum XdpAttach {
    /// In the driver when it can, else in the generic path.
    Auto,
    /// In the driver, or an error.
    Native,
    /// In the kernel's generic receive path (any interface, slower).
    Generic,
}

/// What an app asks for.
pub struct Request<'a> {
    pub ifname: &'a str,
    pub ifindex: u32,
    /// XSKMAP entries: the interface's queue count.
    pub queues: u32,
    pub mode: XdpAttach,
    /// Take off another program found on the interface.
    pub replace: bool,
}

/// Our program, attached to one interface.
pub struct Attachment {
    key: (u64, u32),
    ifname: String,
    mode: XdpMode,
    inner: Mutex<Inner>,
}

struct Inner {
    map: XskMap<MapData>,
    /// The program and, through aya, its BPF link (detached on drop).
    ebpf: Ebpf,
    /// Set when attached through netlink: taken off by hand on drop.
    netlink: Option<XdpMode>,
    /// Held while the program is ours; released last.
    _lock: File,
}

static ATTACHED: Mutex<Vec<Weak<Attachment>>> = Mutex::new(Vec::new());

/// The network namespace this process is in (its inode), for the lock name.
fn netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0)
}

/// The innermost errno in an error chain (aya wraps them).
fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut found = None;
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            found = io.raw_os_error().or(found);
        }
        cur = c.source();
    }
    found
}

fn privilege_hint(ifname: &str, what: &str, e: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    match errno(e) {
        Some(libc::EPERM | libc::EACCES) => anyhow!(
            "interface `{ifname}`: {what}: permission denied: the XDP program needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN): run as root"
        ),
        Some(libc::ENOSYS) => {
            anyhow!("interface `{ifname}`: {what}: this kernel has no bpf() system call (CONFIG_BPF_SYSCALL)")
        }
        _ => anyhow!("interface `{ifname}`: {what}: {}", chain(e)),
    }
}

/// An error and its sources on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Name and tag of a loaded program, by id.
fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.name_as_str().unwrap_or("?").to_string())
}

fn attach_via_netlink() -> bool {
    std::env::var("SNABB_RS_XDP_NETLINK").is_ok_and(|v| !v.is_empty() && v != "0")
}

impl Attachment {
    /// Our program on the interface: the one this process has there
    /// already, or a new one.
    pub fn get(r: &Request) -> anyhow::Result<Arc<Attachment>> {
        let key = (netns(), r.ifindex);
        let mut all = ATTACHED.lock().unwrap();
        all.retain(|w| w.strong_count() > 0);
        if let Some(a) = all.iter().filter_map(Weak::upgrade).find(|a| a.key == key) {
            match (r.mode, a.mode) {
                (XdpAttach::Native, XdpMode::Generic) | (XdpAttach::Generic, XdpMode::Native) => bail!(
                    "interface `{}`: its XDP program is attached in {} mode by another app of this process; \
                     all the interface's apps need the same `xdp` mode",
                    r.ifname,
                    a.mode.name()
                ),
                _ => return Ok(a),
            }
        }
        let a = Arc::new(Attachment::attach(r, key)?);
        all.push(Arc::downgrade(&a));
        Ok(a)
    }

    fn attach(r: &Request, key: (u64, u32)) -> anyhow::Result<Attachment> {
        let ifname = r.ifname;
        // Load first: a missing privilege says so before any file is made.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP, r.queues.max(1))
            .load(OBJECT)
            .map_err(|e| privilege_hint(ifname, "loading the XDP program", &e))?;
        let mut loaded = None;
        let mut first_err = None;
        for name in ["snabb_xsk_frags", "snabb_xsk"] {
            let prog: &mut Xdp = ebpf.program_mut(name).expect("program in object").try_into()?;
            match prog.load() {
                Ok(()) => {
                    loaded = Some(name);
                    break;
                }
                // A kernel before 5.18 refuses the frags flag: try the plain one.
                Err(e) => {
                    if matches!(errno(&e), Some(libc::EPERM | libc::EACCES | libc::ENOSYS)) {
                        return Err(privilege_hint(ifname, "loading the XDP program", &e));
                    }
                    first_err.get_or_insert(chain(&e));
                }
            }
        }
        let Some(name) = loaded else {
            bail!("interface `{ifname}`: the kernel refused the XDP program: {}", first_err.unwrap_or_default());
        };
        if name == "snabb_xsk" {
            log::warn!(
                "interface `{ifname}`: the kernel has no multi-buffer XDP (Linux 5.18): frames longer than a page are not received"
            );
        }
        let map: XskMap<MapData> = ebpf.take_map(MAP).expect("map in object").try_into()?;

        let lock = lock(r.ifname, key)?;
        clear_stale(r)?;

        let prog: &mut Xdp = ebpf.program_mut(name).expect("program in object").try_into()?;
        let modes: &[XdpMode] = match r.mode {
            XdpAttach::Auto => &[XdpMode::Native, XdpMode::Generic],
            XdpAttach::Native => &[XdpMode::Native],
            XdpAttach::Generic => &[XdpMode::Generic],
        };
        let via_netlink = attach_via_netlink();
        let mut errors = Vec::new();
        for &mode in modes {
            // (errno, message) on failure.
            let res: Result<(), (Option<i32>, String)> = if via_netlink {
                let fd = prog.fd()?.as_fd().as_raw_fd();
                netlink::set_xdp(r.ifindex, fd, mode, None, true)
                    .map_err(|e| (e.err.raw_os_error(), format!("netlink: {e}")))
            } else {
                let m = if mode == XdpMode::Native { AyaMode::Driver } else { AyaMode::Skb };
                prog.attach_to_if_index(r.ifindex, m).map(drop).map_err(|e| (errno(&e), chain(&e)))
            };
            match res {
                Ok(()) => {
                    log::info!(
                        "interface `{ifname}`: XDP program {name} attached in {} mode{}",
                        mode.name(),
                        if via_netlink { " (through netlink: SNABB_RS_XDP_NETLINK)" } else { "" }
                    );
                    return Ok(Attachment {
                        key,
                        ifname: ifname.to_string(),
                        mode,
                        inner: Mutex::new(Inner { map, ebpf, netlink: via_netlink.then_some(mode), _lock: lock }),
                    });
                }
                Err((Some(libc::EPERM | libc::EACCES), _)) => bail!(
                    "interface `{ifname}`: attaching the XDP program: permission denied: it needs CAP_NET_ADMIN (run as root)"
                ),
                Err((_, e)) => errors.push(format!("{} mode: {e}", mode.name())),
            }
        }
        bail!("interface `{ifname}`: cannot attach the XDP program: {}", errors.join("; "))
    }

    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Put a queue's socket in the map: its frames go to it from now on.
    pub fn insert(&self, queue: u32, fd: i32) -> anyhow::Result<()> {
        let mut i = self.inner.lock().unwrap();
        // SAFETY: fd is an open AF_XDP socket the caller owns for the call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        i.map.set(queue, fd, 0).map_err(|e| anyhow!("interface `{}`: XSKMAP entry {queue}: {}", self.ifname, chain(&e)))
    }

    /// Take a queue's socket out of the map: its frames go to the kernel.
    pub fn remove(&self, queue: u32) {
        let mut i = self.inner.lock().unwrap();
        let _ = i.map.unset(queue);
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let i = self.inner.get_mut().unwrap();
        if let Some(mode) = i.netlink {
            let fd = i.ebpf.programs().find_map(|(_, p)| p.fd().ok().map(|f| f.as_fd().as_raw_fd()));
            if let Err(e) = netlink::set_xdp(self.key.1, -1, mode, fd, false) {
                log::warn!("interface `{}`: taking off the XDP program: {e}", self.ifname);
            }
        }
        // Dropping the Ebpf detaches the BPF link and unloads the program;
        // the lock goes last.
        log::info!("interface `{}`: XDP program detached", self.ifname);
    }
}

/// The lock file of an interface of this network namespace.
fn lock_path(key: (u64, u32)) -> String {
    format!("{LOCK_DIR}/afxdp-{}-{}.lock", key.0, key.1)
}

/// The pid of another live process that holds interface `ifindex`'s lock
/// (a snabb-rs using it); None when it is free or this process holds it.
/// For checks made before starting: the app takes the lock itself.
pub fn lock_holder(ifindex: u32) -> Option<u32> {
    let mut f = File::open(lock_path((netns(), ifindex))).ok()?;
    // SAFETY: flock on our own open file; a shared lock fails while anyone
    // (this process too, through another open file) holds it exclusively.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return None;
    }
    let mut pid = String::new();
    let _ = f.read_to_string(&mut pid);
    let pid: u32 = pid.trim().parse().ok()?;
    (pid != std::process::id()).then_some(pid)
}

/// Take the interface's lock, or say who holds it.
fn lock(ifname: &str, key: (u64, u32)) -> anyhow::Result<File> {
    std::fs::create_dir_all(LOCK_DIR).map_err(|e| anyhow!("interface `{ifname}`: creating {LOCK_DIR}: {e}"))?;
    let path = lock_path(key);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow!("interface `{ifname}`: opening {path}: {e}"))?;
    // SAFETY: flock on our own open file.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            bail!("interface `{ifname}` is in use by another snabb-rs process (pid {}; lock {path})", pid.trim());
        }
        bail!("interface `{ifname}`: locking {path}: {e}");
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", std::process::id());
    Ok(f)
}

/// With the interface's lock held: take off a program of ours left by a
/// process that died, and another's program if told to.
fn clear_stale(r: &Request) -> anyhow::Result<()> {
    let ifname = r.ifname;
    let found =
        netlink::attached(r.ifindex).map_err(|e| anyhow!("interface `{ifname}`: asking for its XDP programs: {e}"))?;
    let mut names = HashMap::new();
    for &(mode, id) in &found {
        let name = program_name(id).unwrap_or_else(|| "?".to_string());
        let ours = name.starts_with(PROGRAM_PREFIX);
        if !ours && !r.replace {
            bail!(
                "interface `{ifname}` already has an XDP program ({} mode, id {id}, `{name}`): stop its owner, \
                 or set `replace: true` to take it off",
                mode.name()
            );
        }
        names.insert(id, (name, ours));
    }
    for (mode, id) in found {
        let (name, ours) = &names[&id];
        let info = aya::programs::loaded_programs().filter_map(Result::ok).find(|p| p.id() == id);
        let fd = info.as_ref().and_then(|i| i.fd().ok());
        let res = netlink::set_xdp(r.ifindex, -1, mode, fd.as_ref().map(|f| f.as_fd().as_raw_fd()), false);
        match res {
            Ok(()) if *ours => log::warn!(
                "interface `{ifname}`: took off a stale XDP program of ours (id {id}, {} mode) left by a snabb-rs process that died",
                mode.name()
            ),
            Ok(()) => log::warn!(
                "interface `{ifname}`: took off XDP program `{name}` (id {id}, {} mode), as `replace` says",
                mode.name()
            ),
            Err(e) if e.err.raw_os_error() == Some(libc::EBUSY) => bail!(
                "interface `{ifname}`: its XDP program `{name}` (id {id}) is held by a BPF link of a running process \
                 (or one pinned in bpffs: see `bpftool link`); it cannot be taken off from here"
            ),
            Err(e) => bail!("interface `{ifname}`: taking off XDP program `{name}` (id {id}): {e}"),
        }
    }
    Ok(())
}
