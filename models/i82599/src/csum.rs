//! RECEIVE CHECKSUM OFFLOAD
//!
//! What the 82599 reports about a received frame's checksums in the
//! advanced receive descriptor's write-back (datasheet 7.1.6.2, 7.1.11):
//!
//!   rx_checksum(frame, vet) -> RxCsum { status, errors, pkt_type }
//!
//! The chip parses every frame (no register turns this on: RXCSUM only
//! chooses between the fragment checksum and the RSS hash for the
//! write-back's second dword, 8.2.3.7.5) and reports:
//!
//!   IPCS (status bit 6)   the IPv4 header checksum was checked; IPE (error
//!                         bit 31) when it is wrong. Never for IPv6, which
//!                         has no header checksum.
//!   L4CS (status bit 5)   the TCP or UDP checksum was checked, over IPv4 or
//!                         IPv6; L4E (error bit 30, TCPE in Linux's names)
//!                         when it is wrong. UDPCS (bit 4) says it was UDP.
//!
//! Not checked (L4CS clear): fragments (IPv4 MF or a fragment offset, an
//! IPv6 fragment header), IPv6 routing headers with segments and extension
//! headers other than hop-by-hop, routing (length 0) and destination
//! options, protocols other than TCP and UDP, and frames whose IP lengths
//! do not fit them. A second VLAN tag ends the parse (no double VLAN).
//!
//! A UDP datagram over IPv4 whose checksum field is 0 carries no checksum.
//! The 82599 then reports L4CS with L4E set: the erratum that Linux
//! (`ixgbe_rx_checksum`, `__IXGBE_RX_CSUM_UDP_ZERO_ERR`) and DPDK
//! (`rx_udp_csum_zero_err`) work around by treating L4E on a UDP frame as
//! "not checked" rather than "bad". The model reproduces it so that a
//! driver's workaround is tested. Over IPv6 a zero UDP checksum is invalid
//! (RFC 8200 8.1), and is reported as the mismatch it is.
//!
//! The packet type (write-back dword 0, bits 16:4) says IPv4 or IPv6 and
//! TCP or UDP, as the chip's does.

use crate::regs::bits::*;

/// The checksum and packet type part of a receive write-back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxCsum {
    /// Status bits (IPCS, L4CS, UDPCS) for the EOP descriptor.
    pub status: u32,
    /// Error bits (IPE, L4E).
    pub errors: u32,
    /// The packet type field, in place in dword 0 (bits 16:4).
    pub pkt_type: u32,
}

/// Ones'-complement sum of big-endian 16-bit words, not folded.
fn sum(bytes: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        s += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = words.remainder() {
        s += (*last as u64) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Whether a segment checksums to all ones with its pseudo-header sum.
fn good(pseudo: u64, segment: &[u8]) -> bool {
    fold(pseudo + sum(segment)) == 0xffff
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// The checksum verdicts for `frame` as it came off the wire (tag still
/// in), with `vet` the VLAN ethertype (VLNCTRL.VET).
pub fn rx_checksum(frame: &[u8], vet: u16) -> RxCsum {
    let mut r = RxCsum::default();
    if frame.len() < 14 {
        return r;
    }
    let mut l3 = 14;
    let mut et = u16::from_be_bytes([frame[12], frame[13]]);
    if et == vet {
        if frame.len() < 18 {
            return r;
        }
        et = u16::from_be_bytes([frame[16], frame[17]]);
        l3 = 18;
    }
    let ip = &frame[l3..];
    match et {
        0x0800 => ipv4(ip, &mut r),
        0x86dd => ipv6(ip, &mut r),
        _ => {}
    }
    r
}

fn ipv4(ip: &[u8], r: &mut RxCsum) {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return;
    }
    let ihl = (ip[0] & 0xf) as usize * 4;
    if ihl < 20 || ip.len() < ihl {
        return;
    }
    r.pkt_type |= RXD_PKTTYPE_IPV4;
    r.status |= RXD_STAT_IPCS;
    if fold(sum(&ip[..ihl])) != 0xffff {
        r.errors |= RXD_ERR_IPE;
    }
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total < ihl || total > ip.len() {
        return;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return; // MF or an offset: a fragment
    }
    let proto = ip[9];
    let seg = &ip[ihl..total];
    let pseudo = sum(&ip[12..20]) + proto as u64 + seg.len() as u64;
    l4(proto, seg, pseudo, true, r);
}

fn ipv6(ip: &[u8], r: &mut RxCsum) {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return;
    }
    r.pkt_type |= RXD_PKTTYPE_IPV6;
    let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if 40 + payload > ip.len() {
        return;
    }
    let mut next = ip[6];
    let mut at = 40;
    let end = 40 + payload;
    loop {
        match next {
            TCP | UDP => break,
            // Hop-by-hop, routing without segments left, destination options.
            0 | 43 | 60 => {
                if at + 8 > end {
                    return;
                }
                if next == 43 && ip[at + 3] != 0 {
                    return; // the pseudo-header would need the final destination
                }
                let len = (ip[at + 1] as usize + 1) * 8;
                next = ip[at];
                at += len;
                if at > end {
                    return;
                }
            }
            _ => return, // a fragment header, or a protocol not checked
        }
    }
    let seg = &ip[at..end];
    let pseudo = sum(&ip[8..40]) + next as u64 + seg.len() as u64;
    l4(next, seg, pseudo, false, r);
}

fn l4(proto: u8, seg: &[u8], pseudo: u64, v4: bool, r: &mut RxCsum) {
    match proto {
        TCP if seg.len() >= 20 => {
            r.pkt_type |= RXD_PKTTYPE_TCP;
            r.status |= RXD_STAT_L4CS;
            if !good(pseudo, seg) {
                r.errors |= RXD_ERR_L4E;
            }
        }
        UDP if seg.len() >= 8 => {
            r.pkt_type |= RXD_PKTTYPE_UDP;
            r.status |= RXD_STAT_L4CS | RXD_STAT_UDPCS;
            let csum = u16::from_be_bytes([seg[6], seg[7]]);
            let ulen = u16::from_be_bytes([seg[4], seg[5]]) as usize;
            if v4 && csum == 0 {
                // The erratum: no checksum, reported as a bad one.
                r.errors |= RXD_ERR_L4E;
            } else if ulen < 8 || ulen > seg.len() {
                r.errors |= RXD_ERR_L4E;
            } else {
                // The pseudo-header carries the UDP length.
                let pseudo = pseudo - seg.len() as u64 + ulen as u64;
                if !good(pseudo, &seg[..ulen]) {
                    r.errors |= RXD_ERR_L4E;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Write a correct checksum at `at` for `bytes` with a pseudo-header sum.
    fn put_csum(bytes: &mut [u8], at: usize, pseudo: u64) {
        bytes[at..at + 2].copy_from_slice(&[0, 0]);
        let c = !fold(pseudo + sum(bytes));
        bytes[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// An Ethernet frame (tagged when `vlan`) with an IPv4 header and a
    /// `proto` segment of `payload` bytes, all checksums correct.
    pub fn ipv4_frame(proto: u8, payload: usize, vlan: bool) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let l3 = f.len();
        let l4len = match proto {
            TCP => 20,
            UDP => 8,
            _ => 8,
        } + payload;
        let total = 20 + l4len;
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let l4 = f.len();
        f.resize(l4 + l4len, 0);
        for (i, b) in f[l4..].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        fill_l4(&mut f, l3, l4, proto, true);
        let c = !fold(sum(&f[l3..l3 + 20]));
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The same over IPv6, with optional extension headers (next-header
    /// values, each 8 bytes long) before the segment.
    pub fn ipv6_frame(proto: u8, payload: usize, ext: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        let l3 = f.len();
        let l4len = if proto == TCP { 20 } else { 8 } + payload;
        let plen = 8 * ext.len() + l4len;
        let first = *ext.first().unwrap_or(&proto);
        f.extend_from_slice(&[0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, first, 64]);
        for i in 0..32u8 {
            f.push(0xfe ^ i);
        }
        for (k, _) in ext.iter().enumerate() {
            let next = *ext.get(k + 1).unwrap_or(&proto);
            f.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
        }
        let l4 = f.len();
        f.resize(l4 + l4len, 0);
        for (i, b) in f[l4..].iter_mut().enumerate() {
            *b = (i * 5 + 1) as u8;
        }
        fill_l4(&mut f, l3, l4, proto, false);
        f
    }

    fn fill_l4(f: &mut [u8], l3: usize, l4: usize, proto: u8, v4: bool) {
        let len = f.len() - l4;
        let addrs = if v4 { sum(&f[l3 + 12..l3 + 20]) } else { sum(&f[l3 + 8..l3 + 40]) };
        let pseudo = addrs + proto as u64 + len as u64;
        match proto {
            TCP => {
                f[l4 + 12] = 5 << 4;
                put_csum(&mut f[l4..], 16, pseudo);
            }
            UDP => {
                f[l4 + 4..l4 + 6].copy_from_slice(&(len as u16).to_be_bytes());
                put_csum(&mut f[l4..], 6, pseudo);
            }
            _ => {}
        }
    }

    const V4: u32 = RXD_PKTTYPE_IPV4;
    const V6: u32 = RXD_PKTTYPE_IPV6;
    const T: u32 = RXD_PKTTYPE_TCP;
    const U: u32 = RXD_PKTTYPE_UDP;

    fn check(f: &[u8], status: u32, errors: u32, pkt_type: u32) {
        assert_eq!(rx_checksum(f, 0x8100), RxCsum { status, errors, pkt_type }, "{:02x?}", &f[..f.len().min(80)]);
    }

    #[test]
    fn good_checksums_are_checked_and_pass() {
        let ipl4 = RXD_STAT_IPCS | RXD_STAT_L4CS;
        check(&ipv4_frame(TCP, 100, false), ipl4, 0, V4 | T);
        check(&ipv4_frame(TCP, 101, true), ipl4, 0, V4 | T);
        check(&ipv4_frame(UDP, 33, false), ipl4 | RXD_STAT_UDPCS, 0, V4 | U);
        check(&ipv4_frame(UDP, 1472, true), ipl4 | RXD_STAT_UDPCS, 0, V4 | U);
        check(&ipv6_frame(TCP, 1000, &[]), RXD_STAT_L4CS, 0, V6 | T);
        check(&ipv6_frame(UDP, 7, &[]), RXD_STAT_L4CS | RXD_STAT_UDPCS, 0, V6 | U);
        check(&ipv6_frame(UDP, 7, &[0, 60]), RXD_STAT_L4CS | RXD_STAT_UDPCS, 0, V6 | U);
        // Ethernet padding after the datagram is not part of it.
        let mut f = ipv4_frame(UDP, 2, false);
        f.resize(60, 0xaa);
        check(&f, ipl4 | RXD_STAT_UDPCS, 0, V4 | U);
    }

    #[test]
    fn bad_checksums_are_reported() {
        let ipl4 = RXD_STAT_IPCS | RXD_STAT_L4CS;
        let mut f = ipv4_frame(TCP, 100, false);
        f[14 + 20 + 30] ^= 1; // payload
        check(&f, ipl4, RXD_ERR_L4E, V4 | T);
        let mut f = ipv4_frame(TCP, 100, false);
        f[14 + 8] ^= 1; // TTL: the header checksum only
        check(&f, ipl4, RXD_ERR_IPE, V4 | T);
        let mut f = ipv4_frame(UDP, 100, true);
        f[18 + 28 + 50] ^= 0x80;
        check(&f, ipl4 | RXD_STAT_UDPCS, RXD_ERR_L4E, V4 | U);
        let mut f = ipv6_frame(TCP, 64, &[]);
        f[14 + 9] ^= 1; // source address: the pseudo-header
        check(&f, RXD_STAT_L4CS, RXD_ERR_L4E, V6 | T);
        let mut f = ipv6_frame(UDP, 64, &[0]);
        let last = f.len() - 1;
        f[last] ^= 4;
        check(&f, RXD_STAT_L4CS | RXD_STAT_UDPCS, RXD_ERR_L4E, V6 | U);
    }

    #[test]
    fn zero_udp_checksums_and_what_is_not_checked() {
        // IPv4 UDP without a checksum: the 82599 erratum.
        let mut f = ipv4_frame(UDP, 40, false);
        f[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        check(&f, RXD_STAT_IPCS | RXD_STAT_L4CS | RXD_STAT_UDPCS, RXD_ERR_L4E, V4 | U);
        // IPv6 UDP with 0 is simply wrong.
        let mut f = ipv6_frame(UDP, 40, &[]);
        f[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
        check(&f, RXD_STAT_L4CS | RXD_STAT_UDPCS, RXD_ERR_L4E, V6 | U);
        // Fragments: the IP header only.
        let mut f = ipv4_frame(TCP, 100, false);
        f[14 + 6] |= 0x20; // MF
        f[24..26].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&f[14..34]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        check(&f, RXD_STAT_IPCS, 0, V4);
        check(&ipv6_frame(UDP, 40, &[44]), 0, 0, V6);
        // A routing header with segments left, ICMP, ARP, runts.
        let mut f = ipv6_frame(TCP, 40, &[43]);
        f[14 + 40 + 3] = 1;
        check(&f, 0, 0, V6);
        check(&ipv4_frame(1, 40, false), RXD_STAT_IPCS, 0, V4);
        let mut arp = vec![0xff; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.resize(60, 0);
        check(&arp, 0, 0, 0);
        check(&ipv4_frame(TCP, 100, false)[..40], RXD_STAT_IPCS, 0, V4);
        check(&[0u8; 10], 0, 0, 0);
    }
}
