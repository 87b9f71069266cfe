#![no_main]
// Input format and invariants: see apitap_fuzz::classify.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apitap_fuzz::classify::run(data));
