//! A bad configuration is refused before anything starts: one line on stderr naming the file,
//! the key and the problem, and exit status 2.

mod common;

use common::BIN;
use std::process::Command;

/// Runs `flotilla --config FILE` on `text`; returns (exit code, stderr).
fn run_with(text: Option<&str>) -> (Option<i32>, String, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let data = dir.path().join("data");
    if let Some(text) = text {
        std::fs::write(
            &file,
            format!("data_dir = {data:?}\nclient_addr = \"127.0.0.1:0\"\n{text}"),
        )
        .unwrap();
    }
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !data.exists(),
        "the node created its data directory before refusing"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code(),
        String::from_utf8(out.stderr).unwrap(),
        file,
    )
}

fn refused(text: Option<&str>, expected: &str) {
    let (code, stderr, file) = run_with(text);
    assert_eq!(code, Some(2), "{stderr}");
    let expected = format!("flotilla: config error: {}{expected}\n", file.display());
    assert_eq!(stderr, expected);
}

#[test]
fn a_missing_file() {
    refused(
        None,
        ": cannot read the file: No such file or directory (os error 2)",
    );
}

#[test]
fn toml_syntax() {
    let (code, stderr, file) = run_with(Some("node_id = = 2\n"));
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("flotilla: config error: {}:3: ", file.display())),
        "{stderr}"
    );
}

#[test]
fn an_unknown_key() {
    let (code, stderr, file) = run_with(Some("tick_interval = 100\n"));
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "flotilla: config error: {}:3: key `tick_interval`: unknown field `tick_interval`, expected one of",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_bad_value() {
    refused(
        Some("election_ticks = -4\n"),
        ":3: key `election_ticks`: invalid value: integer `-4`, expected usize",
    );
    refused(
        Some("split_keys = \"abc\"\n"),
        ":3: key `split_keys`: invalid type: string \"abc\", expected a sequence",
    );
}

#[test]
fn inconsistent_values() {
    refused(
        Some("election_ticks = 4\nheartbeat_ticks = 4\n"),
        ":4: key `heartbeat_ticks`: must be less than election_ticks (4 >= 4)",
    );
    refused(
        Some("split_keys = [\"b\", \"a\"]\n"),
        ":3: key `split_keys`: must be in strictly increasing order; \"b\" (entry 1) is not before \"a\"",
    );
}

#[test]
fn help_describes_the_config_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("--config <FILE>"), "{text}");
}
