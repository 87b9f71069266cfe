#![no_main]
// Input format and invariants: see apitap_fuzz::flow.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apitap_fuzz::flow::run(data));
