//! Capture files: pcap and pcapng (stub; see the capture helper's work).
