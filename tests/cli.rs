//! The operator CLI against a real `sessiond serve` process: create, rotate, lookup, list,
//! count and revoke print readable results.

mod common;

use std::process::Command;

use common::*;

fn sessiond(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["session", "--endpoint", endpoint])
        .args(args)
        .output()
        .expect("sessiond runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sessiond {args:?} failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn field<'a>(output: &'a str, label: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(|rest| rest.split_whitespace().next().unwrap_or(""))
        .unwrap_or_else(|| panic!("no {label:?} in {output}"))
}

#[test]
fn operator_commands_print_readable_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&dir.path().join("data"), &dir.path().join("log"), &[]);
    let endpoint = server.endpoint();

    let created = sessiond(
        &endpoint,
        &[
            "create",
            "--tenant",
            "ops",
            "--user",
            "alice",
            "--attr",
            "device=laptop",
        ],
    );
    assert!(created.contains("Created"), "{created}");
    assert!(created.contains("attr device: laptop"), "{created}");
    let token = field(&created, "refresh token:").to_owned();
    let session_id = field(&created, "session:").to_owned();

    let rotated = sessiond(&endpoint, &["rotate", &token]);
    assert!(rotated.contains("Rotated"), "{rotated}");
    let looked_up = sessiond(
        &endpoint,
        &["lookup", "--tenant", "ops", "--refresh-token", &token],
    );
    assert!(looked_up.contains("Retired"), "{looked_up}");
    assert!(looked_up.contains(&session_id), "{looked_up}");

    let counted = sessiond(&endpoint, &["count", "--tenant", "ops", "--user", "alice"]);
    assert!(counted.starts_with("1 active"), "{counted}");
    let revoked = sessiond(
        &endpoint,
        &[
            "revoke", "--tenant", "ops", "--scope", "user", "--id", "alice",
        ],
    );
    assert!(revoked.starts_with("revoked 1 session(s)"), "{revoked}");
    let listed = sessiond(
        &endpoint,
        &["list", "--tenant", "ops", "--user", "alice", "--all"],
    );
    assert!(listed.contains("Revoked"), "{listed}");
    server.terminate();
}
