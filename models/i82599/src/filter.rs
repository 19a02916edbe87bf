//! RECEIVE FILTERING AND QUEUE SELECTION
//!
//! Which receive queues a frame goes to, from the registers as programmed
//! (datasheet 7.1.1 and 7.1.2, and 7.10.3 for virtualisation):
//!
//! Without virtualisation (PFVTCTL.VT_Ena clear) a frame passes the L2
//! filter when its destination matches a valid RAL/RAH entry, or it is
//! unicast and FCTRL.UPE is set, multicast and FCTRL.MPE is set (or its
//! MTA bit is), or broadcast and FCTRL.BAM is set. A tagged frame must also
//! pass the VLAN filter (VFTA) when VLNCTRL.VFE is set. Its queue is 0, or
//! with RSS (MRQC.MRQE = 0001b) the RETA entry its Toeplitz hash picks.
//!
//! With virtualisation the frame is switched to a set of pools:
//!   1. by MAC: unicast to the pools of the RAL/RAH entry it matches
//!      (MPSAR); broadcast to every pool with PFVML2FLT.BAM; multicast to
//!      the pools of a matching entry, of PFVML2FLT.MPE, and of
//!      PFVML2FLT.ROMPE when its MTA bit is set;
//!   2. then by VLAN: a tagged frame keeps only the pools of the PFVLVF
//!      entry for its VLAN (PFVLVFB), an untagged one only the pools with
//!      PFVML2FLT.AUPE (the clarification "pools are first selected by MAC
//!      address, then by VLAN");
//!   3. no pool left: the default pool (PFVTCTL.DEF_PL) unless
//!      PFVTCTL.DisDefPool; without replication (PFVTCTL.Rpl_En) only the
//!      lowest pool is kept; pools whose PFVFRE bit is clear receive nothing.
//!
//! A pool's queue is its first one, or with RSS in the pool (MRQE 1010b or
//! 1011b and PSRTYPE.RQPL) one of its queues by the RETA entry.

use crate::regs::{Reg, bits::*};

/// Register reads for the filter (the model's register file).
pub(crate) trait RegView {
    fn reg(&self, r: Reg, i: u32) -> u32;

    /// Indexes of the valid RAL/RAH entries that match `dst` (the model
    /// keeps these in a table rebuilt when RAL or RAH change).
    fn exact_matches(&self, dst: &[u8; 6], f: &mut dyn FnMut(u32)) {
        let lo = u32::from_le_bytes(dst[0..4].try_into().unwrap());
        let hi = u16::from_le_bytes(dst[4..6].try_into().unwrap()) as u32;
        for i in 0..128 {
            let rah = self.reg(Reg::RAH, i);
            if rah & RAH_AV != 0 && rah & 0xffff == hi && self.reg(Reg::RAL, i) == lo {
                f(i);
            }
        }
    }
}

/// What the filter needs of a frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub dst: [u8; 6],
    /// The 802.1Q tag control field, when tagged.
    pub tci: Option<u16>,
}

impl Header {
    pub fn parse(frame: &[u8], vet: u16) -> Option<Header> {
        if frame.len() < 14 {
            return None;
        }
        let dst = frame[0..6].try_into().unwrap();
        let et = u16::from_be_bytes([frame[12], frame[13]]);
        let tci = (et == vet && frame.len() >= 18).then(|| u16::from_be_bytes([frame[14], frame[15]]));
        Some(Header { dst, tci })
    }
    pub fn broadcast(&self) -> bool {
        self.dst == [0xff; 6]
    }
    pub fn multicast(&self) -> bool {
        self.dst[0] & 1 == 1 && !self.broadcast()
    }
    pub fn unicast(&self) -> bool {
        self.dst[0] & 1 == 0
    }
    pub fn vid(&self) -> Option<u16> {
        self.tci.map(|t| t & 0xfff)
    }
}

/// How the registers lay pools out over queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub vt: bool,
    pub pools: u32,
    pub queues_per_pool: u32,
    /// RSS inside a pool (or over the whole port without VT).
    pub rss: bool,
}

pub(crate) fn layout(r: &impl RegView) -> Layout {
    let vt = r.reg(Reg::PFVTCTL, 0) & PFVTCTL_VT_ENA != 0;
    let mrqe = r.reg(Reg::MRQC, 0) & MRQC_MRQE_MASK;
    match (vt, mrqe) {
        (true, MRQE_VMDQ_RSS_32) => Layout { vt, pools: 32, queues_per_pool: 4, rss: true },
        (true, MRQE_VMDQ_RSS_64) => Layout { vt, pools: 64, queues_per_pool: 2, rss: true },
        (true, _) => Layout { vt, pools: 64, queues_per_pool: 2, rss: false },
        (false, MRQE_RSS) => Layout { vt, pools: 1, queues_per_pool: 16, rss: true },
        (false, _) => Layout { vt, pools: 1, queues_per_pool: 1, rss: false },
    }
}

/// The pool a queue belongs to.
pub(crate) fn pool_of(l: &Layout, queue: u32) -> u32 {
    if l.vt { queue / l.queues_per_pool } else { 0 }
}

/// The multicast table bit for `dst` (MCSTCTRL.MO = 00b: bits 47:36).
fn mta_hit(r: &impl RegView, dst: &[u8; 6]) -> bool {
    let v = ((dst[4] as u32) >> 4 | (dst[5] as u32) << 4) & 0xfff;
    r.reg(Reg::MTA, v >> 5) & (1 << (v & 31)) != 0
}

fn vfta_hit(r: &impl RegView, vid: u16) -> bool {
    r.reg(Reg::VFTA, vid as u32 >> 5) & (1 << (vid & 31)) != 0
}

fn pool_bits(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

/// Pools whose PFVML2FLT has all of `mask`.
fn pools_with(r: &impl RegView, l: &Layout, mask: u32) -> u64 {
    (0..l.pools).filter(|&p| r.reg(Reg::PFVML2FLT, p) & mask == mask).fold(0, |a, p| a | 1 << p)
}

/// Pool selection in VT mode (steps 1 and 2 of the module comment).
/// Returns the pools and whether the MAC matched an exact filter.
pub(crate) fn select_pools(r: &impl RegView, l: &Layout, h: &Header) -> Option<(u64, bool)> {
    let mut pools = 0u64;
    let mut exact = false;
    r.exact_matches(&h.dst, &mut |i| {
        exact = true;
        pools |= pool_bits(r.reg(Reg::MPSAR, 2 * i), r.reg(Reg::MPSAR, 2 * i + 1));
    });
    if h.broadcast() {
        pools |= pools_with(r, l, PFVML2FLT_BAM);
    } else if h.multicast() {
        pools |= pools_with(r, l, PFVML2FLT_MPE);
        if mta_hit(r, &h.dst) {
            pools |= pools_with(r, l, PFVML2FLT_ROMPE);
        }
    }
    let vfe = r.reg(Reg::VLNCTRL, 0) & VLNCTRL_VFE != 0;
    match h.vid() {
        Some(vid) => {
            if vfe && !vfta_hit(r, vid) {
                return None;
            }
            if vfe {
                let entry = (0..64).find(|&j| {
                    let v = r.reg(Reg::PFVLVF, j);
                    v & PFVLVF_VI_EN != 0 && (v & PFVLVF_VLAN_ID_MASK) as u16 == vid
                });
                pools &= match entry {
                    Some(j) => pool_bits(r.reg(Reg::PFVLVFB, 2 * j), r.reg(Reg::PFVLVFB, 2 * j + 1)),
                    None => 0,
                };
            }
        }
        None => pools &= pools_with(r, l, PFVML2FLT_AUPE),
    }
    Some((pools, exact))
}

/// Step 3: default pool, replication, pool receive enables.
fn finish_pools(r: &impl RegView, l: &Layout, mut pools: u64) -> u64 {
    let vtctl = r.reg(Reg::PFVTCTL, 0);
    if pools == 0 {
        if vtctl & PFVTCTL_DIS_DEF_POOL != 0 {
            return 0;
        }
        pools = 1 << ((vtctl & PFVTCTL_DEF_PL_MASK) >> PFVTCTL_DEF_PL_SHIFT);
    }
    if vtctl & PFVTCTL_RPL_EN == 0 {
        pools &= pools.wrapping_neg();
    }
    pools &= pool_bits(r.reg(Reg::PFVFRE, 0), r.reg(Reg::PFVFRE, 1));
    if l.pools < 64 {
        pools &= (1u64 << l.pools) - 1;
    }
    pools
}

/// The queue of `pool` for a frame with RSS hash `hash`.
pub(crate) fn pool_queue(r: &impl RegView, l: &Layout, pool: u32, hash: u32) -> u32 {
    let mut within = 0;
    if l.rss {
        let rqpl = (r.reg(Reg::PSRTYPE, pool) >> PSRTYPE_RQPL_SHIFT) & 7;
        let nbits = rqpl.min(if l.queues_per_pool == 4 { 2 } else { 1 });
        within = reta(r, hash) & ((1 << nbits) - 1);
    }
    pool * l.queues_per_pool + within
}

fn reta(r: &impl RegView, hash: u32) -> u32 {
    let i = hash & 127;
    (r.reg(Reg::RETA, i / 4) >> (8 * (i % 4))) & 0xf
}

/// The receive queues for a frame from the wire. Empty when the filters
/// drop it; `None` when it is not even an Ethernet frame.
pub(crate) fn rx_queues(r: &impl RegView, frame: &[u8], out: &mut Vec<u16>) -> Option<Header> {
    out.clear();
    let vet = (r.reg(Reg::VLNCTRL, 0) & VLNCTRL_VET_MASK) as u16;
    let h = Header::parse(frame, vet)?;
    let l = layout(r);
    let hash = if l.rss { rss_hash(r, frame, h.tci.is_some()) } else { 0 };
    if l.vt {
        if let Some((pools, _)) = select_pools(r, &l, &h) {
            let pools = finish_pools(r, &l, pools);
            for p in 0..64 {
                if pools & 1 << p != 0 {
                    out.push(pool_queue(r, &l, p, hash) as u16);
                }
            }
        }
        return Some(h);
    }
    let fctrl = r.reg(Reg::FCTRL, 0);
    let mut exact = false;
    r.exact_matches(&h.dst, &mut |_| exact = true);
    let pass = exact
        || if h.broadcast() {
            fctrl & FCTRL_BAM != 0
        } else if h.multicast() {
            fctrl & FCTRL_MPE != 0 || mta_hit(r, &h.dst)
        } else {
            fctrl & FCTRL_UPE != 0
        };
    let vlan_ok = match h.vid() {
        Some(vid) => r.reg(Reg::VLNCTRL, 0) & VLNCTRL_VFE == 0 || vfta_hit(r, vid),
        None => true,
    };
    if pass && vlan_ok {
        out.push(if l.rss { reta(r, hash) as u16 } else { 0 });
    }
    Some(h)
}

/// Pools a frame sent by a local pool reaches through the internal switch
/// (7.10.3.4), and whether it must also go to the wire.
pub(crate) fn loopback_pools(r: &impl RegView, l: &Layout, frame: &[u8], from: u32) -> (u64, bool) {
    let vet = (r.reg(Reg::VLNCTRL, 0) & VLNCTRL_VET_MASK) as u16;
    let Some(h) = Header::parse(frame, vet) else {
        return (0, true);
    };
    let Some((pools, exact)) = select_pools(r, l, &h) else {
        return (0, !h.unicast());
    };
    let mut pools = pools & pool_bits(r.reg(Reg::PFVFRE, 0), r.reg(Reg::PFVFRE, 1));
    if r.reg(Reg::PFVMTXSW, from / 32) & (1 << (from % 32)) == 0 {
        pools &= !(1u64 << from);
    }
    // Unicast to a local MAC stays inside; everything else also goes out.
    let wire = !(h.unicast() && exact && pools != 0);
    (pools, wire)
}

/// RSS: the Toeplitz hash of the fields MRQC selects (7.1.2.8).
pub(crate) fn rss_hash(r: &impl RegView, frame: &[u8], tagged: bool) -> u32 {
    let mrqc = r.reg(Reg::MRQC, 0);
    let mut key = [0u8; 40];
    for i in 0..10 {
        key[4 * i..4 * i + 4].copy_from_slice(&r.reg(Reg::RSSRK, i as u32).to_le_bytes());
    }
    let l3 = if tagged { 18 } else { 14 };
    if frame.len() < l3 {
        return 0;
    }
    let et = u16::from_be_bytes([frame[l3 - 2], frame[l3 - 1]]);
    let ip = &frame[l3..];
    let mut input = [0u8; 36];
    let n = match et {
        0x0800 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let ihl = (ip[0] & 0xf) as usize * 4;
            let proto = ip[9];
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            input[0..8].copy_from_slice(&ip[12..20]);
            let l4 = (proto == 6 && mrqc & MRQC_RSS_TCP_IPV4 != 0) || (proto == 17 && mrqc & MRQC_RSS_UDP_IPV4 != 0);
            if l4 && !frag && ip.len() >= ihl + 4 {
                input[8..12].copy_from_slice(&ip[ihl..ihl + 4]);
                12
            } else if mrqc & MRQC_RSS_IPV4 != 0 {
                8
            } else {
                0
            }
        }
        0x86dd if ip.len() >= 40 => {
            let proto = ip[6];
            input[0..32].copy_from_slice(&ip[8..40]);
            let l4 = (proto == 6 && mrqc & MRQC_RSS_TCP_IPV6 != 0) || (proto == 17 && mrqc & MRQC_RSS_UDP_IPV6 != 0);
            if l4 && ip.len() >= 44 {
                input[32..36].copy_from_slice(&ip[40..44]);
                36
            } else if mrqc & MRQC_RSS_IPV6 != 0 {
                32
            } else {
                0
            }
        }
        _ => 0,
    };
    toeplitz(&key, &input[..n])
}

pub(crate) fn toeplitz(key: &[u8; 40], input: &[u8]) -> u32 {
    let mut hash = 0u32;
    let mut window = u32::from_be_bytes(key[0..4].try_into().unwrap());
    for (i, &b) in input.iter().enumerate() {
        for bit in (0..8).rev() {
            if b & (1 << bit) != 0 {
                hash ^= window;
            }
            let next = key.get(i + 4).copied().unwrap_or(0);
            window = window << 1 | ((next >> bit) & 1) as u32;
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Regs(HashMap<(Reg, u32), u32>);
    impl RegView for Regs {
        fn reg(&self, r: Reg, i: u32) -> u32 {
            self.0.get(&(r, i)).copied().unwrap_or(if r == Reg::VLNCTRL { 0x8100 } else { 0 })
        }
    }
    impl Regs {
        fn set(&mut self, r: Reg, i: u32, v: u32) {
            self.0.insert((r, i), v);
        }
        fn mac(&mut self, i: u32, mac: [u8; 6], pool: u32) {
            self.set(Reg::RAL, i, u32::from_le_bytes(mac[0..4].try_into().unwrap()));
            self.set(Reg::RAH, i, u16::from_le_bytes(mac[4..6].try_into().unwrap()) as u32 | RAH_AV);
            let k = 2 * i + pool / 32;
            let old = self.reg(Reg::MPSAR, k);
            self.set(Reg::MPSAR, k, old | 1 << (pool % 32));
        }
    }

    fn frame(dst: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
        if let Some(v) = vlan {
            f.extend_from_slice(&[0x81, 0, (v >> 8) as u8, v as u8]);
        }
        f.extend_from_slice(&[0x88, 0xb5]);
        f.resize(60, 0);
        f
    }

    fn vmdq() -> Regs {
        let mut r = Regs(HashMap::new());
        r.set(Reg::PFVTCTL, 0, PFVTCTL_VT_ENA | PFVTCTL_RPL_EN | PFVTCTL_DIS_DEF_POOL);
        r.set(Reg::MRQC, 0, MRQE_VMDQ_RSS_64);
        r.set(Reg::VLNCTRL, 0, 0x8100 | VLNCTRL_VFE);
        r.set(Reg::PFVFRE, 0, 0xff);
        for p in 0..8 {
            r.set(Reg::PFVML2FLT, p, PFVML2FLT_AUPE | if p % 2 == 0 { PFVML2FLT_BAM } else { 0 });
            r.mac(p + 1, [2, 0, 0, 0, 1, p as u8], p);
        }
        // Pool 7 takes VLAN 10 only.
        r.set(Reg::PFVML2FLT, 7, PFVML2FLT_BAM);
        r.set(Reg::VFTA, 0, 1 << 10);
        r.set(Reg::PFVLVF, 0, PFVLVF_VI_EN | 10);
        r.set(Reg::PFVLVFB, 0, 1 << 7);
        r
    }

    fn queues(r: &Regs, f: &[u8]) -> Vec<u16> {
        let mut out = vec![];
        rx_queues(r, f, &mut out);
        out
    }

    #[test]
    fn vmdq_unicast_broadcast_vlan() {
        let r = vmdq();
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 3], None)), vec![6]);
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 9], None)), Vec::<u16>::new(), "unknown dropped");
        assert_eq!(queues(&r, &frame([0xff; 6], None)), vec![0, 4, 8, 12], "broadcast to BAM pools, untagged");
        assert_eq!(queues(&r, &frame([0xff; 6], Some(10))), vec![14], "tagged broadcast to the VLAN's pools");
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 7], Some(10))), vec![14]);
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 7], None)), Vec::<u16>::new(), "pool 7 refuses untagged");
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 3], Some(10))), Vec::<u16>::new(), "VLAN isolation");
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 3], Some(11))), Vec::<u16>::new(), "VFTA");
    }

    #[test]
    fn vmdq_default_pool_and_replication() {
        let mut r = vmdq();
        r.set(Reg::PFVTCTL, 0, PFVTCTL_VT_ENA | 5 << PFVTCTL_DEF_PL_SHIFT);
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 9], None)), vec![10], "default pool");
        assert_eq!(queues(&r, &frame([0xff; 6], None)), vec![0], "no replication: lowest pool");
        r.set(Reg::PFVFRE, 0, 0xfe);
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 0], None)), Vec::<u16>::new(), "pool receive disabled");
    }

    /// The two cases of 7.10.3 with a default pool (pools by MAC, then
    /// narrowed by VLAN; none left: PFVTCTL.DEF_PL), as VmdqSplitter does.
    #[test]
    fn vmdq_default_pool_after_mac_and_vlan() {
        let mut r = vmdq();
        r.set(Reg::PFVTCTL, 0, PFVTCTL_VT_ENA | PFVTCTL_RPL_EN | 5 << PFVTCTL_DEF_PL_SHIFT);
        // 1. pool 3's address on VLAN 10 (pool 7's, not pool 3's): the
        //    default pool (queue 10).
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 3], Some(10))), vec![10], "listed MAC, another pool's VLAN");
        // 2. an address no pool lists, on a VLAN the VFTA passes: the default pool.
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 9], Some(10))), vec![10], "unknown MAC, tagged");
        // A VLAN the VFTA does not pass: dropped before any pool.
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 1, 9], Some(11))), Vec::<u16>::new(), "VFTA miss");
        // DisDefPool: both dropped.
        r.set(Reg::PFVTCTL, 0, PFVTCTL_VT_ENA | PFVTCTL_RPL_EN | PFVTCTL_DIS_DEF_POOL);
        assert!(queues(&r, &frame([2, 0, 0, 0, 1, 3], Some(10))).is_empty());
        assert!(queues(&r, &frame([2, 0, 0, 0, 1, 9], Some(10))).is_empty());
    }

    #[test]
    fn loopback_switching() {
        let mut r = vmdq();
        let l = layout(&r);
        assert_eq!(loopback_pools(&r, &l, &frame([2, 0, 0, 0, 1, 3], None), 1), (1 << 3, false));
        assert_eq!(loopback_pools(&r, &l, &frame([2, 0, 0, 0, 1, 9], None), 1), (0, true));
        let (p, wire) = loopback_pools(&r, &l, &frame([0xff; 6], None), 2);
        assert_eq!((p, wire), (0b0101_0001, true), "broadcast: other BAM pools and the wire");
        r.set(Reg::PFVMTXSW, 0, 1 << 2);
        assert_eq!(loopback_pools(&r, &l, &frame([0xff; 6], None), 2).0, 0b0101_0101, "LLE: back to itself");
    }

    #[test]
    fn plain_filters() {
        let mut r = Regs(HashMap::new());
        r.mac(0, [2, 0, 0, 0, 0, 1], 0);
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 0, 1], None)), vec![0]);
        assert!(queues(&r, &frame([2, 0, 0, 0, 0, 2], None)).is_empty());
        assert!(queues(&r, &frame([0xff; 6], None)).is_empty());
        r.set(Reg::FCTRL, 0, FCTRL_UPE | FCTRL_BAM);
        assert_eq!(queues(&r, &frame([2, 0, 0, 0, 0, 2], None)), vec![0]);
        assert_eq!(queues(&r, &frame([0xff; 6], None)), vec![0]);
        assert!(queues(&r, &frame([1, 0, 0x5e, 0, 0, 1], None)).is_empty());
    }

    #[test]
    fn toeplitz_matches_the_reference_vector() {
        // The RSS verification suite's first IPv4 example: 66.9.149.187 ->
        // 161.142.100.80, ports 2794 -> 1766, with the usual sample key.
        let key: [u8; 40] = [
            0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca,
            0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
            0xbe, 0xac, 0x01, 0xfa,
        ];
        let ip = [66, 9, 149, 187, 161, 142, 100, 80];
        assert_eq!(toeplitz(&key, &ip), 0x323e8fc2);
        let mut with_ports = ip.to_vec();
        with_ports.extend_from_slice(&2794u16.to_be_bytes());
        with_ports.extend_from_slice(&1766u16.to_be_bytes());
        assert_eq!(toeplitz(&key, &with_ports), 0x51ccc178);
    }
}
