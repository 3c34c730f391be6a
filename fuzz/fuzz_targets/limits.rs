//! Arbitrary limits and configs through `new`, `with_config` and `update`.
#![no_main]

#[path = "../../tests/support/mod.rs"]
mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| support::fuzzing::limits(data));
