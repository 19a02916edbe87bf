//! The `VhostUser` app: a switch port whose other end is a virtio-net
//! frontend (a QEMU guest, DPDK virtio-user) on a vhost-user socket.
//!
//! | class       | ports                                                  | does                          |
//! |-------------|--------------------------------------------------------|-------------------------------|
//! | `VhostUser` | in: `input` (to the guest); out: `output` (from it), `supply` (lent receive buffers) | one virtio-net device |
//!
//! Args: `(socket: "/path", server: true, queues: 1, mtu: 1500, mac: None)`;
//! `queues` is the number of queue pairs offered, `mac` (e.g.
//! `Some("52:54:00:12:34:56")`) is offered as VIRTIO_NET_F_MAC and used for
//! nothing else.
//!
//! The socket is served from `tick` (1 kHz): one non-blocking receive per
//! tick when no message waits, so the breath loop itself makes no system
//! call for the control path. The data path runs in `pull` (guest TX queues
//! to `output`) and `push` (`input` to the guest's RX queues, a different
//! queue first each breath). With `server: true` the app listens (a stale
//! socket file is removed) and serves one frontend at a time; with
//! `server: false` it connects, and reconnects with back-off (10 ms doubling
//! to 1 s) whenever the frontend goes away. A frontend that disconnects or
//! sends a malformed message loses its connection: its queues stop, its
//! memory is unmapped, and the app waits for the next one.
//!
//! Moving to another worker keeps the connection: the port gets back what
//! it lent while the move waits (`prepare_move`), and its instance on the
//! new worker takes the connection over (see `snabb_core::handoff`), with its
//! counters. The guest sees nothing.
//!
//! Zero copy. With a `supply` output linked (to an `Intel10g` pool's
//! `supply` input) and both it and `input` in `copy: Zero`, the port lends
//! the guest's receive buffers: the NIC writes frames straight into them,
//! and they come back full on `input`, where the port writes the net header
//! and the used entry without copying the frame. With `output` in `copy:
//! Zero`, long transmitted frames leave as split packets (headers copied,
//! the rest lent) and their chains go on the used ring once the packet is
//! sent or dropped. Lent buffers come back in any order, so IN_ORDER is
//! offered only when the links lend nothing (a guest that negotiated it is
//! copied for until it connects again). Before a control message that
//! changes or stops rings, lending stops and the message waits until every
//! lent buffer is back (a NIC gives back what it holds when the owner is
//! revoked), at most QUIESCE_TIMEOUT.
//!
//! Counters (over all connections): `rx_*` is what came from the guest,
//! `tx_*` what went to it, each queue counter of [`QueueStats`] summed over
//! the queues of that direction (`rx_packets`, `tx_bytes`, `tx_no_room`,
//! `rx_bad_descriptor` ...). `tx_no_guest`: packets on `input` discarded
//! while no receive queue ran; `tx_backlog_drops`: packets for the guest
//! dropped because it had no receive buffers for them while half of `input`
//! was already waiting (see `push`); `rx_no_output`: guest packets dropped
//! for want of an `output` link. `connections`, `disconnects`,
//! `refused_connections` (a second frontend), `protocol_errors` (malformed
//! messages), `request_errors` (requests refused), `broken_queues`,
//! `rarp_sent`, `handoffs` (the connection taken over from the port's
//! instance on the worker it moved from), and `link_up` (1 while a guest
//! has queues running; the guest itself always sees its link up in the
//! config space). Zero copy:
//! `tx_zc_packets` (frames delivered in lent buffers), `tx_copied_bytes`,
//! `tx_zc_unsuitable`, `tx_zc_moved_bytes`, `tx_zc_unused`, `tx_zc_chained`
//! (frames merged over several lent buffers),
//! `rx_zc_packets` (frames sent from lent buffers), `rx_copied_bytes`,
//! `rx_zc_bound`, `zc_unreachable`, `zc_in_order`, `zc_lent` (buffers out
//! now), `quiesces`, `quiesce_timeouts`.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;
use snabb_core::{App, AppClass, AppContext, Io, MacAddr, Packet, PortSpec, Registry};

use crate::channel::{Channel, Listener, listen};
use crate::device::{Device, DeviceConfig, LendStats, add_stats, rarp_frame};
use crate::protocol::{FLAG_REPLY, Header, Message, ProtocolError, VERSION};
use crate::virtq::QueueStats;
use snabb_core::handoff;

/// Messages served per tick at most (the rest wait for the next tick).
const MESSAGES_PER_TICK: usize = 64;
/// How long a control message waits for lent buffers to come back.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

fn yes() -> bool {
    true
}
fn one() -> u16 {
    1
}
fn default_mtu() -> u16 {
    1500
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VhostUserArgs {
    /// The vhost-user unix socket.
    pub socket: PathBuf,
    /// Listen (true) or connect (false).
    #[serde(default = "yes")]
    pub server: bool,
    /// Queue pairs offered (1..=128).
    #[serde(default = "one")]
    pub queues: u16,
    /// MTU offered in the config space (68..=9216).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The guest's MAC, "xx:xx:xx:xx:xx:xx".
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

impl VhostUserArgs {
    pub fn new(socket: impl Into<PathBuf>) -> VhostUserArgs {
        VhostUserArgs { socket: socket.into(), server: true, queues: 1, mtu: 1500, mac: None }
    }
}

/// How the app finds its frontend.
enum Endpoint {
    Server(Listener),
    Client { next_try: Instant, backoff: Duration, failures: u64 },
}

struct Connection {
    chan: Channel,
    dev: Device,
}

/// Counts kept over connections.
#[derive(Default, Clone, Debug)]
struct Totals {
    to_guest: QueueStats,
    from_guest: QueueStats,
    tx_no_guest: u64,
    tx_backlog_drops: u64,
    rx_no_output: u64,
    connections: u64,
    disconnects: u64,
    protocol_errors: u64,
    request_errors: u64,
    broken_queues: u64,
    rarp_sent: u64,
    refused: u64,
    handoffs: u64,
    lend: LendStats,
}

pub struct VhostUser {
    name: String,
    args: VhostUserArgs,
    cfg: DeviceConfig,
    endpoint: Endpoint,
    conn: Option<Connection>,
    /// Counts of connections that ended.
    past: Totals,
    /// MACs to announce (SEND_RARP) on the output.
    rarp: Vec<[u8; 6]>,
    /// Positions of the `input` and `output` ports (resolved in `link`).
    ports: (Option<usize>, Option<usize>),
    /// Position of the `supply` output (lent receive buffers), if linked.
    supply: Option<usize>,
    /// A control message waiting for lent buffers to come back, and since when.
    held: Option<(Message, Instant)>,
    /// Since when the port prepares to move (lending stopped for it).
    moving: Option<Instant>,
}

/// A connection on its way to the port's instance on another worker.
struct Handoff {
    conn: Connection,
    held: Option<(Message, Instant)>,
    rarp: Vec<[u8; 6]>,
    past: Totals,
}

// SAFETY: what ties a Device to its thread is its BufferOwners (the
// thread's packet state); a Handoff is made only from a device that
// `lends_nothing()` (checked in `park`). The rest is owned memory, file
// descriptors and guest mappings, which any thread may use once this one
// let go of them.
unsafe impl Send for Handoff {}

// The rest of a Handoff is Send as it is.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Channel>();
    send::<Message>();
    send::<Totals>();
};

impl AppClass for VhostUser {
    type Args = VhostUserArgs;
    const PORTS: PortSpec = PortSpec::new(&["input"], &["output", "supply"]);
    fn validate(args: &VhostUserArgs) -> anyhow::Result<()> {
        device_config(args).map(drop)
    }
    fn new(args: VhostUserArgs, ctx: &AppContext) -> anyhow::Result<VhostUser> {
        let cfg = device_config(&args)?;
        let endpoint = endpoint(&args, ctx.name)?;
        Ok(VhostUser {
            name: ctx.name.to_string(),
            args,
            cfg,
            endpoint,
            conn: None,
            past: Totals::default(),
            rarp: Vec::new(),
            ports: (None, None),
            supply: None,
            held: None,
            moving: None,
        })
    }

    /// New arguments in place: a new socket (or mode) drops the frontend and
    /// starts over on the new one; new queues, MTU or MAC apply from the
    /// next connection (a running guest keeps what it negotiated).
    fn reconfigure(&mut self, args: VhostUserArgs, _ctx: &AppContext) -> anyhow::Result<bool> {
        let mut cfg = device_config(&args)?;
        cfg.in_order = self.cfg.in_order;
        if args.socket != self.args.socket || args.server != self.args.server {
            self.disconnect();
            // The old listener goes first, so that the same path can be bound again.
            self.endpoint = Endpoint::Client { next_try: Instant::now(), backoff: BACKOFF_MIN, failures: 0 };
            self.endpoint = endpoint(&args, &self.name)?;
        } else if self.conn.is_some()
            && (cfg.queue_pairs, cfg.mtu, cfg.mac) != (self.cfg.queue_pairs, self.cfg.mtu, self.cfg.mac)
        {
            log::info!("{}: new queues/mtu/mac apply from the next connection", self.name);
        }
        self.cfg = cfg;
        self.args = args;
        Ok(true)
    }
}

/// Add the counts of `b` to `a`.
fn add_totals(a: &mut Totals, b: &Totals) {
    let Totals {
        to_guest,
        from_guest,
        tx_no_guest,
        tx_backlog_drops,
        rx_no_output,
        connections,
        disconnects,
        protocol_errors,
        request_errors,
        broken_queues,
        rarp_sent,
        refused,
        handoffs,
        lend,
    } = b;
    add_stats(&mut a.to_guest, to_guest);
    add_stats(&mut a.from_guest, from_guest);
    a.tx_no_guest += tx_no_guest;
    a.tx_backlog_drops += tx_backlog_drops;
    a.rx_no_output += rx_no_output;
    a.connections += connections;
    a.disconnects += disconnects;
    a.protocol_errors += protocol_errors;
    a.request_errors += request_errors;
    a.broken_queues += broken_queues;
    a.rarp_sent += rarp_sent;
    a.refused += refused;
    a.handoffs += handoffs;
    add_lend_stats(&mut a.lend, lend);
}

fn add_lend_stats(a: &mut LendStats, b: &LendStats) {
    let LendStats { unreachable, in_order, quiesces, quiesce_timeouts } = b;
    a.unreachable += unreachable;
    a.in_order += in_order;
    a.quiesces += quiesces;
    a.quiesce_timeouts += quiesce_timeouts;
}

fn device_config(args: &VhostUserArgs) -> anyhow::Result<DeviceConfig> {
    anyhow::ensure!((1..=128).contains(&args.queues), "queues {}: must be 1..=128 queue pairs", args.queues);
    anyhow::ensure!((68..=9216).contains(&args.mtu), "mtu {}: must be 68..=9216", args.mtu);
    Ok(DeviceConfig { queue_pairs: args.queues, mtu: args.mtu, mac: args.mac.map(|m| m.0), in_order: true })
}

fn endpoint(args: &VhostUserArgs, name: &str) -> anyhow::Result<Endpoint> {
    Ok(if args.server {
        Endpoint::Server(listen(&args.socket, name)?)
    } else {
        Endpoint::Client { next_try: Instant::now(), backoff: BACKOFF_MIN, failures: 0 }
    })
}

impl VhostUser {
    /// Find a frontend if there is none: take over the one the port's
    /// instance on another worker left (a move), accept one, or try to
    /// connect.
    fn attach(&mut self) {
        if self.adopt() {
            return;
        }
        // The port's instance on the worker it moves from will leave its
        // connection: a second one (a client's connect would succeed, and
        // the frontend would not serve it) must not be made meanwhile.
        if handoff::waiting() && handoff::coming(&self.handoff_key()) {
            return;
        }
        let stream = match &mut self.endpoint {
            Endpoint::Server(l) => match l.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("{}: accept on {}: {e}", self.name, self.args.socket.display());
                    return;
                }
            },
            Endpoint::Client { next_try, backoff, failures } => {
                let now = Instant::now();
                if now < *next_try {
                    return;
                }
                match UnixStream::connect(&self.args.socket) {
                    Ok(s) => {
                        *backoff = BACKOFF_MIN;
                        *failures = 0;
                        s
                    }
                    Err(e) => {
                        if *failures == 0 {
                            log::info!("{}: connecting to {}: {e}; retrying", self.name, self.args.socket.display());
                        }
                        *failures += 1;
                        *next_try = now + *backoff;
                        *backoff = (*backoff * 2).min(BACKOFF_MAX);
                        return;
                    }
                }
            }
        };
        match Channel::new(stream) {
            Ok(mut chan) => {
                chan.set_send_timeout(Duration::ZERO);
                log::info!("{}: frontend connected on {}", self.name, self.args.socket.display());
                self.past.connections += 1;
                let mut dev = Device::new(self.cfg.clone());
                dev.set_name(&self.name);
                self.conn = Some(Connection { chan, dev });
            }
            Err(e) => log::warn!("{}: new connection: {e}", self.name),
        }
    }

    /// A second frontend while one is served is turned away (it sees the
    /// connection close) rather than left waiting for replies.
    fn turn_away(&mut self) {
        if let Endpoint::Server(l) = &self.endpoint {
            while let Ok(s) = l.accept() {
                log::warn!(
                    "{}: a second frontend on {}: refused (one at a time)",
                    self.name,
                    self.args.socket.display()
                );
                self.past.refused += 1;
                drop(s);
            }
        }
    }

    /// Serve the messages that wait on the socket (a bounded number). One
    /// that changes rings while buffers are lent is held until they are
    /// back (lending stops meanwhile), and the messages after it wait.
    fn serve(&mut self) {
        let Some(c) = &mut self.conn else { return };
        let mut result = Ok(());
        if let Some((msg, since)) = self.held.take() {
            let quiet = c.dev.quiet();
            if !quiet && since.elapsed() < QUIESCE_TIMEOUT {
                self.held = Some((msg, since));
                return;
            }
            if !quiet {
                log::warn!(
                    "{}: {} lent buffers did not come back within {QUIESCE_TIMEOUT:?}; going on without them",
                    self.name,
                    c.dev.lent_outstanding()
                );
            }
            c.dev.end_quiesce(!quiet);
            if self.moving.is_some() {
                // Still on the way to another worker: lend nothing more.
                c.dev.begin_quiesce();
            }
            result = answer(&self.name, c, msg, &mut self.past.protocol_errors);
        }
        for _ in 0..MESSAGES_PER_TICK {
            if result.is_err() {
                break;
            }
            let msg = match c.chan.try_recv() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if c.dev.lending_state() && c.dev.changes_rings(&msg) {
                log::debug!(
                    "{}: {} waits for {} lent buffers",
                    self.name,
                    crate::protocol::request_name(msg.header.request),
                    c.dev.lent_outstanding()
                );
                c.dev.begin_quiesce();
                self.held = Some((msg, Instant::now()));
                break;
            }
            result = answer(&self.name, c, msg, &mut self.past.protocol_errors);
        }
        // Announcements asked for are sent even if the frontend left since.
        self.rarp.extend(c.dev.take_rarp());
        if let Err(e) = result {
            match e {
                ProtocolError::Closed => log::info!("{}: frontend disconnected", self.name),
                e => log::warn!("{}: dropping the connection: {e}", self.name),
            }
            self.disconnect();
        }
    }

    /// What a connection is parked under: the port and its socket.
    fn handoff_key(&self) -> String {
        let socket = self.args.socket.to_string_lossy();
        handoff::key(&["VhostUser", &self.name, &socket, if self.args.server { "server" } else { "client" }])
    }

    /// Take over the connection the port's instance on the worker it moved
    /// from left (see `park`), if there is one.
    fn adopt(&mut self) -> bool {
        if !handoff::waiting() {
            return false;
        }
        let Some(h) = handoff::take::<Handoff>(&self.handoff_key()) else {
            return false;
        };
        log::info!("{}: took over the frontend on {} (the port moved)", self.name, self.args.socket.display());
        let Handoff { mut conn, held, rarp, past } = h;
        conn.dev.set_name(&self.name);
        self.conn = Some(conn);
        self.held = held;
        self.rarp.extend(rarp);
        add_totals(&mut self.past, &past);
        self.past.handoffs += 1;
        true
    }

    /// Leave the connection, the counts and what waits for the port's
    /// instance on the worker it moves to. False (nothing left) when the
    /// guest's buffers are not all back: the connection must close then.
    fn park(&mut self) -> bool {
        let Some(c) = &mut self.conn else { return false };
        c.dev.drain_returns();
        if !c.dev.quiet() {
            log::warn!(
                "{}: moving with {} lent buffers still out: the frontend's connection closes",
                self.name,
                c.dev.lent_outstanding()
            );
            return false;
        }
        // Spare chains back to the guest, and the (thread-bound) owners let go.
        c.dev.end_quiesce(false);
        if !c.dev.lends_nothing() {
            return false;
        }
        let conn = self.conn.take().expect("checked above");
        let h = Handoff { conn, held: self.held.take(), rarp: std::mem::take(&mut self.rarp), past: self.past.clone() };
        let (name, socket) = (self.name.clone(), self.args.socket.clone());
        handoff::park(self.handoff_key(), h, move |_h: Handoff| {
            log::warn!(
                "{name}: no instance on another worker took the frontend on {} over: its connection closes",
                socket.display()
            );
        });
        log::info!("{}: frontend on {} left for the worker the port moves to", self.name, self.args.socket.display());
        true
    }

    /// Forget the frontend: stop its queues, unmap its memory (once every
    /// buffer lent from it is back), keep counts.
    fn disconnect(&mut self) {
        self.held = None;
        if let Some(c) = self.conn.take() {
            let (to, from) = c.dev.totals();
            add_stats(&mut self.past.to_guest, &to);
            add_stats(&mut self.past.from_guest, &from);
            add_lend_stats(&mut self.past.lend, c.dev.lend_stats());
            self.past.request_errors += c.dev.errors;
            self.past.broken_queues += c.dev.broken_count() as u64;
            self.past.disconnects += 1;
            if let Endpoint::Client { next_try, .. } = &mut self.endpoint {
                *next_try = Instant::now() + BACKOFF_MIN;
            }
        }
    }

    fn totals(&self) -> Totals {
        let mut t = self.past.clone();
        if let Some(c) = &self.conn {
            let (to, from) = c.dev.totals();
            add_stats(&mut t.to_guest, &to);
            add_stats(&mut t.from_guest, &from);
            add_lend_stats(&mut t.lend, c.dev.lend_stats());
            t.request_errors += c.dev.errors;
            t.broken_queues += c.dev.broken_count() as u64;
        }
        t
    }

    /// Whether the links let the port lend receive buffers: `supply`
    /// linked, and it and `input` in `copy: Zero`.
    fn lends_rx(&self, io: &Io) -> bool {
        use snabb_core::CopyMode::Zero;
        match (self.supply, self.ports.0) {
            (Some(s), Some(i)) => io.output.at(s).copy_mode() == Zero && io.input.at(i).copy_mode() == Zero,
            _ => false,
        }
    }

    /// Whether the links let the port lend transmit buffers: `output` in `copy: Zero`.
    fn lends_tx(&self, io: &Io) -> bool {
        self.ports.1.is_some_and(|o| io.output.at(o).copy_mode() == snabb_core::CopyMode::Zero)
    }

    /// True while a frontend is connected.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }
    /// The connected frontend's device state.
    pub fn device(&self) -> Option<&Device> {
        self.conn.as_ref().map(|c| &c.dev)
    }
    /// Queues running now: (to guest, from guest).
    pub fn running(&self) -> (usize, usize) {
        self.device().map_or((0, 0), Device::running)
    }
    /// One counter by name (see the module doc), for tests.
    pub fn counter(&self, name: &str) -> Option<u64> {
        let mut v = None;
        self.counters(&mut |k, x| {
            if k == name {
                v = Some(x)
            }
        });
        v
    }
}

impl App for VhostUser {
    fn has_pull(&self) -> bool {
        true
    }

    fn link(&mut self, io: &Io) {
        self.ports = (io.input.index_of("input"), io.output.index_of("output"));
        self.supply = io.output.index_of("supply");
        // IN_ORDER only for a port that lends nothing (from the next
        // connection on: a guest keeps what it negotiated).
        self.cfg.in_order = !(self.lends_rx(io) || self.lends_tx(io));
    }

    fn pull(&mut self, io: &Io) {
        let lend = self.lends_tx(io);
        let Some(c) = &mut self.conn else { return };
        c.dev.drain_returns();
        if c.dev.running().1 == 0 {
            return;
        }
        match self.ports.1.map(|i| io.output.at(i)) {
            Some(out) => {
                let room = out.nwritable();
                if room > 0 {
                    let mut tx = out.transmitter();
                    c.dev.from_guest(room, lend, |p| tx.send(p));
                }
            }
            None => {
                let dropped = &mut self.past.rx_no_output;
                c.dev.from_guest(usize::MAX, false, |p: Packet| {
                    *dropped += 1;
                    drop(p)
                });
            }
        }
    }

    fn push(&mut self, io: &Io) {
        let lend = self.lends_rx(io);
        if let Some(c) = &mut self.conn {
            c.dev.drain_returns();
            if !lend {
                c.dev.stop_lending_rx();
            }
        }
        if let Some(input) = self.ports.0.map(|i| io.input.at(i))
            && !input.is_empty()
        {
            // Frames may reach a port that just moved here before its first
            // tick: the connection it left is taken over first.
            if self.conn.is_none() {
                self.adopt();
            }
            match &mut self.conn {
                Some(c) if c.dev.running().0 > 0 => {
                    c.dev.to_guest(input);
                    // What the guest has no buffers for waits on `input` for
                    // the next breath, but never more than half of it: the
                    // oldest of the rest are dropped and counted here. Else a
                    // guest that enables its receive queue and posts nothing
                    // (or takes less than it is sent) would fill `input`, and
                    // whatever feeds it, another port pulling only what its
                    // output link has room for, would stop: one port's guest
                    // would hold back the others'. (A lent buffer dropped
                    // here goes back to its chain, empty.)
                    let keep = input.capacity() / 2;
                    let waiting = input.nreadable();
                    if waiting > keep {
                        input.drain().take(waiting - keep).for_each(drop);
                        self.past.tx_backlog_drops += (waiting - keep) as u64;
                    }
                }
                _ => self.past.tx_no_guest += input.discard().0,
            }
        }
        if lend
            && let (Some(c), Some(s)) = (&mut self.conn, self.supply)
            && c.dev.running().0 > 0
        {
            c.dev.lend_rx(io.output.at(s));
        }
    }

    fn tick(&mut self, io: &Io) {
        // A move that did not happen and that nobody called off (its
        // worker did not answer): lend again.
        if self.moving.is_some_and(|since| since.elapsed() > handoff::MOVE_ABANDONED) {
            self.move_cancelled();
        }
        // Serve first: a frontend that left is noticed before a new one is taken.
        self.serve();
        if self.conn.is_none() {
            self.attach();
            self.serve();
        } else {
            self.turn_away();
        }
        if let Some(c) = &mut self.conn {
            c.dev.check_broken();
        }
        if !self.rarp.is_empty() {
            if let Some(out) = io.output.get("output") {
                for mac in self.rarp.drain(..) {
                    out.transmit(Packet::from_bytes(&rarp_frame(mac)));
                    self.past.rarp_sent += 1;
                }
            }
            self.rarp.clear();
        }
    }

    fn stop(&mut self) {
        if self.moving.is_some() {
            if self.park() {
                return;
            }
            handoff::withdraw(&self.handoff_key());
        }
        self.disconnect();
    }

    /// Stop lending, and be ready once every lent buffer is back (the
    /// connection then moves with the port: see `park`).
    fn prepare_move(&mut self) -> bool {
        if self.conn.is_none() {
            return true;
        }
        if self.moving.is_none() {
            self.moving = Some(Instant::now());
            handoff::announce(self.handoff_key());
        }
        let Some(c) = &mut self.conn else { return true };
        if !c.dev.quiescing() {
            c.dev.begin_quiesce();
        }
        c.dev.drain_returns();
        c.dev.quiet()
    }

    fn move_cancelled(&mut self) {
        if self.moving.take().is_some() {
            handoff::withdraw(&self.handoff_key());
        }
        if let Some(c) = &mut self.conn
            && self.held.is_none()
            && c.dev.quiescing()
        {
            let quiet = c.dev.quiet();
            c.dev.end_quiesce(!quiet);
        }
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        let t = self.totals();
        // Each queue counter per direction: rx_* from the guest, tx_* to it
        // (names made once: the engine asks for counters every 100 breaths).
        static NAMES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
        let names = NAMES.get_or_init(|| {
            QueueStats::default().named().iter().map(|(n, _)| (format!("rx_{n}"), format!("tx_{n}"))).collect()
        });
        for ((rx, _), (_, v)) in names.iter().zip(t.from_guest.named()) {
            emit(rx, v);
        }
        for ((_, tx), (_, v)) in names.iter().zip(t.to_guest.named()) {
            emit(tx, v);
        }
        emit("tx_no_guest", t.tx_no_guest);
        emit("tx_backlog_drops", t.tx_backlog_drops);
        emit("rx_no_output", t.rx_no_output);
        emit("broken_queues", t.broken_queues);
        // 1 while a guest has queues running (what a NIC's carrier would say).
        emit("link_up", self.conn.as_ref().is_some_and(|c| c.dev.running() != (0, 0)) as u64);
        emit("connections", t.connections);
        emit("disconnects", t.disconnects);
        emit("protocol_errors", t.protocol_errors);
        emit("request_errors", t.request_errors);
        emit("rarp_sent", t.rarp_sent);
        emit("refused_connections", t.refused);
        emit("handoffs", t.handoffs);
        emit("zc_unreachable", t.lend.unreachable);
        emit("zc_in_order", t.lend.in_order);
        emit("zc_lent", self.conn.as_ref().map_or(0, |c| c.dev.lent_outstanding()));
        emit("quiesces", t.lend.quiesces);
        emit("quiesce_timeouts", t.lend.quiesce_timeouts);
    }

    fn report(&self, out: &mut String) {
        use std::fmt::Write as _;
        let t = self.totals();
        let mode = if self.args.server { "server" } else { "client" };
        let _ = write!(out, "{} ({mode}): ", self.args.socket.display());
        match &self.conn {
            None => out.push_str("no frontend\n"),
            Some(c) => {
                let (rx, tx) = c.dev.running();
                let _ = writeln!(
                    out,
                    "frontend connected, features {:#x}, protocol features {:#x}, {rx} RX + {tx} TX queues running{}",
                    c.dev.features(),
                    c.dev.protocol_features(),
                    if c.dev.logging() { ", dirty logging" } else { "" }
                );
                for i in 0..c.dev.ring_count() {
                    if let Some(why) = c.dev.ring_failure(i) {
                        let _ = writeln!(out, "  queue {i}: {why}");
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "  to guest {} packets {} bytes ({} dropped: no room; {} dropped: no guest; {} dropped: not taken; \
             out of buffers {} times); from guest {} packets {} bytes ({} bad descriptors)",
            t.to_guest.packets,
            t.to_guest.bytes,
            t.to_guest.no_room,
            t.tx_no_guest,
            t.tx_backlog_drops,
            t.to_guest.no_buffer,
            t.from_guest.packets,
            t.from_guest.bytes,
            t.from_guest.bad_descriptor
        );
        let _ = writeln!(
            out,
            "  {} connections, {} disconnects, {} protocol errors, {} refused requests, {} broken queues",
            t.connections, t.disconnects, t.protocol_errors, t.request_errors, t.broken_queues
        );
    }
}

/// Serve one message: handle it and send the reply, if any. An Err ends
/// the connection.
fn answer(name: &str, c: &mut Connection, msg: Message, protocol_errors: &mut u64) -> Result<(), ProtocolError> {
    let code = msg.header.request;
    match c.dev.handle(msg) {
        Ok(Some((code, payload))) => {
            let h = Header { request: code, flags: VERSION | FLAG_REPLY, size: payload.len() as u32 };
            c.chan.send(h, &payload, &[])
        }
        Ok(None) => Ok(()),
        Err(e) => {
            log::warn!("{name}: malformed {} message: {e}", crate::protocol::request_name(code));
            *protocol_errors += 1;
            Err(e)
        }
    }
}

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<VhostUser>(
        "VhostUser",
        "a virtio-net device on a vhost-user socket: `input` to the guest, `output` from it",
    );
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("VhostUser", crate::frontend::selftest)]
}
