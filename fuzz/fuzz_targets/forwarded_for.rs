#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meiro_gate::fuzzing::forwarded_for(data));
