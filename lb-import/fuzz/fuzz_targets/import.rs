//! Fuzz the importer: any text, as the top file and as two included files (so that includes,
//! loops and splicing are fuzzed too), never the real file system. Nothing may panic; whatever
//! converts must be valid TOML with the warnings as comments.

#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lb_import::{Options, import_str_with_files};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The input doubles as the included files: `include a.conf` and `include b.conf` read it.
    let files = BTreeMap::from([
        (PathBuf::from("/k/a.conf"), text.to_string()),
        (
            PathBuf::from("/k/conf.d/b.conf"),
            text.lines().rev().collect::<Vec<_>>().join("\n"),
        ),
    ]);
    for strict in [false, true] {
        let opts = Options { strict };
        if let Ok(import) = import_str_with_files(&text, Path::new("/k/main.conf"), &files, &opts) {
            toml::from_str::<toml::Table>(&import.toml).expect("the output is valid TOML");
            for w in &import.warnings {
                assert!(
                    import
                        .toml
                        .contains(&format!("{}:{}: ", w.file.display(), w.line))
                );
            }
            assert!(!strict || import.warnings.is_empty());
        }
    }
});
