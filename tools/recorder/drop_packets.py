#!/usr/bin/env python3
"""Copy a classic pcap, leaving out chosen packets (standard library only).

  drop_packets.py IN.pcap OUT.pcap --drop N[,M,A-B...]
  drop_packets.py IN.pcap --list

Packet numbers are 1-based, the same as tshark's / Wireshark's frame.number
and the order of `tcpdump -r`. A range A-B drops A..B inclusive. The global
header (byte order, micro/nanosecond magic, snaplen, link type) and every
kept record are copied byte for byte, so the lossy copy replays against the
same truth file as the original (the truth is what the clients saw; only the
monitor's view changes).

--list prints one line per packet (number, time offset, Ethernet/IPv4/TCP
endpoints, flags, payload length and the first bytes of the payload) to help
choose what to drop. Only classic pcap is read; pcapng is refused.
"""
import argparse
import struct
import sys

MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


def read_pcap(path):
    """Return (global_header_bytes, endian, tick, linktype, [(record_header, data)])."""
    with open(path, "rb") as f:
        gh = f.read(24)
        if len(gh) < 24:
            raise SystemExit("%s: too short for a pcap file" % path)
        if gh[:4] == b"\x0a\x0d\x0d\x0a":
            raise SystemExit("%s: pcapng is not supported; convert with: editcap -F pcap IN OUT" % path)
        if gh[:4] not in MAGICS:
            raise SystemExit("%s: not a classic pcap file (magic %s)" % (path, gh[:4].hex()))
        e, tick = MAGICS[gh[:4]]
        linktype = struct.unpack(e + "I", gh[20:24])[0]
        recs = []
        while True:
            rh = f.read(16)
            if not rh:
                break
            if len(rh) < 16:
                sys.stderr.write("warning: truncated record header at the end of %s, ignored\n" % path)
                break
            incl = struct.unpack(e + "IIII", rh)[2]
            data = f.read(incl)
            if len(data) < incl:
                sys.stderr.write("warning: truncated last packet in %s, ignored\n" % path)
                break
            recs.append((rh, data))
    return gh, e, tick, linktype, recs


def parse_numbers(spec):
    out = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            a, b = int(a), int(b)
            if a < 1 or b < a:
                raise SystemExit("bad range %r" % part)
            out.update(range(a, b + 1))
        else:
            n = int(part)
            if n < 1:
                raise SystemExit("packet numbers start at 1: %r" % part)
            out.add(n)
    return out


def describe(data, linktype):
    """Short text for an Ethernet (1) or raw IPv4 (101/228) frame."""
    off = 0
    if linktype == 1:
        if len(data) < 14:
            return "short frame"
        et = struct.unpack("!H", data[12:14])[0]
        off = 14
        while et in (0x8100, 0x88A8) and len(data) >= off + 4:
            et = struct.unpack("!H", data[off + 2:off + 4])[0]
            off += 4
        if et != 0x0800:
            return "ethertype 0x%04x" % et
    elif linktype not in (101, 228):
        return "linktype %d" % linktype
    ip = data[off:]
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return "not IPv4"
    ihl = (ip[0] & 15) * 4
    tot = struct.unpack("!H", ip[2:4])[0]
    src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
    if ip[9] != 6:
        return "%s > %s proto %d" % (src, dst, ip[9])
    tcp = ip[ihl:tot]
    if len(tcp) < 20:
        return "%s > %s short TCP" % (src, dst)
    sp, dp, seq, ack = struct.unpack("!HHII", tcp[:12])
    doff = (tcp[12] >> 4) * 4
    fl = tcp[13]
    flags = "".join(c for c, bit in zip("FSRPAU", (1, 2, 4, 8, 16, 32)) if fl & bit)
    payload = tcp[doff:]
    first = payload[:40].split(b"\r\n")[0].decode("latin-1")
    first = "".join(ch if 32 <= ord(ch) < 127 else "." for ch in first)
    return "%s:%d > %s:%d [%s] seq=%d ack=%d len=%d %s" % (src, sp, dst, dp, flags, seq, ack, len(payload), first)


def main():
    ap = argparse.ArgumentParser(description="Drop packets from a classic pcap.")
    ap.add_argument("input")
    ap.add_argument("output", nargs="?")
    ap.add_argument("--drop", help="1-based packet numbers: N[,M,A-B...]")
    ap.add_argument("--list", action="store_true", help="print the packets and exit")
    a = ap.parse_args()
    gh, e, tick, linktype, recs = read_pcap(a.input)
    if a.list:
        t0 = None
        for i, (rh, data) in enumerate(recs, 1):
            sec, frac = struct.unpack(e + "II", rh[:8])
            t = sec + frac * tick
            t0 = t if t0 is None else t0
            print("%5d %10.6f %s" % (i, t - t0, describe(data, linktype)))
        return 0
    if not a.output or not a.drop:
        ap.error("OUT.pcap and --drop are required (or use --list)")
    drop = parse_numbers(a.drop)
    missing = sorted(n for n in drop if n > len(recs))
    if missing:
        raise SystemExit("%s has %d packets; no packet %s" % (a.input, len(recs), ",".join(map(str, missing))))
    with open(a.output, "wb") as f:
        f.write(gh)
        for i, (rh, data) in enumerate(recs, 1):
            if i not in drop:
                f.write(rh)
                f.write(data)
    sys.stderr.write("%s: %d of %d packets kept, dropped %s\n" %
                     (a.output, len(recs) - len(drop), len(recs), ",".join(map(str, sorted(drop)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
