//! Random call sequences against the scheduler, every answer checked against the
//! reference model and the invariants (tests/support/harness.rs).
#![no_main]

#[path = "../../tests/support/mod.rs"]
mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| support::fuzzing::ops(data));
