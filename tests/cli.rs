//! The operator CLI against a real `sessiond serve` process: create, rotate, lookup, list,
//! count and revoke print readable results (times as RFC 3339 UTC with a relative age) or
//! JSON; every client command takes an endpoint list; exit codes follow the README; shell
//! completions are generated.

mod common;

use std::process::Command;

use common::*;

/// Runs the binary with `args`; returns its exit code, stdout and stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(args)
        .env_remove("SESSIOND_ENDPOINT")
        .output()
        .expect("sessiond runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
    assert!(created.contains("outcome:       CREATED"), "{created}");
    let expires = field(&created, "expires:");
    assert!(
        expires.len() == 24 && expires.ends_with('Z') && expires.contains('T'),
        "{created}"
    );
    assert!(
        created.contains("(in 29d)") || created.contains("(in 30d)"),
        "{created}"
    );
    assert!(created.contains("attr device: laptop"), "{created}");
    let token = field(&created, "refresh token:").to_owned();
    let session_id = field(&created, "session:").to_owned();

    let rotated = sessiond(&endpoint, &["rotate", &token]);
    assert!(rotated.contains("ROTATED"), "{rotated}");
    let looked_up = sessiond(
        &endpoint,
        &["lookup", "--tenant", "ops", "--refresh-token", &token],
    );
    assert!(looked_up.contains("RETIRED"), "{looked_up}");
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
    assert!(listed.contains("status:      REVOKED"), "{listed}");
    assert!(
        listed.contains("Z (now) (ADMIN)"),
        "revocation time shown: {listed}"
    );
    server.terminate();
}

#[test]
fn every_client_command_takes_an_endpoint_list_and_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&dir.path().join("data"), &dir.path().join("log"), &[]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let endpoints = format!("{dead},{}", server.endpoint());

    let (code, out, err) = run(&[
        "session",
        "--endpoint",
        &endpoints,
        "--json",
        "create",
        "--tenant",
        "j",
        "--user",
        "u",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(created["outcome"], "CREATED");
    let session = &created["session"];
    assert!(session["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(session["expires_at_ms"].as_i64().unwrap() > 0);

    let (code, out, err) = run(&["cluster", "--endpoint", &endpoints, "--json", "status"]);
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(status["leader_id"], 1);

    let (code, out, err) = run(&[
        "session",
        "--endpoint",
        &endpoints,
        "--json",
        "list",
        "--tenant",
        "j",
        "--user",
        "u",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for line in out.lines() {
        let s: serde_json::Value = serde_json::from_str(line).expect("one JSON object a line");
        assert_eq!(s["user_id"], "u");
    }
    assert_eq!(out.lines().count(), 1);

    let (code, out, err) = run(&[
        "session",
        "--endpoint",
        &endpoints,
        "--json",
        "count",
        "--tenant",
        "j",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["active"],
        1
    );

    // Exit codes: 2 for an invalid argument, 3 when no endpoint answers, 5 when refused.
    let (code, _, err) = run(&[
        "session",
        "--endpoint",
        &endpoints,
        "create",
        "--tenant",
        "j",
        "--user",
        "",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("user_id"), "{err}");
    let (code, _, err) = run(&["cluster", "--endpoint", &dead, "status"]);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = run(&["cluster", "--endpoint", &endpoints, "promote", "9"]);
    assert_eq!(code, 5, "{err}");
    server.terminate();
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("sessiond"), "{shell}: {out}");
        assert!(out.contains("add-learner"), "{shell} completes subcommands");
    }
}
