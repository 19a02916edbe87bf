//! ENCAP: pushes one encapsulation (see `Tunnel`) onto every packet, the
//! reverse of `Decap`: a frame through Encap and then through a Decap with
//! the tunnel `reversed()` comes out as it went in.
//!
//! Ports: any inputs; `output` (or the only output). Counters:
//! `encapsulated`; drops by reason: `truncated` (not an Ethernet frame:
//! under 14 bytes), `too_long` (no room for the headers within a packet
//! buffer), `dropped` (no output linked).
//!
//! The outer headers are built once from the arguments as a template and
//! prepended (`Packet::prepend`: O(1) within the headroom); per packet only
//! the lengths, the IPv4 identification and header checksum (updated from
//! the template's sum), the VXLAN source port and, when asked for, UDP or
//! GRE checksums over the whole packet are written.
//!
//! The outer IPv4 header has DF clear and an identification that counts up
//! (RFC 6864), TTL `ttl`, DSCP 0. The VXLAN source port is a hash of the
//! inner frame's addresses and ports in 49152-65535 (RFC 7348), so that
//! routers spreading flows over paths keep each inner flow on one, unless
//! `src_port` fixes it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use snabb_core::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, MacAddr};
use snabb_core::packet::PAYLOAD_SIZE;
use snabb_core::{App, AppClass, AppContext, Io, Packet, PortSpec};

use crate::tunnel::{Direction, Tunnel};
use crate::wire::{
    self, Checksum, EthernetFrame, GreHeader, Ipv4Packet, Ipv6Packet, L2tpv3Header, UdpPacket, VlanTag, VxlanHeader, ip,
};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncapArgs {
    pub tunnel: Tunnel,
    /// IP tunnels: the outer Ethernet source address.
    #[serde(default)]
    pub local_mac: Option<MacAddr>,
    /// IP tunnels: the outer Ethernet destination, the next hop towards
    /// `remote`.
    #[serde(default)]
    pub remote_mac: Option<MacAddr>,
    /// IP tunnels: outer TTL or hop limit.
    #[serde(default = "default_ttl")]
    pub ttl: u8,
    /// VXLAN: a fixed UDP source port instead of the per-flow hash.
    #[serde(default)]
    pub src_port: Option<u16>,
    /// VXLAN: send UDP checksums. By default yes over IPv6 (RFC 8200) and
    /// no over IPv4 (RFC 7348).
    #[serde(default)]
    pub udp_checksum: Option<bool>,
}

fn default_ttl() -> u8 {
    64
}

impl EncapArgs {
    /// Arguments for `tunnel` with addresses and defaults filled in.
    pub fn new(tunnel: Tunnel, local_mac: MacAddr, remote_mac: MacAddr) -> EncapArgs {
        EncapArgs {
            tunnel,
            local_mac: Some(local_mac),
            remote_mac: Some(remote_mac),
            ttl: 64,
            src_port: None,
            udp_checksum: None,
        }
    }
}

/// Why a packet was not encapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refuse {
    /// Not an Ethernet frame (under 14 bytes).
    Truncated,
    /// The headers would not fit in a packet buffer.
    TooLong,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Tag bytes to insert after the MAC addresses: TPID and TCI, once or twice.
    Tags {
        tags: [u8; 8],
        n: usize,
    },
    Ip(IpTunnel),
}

#[derive(Clone, Debug)]
struct IpTunnel {
    /// Outer Ethernet, IP, and tunnel headers with the per-packet fields zero.
    header: Vec<u8>,
    src: IpAddr,
    dst: IpAddr,
    /// Offset of the UDP or GRE or L2TPv3 header.
    l4_at: usize,
    /// IPv4: unfolded sum of the template header (length, id, checksum zero).
    v4_sum: Option<u64>,
    ident: u16,
    inner: Inner,
}

#[derive(Clone, Copy, Debug)]
enum Inner {
    Vxlan { src_port: Option<u16>, checksum: bool },
    Gre { checksum: bool },
    L2tpv3,
}

/// Pushes one tunnel's headers; made once from the arguments.
#[derive(Clone, Debug)]
pub struct Builder(Kind);

fn tag_bytes(tpid: u16, pcp: u8, vid: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&tpid.to_be_bytes());
    VlanTag::new_unchecked(&mut b[2..]).set_tci(pcp, false, vid);
    b
}

impl Builder {
    pub fn new(a: &EncapArgs) -> anyhow::Result<Builder> {
        a.tunnel.validate(Direction::Encap)?;
        let needs_macs = || -> anyhow::Result<(MacAddr, MacAddr)> {
            match (a.local_mac, a.remote_mac) {
                (Some(l), Some(r)) => Ok((l, r)),
                _ => anyhow::bail!("local_mac and remote_mac: needed for an IP tunnel's outer Ethernet header"),
            }
        };
        let kind = match a.tunnel {
            Tunnel::Vlan { vid, tpid, pcp } => {
                let mut tags = [0u8; 8];
                tags[..4].copy_from_slice(&tag_bytes(tpid, pcp, vid.unwrap()));
                Kind::Tags { tags, n: 4 }
            }
            Tunnel::QinQ { outer, inner, outer_tpid, pcp } => {
                let mut tags = [0u8; 8];
                tags[..4].copy_from_slice(&tag_bytes(outer_tpid, pcp, outer.unwrap()));
                tags[4..].copy_from_slice(&tag_bytes(ETHERTYPE_VLAN, pcp, inner.unwrap()));
                Kind::Tags { tags, n: 8 }
            }
            Tunnel::Vxlan { local, remote, vni, port } => {
                let (lm, rm) = needs_macs()?;
                let checksum = a.udp_checksum.unwrap_or(local.is_ipv6());
                let inner = Inner::Vxlan { src_port: a.src_port, checksum };
                let mut t = ip_template(lm, rm, local, remote.unwrap(), ip::UDP, a.ttl, 16, inner);
                let l4 = t.l4_at;
                let mut udp = UdpPacket::new_unchecked(&mut t.header[l4..]);
                udp.set_dst_port(port);
                VxlanHeader::new_unchecked(&mut t.header[l4 + 8..]).set(vni);
                Kind::Ip(t)
            }
            Tunnel::Gre { local, remote, key, checksum } => {
                let (lm, rm) = needs_macs()?;
                let len = GreHeader::<&[u8]>::header_len_for(checksum, key.is_some(), false);
                let mut t = ip_template(lm, rm, local, remote.unwrap(), ip::GRE, a.ttl, len, Inner::Gre { checksum });
                let l4 = t.l4_at;
                let mut g = GreHeader::new_unchecked(&mut t.header[l4..]);
                g.set_flags_and_protocol(checksum, key.is_some(), false, wire::GRE_PROTOCOL_TEB);
                if let Some(k) = key {
                    g.set_key(k);
                }
                Kind::Ip(t)
            }
            Tunnel::L2tpv3 { local, remote, session, local_cookie, .. } => {
                let (lm, rm) = needs_macs()?;
                let mut t =
                    ip_template(lm, rm, IpAddr::V6(local), IpAddr::V6(remote), ip::L2TP, a.ttl, 12, Inner::L2tpv3);
                let l4 = t.l4_at;
                let mut h = L2tpv3Header::new_unchecked(&mut t.header[l4..]);
                h.set_session_id(session);
                h.set_cookie(local_cookie);
                Kind::Ip(t)
            }
        };
        if let Kind::Ip(t) = &kind
            && t.header.len() > snabb_core::packet::HEADROOM
        {
            anyhow::bail!("outer headers of {} bytes exceed the headroom", t.header.len());
        }
        Ok(Builder(kind))
    }

    /// Bytes the encapsulation adds.
    pub fn overhead(&self) -> usize {
        match &self.0 {
            Kind::Tags { n, .. } => *n,
            Kind::Ip(t) => t.header.len(),
        }
    }

    /// Push the headers onto `p`.
    #[inline]
    pub fn encapsulate(&mut self, p: &mut Packet) -> Result<(), Refuse> {
        let len = p.len();
        if len < EthernetFrame::<&[u8]>::HEADER_LEN {
            return Err(Refuse::Truncated);
        }
        if len + self.overhead() > PAYLOAD_SIZE {
            return Err(Refuse::TooLong);
        }
        match &mut self.0 {
            Kind::Tags { tags, n } => {
                let n = *n;
                p.shift_right(n);
                let d = p.data_mut();
                let macs: [u8; 12] = d[n..n + 12].try_into().unwrap();
                d[..12].copy_from_slice(&macs);
                d[12..12 + n].copy_from_slice(&tags[..n]);
            }
            Kind::Ip(t) => {
                let src_port = match t.inner {
                    Inner::Vxlan { src_port: None, .. } => flow_port(p.data()),
                    Inner::Vxlan { src_port: Some(s), .. } => s,
                    _ => 0,
                };
                p.prepend(&t.header);
                let d = p.data_mut();
                let total = d.len();
                let ip_len = total - EthernetFrame::<&[u8]>::HEADER_LEN;
                let ipb = &mut d[EthernetFrame::<&[u8]>::HEADER_LEN..];
                if let Some(sum) = t.v4_sum {
                    t.ident = t.ident.wrapping_add(1);
                    let mut ip4 = Ipv4Packet::new_unchecked(ipb);
                    ip4.set_total_len(ip_len as u16);
                    ip4.set_ident(t.ident);
                    let mut c = Checksum::new();
                    c.add_sum(sum);
                    c.add_u16(ip_len as u16);
                    c.add_u16(t.ident);
                    ip4.set_checksum(c.finish());
                } else {
                    Ipv6Packet::new_unchecked(ipb).set_payload_len((ip_len - 40) as u16);
                }
                let l4 = &mut d[t.l4_at..];
                match t.inner {
                    Inner::Vxlan { checksum, .. } => {
                        let mut udp = UdpPacket::new_unchecked(l4);
                        udp.set_src_port(src_port);
                        udp.set_len((total - t.l4_at) as u16);
                        if checksum {
                            udp.fill_checksum(t.src, t.dst);
                        }
                    }
                    Inner::Gre { checksum: true } => GreHeader::new_unchecked(l4).fill_checksum(),
                    Inner::Gre { checksum: false } | Inner::L2tpv3 => {}
                }
            }
        }
        Ok(())
    }
}

/// The template of an IP tunnel's outer headers, with `l4_len` bytes
/// (zeroed) for the tunnel's own header after the IP header.
#[allow(clippy::too_many_arguments)]
fn ip_template(
    local_mac: MacAddr,
    remote_mac: MacAddr,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    ttl: u8,
    l4_len: usize,
    inner: Inner,
) -> IpTunnel {
    let ip_len = if src.is_ipv4() { 20 } else { 40 };
    let l4_at = 14 + ip_len;
    let mut header = vec![0u8; l4_at + l4_len];
    let mut eth = EthernetFrame::new_unchecked(&mut header[..]);
    eth.set_dst(remote_mac);
    eth.set_src(local_mac);
    eth.set_ethertype(if src.is_ipv4() { ETHERTYPE_IPV4 } else { ETHERTYPE_IPV6 });
    let mut v4_sum = None;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = Ipv4Packet::new_unchecked(&mut header[14..l4_at]);
            p.set_version_and_header_len(20);
            p.set_flags_and_offset(false, false, 0);
            p.set_ttl(ttl);
            p.set_protocol(protocol);
            p.set_src_addr(s);
            p.set_dst_addr(d);
            v4_sum = Some(wire::sum(&header[14..l4_at]));
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = Ipv6Packet::new_unchecked(&mut header[14..l4_at]);
            p.set_version_tc_flow(0, 0);
            p.set_next_header(protocol);
            p.set_hop_limit(ttl);
            p.set_src_addr(s);
            p.set_dst_addr(d);
        }
        _ => unreachable!("validated: one address family"),
    }
    IpTunnel { header, src, dst, l4_at, v4_sum, ident: 0, inner }
}

/// A UDP source port in 49152-65535 from the inner frame's flow: its IP
/// addresses, protocol and ports when it carries IPv4 or IPv6, else its
/// MAC addresses and ethertype.
fn flow_port(f: &[u8]) -> u16 {
    fn mix(h: u64, bytes: &[u8]) -> u64 {
        bytes.chunks(8).fold(h, |h, c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            (h ^ u64::from_le_bytes(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
        })
    }
    let ethertype = wire::get16(f, 12);
    let ports = |proto: u8, at: usize| {
        if (proto == 6 || proto == 17) && f.len() >= at + 4 { &f[at..at + 4] } else { &[][..] }
    };
    let h = match ethertype {
        ETHERTYPE_IPV4 if f.len() >= 34 && f[14] == 0x45 => mix(mix(f[23] as u64, &f[26..34]), ports(f[23], 34)),
        ETHERTYPE_IPV6 if f.len() >= 54 => mix(mix(f[20] as u64, &f[22..54]), ports(f[20], 54)),
        _ => mix(ethertype as u64, &f[..12]),
    };
    0xc000 | ((h >> 48) as u16 & 0x3fff)
}

pub struct Encap {
    tunnel: Tunnel,
    builder: Builder,
    output: Option<usize>,
    encapsulated: u64,
    truncated: u64,
    too_long: u64,
    dropped: u64,
}

impl AppClass for Encap {
    type Args = EncapArgs;
    const PORTS: PortSpec = PortSpec::new(&["*"], &["output"]);

    fn validate(args: &EncapArgs) -> anyhow::Result<()> {
        Builder::new(args).map(drop)
    }

    fn new(args: EncapArgs, _ctx: &AppContext) -> anyhow::Result<Encap> {
        Ok(Encap {
            builder: Builder::new(&args)?,
            tunnel: args.tunnel,
            output: None,
            encapsulated: 0,
            truncated: 0,
            too_long: 0,
            dropped: 0,
        })
    }

    fn reconfigure(&mut self, args: EncapArgs, _ctx: &AppContext) -> anyhow::Result<bool> {
        self.builder = Builder::new(&args)?;
        self.tunnel = args.tunnel;
        Ok(true)
    }
}

impl App for Encap {
    fn link(&mut self, io: &Io) {
        self.output = io.output.index_of("output").or(if io.output.len() == 1 { Some(0) } else { None });
    }

    fn push(&mut self, io: &Io) {
        let out = self.output.map(|i| io.output.at(i));
        for input in io.input.iter() {
            let Some(out) = out else {
                self.dropped += input.discard().0;
                continue;
            };
            let mut tx = out.transmitter();
            for mut p in input.drain() {
                // An outer UDP or GRE checksum covers the inner frame, which
                // must be final first; past a tunnel no one would finish it.
                p.finish_partial_csum();
                match self.builder.encapsulate(&mut p) {
                    Ok(()) => {
                        self.encapsulated += 1;
                        tx.send(p);
                    }
                    Err(Refuse::Truncated) => self.truncated += 1,
                    Err(Refuse::TooLong) => self.too_long += 1,
                }
            }
        }
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("encapsulated", self.encapsulated);
        emit("truncated", self.truncated);
        emit("too_long", self.too_long);
        emit("dropped", self.dropped);
    }

    fn report(&self, out: &mut String) {
        out.push_str(&format!(
            "{}: {} encapsulated, dropped {} truncated, {} too long, {} without output\n",
            self.tunnel.kind(),
            self.encapsulated,
            self.truncated,
            self.too_long,
            self.dropped
        ));
    }
}

impl Encap {
    pub fn encapsulated(&self) -> u64 {
        self.encapsulated
    }
    /// Packets dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.truncated + self.too_long + self.dropped
    }
}
