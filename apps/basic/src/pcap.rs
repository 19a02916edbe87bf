//! PCAP FILES: `PcapReader` and `PcapWriter`.
//!
//! The classic libpcap format (not pcapng): a 24-byte file header, then per
//! packet a 16-byte record header and the captured bytes. The reader takes
//! either byte order and micro- or nanosecond timestamps; the writer writes
//! native byte order, microseconds, link type Ethernet, which tcpdump and
//! Wireshark read. A malformed record ends the file with a counted error,
//! never a panic; a record longer than a packet is skipped and counted.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use snabb_core::packet::PAYLOAD_SIZE;
use snabb_core::{App, AppClass, AppContext, Io, PULL_NPACKETS, Packet, PortSpec};

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// Link type Ethernet.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Reads records from a pcap stream.
pub struct PcapFileReader<R> {
    r: R,
    swap: bool,
    pub linktype: u32,
    pub nanos: bool,
}

/// One record.
pub struct Record {
    pub ts_sec: u32,
    pub ts_frac: u32,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

impl<R: Read> PcapFileReader<R> {
    pub fn new(mut r: R) -> io::Result<Self> {
        let mut h = [0u8; 24];
        r.read_exact(&mut h).map_err(|e| io::Error::new(e.kind(), format!("pcap header: {e}")))?;
        let magic = u32::from_le_bytes(h[0..4].try_into().unwrap());
        let (swap, nanos) = match magic {
            MAGIC_US => (false, false),
            MAGIC_NS => (false, true),
            m if m.swap_bytes() == MAGIC_US => (true, false),
            m if m.swap_bytes() == MAGIC_NS => (true, true),
            m => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("not a pcap file (magic {m:#010x})")));
            }
        };
        let mut p = PcapFileReader { r, swap, linktype: 0, nanos };
        p.linktype = p.u32(&h[20..24]);
        Ok(p)
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let v = u32::from_le_bytes(b.try_into().unwrap());
        if self.swap { v.swap_bytes() } else { v }
    }

    /// The next record; `Ok(None)` at a clean end of file.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let mut h = [0u8; 16];
        let mut got = 0;
        while got < 16 {
            match self.r.read(&mut h[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated record header")),
                n => got += n,
            }
        }
        let incl = self.u32(&h[8..12]);
        if incl > 256 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("record of {incl} bytes")));
        }
        let mut data = vec![0u8; incl as usize];
        self.r.read_exact(&mut data).map_err(|e| io::Error::new(e.kind(), "truncated record"))?;
        Ok(Some(Record {
            ts_sec: self.u32(&h[0..4]),
            ts_frac: self.u32(&h[4..8]),
            orig_len: self.u32(&h[12..16]),
            data,
        }))
    }
}

/// Writes records to a pcap stream.
pub struct PcapFileWriter<W: Write> {
    w: W,
}

impl<W: Write> PcapFileWriter<W> {
    pub fn new(mut w: W) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC_US.to_ne_bytes());
        h.extend_from_slice(&2u16.to_ne_bytes());
        h.extend_from_slice(&4u16.to_ne_bytes());
        h.extend_from_slice(&0i32.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h.extend_from_slice(&65535u32.to_ne_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        w.write_all(&h)?;
        Ok(PcapFileWriter { w })
    }

    pub fn write(&mut self, data: &[u8], ts: SystemTime) -> io::Result<()> {
        let d = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&(d.as_secs() as u32).to_ne_bytes());
        h[4..8].copy_from_slice(&d.subsec_micros().to_ne_bytes());
        h[8..12].copy_from_slice(&(data.len() as u32).to_ne_bytes());
        h[12..16].copy_from_slice(&(data.len() as u32).to_ne_bytes());
        self.w.write_all(&h)?;
        self.w.write_all(data)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

// ---------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PcapReaderArgs {
    pub file: PathBuf,
    /// Start again at the end of the file.
    #[serde(default)]
    pub r#loop: bool,
}

pub struct PcapReader {
    path: PathBuf,
    file: Option<PcapFileReader<BufReader<File>>>,
    looped: bool,
    packets: u64,
    oversize: u64,
    errors: u64,
    done: bool,
}

fn open(path: &Path) -> io::Result<PcapFileReader<BufReader<File>>> {
    let f = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    PcapFileReader::new(BufReader::new(f)).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl AppClass for PcapReader {
    type Args = PcapReaderArgs;
    const PORTS: PortSpec = PortSpec::new(&[], &["output"]);
    fn new(args: PcapReaderArgs, _ctx: &AppContext) -> anyhow::Result<PcapReader> {
        let file = open(&args.file)?;
        Ok(PcapReader {
            path: args.file,
            file: Some(file),
            looped: args.r#loop,
            packets: 0,
            oversize: 0,
            errors: 0,
            done: false,
        })
    }
}

impl PcapReader {
    fn end_of_file(&mut self) {
        if self.looped && self.packets > 0 {
            self.file = open(&self.path).ok();
            self.done = self.file.is_none();
        } else {
            self.done = true;
        }
    }

    /// The whole file has been sent (never true when looping).
    pub fn is_done(&self) -> bool {
        self.done
    }
    pub fn packets(&self) -> u64 {
        self.packets
    }
}

impl App for PcapReader {
    fn has_pull(&self) -> bool {
        true
    }
    fn pull(&mut self, io: &Io) {
        let Some(out) = io.output.get("output").or_else(|| io.output.first()) else { return };
        let mut sent = 0;
        while sent < PULL_NPACKETS && !self.done {
            let Some(f) = &mut self.file else { break };
            match f.next_record() {
                Ok(Some(r)) if r.data.len() > PAYLOAD_SIZE => self.oversize += 1,
                Ok(Some(r)) => {
                    out.transmit(Packet::from_bytes(&r.data));
                    self.packets += 1;
                    sent += 1;
                }
                Ok(None) => self.end_of_file(),
                Err(e) => {
                    log::warn!("{}: {e}", self.path.display());
                    self.errors += 1;
                    self.end_of_file();
                }
            }
        }
    }
    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("packets", self.packets);
        emit("oversize", self.oversize);
        emit("errors", self.errors);
    }
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PcapWriterArgs {
    pub file: PathBuf,
}

pub struct PcapWriter {
    w: PcapFileWriter<BufWriter<File>>,
    packets: u64,
    errors: u64,
}

impl AppClass for PcapWriter {
    type Args = PcapWriterArgs;
    const PORTS: PortSpec = PortSpec::new(&["input"], &[]);
    fn new(args: PcapWriterArgs, _ctx: &AppContext) -> anyhow::Result<PcapWriter> {
        let f = File::create(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
        Ok(PcapWriter { w: PcapFileWriter::new(BufWriter::new(f))?, packets: 0, errors: 0 })
    }
}

impl App for PcapWriter {
    fn push(&mut self, io: &Io) {
        let now = SystemTime::now();
        for input in io.input.iter() {
            while let Some(mut p) = input.receive() {
                // A capture shows the frame as it would go on the wire.
                p.finish_partial_csum();
                match self.w.write(p.data(), now) {
                    Ok(()) => self.packets += 1,
                    Err(_) => self.errors += 1,
                }
            }
        }
    }
    fn tick(&mut self, _io: &Io) {
        let _ = self.w.flush();
    }
    fn stop(&mut self) {
        let _ = self.w.flush();
    }
    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("packets", self.packets);
        emit("errors", self.errors);
    }
}

impl Drop for PcapWriter {
    fn drop(&mut self) {
        let _ = self.w.flush();
    }
}

pub fn selftest_writer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("out.pcap");
    let mut c = snabb_core::Config::new();
    c.app_args("src", "Source", snabb_core::Args::from_ron("(sizes: [60, 1514], count: 10)")?)
        .app("w", "PcapWriter", &PcapWriterArgs { file: file.clone() })
        .link("src.output -> w.input");
    let mut e = snabb_core::Engine::new(crate::registry());
    e.configure(&c)?;
    e.run(snabb_core::Limit::Breaths(5));
    drop(e);
    let mut r = PcapFileReader::new(File::open(&file)?)?;
    anyhow::ensure!(r.linktype == LINKTYPE_ETHERNET);
    let mut sizes = vec![];
    while let Some(rec) = r.next_record()? {
        sizes.push(rec.data.len());
    }
    anyhow::ensure!(sizes == [60, 1514].repeat(5), "read back {sizes:?}");

    // A packet still carrying a partial checksum is written finished, as
    // it would go on the wire.
    let file = dir.path().join("csum.pcap");
    let mut frame: Vec<u8> = (0..120u32).map(|i| (i * 11 + 1) as u8).collect();
    frame[40..42].copy_from_slice(&[0xab, 0xcd]);
    let mut want = frame.clone();
    anyhow::ensure!(snabb_core::checksum::complete_checksum(&mut want, 34, 6));
    {
        let ctx = AppContext { name: "w", class: "PcapWriter" };
        let mut w = PcapWriter::new(PcapWriterArgs { file: file.clone() }, &ctx)?;
        let input = std::rc::Rc::new(snabb_core::Link::new(16));
        let mut p = Packet::from_bytes(&frame);
        anyhow::ensure!(p.set_partial_csum(Some(snabb_core::packet::PartialCsum { start: 34, offset: 6 })));
        input.transmit(p);
        let io = snabb_core::Io {
            input: snabb_core::Ports::new(vec![snabb_core::app::Port { name: "input".into(), link: input }]),
            output: snabb_core::Ports::new(vec![]),
        };
        w.push(&io);
    }
    let mut r = PcapFileReader::new(File::open(&file)?)?;
    let rec = r.next_record()?.ok_or_else(|| anyhow::anyhow!("nothing written"))?;
    anyhow::ensure!(rec.data == want, "the partial checksum was not finished");
    Ok(())
}

pub fn selftest_reader() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("in.pcap");
    {
        let mut w = PcapFileWriter::new(File::create(&file)?)?;
        for i in 0..7u8 {
            w.write(&[i; 64], SystemTime::now())?;
        }
        w.write(&vec![0; PAYLOAD_SIZE + 1], SystemTime::now())?;
        // A truncated record at the end.
        w.into_inner().write_all(&[1, 2, 3])?;
    }
    let mut c = snabb_core::Config::new();
    c.app("r", "PcapReader", &PcapReaderArgs { file: file.clone(), r#loop: false })
        .app("sink", "Sink", &())
        .link("r.output -> sink.input");
    let mut e = snabb_core::Engine::new(crate::registry());
    e.configure(&c)?;
    e.run(snabb_core::Limit::Breaths(5));
    let r = e.app::<PcapReader>("r").unwrap();
    anyhow::ensure!(r.is_done() && r.packets() == 7, "read {} packets", r.packets());
    let counters = e.app_counters("r");
    anyhow::ensure!(counters["oversize"] == 1 && counters["errors"] == 1, "{counters:?}");
    // A file that is not pcap is refused when the app starts.
    std::fs::write(&file, b"hello, world, this is not a pcap file")?;
    let mut e = snabb_core::Engine::new(crate::registry());
    let err = e.configure(&c).unwrap_err().to_string();
    anyhow::ensure!(err.contains("not a pcap file"), "{err}");
    Ok(())
}
