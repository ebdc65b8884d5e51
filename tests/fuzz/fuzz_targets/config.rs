//! A probe file of any bytes: a configuration, or problems each located in the file, never a
//! panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use slo_probe::config::{self, Sources};

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let probe = dir.path().join("p.yaml");
    std::fs::write(&probe, data).unwrap();
    let sources = Sources {
        agent_file: None,
        probe_paths: vec![probe.clone()],
    };
    if let Err(diags) = config::load(&sources) {
        assert!(!diags.is_empty());
        for d in diags.iter() {
            assert_eq!(*d.loc.file, *probe);
            assert!(!d.message.is_empty());
        }
    }
});
