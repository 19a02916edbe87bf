//! The stand-in NIC and guest of the zero-copy tests (zerocopy.rs,
//! zerocopy_physical.rs): a NIC in the test thread that takes a port's lent
//! buffers off `supply` and writes frames into them as the 82599 would, and
//! a frontend thread that keeps receive buffers posted and reaps frames.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use snabb_apps_vhost_user::VhostUserArgs;
use snabb_apps_vhost_user::frontend::{Ctl, Frontend, FrontendOptions, Rig, spawn_frontend, temp_socket};
use snabb_apps_vhost_user::virtio::{self, NetHdr, bit};
use snabb_core::Packet;

pub const T: Duration = Duration::from_secs(30);

pub fn wait(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    false
}

/// A frame of `len` bytes, numbered `n`, with a pattern that tells bytes apart.
pub fn frame(n: usize, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + n * 13 + 1) as u8).collect();
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    if len >= 16 {
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        f[14..16].copy_from_slice(&(n as u16).to_be_bytes());
    }
    f
}

/// What the stand-in NIC does with the buffers it is lent.
#[derive(Clone, Copy, Default)]
pub struct NicPlan {
    /// Every this many frames, deliver in a host packet instead (a frame
    /// from elsewhere, copied by the port), keeping the lent buffer.
    pub host_every: Option<usize>,
    /// Every this many frames, drop the filled buffer (a filter in the
    /// graph): the frame is lost, the buffer goes back to the port.
    pub drop_every: Option<usize>,
    /// Strip this many bytes from the front of each lent frame (a tunnel
    /// header taken off in a fixed-start buffer).
    pub strip: usize,
    /// Mark frames as checksum-verified.
    pub verified: bool,
    /// Never give back revoked buffers (a wedged NIC).
    pub wedged: bool,
    /// Deliver frames in host packets while not lent any buffer (a NIC
    /// on host buffers); otherwise they wait, as on a wire.
    pub host_when_idle: bool,
    /// Frames delivered per breath at most (0: all it can).
    pub burst: usize,
    /// Each frame takes two buffers and the second goes home empty (the
    /// 82599 writing a frame over two descriptors, then moving its tail
    /// into the first buffer).
    pub pairs: bool,
}

/// The stand-in NIC: posted buffers, frames to deliver, counts.
pub struct Nic {
    pub plan: NicPlan,
    pub posted: VecDeque<Packet>,
    pub frames: VecDeque<(usize, Vec<u8>)>,
    pub lending: bool,
    pub delivered: usize,
    pub dropped: Vec<usize>,
    pub released: usize,
}

impl Nic {
    pub fn new(plan: NicPlan) -> Nic {
        Nic {
            plan,
            posted: VecDeque::new(),
            frames: VecDeque::new(),
            lending: false,
            delivered: 0,
            dropped: Vec::new(),
            released: 0,
        }
    }

    /// One breath of the NIC: take supply, give back revoked buffers,
    /// deliver what frames it can.
    pub fn run(&mut self, rig: &Rig) {
        // Frames come in once the guest is there to take them.
        if rig.app.running().0 == 0 {
            return;
        }
        if let Some(s) = &rig.supply {
            for p in s.drain() {
                assert!(p.is_foreign() && p.has_fixed_start() && p.is_empty() && p.dma_addr() != 0, "{p:?}");
                self.lending = true;
                self.posted.push_back(p);
            }
        }
        if !self.plan.wedged && self.posted.iter().any(Packet::is_revoked) {
            // As the 82599 does: restart the queue, every buffer goes home.
            self.released += self.posted.len();
            self.posted.clear();
            self.lending = false;
        }
        let mut budget = if self.plan.burst == 0 { usize::MAX } else { self.plan.burst };
        while let Some(&(n, _)) = self.frames.front() {
            if budget == 0 || (!self.lending && !self.plan.host_when_idle) {
                break;
            }
            budget -= 1;
            let host = self.plan.host_every.is_some_and(|k| n % k == k - 1) || !self.lending;
            if host {
                let (_, f) = self.frames.pop_front().unwrap();
                rig.input.transmit(Packet::from_bytes(&f));
                self.delivered += 1;
                continue;
            }
            if self.plan.pairs && self.posted.len() < 2 {
                break;
            }
            let Some(mut p) = self.posted.pop_front() else { break };
            if self.plan.pairs {
                drop(self.posted.pop_front());
            }
            let (n, f) = self.frames.pop_front().unwrap();
            let pre = self.plan.strip;
            if pre + f.len() > p.capacity() {
                // Not the port's business here: a NIC copies such frames.
                drop(p);
                rig.input.transmit(Packet::from_bytes(&f));
                self.delivered += 1;
                continue;
            }
            p.set_len(pre + f.len());
            p.data_mut()[pre..].copy_from_slice(&f);
            if pre > 0 {
                p.shift_left(pre);
            }
            p.set_csum_verified(self.plan.verified);
            if self.plan.drop_every.is_some_and(|k| n % k == k - 1) {
                self.dropped.push(n);
                drop(p);
                continue;
            }
            rig.input.transmit(p);
            self.delivered += 1;
        }
    }
}

/// The frontend thread: connect, set up, keep `buf_len`-byte receive
/// buffers posted, receive `n` frames with their headers. Returns them,
/// the features, and the used entries that held nothing.
pub fn guest_receiving(
    path: std::path::PathBuf,
    opts: FrontendOptions,
    buf_len: u32,
    n: usize,
) -> impl FnOnce(Ctl) -> Result<Guest> + Send + 'static {
    move |_ctl| {
        let mut fe = Frontend::connect(&path, opts, T)?;
        fe.setup()?;
        fe.post_rx(0, 200, buf_len);
        let mut got = Vec::new();
        let ok = wait(|| {
            fe.queues[0].reap_with_headers(&mut got);
            if fe.queues[0].num_free() > 32 {
                fe.post_rx(0, 32, buf_len);
            }
            got.len() >= n
        });
        ensure!(ok, "received {} of {n}", got.len());
        Ok(Guest { got, features: fe.features, bad_used: fe.queues[0].bad_used })
    }
}

pub struct Guest {
    pub got: Vec<(NetHdr, Vec<u8>)>,
    pub features: u64,
    pub bad_used: u64,
}

/// Run a guest receiving `frames` through a port lending to a stand-in
/// NIC; `between` runs each breath (to switch modes, say).
pub fn run_rx(
    opts: FrontendOptions,
    buf_len: u32,
    frames: &[Vec<u8>],
    plan: NicPlan,
    mut between: impl FnMut(&mut Rig, &mut Nic, usize),
) -> Result<(Rig, Nic, Guest)> {
    let path = temp_socket("zc");
    let mut rig = Rig::with_supply(VhostUserArgs::new(&path))?;
    let mut nic = Nic::new(plan);
    let expect = frames.len() - plan.drop_every.map_or(0, |k| frames.len() / k);
    let s = spawn_frontend(guest_receiving(path, opts, buf_len, expect));
    nic.frames.extend(frames.iter().cloned().enumerate());
    let mut breath = 0;
    let guest = {
        let (rig, nic) = (&mut rig, &mut nic);
        s.finish_with(
            || {
                nic.run(rig);
                between(rig, nic, breath);
                breath += 1;
                rig.step();
                std::thread::sleep(Duration::from_micros(20));
            },
            T,
        )??
    };
    Ok((rig, nic, guest))
}

pub fn c(rig: &Rig, n: &str) -> u64 {
    rig.counter(n)
}

pub fn mrg(on: bool) -> FrontendOptions {
    FrontendOptions { refuse: if on { 0 } else { bit(virtio::VIRTIO_NET_F_MRG_RXBUF) }, ..Default::default() }
}
