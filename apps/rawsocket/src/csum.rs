//! CHECKSUM COMPLETION for frames whose sender left the TCP or UDP checksum
//! to the NIC.
//!
//! A local sender (a veth or tap peer, a container) with checksum offload on
//! hands the kernel frames whose L4 checksum field holds only the folded
//! pseudo-header sum; the NIC would finish it. AF_PACKET marks such frames
//! (TP_STATUS_CSUMNOTREADY), and a frame forwarded as it is would be dropped
//! by its receiver for a bad checksum. Finishing it is what the kernel's
//! `skb_checksum_help` does: the ones' complement sum of the whole L4
//! segment, field included, complemented, into the field.

use snabb_core::checksum::{fold, ones_sum};

/// Finish the checksum of a TCP or UDP segment over IPv4 or IPv6 (behind up
/// to two VLAN tags). Returns false, leaving the frame alone, when it is not
/// one of those or its headers do not hold together.
pub fn complete(frame: &mut [u8]) -> bool {
    let be16 = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let mut l3 = 14;
    if frame.len() < l3 {
        return false;
    }
    let mut ethertype = be16(frame, 12);
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        if frame.len() < l3 + 4 {
            return false;
        }
        ethertype = be16(frame, l3 + 2);
        l3 += 4;
    }
    let (proto, l4, end) = match ethertype {
        0x0800 => {
            if frame.len() < l3 + 20 || frame[l3] >> 4 != 4 {
                return false;
            }
            let ihl = (frame[l3] & 0x0f) as usize * 4;
            // A fragment carries no partial checksum.
            if ihl < 20 || be16(frame, l3 + 6) & 0x3fff != 0 {
                return false;
            }
            (frame[l3 + 9], l3 + ihl, l3 + be16(frame, l3 + 2) as usize)
        }
        0x86dd => {
            if frame.len() < l3 + 40 || frame[l3] >> 4 != 6 {
                return false;
            }
            (frame[l3 + 6], l3 + 40, l3 + 40 + be16(frame, l3 + 4) as usize)
        }
        _ => return false,
    };
    let field = match proto {
        6 => l4 + 16,
        17 => l4 + 6,
        _ => return false,
    };
    if end > frame.len() || field + 2 > end {
        return false;
    }
    let mut sum = fold(ones_sum(&frame[l4..end]));
    sum = !sum;
    if proto == 17 && sum == 0 {
        sum = 0xffff; // UDP: 0 means "no checksum"
    }
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full checksum of an L4 segment, computed the long way: pseudo
    /// header and segment with the field zeroed.
    fn reference(pseudo: &[u8], seg: &[u8], field: usize) -> u16 {
        let mut s = seg.to_vec();
        s[field..field + 2].fill(0);
        let mut all = pseudo.to_vec();
        all.extend_from_slice(&s);
        let mut sum = 0u32;
        for w in all.chunks(2) {
            sum += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// What a sender with offload leaves in the field: the folded pseudo sum.
    fn partial(pseudo: &[u8]) -> [u8; 2] {
        let mut sum = 0u32;
        for w in pseudo.chunks(2) {
            sum += u16::from_be_bytes([w[0], w[1]]) as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        (sum as u16).to_be_bytes()
    }

    fn ipv4_frame(proto: u8, l4: &[u8], vlan: bool) -> (Vec<u8>, Vec<u8>) {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + l4.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, proto];
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        (f, pseudo)
    }

    #[test]
    fn tcp_over_ipv4_every_length() {
        for n in 20..300usize {
            for vlan in [false, true] {
                let l4: Vec<u8> = (0..n).map(|i| (i * 31 + n) as u8).collect();
                let (mut f, pseudo) = ipv4_frame(6, &l4, vlan);
                let at = f.len() - n + 16;
                let want = reference(&pseudo, &l4, 16);
                f[at..at + 2].copy_from_slice(&partial(&pseudo));
                f.extend_from_slice(&[0xee; 6]); // Ethernet padding is not summed
                assert!(complete(&mut f), "len {n}");
                assert_eq!(u16::from_be_bytes([f[at], f[at + 1]]), want, "len {n} vlan {vlan}");
            }
        }
    }

    #[test]
    fn udp_over_ipv6() {
        for n in 8..200usize {
            let l4: Vec<u8> = (0..n).map(|i| (i * 7 + 1) as u8).collect();
            let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            let dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
            let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(n as u16).to_be_bytes());
            f.extend_from_slice(&[17, 64]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
            f.extend_from_slice(&l4);
            let mut pseudo = [src, dst].concat();
            pseudo.extend_from_slice(&(n as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            let at = 14 + 40 + 6;
            let mut want = reference(&pseudo, &l4, 6);
            if want == 0 {
                want = 0xffff;
            }
            f[at..at + 2].copy_from_slice(&partial(&pseudo));
            assert!(complete(&mut f));
            assert_eq!(u16::from_be_bytes([f[at], f[at + 1]]), want, "len {n}");
        }
    }

    #[test]
    fn leaves_other_frames_alone() {
        let (mut icmp, _) = ipv4_frame(1, &[8, 0, 0, 0, 0, 1, 0, 1], false);
        let before = icmp.clone();
        assert!(!complete(&mut icmp));
        assert_eq!(icmp, before);
        let (mut frag, _) = ipv4_frame(6, &[0; 40], false);
        frag[14 + 6] = 0x20; // more fragments
        assert!(!complete(&mut frag));
        // Lengths that run past the frame, and runts.
        let (mut lying, _) = ipv4_frame(6, &[0; 40], false);
        lying[14 + 2] = 0x05;
        assert!(!complete(&mut lying));
        for n in 0..60 {
            let (f, _) = ipv4_frame(6, &[0; 40], true);
            assert!(!complete(&mut f[..n].to_vec()), "{n} bytes");
        }
        assert!(!complete(&mut [0x81, 0x00].repeat(20)));
    }
}
