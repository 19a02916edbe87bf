#!/usr/bin/python3
"""Write tunnelled frames with scapy, for snabb-rs's Decap tests.

usage: make_pcaps.py OUTDIR

For each kind K of tunnel it writes OUTDIR/K.pcap (the frames as a peer
at 192.0.2.1 / 2001:db8::1 sends them to 192.0.2.2 / 2001:db8::2) and
OUTDIR/K.inner.pcap (the frames inside, in order). It also writes
OUTDIR/rejects.pcap, VXLAN-over-IPv4 frames a Decap must refuse, with the
reason for each, one a line, in OUTDIR/rejects.txt. The parameters match
the tunnels in tests/scapy.rs.
"""

import os
import sys

from scapy.all import GRE, ICMP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPOption, IPv6, Raw, wrpcap
from scapy.layers.inet6 import IPv6ExtHdrDestOpt
from scapy.layers.vxlan import VXLAN

A4, B4 = "192.0.2.1", "192.0.2.2"
A6, B6 = "2001:db8::1", "2001:db8::2"
OUTER = dict(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb")
TEB = 0x6558


def inners():
    """Inner frames of several kinds and sizes (60 bytes up to a jumbo)."""
    frames = []
    for i, size in enumerate([0, 10, 100, 500, 1400, 8000]):
        payload = bytes((j * 7 + i) % 256 for j in range(size))
        frames.append(
            Ether(src="52:54:00:00:00:%02x" % i, dst="52:54:00:00:01:%02x" % i)
            / IP(src="10.0.0.1", dst="10.0.0.%d" % (i + 2))
            / UDP(sport=1000 + i, dport=2000)
            / Raw(payload)
        )
    frames.append(
        Ether(src="52:54:00:00:00:10", dst="52:54:00:00:01:10")
        / IPv6(src="fd00::1", dst="fd00::2")
        / TCP(sport=80, dport=443, flags="S")
    )
    frames.append(Ether(src="52:54:00:00:00:11", dst="52:54:00:00:01:11") / IP(src="10.1.0.1", dst="10.1.0.2") / ICMP())
    # A minimum-size frame of an experimental ethertype.
    frames.append(Ether(src="52:54:00:00:00:12", dst="52:54:00:00:01:12", type=0x88B5) / Raw(b"x" * 46))
    return [bytes(f) for f in frames]


def vlan(f):
    e = Ether(f)
    return Ether(src=e.src, dst=e.dst) / Dot1Q(vlan=100, prio=3, type=e.type) / e.payload


def qinq(f):
    e = Ether(f)
    return Ether(src=e.src, dst=e.dst) / Dot1AD(vlan=20) / Dot1Q(vlan=100, type=e.type) / e.payload


def vxlan4(f, i):
    return Ether(**OUTER) / IP(src=A4, dst=B4, id=i) / UDP(sport=49152 + i, dport=4789) / VXLAN(vni=5000) / Raw(f)


def vxlan6(f, i):
    return Ether(**OUTER) / IPv6(src=A6, dst=B6) / UDP(sport=50000 + i, dport=4789) / VXLAN(vni=0xABCDEF) / Raw(f)


def gre4(f, i):
    return Ether(**OUTER) / IP(src=A4, dst=B4) / GRE(proto=TEB) / Raw(f)


def gre4key(f, i):
    return Ether(**OUTER) / IP(src=A4, dst=B4) / GRE(key_present=1, key=99, proto=TEB) / Raw(f)


def gre4csum(f, i):
    return Ether(**OUTER) / IP(src=A4, dst=B4) / GRE(chksum_present=1, seqnum_present=1, seqence_number=i, proto=TEB) / Raw(f)


def gre6key(f, i):
    return Ether(**OUTER) / IPv6(src=A6, dst=B6) / GRE(key_present=1, key=99, proto=TEB) / Raw(f)


def gre6opts(f, i):
    # A destination options header between IPv6 and GRE.
    return Ether(**OUTER) / IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / GRE(key_present=1, key=99, proto=TEB) / Raw(f)


def l2tpv3(f, i):
    # scapy has no L2TPv3-over-IP layer: the 12 bytes are session id and cookie.
    shim = (0x1234).to_bytes(4, "big") + (0x1122334455667788).to_bytes(8, "big")
    return Ether(**OUTER) / IPv6(src=A6, dst=B6, nh=115) / Raw(shim + f)


KINDS = {
    "vlan": lambda f, i: vlan(f),
    "qinq": lambda f, i: qinq(f),
    "vxlan4": vxlan4,
    "vxlan6": vxlan6,
    "gre4": gre4,
    "gre4key": gre4key,
    "gre4csum": gre4csum,
    "gre6key": gre6key,
    "gre6opts": gre6opts,
    "l2tpv3": l2tpv3,
}


def rejects():
    f = inners()[2]
    good = vxlan4(f, 1)
    cases = [
        (Ether(**OUTER) / IP(src=A4, dst=B4) / UDP(sport=1, dport=4789) / VXLAN(vni=5001) / Raw(f), "wrong_id"),
        (Ether(**OUTER) / IP(src=A4, dst=B4) / UDP(sport=1, dport=4790) / VXLAN(vni=5000) / Raw(f), "wrong_port"),
        (Ether(**OUTER) / IP(src=A4, dst=B4, flags="MF") / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f), "fragment"),
        (Ether(**OUTER) / IP(src=A4, dst=B4, frag=100) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f), "fragment"),
        (Ether(**OUTER) / IP(src=A4, dst=B4, chksum=0x1234) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f), "bad_checksum"),
        (Ether(**OUTER) / IP(src=A4, dst=B4) / UDP(dport=4789, chksum=0x1111) / VXLAN(vni=5000) / Raw(f), "bad_checksum"),
        (Ether(**OUTER) / IP(src=A4, dst=B4, ihl=4) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f), "short_ip_header"),
        (Ether(**OUTER) / IP(src=A4, dst=B4, len=2000) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f), "ip_length"),
        (Ether(**OUTER) / IP(src=A4, dst=B4, version=5) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f), "bad_header"),
        (Ether(**OUTER) / IP(src=A4, dst=A4) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f), "wrong_address"),
        (Ether(**OUTER) / IP(src=B4, dst=B4) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f), "wrong_address"),
        (Ether(**OUTER) / IP(src=A4, dst=B4) / UDP(dport=4789, len=7) / VXLAN(vni=5000) / Raw(f), "udp_length"),
        (Ether(**OUTER) / IP(src=A4, dst=B4) / UDP(dport=4789) / VXLAN(vni=5000, flags=0) / Raw(f), "flags"),
        (Ether(**OUTER) / IP(src=A4, dst=B4) / GRE(proto=TEB) / Raw(f), "not_tunnel"),
        (Ether(**OUTER) / IPv6(src=A6, dst=B6) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f), "not_tunnel"),
        (Ether(**OUTER) / IP(src=A4, dst=B4) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f[:13]), "truncated"),
        (Ether(bytes(good)[:40]), "ip_length"),
        (Ether(bytes(good)[:14]), "short_ip_header"),
        (Ether(**OUTER) / IP(src=A4, dst=B4, options=IPOption(b"\x01\x01\x01\x00")) / UDP(dport=4789) / VXLAN(vni=5000) / Raw(f[:13]), "truncated"),
    ]
    return cases


def main():
    out = sys.argv[1]
    frames = inners()
    for name, make in KINDS.items():
        wrpcap(os.path.join(out, name + ".pcap"), [make(f, i) for i, f in enumerate(frames)])
        wrpcap(os.path.join(out, name + ".inner.pcap"), [Ether(f) for f in frames])
    cases = rejects()
    wrpcap(os.path.join(out, "rejects.pcap"), [p for p, _ in cases])
    with open(os.path.join(out, "rejects.txt"), "w") as t:
        t.write("".join(why + "\n" for _, why in cases))
    print("wrote %d kinds of %d frames and %d rejects" % (len(KINDS), len(frames), len(cases)))


if __name__ == "__main__":
    main()
