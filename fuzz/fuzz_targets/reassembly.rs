#![no_main]
// Input format and invariants: see apitap_fuzz::reassembly.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apitap_fuzz::reassembly::run(data));
