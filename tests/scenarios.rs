//! Every scenario in `config/scenarios/` runs through `flotilla script` and passes; a scenario
//! whose expectation is not met, or a malformed one, fails with a clear message.

mod common;

use std::path::Path;
use std::process::Command;

fn script(path: &Path) -> std::process::Output {
    Command::new(common::BIN)
        .arg("script")
        .arg(path)
        .output()
        .expect("run flotilla script")
}

#[test]
fn every_shipped_scenario_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "scenarios: {files:?}");
    for f in files {
        let out = script(&f);
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        assert!(
            out.status.success(),
            "{} failed:\n{stdout}\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.lines().last().unwrap().starts_with("passed in "));
    }
}

#[test]
fn an_unmet_expectation_stops_the_run_with_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.toml");
    std::fs::write(
        &file,
        r#"
description = "expects the wrong value"
nodes = 1
initial_members = [1]
[[step]]
start = [1]
[[step]]
set = ["k", "v"]
within_ms = 2000
expect = "OK"
[[step]]
get = "k"
expect = "w"
[[step]]
get = "never reached"
"#,
    )
    .unwrap();
    let out = script(&file);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[ 3/4] get k via n1: FAILED"), "{stdout}");
    assert!(!stdout.contains("[ 4/4]"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step 3 (get k via n1): expected w, got v"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_scenario_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    for (text, message) in [
        (
            "description = \"x\"\nnodes = 1\ninitial_members = [1]\n[[step]]\nstart = [1]\nheal = true\n",
            "step 1: a step has one action, not start n1 and heal",
        ),
        (
            "description = \"x\"\nnodes = 1\ninitial_members = [1]\n[[step]]\nfly = true\n",
            "unknown field `fly`",
        ),
        (
            "description = \"x\"\nnodes = 2\ninitial_members = [3]\nstep = []\n",
            "initial_members must be among 1..=2",
        ),
        (
            "description = \"x\"\nnodes = 1\ninitial_members = [1]\nsplit_keys = [\"m\", \"c\"]\nstep = []\n",
            "split_keys must be in strictly increasing order",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = script(&file);
        assert_eq!(out.status.code(), Some(2), "as for a malformed config file");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("scenario file error") && stderr.contains(message), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing ran");
    }
}
