#![no_main]
// Input format and invariants: see apitap_fuzz::tls.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apitap_fuzz::tls::run(data));
