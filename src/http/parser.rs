//! Incremental HTTP/1.x message parser (stub).
