//! DECAP: strips one encapsulation (see `Tunnel`) from every packet.
//!
//! Ports: any inputs; `output` for the inner frames; `reject`, optional,
//! for packets that are not of the tunnel, unchanged. Without a `reject`
//! link they are dropped. Either way they are counted by reason, so that a
//! misconfigured peer (wrong_*) can be told from a broken one:
//!
//!   truncated        the frame ends inside the Ethernet header, a tag, the
//!                    tunnel's header or the inner frame's header
//!   short_ip_header  fewer bytes than an IP header, IPv4 IHL below 5, or
//!                    an IHL that points past the bytes present
//!   ip_length        the IPv4 total length (IPv6 payload length, extension
//!                    headers) more than the frame holds, or below the header
//!   udp_length       the UDP length below 8 or past the IP payload
//!   ip_options       IPv4 options, when `refuse_ip_options` is set
//!   bad_header       IP version, a malformed IPv6 extension header
//!   flags            VXLAN I flag clear; GRE version, routing or reserved bits
//!   bad_checksum     IPv4 header, GRE (when present), UDP (when asked)
//!   fragment         an IP fragment: tunnels are not reassembled
//!   not_tunnel       another ethertype, IP protocol or GRE payload type
//!   wrong_port       another UDP destination port (VXLAN)
//!   wrong_address    not to `local`, or not from `remote`
//!   wrong_id         another VLAN id, VNI, GRE key or L2TPv3 session
//!   wrong_cookie     another L2TPv3 cookie
//!
//! Stripping moves the packet's start (`Packet::shift_left`, O(1)); in a
//! buffer whose start is fixed it moves the inner frame down with the
//! SIMD copier's `move_within` instead. A VLAN tag is cut out by moving
//! the 12 address bytes up over it. Link-layer padding after the outer IP
//! datagram is cut off with it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use snabb_core::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN};
use snabb_core::{App, AppClass, AppContext, Io, Packet, PortSpec};

use crate::tunnel::{Direction, Tunnel};
use crate::wire::{
    self, Checksum, EthernetFrame, GreHeader, Ipv4Packet, Ipv6Packet, L2tpv3Header, UdpPacket, VlanTag, VxlanHeader, ip,
};

/// Why a packet was not decapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    Truncated,
    ShortIpHeader,
    IpLength,
    UdpLength,
    IpOptions,
    BadHeader,
    Flags,
    BadChecksum,
    Fragment,
    NotTunnel,
    WrongPort,
    WrongAddress,
    WrongId,
    WrongCookie,
}

impl Reject {
    pub const ALL: [Reject; 14] = [
        Reject::Truncated,
        Reject::ShortIpHeader,
        Reject::IpLength,
        Reject::UdpLength,
        Reject::IpOptions,
        Reject::BadHeader,
        Reject::Flags,
        Reject::BadChecksum,
        Reject::Fragment,
        Reject::NotTunnel,
        Reject::WrongPort,
        Reject::WrongAddress,
        Reject::WrongId,
        Reject::WrongCookie,
    ];

    /// The counter name.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::ShortIpHeader => "short_ip_header",
            Reject::IpLength => "ip_length",
            Reject::UdpLength => "udp_length",
            Reject::IpOptions => "ip_options",
            Reject::BadHeader => "bad_header",
            Reject::Flags => "flags",
            Reject::BadChecksum => "bad_checksum",
            Reject::Fragment => "fragment",
            Reject::NotTunnel => "not_tunnel",
            Reject::WrongPort => "wrong_port",
            Reject::WrongAddress => "wrong_address",
            Reject::WrongId => "wrong_id",
            Reject::WrongCookie => "wrong_cookie",
        }
    }
}

/// A header below IP (Ethernet, a tag) or inside the tunnel (GRE, VXLAN,
/// L2TPv3, the inner Ethernet header): short is `truncated`, a field no
/// sender sets is `flags`.
impl From<wire::Error> for Reject {
    fn from(e: wire::Error) -> Reject {
        match e {
            wire::Error::Truncated | wire::Error::BadLength => Reject::Truncated,
            wire::Error::Malformed => Reject::Flags,
        }
    }
}

/// Where the inner frame is in a packet that matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strip {
    /// Cut out `n` bytes of tags after the MAC addresses.
    Tags(usize),
    /// The inner frame is `len` bytes from offset `start`.
    Outer { start: usize, len: usize },
}

/// An address to compare against, as one integer (native byte order, so
/// that a comparison is one load from the packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Addr {
    V4(u32),
    V6(u128),
}

impl Addr {
    fn of(a: IpAddr) -> Addr {
        match a {
            IpAddr::V4(a) => Addr::V4(u32::from_ne_bytes(a.octets())),
            IpAddr::V6(a) => Addr::V6(u128::from_ne_bytes(a.octets())),
        }
    }
    /// The address at `b[at..]`, of this address's family.
    #[inline(always)]
    fn read(&self, b: &[u8], at: usize) -> Addr {
        match self {
            Addr::V4(_) => Addr::V4(u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())),
            Addr::V6(_) => Addr::V6(u128::from_ne_bytes(b[at..at + 16].try_into().unwrap())),
        }
    }
    fn ip(&self) -> IpAddr {
        match *self {
            Addr::V4(a) => IpAddr::from(a.to_ne_bytes()),
            Addr::V6(a) => IpAddr::from(a.to_ne_bytes()),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Inner {
    Vxlan { port: u16, vni: u32, verify_udp: bool },
    Gre { key: Option<u32> },
    L2tpv3 { session: u32, cookie: u64 },
}

/// What Decap accepts beyond the tunnel's own fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Check UDP checksums of VXLAN packets (zero, "none", passes).
    pub verify_udp_checksum: bool,
    /// Refuse IPv4 headers with options (IHL above 5).
    pub refuse_ip_options: bool,
}

/// The checks for one tunnel, compiled from its arguments.
#[derive(Clone, Copy, Debug)]
pub struct Matcher(Kind);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tags { first_tpid: u16, first: Option<u16>, second: Option<Option<u16>> },
    Ip { local: Addr, remote: Option<Addr>, inner: Inner, refuse_options: bool },
}

impl Matcher {
    /// The matcher for `t`, which must be valid for decapsulation.
    pub fn new(t: &Tunnel, verify_udp_checksum: bool) -> Matcher {
        Matcher::with_policy(t, Policy { verify_udp_checksum, ..Policy::default() })
    }

    pub fn with_policy(t: &Tunnel, policy: Policy) -> Matcher {
        let verify_udp_checksum = policy.verify_udp_checksum;
        let refuse_options = policy.refuse_ip_options;
        Matcher(match *t {
            Tunnel::Vlan { vid, tpid, .. } => Kind::Tags { first_tpid: tpid, first: vid, second: None },
            Tunnel::QinQ { outer, inner, outer_tpid, .. } => {
                Kind::Tags { first_tpid: outer_tpid, first: outer, second: Some(inner) }
            }
            Tunnel::Vxlan { local, remote, vni, port } => Kind::Ip {
                local: Addr::of(local),
                remote: remote.map(Addr::of),
                inner: Inner::Vxlan { port, vni, verify_udp: verify_udp_checksum },
                refuse_options,
            },
            Tunnel::Gre { local, remote, key, .. } => Kind::Ip {
                local: Addr::of(local),
                remote: remote.map(Addr::of),
                inner: Inner::Gre { key },
                refuse_options,
            },
            Tunnel::L2tpv3 { local, remote, session, remote_cookie, .. } => Kind::Ip {
                local: Addr::of(IpAddr::V6(local)),
                remote: Some(Addr::of(IpAddr::V6(remote))),
                inner: Inner::L2tpv3 { session, cookie: remote_cookie },
                refuse_options,
            },
        })
    }

    /// Where the inner frame of `frame` is, or why there is none. Reads
    /// only; the packet is not changed.
    #[inline]
    pub fn classify(&self, frame: &[u8]) -> Result<Strip, Reject> {
        let fast = match &self.0 {
            Kind::Ip { local, remote, inner, .. } => fast_ip(frame, local, remote, inner),
            Kind::Tags { first_tpid, first, second } => fast_tags(frame, *first_tpid, *first, *second),
        };
        match fast {
            Some(s) => Ok(s),
            None => self.general(frame),
        }
    }

    /// `classify` without the fast path: every header layout, and the
    /// reason for a refusal. (Out of line, so that the fast path's loop
    /// keeps its registers.)
    #[inline(never)]
    pub fn general(&self, frame: &[u8]) -> Result<Strip, Reject> {
        let eth = EthernetFrame::new_checked(frame)?;
        match &self.0 {
            Kind::Tags { first_tpid, first, second } => {
                if eth.ethertype() != *first_tpid {
                    return Err(Reject::NotTunnel);
                }
                let tag = VlanTag::new_checked(eth.payload())?;
                if first.is_some_and(|v| v != tag.vid()) {
                    return Err(Reject::WrongId);
                }
                let Some(second) = second else { return Ok(Strip::Tags(4)) };
                if tag.ethertype() != ETHERTYPE_VLAN {
                    return Err(Reject::NotTunnel);
                }
                let tag2 = VlanTag::new_checked(tag.payload())?;
                if second.is_some_and(|v| v != tag2.vid()) {
                    return Err(Reject::WrongId);
                }
                Ok(Strip::Tags(8))
            }
            Kind::Ip { local, remote, inner, refuse_options } => {
                let protocol = match inner {
                    Inner::Vxlan { .. } => ip::UDP,
                    Inner::Gre { .. } => ip::GRE,
                    Inner::L2tpv3 { .. } => ip::L2TP,
                };
                let outer = outer_ip(eth.payload(), eth.ethertype(), protocol, local, remote, *refuse_options)?;
                let l4 = &eth.payload()[outer.l4_at..outer.l4_end];
                let (at, inner_len) = match *inner {
                    Inner::Vxlan { port, vni, verify_udp } => {
                        if l4.len() < UdpPacket::<&[u8]>::HEADER_LEN {
                            return Err(Reject::Truncated);
                        }
                        let udp = UdpPacket::new_checked(l4).map_err(|_| Reject::UdpLength)?;
                        if udp.dst_port() != port {
                            return Err(Reject::WrongPort);
                        }
                        if verify_udp && !udp.verify_checksum(outer.src.ip(), outer.dst.ip()) {
                            return Err(Reject::BadChecksum);
                        }
                        let vx = VxlanHeader::new_checked(udp.payload())?;
                        if !vx.vni_valid() {
                            return Err(Reject::Flags);
                        }
                        if vx.vni() != vni {
                            return Err(Reject::WrongId);
                        }
                        (UdpPacket::<&[u8]>::HEADER_LEN + VxlanHeader::<&[u8]>::HEADER_LEN, vx.payload().len())
                    }
                    Inner::Gre { key } => {
                        let gre = GreHeader::new_checked(l4)?;
                        if gre.protocol() != wire::GRE_PROTOCOL_TEB {
                            return Err(Reject::NotTunnel);
                        }
                        if !gre.verify_checksum() {
                            return Err(Reject::BadChecksum);
                        }
                        if gre.key() != key {
                            return Err(Reject::WrongId);
                        }
                        (gre.header_len(), gre.payload().len())
                    }
                    Inner::L2tpv3 { session, cookie } => {
                        let h = L2tpv3Header::new_checked(l4)?;
                        if h.session_id() != session {
                            return Err(Reject::WrongId);
                        }
                        if h.cookie() != cookie {
                            return Err(Reject::WrongCookie);
                        }
                        (L2tpv3Header::<&[u8]>::HEADER_LEN, h.payload().len())
                    }
                };
                if inner_len < EthernetFrame::<&[u8]>::HEADER_LEN {
                    return Err(Reject::Truncated);
                }
                Ok(Strip::Outer { start: EthernetFrame::<&[u8]>::HEADER_LEN + outer.l4_at + at, len: inner_len })
            }
        }
    }
}

/// Tags that match, read from a fixed-size array (no bounds checks);
/// `None` for anything else, which the general path then looks at.
#[inline(always)]
fn fast_tags(f: &[u8], first_tpid: u16, first: Option<u16>, second: Option<Option<u16>>) -> Option<Strip> {
    let matches = |tpid: u16, tag: &[u8], want: Option<u16>| {
        wire::get16(tag, 0) == tpid && want.is_none_or(|v| v == VlanTag::new_unchecked(&tag[2..4]).vid())
    };
    match second {
        None => {
            let h: &[u8; 18] = f.get(..18)?.try_into().ok()?;
            matches(first_tpid, &h[12..16], first).then_some(Strip::Tags(4))
        }
        Some(second) => {
            let h: &[u8; 22] = f.get(..22)?.try_into().ok()?;
            (matches(first_tpid, &h[12..16], first) && matches(ETHERTYPE_VLAN, &h[16..20], second))
                .then_some(Strip::Tags(8))
        }
    }
}

/// The common case of an IP tunnel in straight-line code: no IPv4 options,
/// no IPv6 extension headers, no GRE checksum or sequence number, and
/// every check passing. The views here sit on fixed-size arrays, so their
/// field reads need no bounds checks. Anything else (`None`) goes the
/// general way, which also names the reason for a refusal; the tests check
/// that both ways agree.
#[inline(always)]
fn fast_ip(f: &[u8], local: &Addr, remote: &Option<Addr>, inner: &Inner) -> Option<Strip> {
    let protocol = match inner {
        Inner::Vxlan { .. } => ip::UDP,
        Inner::Gre { .. } => ip::GRE,
        Inner::L2tpv3 { .. } => ip::L2TP,
    };
    let (l4_at, l4_len, src, dst) = match local {
        Addr::V4(_) => {
            let h: &[u8; 34] = f.get(..34)?.try_into().ok()?;
            let ip = Ipv4Packet::new_unchecked(&h[14..34]);
            let total = ip.total_len() as usize;
            let mut sum = Checksum::new();
            sum.add_bytes(&h[14..34]);
            if wire::get16(h, 12) != ETHERTYPE_IPV4
                || h[14] != 0x45
                || ip.is_fragment()
                || ip.protocol() != protocol
                || total < 20
                || f.len() < 14 + total
                || !sum.is_valid()
            {
                return None;
            }
            (34, total - 20, local.read(h, 26), local.read(h, 30))
        }
        Addr::V6(_) => {
            let h: &[u8; 54] = f.get(..54)?.try_into().ok()?;
            let ip = Ipv6Packet::new_unchecked(&h[14..54]);
            let len = ip.payload_len() as usize;
            if wire::get16(h, 12) != ETHERTYPE_IPV6
                || ip.version() != 6
                || ip.next_header() != protocol
                || f.len() < 54 + len
            {
                return None;
            }
            (54, len, local.read(h, 22), local.read(h, 38))
        }
    };
    if dst != *local || remote.is_some_and(|r| r != src) {
        return None;
    }
    let l4 = &f[l4_at..l4_at + l4_len];
    let (header, inner_len) = match *inner {
        Inner::Vxlan { port, vni, verify_udp } => {
            let b: &[u8; 16] = l4.get(..16)?.try_into().ok()?;
            let udp = UdpPacket::new_unchecked(&b[..8]);
            let vx = VxlanHeader::new_unchecked(&b[8..]);
            if udp.dst_port() != port
                || udp.len() as usize != l4_len
                || (verify_udp && udp.checksum() != 0)
                || !vx.vni_valid()
                || vx.vni() != vni
            {
                return None;
            }
            (16, l4_len - 16)
        }
        Inner::Gre { key } => {
            let b: &[u8; 8] = l4.get(..8)?.try_into().ok()?;
            let gre = GreHeader::new_unchecked(&b[..]);
            // Exactly the flags we expect: the key bit or nothing.
            let flags = if key.is_some() { 0x2000 } else { 0 };
            if wire::get16(b, 0) != flags || gre.protocol() != wire::GRE_PROTOCOL_TEB {
                return None;
            }
            match key {
                Some(k) if wire::get32(b, 4) != k => return None,
                Some(_) => (8, l4_len - 8),
                None => (4, l4_len - 4),
            }
        }
        Inner::L2tpv3 { session, cookie } => {
            let b: &[u8; 12] = l4.get(..12)?.try_into().ok()?;
            let h = L2tpv3Header::new_unchecked(&b[..]);
            if h.session_id() != session || h.cookie() != cookie {
                return None;
            }
            (12, l4_len - 12)
        }
    };
    if inner_len < EthernetFrame::<&[u8]>::HEADER_LEN {
        return None;
    }
    Some(Strip::Outer { start: l4_at + header, len: inner_len })
}

/// The outer IP header, checked: where its upper-layer payload is (offsets
/// in the Ethernet payload) and its addresses.
struct Outer {
    l4_at: usize,
    l4_end: usize,
    src: Addr,
    dst: Addr,
}

#[inline(always)]
fn outer_ip(
    payload: &[u8],
    ethertype: u16,
    protocol: u8,
    local: &Addr,
    remote: &Option<Addr>,
    refuse_options: bool,
) -> Result<Outer, Reject> {
    let v4 = matches!(local, Addr::V4(_));
    if ethertype != if v4 { ETHERTYPE_IPV4 } else { ETHERTYPE_IPV6 } {
        return Err(Reject::NotTunnel);
    }
    match payload.first() {
        None => return Err(Reject::ShortIpHeader),
        Some(b) if b >> 4 != if v4 { 4 } else { 6 } => return Err(Reject::BadHeader),
        _ => {}
    }
    let outer = if v4 {
        // The lengths first, each for its own reason: a header that says it
        // is longer than the bytes there are is a length error, not a bad
        // checksum over bytes that are not there.
        let min = Ipv4Packet::<&[u8]>::MIN_HEADER_LEN;
        let ihl = (payload[0] & 0x0f) as usize * 4;
        if payload.len() < min || ihl < min || payload.len() < ihl {
            return Err(Reject::ShortIpHeader);
        }
        let total = wire::get16(payload, 2) as usize;
        if total < ihl || payload.len() < total {
            return Err(Reject::IpLength);
        }
        if refuse_options && ihl != min {
            return Err(Reject::IpOptions);
        }
        let ip = Ipv4Packet::new_checked(payload).map_err(|_| Reject::IpLength)?;
        if !ip.verify_checksum() {
            return Err(Reject::BadChecksum);
        }
        if ip.is_fragment() {
            return Err(Reject::Fragment);
        }
        if ip.protocol() != protocol {
            return Err(Reject::NotTunnel);
        }
        Outer {
            l4_at: ip.header_len(),
            l4_end: ip.total_len() as usize,
            src: local.read(payload, 12),
            dst: local.read(payload, 16),
        }
    } else {
        if payload.len() < 40 {
            return Err(Reject::ShortIpHeader);
        }
        let ip = Ipv6Packet::new_checked(payload).map_err(|_| Reject::IpLength)?;
        let (next, at) = ip.upper_layer().map_err(|e| match e {
            wire::Error::Malformed => Reject::BadHeader,
            _ => Reject::IpLength,
        })?;
        if next == ip::FRAGMENT {
            return Err(Reject::Fragment);
        }
        if next != protocol {
            return Err(Reject::NotTunnel);
        }
        Outer {
            l4_at: 40 + at,
            l4_end: 40 + ip.payload_len() as usize,
            src: local.read(payload, 8),
            dst: local.read(payload, 24),
        }
    };
    if outer.dst != *local || remote.is_some_and(|r| r != outer.src) {
        return Err(Reject::WrongAddress);
    }
    Ok(outer)
}

/// Cut the outer headers off `p` as `s` says.
#[inline]
pub fn strip(p: &mut Packet, s: Strip) {
    match s {
        Strip::Tags(n) => {
            let d = p.data_mut();
            let macs: [u8; 12] = d[..12].try_into().unwrap();
            d[n..n + 12].copy_from_slice(&macs);
            p.shift_left(n);
        }
        Strip::Outer { start, len } => {
            // Padding goes first, so a fixed-start buffer moves only the frame.
            p.truncate(start + len);
            p.shift_left(start);
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecapArgs {
    pub tunnel: Tunnel,
    /// Check UDP checksums of VXLAN packets (a zero checksum, "none", is
    /// always accepted). Off by default: the inner frame carries its own.
    #[serde(default)]
    pub verify_udp_checksum: bool,
    /// Refuse outer IPv4 headers with options (IHL above 5), as many fast
    /// paths do: counted in `ip_options`. Off by default: options are
    /// skipped over.
    #[serde(default)]
    pub refuse_ip_options: bool,
}

impl DecapArgs {
    pub fn policy(&self) -> Policy {
        Policy { verify_udp_checksum: self.verify_udp_checksum, refuse_ip_options: self.refuse_ip_options }
    }
}

pub struct Decap {
    tunnel: Tunnel,
    matcher: Matcher,
    output: Option<usize>,
    reject: Option<usize>,
    decapsulated: u64,
    dropped: u64,
    rejected: [u64; Reject::ALL.len()],
}

impl AppClass for Decap {
    type Args = DecapArgs;
    const PORTS: PortSpec = PortSpec::new(&["*"], &["output", "reject"]);

    fn validate(args: &DecapArgs) -> anyhow::Result<()> {
        args.tunnel.validate(Direction::Decap)
    }

    fn new(args: DecapArgs, _ctx: &AppContext) -> anyhow::Result<Decap> {
        args.tunnel.validate(Direction::Decap)?;
        Ok(Decap {
            matcher: Matcher::with_policy(&args.tunnel, args.policy()),
            tunnel: args.tunnel,
            output: None,
            reject: None,
            decapsulated: 0,
            dropped: 0,
            rejected: [0; Reject::ALL.len()],
        })
    }

    // New ids, keys and addresses are taken in place; counters carry on.
    fn reconfigure(&mut self, args: DecapArgs, _ctx: &AppContext) -> anyhow::Result<bool> {
        args.tunnel.validate(Direction::Decap)?;
        self.matcher = Matcher::with_policy(&args.tunnel, args.policy());
        self.tunnel = args.tunnel;
        Ok(true)
    }
}

impl App for Decap {
    fn link(&mut self, io: &Io) {
        self.reject = io.output.index_of("reject");
        self.output = io.output.index_of("output");
    }

    fn push(&mut self, io: &Io) {
        let out = self.output.map(|i| io.output.at(i));
        let reject = self.reject.map(|i| io.output.at(i));
        for input in io.input.iter() {
            let mut tx = out.map(|o| o.transmitter());
            for mut p in input.drain() {
                match self.matcher.classify(p.data()) {
                    Ok(s) => {
                        strip(&mut p, s);
                        self.decapsulated += 1;
                        match &mut tx {
                            Some(tx) => tx.send(p),
                            None => self.dropped += 1,
                        }
                    }
                    Err(r) => {
                        self.rejected[r as usize] += 1;
                        match reject {
                            Some(l) => l.transmit(p),
                            None => self.dropped += 1,
                        }
                    }
                }
            }
        }
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("decapsulated", self.decapsulated);
        emit("rejected", self.rejected.iter().sum());
        emit("dropped", self.dropped);
        for r in Reject::ALL {
            emit(r.name(), self.rejected[r as usize]);
        }
    }

    fn report(&self, out: &mut String) {
        out.push_str(&format!(
            "{}: {} decapsulated, {} rejected, {} dropped\n",
            self.tunnel.kind(),
            self.decapsulated,
            self.rejected.iter().sum::<u64>(),
            self.dropped
        ));
    }
}

impl Decap {
    pub fn decapsulated(&self) -> u64 {
        self.decapsulated
    }
    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejected[r as usize]
    }
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
    /// Packets dropped: rejects with no `reject` link, inner frames with
    /// no output.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}
