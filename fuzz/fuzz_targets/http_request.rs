#![no_main]
// Input format and invariants: see apitap_fuzz::http.
use apitap::http::Direction;
libfuzzer_sys::fuzz_target!(|data: &[u8]| apitap_fuzz::http::run(Direction::ToServer, data));
