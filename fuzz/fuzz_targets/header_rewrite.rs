#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meiro_gate::fuzzing::header_rewrite(data));
