//! Capture filters for capture files, so that `-f` means with `-r` what it
//! means live (and what it means to `tcpdump -r`).
//!
//! Contract: [`FileFilter::new`] compiles the expression with libpcap for
//! Ethernet, so an expression libpcap cannot parse is an error at start
//! (one line naming it, as live mode's). Other link types are compiled as
//! their first packet comes (a pcapng file may mix them); a link type the
//! expression does not apply to matches nothing, with one warning.
//! [`FileFilter::matches`] runs the program over the captured bytes with
//! libpcap's interpreter (`pcap_offline_filter`), the captured length
//! standing for the wire length (`greater`/`less` see the captured size).

use super::{live::filter_error, CaptureError, LinkType, RawPacket};
use pcap::{BpfProgram, Capture, Linktype};

pub struct FileFilter {
    expr: String,
    /// Compiled per link type; None: not applicable to that link type.
    programs: Vec<(LinkType, Option<BpfProgram>)>,
    /// Packets the filter kept and passed over.
    pub kept: u64,
    pub rejected: u64,
}

fn compile(expr: &str, link: LinkType) -> Result<BpfProgram, pcap::Error> {
    let dead = Capture::dead(Linktype(link.0 as i32))?;
    dead.compile(expr, true)
}

impl FileFilter {
    pub fn new(expr: &str) -> Result<FileFilter, CaptureError> {
        let ethernet = compile(expr, LinkType::ETHERNET)
            .map_err(|e| CaptureError::Live(filter_error(expr, &e)))?;
        Ok(FileFilter {
            expr: expr.to_string(),
            programs: vec![(LinkType::ETHERNET, Some(ethernet))],
            kept: 0,
            rejected: 0,
        })
    }

    pub fn matches(&mut self, pkt: &RawPacket<'_>) -> bool {
        let i = match self.programs.iter().position(|(l, _)| *l == pkt.link) {
            Some(i) => i,
            None => {
                let program = compile(&self.expr, pkt.link)
                    .inspect_err(|e| {
                        tracing::warn!(
                            link_type = pkt.link.0,
                            "{}; packets of this link type are left out",
                            filter_error(&self.expr, e)
                        );
                    })
                    .ok();
                self.programs.push((pkt.link, program));
                self.programs.len() - 1
            }
        };
        let keep = self.programs[i]
            .1
            .as_ref()
            .is_some_and(|p| p.filter(pkt.data));
        if keep {
            self.kept += 1;
        } else {
            self.rejected += 1;
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::file::FileSource;
    use crate::capture::{PacketSource, SourceEvent};
    use crate::decode::{Decoded, Decoder, DecoderConfig};

    /// Over the sample capture, `tcp port 80 and dst host 10.99.0.1` keeps
    /// exactly the TCP segments our own decoder sends to 10.99.0.1:80, and
    /// an expression libpcap cannot parse is refused, naming it.
    #[test]
    fn a_filter_keeps_what_it_says_and_a_bad_one_is_refused() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/http-mix-sample.pcap");
        let mut src = FileSource::open(path).unwrap();
        let mut filter = FileFilter::new("tcp port 80 and dst host 10.99.0.1").unwrap();
        let mut decoder = Decoder::new(DecoderConfig::default());
        let (mut agree, mut total) = (0, 0);
        while let Some(ev) = src.next_event().unwrap() {
            let SourceEvent::Packet(pkt) = ev else {
                continue;
            };
            let want = matches!(decoder.decode(&pkt),
                Decoded::Tcp(s) if s.dst == "10.99.0.1:80".parse().unwrap());
            total += 1;
            agree += usize::from(filter.matches(&pkt) == want);
        }
        assert_eq!(agree, total);
        assert!(
            filter.kept > 1000 && filter.rejected > 1000,
            "{}",
            filter.kept
        );

        let err = FileFilter::new("tcp prot 80").err().unwrap().to_string();
        assert!(
            err.contains("invalid capture filter \"tcp prot 80\""),
            "{err}"
        );
    }
}
