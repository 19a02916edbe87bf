//! CAPTURE FILES: pcap and pcapng, read and written through the
//! `pcap-file` crate, for every part of snabb-rs that reads or writes
//! captures (the PcapReader and PcapWriter apps, the 82599 model's pcap
//! wire, tests).
//!
//!   Reader::open(path)          pcap (either byte order, micro- or
//!                               nanosecond stamps) or pcapng (Wireshark's
//!                               default), told apart by the magic number
//!   reader.next_record()        the next packet, `Ok(None)` at a clean end
//!   Writer::create(path, fmt)   Ethernet, nanosecond stamps; pcapng when
//!                               asked or when the name ends in `.pcapng`
//!   writer.write(data, time)    buffered: `flush` (or drop) writes it out
//!
//! A malformed file gives an error, never a panic. pcapng stamps are read
//! in the unit their interface's `if_tsresol` gives (microseconds when it
//! has none, as the format says; `pcap-file` 2.0 itself takes them as
//! nanoseconds), and written in nanoseconds with `if_tsresol` saying so.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use byteorder_slice::NativeEndian;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::{Block, PcapNgReader, PcapNgWriter};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};

/// The link type of Ethernet frames.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Longest record taken (and written): larger ones are refused.
pub const SNAPLEN: u32 = 262_144;
const PCAPNG_MAGIC: u32 = 0x0a0d_0d0a;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Format {
    /// libpcap's classic format.
    Pcap,
    /// pcapng.
    PcapNg,
}

impl Format {
    /// `PcapNg` for a name ending in `.pcapng`, else `Pcap`.
    pub fn for_path(p: &Path) -> Format {
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("pcapng")) { Format::PcapNg } else { Format::Pcap }
    }
}

/// One captured packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Since the Unix epoch.
    pub timestamp: Duration,
    /// The length on the wire (`data` may be cut shorter by the snap length).
    pub orig_len: u32,
    pub linktype: u32,
    pub data: Vec<u8>,
}

type Peeked<R> = io::Chain<io::Cursor<[u8; 4]>, R>;

enum In<R: Read> {
    Pcap(PcapReader<Peeked<R>>, u32),
    Ng(PcapNgReader<Peeked<R>>),
}

pub struct Reader<R: Read> {
    inner: In<R>,
    pub format: Format,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn error(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        PcapError::IncompleteBuffer => io::Error::new(io::ErrorKind::UnexpectedEof, "truncated record"),
        e => invalid(e),
    }
}

impl Reader<BufReader<File>> {
    pub fn open(path: &Path) -> io::Result<Reader<BufReader<File>>> {
        let f = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Reader::new(BufReader::new(f)).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }
}

impl<R: Read> Reader<R> {
    pub fn new(mut r: R) -> io::Result<Reader<R>> {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic).map_err(|e| io::Error::new(e.kind(), format!("capture header: {e}")))?;
        let m = u32::from_le_bytes(magic);
        let r = io::Cursor::new(magic).chain(r);
        let pcap = [0xa1b2_c3d4u32, 0xa1b2_3c4d];
        if pcap.contains(&m) || pcap.contains(&m.swap_bytes()) {
            let p = PcapReader::new(r).map_err(error)?;
            let linktype = u32::from(p.header().datalink);
            Ok(Reader { inner: In::Pcap(p, linktype), format: Format::Pcap })
        } else if m == PCAPNG_MAGIC {
            Ok(Reader { inner: In::Ng(PcapNgReader::new(r).map_err(error)?), format: Format::PcapNg })
        } else {
            Err(invalid(format!("not a pcap or pcapng file (magic {m:#010x})")))
        }
    }

    /// The next packet; `Ok(None)` at a clean end of file. Blocks that
    /// carry no packet (statistics, names) are skipped.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        match &mut self.inner {
            In::Pcap(r, linktype) => match r.next_packet() {
                None => Ok(None),
                Some(Err(e)) => Err(error(e)),
                Some(Ok(p)) => Ok(Some(Record {
                    timestamp: p.timestamp,
                    orig_len: p.orig_len,
                    linktype: *linktype,
                    data: p.data.into_owned(),
                })),
            },
            In::Ng(r) => loop {
                let block = match r.next_block() {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(error(e)),
                    Some(Ok(b)) => b,
                };
                let (iface, raw, orig_len, data) = match block {
                    Block::EnhancedPacket(p) => {
                        (p.interface_id, p.timestamp.as_nanos() as u64, p.original_len, p.data.into_owned())
                    }
                    // No stamp: zero.
                    Block::SimplePacket(p) => (0, 0, p.original_len, p.data.into_owned()),
                    Block::Packet(p) => (p.interface_id as u32, p.timestamp, p.original_len, p.data.into_owned()),
                    _ => continue,
                };
                let Some(idb) = r.interfaces().get(iface as usize) else {
                    return Err(invalid(format!("packet on interface {iface}, which is not described")));
                };
                let timestamp = scale(raw, tsresol(idb));
                let linktype = u32::from(idb.linktype);
                return Ok(Some(Record { timestamp, orig_len, linktype, data }));
            },
        }
    }
}

/// An interface's stamp unit (pcapng `if_tsresol`): 10^-n seconds, or
/// 2^-n with the top bit set; microseconds when absent.
fn tsresol(idb: &InterfaceDescriptionBlock) -> u8 {
    idb.options
        .iter()
        .find_map(|o| match o {
            InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
            _ => None,
        })
        .unwrap_or(6)
}

fn scale(raw: u64, resol: u8) -> Duration {
    let n = (resol & 0x7f) as u32;
    let (per_sec, ok) =
        if resol & 0x80 != 0 { (1u128 << n.min(127), n < 64) } else { (10u128.pow(n.min(38)), n <= 19) };
    if !ok {
        return Duration::ZERO;
    }
    let nanos = raw as u128 * 1_000_000_000 / per_sec;
    Duration::new((nanos / 1_000_000_000) as u64, (nanos % 1_000_000_000) as u32)
}

enum Out<W: Write> {
    Pcap(W),
    Ng(PcapNgWriter<W>),
}

/// Writes Ethernet frames with nanosecond stamps.
pub struct Writer<W: Write> {
    out: Out<W>,
}

impl Writer<BufWriter<File>> {
    /// Create `path`; the format is `format`, or from the name.
    pub fn create(path: &Path, format: Option<Format>) -> io::Result<Writer<BufWriter<File>>> {
        let f = File::create(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Writer::new(BufWriter::with_capacity(1 << 16, f), format.unwrap_or_else(|| Format::for_path(path)))
    }
}

impl<W: Write> Writer<W> {
    pub fn new(mut w: W, format: Format) -> io::Result<Writer<W>> {
        let out = match format {
            Format::Pcap => {
                let h = PcapHeader {
                    snaplen: SNAPLEN,
                    datalink: DataLink::ETHERNET,
                    ts_resolution: TsResolution::NanoSecond,
                    endianness: if cfg!(target_endian = "big") { Endianness::Big } else { Endianness::Little },
                    ..PcapHeader::default()
                };
                h.write_to(&mut w).map_err(error)?;
                Out::Pcap(w)
            }
            Format::PcapNg => {
                let mut n = PcapNgWriter::new(w).map_err(error)?;
                let idb = InterfaceDescriptionBlock {
                    linktype: DataLink::ETHERNET,
                    snaplen: SNAPLEN,
                    options: vec![InterfaceDescriptionOption::IfTsResol(9)],
                };
                n.write_pcapng_block(idb).map_err(error)?;
                Out::Ng(n)
            }
        };
        Ok(Writer { out })
    }

    pub fn write(&mut self, data: &[u8], ts: SystemTime) -> io::Result<()> {
        let timestamp = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        if data.len() > SNAPLEN as usize {
            return Err(invalid(format!("frame of {} bytes: longer than the snap length {SNAPLEN}", data.len())));
        }
        let len = data.len() as u32;
        match &mut self.out {
            Out::Pcap(w) => PcapPacket::new(timestamp, len, data)
                .write_to::<_, NativeEndian>(w, TsResolution::NanoSecond, SNAPLEN)
                .map(drop)
                .map_err(error),
            Out::Ng(n) => {
                let epb = EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp,
                    original_len: len,
                    data: Cow::Borrowed(data),
                    options: vec![],
                };
                n.write_pcapng_block(epb).map(drop).map_err(error)
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.get_mut().flush()
    }

    pub fn get_mut(&mut self) -> &mut W {
        match &mut self.out {
            Out::Pcap(w) => w,
            Out::Ng(n) => n.get_mut(),
        }
    }

    pub fn into_inner(self) -> W {
        match self.out {
            Out::Pcap(w) => w,
            Out::Ng(n) => n.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(format: Format) {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let mut w = Writer::new(Vec::new(), format).unwrap();
        w.write(&[1; 60], t).unwrap();
        w.write(&[2; 1514], t + Duration::from_nanos(1)).unwrap();
        let bytes = w.into_inner();
        let mut r = Reader::new(&bytes[..]).unwrap();
        assert_eq!(r.format, format);
        let a = r.next_record().unwrap().unwrap();
        assert_eq!((a.data, a.orig_len, a.linktype), (vec![1; 60], 60, LINKTYPE_ETHERNET));
        assert_eq!(a.timestamp, Duration::new(1_700_000_000, 123_456_789), "nanoseconds kept");
        let b = r.next_record().unwrap().unwrap();
        assert_eq!((b.data.len(), b.timestamp.subsec_nanos()), (1514, 123_456_790));
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn pcap_and_pcapng_round_trip_with_nanoseconds() {
        round_trip(Format::Pcap);
        round_trip(Format::PcapNg);
    }

    #[test]
    fn pcapng_stamps_follow_if_tsresol() {
        assert_eq!(scale(1_500_000, 6), Duration::from_millis(1500), "microseconds (the default)");
        assert_eq!(scale(1_500_000_000, 9), Duration::from_millis(1500));
        assert_eq!(scale(3 << 10, 0x8a), Duration::from_secs(3), "2^-10");
        assert_eq!(scale(1, 0x7f), Duration::ZERO, "nonsense: no stamp rather than a panic");
    }

    #[test]
    fn damaged_files_are_errors() {
        assert!(Reader::new(&b"hello, world, not a capture"[..]).err().unwrap().to_string().contains("not a pcap"));
        assert!(Reader::new(&b"\xd4\xc3"[..]).is_err());
        for format in [Format::Pcap, Format::PcapNg] {
            let mut w = Writer::new(Vec::new(), format).unwrap();
            w.write(&[7; 100], SystemTime::now()).unwrap();
            let bytes = w.into_inner();
            // Every truncation and a flipped byte in every place: an error or
            // a record, never a panic.
            for cut in 0..bytes.len() {
                if let Ok(mut r) = Reader::new(&bytes[..cut]) {
                    while let Ok(Some(_)) = r.next_record() {}
                }
            }
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0xff;
                if let Ok(mut r) = Reader::new(&b[..]) {
                    for _ in 0..4 {
                        if !matches!(r.next_record(), Ok(Some(_))) {
                            break;
                        }
                    }
                }
            }
        }
    }
}
