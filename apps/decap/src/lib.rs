//! Tunnels and tags: `Decap` strips an encapsulation, `Encap` pushes it.
//!
//! | class   | ports                                      | does                                  |
//! |---------|--------------------------------------------|---------------------------------------|
//! | `Decap` | in: any; out: `output`, `reject` (optional) | strips one tunnel or tag, checks ids  |
//! | `Encap` | in: any; out: `output`                      | pushes one tunnel or tag              |
//!
//! Both take a [`Tunnel`]: an 802.1Q tag, an 802.1ad QinQ pair, VXLAN over
//! IPv4 or IPv6, Ethernet over GRE (with or without key) over IPv4 or
//! IPv6, or the keyed L2TPv3-over-IPv6 tunnel of Snabb NFV. The headers are
//! read and written through the typed views of [`wire`].

pub mod decap;
pub mod encap;
pub mod tunnel;
pub mod wire;

pub use decap::{Decap, DecapArgs, Reject};
pub use encap::{Encap, EncapArgs};
pub use tunnel::Tunnel;

use snabb_core::Registry;

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<Decap>("Decap", "strips a VLAN tag, QinQ tags, or a VXLAN, GRE or L2TPv3 tunnel")
        .register::<Encap>("Encap", "pushes a VLAN tag, QinQ tags, or a VXLAN, GRE or L2TPv3 tunnel");
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("Decap", selftest::decap), ("Encap", selftest::encap)]
}

/// A registry with this crate's classes and the basic apps, for tests.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    snabb_apps_basic::register(&mut r);
    register(&mut r);
    r
}

/// Example tunnels of every kind, as one endpoint sees them (pair each
/// with its `reversed()` for the other end).
pub fn example_tunnels() -> Vec<Tunnel> {
    let v4 = |s: &str| s.parse().unwrap();
    vec![
        Tunnel::Vlan { vid: Some(100), tpid: 0x8100, pcp: 3 },
        Tunnel::Vlan { vid: Some(7), tpid: 0x88a8, pcp: 0 },
        Tunnel::QinQ { outer: Some(20), inner: Some(100), outer_tpid: 0x88a8, pcp: 0 },
        Tunnel::Vxlan { local: v4("192.0.2.1"), remote: Some(v4("192.0.2.2")), vni: 5000, port: 4789 },
        Tunnel::Vxlan { local: v4("2001:db8::1"), remote: Some(v4("2001:db8::2")), vni: 0xfffffe, port: 8472 },
        Tunnel::Gre { local: v4("192.0.2.1"), remote: Some(v4("192.0.2.2")), key: None, checksum: false },
        Tunnel::Gre { local: v4("192.0.2.1"), remote: Some(v4("192.0.2.2")), key: Some(42), checksum: true },
        Tunnel::Gre { local: v4("2001:db8::1"), remote: Some(v4("2001:db8::2")), key: Some(7), checksum: false },
        Tunnel::Gre { local: v4("2001:db8::1"), remote: Some(v4("2001:db8::2")), key: None, checksum: true },
        Tunnel::L2tpv3 {
            local: "2001:db8::1".parse().unwrap(),
            remote: "2001:db8::2".parse().unwrap(),
            session: 0xffff_ffff,
            local_cookie: 0x0011_2233_4455_6677,
            remote_cookie: 0x8899_aabb_ccdd_eeff,
        },
    ]
}

mod selftest {
    use std::time::Duration;

    use anyhow::ensure;
    use snabb_apps_basic::{Match, Sink};
    use snabb_core::ethernet::MacAddr;
    use snabb_core::{Args, Config, Engine, Limit, packet};

    use crate::{Decap, DecapArgs, Encap, EncapArgs, Reject, Tunnel};

    const LOCAL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    const REMOTE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

    /// Frames of several sizes through Encap and then Decap (the other
    /// end's view) for every kind of tunnel: they must come out unchanged.
    pub fn encap() -> anyhow::Result<()> {
        let before = packet::stats().in_use;
        for t in crate::example_tunnels() {
            let mut c = Config::new();
            c.app_args(
                "src",
                "Source",
                Args::from_ron("(sizes: [60, 64, 590, 1514, 9014], count: 500, numbered: true)")?,
            )
            .app("tee", "Tee", &())
            .app("encap", "Encap", &EncapArgs::new(t.clone(), LOCAL_MAC, REMOTE_MAC))
            .app(
                "decap",
                "Decap",
                &DecapArgs { tunnel: t.reversed(), verify_udp_checksum: true, refuse_ip_options: false },
            )
            .app("match", "Match", &())
            .link("src.output -> tee.input")
            .link("tee.a -> encap.input")
            .link("encap.output -> decap.input")
            .link("decap.output -> match.rx")
            .link("tee.b -> match.comparator");
            let mut e = Engine::new(crate::registry());
            e.configure(&c)?;
            let done = |e: &Engine| e.app::<Match>("match").is_some_and(|m| m.matched() + m.mismatched() == 500);
            e.run_until(done, Duration::from_secs(10));
            e.run(Limit::Breaths(2));
            let m = e.app::<Match>("match").unwrap();
            ensure!(m.mismatched() == 0, "{}: round trip changed frames: {:?}", t.kind(), m.errors());
            ensure!(m.matched() == 500, "{}: {} of 500 frames came back", t.kind(), m.matched());
            ensure!(e.app::<Encap>("encap").unwrap().encapsulated() == 500, "{}: encap count", t.kind());
            let d = e.app::<Decap>("decap").unwrap();
            ensure!(d.decapsulated() == 500 && d.rejected_total() == 0, "{}: decap counts", t.kind());
        }
        ensure!(packet::stats().in_use == before, "packets leaked");
        Ok(())
    }

    /// A VLAN Decap fed its own VLAN, another VLAN and untagged frames:
    /// the first are stripped, the others go to `reject`, counted.
    pub fn decap() -> anyhow::Result<()> {
        let before = packet::stats().in_use;
        {
            let mut c = Config::new();
            c.app_args("mine", "Source", Args::from_ron("(size: 64, count: 300, vlan: 5)")?)
                .app_args("other", "Source", Args::from_ron("(size: 64, count: 200, vlan: 6)")?)
                .app_args("plain", "Source", Args::from_ron("(size: 64, count: 100)")?)
                .app(
                    "decap",
                    "Decap",
                    &DecapArgs {
                        tunnel: Tunnel::Vlan { vid: Some(5), tpid: 0x8100, pcp: 0 },
                        verify_udp_checksum: false,
                        refuse_ip_options: false,
                    },
                )
                .app("out", "Sink", &())
                .app("rej", "Sink", &())
                .link("mine.output -> decap.a")
                .link("other.output -> decap.b")
                .link("plain.output -> decap.c")
                .link("decap.output -> out.input")
                .link("decap.reject -> rej.input");
            let mut e = Engine::new(crate::registry());
            e.configure(&c)?;
            e.run(Limit::Breaths(10));
            let d = e.app::<Decap>("decap").unwrap();
            ensure!(d.decapsulated() == 300, "{} decapsulated", d.decapsulated());
            ensure!(d.rejected(Reject::WrongId) == 200, "{} wrong_id", d.rejected(Reject::WrongId));
            ensure!(d.rejected(Reject::NotTunnel) == 100, "{} not_tunnel", d.rejected(Reject::NotTunnel));
            ensure!(d.dropped() == 0);
            let out = e.app::<Sink>("out").unwrap();
            ensure!(out.packets() == 300 && out.bytes() == 300 * 60, "stripped frames are 4 bytes shorter");
            ensure!(e.app::<Sink>("rej").unwrap().packets() == 300, "rejects went to `reject`");
            ensure!(e.app_counters("decap")["wrong_id"] == 200);
        }
        ensure!(packet::stats().in_use == before, "packets leaked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_selftest_passes() {
        for (name, t) in super::selftests() {
            t().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }
}
