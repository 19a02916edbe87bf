//! Typed views over the headers the tunnels use, in the manner of
//! smoltcp's `wire` module: a view wraps a byte buffer (`&[u8]` to read,
//! `&mut [u8]` to write), `new_checked` makes sure the buffer holds the
//! whole header (and what its length fields claim), and the accessors then
//! read fields in network byte order. No unsafe code.
//!
//! | view              | header                                   | bytes |
//! |-------------------|------------------------------------------|-------|
//! | `EthernetFrame`   | destination, source, ethertype           | 14    |
//! | `VlanTag`         | 802.1Q/802.1ad tag after the TPID: TCI, type | 4 |
//! | `Ipv4Packet`      | IPv4, options included                   | 20-60 |
//! | `Ipv6Packet`      | IPv6 fixed header                        | 40    |
//! | `UdpPacket`       | UDP                                      | 8     |
//! | `VxlanHeader`     | VXLAN (RFC 7348)                         | 8     |
//! | `GreHeader`       | GRE (RFC 2784, key and sequence RFC 2890) | 4-16 |
//! | `L2tpv3Header`    | L2TPv3 over IP: session id, 64-bit cookie | 12   |

mod ethernet;
mod gre;
pub mod ip;
mod ipv4;
mod ipv6;
mod l2tpv3;
mod udp;
mod vxlan;

pub use ethernet::{EthernetFrame, VlanTag};
pub use gre::{GreHeader, PROTOCOL_TEB as GRE_PROTOCOL_TEB};
pub use ip::pseudo_header_sum;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use l2tpv3::L2tpv3Header;
/// The Internet checksum is core's, shared with everything else that sums.
pub use snabb_core::checksum::{self, Checksum, fold, sum};
pub use udp::UdpPacket;
pub use vxlan::VxlanHeader;

use std::fmt;

/// Why a buffer is not a valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header, or than its length fields say.
    Truncated,
    /// A length field contradicts the header itself (IPv4 IHL below 5,
    /// total length below the header, UDP length below 8, ...).
    BadLength,
    /// A field no sender may set (IP version, GRE version or routing bits).
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated",
            Error::BadLength => "bad length field",
            Error::Malformed => "malformed header",
        })
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Big-endian reads and writes at fixed offsets. Callers index within a
/// length they checked, so the slice conversions cannot fail.
#[inline(always)]
pub(crate) fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
#[inline(always)]
pub(crate) fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline(always)]
pub(crate) fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}
#[inline(always)]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
#[inline(always)]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
#[inline(always)]
pub(crate) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
