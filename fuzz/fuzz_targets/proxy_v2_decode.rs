//! Feeds arbitrary bytes to the PROXY v2 decoder: it must never panic, and a header
//! it accepts must lie within the input.
#![no_main]

use lakegate::proto::proxy_v2::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, n))) = decode(data) {
        assert!(n <= data.len(), "header length {n} beyond input {}", data.len());
    }
});
