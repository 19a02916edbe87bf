//! THE GRAPH BUILDER: a vswitch config to an app graph.
//!
//!   build(vswitch) -> Graph { config, owners, ports, uplink }
//!
//! An 82599 uplink (real or modelled) gets one `Intel10g` app per port, on
//! the port's VMDq pool (`NAME-pool`): the chip sorts frames to pools by
//! MAC and VLAN and switches between them. Any other uplink gets one
//! software `VmdqSplitter` (`switch`) that does the same, both ways, with
//! the uplink's app (`uplink`) on its `uplink` ports. Between the pool (or
//! the switch) and each port's `VhostUser` (`NAME`) come the port's own
//! apps, one function per port ([`port`]):
//!
//!   to the guest:   pool.output -> NAME-decap -> NAME-to-guest-filter -> NAME-to-guest-limit -> NAME.input
//!   from the guest: NAME.output -> NAME-from-guest-limit -> NAME-from-guest-filter -> NAME-encap -> pool.input
//!
//! each present only when the port asks for it; a port with `copy: Zero` on
//! an 82599 also lends its guest's receive buffers to its pool
//! (`NAME.supply -> NAME-pool.supply`). Every app is named after
//! its port, so `snabb-rs top` reads like the config, and the graph of an
//! unchanged port is the same from one config to the next: the engine
//! leaves it running when others change.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use snabb_apps_basic::source::SourceArgs;
use snabb_apps_decap::{DecapArgs, EncapArgs};
use snabb_apps_intel10g::{Intel10gArgs, Mode};
use snabb_apps_pcap_filter::PcapFilterArgs;
use snabb_apps_rawsocket::RawSocketArgs;
use snabb_apps_vmdq_splitter::{PoolArgs, VmdqSplitterArgs};
use snabb_core::{Args, Config, CopyMode, LinkSettings, MacAddr};
use snabb_model_82599::WireSpec;

use super::schema::{Flow, Guest, Port, Uplink, Vswitch};

/// The software switch's app, and the name of its ports to the uplink.
pub const SWITCH: &str = "switch";
pub const UPLINK: &str = "uplink";

/// Who an app was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Uplink,
    Port(usize),
}

/// The apps of one port, by role (None: the port has none of that kind).
#[derive(Debug, Clone, Default)]
pub struct PortApps {
    pub name: String,
    pub vhost: String,
    /// The port's 82599 pool (hardware uplinks).
    pub pool: Option<String>,
    /// The link of lent receive buffers to the pool (`copy: Zero`).
    pub supply: Option<String>,
    pub decap: Option<String>,
    pub encap: Option<String>,
    pub to_guest_filter: Option<String>,
    pub to_guest_limit: Option<String>,
    pub from_guest_filter: Option<String>,
    pub from_guest_limit: Option<String>,
    /// The guest played in this process.
    pub guest: Option<String>,
    /// The links of each direction, in order.
    pub to_guest_links: Vec<String>,
    pub from_guest_links: Vec<String>,
}

/// The uplink's apps.
#[derive(Debug, Clone, Default)]
pub struct UplinkApps {
    /// The apps that are the uplink: `uplink` (RawSocket), or one AfXdp
    /// app per queue (`uplink-qN`, the first one sends); none without one.
    pub nics: Vec<String>,
    /// The uplink's class (RawSocket or AfXdp), with a software uplink.
    pub class: Option<&'static str>,
    /// The software splitter, when there is one.
    pub switch: Option<String>,
    /// Hardware: whether the pools are on a model port.
    pub model: bool,
    /// Generated traffic: the far end's NIC app, its sink, the flows' sources.
    pub far: Option<String>,
    pub far_sink: Option<String>,
    pub flows: Vec<(String, String)>,
    /// Links from the uplink's apps into the switch.
    pub links: Vec<String>,
    /// The link from the switch out to the wire.
    pub out_link: Option<String>,
}

pub struct Graph {
    pub config: Config,
    pub owners: BTreeMap<String, Owner>,
    pub ports: Vec<PortApps>,
    pub uplink: UplinkApps,
}

/// The outside host that generated uplink traffic comes from.
pub const OUTSIDE_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0xff, 0x01]);

struct Builder {
    config: Config,
    owners: BTreeMap<String, Owner>,
}

impl Builder {
    fn app<T: Serialize>(&mut self, owner: Owner, name: &str, class: &str, args: &T) -> String {
        self.config.app(name, class, args);
        self.owners.insert(name.to_string(), owner);
        name.to_string()
    }

    fn app_args(&mut self, owner: Owner, name: &str, class: &str, args: Args) -> String {
        self.config.app_args(name, class, args);
        self.owners.insert(name.to_string(), owner);
        name.to_string()
    }

    fn link(&mut self, from: &str, to: &str, copy: CopyMode) -> String {
        let spec = format!("{from} -> {to}");
        self.config.link_with(&spec, LinkSettings { copy, ..LinkSettings::default() });
        spec
    }
}

/// The VhostUser app's arguments, as its class reads them.
#[derive(Serialize)]
struct VhostArgs<'a> {
    socket: &'a Path,
    server: bool,
    queues: u16,
    mtu: u16,
    mac: Option<String>,
}

/// The VirtioUser app's arguments (the guest side of the same socket).
#[derive(Serialize)]
struct VirtioArgs<'a> {
    socket: &'a Path,
    server: bool,
    mac: Option<MacAddr>,
}

pub fn build(v: &Vswitch) -> Graph {
    let mut b = Builder { config: Config::new(), owners: BTreeMap::new() };
    let mut uplink = UplinkApps::default();
    let mut ports = Vec::new();
    match &v.uplink {
        Some(u) if u.is_82599() => {
            uplink.model = matches!(u, Uplink::Model { .. });
            for (i, p) in v.ports.iter().enumerate() {
                let pool = b.app(Owner::Port(i), &format!("{}-pool", p.name), "Intel10g", &pool_args(u, p));
                let out = format!("{pool}.output");
                let inp = format!("{pool}.input");
                let mut apps = port(&mut b, v, i, &out, &inp);
                if p.copy == CopyMode::Zero {
                    // The guest's empty receive buffers, lent to the pool's
                    // ring: the chip writes frames straight into them.
                    let l = b.link(&format!("{}.supply", p.name), &format!("{pool}.supply"), CopyMode::Zero);
                    apps.supply = Some(l);
                }
                apps.pool = Some(pool);
                ports.push(apps);
            }
            if let Uplink::Model { port: name, traffic, .. } = u
                && !traffic.is_empty()
            {
                generated_traffic(&mut b, v, name, traffic, &mut uplink);
            }
        }
        u => {
            if !v.ports.is_empty() {
                let switch = b.app(Owner::Uplink, SWITCH, "VmdqSplitter", &splitter_args(u.as_ref(), &v.ports));
                for (i, p) in v.ports.iter().enumerate() {
                    let end = format!("{switch}.{}", p.name);
                    ports.push(port(&mut b, v, i, &end, &end));
                }
                uplink.switch = Some(switch);
            }
            match u {
                Some(Uplink::AfXdp { .. }) => {
                    // One app per queue, each a wire input of the switch
                    // (its inputs not named after a pool carry frames from
                    // the wire); the first sends what the switch sends out.
                    for a in v.afxdp_args() {
                        let name = format!("{UPLINK}-q{}", a.queue);
                        let nic = b.app_args(
                            Owner::Uplink,
                            &name,
                            "AfXdp",
                            Args::from_value(&a).expect("arguments serialise"),
                        );
                        if let Some(switch) = &uplink.switch {
                            let l = b.link(&format!("{nic}.tx"), &format!("{switch}.{nic}"), CopyMode::Zero);
                            uplink.links.push(l);
                        }
                        uplink.nics.push(nic);
                    }
                    if let (Some(switch), Some(first)) = (&uplink.switch, uplink.nics.first()) {
                        let l = b.link(&format!("{switch}.{UPLINK}"), &format!("{first}.rx"), CopyMode::Zero);
                        uplink.out_link = Some(l);
                    }
                    uplink.class = Some("AfXdp");
                }
                Some(u) => {
                    let args = raw_socket_args(u);
                    let nic = b.app_args(Owner::Uplink, UPLINK, "RawSocket", args);
                    if let Some(switch) = &uplink.switch {
                        let a = b.link(&format!("{nic}.tx"), &format!("{switch}.{UPLINK}"), CopyMode::Zero);
                        let c = b.link(&format!("{switch}.{UPLINK}"), &format!("{nic}.rx"), CopyMode::Zero);
                        uplink.links = vec![a];
                        uplink.out_link = Some(c);
                    }
                    uplink.nics.push(nic);
                    uplink.class = Some("RawSocket");
                }
                None => {}
            }
        }
    }
    // Workers: port i and all its apps (its pool among them, so the path
    // from the NIC to the guest stays on one worker) on worker i mod n; the
    // uplink's apps (the software splitter among them, which feeds the
    // ports through interlinks) on the main one.
    let n = if v.workers > 0 { v.workers as usize } else { v.worker_cpus.len() };
    if n > 0 {
        for w in 0..n {
            let cpu = (!v.worker_cpus.is_empty()).then(|| v.worker_cpus[w % v.worker_cpus.len()]);
            b.config.worker(&worker_name(w), snabb_core::config::WorkerSpec { cpu });
        }
        for (app, owner) in &b.owners {
            if let Owner::Port(i) = owner {
                b.config.place(app, Some(&worker_name(i % n)));
            }
        }
    }
    Graph { config: b.config, owners: b.owners, ports, uplink }
}

/// The name of worker `w` (0-based).
pub fn worker_name(w: usize) -> String {
    format!("w{}", w + 1)
}

/// A RawSocket uplink's app arguments.
fn raw_socket_args(u: &Uplink) -> Args {
    let Uplink::RawSocket { interface, qdisc_bypass, .. } = u else {
        unreachable!("82599 uplinks take the hardware path, AF_XDP ones theirs")
    };
    let args = RawSocketArgs {
        interface: interface.clone(),
        promiscuous: true,
        complete_checksums: true,
        qdisc_bypass: *qdisc_bypass,
        rx_ring_kib: 4096,
        tx_frames: 1024,
    };
    Args::from_value(&args).expect("arguments serialise")
}

/// A port's 82599 pool: its addresses and VLAN, the port-wide settings.
fn pool_args(u: &Uplink, p: &Port) -> Intel10gArgs {
    let (pci, pools, vm_to_vm, mtu, link_wait, rx_ring, tx_ring, wire) = match u {
        Uplink::Intel10g { pci, pools, vm_to_vm, mtu, link_wait, rx_ring, tx_ring } => {
            (pci.clone(), *pools, *vm_to_vm, *mtu, *link_wait, *rx_ring, *tx_ring, None)
        }
        Uplink::Model { port, wire, traffic, pools, vm_to_vm, mtu, link_wait, rx_ring, tx_ring } => {
            // With generated traffic, the far end's app and the pools' come
            // up in name order: whichever is first would wait for the other.
            let (wire, link_wait) = if traffic.is_empty() {
                // Unplugged, the link never comes up: nothing to wait for.
                let plugged = wire.as_ref().is_some_and(|w| *w != WireSpec::Unplugged);
                (wire.clone(), if plugged { *link_wait } else { 0.0 })
            } else {
                (Some(WireSpec::Cable(format!("{}{port}-far", snabb_model_82599::registry::PREFIX))), 0.0)
            };
            (
                format!("{}{port}", snabb_model_82599::registry::PREFIX),
                *pools,
                *vm_to_vm,
                *mtu,
                link_wait,
                *rx_ring,
                *tx_ring,
                wire,
            )
        }
        Uplink::RawSocket { .. } | Uplink::AfXdp { .. } => unreachable!("no pools on a software uplink"),
    };
    Intel10gArgs {
        pci,
        mode: Mode::Vmdq { pools },
        pool: None,
        macs: p.pool_macs(),
        vlans: p.vlan.into_iter().collect(),
        // One VLAN: the tag is stripped on receive and added on send.
        accept_untagged: None,
        accept_broadcast: true,
        accept_multicast: true,
        strip_vlan: None,
        vm_to_vm,
        rx_ring,
        tx_ring,
        mtu,
        link_wait,
        wire,
        ..Intel10gArgs::default()
    }
}

/// The software switch: a pool per port, the uplink as its wire.
fn splitter_args(u: Option<&Uplink>, ports: &[Port]) -> VmdqSplitterArgs {
    let vm_to_vm = match u {
        Some(Uplink::RawSocket { vm_to_vm, .. } | Uplink::AfXdp { vm_to_vm, .. }) => *vm_to_vm,
        _ => true,
    };
    VmdqSplitterArgs {
        pools: ports
            .iter()
            .map(|p| PoolArgs {
                macs: p.pool_macs(),
                vlan: p.vlan,
                strip_vlan: p.vlan.is_some(),
                ..PoolArgs::new(&p.name)
            })
            .collect(),
        default_pool: None,
        wire: Some(UPLINK.into()),
        vm_to_vm,
        ..VmdqSplitterArgs::default()
    }
}

/// One port's apps and links, between `from_uplink` (the endpoint frames
/// for the guest come out of) and `to_uplink` (where its frames go in).
/// Every link is `Zero`: a packet moves on in its own buffer (a guest's
/// lent receive buffer, on an 82599 with `copy: Zero`, all the way to its
/// port).
fn port(b: &mut Builder, v: &Vswitch, i: usize, from_uplink: &str, to_uplink: &str) -> PortApps {
    let p = &v.ports[i];
    let o = Owner::Port(i);
    let n = &p.name;
    let mut apps = PortApps { name: n.clone(), ..PortApps::default() };
    let vhost = VhostArgs {
        socket: &p.socket,
        server: p.server,
        queues: p.queues,
        mtu: p.mtu,
        mac: p.macs.first().map(|m| m.to_string()),
    };
    apps.vhost = b.app(o, n, "VhostUser", &vhost);

    // Towards the guest.
    let mut at = from_uplink.to_string();
    let mut hop = |b: &mut Builder, app: &str, links: &mut Vec<String>| {
        links.push(b.link(&at, &format!("{app}.input"), CopyMode::Zero));
        at = format!("{app}.output");
    };
    let mut links = Vec::new();
    if let Some(t) = &p.tunnel {
        let args = DecapArgs {
            tunnel: t.tunnel.clone(),
            verify_udp_checksum: t.verify_udp_checksum,
            refuse_ip_options: false,
        };
        let a = b.app(o, &format!("{n}-decap"), "Decap", &args);
        hop(b, &a, &mut links);
        apps.decap = Some(a);
    }
    if let Some(f) = &p.to_guest.filter {
        let a = b.app(o, &format!("{n}-to-guest-filter"), "PcapFilter", &PcapFilterArgs { filter: f.clone() });
        hop(b, &a, &mut links);
        apps.to_guest_filter = Some(a);
    }
    if let Some(l) = &p.to_guest.limit {
        let a = b.app(o, &format!("{n}-to-guest-limit"), "RateLimiter", l);
        hop(b, &a, &mut links);
        apps.to_guest_limit = Some(a);
    }
    links.push(b.link(&at, &format!("{n}.input"), CopyMode::Zero));
    apps.to_guest_links = links;

    // From the guest.
    let mut at = format!("{n}.output");
    let mut links = Vec::new();
    let mut hop = |b: &mut Builder, app: &str, links: &mut Vec<String>| {
        links.push(b.link(&at, &format!("{app}.input"), CopyMode::Zero));
        at = format!("{app}.output");
    };
    if let Some(l) = &p.from_guest.limit {
        let a = b.app(o, &format!("{n}-from-guest-limit"), "RateLimiter", l);
        hop(b, &a, &mut links);
        apps.from_guest_limit = Some(a);
    }
    if let Some(f) = &p.from_guest.filter {
        let a = b.app(o, &format!("{n}-from-guest-filter"), "PcapFilter", &PcapFilterArgs { filter: f.clone() });
        hop(b, &a, &mut links);
        apps.from_guest_filter = Some(a);
    }
    if let Some(t) = &p.tunnel {
        let args = EncapArgs {
            tunnel: t.tunnel.clone(),
            local_mac: t.local_mac,
            remote_mac: t.remote_mac,
            ttl: t.ttl,
            src_port: t.src_port,
            udp_checksum: t.udp_checksum,
        };
        let a = b.app(o, &format!("{n}-encap"), "Encap", &args);
        hop(b, &a, &mut links);
        apps.encap = Some(a);
    }
    links.push(b.link(&at, to_uplink, CopyMode::Zero));
    apps.from_guest_links = links;

    if let Some(Guest::VirtioUser { send }) = &p.guest {
        // The guest's side of the socket: it connects when the port listens.
        // What it receives it counts and drops unread (no `output` link).
        let args = VirtioArgs { socket: &p.socket, server: !p.server, mac: p.macs.first().copied() };
        let g = b.app(o, &format!("{n}-guest"), "VirtioUser", &args);
        let src = p.macs.first().copied().unwrap_or(OUTSIDE_MAC);
        let sources: Vec<String> = send
            .iter()
            .enumerate()
            .map(|(k, f)| b.app(o, &format!("{n}-guest-flow-{}", k + 1), "Source", &flow_args(v, f, src, false)))
            .collect();
        feed(b, o, &sources, &format!("{n}-guest-flows"), &format!("{g}.input"));
        apps.guest = Some(g);
    }
    apps
}

/// Sources to `to`: straight, or through a Join named `join`.
fn feed(b: &mut Builder, o: Owner, sources: &[String], join: &str, to: &str) {
    match sources {
        [] => {}
        [one] => {
            b.link(&format!("{one}.output"), to, CopyMode::Zero);
        }
        many => {
            let j = b.app(o, join, "Join", &());
            for s in many {
                b.link(&format!("{s}.output"), &format!("{j}.{s}"), CopyMode::Zero);
            }
            b.link(&format!("{j}.output"), to, CopyMode::Zero);
        }
    }
}

/// A flow's Source: to a port's first MAC (on its VLAN when `tagged`, as
/// the uplink carries it), or to the address given.
fn flow_args(v: &Vswitch, f: &Flow, src: MacAddr, tagged: bool) -> SourceArgs {
    let (dst, vlan) = match (&f.to, f.dst) {
        (Some(to), _) => {
            let p = &v.ports[v.port_index(to).expect("checked")];
            let dst = p.macs.first().copied().unwrap_or(MacAddr::BROADCAST);
            (dst, if tagged { p.vlan } else { None })
        }
        (None, Some(d)) => (d, f.vlan),
        (None, None) => unreachable!("checked"),
    };
    SourceArgs { size: f.size, dst, src, vlan, pps: f.pps, gbps: f.gbps, ..SourceArgs::default() }
}

/// Generated traffic on a model uplink's wire: the flows' sources into a
/// second model port (`PORT-far`) cabled to it, whose receive side counts
/// what the switch sends out. Nobody waits for the link: what the sources
/// offer before it is up is lost, and counted, as on a real wire.
fn generated_traffic(b: &mut Builder, v: &Vswitch, port: &str, flows: &[Flow], u: &mut UplinkApps) {
    let prefix = snabb_model_82599::registry::PREFIX;
    let far = Intel10gArgs {
        pci: format!("{prefix}{port}-far"),
        mode: Mode::Single,
        wire: Some(WireSpec::Cable(format!("{prefix}{port}"))),
        ..Intel10gArgs::default()
    };
    let nic = b.app(Owner::Uplink, "uplink-far", "Intel10g", &far);
    let sink = b.app(Owner::Uplink, "uplink-far-sink", "Sink", &());
    b.link(&format!("{nic}.output"), &format!("{sink}.input"), CopyMode::Zero);
    let mut sources = Vec::new();
    for (k, f) in flows.iter().enumerate() {
        let s = b.app(Owner::Uplink, &format!("uplink-flow-{}", k + 1), "Source", &flow_args(v, f, OUTSIDE_MAC, true));
        u.flows.push((s.clone(), describe_flow(v, f, true)));
        sources.push(s);
    }
    feed(b, Owner::Uplink, &sources, "uplink-flows", &format!("{nic}.input"));
    u.far = Some(nic);
    u.far_sink = Some(sink);
}

/// A flow in words, for the report.
pub fn describe_flow(v: &Vswitch, f: &Flow, tagged: bool) -> String {
    let a = flow_args(v, f, OUTSIDE_MAC, tagged);
    let to = match &f.to {
        Some(t) => format!("to port {t} ({})", a.dst),
        None => format!("to {}", a.dst),
    };
    let vlan = a.vlan.map_or(String::new(), |v| format!(" on VLAN {v}"));
    let pace = match (f.gbps, f.pps) {
        (Some(g), _) => format!("{g} Gbit/s"),
        (_, Some(p)) => format!("{p} frames/s"),
        _ => String::new(),
    };
    format!("{}-byte frames {to}{vlan}, {pace}", f.size)
}

#[cfg(test)]
mod tests {
    use super::super::schema;
    use super::*;

    fn graph(text: &str) -> Graph {
        let v = schema::parse(text, None).unwrap();
        v.check().unwrap();
        build(&v)
    }

    fn links(g: &Graph) -> Vec<String> {
        g.config.links().map(|(l, s)| format!("{l}{}", if s.copy == CopyMode::Simd { " (Simd)" } else { "" })).collect()
    }

    const PORTS: &str = r#"
        (name: "vm1", socket: "/tmp/v1.sock", macs: ["52:54:00:00:00:01"], vlan: 10,
         to_guest: (filter: "ip", limit: (gbps: 1.0)), from_guest: (limit: (pps: 1000.0))),
        (name: "vm2", socket: "/tmp/v2.sock", macs: ["52:54:00:00:00:02"], copy: Zero,
         tunnel: (tunnel: Vxlan(local: "192.0.2.1", remote: "192.0.2.2", vni: 7),
                  local_mac: "02:00:00:00:00:aa", remote_mac: "02:00:00:00:00:bb")),
    "#;

    #[test]
    fn hardware_pools_and_each_ports_chain() {
        let g = graph(&format!("(uplink: Intel10g(pci: \"0000:01:00.0\"), ports: [{PORTS}])"));
        let names: Vec<&str> = g.config.apps().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "vm1",
                "vm1-from-guest-limit",
                "vm1-pool",
                "vm1-to-guest-filter",
                "vm1-to-guest-limit",
                "vm2",
                "vm2-decap",
                "vm2-encap",
                "vm2-pool"
            ]
        );
        assert_eq!(
            links(&g),
            [
                "vm1.output -> vm1-from-guest-limit.input",
                "vm1-from-guest-limit.output -> vm1-pool.input",
                "vm1-pool.output -> vm1-to-guest-filter.input",
                "vm1-to-guest-filter.output -> vm1-to-guest-limit.input",
                "vm1-to-guest-limit.output -> vm1.input",
                "vm2.output -> vm2-encap.input",
                "vm2.supply -> vm2-pool.supply",
                "vm2-decap.output -> vm2.input",
                "vm2-encap.output -> vm2-pool.input",
                "vm2-pool.output -> vm2-decap.input",
            ]
        );
        let pool: Intel10gArgs = g.config.app_spec("vm2-pool").unwrap().args.parse().unwrap();
        assert_eq!(pool.macs, vec!["02:00:00:00:00:aa".parse().unwrap()], "a VXLAN port's pool has the tunnel's MAC");
        let pool: Intel10gArgs = g.config.app_spec("vm1-pool").unwrap().args.parse().unwrap();
        assert_eq!((pool.vlans.clone(), pool.mode, pool.pool), (vec![10], Mode::Vmdq { pools: 64 }, None));
        assert_eq!(g.owners["vm2-decap"], Owner::Port(1));
        assert_eq!(g.ports[0].to_guest_links.len(), 3);
        crate::registry().check(&g.config).unwrap();
    }

    #[test]
    fn software_switch_and_uplink() {
        let g = graph(&format!("(uplink: RawSocket(interface: \"eth9\"), ports: [{PORTS}])"));
        let l = links(&g);
        for want in [
            "uplink.tx -> switch.uplink",
            "switch.uplink -> uplink.rx",
            "switch.vm1 -> vm1-to-guest-filter.input",
            "vm1-from-guest-limit.output -> switch.vm1",
            "switch.vm2 -> vm2-decap.input",
            "vm2-encap.output -> switch.vm2",
        ] {
            assert!(l.iter().any(|x| x == want), "{want} in {l:?}");
        }
        let s: VmdqSplitterArgs = g.config.app_spec("switch").unwrap().args.parse().unwrap();
        assert_eq!(s.wire.as_deref(), Some("uplink"));
        assert!(s.pools[0].strip_vlan && s.pools[0].vlan == Some(10));
        assert_eq!(s.pools[1].macs, vec!["02:00:00:00:00:aa".parse().unwrap()]);
        crate::registry().check(&g.config).unwrap();
        crate::registry().check(&g.config).unwrap();
        // No ports: nothing but the uplink; no uplink: the switch alone.
        let g = graph(&format!("(ports: [{PORTS}])"));
        assert!(g.config.app_spec("uplink").is_none() && g.config.app_spec("switch").is_some());
        let g = graph("(uplink: RawSocket(interface: \"eth9\"))");
        assert_eq!(g.config.apps().count(), 1);
    }

    #[test]
    fn afxdp_uplink_one_app_per_queue() {
        let g = graph(&format!(
            "(uplink: AfXdp(interface: \"eth9\", queues: [2, 0], replace: true, rx_ring: 1024), ports: [{PORTS}])"
        ));
        assert_eq!(g.uplink.nics, ["uplink-q2", "uplink-q0"]);
        assert_eq!(g.uplink.class, Some("AfXdp"));
        let l = links(&g);
        for want in [
            "uplink-q2.tx -> switch.uplink-q2",
            "uplink-q0.tx -> switch.uplink-q0",
            // The first queue listed sends.
            "switch.uplink -> uplink-q2.rx",
        ] {
            assert!(l.iter().any(|x| x == want), "{want} in {l:?}");
        }
        assert!(!l.iter().any(|x| x.ends_with("uplink-q0.rx")), "{l:?}");
        let a: snabb_apps_afxdp::AfXdpArgs = g.config.app_spec("uplink-q0").unwrap().args.parse().unwrap();
        assert_eq!((a.interface.as_str(), a.queue, a.replace, a.rx_ring, a.tx_ring), ("eth9", 0, true, 1024, 2048));
        assert_eq!(g.owners["uplink-q2"], Owner::Uplink);
        crate::registry().check(&g.config).unwrap();
        // Every queue of an interface this machine lacks: queue 0.
        let g = graph(&format!("(uplink: AfXdp(interface: \"nosuchif9\"), ports: [{PORTS}])"));
        assert_eq!(g.uplink.nics, ["uplink-q0"]);
        // Every queue of one it has (lo has one).
        let v = schema::parse("(uplink: AfXdp(interface: \"lo\"))", None).unwrap();
        assert_eq!(v.afxdp_queues(), (0..snabb_apps_afxdp::rx_queue_count("lo").unwrap()).collect::<Vec<_>>());
        // No ports: the apps alone (what they receive is counted and dropped).
        let g = graph("(uplink: AfXdp(interface: \"eth9\", queues: [0]))");
        assert_eq!(g.config.apps().map(|(n, _)| n).collect::<Vec<_>>(), ["uplink-q0"]);
        assert_eq!(g.config.links().count(), 0);
    }

    #[test]
    fn an_afxdp_uplink_kept_is_the_same_apps() {
        let up = "uplink: AfXdp(interface: \"eth9\", queues: [0, 1])";
        let one = graph(&format!("({up}, ports: [{PORTS}])"));
        let more = PORTS.to_string() + r#"(name: "vm3", socket: "/tmp/v3.sock", macs: ["52:54:00:00:00:03"]),"#;
        let two = graph(&format!("({up}, ports: [{more}])"));
        for q in ["uplink-q0", "uplink-q1"] {
            assert_eq!(one.config.app_spec(q), two.config.app_spec(q), "{q}");
        }
        let b: Vec<_> = two.config.links().collect();
        assert!(one.config.links().all(|l| b.contains(&l)));
    }

    #[test]
    fn generated_traffic_on_a_model_uplink() {
        let g = graph(&format!(
            "(uplink: Model(port: \"up\", traffic: [(to: \"vm1\", gbps: 0.5, size: 100), (dst: \"ff:ff:ff:ff:ff:ff\", vlan: 10, pps: 10.0)]),
              ports: [{PORTS}])"
        ));
        let src: SourceArgs = g.config.app_spec("uplink-flow-1").unwrap().args.parse().unwrap();
        assert_eq!(
            (src.dst, src.vlan, src.gbps, src.size),
            ("52:54:00:00:00:01".parse().unwrap(), Some(10), Some(0.5), 100)
        );
        let pool: Intel10gArgs = g.config.app_spec("vm1-pool").unwrap().args.parse().unwrap();
        assert_eq!(pool.wire, Some(WireSpec::Cable("model:up-far".into())));
        assert_eq!(pool.pci, "model:up");
        let l = links(&g);
        assert!(l.contains(&"uplink-flows.output -> uplink-far.input".to_string()), "{l:?}");
        assert!(l.contains(&"uplink-far.output -> uplink-far-sink.input".to_string()), "{l:?}");
        assert_eq!(g.uplink.flows.len(), 2);
        assert_eq!(g.uplink.flows[0].1, "100-byte frames to port vm1 (52:54:00:00:00:01) on VLAN 10, 0.5 Gbit/s");
    }

    #[test]
    fn an_unchanged_port_builds_the_same_apps() {
        let one = graph(&format!("(uplink: RawSocket(interface: \"eth9\"), ports: [{PORTS}])"));
        let more = PORTS.to_string() + r#"(name: "vm3", socket: "/tmp/v3.sock", macs: ["52:54:00:00:00:03"]),"#;
        let two = graph(&format!("(uplink: RawSocket(interface: \"eth9\"), ports: [{more}])"));
        for (name, spec) in one.config.apps().filter(|(n, _)| *n != "switch") {
            assert_eq!(two.config.app_spec(name), Some(spec), "{name}");
        }
        let a: Vec<_> = one.config.links().collect();
        let b: Vec<_> = two.config.links().collect();
        assert!(a.iter().all(|l| b.contains(l)));
    }
}
