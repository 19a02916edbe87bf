//! IP protocol numbers and the pseudo-header of UDP checksums.

use std::net::IpAddr;

use super::checksum;

/// UDP.
pub const UDP: u8 = 17;
/// GRE.
pub const GRE: u8 = 47;
/// L2TPv3 directly over IP (RFC 3931).
pub const L2TP: u8 = 115;
/// IPv6 hop-by-hop options.
pub const HOP_BY_HOP: u8 = 0;
/// IPv6 destination options.
pub const DEST_OPTIONS: u8 = 60;
/// IPv6 fragment header.
pub const FRAGMENT: u8 = 44;

/// The unfolded sum of the pseudo-header a UDP checksum covers (RFC 768
/// for IPv4, RFC 8200 section 8.1 for IPv6). Both addresses must be of one
/// family.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: u32) -> u64 {
    let addrs = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => checksum::sum(&s.octets()) + checksum::sum(&d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => checksum::sum(&s.octets()) + checksum::sum(&d.octets()),
        _ => panic!("pseudo-header with addresses of two families"),
    };
    addrs + protocol as u64 + (len >> 16) as u64 + (len & 0xffff) as u64
}
