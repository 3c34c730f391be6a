//! The fuzz targets' bodies on stable: replays the committed seeds (and any input the
//! fuzzer ever found failing, kept under `tests/fuzz_seeds/`), then random bytes.

mod support;

use std::fs;
use std::path::Path;

use proptest::prelude::*;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_seeds")
        .join(target);
    let mut replayed = 0;
    for entry in fs::read_dir(&folder).expect("seed folder") {
        let path = entry.expect("seed").path();
        let data = fs::read(&path).expect("seed file");
        println!("{target}: {}", path.display());
        run(&data);
        replayed += 1;
    }
    replayed
}

#[test]
fn ops_seeds_replay_cleanly() {
    assert!(replay("ops", support::fuzzing::ops) >= 10);
}

#[test]
fn limits_seeds_replay_cleanly() {
    assert!(replay("limits", support::fuzzing::limits) >= 10);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn ops_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        support::fuzzing::ops(&data);
    }

    #[test]
    fn limits_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
        support::fuzzing::limits(&data);
    }
}
