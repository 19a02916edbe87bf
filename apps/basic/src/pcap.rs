//! PCAP FILES: `PcapReader` and `PcapWriter`.
//!
//! Both go through `snabb_core::pcap` (the `pcap-file` crate): the reader
//! takes pcap (either byte order, micro- or nanosecond stamps) and pcapng,
//! which Wireshark saves by default; the writer writes Ethernet frames with
//! nanosecond stamps, as pcap, or as pcapng when asked (`format: PcapNg`)
//! or when the file name ends in `.pcapng`. tcpdump and Wireshark read both.
//! A malformed record ends the file with a counted error, never a panic; a
//! record longer than a packet, or of another link type, is skipped and
//! counted.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use snabb_core::packet::PAYLOAD_SIZE;
pub use snabb_core::pcap::{Format, LINKTYPE_ETHERNET, Reader as PcapFileReader, Record, Writer as PcapFileWriter};
use snabb_core::{App, AppClass, AppContext, Io, PULL_NPACKETS, Packet, PortSpec};

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
    other_linktype: u64,
    errors: u64,
    done: bool,
}

fn open(path: &std::path::Path) -> io::Result<PcapFileReader<BufReader<File>>> {
    PcapFileReader::open(path)
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
            other_linktype: 0,
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
                Ok(Some(r)) if r.linktype != LINKTYPE_ETHERNET => self.other_linktype += 1,
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
        emit("other_linktype", self.other_linktype);
        emit("errors", self.errors);
    }
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PcapWriterArgs {
    pub file: PathBuf,
    /// `Pcap` or `PcapNg`; by default from the name (`.pcapng`: pcapng).
    #[serde(default)]
    pub format: Option<Format>,
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
        Ok(PcapWriter { w: PcapFileWriter::create(&args.file, args.format)?, packets: 0, errors: 0 })
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
        .app("w", "PcapWriter", &PcapWriterArgs { file: file.clone(), format: None })
        .link("src.output -> w.input");
    let mut e = snabb_core::Engine::new(crate::registry());
    e.configure(&c)?;
    e.run(snabb_core::Limit::Breaths(5));
    drop(e);
    let mut r = PcapFileReader::new(File::open(&file)?)?;
    let mut sizes = vec![];
    while let Some(rec) = r.next_record()? {
        anyhow::ensure!(rec.linktype == LINKTYPE_ETHERNET);
        sizes.push(rec.data.len());
    }
    anyhow::ensure!(sizes == [60, 1514].repeat(5), "read back {sizes:?}");
    // The same as pcapng, chosen by the name.
    let ng = dir.path().join("out.pcapng");
    let mut c = snabb_core::Config::new();
    c.app_args("src", "Source", snabb_core::Args::from_ron("(sizes: [60, 1514], count: 10)")?)
        .app("w", "PcapWriter", &PcapWriterArgs { file: ng.clone(), format: None })
        .link("src.output -> w.input");
    let mut e = snabb_core::Engine::new(crate::registry());
    e.configure(&c)?;
    e.run(snabb_core::Limit::Breaths(5));
    drop(e);
    let mut r = PcapFileReader::open(&ng)?;
    anyhow::ensure!(r.format == Format::PcapNg);
    let mut n = 0;
    while r.next_record()?.is_some() {
        n += 1;
    }
    anyhow::ensure!(n == 10, "{n} records in the pcapng file");

    // A packet still carrying a partial checksum is written finished, as
    // it would go on the wire.
    let file = dir.path().join("csum.pcap");
    let mut frame: Vec<u8> = (0..120u32).map(|i| (i * 11 + 1) as u8).collect();
    frame[40..42].copy_from_slice(&[0xab, 0xcd]);
    let mut want = frame.clone();
    anyhow::ensure!(snabb_core::checksum::complete_checksum(&mut want, 34, 6));
    {
        let ctx = AppContext { name: "w", class: "PcapWriter" };
        let mut w = PcapWriter::new(PcapWriterArgs { file: file.clone(), format: None }, &ctx)?;
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
    for (file, format) in [(&file, Format::Pcap), (&dir.path().join("in.pcapng"), Format::PcapNg)] {
        let mut w = PcapFileWriter::new(File::create(file)?, format)?;
        for i in 0..7u8 {
            w.write(&[i; 64], SystemTime::now())?;
        }
        w.write(&vec![0; PAYLOAD_SIZE + 1], SystemTime::now())?;
        // A truncated record at the end.
        std::io::Write::write_all(&mut w.into_inner(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])?;
    }
    // pcap and pcapng alike: 7 frames, one too long, a truncated record.
    for file in [file.clone(), dir.path().join("in.pcapng")] {
        let mut c = snabb_core::Config::new();
        c.app("r", "PcapReader", &PcapReaderArgs { file: file.clone(), r#loop: false })
            .app("sink", "Sink", &())
            .link("r.output -> sink.input");
        let mut e = snabb_core::Engine::new(crate::registry());
        e.configure(&c)?;
        e.run(snabb_core::Limit::Breaths(5));
        let r = e.app::<PcapReader>("r").unwrap();
        anyhow::ensure!(r.is_done() && r.packets() == 7, "{}: read {} packets", file.display(), r.packets());
        let counters = e.app_counters("r");
        anyhow::ensure!(counters["oversize"] == 1 && counters["errors"] == 1, "{}: {counters:?}", file.display());
    }
    let mut c = snabb_core::Config::new();
    c.app("r", "PcapReader", &PcapReaderArgs { file: file.clone(), r#loop: false });
    // A file that is not pcap is refused when the app starts.
    std::fs::write(&file, b"hello, world, this is not a pcap file")?;
    let mut e = snabb_core::Engine::new(crate::registry());
    let err = e.configure(&c).unwrap_err().to_string();
    anyhow::ensure!(err.contains("not a pcap or pcapng file"), "{err}");
    Ok(())
}
