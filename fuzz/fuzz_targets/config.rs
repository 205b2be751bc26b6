//! The config loader on arbitrary text: a config or a one-line error, never a panic.
#![no_main]

use flotilla::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Config::parse("fuzz.toml", text) {
            assert!(!e.to_string().contains('\n'), "a multi-line error: {e}");
        }
    }
});
