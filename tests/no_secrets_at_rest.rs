//! Raw secrets never touch disk or logs: every raw token the server issued is searched for
//! in every file of the data directory and in the debug-level logs, and none is found. The
//! session ids (not secret) are found, which shows the search looks at the right bytes.

mod common;

use std::path::Path;

use common::*;
use sessiond::proto::v1::*;

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tokens_are_in_neither_data_nor_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("sessiond.log");
    let server = ServerProcess::spawn(&data, &log, &[]);
    let client = connect(&server.endpoint()).await;

    let mut secrets = Vec::new();
    let mut session_ids = Vec::new();
    for i in 0..10 {
        let created = client
            .create_session(CreateSessionRequest {
                request_id: format!("idempotency-key-{i:04}-secret"),
                ..create_request("t", &format!("user-{i}"))
            })
            .await
            .unwrap();
        let rotated = client
            .rotate(rotate_request(&created.refresh_token))
            .await
            .unwrap();
        let retried = client
            .rotate(rotate_request(&created.refresh_token))
            .await
            .unwrap();
        assert!(retried.retried);
        session_ids.push(created.session.as_ref().unwrap().session_id.clone());
        secrets.extend([
            created.refresh_token,
            created.access_token,
            rotated.refresh_token,
            rotated.access_token,
            format!("idempotency-key-{i:04}-secret"),
        ]);
    }
    let _ = client
        .rotate(rotate_request("sdr1_this-is-not-well-formed"))
        .await;
    drop(client);
    server.terminate();

    let mut data_bytes = Vec::new();
    for file in files_under(&data) {
        data_bytes.extend(std::fs::read(&file).unwrap());
    }
    let log_bytes = std::fs::read(&log).unwrap();
    assert!(!log_bytes.is_empty(), "the server logged something");
    assert!(
        session_ids
            .iter()
            .any(|id| contains(&data_bytes, id.as_bytes())),
        "session ids are stored in the data directory, so the search reads real data"
    );
    for secret in &secrets {
        // The random body alone, in case a prefix was stripped before writing.
        let body = secret.split_once('_').map_or(secret.as_str(), |(_, b)| b);
        assert!(
            !contains(&data_bytes, body.as_bytes()),
            "a raw secret is in the data directory"
        );
        assert!(
            !contains(&log_bytes, body.as_bytes()),
            "a raw secret is in the logs"
        );
    }
}
