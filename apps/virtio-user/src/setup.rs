//! THE SETUP CONVERSATION, AS QEMU HOLDS IT
//!
//!   Setup::new(want)                  a conversation about to start on a fresh connection
//!   setup.next(&host) -> Next         the next request to send, or Wait, or Done
//!   setup.reply(msg) -> Result        the backend's answer to what was sent
//!   setup.negotiated()                features, protocol features, queue pairs, what the config space said
//!
//! A frontend sets a device up in the order QEMU 7.2 uses for a
//! vhost-user netdev (hw/virtio/vhost-user.c, vhost_dev_init and
//! vhost_dev_start):
//!
//!   GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES,
//!   GET_QUEUE_NUM (MQ), GET_CONFIG (CONFIG), SET_OWNER, SET_VRING_CALL
//!   (each ring), SET_FEATURES, NET_SET_MTU (NET_MTU and an MTU given),
//!   SET_MEM_TABLE, then per ring SET_VRING_NUM, _BASE, _ADDR, _KICK,
//!   _CALL, then SET_VRING_ENABLE for each ring (PROTOCOL_FEATURES), and
//!   SET_STATUS DRIVER_OK (STATUS).
//!
//! With REPLY_ACK every request that has no reply of its own asks for one
//! (need_reply), so a request the backend refuses is known at once (QEMU
//! does this for the memory table; we do it for all, as the test frontend
//! does). Nothing here blocks: `next` says what to send, the caller sends
//! it and feeds the answer to `reply` whenever it arrives, from the
//! engine's tick, so a backend in the same engine (a `VhostUser` app)
//! answers between two calls.

use std::os::fd::OwnedFd;

use snabb_apps_vhost_user::protocol::{
    ConfigSpace, MemoryRegion, Message, Reply, Request, VringAddress, VringState, has_reply, pf, request_name,
};
use snabb_apps_vhost_user::virtio::{self, bit, has};

/// virtio 1.x 2.1 device status bits.
pub const STATUS_ACKNOWLEDGE: u64 = 1;
pub const STATUS_DRIVER: u64 = 2;
pub const STATUS_DRIVER_OK: u64 = 4;
pub const STATUS_FEATURES_OK: u64 = 8;

/// What the frontend wants, before the backend says what it offers.
#[derive(Clone, Debug)]
pub struct Want {
    /// Feature bits taken when offered (VERSION_1 is required).
    pub features: u64,
    /// Protocol feature bits taken when offered.
    pub protocol: u64,
    pub queue_pairs: u16,
    pub queue_size: u16,
    /// NET_SET_MTU with this MTU (QEMU's host_mtu).
    pub mtu: Option<u16>,
}

/// What was agreed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub offered: u64,
    pub features: u64,
    pub protocol_offered: u64,
    pub protocol_features: u64,
    /// Queue pairs the backend has (GET_QUEUE_NUM; 1 without MQ).
    pub backend_pairs: u64,
    /// Queue pairs in use: what was wanted, at most what the backend has.
    pub queue_pairs: u16,
    /// From the config space (GET_CONFIG), when the backend serves one.
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u16>,
}

/// What the frontend's side provides for the requests.
pub trait Host {
    /// SET_VRING_ADDR of ring `i` (frontend virtual addresses).
    fn vring_addr(&self, i: u16) -> VringAddress;
    /// The memory table (one region) and its fd.
    fn memory(&self) -> std::io::Result<(MemoryRegion, OwnedFd)>;
    /// A duplicate of ring `i`'s kick or call eventfd.
    fn kick(&self, i: u16) -> std::io::Result<OwnedFd>;
    fn call(&self, i: u16) -> std::io::Result<OwnedFd>;
}

/// One step of the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    GetFeatures,
    GetProtocolFeatures,
    SetProtocolFeatures,
    GetQueueNum,
    GetConfig,
    SetOwner,
    /// The point where the rings are made: `next` returns `Next::Build`.
    Build,
    EarlyCall(u16),
    SetFeatures,
    NetSetMtu,
    SetMemTable,
    SetNum(u16),
    SetBase(u16),
    SetAddr(u16),
    SetKick(u16),
    SetCall(u16),
    Enable(u16),
    SetStatus,
}

/// What to do next.
#[derive(Debug)]
pub enum Next {
    /// Send this (with need_reply when `ack`); `next` says `Wait` until
    /// its reply, if it has one, is fed to `reply`.
    Send { request: Request, ack: bool },
    /// Lay out the rings for these features and queue pairs, then call `next` again.
    Build { features: u64, queue_pairs: u16 },
    /// A reply is awaited.
    Wait,
    /// The device is set up.
    Done,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the backend does not offer {0}")]
    Missing(&'static str),
    #[error("the backend refused {0} (answered {1})")]
    Refused(&'static str, u64),
    #[error("{0}")]
    Protocol(#[from] snabb_apps_vhost_user::protocol::ProtocolError),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
}

pub struct Setup {
    want: Want,
    plan: Vec<Step>,
    at: usize,
    /// The step sent whose reply is awaited (its code, and whether it was an ack).
    waiting: Option<(Step, u32, bool)>,
    n: Negotiated,
}

impl Setup {
    pub fn new(want: Want) -> Setup {
        use Step::*;
        Setup {
            want,
            plan: vec![GetFeatures, GetProtocolFeatures, SetProtocolFeatures, GetQueueNum, GetConfig, SetOwner, Build],
            at: 0,
            waiting: None,
            n: Negotiated::default(),
        }
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.n
    }

    /// The request now awaiting its reply, for log lines.
    pub fn waiting_for(&self) -> Option<&'static str> {
        self.waiting.map(|(_, code, _)| request_name(code))
    }

    fn protocol(&self) -> bool {
        has(self.n.offered, virtio::VHOST_USER_F_PROTOCOL_FEATURES)
    }

    /// Steps that do not apply to this backend.
    fn skip(&self, s: Step) -> bool {
        let pf = self.n.protocol_features;
        match s {
            Step::GetProtocolFeatures | Step::SetProtocolFeatures | Step::Enable(_) => !self.protocol(),
            Step::GetQueueNum => pf & pf::MQ == 0,
            Step::GetConfig => pf & pf::CONFIG == 0,
            Step::NetSetMtu => {
                self.want.mtu.is_none() || pf & pf::NET_MTU == 0 || !has(self.n.features, virtio::VIRTIO_NET_F_MTU)
            }
            Step::SetStatus => pf & pf::STATUS == 0,
            _ => false,
        }
    }

    /// The rest of the plan, once the queue pairs are known.
    fn plan_rings(&mut self) {
        use Step::*;
        let rings = 2 * self.n.queue_pairs;
        self.plan.extend((0..rings).map(EarlyCall));
        self.plan.extend([SetFeatures, NetSetMtu, SetMemTable]);
        for i in 0..rings {
            self.plan.extend([SetNum(i), SetBase(i), SetAddr(i), SetKick(i), SetCall(i)]);
        }
        self.plan.extend((0..rings).map(Enable));
        self.plan.push(SetStatus);
    }

    /// What to send next (or to wait for, or that all is done).
    pub fn next(&mut self, host: &dyn Host) -> Result<Next, SetupError> {
        if self.waiting.is_some() {
            return Ok(Next::Wait);
        }
        while let Some(&s) = self.plan.get(self.at) {
            if self.skip(s) {
                self.at += 1;
                continue;
            }
            if s == Step::Build {
                self.at += 1;
                self.plan_rings();
                return Ok(Next::Build { features: self.n.features, queue_pairs: self.n.queue_pairs });
            }
            let request = self.request(s, host)?;
            self.at += 1;
            let code = request.code();
            let ack = self.n.protocol_features & pf::REPLY_ACK != 0 && !has_reply(code);
            if has_reply(code) || ack {
                self.waiting = Some((s, code, ack));
            }
            return Ok(Next::Send { request, ack });
        }
        Ok(Next::Done)
    }

    fn request(&self, s: Step, host: &dyn Host) -> Result<Request, SetupError> {
        let state = |index: u16, num: u32| VringState { index: index as u32, num };
        Ok(match s {
            Step::GetFeatures => Request::GetFeatures,
            Step::GetProtocolFeatures => Request::GetProtocolFeatures,
            Step::SetProtocolFeatures => Request::SetProtocolFeatures(self.n.protocol_features),
            Step::GetQueueNum => Request::GetQueueNum,
            Step::GetConfig => Request::GetConfig(ConfigSpace { offset: 0, size: 12, flags: 0, payload: vec![0; 12] }),
            Step::SetOwner => Request::SetOwner,
            Step::EarlyCall(i) | Step::SetCall(i) => {
                Request::SetVringCall(i as u32, Some(host.call(i).map_err(|e| SetupError::Io("call eventfd", e))?))
            }
            Step::SetFeatures => Request::SetFeatures(self.n.features),
            Step::NetSetMtu => Request::NetSetMtu(self.want.mtu.unwrap_or(1500) as u64),
            Step::SetMemTable => {
                let (region, fd) = host.memory().map_err(|e| SetupError::Io("memory fd", e))?;
                Request::SetMemTable { regions: vec![region], fds: vec![fd] }
            }
            Step::SetNum(i) => Request::SetVringNum(state(i, self.want.queue_size as u32)),
            // Fresh rings on every connection: both indices start at 0.
            Step::SetBase(i) => Request::SetVringBase(state(i, 0)),
            Step::SetAddr(i) => Request::SetVringAddr(host.vring_addr(i)),
            Step::SetKick(i) => {
                Request::SetVringKick(i as u32, Some(host.kick(i).map_err(|e| SetupError::Io("kick eventfd", e))?))
            }
            Step::Enable(i) => Request::SetVringEnable(state(i, 1)),
            Step::SetStatus => {
                Request::SetStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
            }
            Step::Build => unreachable!("Build is handled in next"),
        })
    }

    /// A message arrived. It must be the reply awaited: anything else is
    /// an error (the caller drops the connection), as is a refusal of
    /// anything but GET_CONFIG.
    pub fn reply(&mut self, msg: &Message) -> Result<(), SetupError> {
        let Some((step, code, ack)) = self.waiting.take() else {
            return Err(SetupError::Protocol(snabb_apps_vhost_user::protocol::ProtocolError::BadReply {
                expected: "nothing",
                got: msg.header.request,
                flags: msg.header.flags,
                size: msg.payload.len(),
            }));
        };
        let reply = match Reply::parse(code, msg) {
            Ok(r) => r,
            // The config space is a nicety: a backend that cannot serve it
            // (an empty reply is its "no") leaves the MAC to the config.
            Err(e) if step == Step::GetConfig => {
                log::info!("virtio-user: GET_CONFIG: {e}; the MAC and MTU come from the arguments");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let v = reply.as_u64();
        if ack {
            return match v {
                Some(0) => Ok(()),
                v => Err(SetupError::Refused(request_name(code), v.unwrap_or(u64::MAX))),
            };
        }
        match (step, reply) {
            (Step::GetFeatures, Reply::U64(offered)) => {
                if !has(offered, virtio::VIRTIO_F_VERSION_1) {
                    return Err(SetupError::Missing("VIRTIO_F_VERSION_1 (a legacy device)"));
                }
                self.n.offered = offered;
                self.n.features = offered & self.want.features;
                if self.want.queue_pairs > 1 {
                    self.n.features |= offered & bit(virtio::VIRTIO_NET_F_MQ);
                }
                self.n.queue_pairs = 1;
                self.n.backend_pairs = 1;
            }
            (Step::GetProtocolFeatures, Reply::U64(pfo)) => {
                self.n.protocol_offered = pfo;
                self.n.protocol_features = pfo & self.want.protocol;
            }
            (Step::GetQueueNum, Reply::U64(n)) => {
                self.n.backend_pairs = n;
                let have = if has(self.n.features, virtio::VIRTIO_NET_F_MQ) { n.max(1) } else { 1 };
                self.n.queue_pairs = (self.want.queue_pairs as u64).min(have).min(128) as u16;
                if self.n.queue_pairs < self.want.queue_pairs {
                    log::warn!(
                        "virtio-user: the backend has {n} queue pairs{}; using {}",
                        if has(self.n.features, virtio::VIRTIO_NET_F_MQ) { "" } else { " (no MQ)" },
                        self.n.queue_pairs
                    );
                }
                if self.n.queue_pairs == 1 {
                    self.n.features &= !bit(virtio::VIRTIO_NET_F_MQ);
                }
            }
            (Step::GetConfig, Reply::Config(c)) => {
                // virtio-net's config space: mac[6], status u16, max_virtqueue_pairs u16, mtu u16.
                let b = &c.payload;
                if b.len() >= 6 && has(self.n.features, virtio::VIRTIO_NET_F_MAC) {
                    self.n.mac = Some(b[0..6].try_into().expect("six bytes"));
                }
                if b.len() >= 12 && has(self.n.features, virtio::VIRTIO_NET_F_MTU) {
                    self.n.mtu = Some(u16::from_le_bytes([b[10], b[11]]));
                }
            }
            (s, r) => {
                log::debug!("virtio-user: reply to {s:?}: {r:?}");
            }
        }
        Ok(())
    }
}
