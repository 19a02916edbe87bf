//! WIRES: WHAT A MODEL PORT IS CABLED TO
//!
//!   Unplugged            no carrier: the link never comes up
//!   Cable("1")           another model port in this process, back to back
//!   Pcap{input, output}  frames replayed from one capture file (pcap or
//!                        pcapng), sent ones written to another (pcapng
//!                        when its name ends in `.pcapng`)
//!   Interface("veth0")   a Linux interface through an AF_PACKET socket, so
//!                        that real traffic (a network namespace, say)
//!                        reaches the model (short frames padded to 60
//!                        bytes, and checksums a local sender left to
//!                        offload finished, as the sender's NIC would)
//!
//! Frames on a wire have no FCS: the model adds one only where software
//! could see it (CRC stripping off).

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Weak;

use serde::{Deserialize, Serialize};
use snabb_core::pcap;

use crate::port::Shared;

/// How a model port is cabled, as written in a config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub enum WireSpec {
    #[default]
    Unplugged,
    /// Back to back with another model port (its name, e.g. "model:1").
    Cable(String),
    /// Frames from `input` (a pcap file) arrive on the wire as fast as the
    /// model runs, read only while the packet buffer has room (optionally
    /// over and over); frames the port sends are written to `output`.
    Pcap {
        #[serde(default)]
        input: Option<PathBuf>,
        #[serde(default)]
        output: Option<PathBuf>,
        #[serde(default)]
        repeat: bool,
    },
    /// A Linux network interface, through a raw socket.
    Interface(String),
}

/// A wire as the engine drives it.
pub(crate) enum Wire {
    Unplugged,
    Cable(Weak<Shared>),
    Pcap { input: Option<Box<PcapIn>>, output: Option<Box<PcapOut>> },
    Interface(RawSocket),
}

impl Wire {
    pub fn open(spec: &WireSpec) -> io::Result<Wire> {
        Ok(match spec {
            WireSpec::Unplugged => Wire::Unplugged,
            // The registry connects cables; here it is still loose.
            WireSpec::Cable(_) => Wire::Cable(Weak::new()),
            WireSpec::Pcap { input, output, repeat } => Wire::Pcap {
                input: input.as_ref().map(|p| PcapIn::open(p.clone(), *repeat).map(Box::new)).transpose()?,
                output: output.as_ref().map(|p| PcapOut::create(p.clone()).map(Box::new)).transpose()?,
            },
            WireSpec::Interface(name) => Wire::Interface(RawSocket::open(name)?),
        })
    }

    /// Whether there is carrier from the far end.
    pub fn carrier(&self) -> bool {
        match self {
            Wire::Unplugged => false,
            Wire::Cable(peer) => peer.upgrade().is_some_and(|p| p.phy_ready()),
            Wire::Pcap { .. } | Wire::Interface(_) => true,
        }
    }

    /// The frames of one model step are on the wire: a capture file is
    /// written out now, once per batch rather than once per frame.
    pub fn end_of_batch(&mut self) {
        if let Wire::Pcap { output: Some(o), .. } = self
            && o.dirty
            && let Err(e) = o.flush()
        {
            log::error!("82599 model: pcap output {}: {e}", o.path.display());
        }
    }

    /// Put a frame on the wire.
    pub fn transmit(&mut self, frame: &[u8]) {
        match self {
            Wire::Unplugged => {}
            Wire::Cable(peer) => {
                if let Some(p) = peer.upgrade() {
                    p.deliver(frame.to_vec());
                }
            }
            Wire::Pcap { output, .. } => {
                if let Some(o) = output
                    && let Err(e) = o.write(frame)
                {
                    log::error!("82599 model: pcap output {}: {e}", o.path.display());
                    *output = None;
                }
            }
            Wire::Interface(s) => s.send(frame),
        }
    }

    /// Frames that arrived from the far end (wires the engine polls).
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(Vec<u8>)) -> usize {
        let mut n = 0;
        match self {
            Wire::Pcap { input: Some(i), .. } => {
                while n < max {
                    match i.next() {
                        Some(frame) => {
                            f(frame);
                            n += 1;
                        }
                        None => break,
                    }
                }
            }
            Wire::Interface(s) => {
                while n < max {
                    match s.recv() {
                        Some(mut frame) => {
                            // On a real wire the sender pads a frame to
                            // the minimum (60 bytes before the FCS); a
                            // Linux interface hands us them unpadded (an
                            // ARP request is 42 bytes), which the port
                            // would count as runts.
                            if frame.len() < 60 {
                                frame.resize(60, 0);
                            }
                            f(frame);
                            n += 1;
                        }
                        None => break,
                    }
                }
            }
            _ => {}
        }
        n
    }
}

// ---------------------------------------------------------------------------
// capture files (pcap or pcapng, Ethernet), through `snabb_core::pcap`

pub(crate) struct PcapIn {
    path: PathBuf,
    file: pcap::Reader<BufReader<File>>,
    repeat: bool,
    /// Frames read since the file was opened: a repeating file with none stops.
    read: u64,
}

impl PcapIn {
    fn open(path: PathBuf, repeat: bool) -> io::Result<PcapIn> {
        let file = pcap::Reader::open(&path)?;
        Ok(PcapIn { path, file, repeat, read: 0 })
    }

    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.file.next_record() {
                Ok(Some(r)) if r.linktype != pcap::LINKTYPE_ETHERNET => {
                    log::error!("82599 model: {}: link type {}, not Ethernet", self.path.display(), r.linktype);
                    return None;
                }
                Ok(Some(r)) => {
                    self.read += 1;
                    return Some(r.data);
                }
                Ok(None) if self.repeat && self.read > 0 => match pcap::Reader::open(&self.path) {
                    Ok(f) => {
                        self.file = f;
                        self.read = 0;
                    }
                    Err(e) => {
                        log::error!("82599 model: {e}");
                        return None;
                    }
                },
                Ok(None) => return None,
                Err(e) => {
                    log::error!("82599 model: {}: {e}; the rest of the file is ignored", self.path.display());
                    self.repeat = false;
                    return None;
                }
            }
        }
    }
}

/// Frames the port sends, buffered and written out at the end of each
/// model step that sent any (and when the wire goes), not per frame.
pub(crate) struct PcapOut {
    path: PathBuf,
    file: pcap::Writer<BufWriter<File>>,
    dirty: bool,
}

impl PcapOut {
    fn create(path: PathBuf) -> io::Result<PcapOut> {
        let file = pcap::Writer::create(&path, None)?;
        Ok(PcapOut { path, file, dirty: false })
    }

    fn write(&mut self, frame: &[u8]) -> io::Result<()> {
        self.file.write(frame, std::time::SystemTime::now())?;
        self.dirty = true;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.dirty = false;
        self.file.flush()
    }
}

impl Drop for PcapOut {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::error!("82599 model: pcap output {}: {e}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------
// AF_PACKET raw socket

pub(crate) struct RawSocket {
    name: String,
    fd: OwnedFd,
    buf: Vec<u8>,
}

const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

impl RawSocket {
    fn open(name: &str) -> io::Result<RawSocket> {
        let err = |what: &str| {
            let e = io::Error::last_os_error();
            io::Error::new(e.kind(), format!("interface {name}: {what}: {e}"))
        };
        let cname = std::ffi::CString::new(name).map_err(|_| io::Error::other("bad interface name"))?;
        // SAFETY: plain libc calls on a fresh socket; every pointer passed
        // points to a live local of the right size.
        unsafe {
            let ifindex = libc::if_nametoindex(cname.as_ptr());
            if ifindex == 0 {
                return Err(err("no such interface"));
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd =
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto as i32);
            if fd < 0 {
                return Err(err("socket(AF_PACKET)"));
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            if libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) < 0
            {
                return Err(err("bind"));
            }
            let one: libc::c_int = 1;
            let intsz = std::mem::size_of::<libc::c_int>() as u32;
            // Our own transmissions must not come back to us.
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                &one as *const _ as *const _,
                intsz,
            );
            // VLAN tags the kernel strips are handed over on the side.
            libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_AUXDATA, &one as *const _ as *const _, intsz);
            let mut mr: libc::packet_mreq = std::mem::zeroed();
            mr.mr_ifindex = ifindex as i32;
            mr.mr_type = PACKET_MR_PROMISC;
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_ADD_MEMBERSHIP,
                &mr as *const _ as *const _,
                std::mem::size_of::<libc::packet_mreq>() as u32,
            ) < 0
            {
                return Err(err("promiscuous mode"));
            }
            Ok(RawSocket { name: name.to_string(), fd, buf: vec![0; 65536] })
        }
    }

    fn send(&mut self, frame: &[u8]) {
        // SAFETY: frame is a live slice; the fd is ours.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr() as *const _, frame.len(), libc::MSG_DONTWAIT) };
        if r < 0 {
            log::debug!("82599 model: {}: send: {}", self.name, io::Error::last_os_error());
        }
    }

    fn recv(&mut self) -> Option<Vec<u8>> {
        let mut cmsg = [0u64; 16];
        let mut iov = libc::iovec { iov_base: self.buf.as_mut_ptr() as *mut _, iov_len: self.buf.len() };
        // SAFETY: msghdr points at live locals and our buffer; the kernel
        // writes at most the lengths given.
        let (n, aux) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr() as *mut _;
            msg.msg_controllen = std::mem::size_of_val(&cmsg);
            let n = libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_TRUNC);
            if n < 0 {
                return None;
            }
            let mut aux = None;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                    aux = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::tpacket_auxdata));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            (n as usize, aux)
        };
        if n > self.buf.len() {
            log::debug!("82599 model: {}: dropped a {n}-byte frame (too long)", self.name);
            return Some(Vec::new());
        }
        let mut frame = self.buf[..n].to_vec();
        // Put back the tag the kernel took off, so the model sees the frame
        // as it was on the wire.
        if let Some(a) = aux
            && a.tp_status & TP_STATUS_VLAN_VALID != 0
            && frame.len() >= 12
        {
            let tpid = if a.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 { a.tp_vlan_tpid } else { 0x8100 };
            let mut tag = [0u8; 4];
            tag[0..2].copy_from_slice(&tpid.to_be_bytes());
            tag[2..4].copy_from_slice(&a.tp_vlan_tci.to_be_bytes());
            frame.splice(12..12, tag);
        }
        // A local sender (a veth peer) may have left its TCP or UDP checksum
        // to the NIC; on a real wire it would be finished.
        if aux.is_some_and(|a| a.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0) {
            snabb_apps_rawsocket::csum::complete(&mut frame);
        }
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_round_trip_and_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.pcap");
        {
            let mut o = PcapOut::create(path.clone()).unwrap();
            o.write(&[1, 2, 3]).unwrap();
            o.write(&[4; 70]).unwrap();
        }
        let mut i = PcapIn::open(path.clone(), false).unwrap();
        assert_eq!(i.next().unwrap(), vec![1, 2, 3]);
        assert_eq!(i.next().unwrap(), vec![4; 70]);
        assert!(i.next().is_none());
        let mut r = PcapIn::open(path, true).unwrap();
        let got: Vec<usize> = (0..5).map(|_| r.next().unwrap().len()).collect();
        assert_eq!(got, vec![3, 70, 3, 70, 3]);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, [0u8; 40]).unwrap();
        assert!(PcapIn::open(bad, false).is_err());
    }

    #[test]
    fn wire_spec_from_ron() {
        let s: WireSpec = ron::from_str("Cable(\"model:1\")").unwrap();
        assert_eq!(s, WireSpec::Cable("model:1".into()));
        let s: WireSpec = ron::from_str("Pcap(input: Some(\"a.pcap\"), repeat: true)").unwrap();
        assert_eq!(s, WireSpec::Pcap { input: Some("a.pcap".into()), output: None, repeat: true });
        assert!(ron::from_str::<WireSpec>("Pcap(colour: 1)").is_err());
    }
}
