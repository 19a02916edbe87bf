//! A vhost-user frontend in the repository (the part QEMU or DPDK
//! virtio-user plays), for tests, the selftest and benchmarks: it connects
//! (or accepts, for client-mode tests), negotiates, shares a memfd as guest
//! memory ([`DriverMemory`]) and drives the rings as a guest driver would
//! ([`DriverQueue`]), kicking and reading calls through eventfds.
//!
//! Also here: [`Rig`], a `VhostUser` app driven by hand with a link on each
//! port, and [`serve_while`], which steps a rig while a frontend runs in
//! another thread (the frontend waits for replies the app gives from its
//! tick).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use snabb_core::app::Port;
use snabb_core::{App, AppClass, AppContext, Io, Link, Packet, Ports};

use crate::app::{VhostUser, VhostUserArgs};
use crate::channel::Channel;
use crate::driver::{DriverMemory, DriverQueue};
use crate::protocol::{
    FLAG_NEED_REPLY, Header, LogArea, MemoryRegion, ProtocolError, Reply, Request, VERSION, VringAddress, VringState,
    has_reply, pf, req,
};
use crate::virtio::{self, bit};

/// How long the frontend waits for a reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The order of setup messages, as each real frontend sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// QEMU 7.2: rings enabled before SET_FEATURES and the memory table.
    Qemu,
    /// DPDK virtio-user: memory table, then rings, enabled after the kick.
    Dpdk,
}

#[derive(Clone, Debug)]
pub struct FrontendOptions {
    pub queue_pairs: u16,
    pub queue_size: u16,
    /// Bytes of guest memory (rings and buffers of every queue).
    pub mem_size: usize,
    /// Feature bits not to accept even when offered (e.g. MRG_RXBUF).
    pub refuse: u64,
    /// Protocol features wanted (those offered are accepted).
    pub protocol: u64,
    /// Kick and call through eventfds (true) or poll (false, "no fd").
    pub eventfds: bool,
    pub order: Order,
    /// Guest memory on 2 MiB huge pages (memfd, MFD_HUGETLB).
    pub huge_pages: bool,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            queue_pairs: 1,
            queue_size: 256,
            mem_size: 16 << 20,
            refuse: 0,
            protocol: pf::MQ | pf::REPLY_ACK | pf::LOG_SHMFD | pf::RARP | pf::NET_MTU | pf::STATUS | pf::CONFIG,
            eventfds: true,
            order: Order::Qemu,
            huge_pages: false,
        }
    }
}

/// A non-blocking eventfd (for kick, call and err).
pub fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall; the descriptor is owned from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Read and reset an eventfd's counter (0 when nothing was signalled).
pub fn eventfd_take(fd: &OwnedFd) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a local from a non-blocking eventfd.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    if n == 8 { v } else { 0 }
}

pub struct Frontend {
    pub chan: Channel,
    pub mem: DriverMemory,
    /// By vring index: even = the guest's RX (switch to guest), odd = its TX.
    pub queues: Vec<DriverQueue>,
    pub kicks: Vec<Option<OwnedFd>>,
    pub calls: Vec<Option<OwnedFd>>,
    pub features: u64,
    pub protocol_features: u64,
    /// SET_VRING_BASE for each ring (GET_VRING_BASE's last answer).
    pub bases: Vec<u16>,
    pub opts: FrontendOptions,
}

/// Where ring `i` and its buffers lie in guest memory.
fn layout(opts: &FrontendOptions, i: usize) -> (u64, u64, u64) {
    let n = 2 * opts.queue_pairs as u64;
    let ring_stride = 64 << 10; // room for a 4096-entry ring
    let rings = n * ring_stride;
    let data_len = ((opts.mem_size as u64).saturating_sub(rings) / n) & !4095;
    (i as u64 * ring_stride, rings + i as u64 * data_len, data_len)
}

impl Frontend {
    /// Connect to a listening backend, retrying until `timeout`.
    pub fn connect(path: &Path, opts: FrontendOptions, timeout: Duration) -> anyhow::Result<Frontend> {
        let end = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Frontend::on(s, opts),
                Err(e) if Instant::now() >= end => anyhow::bail!("connecting to {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Wait for a backend in client mode to connect (up to `timeout`).
    pub fn accept(listener: &UnixListener, opts: FrontendOptions, timeout: Duration) -> anyhow::Result<Frontend> {
        listener.set_nonblocking(true)?;
        let end = Instant::now() + timeout;
        loop {
            match listener.accept() {
                Ok((s, _)) => return Frontend::on(s, opts),
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return Err(e.into()),
                Err(_) if Instant::now() >= end => anyhow::bail!("no backend connected within {timeout:?}"),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// A frontend on a connected socket (nothing sent yet).
    pub fn on(sock: UnixStream, opts: FrontendOptions) -> anyhow::Result<Frontend> {
        let mem =
            if opts.huge_pages { DriverMemory::new_huge(opts.mem_size)? } else { DriverMemory::new(opts.mem_size)? };
        let n = 2 * opts.queue_pairs as usize;
        let queues = Frontend::make_queues(&mem, &opts, 0);
        let mk = || -> anyhow::Result<Vec<Option<OwnedFd>>> {
            (0..n)
                .map(|_| if opts.eventfds { eventfd().map(Some) } else { Ok(None) })
                .collect::<Result<_, _>>()
                .map_err(Into::into)
        };
        let (kicks, calls) = (mk()?, mk()?);
        Ok(Frontend {
            chan: Channel::new(sock)?,
            mem,
            queues,
            kicks,
            calls,
            features: 0,
            protocol_features: 0,
            bases: vec![0; n],
            opts,
        })
    }

    fn make_queues(mem: &DriverMemory, opts: &FrontendOptions, features: u64) -> Vec<DriverQueue> {
        (0..2 * opts.queue_pairs as usize)
            .map(|i| {
                let (ring, data, len) = layout(opts, i);
                DriverQueue::new(mem, opts.queue_size, ring, data, len, features)
            })
            .collect()
    }

    /// Send a message as is (header fields, payload, descriptors): for
    /// tests of malformed input.
    pub fn send_raw(
        &self,
        request: u32,
        flags: u32,
        payload: &[u8],
        fds: &[std::os::fd::RawFd],
    ) -> Result<(), ProtocolError> {
        self.chan.send(Header { request, flags, size: payload.len() as u32 }, payload, fds)
    }

    /// Send a request; wait for its reply when it has one (by itself, by
    /// need_reply, or SET_LOG_BASE with LOG_SHMFD). `ack` asks for a
    /// REPLY_ACK (need_reply).
    pub fn request_with(&mut self, r: Request, ack: bool) -> Result<Option<Reply>, ProtocolError> {
        let code = r.code();
        let (payload, fds) = r.encode();
        let flags = VERSION | if ack { FLAG_NEED_REPLY } else { 0 };
        self.chan.send(Header { request: code, flags, size: payload.len() as u32 }, &payload, &fds)?;
        drop(r);
        let log_reply = code == req::SET_LOG_BASE && self.protocol_features & pf::LOG_SHMFD != 0;
        if has_reply(code) || ack || log_reply {
            let m = self.chan.recv_timeout(REPLY_TIMEOUT)?;
            return Reply::parse(code, &m).map(Some);
        }
        Ok(None)
    }

    /// Send a request, with need_reply when REPLY_ACK was negotiated (as
    /// QEMU does), and fail on a non-zero ack.
    pub fn request(&mut self, r: Request) -> anyhow::Result<Option<Reply>> {
        let code = r.code();
        let ack = self.protocol_features & pf::REPLY_ACK != 0 && !has_reply(code);
        let reply = self.request_with(r, ack)?;
        if ack {
            let v = reply.as_ref().and_then(Reply::as_u64).unwrap_or(1);
            anyhow::ensure!(v == 0, "{}: backend answered {v}", crate::protocol::request_name(code));
            return Ok(None);
        }
        Ok(reply)
    }

    fn get_u64(&mut self, r: Request) -> anyhow::Result<u64> {
        let code = r.code();
        match self.request(r)? {
            Some(Reply::U64(v)) => Ok(v),
            other => anyhow::bail!("{}: unexpected reply {other:?}", crate::protocol::request_name(code)),
        }
    }

    fn file(&self, fds: &[Option<OwnedFd>], i: usize) -> anyhow::Result<Option<OwnedFd>> {
        Ok(match fds.get(i).and_then(Option::as_ref) {
            Some(fd) => Some(fd.try_clone()?),
            None => None,
        })
    }

    /// Features, protocol features and queue count.
    pub fn negotiate(&mut self) -> anyhow::Result<()> {
        let offered = self.get_u64(Request::GetFeatures)?;
        anyhow::ensure!(offered & bit(virtio::VHOST_USER_F_PROTOCOL_FEATURES) != 0, "no PROTOCOL_FEATURES offered");
        let pfo = self.get_u64(Request::GetProtocolFeatures)?;
        let want = pfo & self.opts.protocol;
        self.request(Request::SetProtocolFeatures(want))?;
        self.protocol_features = want;
        if want & pf::MQ != 0 {
            let n = self.get_u64(Request::GetQueueNum)?;
            anyhow::ensure!(n >= self.opts.queue_pairs as u64, "backend offers {n} queue pairs");
        }
        self.features = offered & !self.opts.refuse & !bit(virtio::VHOST_F_LOG_ALL);
        // The driver's rings, laid out for the features now known.
        self.queues = Frontend::make_queues(&self.mem, &self.opts, self.features);
        Ok(())
    }

    /// The memory table: one region, the memfd.
    pub fn set_mem_table(&mut self) -> anyhow::Result<()> {
        let r = self.mem.region();
        let region = MemoryRegion {
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
            mmap_offset: r.mmap_offset,
        };
        let fd = self.mem.fd().try_clone_to_owned()?;
        self.request(Request::SetMemTable { regions: vec![region], fds: vec![fd] })?;
        Ok(())
    }

    /// Size, base, addresses, kick of ring `i` (not enabled).
    pub fn set_ring(&mut self, i: usize) -> anyhow::Result<()> {
        let index = i as u32;
        self.request(Request::SetVringNum(VringState { index, num: self.opts.queue_size as u32 }))?;
        self.request(Request::SetVringBase(VringState { index, num: self.bases[i] as u32 }))?;
        let a = self.queues[i].addr();
        self.request(Request::SetVringAddr(VringAddress {
            index,
            flags: a.flags,
            desc_user_addr: a.desc_user_addr,
            used_user_addr: a.used_user_addr,
            avail_user_addr: a.avail_user_addr,
            log_guest_addr: a.log_guest_addr,
        }))?;
        let kick = self.file(&self.kicks, i)?;
        self.request(Request::SetVringKick(index, kick))?;
        Ok(())
    }

    pub fn enable(&mut self, i: usize, on: bool) -> anyhow::Result<()> {
        self.request(Request::SetVringEnable(VringState { index: i as u32, num: on as u32 }))?;
        Ok(())
    }

    /// The whole setup, in the order of `opts.order`.
    pub fn setup(&mut self) -> anyhow::Result<()> {
        let n = self.queues.len();
        match self.opts.order {
            Order::Qemu => {
                self.negotiate()?;
                self.request(Request::SetOwner)?;
                for i in 0..n {
                    let call = self.file(&self.calls, i)?;
                    self.request(Request::SetVringCall(i as u32, call))?;
                    self.request(Request::SetVringErr(i as u32, None))?;
                }
                for i in 0..n {
                    self.enable(i, true)?;
                }
                self.request(Request::SetFeatures(self.features))?;
                self.get_u64(Request::GetStatus)?;
                self.request(Request::SetStatus(0x0b))?;
                self.set_mem_table()?;
                for i in 0..n {
                    self.set_ring(i)?;
                    let call = self.file(&self.calls, i)?;
                    self.request(Request::SetVringCall(i as u32, call))?;
                }
                self.request(Request::SetStatus(0x0f))?;
            }
            Order::Dpdk => {
                self.request(Request::SetOwner)?;
                self.negotiate()?;
                for i in 0..n {
                    let call = self.file(&self.calls, i)?;
                    self.request(Request::SetVringCall(i as u32, call))?;
                }
                self.request(Request::SetFeatures(self.features))?;
                self.request(Request::SetStatus(0x0b))?;
                self.get_u64(Request::GetStatus)?;
                self.set_mem_table()?;
                for i in 0..n {
                    self.set_ring(i)?;
                }
                for i in 0..n {
                    self.enable(i, true)?;
                }
                self.request(Request::SetStatus(0x0f))?;
            }
        }
        Ok(())
    }

    /// GET_VRING_BASE: stops ring `i` and returns its next avail index.
    pub fn get_vring_base(&mut self, i: usize) -> anyhow::Result<u16> {
        match self.request(Request::GetVringBase(VringState { index: i as u32, num: 0 }))? {
            Some(Reply::VringState(s)) if s.index == i as u32 => {
                self.bases[i] = s.num as u16;
                Ok(s.num as u16)
            }
            other => anyhow::bail!("GET_VRING_BASE {i}: unexpected reply {other:?}"),
        }
    }

    /// Turn dirty logging on: a log memfd covering guest memory, and LOG_ALL.
    pub fn start_logging(&mut self) -> anyhow::Result<OwnedFd> {
        let pages = (self.mem.size() as u64).div_ceil(4096);
        let size = pages.div_ceil(8).next_multiple_of(4096);
        let fd = crate::frontend::memfd(size)?;
        let area = LogArea { mmap_size: size, mmap_offset: 0 };
        self.request(Request::SetLogBase { area, fd: Some(fd.try_clone()?) })?;
        self.features |= bit(virtio::VHOST_F_LOG_ALL);
        self.request(Request::SetFeatures(self.features))?;
        Ok(fd)
    }

    /// Guest TX on pair `p`: post frames, kick once. Returns how many fit.
    pub fn send(&mut self, p: usize, frames: &[Vec<u8>]) -> usize {
        let q = &mut self.queues[2 * p + 1];
        let mut n = 0;
        for f in frames {
            if !q.send(f) {
                break;
            }
            n += 1;
        }
        self.kick(2 * p + 1);
        n
    }

    /// Reclaim transmitted buffers of pair `p` (used entries).
    pub fn reclaim_tx(&mut self, p: usize) -> usize {
        let mut none = Vec::new();
        self.queues[2 * p + 1].reap(&mut none)
    }

    /// Guest RX on pair `p`: post `n` buffers of `len` bytes, kick once.
    pub fn post_rx(&mut self, p: usize, n: usize, len: u32) -> usize {
        let k = self.queues[2 * p].post_rx(n, len);
        self.kick(2 * p);
        k
    }

    /// Frames received on pair `p` since the last call.
    pub fn receive(&mut self, p: usize, out: &mut Vec<Vec<u8>>) -> usize {
        self.queues[2 * p].reap(out)
    }

    pub fn kick(&self, i: usize) {
        if let Some(fd) = &self.kicks[i] {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a local to our own eventfd.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Calls (interrupts) the backend raised on ring `i` since last asked.
    pub fn calls(&self, i: usize) -> u64 {
        self.calls[i].as_ref().map_or(0, eventfd_take)
    }
}

/// A memfd of `size` bytes.
pub fn memfd(size: u64) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls on a fresh descriptor we own.
    unsafe {
        let fd = libc::memfd_create(c"snabb-vhost-test".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::ftruncate(fd.as_raw_fd(), size as i64) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// A `VhostUser` app driven by hand, a link on each port. Whatever the
/// guest sends is taken off `output` at every step, as a graph would (lent
/// transmit buffers go back to the guest only once their packets are
/// gone), and kept for `take_output`.
pub struct Rig {
    pub app: VhostUser,
    /// Packets for the guest.
    pub input: Rc<Link>,
    /// Packets from the guest.
    pub output: Rc<Link>,
    /// Lent receive buffers, when made `with_supply`.
    pub supply: Option<Rc<Link>>,
    /// Frames taken off `output`.
    pub collected: Vec<Vec<u8>>,
    /// Keep the packets taken off `output` too (not just their bytes).
    pub keep_packets: Option<Vec<Packet>>,
    io: Io,
}

impl Rig {
    pub fn new(args: VhostUserArgs) -> anyhow::Result<Rig> {
        Rig::build(args, false)
    }

    /// With a `supply` output as well: the port lends receive buffers on it.
    pub fn with_supply(args: VhostUserArgs) -> anyhow::Result<Rig> {
        Rig::build(args, true)
    }

    fn build(args: VhostUserArgs, supply: bool) -> anyhow::Result<Rig> {
        let app = VhostUser::new(args, &AppContext { name: "vhost", class: "VhostUser" })?;
        let (input, output) = (Rc::new(Link::new(4096)), Rc::new(Link::new(4096)));
        let supply = supply.then(|| Rc::new(Link::new(4096)));
        let mut outs = vec![Port { name: "output".into(), link: output.clone() }];
        if let Some(s) = &supply {
            outs.push(Port { name: "supply".into(), link: s.clone() });
        }
        let io = Io {
            input: Ports::new(vec![Port { name: "input".into(), link: input.clone() }]),
            output: Ports::new(outs),
        };
        let mut app = app;
        app.link(&io);
        Ok(Rig { app, input, output, supply, collected: Vec::new(), keep_packets: None, io })
    }

    /// Tell the app its links changed (a copy mode, say).
    pub fn relink(&mut self) {
        self.app.link(&self.io);
    }

    /// One breath with a tick: control messages, then both directions.
    pub fn step(&mut self) {
        self.app.tick(&self.io);
        self.app.pull(&self.io);
        for p in self.output.drain() {
            // Without flattening a split packet (a test may keep it).
            let mut bytes = vec![0; p.len()];
            p.copy_bytes_into(&mut bytes);
            self.collected.push(bytes);
            if let Some(k) = &mut self.keep_packets {
                k.push(p);
            }
        }
        self.app.push(&self.io);
    }

    /// Step until `f` holds or `timeout` passes; false on timeout.
    pub fn step_until(&mut self, mut f: impl FnMut(&mut Rig) -> bool, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            self.step();
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        false
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.app.counter(name).unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Frames the guest sent, taken off `output`.
    pub fn take_output(&mut self) -> Vec<Vec<u8>> {
        for p in self.output.drain() {
            self.collected.push(p.data().to_vec());
        }
        std::mem::take(&mut self.collected)
    }
}

/// What a frontend thread is given: a way to put frames on the app's input,
/// and to park (hold its connection while the test looks at the app).
pub struct Ctl {
    inject: mpsc::Sender<Vec<Vec<u8>>>,
    parked: Arc<AtomicBool>,
    release: mpsc::Receiver<()>,
}

impl Ctl {
    /// Frames for the guest, transmitted on the rig's input by the stepping thread.
    pub fn inject(&self, frames: Vec<Vec<u8>>) {
        let _ = self.inject.send(frames);
    }
    /// Wait (up to a minute) until the stepping thread releases us.
    pub fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        let _ = self.release.recv_timeout(Duration::from_secs(60));
        self.parked.store(false, Ordering::SeqCst);
    }
}

/// A frontend running in its own thread.
pub struct Session<T> {
    handle: std::thread::JoinHandle<T>,
    inject: mpsc::Receiver<Vec<Vec<u8>>>,
    parked: Arc<AtomicBool>,
    release: mpsc::Sender<()>,
}

/// Start `f` (a frontend) in a thread; step a rig with [`Session::serve`].
pub fn spawn_frontend<T: Send + 'static>(f: impl FnOnce(Ctl) -> T + Send + 'static) -> Session<T> {
    let (itx, irx) = mpsc::channel();
    let (rtx, rrx) = mpsc::channel();
    let parked = Arc::new(AtomicBool::new(false));
    let ctl = Ctl { inject: itx, parked: parked.clone(), release: rrx };
    Session { handle: std::thread::spawn(move || f(ctl)), inject: irx, parked, release: rtx }
}

impl<T> Session<T> {
    fn step(&self, rig: &mut Rig) {
        while let Ok(frames) = self.inject.try_recv() {
            for f in frames {
                rig.input.transmit(Packet::from_bytes(&f));
            }
        }
        rig.step();
        std::thread::sleep(Duration::from_micros(20));
    }

    /// Step `rig` until the frontend parks or ends.
    pub fn serve(&self, rig: &mut Rig, timeout: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        while !self.handle.is_finished() && !self.parked.load(Ordering::SeqCst) {
            anyhow::ensure!(Instant::now() < end, "the frontend did not finish within {timeout:?}");
            self.step(rig);
        }
        Ok(())
    }

    /// Release the frontend whenever it parks, step until it ends, and
    /// return what it returned.
    pub fn finish(self, rig: &mut Rig, timeout: Duration) -> anyhow::Result<T> {
        let this = &self;
        let mut steps = || this.step(rig);
        let r = Session::finish_inner(&self.handle, &self.parked, &self.release, &mut steps, timeout);
        r?;
        self.handle.join().map_err(|_| anyhow::anyhow!("the frontend thread panicked"))
    }

    /// The same, for a frontend serving something other than a rig (an
    /// engine): `step` runs one step of it (injected frames are ignored).
    pub fn finish_with(self, mut step: impl FnMut(), timeout: Duration) -> anyhow::Result<T> {
        Session::finish_inner(&self.handle, &self.parked, &self.release, &mut step, timeout)?;
        self.handle.join().map_err(|_| anyhow::anyhow!("the frontend thread panicked"))
    }

    fn finish_inner(
        handle: &std::thread::JoinHandle<T>,
        parked: &AtomicBool,
        release: &mpsc::Sender<()>,
        step: &mut dyn FnMut(),
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        while !handle.is_finished() {
            anyhow::ensure!(Instant::now() < end, "the frontend did not finish within {timeout:?}");
            if parked.load(Ordering::SeqCst) {
                let _ = release.send(());
            }
            step();
        }
        step();
        Ok(())
    }

    /// The frontend is parked or has ended.
    pub fn is_parked_or_done(&self) -> bool {
        self.parked.load(Ordering::SeqCst) || self.handle.is_finished()
    }
}

/// Run `f` (a frontend) in a thread while stepping `rig`; returns what `f`
/// returns. Fails if `f` runs longer than `timeout` (the thread is then
/// left to its own reply timeouts).
pub fn serve_while<T: Send + 'static>(
    rig: &mut Rig,
    timeout: Duration,
    f: impl FnOnce(Ctl) -> T + Send + 'static,
) -> anyhow::Result<T> {
    spawn_frontend(f).finish(rig, timeout)
}

/// A socket path of its own for a test.
pub fn temp_socket(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "snabb-vhost-{}-{tag}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Test frames: numbered, of a few sizes, local experimental ethertype.
pub fn test_frames(n: usize, seed: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = [60, 64, 128, 333, 1000, 1514][i % 6];
            let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, seed, 0x88, 0xb5];
            f.extend_from_slice(&(i as u32).to_be_bytes());
            while f.len() < len {
                f.push((f.len() * 7 + i) as u8 ^ seed);
            }
            f
        })
        .collect()
}

/// The app and this frontend in one process: setup, frames both ways
/// (counted and compared), GET_VRING_BASE, disconnect, and a second
/// frontend on the same app.
pub fn selftest() -> anyhow::Result<()> {
    use anyhow::ensure;
    let path = temp_socket("selftest");
    let mut rig = Rig::new(VhostUserArgs::new(&path))?;
    let to_guest = test_frames(200, 1);
    let from_guest = test_frames(300, 2);
    let (tg, fg) = (to_guest.clone(), from_guest.clone());
    let p = path.clone();
    let got = serve_while(&mut rig, Duration::from_secs(20), move |inject| -> anyhow::Result<(Vec<Vec<u8>>, u16)> {
        let mut fe = Frontend::connect(&p, FrontendOptions::default(), Duration::from_secs(5))?;
        fe.setup()?;
        fe.post_rx(0, 256, 2048);
        let mut sent = 0;
        let end = Instant::now() + Duration::from_secs(10);
        while sent < fg.len() && Instant::now() < end {
            sent += fe.send(0, &fg[sent..(sent + 64).min(fg.len())]);
            fe.reclaim_tx(0);
            std::thread::sleep(Duration::from_micros(100));
        }
        ensure!(sent == fg.len(), "the guest sent {sent} of {} frames", fg.len());
        inject.inject(tg.clone());
        let mut got = Vec::new();
        while got.len() < tg.len() && Instant::now() < end {
            fe.receive(0, &mut got);
            std::thread::sleep(Duration::from_micros(100));
        }
        // Wait until the backend consumed every TX chain, then stop the ring.
        while fe.queues[1].used_idx() != fg.len() as u16 && Instant::now() < end {
            std::thread::sleep(Duration::from_micros(100));
        }
        let base = fe.get_vring_base(1)?;
        Ok((got, base))
    })??;
    let (received, base) = got;
    ensure!(base == from_guest.len() as u16, "GET_VRING_BASE of the TX ring: {base}, sent {}", from_guest.len());
    ensure!(received == to_guest, "the guest received {} of {} frames (or altered)", received.len(), to_guest.len());
    let out = rig.take_output();
    ensure!(out == from_guest, "the switch received {} of {} frames (or altered)", out.len(), from_guest.len());
    let bytes = |v: &[Vec<u8>]| v.iter().map(|f| f.len() as u64).sum::<u64>();
    let c = |n: &str| rig.counter(n);
    ensure!(
        (c("rx_packets"), c("rx_bytes"), c("tx_packets"), c("tx_bytes"))
            == (300, bytes(&from_guest), 200, bytes(&to_guest)),
        "counters rx {} {} tx {} {}",
        c("rx_packets"),
        c("rx_bytes"),
        c("tx_packets"),
        c("tx_bytes")
    );
    // The frontend went away: the app notices and takes the next one.
    ensure!(rig.step_until(|r| !r.app.connected(), Duration::from_secs(5)), "disconnect not noticed");
    let p = path.clone();
    let session = spawn_frontend(move |ctl| -> anyhow::Result<()> {
        let mut fe = Frontend::connect(
            &p,
            FrontendOptions { order: Order::Dpdk, ..Default::default() },
            Duration::from_secs(5),
        )?;
        fe.setup()?;
        ctl.park();
        Ok(())
    });
    session.serve(&mut rig, Duration::from_secs(10))?;
    let running = rig.app.running();
    session.finish(&mut rig, Duration::from_secs(10))??;
    ensure!(running == (1, 1), "second frontend: queues running {running:?}");
    let c = |n: &str| rig.counter(n);
    ensure!(c("connections") == 2 && c("protocol_errors") == 0, "connections {}", c("connections"));
    Ok(())
}
