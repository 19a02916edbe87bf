//! What to strip or push, as the config names it. One `Tunnel` describes
//! one endpoint's view of an encapsulation, so the same value configures
//! both directions: `Decap` accepts packets sent *to* `local` *from*
//! `remote`, and `Encap` sends packets *from* `local` *to* `remote`.
//!
//! ```ron
//! Vlan(vid: 100)                                  // 802.1Q, TPID 0x8100
//! Vlan(vid: 20, tpid: 0x88a8)                     // a single 802.1ad S-tag
//! QinQ(outer: 20, inner: 100)                     // S-tag 0x88a8, then C-tag 0x8100
//! Vxlan(local: "192.0.2.1", remote: "192.0.2.2", vni: 5000)
//! Gre(local: "2001:db8::1", remote: "2001:db8::2", key: 42)
//! L2tpv3(local: "2001:db8::1", remote: "2001:db8::2", local_cookie: 0x1122334455667788, remote_cookie: 0x8877665544332211)
//! ```

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

/// The VXLAN port assigned by IANA.
pub const VXLAN_PORT: u16 = 4789;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub enum Tunnel {
    /// One VLAN tag right after the MAC addresses.
    Vlan {
        /// Decap: strip only this VLAN id (any id when absent). Encap: the
        /// id to push (required).
        #[serde(default)]
        vid: Option<u16>,
        /// The tag protocol identifier: 0x8100 (802.1Q) unless told.
        #[serde(default = "tpid_8021q")]
        tpid: u16,
        /// Encap: the priority code point (0-7).
        #[serde(default)]
        pcp: u8,
    },
    /// Two tags: a service tag (`outer_tpid`, 0x88a8 by default), then a
    /// customer tag (0x8100). Both are stripped or pushed.
    QinQ {
        #[serde(default)]
        outer: Option<u16>,
        #[serde(default)]
        inner: Option<u16>,
        #[serde(default = "tpid_8021ad")]
        outer_tpid: u16,
        #[serde(default)]
        pcp: u8,
    },
    /// VXLAN (RFC 7348) over UDP over IPv4 or IPv6.
    Vxlan {
        local: IpAddr,
        /// Decap: accept only this source (any when absent). Encap: required.
        #[serde(default)]
        remote: Option<IpAddr>,
        /// The 24-bit network identifier.
        vni: u32,
        /// UDP destination port.
        #[serde(default = "vxlan_port")]
        port: u16,
    },
    /// Ethernet over GRE (protocol 0x6558, Linux's gretap and ip6gretap)
    /// over IPv4 or IPv6.
    Gre {
        local: IpAddr,
        #[serde(default)]
        remote: Option<IpAddr>,
        /// Decap: packets must carry exactly this key, or none when absent.
        /// Encap: the key to send, if any.
        #[serde(default)]
        key: Option<u32>,
        /// Encap: send GRE checksums. (Decap checks a checksum whenever a
        /// packet carries one.)
        #[serde(default)]
        checksum: bool,
    },
    /// The keyed IPv6 tunnel of Snabb NFV: L2TPv3 over IPv6 with a 64-bit
    /// cookie. Encap sends `local_cookie`; decap expects `remote_cookie`.
    L2tpv3 {
        local: Ipv6Addr,
        remote: Ipv6Addr,
        /// The session id, sent and expected (all ones, as the draft
        /// recommends, unless told).
        #[serde(default = "all_ones")]
        session: u32,
        local_cookie: u64,
        remote_cookie: u64,
    },
}

fn tpid_8021q() -> u16 {
    snabb_core::ethernet::ETHERTYPE_VLAN
}
fn tpid_8021ad() -> u16 {
    snabb_core::ethernet::ETHERTYPE_QINQ
}
fn vxlan_port() -> u16 {
    VXLAN_PORT
}
fn all_ones() -> u32 {
    u32::MAX
}

/// Whether a tunnel is checked for decapsulation or encapsulation (which
/// needs every field that says where to send).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Decap,
    Encap,
}

fn check_vid(what: &str, vid: Option<u16>, dir: Direction) -> Result<()> {
    match vid {
        Some(v) => ensure!(v < 4095, "{what} {v}: must be below 4095"),
        None => ensure!(dir == Direction::Decap, "{what}: needed to push a tag"),
    }
    Ok(())
}

fn check_tpid(what: &str, tpid: u16) -> Result<()> {
    // An ethertype below 0x0600 would be read as a length (802.3).
    ensure!(tpid >= 0x0600, "{what} {tpid:#06x}: not an ethertype");
    Ok(())
}

fn check_endpoints(local: &IpAddr, remote: &Option<IpAddr>, dir: Direction) -> Result<()> {
    match remote {
        Some(r) => {
            ensure!(r.is_ipv4() == local.is_ipv4(), "local {local} and remote {r} must both be IPv4 or both IPv6")
        }
        None => ensure!(dir == Direction::Decap, "remote: needed to send"),
    }
    ensure!(!local.is_unspecified() && !local.is_multicast(), "local {local}: not a unicast address");
    Ok(())
}

impl Tunnel {
    /// Check the values, for one direction.
    pub(crate) fn validate(&self, dir: Direction) -> Result<()> {
        match self {
            Tunnel::Vlan { vid, tpid, pcp } => {
                check_vid("vid", *vid, dir)?;
                check_tpid("tpid", *tpid)?;
                ensure!(*pcp < 8, "pcp {pcp}: must be below 8");
            }
            Tunnel::QinQ { outer, inner, outer_tpid, pcp } => {
                check_vid("outer", *outer, dir)?;
                check_vid("inner", *inner, dir)?;
                check_tpid("outer_tpid", *outer_tpid)?;
                ensure!(*pcp < 8, "pcp {pcp}: must be below 8");
            }
            Tunnel::Vxlan { local, remote, vni, port } => {
                check_endpoints(local, remote, dir)?;
                ensure!(*vni < 1 << 24, "vni {vni}: must be below 2^24");
                ensure!(*port != 0, "port 0");
            }
            Tunnel::Gre { local, remote, .. } => check_endpoints(local, remote, dir)?,
            Tunnel::L2tpv3 { local, remote, session, .. } => {
                check_endpoints(&IpAddr::V6(*local), &Some(IpAddr::V6(*remote)), dir)?;
                if *session == 0 {
                    bail!("session 0 is reserved for L2TPv3 control messages");
                }
            }
        }
        Ok(())
    }

    /// A short name for logs and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Tunnel::Vlan { .. } => "vlan",
            Tunnel::QinQ { .. } => "qinq",
            Tunnel::Vxlan { local: IpAddr::V4(_), .. } => "vxlan4",
            Tunnel::Vxlan { .. } => "vxlan6",
            Tunnel::Gre { local: IpAddr::V4(_), .. } => "gre4",
            Tunnel::Gre { .. } => "gre6",
            Tunnel::L2tpv3 { .. } => "l2tpv3",
        }
    }

    /// The same tunnel seen from the other end: local and remote, and the
    /// two cookies, swap. (Used by tests and examples to pair an Encap with
    /// the Decap that undoes it.)
    pub fn reversed(&self) -> Tunnel {
        let mut t = self.clone();
        match &mut t {
            Tunnel::Vxlan { local, remote: Some(remote), .. } | Tunnel::Gre { local, remote: Some(remote), .. } => {
                std::mem::swap(local, remote)
            }
            Tunnel::L2tpv3 { local, remote, local_cookie, remote_cookie, .. } => {
                std::mem::swap(local, remote);
                std::mem::swap(local_cookie, remote_cookie);
            }
            _ => {}
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snabb_core::config::ron_options;

    fn parse(s: &str) -> Tunnel {
        ron_options().from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("Vlan(vid: 100)"), Tunnel::Vlan { vid: Some(100), tpid: 0x8100, pcp: 0 });
        assert_eq!(parse("Vlan()"), Tunnel::Vlan { vid: None, tpid: 0x8100, pcp: 0 });
        assert_eq!(
            parse("QinQ(outer: 20, inner: 100)"),
            Tunnel::QinQ { outer: Some(20), inner: Some(100), outer_tpid: 0x88a8, pcp: 0 }
        );
        let v = parse(r#"Vxlan(local: "192.0.2.1", remote: "192.0.2.2", vni: 5000)"#);
        assert_eq!(
            v,
            Tunnel::Vxlan {
                local: "192.0.2.1".parse().unwrap(),
                remote: Some("192.0.2.2".parse().unwrap()),
                vni: 5000,
                port: 4789
            }
        );
        assert_eq!(v.kind(), "vxlan4");
        let g = parse(r#"Gre(local: "2001:db8::1", key: 42)"#);
        assert_eq!(g.kind(), "gre6");
        let l = parse(
            r#"L2tpv3(local: "2001:db8::1", remote: "2001:db8::2", local_cookie: 0x1122334455667788, remote_cookie: 7)"#,
        );
        assert!(matches!(l, Tunnel::L2tpv3 { session: u32::MAX, local_cookie: 0x1122334455667788, .. }));
        assert!(ron_options().from_str::<Tunnel>("Vlan(vid: 1, colour: 2)").is_err(), "unknown fields refused");
        assert!(ron_options().from_str::<Tunnel>("Mpls(label: 1)").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let err = |t: &str, d| parse(t).validate(d).unwrap_err().to_string();
        assert!(err("Vlan(vid: 4095)", Direction::Decap).contains("vid 4095"));
        assert!(err("Vlan()", Direction::Encap).contains("needed to push"));
        assert!(parse("Vlan()").validate(Direction::Decap).is_ok());
        assert!(err("Vlan(vid: 1, pcp: 8)", Direction::Encap).contains("pcp 8"));
        assert!(err("Vlan(vid: 1, tpid: 5)", Direction::Decap).contains("not an ethertype"));
        assert!(err("QinQ(outer: 1)", Direction::Encap).contains("inner"));
        assert!(err(r#"Vxlan(local: "192.0.2.1", vni: 16777216)"#, Direction::Decap).contains("vni"));
        assert!(err(r#"Vxlan(local: "192.0.2.1", vni: 1)"#, Direction::Encap).contains("remote"));
        assert!(err(r#"Gre(local: "192.0.2.1", remote: "2001:db8::1")"#, Direction::Decap).contains("both be IPv4"));
        assert!(err(r#"Gre(local: "0.0.0.0")"#, Direction::Decap).contains("not a unicast"));
        assert!(
            err(
                r#"L2tpv3(local: "::1", remote: "::2", session: 0, local_cookie: 1, remote_cookie: 2)"#,
                Direction::Decap
            )
            .contains("session 0")
        );
    }

    #[test]
    fn reversed_swaps_the_ends() {
        let t = parse(r#"L2tpv3(local: "::1", remote: "::2", local_cookie: 1, remote_cookie: 2)"#);
        let Tunnel::L2tpv3 { local, remote, local_cookie, remote_cookie, .. } = t.reversed() else { panic!() };
        assert_eq!(
            (local.to_string(), remote.to_string(), local_cookie, remote_cookie),
            ("::2".into(), "::1".into(), 2, 1)
        );
        assert_eq!(t.reversed().reversed(), t);
    }
}
