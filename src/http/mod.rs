//! HTTP/1.x: incremental message parsing, body framing, request/response
//! pairing into [`Exchange`]s.
