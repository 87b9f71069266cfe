#![no_main]
// Input format and invariants: see apitap_fuzz::capture.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apitap_fuzz::capture::run(data));
