#!/usr/bin/python3
"""Check frames snabb-rs's Encap wrote, with scapy.

usage: check_encap.py KIND ENCAP.pcap INNER.pcap [KIND ENCAP.pcap INNER.pcap ...]

Each frame of ENCAP.pcap must be the frame at the same place in INNER.pcap
inside the tunnel KIND (see make_pcaps.py for the parameters), sent from
192.0.2.1 / 2001:db8::1 to 192.0.2.2 / 2001:db8::2, and every length and
checksum in it must be the one scapy computes itself: the frame is parsed,
its length and checksum fields are deleted, and scapy's rebuild must give
the same bytes. Prints one line per problem; exits 1 if there was any.
"""

import sys

from scapy.all import GRE, IP, UDP, Dot1AD, Dot1Q, Ether, IPv6, rdpcap
from scapy.layers.vxlan import VXLAN

A4, B4 = "192.0.2.1", "192.0.2.2"
A6, B6 = "2001:db8::1", "2001:db8::2"


def rebuilt(raw):
    """scapy's own lengths and checksums for the frame `raw`."""
    p = Ether(raw)
    if IP in p:
        del p[IP].len
        del p[IP].chksum
        del p[IP].ihl
    if IPv6 in p:
        del p[IPv6].plen
    if UDP in p:
        del p[UDP].len
        if p[UDP].chksum != 0:  # zero means "no checksum" and stays
            del p[UDP].chksum
    if GRE in p and p[GRE].chksum_present:
        del p[GRE].chksum
    return bytes(p)


def check(kind, raw, inner):
    errors = []
    p = Ether(raw)

    def want(what, got, expected):
        if got != expected:
            errors.append("%s: %r, expected %r" % (what, got, expected))

    if rebuilt(raw) != raw:
        errors.append("lengths or checksums differ from scapy's")
    if kind in ("vlan", "qinq"):
        e = Ether(inner)
        want("addresses", (p.src, p.dst), (e.src, e.dst))
        if kind == "vlan":
            want("tag", (p.type, p[Dot1Q].vlan, p[Dot1Q].prio), (0x8100, 100, 3))
            rest = bytes(p[Dot1Q].payload)
            want("type", p[Dot1Q].type, e.type)
        else:
            want("tags", (p.type, p[Dot1AD].vlan, p[Dot1Q].vlan), (0x88A8, 20, 100))
            rest = bytes(p[Dot1Q].payload)
            want("type", p[Dot1Q].type, e.type)
        want("payload", rest, bytes(e.payload))
        return errors
    want("outer MACs", (p.src, p.dst), ("02:00:00:00:00:aa", "02:00:00:00:00:bb"))
    if "4" in kind:
        ip = p[IP]
        want("IPv4 addresses", (ip.src, ip.dst), (A4, B4))
        want("TTL", ip.ttl, 64)
        want("fragment", (ip.flags.MF, ip.frag), (0, 0))
        payload = ip.payload
    else:
        ip = p[IPv6]
        want("IPv6 addresses", (ip.src, ip.dst), (A6, B6))
        want("hop limit", ip.hlim, 64)
        payload = ip.payload
    if kind.startswith("vxlan"):
        u = p[UDP]
        want("UDP port", u.dport, 4789)
        if not 49152 <= u.sport <= 65535:
            errors.append("UDP source port %d outside 49152-65535" % u.sport)
        if kind == "vxlan6" and u.chksum == 0:
            errors.append("no UDP checksum over IPv6")
        v = p[VXLAN]
        want("VXLAN I flag", v.flags & 0x08, 0x08)
        want("VNI", v.vni, 5000 if kind == "vxlan4" else 0xABCDEF)
        want("inner frame", bytes(v.payload), inner)
    elif kind.startswith("gre"):
        g = p[GRE]
        want("GRE protocol", g.proto, 0x6558)
        keyed = kind in ("gre4key", "gre6key", "gre6opts")
        want("GRE key", (g.key_present, g.key if g.key_present else None), (1, 99) if keyed else (0, None))
        want("GRE checksum present", g.chksum_present, 1 if "csum" in kind else 0)
        want("inner frame", bytes(g.payload), inner)
    elif kind == "l2tpv3":
        want("next header", ip.nh, 115)
        b = bytes(payload)
        want("session", int.from_bytes(b[0:4], "big"), 0x1234)
        want("cookie", int.from_bytes(b[4:12], "big"), 0x1122334455667788)
        want("inner frame", b[12:], inner)
    else:
        errors.append("unknown kind " + kind)
    return errors


def main():
    args = sys.argv[1:]
    total = 0
    for k in range(0, len(args) - 2, 3):
        kind, encap, inner = args[k : k + 3]
        got = [bytes(p) for p in rdpcap(encap)]
        expected = [bytes(p) for p in rdpcap(inner)]
        bad = 0
        if len(got) != len(expected):
            print("%s: %d frames, expected %d" % (kind, len(got), len(expected)))
            bad += 1
        for i, (raw, inn) in enumerate(zip(got, expected)):
            for e in check(kind, raw, inn):
                print("%s frame %d: %s" % (kind, i, e))
                bad += 1
        print("%s: %d frames checked, %d problems" % (kind, len(got), bad))
        total += bad
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
