//! The everyday apps: traffic in, traffic out, fan-out and fan-in, pcap
//! files, and a comparator for tests.
//!
//! | class        | ports                          | does                                   |
//! |--------------|--------------------------------|----------------------------------------|
//! | `Source`     | out: any                       | generates frames of given sizes        |
//! | `Sink`       | in: any                        | drops everything, counting it          |
//! | `Tee`        | in: any; out: any              | every packet to every output           |
//! | `Join`       | in: any; out: `output`         | all inputs to one output               |
//! | `Split`      | in: any; out: any              | round robin over the outputs           |
//! | `Repeater`   | in: `input`; out: `output`     | records, then replays forever          |
//! | `PcapReader` | out: `output`                  | packets from a pcap file               |
//! | `PcapWriter` | in: `input`                    | packets to a pcap file                 |
//! | `Match`      | in: `rx`, `comparator`         | checks `rx` carries what `comparator` does |

pub mod fanout;
pub mod matcher;
pub mod pcap;
pub mod repeater;
pub mod sink;
pub mod source;

pub use fanout::{Join, Split, Tee};
pub use matcher::Match;
pub use pcap::{PcapReader, PcapWriter};
pub use repeater::Repeater;
pub use sink::Sink;
pub use source::Source;

use snabb_core::Registry;

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<Source>("Source", "generates Ethernet frames of given sizes")
        .register::<Sink>("Sink", "drops every packet, counting them")
        .register::<Tee>("Tee", "copies every input packet to every output")
        .register::<Join>("Join", "merges all inputs onto `output`")
        .register::<Split>("Split", "spreads input packets round robin over the outputs")
        .register::<Repeater>("Repeater", "records `input`, then replays it on `output` forever")
        .register::<PcapReader>("PcapReader", "reads packets from a pcap file")
        .register::<PcapWriter>("PcapWriter", "writes packets to a pcap file")
        .register::<Match>("Match", "checks that `rx` carries the packets `comparator` does");
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![
        ("Source", source::selftest),
        ("Sink", sink::selftest),
        ("Tee", fanout::selftest_tee),
        ("Join", fanout::selftest_join),
        ("Split", fanout::selftest_split),
        ("Repeater", repeater::selftest),
        ("PcapReader", pcap::selftest_reader),
        ("PcapWriter", pcap::selftest_writer),
        ("Match", matcher::selftest),
    ]
}

/// A registry with this crate's classes, for tests.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register(&mut r);
    r
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

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
