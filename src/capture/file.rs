//! Capture files: pcap and pcapng (stub; see the capture helper's work).
// TEMPORARY STUB.
use super::{CaptureError, PacketSource, SourceEvent, SourceStats};
pub struct FileSource {}
impl FileSource {
    pub fn open(path: &str) -> Result<FileSource, CaptureError> {
        Err(CaptureError::NotACapture { path: path.into() })
    }
}
impl PacketSource for FileSource {
    fn next_event(&mut self) -> Result<Option<SourceEvent<'_>>, CaptureError> {
        Ok(None)
    }
    fn interface(&self) -> &str {
        "file"
    }
    fn stats(&self) -> SourceStats {
        SourceStats::default()
    }
}
