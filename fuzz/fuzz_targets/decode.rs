#![no_main]
// Input format and invariants: see apitap_fuzz::decode.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apitap_fuzz::decode::run(data));
