//! TCP flows: connection tracking and per-direction reassembly.

pub mod reassembly;
