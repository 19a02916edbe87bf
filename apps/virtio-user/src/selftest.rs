//! A `VirtioUser` and a `VhostUser` in one process, each app stepped by
//! hand with a link on each of its ports ([`Pair`]), for the selftest and
//! the integration tests: what one side is given to send, the other must
//! put out, byte for byte.

use std::rc::Rc;
use std::time::{Duration, Instant};

use snabb_apps_vhost_user::app::{VhostUser, VhostUserArgs};
use snabb_apps_vhost_user::frontend::{temp_socket, test_frames};
use snabb_core::app::Port;
use snabb_core::{App, AppClass, AppContext, Io, Link, Packet, Ports};

use crate::app::{VirtioUser, VirtioUserArgs};

/// An app with a link on `input` and one on `output`.
pub struct Wired<A> {
    pub app: A,
    pub input: Rc<Link>,
    pub output: Rc<Link>,
    io: Io,
}

impl<A: App> Wired<A> {
    pub fn new(mut app: A) -> Wired<A> {
        let (input, output) = (Rc::new(Link::new(4096)), Rc::new(Link::new(4096)));
        let io = Io {
            input: Ports::new(vec![Port { name: "input".into(), link: input.clone() }]),
            output: Ports::new(vec![Port { name: "output".into(), link: output.clone() }]),
        };
        app.link(&io);
        Wired { app, input, output, io }
    }
    pub fn tick(&mut self) {
        self.app.tick(&self.io);
    }
    pub fn pull(&mut self) {
        self.app.pull(&self.io);
    }
    pub fn push(&mut self) {
        self.app.push(&self.io);
    }
    /// Frames on `output`, taken off it.
    pub fn take_output(&self) -> Vec<Vec<u8>> {
        self.output.drain().map(|p| p.data().to_vec()).collect()
    }
    pub fn send(&self, frames: &[Vec<u8>]) {
        for f in frames {
            self.input.transmit(Packet::from_bytes(f));
        }
    }
}

/// The VM side and the switch side.
pub struct Pair {
    pub vm: Wired<VirtioUser>,
    /// None while "the backend is down".
    pub sw: Option<Wired<VhostUser>>,
}

impl Pair {
    /// A VhostUser made from `sw` and a VirtioUser from `vm`, switch first
    /// (it may be the listening side).
    pub fn new(vm: VirtioUserArgs, sw: VhostUserArgs) -> anyhow::Result<Pair> {
        let sw = Wired::new(VhostUser::new(sw, &AppContext { name: "sw", class: "VhostUser" })?);
        let vm = Wired::new(VirtioUser::new(crate::app::Checked(vm), &AppContext { name: "vm", class: "VirtioUser" })?);
        Ok(Pair { vm, sw: Some(sw) })
    }

    /// One breath of each, both with a tick.
    pub fn step(&mut self) {
        self.vm.tick();
        if let Some(sw) = &mut self.sw {
            sw.tick();
            sw.pull();
        }
        self.vm.pull();
        self.vm.push();
        if let Some(sw) = &mut self.sw {
            sw.push();
        }
    }

    /// Step until `f` holds, or fail after `timeout`.
    pub fn until(&mut self, what: &str, timeout: Duration, mut f: impl FnMut(&mut Pair) -> bool) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            self.step();
            if f(self) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < end, "{what}: not within {timeout:?}");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Both sides set up.
    pub fn up(&mut self) -> anyhow::Result<()> {
        self.until("set up", Duration::from_secs(10), |p| {
            p.vm.app.link_up() && p.sw.as_ref().is_some_and(|s| s.app.running() != (0, 0))
        })
    }

    pub fn vm(&self, counter: &str) -> u64 {
        self.vm.app.counter(counter).unwrap_or_else(|| panic!("VirtioUser has no counter {counter}"))
    }
    pub fn sw(&self, counter: &str) -> u64 {
        let sw = self.sw.as_ref().expect("the switch is up");
        sw.app.counter(counter).unwrap_or_else(|| panic!("VhostUser has no counter {counter}"))
    }

    /// Send `frames` from the VM (at most what its ring holds per step) and
    /// collect what the switch puts out until all have come or `timeout`.
    pub fn vm_to_switch(&mut self, frames: &[Vec<u8>], per_step: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut got = Vec::new();
        let mut at = 0;
        let end = Instant::now() + Duration::from_secs(20);
        while got.len() < frames.len() && Instant::now() < end {
            let k = per_step.min(frames.len() - at);
            self.vm.send(&frames[at..at + k]);
            at += k;
            self.step();
            got.extend(self.sw.as_ref().expect("the switch is up").take_output());
        }
        Ok(got)
    }

    /// The same, the other way.
    pub fn switch_to_vm(&mut self, frames: &[Vec<u8>], per_step: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut got = Vec::new();
        let mut at = 0;
        let end = Instant::now() + Duration::from_secs(20);
        while got.len() < frames.len() && Instant::now() < end {
            let k = per_step.min(frames.len() - at);
            self.sw.as_ref().expect("the switch is up").send(&frames[at..at + k]);
            at += k;
            self.step();
            got.extend(self.vm.take_output());
        }
        Ok(got)
    }
}

fn bytes(v: &[Vec<u8>]) -> u64 {
    v.iter().map(|f| f.len() as u64).sum()
}

/// Set up against the switch, frames both ways compared byte for byte and
/// counted on both sides, then the switch restarts and the VM connects
/// again by itself and carries traffic.
pub fn selftest() -> anyhow::Result<()> {
    use anyhow::ensure;
    let sock = temp_socket("virtio-user-selftest");
    let mut vm_args = VirtioUserArgs::new(&sock);
    vm_args.huge_pages = false;
    let mut p = Pair::new(vm_args, VhostUserArgs::new(&sock))?;
    p.up()?;
    let out = test_frames(300, 1);
    let back = test_frames(200, 2);
    let got = p.vm_to_switch(&out, 64)?;
    ensure!(got == out, "the switch received {} of {} frames (or altered ones)", got.len(), out.len());
    let got = p.switch_to_vm(&back, 64)?;
    ensure!(got == back, "the VM received {} of {} frames (or altered ones)", got.len(), back.len());
    let c = |p: &Pair| (p.vm("tx_packets"), p.vm("tx_bytes"), p.vm("rx_packets"), p.vm("rx_bytes"));
    ensure!(
        c(&p) == (300, bytes(&out), 200, bytes(&back)),
        "VirtioUser counters (tx, tx bytes, rx, rx bytes) {:?}",
        c(&p)
    );
    let s = |p: &Pair| (p.sw("rx_packets"), p.sw("rx_bytes"), p.sw("tx_packets"), p.sw("tx_bytes"));
    ensure!(s(&p) == c(&p), "VhostUser counters {:?}, VirtioUser's {:?}", s(&p), c(&p));
    // The switch restarts: the VM notices, connects again, carries traffic.
    p.sw = None;
    p.until("disconnect noticed", Duration::from_secs(5), |p| !p.vm.app.link_up())?;
    p.sw = Some(Wired::new(VhostUser::new(VhostUserArgs::new(&sock), &AppContext { name: "sw", class: "VhostUser" })?));
    p.up()?;
    let got = p.vm_to_switch(&out[..50], 50)?;
    ensure!(got == out[..50], "after the restart the switch received {} of 50 frames", got.len());
    ensure!(
        p.vm("connections") == 2 && p.vm("disconnects") == 1 && p.vm("setup_errors") == 0,
        "connections {} disconnects {} setup errors {}",
        p.vm("connections"),
        p.vm("disconnects"),
        p.vm("setup_errors")
    );
    Ok(())
}
