//! The packet path, start to end: decode → flows → HTTP → classify → sinks.
//!
//! Contract: [`Pipeline`] is plain synchronous code driven by its caller with
//! packets and (live mode) clock ticks; it reads no clock and does no I/O
//! itself, so a replay is deterministic and live and offline share it.
//! Every finished exchange is classified, then handed to the
//! [`ExchangeSink`].

use crate::capture::RawPacket;
use crate::classify::Classifier;
use crate::clock::{Clock, Timestamp};
use crate::decode::{DecodeStats, Decoded, Decoder, DecoderConfig};
use crate::flow::{FlowConfig, FlowEvent, FlowStats, FlowTable, Protocol};
use crate::http::exchange::Exchange;
use std::net::SocketAddr;

/// Where classified exchanges go (logs, report, metrics).
pub trait ExchangeSink {
    fn exchange(&mut self, ex: &Exchange);
    /// A finding for the findings log, the report and the metrics; comes
    /// right after the exchange that raised it (or with its TLS handshake).
    fn finding(&mut self, _f: &crate::classify::findings::Finding) {}
    /// A TLS connection's handshake (once per connection).
    fn tls_handshake(&mut self, _hs: &crate::classify::tls::TlsHandshake) {}
    /// A connection, once, when the name of its server is known (`host`:
    /// the Host of its first request, or its TLS SNI); see
    /// [`FlowEvent::Connection`].
    fn connection(
        &mut self,
        _server: SocketAddr,
        _host: Option<&str>,
        _protocol: Protocol,
        _ts: Timestamp,
    ) {
    }
}

impl<F: FnMut(&Exchange)> ExchangeSink for F {
    fn exchange(&mut self, ex: &Exchange) {
        self(ex)
    }
}

/// Classify each finished exchange, then hand it to the sink.
pub(crate) fn deliver<'a, S: ExchangeSink + ?Sized>(
    classifier: &'a mut Classifier,
    sink: &'a mut S,
) -> impl FnMut(Exchange) + 'a {
    move |mut ex| deliver_one(classifier, sink, &mut ex)
}

/// Classify one finished exchange, then hand it to the sink.
pub(crate) fn deliver_one<S: ExchangeSink + ?Sized>(
    classifier: &mut Classifier,
    sink: &mut S,
    ex: &mut Exchange,
) {
    let found = classifier.classify(ex);
    sink.exchange(ex);
    for f in &found {
        sink.finding(f);
    }
}

/// Hand one flow-layer event to the sink.
pub(crate) fn pass_event<S: ExchangeSink + ?Sized>(ev: FlowEvent, sink: &mut S) {
    match ev {
        FlowEvent::Connection {
            server,
            host,
            protocol,
            ts,
        } => sink.connection(server, host.as_deref(), protocol, ts),
        FlowEvent::Tls(hs) => sink.tls_handshake(&hs),
    }
}

pub struct Pipeline {
    clock: Clock,
    decoder: Decoder,
    flows: FlowTable,
    classifier: Classifier,
    packets: u64,
    bytes: u64,
}

/// A snapshot of the pipeline's counters.
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    pub packets: u64,
    pub bytes: u64,
    pub decode: DecodeStats,
    pub flows: FlowStats,
    pub active_flows: usize,
    pub last_ts: Option<Timestamp>,
}

impl Pipeline {
    pub fn new(decoder: DecoderConfig, flows: FlowConfig, classifier: Classifier) -> Self {
        Pipeline {
            clock: Clock::default(),
            decoder: Decoder::new(decoder),
            flows: FlowTable::new(flows),
            classifier,
            packets: 0,
            bytes: 0,
        }
    }

    pub fn packet(&mut self, pkt: &RawPacket<'_>, sink: &mut impl ExchangeSink) {
        self.packets += 1;
        self.bytes += pkt.data.len() as u64;
        let now = self.clock.observe(pkt.ts);
        {
            let mut deliver = deliver(&mut self.classifier, sink);
            match self.decoder.decode(pkt) {
                Decoded::Tcp(seg) => self.flows.segment(&seg, now, &mut deliver),
                Decoded::Skipped(_) => self.flows.tick(now, &mut deliver),
            }
        }
        self.pass_events(sink);
    }

    /// Live mode: the wall clock, when no packet came for a while.
    pub fn tick(&mut self, wall: Timestamp, sink: &mut impl ExchangeSink) {
        let now = self.clock.observe(wall);
        self.flows
            .tick(now, &mut deliver(&mut self.classifier, sink));
        // Expired connections may have finished a TLS handshake or been
        // decided at their end.
        self.pass_events(sink);
    }

    /// End of input: every open exchange is logged.
    pub fn finish(&mut self, sink: &mut impl ExchangeSink) {
        let now = self.clock.now().unwrap_or_default();
        self.flows
            .finish_all(now, &mut deliver(&mut self.classifier, sink));
        self.pass_events(sink);
    }

    fn pass_events(&mut self, sink: &mut impl ExchangeSink) {
        for ev in self.flows.drain_events() {
            pass_event(ev, sink);
        }
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            packets: self.packets,
            bytes: self.bytes,
            decode: self.decoder.stats().clone(),
            flows: self.flows.stats().clone(),
            active_flows: self.flows.active_flows(),
            last_ts: self.clock.now(),
        }
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Reconfigure the classifier (SIGHUP reload): exchanges completed from
    /// now on are classified by `classifier`'s configuration, with what the
    /// run learnt kept (see [`Classifier::adopt`]); flows and their
    /// buffered bytes are untouched.
    pub fn set_classifier(&mut self, classifier: Classifier) {
        self.classifier.adopt(classifier);
    }
}
