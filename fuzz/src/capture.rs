//! `capture`: a capture file's bytes through both file readers, the
//! streaming [`FileSource`] (pcap and pcapng, any reader) and the
//! memory-mapped [`MappedPcap`] (classic pcap on disk, the fast path
//! `apitap -r` takes).
//!
//! Input: the file, as it is (written to a file in `/dev/shm`, or the
//! temporary directory, once per input).
//!
//! Checked: neither panics (gzip and zstd files too: only the streaming
//! reader takes them); what `MappedPcap` reads of a classic pcap is
//! what `FileSource` reads (the same packets, timestamps, link types and
//! wire lengths, in order; both stop early, or neither; the same counters),
//! as its module promises; and what libpcap's own reader (`pcap_next_ex`)
//! reads of the same file, packet for packet, up to where it stops (see
//! [`against_libpcap`] for the few places where the two differ on purpose).

use apitap::capture::file::FileSource;
use apitap::capture::mapped::MappedPcap;
use apitap::capture::{PacketSource, RawPacket, SourceEvent};
use apitap::clock::Timestamp;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One packet, owned.
#[derive(Debug, PartialEq, Eq)]
struct Packet {
    ts: Timestamp,
    link: u32,
    data: Vec<u8>,
    wire_len: u32,
}

impl Packet {
    fn of(p: &RawPacket<'_>) -> Self {
        Packet {
            ts: p.ts,
            link: p.link.0,
            data: p.data.to_vec(),
            wire_len: p.wire_len,
        }
    }
}

/// Where this process writes each input (a RAM-backed directory when there
/// is one: the write is part of every execution).
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("apitap-fuzz-capture-{}.pcap", std::process::id()))
    })
}

pub fn run(data: &[u8]) {
    let path = path();
    std::fs::write(path, data).expect("write the input file");
    let name = path.to_str().expect("a UTF-8 path");

    let Ok(mut stream) = FileSource::open(name) else {
        // Not a capture (or no header): the mapped reader must not take it
        // either.
        assert!(
            !matches!(MappedPcap::open(name), Ok(Some(_))),
            "the mapped reader reads a file the streaming one refuses"
        );
        return;
    };
    // A gzip or zstd file is decompressed first: its records are not bytes
    // of the input, and a few kilobytes can hold millions of them. Only
    // the streaming reader takes it (checked below), up to a bound.
    let compressed = data.starts_with(&[0x1f, 0x8b]) || data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let mut streamed = Vec::new();
    loop {
        if compressed && streamed.len() >= 100_000 {
            return;
        }
        match stream.next_event() {
            Ok(Some(SourceEvent::Packet(p))) => streamed.push(Packet::of(&p)),
            Ok(Some(SourceEvent::Tick(_))) => panic!("a file yields a clock tick"),
            Ok(None) => break,
            // A read error ends the file; it is not a packet.
            Err(_) => break,
        }
        // Every record takes at least 8 bytes of the file (a pcapng Simple
        // Packet Block's head with nothing in it is 12, a pcap record's 16).
        assert!(
            compressed || streamed.len() <= data.len() / 8,
            "{} packets from {} bytes",
            streamed.len(),
            data.len()
        );
    }
    if compressed {
        assert!(
            !matches!(MappedPcap::open(name), Ok(Some(_))),
            "the mapped reader takes a compressed file"
        );
        return; // libpcap does not decompress.
    }
    let classic = !data.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]);
    // libpcap also reads the files of libpcap before 0.4 (versions below
    // 2.3, whose records swap the two lengths); apitap, like tshark, reads
    // version 2.4 only.
    let ancient = classic && !matches!(data.get(4..8), Some([2, 0, 4, 0] | [0, 2, 0, 4]));
    if !ancient {
        let nanos = matches!(
            data.get(..4),
            Some([0x4d, 0x3c, 0xb2, 0xa1] | [0xa1, 0xb2, 0x3c, 0x4d])
        );
        against_libpcap(name, classic, nanos, &streamed);
    }
    let Ok(Some(mut mapped)) = MappedPcap::open(name) else {
        return; // pcapng, or a pcap variant only the streaming reader knows
    };
    let mut read = Vec::new();
    while let Some(p) = mapped.next_packet() {
        read.push(Packet::of(&p));
    }
    assert_eq!(read.len(), streamed.len(), "packet counts differ");
    for (i, (m, s)) in read.iter().zip(&streamed).enumerate() {
        assert_eq!(m, s, "packet {i} differs (mapped, streamed)");
    }
    assert_eq!(
        mapped.truncation().is_some(),
        stream.truncation().is_some(),
        "one reader stops early and the other does not: mapped {:?}, streamed {:?}",
        mapped.truncation(),
        stream.truncation()
    );
    assert_eq!(mapped.stats(), stream.stats(), "the counters differ");
}

/// libpcap's reader on the same file: every packet it reads before it
/// stops (at the end, or at what it calls corrupt) is the packet apitap
/// read there.
fn against_libpcap(name: &str, classic: bool, nanos: bool, streamed: &[Packet]) {
    let Ok(mut cap) = pcap::Capture::from_file(name) else {
        return;
    };
    let mut i = 0;
    loop {
        let p = match cap.next_packet() {
            Ok(p) => p,
            Err(pcap::Error::NoMorePackets) => {
                assert_eq!(
                    streamed.len(),
                    i,
                    "libpcap reads {i} packets to the end, apitap {}",
                    streamed.len()
                );
                return;
            }
            Err(_) => return,
        };
        let Some(ours) = streamed.get(i) else {
            panic!("libpcap reads packet {i}, apitap stopped before it");
        };
        // libpcap reads a classic record's seconds and fraction as signed
        // 32-bit numbers (1901-2038); the format (the IETF draft,
        // Wireshark) and apitap as unsigned. The bits are the same.
        let (secs, frac) = (p.header.ts.tv_sec, p.header.ts.tv_usec);
        let ts = if classic {
            let secs = i64::from(secs as i32 as u32);
            // A nanosecond fraction of 2^31 or more (nonsense: over two
            // seconds) libpcap divides as signed, apitap as unsigned.
            let over = ours.ts.as_micros().saturating_sub(secs * 1_000_000) >= 2_147_483;
            if nanos && over {
                ours.ts
            } else {
                Timestamp::from_secs_micros(secs, i64::from(frac as i32 as u32))
            }
        } else if matches!(ours.ts.as_micros(), i64::MIN | i64::MAX) {
            // Past the range of microseconds in an i64 (some 292,000
            // years): apitap saturates, libpcap's arithmetic wraps.
            ours.ts
        } else if secs == 0 && frac == 0 {
            // A Simple Packet Block has no timestamp: libpcap gives it 0,
            // apitap the previous packet's (time must not go back).
            ours.ts
        } else {
            Timestamp::from_secs_micros(secs, frac)
        };
        // A record longer than the file's snaplen (but sane): libpcap cuts
        // it to the snaplen, apitap (like Wireshark) keeps what was
        // written. The rest must agree.
        let cut = p.data.len() < ours.data.len() && ours.data.starts_with(p.data);
        if !cut {
            assert_eq!(
                ours.data, p.data,
                "packet {i}'s bytes differ (apitap, libpcap)"
            );
        }
        let theirs = Packet {
            ts,
            link: ours.link,
            data: ours.data.clone(),
            wire_len: p.header.len.max(ours.data.len() as u32),
        };
        assert_eq!(ours, &theirs, "packet {i} differs (apitap, libpcap)");
        i += 1;
    }
}
