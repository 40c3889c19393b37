//! Record formats on real nodes: a new cluster writes compact records from its first entry;
//! a data directory written before the compact format keeps its format and its records
//! until an operator moves it (`CompactRecords`), and after that old and new records live
//! side by side (README "Storage layout", "Record formats"). That the fixture's own records
//! read back is the store's test (`a_format_1_data_directory_is_migrated_and_keeps_everything`).

mod common;

use std::path::Path;

use common::{create_request, lookup_by_id, test_config, TestNode};
use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::*;
use tonic::transport::Channel;

/// The record format this version writes.
const NEWEST: u32 = sessiond::domain::format::RecordFormat::NEWEST as u32;

async fn admin_client(node: &TestNode) -> ClusterClient<Channel> {
    ClusterClient::connect(format!("http://{}", node.node.addr()))
        .await
        .unwrap()
}

async fn record_format(admin: &mut ClusterClient<Channel>) -> u32 {
    admin
        .status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .record_format
}

/// How many keys the node's state holds.
async fn keys(admin: &mut ClusterClient<Channel>) -> u64 {
    admin
        .state_digest(StateDigestRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
}

/// Creates a session (joining `family` when given); returns it and how many keys it added.
async fn create(
    node: &TestNode,
    admin: &mut ClusterClient<Channel>,
    user: &str,
    family: &str,
) -> (Session, u64) {
    let before = keys(admin).await;
    let mut request = create_request("acme", user);
    request.family_id = family.to_owned();
    let created = node.client.create_session(request).await.unwrap();
    assert_eq!(created.outcome(), CreateSessionOutcome::Created);
    (created.session.unwrap(), keys(admin).await - before)
}

async fn revoke_family(node: &TestNode, family: &str) -> u64 {
    let request = RevokeRequest {
        tenant: "acme".into(),
        scope: RevokeScope::Family as i32,
        id: family.into(),
        reason: RevocationReason::Admin as i32,
        request_id: String::new(),
    };
    node.client.revoke(request).await.unwrap().revoked_count
}

async fn status_of(node: &TestNode, session_id: &str) -> SessionStatus {
    let found = node
        .client
        .lookup(lookup_by_id("acme", session_id))
        .await
        .unwrap();
    found.session.expect("the session is found").status()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_new_cluster_writes_compact_records_from_its_first_session() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let mut admin = admin_client(&node).await;
    assert_eq!(record_format(&mut admin).await, NEWEST);
    let (founder, _) = create(&node, &mut admin, "alice", "").await;
    let random = founder.session_id.strip_prefix("sid_").unwrap();
    assert_eq!(founder.family_id, format!("fam_{random}"));
    let (joined, _) = create(&node, &mut admin, "alice", &founder.family_id).await;
    assert_eq!(joined.family_id, founder.family_id);
    assert_eq!(revoke_family(&node, &founder.family_id).await, 2);
    for id in [&founder.session_id, &joined.session_id] {
        assert_eq!(status_of(&node, id).await, SessionStatus::Revoked);
    }
    let moved = admin
        .compact_records(CompactRecordsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.record_format, NEWEST, "asking again changes nothing");
    node.stop().await;
}

#[tokio::test]
async fn an_old_data_directory_keeps_its_format_until_an_operator_moves_it() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture.join("data"), dir.path());
    let mut config = test_config(dir.path());
    // No garbage collection (the fixture's old records are due): the test counts the keys
    // each create adds.
    config.gc.interval_ms = 3_600_000;
    let node = TestNode::start(config).await;
    let mut admin = admin_client(&node).await;
    assert_eq!(record_format(&mut admin).await, 1);

    // The first create also writes counters the fixture predates.
    create(&node, &mut admin, "dave", "").await;
    let (legacy, legacy_keys) = create(&node, &mut admin, "bob", "").await;
    let mut before_switch = create_request("acme", "erin");
    before_switch.request_id = uuid::Uuid::now_v7().to_string();
    let first = node
        .client
        .create_session(before_switch.clone())
        .await
        .unwrap();
    let moved = admin
        .compact_records(CompactRecordsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.record_format, NEWEST);
    assert!(moved.revision > 0);
    assert_eq!(record_format(&mut admin).await, NEWEST);
    let retried = node.client.create_session(before_switch).await.unwrap();
    assert_eq!(
        retried.session.unwrap().session_id,
        first.session.unwrap().session_id,
        "a create retried across the switch (its record keyed the old way) is not applied twice"
    );
    let (compact, compact_keys) = create(&node, &mut admin, "carol", "").await;
    assert_eq!(
        compact_keys + 2,
        legacy_keys,
        "a compact session keeps no family record and no member entry"
    );

    // Records of both formats answer alike: a session joins the legacy family, and a
    // revocation of it reaches both members.
    let (joined, _) = create(&node, &mut admin, "bob", &legacy.family_id).await;
    assert_eq!(revoke_family(&node, &legacy.family_id).await, 2);
    for id in [&legacy.session_id, &joined.session_id] {
        assert_eq!(status_of(&node, id).await, SessionStatus::Revoked);
    }
    assert_eq!(
        status_of(&node, &compact.session_id).await,
        SessionStatus::Active
    );
    node.stop().await;
}
