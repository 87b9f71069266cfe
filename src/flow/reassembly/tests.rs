use super::*;
use proptest::prelude::*;

/// What a table expects of an event (ack and ts are checked separately).
#[derive(Clone, Debug, PartialEq, Eq)]
enum E {
    D(u32, Vec<u8>),
    G(u32, u32),
    Fin,
    Rst,
}

fn d(seq: u32, data: &[u8]) -> E {
    E::D(seq, data.to_vec())
}

fn g(seq: u32, len: u32) -> E {
    E::G(seq, len)
}

fn shape(e: &OwnedEvent) -> E {
    match e {
        OwnedEvent::Data { seq, data, .. } => E::D(*seq, data.clone()),
        OwnedEvent::Gap { seq, len, .. } => E::G(*seq, *len),
        OwnedEvent::Fin { .. } => E::Fin,
        OwnedEvent::Reset { .. } => E::Rst,
    }
}

/// One packet (or pseudo-step) of a scenario.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// SYN with this ISN and payload.
    Syn(u32, &'static [u8]),
    Seg(u32, &'static [u8]),
    /// Payload and FIN.
    Fin(u32, &'static [u8]),
    Rst(u32),
    /// Payload cut by snaplen, with this many bytes missing after it.
    Snap(u32, &'static [u8], u32),
    /// A packet of the other direction acknowledging this far.
    Ack(u32),
    /// Packets that change nothing here.
    Tick(u32),
    /// This many microseconds pass without a packet.
    Wait(i64),
    /// A packet of the other direction carrying data, acknowledging this
    /// far (the flow table's order: peer_ack, declare_before, tick).
    PeerData(u32),
    Flush,
    /// Assert how many events were emitted so far.
    Count(usize),
    /// A sweep this many microseconds after the last packet (the
    /// connection went quiet): [`Reassembler::declare_overdue`].
    Sweep(i64),
}

/// Drives one [`Reassembler`] the way the flow table does (segment or
/// peer_ack, then tick, per packet), one microsecond per packet.
struct Harness {
    r: Reassembler,
    limits: StreamLimits,
    events: Vec<OwnedEvent>,
    t: i64,
    /// When the last packet came (a sweep is timed from it).
    last_packet: i64,
}

impl Harness {
    fn new(limits: StreamLimits) -> Self {
        Harness {
            r: Reassembler::new(),
            limits,
            events: Vec::new(),
            t: 0,
            last_packet: 0,
        }
    }

    fn ts(&mut self) -> Timestamp {
        self.t += 1;
        self.last_packet = self.t;
        Timestamp::from_micros(self.t)
    }

    #[allow(clippy::too_many_arguments)]
    fn packet(
        &mut self,
        seq: u32,
        ack: u32,
        syn: bool,
        fin: bool,
        rst: bool,
        data: &[u8],
        missing: u32,
    ) {
        let ts = self.ts();
        let mut out = collector(&mut self.events);
        self.r.segment(
            seq,
            ack,
            ts,
            syn,
            fin,
            rst,
            data,
            missing,
            &self.limits,
            &mut out,
        );
        self.r.tick(ts, &self.limits, &mut out);
    }

    fn ack(&mut self, ack: u32) {
        let ts = self.ts();
        let mut out = collector(&mut self.events);
        self.r.peer_ack(ack, ts, &self.limits, &mut out);
        self.r.tick(ts, &self.limits, &mut out);
    }

    fn tick(&mut self) {
        let ts = self.ts();
        let mut out = collector(&mut self.events);
        self.r.tick(ts, &self.limits, &mut out);
    }

    fn flush(&mut self) {
        let ts = self.ts();
        let mut out = collector(&mut self.events);
        self.r.flush(ts, &mut out);
    }

    fn step(&mut self, s: Step) {
        match s {
            Step::Syn(isn, data) => self.packet(isn, 0, true, false, false, data, 0),
            Step::Seg(seq, data) => self.packet(seq, 0, false, false, false, data, 0),
            Step::Fin(seq, data) => self.packet(seq, 0, false, true, false, data, 0),
            Step::Rst(seq) => self.packet(seq, 0, false, false, true, &[], 0),
            Step::Snap(seq, data, missing) => {
                self.packet(seq, 0, false, false, false, data, missing)
            }
            Step::Ack(a) => self.ack(a),
            Step::Tick(n) => (0..n).for_each(|_| self.tick()),
            Step::Wait(us) => self.t += us,
            Step::PeerData(a) => {
                let ts = self.ts();
                let mut out = collector(&mut self.events);
                self.r.peer_ack(a, ts, &self.limits, &mut out);
                self.r.declare_before(a, ts, &self.limits, &mut out);
                self.r.tick(ts, &self.limits, &mut out);
            }
            Step::Flush => self.flush(),
            Step::Sweep(us) => {
                let last = Timestamp::from_micros(self.last_packet);
                self.t = self.t.max(self.last_packet + us);
                let now = Timestamp::from_micros(self.last_packet + us);
                let mut out = collector(&mut self.events);
                self.r.declare_overdue(now, last, &self.limits, &mut out);
            }
            Step::Count(n) => assert_eq!(self.events.len(), n, "events so far: {:?}", self.events),
        }
    }

    fn shapes(&self) -> Vec<E> {
        self.events.iter().map(shape).collect()
    }
}

const ISN: u32 = 1000;
const M: u32 = u32::MAX;

fn limits(allowance: u32) -> StreamLimits {
    StreamLimits {
        ack_reorder_allowance: allowance,
        ack_reorder_micros: i64::MAX,
        ..StreamLimits::default()
    }
}

fn timed(allowance: u32, micros: i64) -> StreamLimits {
    StreamLimits {
        ack_reorder_allowance: allowance,
        ack_reorder_micros: micros,
        ..StreamLimits::default()
    }
}

fn tiny(bytes: usize, segments: usize) -> StreamLimits {
    StreamLimits {
        max_buffered_bytes: bytes,
        max_buffered_segments: segments,
        ack_reorder_allowance: 2,
        ack_reorder_micros: i64::MAX,
    }
}

#[test]
fn scenarios_emit_expected_events() {
    use Step::*;
    let fin = E::Fin;
    let rst = E::Rst;
    #[rustfmt::skip]
    let cases: Vec<(&str, StreamLimits, Vec<Step>, Vec<E>)> = vec![
        ("in_order_delivered_as_is", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1004, b"de")],
            vec![d(1001, b"abc"), d(1004, b"de")]),
        ("reorder_of_two_delivered_in_order", limits(2),
            vec![Syn(ISN, b""), Seg(1004, b"de"), Count(0), Seg(1001, b"abc")],
            vec![d(1001, b"abc"), d(1004, b"de")]),
        ("reorder_of_n_delivered_in_order", limits(2),
            vec![Syn(ISN, b""), Seg(1007, b"gh"), Seg(1004, b"def"), Seg(1009, b"i"), Count(0), Seg(1001, b"abc")],
            vec![d(1001, b"abc"), d(1004, b"def"), d(1007, b"gh"), d(1009, b"i")]),
        ("duplicate_dropped", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1001, b"abc"), Seg(1004, b"d")],
            vec![d(1001, b"abc"), d(1004, b"d")]),
        ("overlap_with_delivered_trimmed", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1002, b"bcde")],
            vec![d(1001, b"abc"), d(1004, b"de")]),
        ("overlap_with_buffered_identical_kept_once", limits(2),
            vec![Syn(ISN, b""), Seg(1004, b"def"), Seg(1005, b"efgh"), Seg(1001, b"abc")],
            vec![d(1001, b"abc"), d(1004, b"def"), d(1007, b"gh")]),
        ("overlap_with_buffered_conflicting_first_wins", limits(2),
            vec![Syn(ISN, b""), Seg(1004, b"def"), Seg(1004, b"XeY"), Seg(1001, b"abc")],
            vec![d(1001, b"abc"), d(1004, b"def")]),
        ("in_order_segment_over_buffered_first_wins", limits(2),
            vec![Syn(ISN, b""), Seg(1004, b"def"), Seg(1001, b"abcXYZg")],
            vec![d(1001, b"abc"), d(1004, b"def"), d(1007, b"g")]),
        ("buffered_segment_spanning_two_runs_fills_between", limits(2),
            vec![Syn(ISN, b""), Seg(1004, b"d"), Seg(1006, b"f"), Seg(1003, b"cdefg"), Seg(1001, b"ab")],
            vec![d(1001, b"ab"), d(1003, b"c"), d(1004, b"d"), d(1005, b"e"), d(1006, b"f"), d(1007, b"g")]),
        ("gap_after_peer_ack_and_allowance", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1007, b"gh"), Ack(1009), Tick(1), Count(1), Tick(1)],
            vec![d(1001, b"abc"), g(1004, 3), d(1007, b"gh")]),
        ("quiet_connection_declares_an_acked_hole_by_time", timed(16, 1000),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1007, b"gh"), Ack(1009), Tick(1), Count(1), Wait(998), Tick(1)],
            vec![d(1001, b"abc"), g(1004, 3), d(1007, b"gh")]),
        // Two holes: the first is declared once the ticks run out; the
        // second, acknowledged just as long ago, at the next segment after
        // a quiet spell, not a full allowance later (meanwhile a request
        // whose response lies beyond it would time out).
        ("a_rearmed_hole_counts_its_time_from_its_acknowledgement", timed(2, 1_000),
            vec![Syn(ISN, b""), Seg(1001, b"a"), Seg(1003, b"c"), Seg(1005, b"e"),
                 Ack(1003), Ack(1006), Tick(1), Count(3), Wait(5_000), Tick(1)],
            vec![d(1001, b"a"), g(1002, 1), d(1003, b"c"), g(1004, 1), d(1005, b"e")]),
        ("data_acknowledging_past_a_hole_declares_it_at_once", limits(16),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1007, b"gh"), PeerData(1009), Count(3), Seg(1004, b"def")],
            vec![d(1001, b"abc"), g(1004, 3), d(1007, b"gh")]),
        ("data_acknowledging_what_was_read_declares_nothing", limits(16),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), PeerData(1004), Seg(1004, b"def"), Flush],
            vec![d(1001, b"abc"), d(1004, b"def")]),
        ("ack_before_data_within_allowance_no_gap", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Ack(1007), Tick(1), Seg(1004, b"def"), Tick(5), Flush],
            vec![d(1001, b"abc"), d(1004, b"def")]),
        ("ack_before_data_with_zero_allowance_is_a_gap", limits(0),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Ack(1007), Seg(1004, b"def")],
            vec![d(1001, b"abc"), g(1004, 3)]),
        ("ack_of_fin_declares_only_the_data_hole", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Fin(1007, b"gh"), Ack(1010), Tick(2), Seg(1004, b"def"), Flush],
            vec![d(1001, b"abc"), g(1004, 3), d(1007, b"gh"), fin.clone()]),
        ("ack_of_bare_fin_declares_only_the_data_hole", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Fin(1006, b""), Ack(1007), Tick(2), Flush],
            vec![d(1001, b"abc"), g(1004, 2), fin.clone()]),
        ("acked_tail_never_seen_is_a_gap", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Ack(1010), Tick(1), Count(1), Tick(1)],
            vec![d(1001, b"abc"), g(1004, 6)]),
        ("ack_of_unseen_fin_is_not_a_gap", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Ack(1005), Tick(5), Fin(1004, b"")],
            vec![d(1001, b"abc"), fin.clone()]),
        ("later_acked_hole_gets_its_own_allowance", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"a"), Seg(1003, b"c"), Seg(1005, b"e"),
                 Ack(1004), Ack(1006), Tick(1), Count(3), Tick(2), Count(3), Tick(1)],
            vec![d(1001, b"a"), g(1002, 1), d(1003, b"c"), g(1004, 1), d(1005, b"e")]),
        ("overflow_bytes_declares_first_hole", tiny(4, 16),
            vec![Syn(ISN, b""), Seg(1001, b"ab"), Seg(1005, b"ef"), Seg(1008, b"hij"), Count(3), Flush],
            vec![d(1001, b"ab"), g(1003, 2), d(1005, b"ef"), g(1007, 1), d(1008, b"hij")]),
        ("overflow_segments_declares_first_hole", tiny(1 << 20, 1),
            vec![Syn(ISN, b""), Seg(1001, b"ab"), Seg(1005, b"ef"), Seg(1008, b"hij"), Count(3), Flush],
            vec![d(1001, b"ab"), g(1003, 2), d(1005, b"ef"), g(1007, 1), d(1008, b"hij")]),
        ("overflow_with_earlier_segment_delivers_it_directly", tiny(4, 16),
            vec![Syn(ISN, b""), Seg(1001, b"ab"), Seg(1008, b"hij"), Seg(1005, b"ef"), Count(3), Flush],
            vec![d(1001, b"ab"), g(1003, 2), d(1005, b"ef"), g(1007, 1), d(1008, b"hij")]),
        ("segment_larger_than_buffer_delivered_after_gap", tiny(2, 16),
            vec![Syn(ISN, b""), Seg(1004, b"defg")],
            vec![g(1001, 3), d(1004, b"defg")]),
        ("wraparound_in_order", limits(2),
            vec![Syn(M - 2, b""), Seg(M - 1, b"abcd"), Seg(2, b"ef")],
            vec![d(M - 1, b"abcd"), d(2, b"ef")]),
        ("wraparound_buffered_across_wrap", limits(2),
            vec![Syn(M - 4, b""), Seg(1, b"fg"), Seg(M - 1, b"cde"), Count(0), Seg(M - 3, b"ab")],
            vec![d(M - 3, b"ab"), d(M - 1, b"cde"), d(1, b"fg")]),
        ("wraparound_hole_across_wrap_flushed", limits(2),
            vec![Syn(M - 4, b""), Seg(M - 3, b"a"), Seg(2, b"z"), Flush],
            vec![d(M - 3, b"a"), g(M - 2, 5), d(2, b"z")]),
        ("wraparound_hole_declared_by_ack", limits(1),
            vec![Syn(M - 4, b""), Seg(M - 3, b"a"), Seg(2, b"z"), Ack(3), Tick(1)],
            vec![d(M - 3, b"a"), g(M - 2, 5), d(2, b"z")]),
        ("mid_stream_pickup_starts_at_first_payload", limits(2),
            vec![Seg(4000, b""), Seg(5000, b"abc"), Seg(4990, b"xx"), Seg(5003, b"d")],
            vec![d(5000, b"abc"), d(5003, b"d")]),
        // Never a byte of this direction captured (one-sided capture): the
        // peer's first acknowledgement is where it stands, so what it
        // acknowledges later is loss, declared like any acknowledged hole.
        ("peer_ack_starts_an_unseen_direction", limits(2),
            vec![Ack(5000), Ack(5010), Count(0), Tick(2), Ack(5020), Flush],
            vec![g(5000, 10), g(5010, 10)]),
        ("peer_ack_of_a_fin_alone_is_not_loss", limits(2),
            vec![Ack(5000), Ack(5001), Tick(3), Flush],
            vec![]),
        ("data_at_the_peers_first_ack_is_in_order", limits(2),
            vec![Ack(5000), Seg(5000, b"abc"), Seg(4990, b"xyzxyzxyzxyz"), Seg(5003, b"d")],
            vec![d(5000, b"abc"), d(5003, b"d")]),
        // A lone acknowledgement is weaker evidence than the direction's
        // own SYN or data: far from them, it was stale or bogus.
        ("a_syn_outranks_an_acknowledgement_before_it", limits(2),
            vec![Ack(777), Syn(ISN, b""), Seg(1001, b"ab"), Ack(1003), Tick(3)],
            vec![d(1001, b"ab")]),
        ("far_data_outranks_a_lone_acknowledgement", limits(2),
            vec![Ack(5000), Seg(5000 ^ 0x8000_0000, b"abc"), Seg(5003 ^ 0x8000_0000, b"d")],
            vec![d(5000 ^ 0x8000_0000, b"abc"), d(5003 ^ 0x8000_0000, b"d")]),
        ("a_far_payload_drops_what_was_noted_against_the_ack", limits(2),
            vec![Ack(5000), Ack(5100), Fin(5200, b""), Seg(5000 ^ 0x8000_0000, b"abc"), Tick(4), Flush],
            vec![d(5000 ^ 0x8000_0000, b"abc")]),
        ("unseen_direction_data_before_its_peers_ack", limits(2),
            vec![Ack(5000), PeerData(5004), Seg(5002, b"cdef")],
            vec![g(5000, 4), d(5004, b"ef")]),
        // A connection that went quiet: the sweep declares what was
        // acknowledged before, once the time allowance has passed.
        ("sweep_declares_acked_holes_of_a_quiet_connection", timed(16, 1_000),
            vec![Syn(ISN, b""), Seg(1001, b"a"), Ack(1004), Ack(1009), Sweep(999), Count(1), Sweep(1_000)],
            vec![d(1001, b"a"), g(1002, 7)]),
        // Bytes held beyond a hole were sent after it: with no ACK in the
        // capture, that is all there is to go by.
        ("sweep_declares_holes_before_held_bytes_of_a_quiet_connection", timed(16, 1_000),
            vec![Syn(ISN, b""), Seg(1001, b"a"), Seg(1005, b"e"), Fin(1006, b""), Sweep(999), Count(1), Sweep(1_000)],
            vec![d(1001, b"a"), g(1002, 3), d(1005, b"e"), fin.clone()]),
        ("sweep_leaves_a_fin_ack_alone", timed(16, 1_000),
            vec![Syn(ISN, b""), Seg(1001, b"a"), Ack(1003), Sweep(5_000)],
            vec![d(1001, b"a")]),
        ("syn_with_data_delivered", limits(2),
            vec![Syn(ISN, b"hi"), Seg(1003, b"!")],
            vec![d(1001, b"hi"), d(1003, b"!")]),
        ("rst_delivers_buffered_with_gaps_then_ends", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1007, b"gh"), Rst(1004), Seg(1004, b"def"), Flush],
            vec![d(1001, b"abc"), g(1004, 3), d(1007, b"gh"), rst.clone()]),
        ("rst_declares_the_acknowledged_tail", limits(100),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Ack(1010), Rst(1010)],
            vec![d(1001, b"abc"), g(1004, 6), rst.clone()]),
        ("rst_before_start_still_reported", limits(2),
            vec![Rst(77), Rst(78)],
            vec![rst.clone()]),
        ("rst_after_fin_reported", limits(2),
            vec![Syn(ISN, b""), Fin(1001, b"a"), Rst(1003)],
            vec![d(1001, b"a"), fin.clone(), rst.clone()]),
        ("fin_waits_for_missing_data", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Fin(1007, b"gh"), Count(1), Seg(1004, b"def")],
            vec![d(1001, b"abc"), d(1004, b"def"), d(1007, b"gh"), fin.clone()]),
        ("fin_out_of_order_emitted_on_flush", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Fin(1007, b"gh"), Flush, Flush],
            vec![d(1001, b"abc"), g(1004, 3), d(1007, b"gh"), fin.clone()]),
        ("bare_fin_ahead_emitted_on_flush_after_gap", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Fin(1006, b""), Flush],
            vec![d(1001, b"abc"), g(1004, 2), fin.clone()]),
        ("data_after_fin_ignored", limits(2),
            vec![Syn(ISN, b""), Fin(1001, b"abc"), Seg(1004, b"x"), Fin(1004, b""), Flush],
            vec![d(1001, b"abc"), fin.clone()]),
        ("buffered_data_beyond_fin_dropped", limits(2),
            vec![Syn(ISN, b""), Seg(1005, b"efgh"), Fin(1003, b"cd"), Seg(1001, b"ab")],
            vec![d(1001, b"ab"), d(1003, b"cd"), fin.clone()]),
        ("snaplen_missing_is_a_gap_at_once", limits(2),
            vec![Syn(ISN, b""), Snap(1001, b"ab", 3), Seg(1006, b"f")],
            vec![d(1001, b"ab"), g(1003, 3), d(1006, b"f")]),
        ("snaplen_missing_buffered_out_of_order", limits(2),
            vec![Syn(ISN, b""), Snap(1004, b"d", 2), Seg(1001, b"abc"), Seg(1007, b"g")],
            vec![d(1001, b"abc"), d(1004, b"d"), g(1005, 2), d(1007, b"g")]),
        ("flush_declares_holes_in_order", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"a"), Seg(1010, b"j"), Seg(1005, b"e"), Flush],
            vec![d(1001, b"a"), g(1002, 3), d(1005, b"e"), g(1006, 4), d(1010, b"j")]),
        ("flush_declares_acked_tail", limits(100),
            vec![Syn(ISN, b""), Seg(1001, b"a"), Ack(1004), Flush],
            vec![d(1001, b"a"), g(1002, 2)]),
        ("garbage_sequence_dropped", limits(2),
            vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1001 ^ 0x8000_0000, b"zz"), Ack(1001 ^ 0x8000_0000), Tick(5), Flush],
            vec![d(1001, b"abc")]),
    ];
    for (name, limits, steps, want) in cases {
        let mut h = Harness::new(limits);
        for s in steps {
            h.step(s);
        }
        assert_eq!(h.shapes(), want, "case {name}");
    }
}

#[test]
fn acks_always_ahead_of_their_data_never_make_a_gap() {
    // A mirror port that delivers every ACK one packet before its data.
    let mut h = Harness::new(limits(1));
    h.step(Step::Syn(ISN, b""));
    let data = b"0123456789";
    for (i, b) in data.iter().enumerate() {
        let seq = 1001 + i as u32;
        h.ack(seq + 1);
        h.packet(seq, 0, false, false, false, std::slice::from_ref(b), 0);
    }
    h.flush();
    let got: Vec<u8> = h
        .events
        .iter()
        .flat_map(|e| match e {
            OwnedEvent::Data { data, .. } => data.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(got, data);
    assert!(h.r.pending.is_none());
}

#[test]
fn stats_count_duplicates_conflicts_and_gaps() {
    use Step::*;
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Step>, StreamStats)> = vec![
        ("duplicate", vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1001, b"abc")],
            StreamStats { duplicate_bytes: 3, ..Default::default() }),
        ("partial_overlap", vec![Syn(ISN, b""), Seg(1001, b"abc"), Seg(1002, b"bcde")],
            StreamStats { duplicate_bytes: 2, ..Default::default() }),
        ("buffered_identical", vec![Syn(ISN, b""), Seg(1004, b"def"), Seg(1005, b"efgh"), Seg(1001, b"abc")],
            StreamStats { duplicate_bytes: 2, out_of_order_segments: 2, ..Default::default() }),
        ("buffered_conflicting", vec![Syn(ISN, b""), Seg(1004, b"def"), Seg(1004, b"XeY"), Seg(1001, b"abc")],
            StreamStats { duplicate_bytes: 3, conflicting_overlap_bytes: 2, out_of_order_segments: 1, ..Default::default() }),
        ("in_order_over_buffered_conflicting", vec![Syn(ISN, b""), Seg(1004, b"def"), Seg(1001, b"abcdXZg")],
            StreamStats { duplicate_bytes: 3, conflicting_overlap_bytes: 2, out_of_order_segments: 1, ..Default::default() }),
        ("gaps", vec![Syn(ISN, b""), Seg(1001, b"a"), Seg(1010, b"j"), Seg(1005, b"e"), Flush],
            StreamStats { missing_bytes: 7, gaps: 2, out_of_order_segments: 2, ..Default::default() }),
        ("snaplen", vec![Syn(ISN, b""), Snap(1001, b"ab", 3)],
            StreamStats { missing_bytes: 3, gaps: 1, ..Default::default() }),
        ("garbage", vec![Syn(ISN, b""), Seg(1001 ^ 0x8000_0000, b"zz"), Ack(1001 ^ 0x8000_0000)],
            StreamStats { garbage_segments: 2, ..Default::default() }),
    ];
    for (name, steps, want) in cases {
        let mut h = Harness::new(limits(2));
        for s in steps {
            h.step(s);
        }
        assert_eq!(*h.r.stats(), want, "case {name}");
    }
}

#[test]
fn reassembler_idle_is_small() {
    assert!(std::mem::size_of::<Reassembler>() <= 64);
}

#[test]
fn in_order_data_borrows_the_segment_without_buffering() {
    let limits = limits(2);
    let mut r = Reassembler::new();
    let payload = b"hello".to_vec();
    let mut ptr = None;
    r.segment(
        7,
        1,
        Timestamp::ZERO,
        false,
        false,
        false,
        &payload,
        0,
        &limits,
        &mut |e| {
            if let StreamEvent::Data(c) = e {
                ptr = Some(c.data.as_ptr());
            }
        },
    );
    assert_eq!(ptr, Some(payload.as_ptr()));
    assert_eq!(r.buffered_bytes(), 0);
    assert!(r.pending.is_none());
    assert_eq!(r.next_seq(), Some(12));
}

#[test]
fn buffered_chunks_keep_their_own_ack_and_ts() {
    let limits = limits(2);
    let mut r = Reassembler::new();
    let mut ev = Vec::new();
    let mut out = collector(&mut ev);
    let t = Timestamp::from_micros;
    r.segment(
        10,
        500,
        t(1),
        false,
        false,
        false,
        b"a",
        0,
        &limits,
        &mut out,
    );
    r.segment(
        12,
        502,
        t(2),
        false,
        false,
        false,
        b"c",
        0,
        &limits,
        &mut out,
    );
    assert!(r.buffered_bytes() > 0);
    r.segment(
        11,
        501,
        t(3),
        false,
        false,
        false,
        b"b",
        0,
        &limits,
        &mut out,
    );
    assert_eq!(r.buffered_bytes(), 0);
    drop(out);
    let want = [(10, 500, t(1)), (11, 501, t(3)), (12, 502, t(2))];
    let got: Vec<_> = ev
        .iter()
        .map(|e| match e {
            OwnedEvent::Data { seq, ack, ts, .. } => (*seq, *ack, *ts),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn closed_after_fin_or_rst_and_memory_released() {
    let limits = limits(2);
    let mut sink = |_: StreamEvent<'_>| {};
    let mut r = Reassembler::new();
    r.segment(
        1,
        0,
        Timestamp::ZERO,
        true,
        false,
        false,
        b"",
        0,
        &limits,
        &mut sink,
    );
    r.segment(
        5,
        0,
        Timestamp::ZERO,
        false,
        true,
        false,
        b"xy",
        0,
        &limits,
        &mut sink,
    );
    assert!(!r.is_closed());
    assert!(r.buffered_bytes() > 0);
    r.flush(Timestamp::ZERO, &mut sink);
    assert!(r.is_closed());
    assert_eq!(r.buffered_bytes(), 0);

    let mut r = Reassembler::new();
    r.segment(
        1,
        0,
        Timestamp::ZERO,
        false,
        false,
        false,
        b"ab",
        0,
        &limits,
        &mut sink,
    );
    r.segment(
        9,
        0,
        Timestamp::ZERO,
        false,
        false,
        false,
        b"ab",
        0,
        &limits,
        &mut sink,
    );
    r.segment(
        3,
        0,
        Timestamp::ZERO,
        false,
        false,
        true,
        b"",
        0,
        &limits,
        &mut sink,
    );
    assert!(r.is_closed());
    assert_eq!(r.buffered_bytes(), 0);
}

#[test]
fn buffer_never_exceeds_limits() {
    let limits = tiny(10, 3);
    let mut r = Reassembler::new();
    let mut sink = |_: StreamEvent<'_>| {};
    r.segment(
        0,
        0,
        Timestamp::ZERO,
        false,
        false,
        false,
        b"a",
        0,
        &limits,
        &mut sink,
    );
    for i in (2..200u32).step_by(2).rev() {
        r.segment(
            i,
            0,
            Timestamp::ZERO,
            false,
            false,
            false,
            b"xy"[..1].as_ref(),
            0,
            &limits,
            &mut sink,
        );
        let p = r.pending.as_deref().expect("holding");
        assert!(p.held_bytes <= 10 && p.held.len() <= 3);
    }
}

/// The invariants of [`Pending`] (see its doc), checked after every call in
/// the property tests.
fn assert_invariants(r: &Reassembler) {
    let Some(p) = r.pending.as_deref() else {
        return;
    };
    assert!(!r.is_closed(), "closed but holding");
    let mut prev_end = r.next;
    for h in &p.held {
        assert!(h.len > 0 && h.data.len() <= h.len as usize, "{h:?}");
        assert!(
            seq_lt(r.next, h.seq),
            "held {} not after next {}",
            h.seq,
            r.next
        );
        assert!(seq_le(prev_end, h.seq), "held {} overlaps", h.seq);
        if let Some(f) = p.fin_seq {
            assert!(seq_le(h.end(), f), "held {} past FIN {f}", h.seq);
        }
        prev_end = h.end();
    }
    assert_eq!(
        p.held_bytes,
        p.held.iter().map(|h| h.data.len()).sum::<usize>()
    );
}

/// A segment of the generated stream: offset into the stream and length.
#[derive(Clone, Copy, Debug)]
struct Piece {
    off: usize,
    len: usize,
}

/// Cuts `n` bytes at the given points (sorted, deduplicated, in 1..n).
fn cut(n: usize, points: &[usize]) -> Vec<Piece> {
    let mut ps: Vec<usize> = points
        .iter()
        .map(|p| p % n.max(1))
        .filter(|&p| p > 0)
        .collect();
    ps.sort_unstable();
    ps.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in ps.into_iter().chain(std::iter::once(n)) {
        if p > prev {
            out.push(Piece {
                off: prev,
                len: p - prev,
            });
        }
        prev = p;
    }
    out
}

#[derive(Debug)]
struct Plan {
    isn: u32,
    stream: Vec<u8>,
    /// Segments in feeding order.
    order: Vec<Piece>,
    /// The index (into the cut) that is dropped, if any.
    dropped: Option<Piece>,
}

fn arb_plan(with_drop: bool) -> impl Strategy<Value = Plan> {
    (
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..20_000),
        prop::collection::vec(any::<usize>(), 0..200),
        prop::collection::vec(0usize..8, 200),
        prop::collection::vec((any::<usize>(), any::<usize>(), any::<usize>()), 0..20),
        any::<usize>(),
        any::<bool>(),
    )
        .prop_map(
            move |(isn, stream, points, jitter, extra, drop_at, near_wrap)| {
                // Half the runs start near the wrap, so it is crossed often.
                let isn = if near_wrap {
                    u32::MAX - (isn % 30_000)
                } else {
                    isn
                };
                let cuts = cut(stream.len(), &points);
                let dropped = (with_drop && !cuts.is_empty()).then(|| drop_at % cuts.len());
                // Reorder within a window: sort by index plus a bounded jitter.
                let mut keyed: Vec<(usize, Piece)> = cuts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != dropped)
                    .map(|(i, p)| (i + jitter[i % jitter.len()], *p))
                    .collect();
                for (k, (a, b, at)) in extra.iter().enumerate() {
                    if stream.is_empty() {
                        break;
                    }
                    let piece = if k % 2 == 0 {
                        // An exact duplicate of some segment.
                        cuts[*a % cuts.len()]
                    } else {
                        // An overlapping retransmission of an arbitrary range.
                        let off = *a % stream.len();
                        let len = 1 + *b % (stream.len() - off).min(3000);
                        Piece { off, len }
                    };
                    // Nothing may bring the dropped bytes back.
                    if let Some(dr) = dropped.map(|i| cuts[i]) {
                        if piece.off < dr.off + dr.len && dr.off < piece.off + piece.len {
                            continue;
                        }
                    }
                    keyed.push((at % (cuts.len() + 8), piece));
                }
                keyed.sort_by_key(|(k, _)| *k);
                Plan {
                    isn,
                    stream,
                    order: keyed.into_iter().map(|(_, p)| p).collect(),
                    dropped: dropped.map(|i| cuts[i]),
                }
            },
        )
}

/// Feeds the plan (SYN first, a FIN at the end, the peer acknowledging
/// everything sent so far after each segment) and returns what came out.
/// Also returns how many events came before the flush.
fn run(plan: &Plan) -> (Vec<OwnedEvent>, Reassembler, usize) {
    let limits = StreamLimits {
        max_buffered_bytes: 1 << 20,
        max_buffered_segments: 1 << 16,
        ack_reorder_allowance: u32::MAX,
        ack_reorder_micros: i64::MAX,
    };
    let mut r = Reassembler::new();
    let mut ev = Vec::new();
    let mut out = collector(&mut ev);
    let base = plan.isn.wrapping_add(1);
    let mut t = 0;
    let mut ts = || {
        t += 1;
        Timestamp::from_micros(t)
    };
    let mut highest = base;
    r.segment(
        plan.isn,
        0,
        ts(),
        true,
        false,
        false,
        &[],
        0,
        &limits,
        &mut out,
    );
    for p in &plan.order {
        let seq = base.wrapping_add(p.off as u32);
        let now = ts();
        let data = &plan.stream[p.off..p.off + p.len];
        r.segment(seq, 0, now, false, false, false, data, 0, &limits, &mut out);
        r.tick(now, &limits, &mut out);
        let end = seq.wrapping_add(p.len as u32);
        if seq_lt(highest, end) {
            highest = end;
        }
        let now = ts();
        r.peer_ack(highest, now, &limits, &mut out);
        r.tick(now, &limits, &mut out);
        assert_invariants(&r);
    }
    let end = base.wrapping_add(plan.stream.len() as u32);
    r.segment(end, 0, ts(), false, true, false, &[], 0, &limits, &mut out);
    let flush_ts = ts();
    drop(out);
    let before_flush = ev.len();
    r.flush(flush_ts, &mut collector(&mut ev));
    (ev, r, before_flush)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn reordered_duplicated_stream_comes_out_whole(plan in arb_plan(false)) {
        let (ev, r, _) = run(&plan);
        let base = plan.isn.wrapping_add(1);
        let mut got = Vec::new();
        let mut pos = base;
        for e in &ev[..ev.len() - 1] {
            match e {
                OwnedEvent::Data { seq, data, .. } => {
                    prop_assert_eq!(*seq, pos);
                    pos = pos.wrapping_add(data.len() as u32);
                    got.extend_from_slice(data);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        let ends_with_fin = matches!(ev.last(), Some(OwnedEvent::Fin { .. }));
        prop_assert!(ends_with_fin);
        prop_assert_eq!(got, plan.stream);
        prop_assert_eq!(r.stats().gaps, 0);
        prop_assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn dropped_segment_is_exactly_one_gap(plan in arb_plan(true)) {
        let (ev, r, before_flush) = run(&plan);
        // A large allowance never declares loss: only the flush does.
        let early_gap = ev[..before_flush].iter().any(|e| matches!(e, OwnedEvent::Gap { .. }));
        prop_assert!(!early_gap);
        let base = plan.isn.wrapping_add(1);
        let mut want = plan.stream.clone();
        let mut want_gap = None;
        if let Some(p) = plan.dropped {
            want.drain(p.off..p.off + p.len);
            want_gap = Some((base.wrapping_add(p.off as u32), p.len as u32));
        }
        let mut got = Vec::new();
        let mut gaps = Vec::new();
        let mut pos = base;
        for e in &ev[..ev.len() - 1] {
            match e {
                OwnedEvent::Data { seq, data, .. } => {
                    prop_assert_eq!(*seq, pos);
                    pos = pos.wrapping_add(data.len() as u32);
                    got.extend_from_slice(data);
                }
                OwnedEvent::Gap { seq, len, .. } => {
                    prop_assert_eq!(*seq, pos);
                    pos = pos.wrapping_add(*len);
                    gaps.push((*seq, *len));
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        let ends_with_fin = matches!(ev.last(), Some(OwnedEvent::Fin { .. }));
        prop_assert!(ends_with_fin);
        prop_assert_eq!(got, want);
        prop_assert_eq!(gaps, want_gap.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(r.buffered_bytes(), 0);
    }
}

/// Feeds the plan under tight limits and a short allowance, with some
/// segments cut by snaplen, acknowledging what was sent so far, asserting
/// the buffer stays within its limits; returns the events.
fn run_tight(plan: &Plan, limits: &StreamLimits, snap: &[u8]) -> Vec<OwnedEvent> {
    let mut r = Reassembler::new();
    let mut ev = Vec::new();
    let mut out = collector(&mut ev);
    let base = plan.isn.wrapping_add(1);
    let ts = Timestamp::ZERO;
    let mut highest = base;
    r.segment(
        plan.isn,
        0,
        ts,
        true,
        false,
        false,
        &[],
        0,
        limits,
        &mut out,
    );
    for (i, p) in plan.order.iter().enumerate() {
        let seq = base.wrapping_add(p.off as u32);
        let cut = (snap[i % snap.len()] as usize).min(p.len);
        let data = &plan.stream[p.off..p.off + p.len - cut];
        r.segment(
            seq, 0, ts, false, false, false, data, cut as u32, limits, &mut out,
        );
        r.tick(ts, limits, &mut out);
        let end = seq.wrapping_add(p.len as u32);
        if seq_lt(highest, end) {
            highest = end;
        }
        r.peer_ack(highest, ts, limits, &mut out);
        r.tick(ts, limits, &mut out);
        assert_invariants(&r);
        if let Some(p) = r.pending.as_deref() {
            assert!(p.held_bytes <= limits.max_buffered_bytes);
            assert!(p.held.len() <= limits.max_buffered_segments);
        }
    }
    let end = base.wrapping_add(plan.stream.len() as u32);
    r.segment(end, 0, ts, false, true, false, &[], 0, limits, &mut out);
    assert_invariants(&r);
    // The peer acknowledges the FIN; the holes before it run out of time.
    r.peer_ack(end.wrapping_add(1), ts, limits, &mut out);
    for _ in 0..5 {
        r.tick(ts, limits, &mut out);
        assert_invariants(&r);
    }
    r.flush(ts, &mut out);
    drop(out);
    ev
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever is lost or cut, every position is covered once, in order,
    /// and every delivered byte is the true byte.
    #[test]
    fn any_loss_covers_each_position_once_with_true_bytes(
        plan in arb_plan(true),
        bytes in 0usize..4000,
        segments in 0usize..6,
        allowance in 0u32..4,
        snap in prop::collection::vec(prop_oneof![4 => Just(0u8), 1 => 0u8..40], 1..16),
    ) {
        let limits = StreamLimits {
            max_buffered_bytes: bytes,
            max_buffered_segments: segments,
            ack_reorder_allowance: allowance,
            ack_reorder_micros: i64::MAX,
        };
        let ev = run_tight(&plan, &limits, &snap);
        let base = plan.isn.wrapping_add(1);
        let mut pos = base;
        for e in &ev[..ev.len() - 1] {
            match e {
                OwnedEvent::Data { seq, data, .. } => {
                    prop_assert_eq!(*seq, pos);
                    let off = seq.wrapping_sub(base) as usize;
                    prop_assert_eq!(&data[..], &plan.stream[off..off + data.len()]);
                    pos = pos.wrapping_add(data.len() as u32);
                }
                OwnedEvent::Gap { seq, len, .. } => {
                    prop_assert_eq!(*seq, pos);
                    prop_assert!(*len > 0);
                    pos = pos.wrapping_add(*len);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(pos, base.wrapping_add(plan.stream.len() as u32));
        let ends_with_fin = matches!(ev.last(), Some(OwnedEvent::Fin { .. }));
        prop_assert!(ends_with_fin);
    }
}

/// One arbitrary call on a [`Reassembler`].
#[derive(Clone, Debug)]
enum Op {
    /// Offset from the stream base (or a wild sequence number), length,
    /// bytes cut off, flags.
    Seg {
        off: i32,
        len: u16,
        missing: u16,
        fin: bool,
        rst: bool,
        wild: Option<u32>,
    },
    Ack(i32),
    Tick,
    Flush,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (-500i32..3000, 0u16..300, prop_oneof![5 => Just(0u16), 1 => 0u16..200],
              prop::bool::weighted(0.05), prop::bool::weighted(0.02),
              prop::option::weighted(0.03, any::<u32>()))
            .prop_map(|(off, len, missing, fin, rst, wild)| Op::Seg { off, len, missing, fin, rst, wild }),
        2 => (-500i32..3500).prop_map(Op::Ack),
        3 => Just(Op::Tick),
        1 => Just(Op::Flush),
    ]
}

/// The byte every copy of stream position `seq` carries.
fn true_byte(seq: u32) -> u8 {
    (seq ^ (seq >> 8) ^ (seq >> 16)) as u8
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any sequence of calls keeps the invariants and the event contract:
    /// positions covered once in order with the true bytes, at most one
    /// `Fin`, at most one `Reset`, nothing after either but a `Reset`.
    #[test]
    fn arbitrary_calls_keep_the_contract(
        isn in any::<u32>(),
        syn_first in any::<bool>(),
        ops in prop::collection::vec(arb_op(), 0..120),
        bytes in 0usize..3000,
        segments in 0usize..8,
        allowance in 0u32..5,
    ) {
        let limits = StreamLimits {
            max_buffered_bytes: bytes,
            max_buffered_segments: segments,
            ack_reorder_allowance: allowance,
            ack_reorder_micros: i64::MAX,
        };
        let base = isn.wrapping_add(1);
        let mut r = Reassembler::new();
        let mut ev = Vec::new();
        let ts = Timestamp::ZERO;
        {
            let mut out = collector(&mut ev);
            if syn_first {
                r.segment(isn, 0, ts, true, false, false, &[], 0, &limits, &mut out);
            }
            let mut buf = Vec::new();
            for op in &ops {
                match *op {
                    Op::Seg { off, len, missing, fin, rst, wild } => {
                        let seq = wild.unwrap_or(base.wrapping_add(off as u32));
                        buf.clear();
                        buf.extend((0..u32::from(len)).map(|i| true_byte(seq.wrapping_add(i))));
                        r.segment(seq, 0, ts, false, fin, rst, &buf, u32::from(missing), &limits, &mut out);
                    }
                    Op::Ack(off) => r.peer_ack(base.wrapping_add(off as u32), ts, &limits, &mut out),
                    Op::Tick => r.tick(ts, &limits, &mut out),
                    Op::Flush => r.flush(ts, &mut out),
                }
                assert_invariants(&r);
                if let Some(p) = r.pending.as_deref() {
                    prop_assert!(p.held_bytes <= limits.max_buffered_bytes);
                    prop_assert!(p.held.len() <= limits.max_buffered_segments);
                }
            }
        }
        let mut pos: Option<u32> = syn_first.then_some(base);
        let (mut fins, mut resets) = (0, 0);
        for e in &ev {
            prop_assert_eq!(resets, 0, "event after Reset: {:?}", e);
            match e {
                OwnedEvent::Data { seq, data, .. } => {
                    prop_assert_eq!(fins, 0);
                    prop_assert!(pos.is_none_or(|p| p == *seq));
                    for (i, b) in data.iter().enumerate() {
                        prop_assert_eq!(*b, true_byte(seq.wrapping_add(i as u32)));
                    }
                    pos = Some(seq.wrapping_add(data.len() as u32));
                }
                OwnedEvent::Gap { seq, len, .. } => {
                    prop_assert_eq!(fins, 0);
                    prop_assert!(*len > 0 && *len < SEQ_WINDOW);
                    prop_assert!(pos.is_none_or(|p| p == *seq));
                    pos = Some(seq.wrapping_add(*len));
                }
                OwnedEvent::Fin { .. } => fins += 1,
                OwnedEvent::Reset { .. } => resets += 1,
            }
        }
        prop_assert!(fins <= 1);
        if let (Some(p), Some(n)) = (pos, r.next_seq()) {
            prop_assert_eq!(p, n);
        }
    }
}

#[test]
fn buffered_bytes_count_each_allocation_not_only_the_payload() {
    // A flood of one-byte segments ahead of a hole: the budget must see
    // what the allocator holds for each, not one byte each.
    let mut h = Harness::new(limits(u32::MAX));
    h.step(Step::Seg(10, b"a"));
    let n: u32 = 100;
    for i in 0..n {
        // Every other byte, so none joins another: 100 allocations.
        h.step(Step::Seg(12 + 2 * i, b"x"));
    }
    let per_segment = 1 + crate::flow::ALLOC_OVERHEAD + std::mem::size_of::<Held>();
    assert!(
        h.r.buffered_bytes() >= n as usize * per_segment,
        "{} bytes for {n} held segments",
        h.r.buffered_bytes()
    );
}
