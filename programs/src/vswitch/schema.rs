//! THE VSWITCH CONFIG: an uplink and a list of VM ports, in RON.
//!
//! ```ron
//! (
//!     uplink: Intel10g(pci: "0000:01:00.0"),     // or Model(...), RawSocket(...), AfXdp(...), None
//!     ports: [
//!         (name: "vm1", socket: "/run/vm1.sock", macs: ["52:54:00:00:00:01"], vlan: Some(10)),
//!     ],
//! )
//! ```
//!
//! [`parse`] reads a file into a [`Vswitch`] and remembers where each port
//! and field is, so that [`Vswitch::error_at`] can put a file:line:col on a
//! mistake found after parsing (a MAC on two ports, a VLAN out of range).
//! `configs/vmdq-vswitch.ron` documents every field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ron::value::RawValue;
use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use snabb_apps_afxdp::{AfXdpArgs, Mode as AfXdpMode, XdpAttach};
use snabb_apps_decap::Tunnel;
use snabb_apps_rate_limiter::RateLimiterArgs;
use snabb_core::config::{ConfigError, Pos, ron_options};
use snabb_core::{CopyMode, MacAddr};
use snabb_model_82599::WireSpec;

/// The whole switch.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VswitchFile {
    /// What connects the switch to the outside world; none: VM to VM only.
    #[serde(default)]
    pub uplink: Option<Uplink>,
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Workers to spread the ports over (each port with its apps, and its
    /// VMDq pool's queues, on one worker; the uplink's apps on the main
    /// one); 0: everything on the main one. With `worker_cpus` and no
    /// `workers`, one worker per CPU listed.
    #[serde(default)]
    pub workers: u32,
    /// The CPU of each worker, in turn.
    #[serde(default)]
    pub worker_cpus: Vec<usize>,
}

fn pools64() -> u8 {
    64
}
fn yes() -> bool {
    true
}
fn mtu9014() -> u32 {
    9014
}
fn ring1024() -> u32 {
    1024
}
fn ring2048() -> u32 {
    2048
}
fn afxdp_mode() -> AfXdpMode {
    AfXdpMode::Auto
}
fn xdp_auto() -> XdpAttach {
    XdpAttach::Auto
}
fn link_wait_hw() -> f64 {
    10.0
}
fn link_wait_model() -> f64 {
    2.0
}

/// The switch's way out.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub enum Uplink {
    /// An Intel 82599 port: a hardware VMDq pool per VM port (frames are
    /// sorted to ports by the chip, and switched between them inside it).
    Intel10g {
        /// PCI address, e.g. "0000:01:00.0" (taken from its kernel driver).
        pci: String,
        /// VMDq pools: 64 (2 queues each) or 32 (4 queues each); at most
        /// that many ports.
        #[serde(default = "pools64")]
        pools: u8,
        /// Switch between ports inside the chip (PFDTXGSWC.LBE).
        #[serde(default = "yes")]
        vm_to_vm: bool,
        /// Largest frame, bytes without FCS.
        #[serde(default = "mtu9014")]
        mtu: u32,
        /// Seconds to wait for the link when the port is opened.
        #[serde(default = "link_wait_hw")]
        link_wait: f64,
        /// Descriptors per pool queue.
        #[serde(default = "ring1024")]
        rx_ring: u32,
        #[serde(default = "ring1024")]
        tx_ring: u32,
    },
    /// The software model of an 82599 port (`model:PORT`), driven through
    /// the same driver as real hardware: for trying the switch without one.
    Model {
        /// The model port's name.
        port: String,
        /// What the port is cabled to: a Linux interface (`Interface("veth0")`),
        /// a pcap file, another model port. Not with `traffic`.
        #[serde(default)]
        wire: Option<WireSpec>,
        /// Generated traffic arriving on the wire, from a second model port
        /// cabled to this one (`model:PORT-traffic`), each flow paced.
        #[serde(default)]
        traffic: Vec<Flow>,
        #[serde(default = "pools64")]
        pools: u8,
        #[serde(default = "yes")]
        vm_to_vm: bool,
        #[serde(default = "mtu9014")]
        mtu: u32,
        #[serde(default = "link_wait_model")]
        link_wait: f64,
        #[serde(default = "ring1024")]
        rx_ring: u32,
        #[serde(default = "ring1024")]
        tx_ring: u32,
    },
    /// A Linux interface (a NIC under its kernel driver, a veth, a tap)
    /// through AF_PACKET rings: frames are sorted to ports, and switched
    /// between them, by the software splitter.
    RawSocket {
        interface: String,
        /// Frames straight to the driver, past the queueing discipline.
        #[serde(default)]
        qdisc_bypass: bool,
        /// Switch between ports (else everything a port sends goes out).
        #[serde(default = "yes")]
        vm_to_vm: bool,
    },
    /// A Linux interface through AF_XDP sockets, one `AfXdp` app per
    /// receive queue (`uplink-qN`): the driver hands frames over at its XDP
    /// hook; the software splitter sorts them, as with RawSocket.
    AfXdp {
        interface: String,
        /// The receive queues to take. None (the default): every queue
        /// the interface has, so that no frame the NIC spreads by flow
        /// (RSS) misses the switch. A list (`[0]`): those only; the others
        /// go on to the host's own stack. Frames to the wire leave on the
        /// first queue listed.
        #[serde(default)]
        queues: Option<Vec<u32>>,
        /// Zero copy where the driver has it (`Auto`), `ZeroCopy` or refuse, `Copy`.
        #[serde(default = "afxdp_mode")]
        mode: AfXdpMode,
        /// Where the XDP program runs: `Auto` (native when the driver can), `Native`, `Generic`.
        #[serde(default = "xdp_auto")]
        xdp: XdpAttach,
        /// Take off another XDP program found on the interface (refused otherwise).
        #[serde(default)]
        replace: bool,
        /// Descriptors of each queue's RX and TX rings (powers of two).
        #[serde(default = "ring2048")]
        rx_ring: u32,
        #[serde(default = "ring2048")]
        tx_ring: u32,
        #[serde(default = "yes")]
        vm_to_vm: bool,
    },
}

impl Uplink {
    /// Whether ports get hardware pools (an 82599, real or modelled).
    pub fn is_82599(&self) -> bool {
        matches!(self, Uplink::Intel10g { .. } | Uplink::Model { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Uplink::Intel10g { pci, pools, vm_to_vm, .. } => format!(
                "82599 {pci}, VMDq with {pools} pools (one per port), VM-to-VM {}",
                if *vm_to_vm { "switched inside the chip" } else { "off" }
            ),
            Uplink::Model { port, pools, vm_to_vm, traffic, wire, .. } => {
                let wire = if !traffic.is_empty() {
                    format!("generated traffic on its wire ({} flows)", traffic.len())
                } else {
                    match wire {
                        None | Some(WireSpec::Unplugged) => "no wire".to_string(),
                        Some(w) => format!("wire {w:?}"),
                    }
                };
                format!(
                    "82599 model port model:{port} ({wire}), VMDq with {pools} pools (one per port), VM-to-VM {}",
                    if *vm_to_vm { "switched inside the chip" } else { "off" }
                )
            }
            Uplink::RawSocket { interface, vm_to_vm, .. } => format!(
                "Linux interface {interface} (AF_PACKET), ports sorted by the software splitter, VM-to-VM {}",
                if *vm_to_vm { "switched in software" } else { "off" }
            ),
            Uplink::AfXdp { interface, queues, vm_to_vm, .. } => format!(
                "Linux interface {interface} through AF_XDP ({}), ports sorted by the software splitter, VM-to-VM {}",
                match queues {
                    None => "every receive queue".to_string(),
                    Some(q) => format!("queue{} {}", if q.len() == 1 { "" } else { "s" }, list(q)),
                },
                if *vm_to_vm { "switched in software" } else { "off" }
            ),
        }
    }
}

/// Numbers as `0, 1, 3`.
pub fn list(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

fn frame60() -> usize {
    60
}

/// A flow of generated frames, paced.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// To a port of this switch: its first MAC (on its VLAN, from the uplink).
    #[serde(default)]
    pub to: Option<String>,
    /// Or to this address (and, from the uplink, this VLAN).
    #[serde(default)]
    pub dst: Option<MacAddr>,
    #[serde(default)]
    pub vlan: Option<u16>,
    /// The pace: Gbit/s of frames, or frames per second (one of them).
    #[serde(default)]
    pub gbps: Option<f64>,
    #[serde(default)]
    pub pps: Option<f64>,
    /// Frame size in bytes (without FCS).
    #[serde(default = "frame60")]
    pub size: usize,
}

fn simd() -> CopyMode {
    CopyMode::Simd
}
fn one() -> u16 {
    1
}
fn mtu1500() -> u16 {
    1500
}
fn ttl64() -> u8 {
    64
}

/// One VM port.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Names the port's apps (`NAME`, `NAME-pool`, ...), in `snabb-rs top` too.
    pub name: String,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// Listen on the socket (QEMU connects), or connect to it (QEMU
    /// listens, `server=on`; reconnects whenever QEMU or the switch restarts).
    #[serde(default = "yes")]
    pub server: bool,
    /// The guest's MAC addresses: frames to them go to this port.
    #[serde(default)]
    pub macs: Vec<MacAddr>,
    /// The port's VLAN: its frames are tagged with it on the uplink, and
    /// the guest sees them untagged. None: untagged on the uplink too.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// How frames from the NIC reach the guest: `Zero` (an 82599 writes
    /// them into the guest's buffers, lent to its pool) or `Simd` (copied
    /// into them by the port).
    #[serde(default = "simd")]
    pub copy: CopyMode,
    /// The guest's traffic travels in a tunnel on the uplink.
    #[serde(default)]
    pub tunnel: Option<PortTunnel>,
    /// What the guest receives: an optional filter and rate limit.
    #[serde(default)]
    pub to_guest: Direction,
    /// What the guest sends: an optional filter and rate limit.
    #[serde(default)]
    pub from_guest: Direction,
    /// Queue pairs offered to the guest.
    #[serde(default = "one")]
    pub queues: u16,
    /// MTU offered to the guest.
    #[serde(default = "mtu1500")]
    pub mtu: u16,
    /// Play the guest in this process with a `VirtioUser` app (to try the
    /// switch without a VM): what it receives is counted and dropped, and
    /// it sends the flows given.
    #[serde(default)]
    pub guest: Option<Guest>,
}

/// A filter and a rate limit for one direction of a port.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Direction {
    /// A pcap-filter (tcpdump) expression: frames that do not match are
    /// dropped and counted. Matched against the frame as the guest sees it
    /// (untagged, outside the tunnel).
    #[serde(default)]
    pub filter: Option<String>,
    /// A token bucket: `gbps`, `pps` (one or both), `burst_bytes`,
    /// `burst_packets`; frames over it are dropped and counted.
    #[serde(default)]
    pub limit: Option<RateLimiterArgs>,
}

/// A port's tunnel: the arguments of `Encap` (towards the uplink) and
/// `Decap` (from it), one endpoint's view.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortTunnel {
    pub tunnel: Tunnel,
    /// IP tunnels: the switch's outer MAC (the port's uplink address).
    #[serde(default)]
    pub local_mac: Option<MacAddr>,
    /// IP tunnels: the next hop towards `remote`.
    #[serde(default)]
    pub remote_mac: Option<MacAddr>,
    #[serde(default = "ttl64")]
    pub ttl: u8,
    #[serde(default)]
    pub src_port: Option<u16>,
    #[serde(default)]
    pub udp_checksum: Option<bool>,
    #[serde(default)]
    pub verify_udp_checksum: bool,
}

impl PortTunnel {
    /// Whether the tunnel has outer Ethernet and IP headers of its own.
    pub fn is_ip(&self) -> bool {
        !matches!(self.tunnel, Tunnel::Vlan { .. } | Tunnel::QinQ { .. })
    }
}

/// A guest played in this process.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub enum Guest {
    VirtioUser {
        /// Flows the guest sends (to another port, or out of the uplink).
        #[serde(default)]
        send: Vec<Flow>,
    },
}

impl Port {
    /// The addresses the uplink sorts to this port: an IP tunnel's local
    /// MAC, or the guest's.
    pub fn pool_macs(&self) -> Vec<MacAddr> {
        match &self.tunnel {
            Some(t) if t.is_ip() => t.local_mac.into_iter().collect(),
            _ => self.macs.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// Where things are in the file.

/// A parsed config and the places of its parts.
#[derive(Debug, Clone)]
pub struct Vswitch {
    pub file: Option<String>,
    pub uplink: Option<Uplink>,
    pub ports: Vec<Port>,
    pub workers: u32,
    pub worker_cpus: Vec<usize>,
    text: String,
    /// Byte offsets: the uplink, and each port.
    uplink_at: Option<usize>,
    ports_at: Vec<usize>,
    /// The `ports: [` list, for errors about the list as a whole.
    list_at: Option<usize>,
}

/// A place in the config: the uplink, or port `i`, optionally a field of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    Uplink(Option<&'a str>),
    Port(usize, Option<&'a str>),
}

/// The shape of the file, for offsets: the raw text of the uplink and of
/// each port (borrowed from the file, so its address gives its place).
#[derive(Deserialize)]
struct Shape<'a> {
    #[serde(borrow, default, deserialize_with = "some_raw")]
    uplink: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ports: Vec<&'a RawValue>,
}

fn some_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Line and column (1-based) of byte `offset` of `text`.
pub fn pos_of(text: &str, offset: usize) -> Pos {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Pos { line, col }
}

/// Parse a vswitch config; `file` names it in errors.
pub fn parse(text: &str, file: Option<&str>) -> Result<Vswitch, ConfigError> {
    let err =
        |line, col, msg: String| ConfigError { file: file.map(str::to_string), pos: Some(Pos { line, col }), msg };
    let typed: VswitchFile =
        ron_options().from_str(text).map_err(|e| err(e.span.start.line, e.span.start.col, e.code.to_string()))?;
    let shape: Shape =
        ron_options().from_str(text).map_err(|e| err(e.span.start.line, e.span.start.col, e.code.to_string()))?;
    let offset = |s: &str| s.as_ptr() as usize - text.as_ptr() as usize;
    let list_at = find_field(text, 0, "ports");
    Ok(Vswitch {
        file: file.map(str::to_string),
        uplink: typed.uplink,
        ports: typed.ports,
        workers: typed.workers,
        worker_cpus: typed.worker_cpus,
        text: text.to_string(),
        uplink_at: shape.uplink.map(|r| offset(r.get_ron())),
        ports_at: shape.ports.iter().map(|r| offset(r.get_ron())).collect(),
        list_at,
    })
}

/// Read and parse a vswitch config file.
pub fn from_file(path: &std::path::Path) -> Result<Vswitch, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(name.clone()),
        pos: None,
        msg: format!("cannot read: {e}"),
    })?;
    parse(&text, Some(&name))
}

/// Whether `text` looks like a vswitch config (an uplink and ports) rather
/// than an app graph (apps and links).
pub fn looks_like_vswitch(text: &str) -> bool {
    (find_field(text, 0, "ports").is_some() || find_field(text, 0, "uplink").is_some())
        && find_field(text, 0, "apps").is_none()
}

impl Vswitch {
    /// An error at `place`, with file:line:col when the config came from text.
    pub fn error_at(&self, place: Place, msg: impl Into<String>) -> ConfigError {
        let at = match place {
            Place::Uplink(field) => {
                self.uplink_at.map(|u| field.and_then(|f| find_field(&self.text, u, f)).unwrap_or(u))
            }
            Place::Port(i, field) => {
                self.ports_at.get(i).map(|&p| field.and_then(|f| find_field(&self.text, p, f)).unwrap_or(p))
            }
        };
        let at = at.or(match place {
            Place::Port(..) => self.list_at,
            _ => None,
        });
        ConfigError { file: self.file.clone(), pos: at.map(|o| pos_of(&self.text, o)), msg: msg.into() }
    }

    pub fn port_index(&self, name: &str) -> Option<usize> {
        self.ports.iter().position(|p| p.name == name)
    }

    /// Everything that can be wrong without looking at the machine.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut sockets: BTreeMap<PathBuf, usize> = BTreeMap::new();
        // (MAC, VLAN or 0) -> port.
        let mut owners: BTreeMap<(MacAddr, u16), usize> = BTreeMap::new();
        for (i, p) in self.ports.iter().enumerate() {
            let at = |field| Place::Port(i, Some(field));
            let name = p.name.as_str();
            if !snabb_core::config::valid_name(name) {
                return Err(self.error_at(at("name"), format!("port name `{name}`: letters, digits, `_`, `-` only")));
            }
            if RESERVED.contains(&name) || name.starts_with("uplink-") {
                return Err(self.error_at(
                    at("name"),
                    format!(
                        "port name `{name}` is taken by the switch's own apps ({}, and `uplink-` names)",
                        RESERVED.join(", ")
                    ),
                ));
            }
            if let Some(&j) = names.get(name) {
                return Err(self.error_at(at("name"), format!("port `{name}` is defined twice (also port {})", j + 1)));
            }
            names.insert(name, i);
            if p.socket.as_os_str().is_empty() {
                return Err(
                    self.error_at(at("socket"), format!("port `{name}`: socket: give the vhost-user socket's path"))
                );
            }
            let sock: PathBuf = p.socket.components().collect();
            if let Some(&j) = sockets.get(&sock) {
                return Err(self.error_at(
                    at("socket"),
                    format!(
                        "port `{name}`: socket {} is port `{}`'s too: one socket serves one port",
                        p.socket.display(),
                        self.ports[j].name
                    ),
                ));
            }
            sockets.insert(sock, i);
            if let Some(v) = p.vlan
                && !(1..=4094).contains(&v)
            {
                return Err(self.error_at(
                    at("vlan"),
                    format!(
                        "port `{name}`: VLAN {v} is out of range: 1 to 4094 (0 marks priority tags, 4095 is reserved)"
                    ),
                ));
            }
            for (k, m) in p.macs.iter().enumerate() {
                if !m.is_unicast() || m.0 == [0; 6] {
                    return Err(self.error_at(
                        at("macs"),
                        format!("port `{name}`: {m} is not a unicast address a guest can have"),
                    ));
                }
                if p.macs[..k].contains(m) {
                    return Err(self.error_at(at("macs"), format!("port `{name}`: MAC {m} is listed twice")));
                }
            }
            if let Some(t) = &p.tunnel
                && t.is_ip()
                && (t.local_mac.is_none() || t.remote_mac.is_none())
            {
                return Err(self.error_at(
                    at("tunnel"),
                    format!(
                        "port `{name}`: a {} tunnel needs local_mac (the port's address on the uplink) and remote_mac (the next hop)",
                        t.tunnel.kind()
                    ),
                ));
            }
            let macs = p.pool_macs();
            if macs.is_empty() {
                return Err(self.error_at(
                    at("macs"),
                    format!(
                        "port `{name}`: macs: give the guest's MAC address: the uplink sorts frames to ports by it"
                    ),
                ));
            }
            let field = if p.tunnel.as_ref().is_some_and(PortTunnel::is_ip) { "tunnel" } else { "macs" };
            for m in macs {
                let key = (m, p.vlan.unwrap_or(0));
                if let Some(&j) = owners.get(&key) {
                    let on = p.vlan.map_or("untagged".to_string(), |v| format!("on VLAN {v}"));
                    return Err(self.error_at(
                        at(field),
                        format!(
                            "port `{name}`: MAC {m} {on} is port `{}`'s already: an address belongs to one port per VLAN",
                            self.ports[j].name
                        ),
                    ));
                }
                owners.insert(key, i);
            }
            for (dir, d) in [("to_guest", &p.to_guest), ("from_guest", &p.from_guest)] {
                if let Some(f) = &d.filter {
                    snabb_apps_pcap_filter::compile(f)
                        .map_err(|e| self.error_at(at(dir), format!("port `{name}`: {dir}: {e}")))?;
                }
                if let Some(l) = &d.limit {
                    l.validate().map_err(|e| self.error_at(at(dir), format!("port `{name}`: {dir}: limit: {e}")))?;
                }
            }
        }
        if let Some(u) = &self.uplink {
            let pools = match u {
                Uplink::Intel10g { pools, .. } | Uplink::Model { pools, .. } => Some(*pools),
                Uplink::RawSocket { .. } | Uplink::AfXdp { .. } => None,
            };
            if let Some(n) = pools {
                if n != 64 && n != 32 {
                    return Err(self.error_at(
                        Place::Uplink(Some("pools")),
                        format!("uplink: pools {n}: the 82599 has 64 (2 queues each) or 32 (4 queues each)"),
                    ));
                }
                if self.ports.len() > n as usize {
                    return Err(self.error_at(
                        Place::Port(n as usize, Some("name")),
                        format!(
                            "port `{}`: {} ports, but the 82599 has {n} VMDq pools (one per port){}",
                            self.ports[n as usize].name,
                            self.ports.len(),
                            if n == 32 { "; `pools: 64` gives 64" } else { "" }
                        ),
                    ));
                }
            }
            if let Uplink::Model { wire: Some(w), traffic, .. } = u
                && !traffic.is_empty()
                && *w != WireSpec::Unplugged
            {
                return Err(self.error_at(
                    Place::Uplink(Some("traffic")),
                    format!("uplink: traffic comes on the wire from a generator port: no other wire ({w:?}) with it"),
                ));
            }
            if let Uplink::AfXdp { queues: Some(q), .. } = u {
                if q.is_empty() {
                    return Err(self.error_at(
                        Place::Uplink(Some("queues")),
                        "uplink: queues: list at least one queue, or leave it out for all of them",
                    ));
                }
                if let Some(k) = (1..q.len()).find(|&k| q[..k].contains(&q[k])) {
                    return Err(self.error_at(
                        Place::Uplink(Some("queues")),
                        format!("uplink: queues: queue {} is listed twice", q[k]),
                    ));
                }
            }
            if let Some(args) = self.afxdp_args().first() {
                args.check().map_err(|e| self.error_at(Place::Uplink(None), format!("uplink: {e:#}")))?;
            }
            if let Uplink::Model { port, .. } = u
                && (port.is_empty() || !port.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)))
            {
                return Err(self.error_at(
                    Place::Uplink(Some("port")),
                    format!("uplink: model port name `{port}`: letters, digits, `_`, `-`"),
                ));
            }
        }
        // Flows name ports that exist, and say how fast.
        let flows = self
            .ports
            .iter()
            .enumerate()
            .flat_map(|(i, p)| match &p.guest {
                Some(Guest::VirtioUser { send }) => send.iter().map(|f| (Place::Port(i, Some("guest")), f)).collect(),
                None => Vec::new(),
            })
            .chain(match &self.uplink {
                Some(Uplink::Model { traffic, .. }) => {
                    traffic.iter().map(|f| (Place::Uplink(Some("traffic")), f)).collect()
                }
                _ => Vec::new(),
            });
        for (place, f) in flows {
            match (&f.to, f.dst) {
                (Some(to), None) => {
                    if self.port_index(to).is_none() {
                        return Err(self.error_at(place, format!("flow to `{to}`: there is no port of that name")));
                    }
                }
                (None, Some(_)) => {}
                _ => return Err(self.error_at(place, "a flow goes `to` a port or to a `dst` address: give one")),
            }
            if f.gbps.is_some() == f.pps.is_some() {
                return Err(self.error_at(
                    place,
                    "a flow is paced: give `gbps` or `pps` (one of them), so that what it offers is what you asked for",
                ));
            }
            if let Some(v) = f.vlan
                && !(1..=4094).contains(&v)
            {
                return Err(self.error_at(place, format!("flow: VLAN {v} is out of range: 1 to 4094")));
            }
        }
        Ok(())
    }

    /// An AF_XDP uplink's receive queues: those listed, or every one the
    /// interface has (queue 0 when there is no such interface here).
    pub fn afxdp_queues(&self) -> Vec<u32> {
        match &self.uplink {
            Some(Uplink::AfXdp { queues: Some(q), .. }) => q.clone(),
            Some(Uplink::AfXdp { interface, queues: None, .. }) => {
                (0..snabb_apps_afxdp::rx_queue_count(interface).unwrap_or(1)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// An AF_XDP uplink's apps' arguments, one per queue, in queue order
    /// as listed (the first sends).
    pub fn afxdp_args(&self) -> Vec<AfXdpArgs> {
        let Some(Uplink::AfXdp { interface, mode, xdp, replace, rx_ring, tx_ring, .. }) = &self.uplink else {
            return Vec::new();
        };
        self.afxdp_queues()
            .into_iter()
            .map(|queue| AfXdpArgs {
                queue,
                mode: *mode,
                xdp: *xdp,
                replace: *replace,
                rx_ring: *rx_ring,
                tx_ring: *tx_ring,
                ..AfXdpArgs::new(interface)
            })
            .collect()
    }

    /// What this machine must have for the config: the uplink's interface
    /// or PCI device; for AF_XDP also the queues, the privileges, and an
    /// interface no one else has an XDP program on. Run before anything
    /// starts, and before a reload is applied.
    pub fn check_machine(&self) -> Result<(), ConfigError> {
        match &self.uplink {
            Some(Uplink::RawSocket { interface, .. } | Uplink::AfXdp { interface, .. })
                if !std::path::Path::new("/sys/class/net").join(interface).exists() =>
            {
                return Err(self.error_at(
                    Place::Uplink(Some("interface")),
                    format!("uplink: no interface `{interface}` on this machine (see `ip link`)"),
                ));
            }
            Some(Uplink::AfXdp { interface, replace, .. }) => {
                self.check_afxdp(interface, *replace)?;
            }
            Some(Uplink::Model { wire: Some(WireSpec::Interface(i)), .. })
                if !std::path::Path::new("/sys/class/net").join(i).exists() =>
            {
                return Err(self.error_at(
                    Place::Uplink(Some("wire")),
                    format!("uplink: the model's wire: no interface `{i}` on this machine (see `ip link`)"),
                ));
            }
            Some(Uplink::Intel10g { pci, .. }) => {
                let addr = snabb_apps_intel10g::pci::canonical_address(pci)
                    .map_err(|e| self.error_at(Place::Uplink(Some("pci")), format!("uplink: {e:#}")))?;
                let dev = std::path::Path::new("/sys/bus/pci/devices").join(&addr);
                if !dev.exists() {
                    return Err(self.error_at(
                        Place::Uplink(Some("pci")),
                        format!("uplink: no PCI device {addr} on this machine (see `lspci -D`)"),
                    ));
                }
                let id = |f: &str| {
                    std::fs::read_to_string(dev.join(f))
                        .ok()
                        .and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
                };
                if let (Some(v), Some(d)) = (id("vendor"), id("device"))
                    && snabb_apps_intel10g::pci::model_name(v, d).is_none()
                {
                    return Err(self.error_at(
                        Place::Uplink(Some("pci")),
                        format!("uplink: {addr} is device {v:04x}:{d:04x}, not an Intel 82599"),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Vswitch {
    fn check_afxdp(&self, interface: &str, replace: bool) -> Result<(), ConfigError> {
        let have = snabb_apps_afxdp::rx_queue_count(interface).unwrap_or(1);
        if let Some(Uplink::AfXdp { queues: Some(q), .. }) = &self.uplink
            && let Some(bad) = q.iter().find(|&&n| n >= have)
        {
            return Err(self.error_at(
                Place::Uplink(Some("queues")),
                format!(
                    "uplink: interface `{interface}` has {have} receive queue{}: there is no queue {bad} (see `ethtool -l {interface}`)",
                    if have == 1 { "" } else { "s" }
                ),
            ));
        }
        let umem: u64 = self.afxdp_args().iter().map(AfXdpArgs::umem_bytes).sum();
        let missing = snabb_apps_afxdp::missing_privileges(umem);
        if !missing.is_empty() {
            return Err(self.error_at(
                Place::Uplink(None),
                format!(
                    "uplink: AF_XDP on `{interface}` needs {} that this process lacks (the socket needs CAP_NET_RAW, \
                     its XDP program CAP_BPF and CAP_NET_ADMIN, its {} MiB of UMEM CAP_IPC_LOCK or as much locked \
                     memory, `ulimit -l`): run it as root",
                    missing.join(", "),
                    umem >> 20
                ),
            ));
        }
        let ifindex = std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = ifindex.and_then(snabb_apps_afxdp::attach::lock_holder) {
            return Err(self.error_at(
                Place::Uplink(Some("interface")),
                format!(
                    "uplink: interface `{interface}` is in use by another snabb-rs process (pid {pid}): one process per interface"
                ),
            ));
        }
        if !replace {
            let other = snabb_apps_afxdp::foreign_programs(interface)
                .map_err(|e| self.error_at(Place::Uplink(Some("interface")), format!("uplink: {e:#}")))?;
            if let Some((mode, id, name)) = other.first() {
                return Err(self.error_at(
                    Place::Uplink(Some("interface")),
                    format!(
                        "uplink: interface `{interface}` already has an XDP program ({} mode, id {id}, `{name}`): \
                         stop its owner, or set `replace: true` to take it off",
                        mode.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Port names the switch uses for its own apps.
pub const RESERVED: &[&str] = &["uplink", "switch"];

/// The byte offset of field `name` (`name:`) at the top level of the RON
/// value that starts at `from` (a struct, possibly named: `Name(...)`), if
/// it is there. Strings and comments are skipped.
pub fn find_field(text: &str, from: usize, name: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = from;
    let mut depth = 0usize;
    let mut started = false;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                started = true;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if started && depth == 0 {
                    return None;
                }
            }
            c if depth == 1 && (c.is_ascii_alphabetic() || c == b'_') => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &text[start..i];
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if word == name && b.get(j) == Some(&b':') {
                    return Some(start);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"// a comment with ports: in it
(
    uplink: Model(port: "up", traffic: [(to: "vm1", gbps: 1.0)]),
    ports: [
        (name: "vm1", socket: "/tmp/a.sock", macs: ["52:54:00:00:00:01"], vlan: 10),
        (
            name: "vm2",   /* the second */
            socket: "/tmp/b.sock",
            macs: ["52:54:00:00:00:02"],
            vlan: Some(20),
            to_guest: (filter: "ip", limit: (gbps: 1.0)),
        ),
    ],
)
"#;

    fn with(port2: &str) -> String {
        GOOD.replace("vlan: Some(20),", port2)
    }

    fn err(text: &str) -> String {
        let v = parse(text, Some("v.ron")).unwrap();
        v.check().unwrap_err().to_string()
    }

    #[test]
    fn parses_and_checks() {
        let v = parse(GOOD, Some("v.ron")).unwrap();
        v.check().unwrap();
        assert_eq!(v.ports.len(), 2);
        assert_eq!(v.ports[0].vlan, Some(10));
        assert_eq!(v.ports[1].copy, CopyMode::Simd);
        assert!(v.ports[0].server);
        assert_eq!(v.ports[1].to_guest.limit.as_ref().unwrap().gbps, Some(1.0));
        assert!(looks_like_vswitch(GOOD));
        assert!(!looks_like_vswitch("(apps: {}, links: [])"));
        assert_eq!(v.error_at(Place::Port(1, Some("socket")), "x").to_string(), "v.ron:8:13: x");
        assert_eq!(v.error_at(Place::Port(0, None), "x").to_string(), "v.ron:5:9: x");
        assert_eq!(v.error_at(Place::Uplink(Some("traffic")), "x").to_string(), "v.ron:3:31: x");
    }

    #[test]
    fn mistakes_are_placed() {
        let e = err(&with("vlan: Some(4095),"));
        assert!(e.starts_with("v.ron:10:13: port `vm2`: VLAN 4095 is out of range"), "{e}");
        let e = err(&GOOD.replace(
            "52:54:00:00:00:02\"],\n            vlan: Some(20)",
            "52:54:00:00:00:01\"],\n            vlan: Some(10)",
        ));
        assert!(e.starts_with("v.ron:9:13: port `vm2`: MAC 52:54:00:00:00:01 on VLAN 10 is port `vm1`'s"), "{e}");
        let e = err(&GOOD.replace("/tmp/b.sock", "/tmp//a.sock"));
        assert!(e.starts_with("v.ron:8:13: port `vm2`: socket /tmp//a.sock is port `vm1`'s too"), "{e}");
        let e = err(&GOOD.replace("\"vm2\"", "\"vm1\""));
        assert!(e.starts_with("v.ron:7:13: port `vm1` is defined twice"), "{e}");
        let e = err(&GOOD.replace("\"vm2\"", "\"uplink\""));
        assert!(e.contains("taken by the switch"), "{e}");
        let e = err(&GOOD.replace("filter: \"ip\"", "filter: \"tcp prot 80\""));
        assert!(e.starts_with("v.ron:11:13: port `vm2`: to_guest: filter `tcp prot 80`"), "{e}");
        let e = err(&GOOD.replace("to: \"vm1\"", "to: \"vm9\""));
        assert!(e.starts_with("v.ron:3:31: flow to `vm9`"), "{e}");
        let e = err(&GOOD.replace("gbps: 1.0)]", "size: 64)]"));
        assert!(e.contains("a flow is paced"), "{e}");
        let e = err(&GOOD.replace("port: \"up\",", "port: \"up\", pools: 32, wire: Interface(\"x\"),"));
        assert!(e.contains("no other wire"), "{e}");
        let e = err(&GOOD.replace("macs: [\"52:54:00:00:00:01\"], ", ""));
        assert!(e.starts_with("v.ron:5:9: port `vm1`: macs: give the guest's MAC"), "{e}");
        let e = err(&GOOD.replace("\"52:54:00:00:00:01\"", "\"01:00:5e:00:00:01\""));
        assert!(e.contains("not a unicast address"), "{e}");
    }

    #[test]
    fn more_ports_than_pools() {
        let ports: String = (0..33)
            .map(|i| format!("(name: \"p{i}\", socket: \"/tmp/{i}.sock\", macs: [\"52:54:00:00:01:{i:02x}\"]),\n"))
            .collect();
        let text = format!("(uplink: Intel10g(pci: \"0000:01:00.0\", pools: 32),\nports: [\n{ports}])");
        let e = err(&text);
        assert!(e.starts_with("v.ron:35:2: port `p32`: 33 ports, but the 82599 has 32 VMDq pools"), "{e}");
        let e = err(&text.replace("pools: 32", "pools: 16"));
        assert!(e.starts_with("v.ron:1:40: uplink: pools 16"), "{e}");
        // Software: no limit here (the splitter takes 64).
        let text = format!("(uplink: RawSocket(interface: \"eth0\"),\nports: [\n{ports}])");
        parse(&text, None).unwrap().check().unwrap();
    }

    #[test]
    fn syntax_errors_and_unknown_uplinks_have_positions() {
        let e = parse("(\n  uplink: Intel40g(pci: \"x\"),\n)", Some("v.ron")).unwrap_err().to_string();
        assert!(e.starts_with("v.ron:2:") && e.contains("Intel40g"), "{e}");
        let e = parse("(\n ports: [(name: \"a\", sockett: \"b\")],\n)", Some("v.ron")).unwrap_err().to_string();
        assert!(e.starts_with("v.ron:2:") && e.contains("sockett"), "{e}");
        let v = parse("(uplink: RawSocket(interface: \"nosuchif9\"))", Some("v.ron")).unwrap();
        v.check().unwrap();
        let e = v.check_machine().unwrap_err().to_string();
        assert!(e.starts_with("v.ron:1:20: uplink: no interface `nosuchif9`"), "{e}");
        let v = parse("(uplink: Intel10g(\n pci: \"0000:7f:1f.7\"))", Some("v.ron")).unwrap();
        let e = v.check_machine().unwrap_err().to_string();
        assert!(e.starts_with("v.ron:2:2: uplink: no PCI device 0000:7f:1f.7"), "{e}");
    }

    #[test]
    fn afxdp_uplink_mistakes() {
        let text = "(\n uplink: AfXdp(interface: \"eth9\", queues: []),\n)";
        let e = err(text);
        assert!(e.starts_with("v.ron:2:35: uplink: queues: list at least one queue"), "{e}");
        let e = err(&text.replace("[]", "[0, 3, 0]"));
        assert!(e.contains("queue 0 is listed twice"), "{e}");
        let e = err(&text.replace("queues: []", "rx_ring: 1000"));
        assert!(e.starts_with("v.ron:2:10: uplink: rx_ring 1000: a power of two"), "{e}");
        let e = parse(&text.replace("queues: []", "mode: Fast"), Some("v.ron")).unwrap_err().to_string();
        assert!(e.starts_with("v.ron:2:") && e.contains("Fast"), "{e}");
        let v = parse(&text.replace("queues: []", "queues: [0, 7]").replace("eth9", "lo"), Some("v.ron")).unwrap();
        v.check().unwrap();
        let e = v.check_machine().unwrap_err().to_string();
        assert!(e.starts_with("v.ron:2:33: uplink: interface `lo` has 1 receive queue: there is no queue 7"), "{e}");
        let e = err(&GOOD.replace("\"vm2\"", "\"uplink-q0\""));
        assert!(e.contains("taken by the switch"), "{e}");
    }

    #[test]
    fn find_field_skips_strings_comments_and_nesting() {
        let t = r#"Port(a: "name: x", /* name: */ b: (name: 1), // name:
 name: 2)"#;
        assert_eq!(find_field(t, 0, "name"), Some(t.rfind("name").unwrap()));
        assert_eq!(find_field(t, 0, "c"), None);
    }
}
