#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meiro_gate::fuzzing::proxy_header(data));
