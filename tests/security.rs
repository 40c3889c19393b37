//! Security: authentication, roles and tenant scopes on the client listener (over real TLS),
//! the peer listener's certificate, cluster and membership checks, what the client listener
//! does not expose, certificate reload, and the refusal to expose an unprotected node.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use sessiond::cli::certs::{self, Pem};
use sessiond::client::{Client, ClientOptions};
use sessiond::config::{AuthConfig, ClientCertPolicy, Config, PrincipalConfig, Role, TlsConfig};
use sessiond::proto::internal::raft_transport_client::RaftTransportClient;
use sessiond::proto::internal::{ReadIndexMessage, VoteMessage, VoteRecord};
use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::*;
use sessiond::server::{self, RunningNode};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use common::{create_request, lookup_by_id, peer_request, rotate_request, test_config};

const CLUSTER: &str = "sec-test";

/// A CA with its files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Pem,
}

impl Pki {
    fn new(cluster: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::ca(cluster).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert).unwrap();
        Pki { dir, ca }
    }

    /// Writes node `id`'s certificate for `cluster` and returns the node's TLS settings.
    fn node_tls(&self, cluster: &str, id: u64) -> TlsConfig {
        let pem = certs::node(&self.ca, cluster, id, &["127.0.0.1".into()]).unwrap();
        write_pem(self.dir.path(), &format!("node-{id}"), &pem);
        TlsConfig {
            ca_file: self.dir.path().join("ca.pem"),
            cert_file: self.dir.path().join(format!("node-{id}.pem")),
            key_file: self.dir.path().join(format!("node-{id}.key")),
            client_certs: ClientCertPolicy::Optional,
        }
    }

    /// Client TLS trusting this CA, with `identity` as client certificate if given.
    fn client_tls(&self, identity: Option<&Pem>) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca.cert));
        match identity {
            Some(pem) => tls.identity(Identity::from_pem(&pem.cert, &pem.key)),
            None => tls,
        }
    }
}

fn write_pem(dir: &Path, name: &str, pem: &Pem) {
    std::fs::write(dir.join(format!("{name}.pem")), &pem.cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &pem.key).unwrap();
}

/// The API keys of the test principals.
struct Keys {
    service: String,
    gateway: String,
    operator: String,
    all_tenants: String,
}

fn principal(name: &str, role: Role, tenants: &[&str], key: Option<&str>) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        role,
        tenants: tenants.iter().map(|t| t.to_string()).collect(),
        api_key_sha256: key.map(sessiond::auth::api_key_digest),
    }
}

/// A secured single node: TLS on both listeners, principals for each role in tenant `acme`,
/// a service principal for every tenant, and `svc-cert`, a service principal that
/// authenticates with a client certificate.
async fn secured_node(pki: &Pki, data: &Path) -> (RunningNode, Keys) {
    let keys = Keys {
        service: certs::api_key().0,
        gateway: certs::api_key().0,
        operator: certs::api_key().0,
        all_tenants: certs::api_key().0,
    };
    let mut config = test_config(data);
    config.cluster_id = CLUSTER.into();
    config.tls = Some(pki.node_tls(CLUSTER, 1));
    config.auth = AuthConfig {
        principals: vec![
            principal("svc-acme", Role::Service, &["acme"], Some(&keys.service)),
            principal("gw-acme", Role::Gateway, &["acme"], Some(&keys.gateway)),
            principal("ops", Role::Operator, &[], Some(&keys.operator)),
            principal("svc-all", Role::Service, &["*"], Some(&keys.all_tenants)),
            principal("svc-cert", Role::Service, &["acme"], None),
        ],
    };
    (server::start(config).await.expect("node starts"), keys)
}

fn client(node: &RunningNode, tls: ClientTlsConfig, key: Option<&str>) -> Client {
    Client::for_cluster_with(
        &[format!("https://{}", node.addr())],
        &ClientOptions {
            tls: Some(tls),
            api_key: key.map(str::to_owned),
        },
    )
    .unwrap()
}

async fn tls_channel(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

fn with_key<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

/// Every RPC of the client listener.
const METHODS: &[&str] = &[
    "CreateSession",
    "Rotate",
    "AcquireRenewalLease",
    "Lookup",
    "ValidateAccessToken",
    "Touch",
    "Revoke",
    "ListSessions",
    "CountSessions",
    "GetAnomalyCounters",
    "WatchRevocations",
    "ListRevoked",
    "Cluster.AddLearner",
    "Cluster.Promote",
    "Cluster.Remove",
    "Cluster.Status",
    "Cluster.StateDigest",
    "Cluster.TriggerSnapshot",
    "Cluster.PurgeLog",
];

/// Which RPCs each role may call: (method, service, gateway, operator).
const ALLOWED: &[(&str, bool, bool, bool)] = &[
    ("CreateSession", true, false, false),
    ("Rotate", true, false, false),
    ("AcquireRenewalLease", true, false, false),
    ("Lookup", true, true, false),
    ("ValidateAccessToken", true, true, false),
    ("Touch", true, false, false),
    ("Revoke", true, false, false),
    ("ListSessions", true, false, false),
    ("CountSessions", true, false, false),
    ("GetAnomalyCounters", true, false, false),
    ("WatchRevocations", false, true, false),
    ("ListRevoked", false, true, false),
    ("Cluster.AddLearner", false, false, true),
    ("Cluster.Promote", false, false, true),
    ("Cluster.Remove", false, false, true),
    ("Cluster.Status", true, true, true),
    ("Cluster.StateDigest", false, false, true),
    ("Cluster.TriggerSnapshot", false, false, true),
    ("Cluster.PurgeLog", false, false, true),
];

/// A session of tenant `acme` the table's requests refer to.
struct Fixture {
    session_id: String,
    refresh_token: String,
    access_token: String,
}

/// Calls `method` with a harmless request in tenant `acme` (membership changes name node 0
/// and a log purge index 0, which are INVALID_ARGUMENT once authorized) and returns its
/// status.
async fn call(
    method: &str,
    client: &Client,
    admin: Channel,
    key: Option<&str>,
    f: &Fixture,
) -> Result<(), Status> {
    let acme = "acme".to_string();
    let sid = f.session_id.clone();
    let mut admin = ClusterClient::new(admin);
    match method {
        "CreateSession" => client
            .create_session(create_request("acme", "table"))
            .await
            .map(drop),
        "Rotate" => client
            .rotate(rotate_request(&f.refresh_token))
            .await
            .map(drop),
        "AcquireRenewalLease" => client
            .acquire_renewal_lease(AcquireRenewalLeaseRequest {
                tenant: acme,
                session_id: sid,
                holder: "table".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "Lookup" => client.lookup(lookup_by_id("acme", &sid)).await.map(drop),
        "ValidateAccessToken" => client
            .validate_access_token(ValidateAccessTokenRequest {
                tenant: acme,
                access_token: f.access_token.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        "Touch" => client
            .touch(TouchRequest {
                tenant: acme,
                session_id: sid,
                ..Default::default()
            })
            .await
            .map(drop),
        "Revoke" => client
            .revoke(RevokeRequest {
                tenant: acme,
                scope: RevokeScope::User as i32,
                id: "nobody".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ListSessions" => client
            .list_sessions(ListSessionsRequest {
                tenant: acme,
                user_id: "table".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "CountSessions" => client
            .count_sessions(CountSessionsRequest {
                tenant: acme,
                ..Default::default()
            })
            .await
            .map(drop),
        "GetAnomalyCounters" => client
            .get_anomaly_counters(GetAnomalyCountersRequest {
                tenant: acme,
                ..Default::default()
            })
            .await
            .map(drop),
        "WatchRevocations" => client
            .watch_revocations(WatchRevocationsRequest {
                from_revision: 0,
                tenants: vec![acme],
                from_sequence: 0,
            })
            .await
            .map(drop),
        "ListRevoked" => client
            .list_revoked(ListRevokedRequest {
                tenant: acme,
                ..Default::default()
            })
            .await
            .map(drop),
        "Cluster.AddLearner" => admin
            .add_learner(with_key(
                AddLearnerRequest {
                    node_id: 0,
                    addr: "127.0.0.1:1".into(),
                    timeout_ms: 0,
                },
                key,
            ))
            .await
            .map(drop),
        "Cluster.Promote" => admin
            .promote(with_key(
                PromoteRequest {
                    node_id: 0,
                    force: false,
                },
                key,
            ))
            .await
            .map(drop),
        "Cluster.Remove" => admin
            .remove(with_key(RemoveRequest { node_id: 0 }, key))
            .await
            .map(drop),
        "Cluster.Status" => admin
            .status(with_key(ClusterStatusRequest {}, key))
            .await
            .map(drop),
        "Cluster.StateDigest" => admin
            .state_digest(with_key(StateDigestRequest {}, key))
            .await
            .map(drop),
        "Cluster.TriggerSnapshot" => admin
            .trigger_snapshot(with_key(TriggerSnapshotRequest {}, key))
            .await
            .map(drop),
        "Cluster.PurgeLog" => admin
            .purge_log(with_key(PurgeLogRequest { upto: 0 }, key))
            .await
            .map(drop),
        other => panic!("no request for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_rpc_over_tls() {
    let pki = Pki::new(CLUSTER);
    let data = tempfile::tempdir().unwrap();
    let (node, keys) = secured_node(&pki, data.path()).await;
    let setup = client(&node, pki.client_tls(None), Some(&keys.service));
    let created = setup
        .create_session(create_request("acme", "table"))
        .await
        .expect("the service key creates in its tenant");
    let fixture = Fixture {
        session_id: created.session.unwrap().session_id,
        refresh_token: created.refresh_token,
        access_token: created.access_token,
    };
    let cert_identity = certs::client(&pki.ca, CLUSTER, "svc-cert").unwrap();
    let stranger = certs::client(&pki.ca, CLUSTER, "stranger").unwrap();
    assert_eq!(METHODS.len(), ALLOWED.len());

    // (caller, API key, client certificate, role whose column applies; None: no valid
    // credential, every call UNAUTHENTICATED)
    let bad_key = "sdk_not-a-configured-key".to_string();
    type Caller<'a> = (&'a str, Option<&'a String>, Option<&'a Pem>, Option<Role>);
    let callers: Vec<Caller> = vec![
        (
            "service key",
            Some(&keys.service),
            None,
            Some(Role::Service),
        ),
        (
            "gateway key",
            Some(&keys.gateway),
            None,
            Some(Role::Gateway),
        ),
        (
            "operator key",
            Some(&keys.operator),
            None,
            Some(Role::Operator),
        ),
        (
            "service mTLS",
            None,
            Some(&cert_identity),
            Some(Role::Service),
        ),
        ("no credential", None, None, None),
        ("unknown key", Some(&bad_key), None, None),
        ("unknown certificate", None, Some(&stranger), None),
    ];
    let mut failures = Vec::new();
    for (caller, key, identity, role) in &callers {
        let tls = pki.client_tls(*identity);
        let key = key.map(|k| k.as_str());
        let client = client(&node, tls.clone(), key);
        let admin = tls_channel(node.addr(), tls).await.expect("TLS connects");
        for (method, service, gateway, operator) in ALLOWED {
            let expected = match role {
                Some(Role::Service) => service,
                Some(Role::Gateway) => gateway,
                Some(Role::Operator) => operator,
                None => &false,
            };
            let got = call(method, &client, admin.clone(), key, &fixture).await;
            let denied_code = match role {
                None => Code::Unauthenticated,
                Some(_) => Code::PermissionDenied,
            };
            let ok = match (&got, expected) {
                (Err(s), false) => s.code() == denied_code,
                (Err(s), true) => {
                    !matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
                }
                (Ok(()), allowed) => *allowed,
            };
            if !ok {
                failures.push(format!(
                    "{caller} → {method}: expected {}, got {:?}",
                    if *expected { "allowed" } else { "denied" },
                    got.map_err(|s| (s.code(), s.message().to_owned()))
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_for_one_tenant_cannot_touch_another() {
    let pki = Pki::new(CLUSTER);
    let data = tempfile::tempdir().unwrap();
    let (node, keys) = secured_node(&pki, data.path()).await;
    let acme = client(&node, pki.client_tls(None), Some(&keys.service));
    let everyone = client(&node, pki.client_tls(None), Some(&keys.all_tenants));
    let gateway = client(&node, pki.client_tls(None), Some(&keys.gateway));

    let theirs = everyone
        .create_session(create_request("globex", "bob"))
        .await
        .unwrap();
    let their_id = theirs.session.clone().unwrap().session_id;
    fn denied<T>(r: Result<T, Status>, what: &str) {
        let code = r.map(drop).expect_err(what).code();
        assert_eq!(code, Code::PermissionDenied, "{what}");
    }
    denied(
        acme.create_session(create_request("globex", "eve")).await,
        "create in another tenant",
    );
    denied(
        acme.lookup(lookup_by_id("globex", &their_id)).await,
        "lookup in another tenant",
    );
    denied(
        acme.revoke(RevokeRequest {
            tenant: "globex".into(),
            scope: RevokeScope::Tenant as i32,
            ..Default::default()
        })
        .await,
        "revoke another tenant",
    );
    denied(
        acme.rotate(rotate_request(&theirs.refresh_token)).await,
        "rotate another tenant's token",
    );
    denied(
        gateway
            .list_revoked(ListRevokedRequest {
                tenant: "globex".into(),
                ..Default::default()
            })
            .await,
        "list revoked of another tenant",
    );
    denied(
        gateway
            .watch_revocations(WatchRevocationsRequest {
                from_revision: 0,
                tenants: vec!["acme".into(), "globex".into()],
                from_sequence: 0,
            })
            .await,
        "watch another tenant",
    );
    // The refused rotation changed nothing: the owner can still rotate the token.
    let rotated = everyone
        .rotate(rotate_request(&theirs.refresh_token))
        .await
        .unwrap();
    assert_eq!(rotated.outcome(), RotateOutcome::Rotated);

    // A stream without a filter carries only the credential's tenants.
    let ours = acme
        .create_session(create_request("acme", "alice"))
        .await
        .unwrap();
    for (tenant, id) in [
        ("globex", their_id.clone()),
        ("acme", ours.session.unwrap().session_id),
    ] {
        everyone
            .revoke(RevokeRequest {
                tenant: tenant.into(),
                scope: RevokeScope::Session as i32,
                id,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut stream = gateway
        .watch_revocations(WatchRevocationsRequest::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|t: &String| t == "acme") {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, stream.message())
            .await
            .expect("the acme revocation arrives in time")
            .unwrap()
            .expect("stream open");
        if let Some(watch_revocations_response::Kind::Events(e)) = message.kind {
            seen.extend(e.events.into_iter().map(|e| e.tenant));
        }
    }
    assert!(
        seen.iter().all(|t| t == "acme"),
        "the gateway of acme saw {seen:?}"
    );
    let listed = everyone
        .list_revoked(ListRevokedRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        listed.unwrap_err().code(),
        Code::PermissionDenied,
        "a service may not list revoked sessions (gateway only)"
    );
    node.stop().await.unwrap();
}

fn vote_message(candidate: u64, term: u64) -> VoteMessage {
    VoteMessage {
        vote: Some(VoteRecord {
            schema_version: 1,
            term,
            node_id: candidate,
            committed: false,
        }),
        last_log_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_listener_admits_only_member_nodes_of_this_cluster() {
    let pki = Pki::new(CLUSTER);
    let data = tempfile::tempdir().unwrap();
    let (node, _keys) = secured_node(&pki, data.path()).await;
    let peer = node.peer_addr();
    let term_before = node.node().raft().metrics().borrow().current_term;

    // No client certificate: the handshake fails.
    let anonymous = tls_channel(peer, pki.client_tls(None)).await;
    if let Ok(channel) = anonymous {
        let refused = RaftTransportClient::new(channel)
            .read_index(peer_request(ReadIndexMessage {}, CLUSTER, 1))
            .await;
        assert!(
            refused.is_err(),
            "a peer call without a certificate must fail"
        );
    }

    // A client certificate of this CA is not a node certificate.
    let client_cert = certs::client(&pki.ca, CLUSTER, "svc-cert").unwrap();
    let channel = tls_channel(peer, pki.client_tls(Some(&client_cert)))
        .await
        .expect("the handshake succeeds: the certificate is from the CA");
    let refused = RaftTransportClient::new(channel)
        .vote(peer_request(vote_message(1, 1000), CLUSTER, 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A node certificate of this CA naming another cluster, and a request saying so.
    let foreign = certs::node(&pki.ca, "other-cluster", 1, &[]).unwrap();
    let channel = tls_channel(peer, pki.client_tls(Some(&foreign)))
        .await
        .unwrap();
    for cluster in [CLUSTER, "other-cluster"] {
        let refused = RaftTransportClient::new(channel.clone())
            .vote(peer_request(vote_message(1, 1000), cluster, 1))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }

    // A node certificate from another cluster's CA: the handshake is refused.
    let other_pki = Pki::new("other-cluster");
    let other_node = certs::node(&other_pki.ca, CLUSTER, 1, &[]).unwrap();
    let tls = pki
        .client_tls(None)
        .identity(Identity::from_pem(&other_node.cert, &other_node.key));
    if let Ok(channel) = tls_channel(peer, tls).await {
        let refused = RaftTransportClient::new(channel)
            .vote(peer_request(vote_message(1, 1000), CLUSTER, 1))
            .await;
        assert!(
            refused.is_err(),
            "another CA's certificate must not be admitted"
        );
    }

    // A valid node certificate of this cluster, but node 99 is not a member: its vote is
    // refused, whatever term it claims.
    let stranger = certs::node(&pki.ca, CLUSTER, 99, &[]).unwrap();
    let channel = tls_channel(peer, pki.client_tls(Some(&stranger)))
        .await
        .unwrap();
    let refused = RaftTransportClient::new(channel.clone())
        .vote(peer_request(vote_message(99, 1000), CLUSTER, 99))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("not a member"), "{refused:?}");
    // Nor may it claim to be a member.
    let refused = RaftTransportClient::new(channel)
        .vote(peer_request(vote_message(1, 1000), CLUSTER, 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A member's certificate voting for someone else is refused too.
    let member = certs::node(&pki.ca, CLUSTER, 1, &[]).unwrap();
    let channel = tls_channel(peer, pki.client_tls(Some(&member)))
        .await
        .unwrap();
    let refused = RaftTransportClient::new(channel)
        .vote(peer_request(vote_message(7, 1000), CLUSTER, 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    let metrics = node.node().raft().metrics().borrow().clone();
    assert_eq!(
        metrics.current_term, term_before,
        "no refused vote moved the term"
    );
    assert_eq!(metrics.current_leader, Some(1), "the node still leads");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_listener_does_not_expose_the_raft_transport() {
    let data = tempfile::tempdir().unwrap();
    let node = server::start(test_config(data.path())).await.unwrap();
    let channel = Endpoint::from_shared(format!("http://{}", node.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let direct = RaftTransportClient::new(channel.clone())
        .vote(peer_request(vote_message(1, 1000), "sessiond", 1))
        .await
        .unwrap_err();
    assert_eq!(direct.code(), Code::Unimplemented, "{direct:?}");

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"sessiond.v1.SessionAuthority".to_string()),
        "{names:?}"
    );
    assert!(
        names.iter().all(|n| !n.contains("RaftTransport")),
        "reflection lists {names:?}"
    );

    // The peer listener serves the transport (this node is alone: a vote from "node 2" of
    // the same cluster is not from a member and is refused by the guard, not unknown).
    let peer = Endpoint::from_shared(format!("http://{}", node.peer_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let guarded = RaftTransportClient::new(peer)
        .vote(peer_request(vote_message(2, 1000), "sessiond", 2))
        .await
        .unwrap_err();
    assert_eq!(guarded.code(), Code::PermissionDenied, "{guarded:?}");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_a_restart() {
    let pki = Pki::new(CLUSTER);
    let data = tempfile::tempdir().unwrap();
    let (node, keys) = secured_node(&pki, data.path()).await;
    let before = client(&node, pki.client_tls(None), Some(&keys.service));
    before
        .create_session(create_request("acme", "a"))
        .await
        .unwrap();

    // Rotate to a new CA: overwrite the files in place, then reload.
    let rotated = certs::ca(CLUSTER).unwrap();
    let node_pem = certs::node(&rotated, CLUSTER, 1, &["127.0.0.1".into()]).unwrap();
    std::fs::write(pki.dir.path().join("ca.pem"), &rotated.cert).unwrap();
    write_pem(pki.dir.path(), "node-1", &node_pem);
    node.reload_tls().expect("reload succeeds");

    let new_tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&rotated.cert));
    let after = client(&node, new_tls, Some(&keys.service));
    after
        .create_session(create_request("acme", "b"))
        .await
        .expect("a client trusting the new CA connects");
    let stale = tls_channel(node.addr(), pki.client_tls(None)).await;
    assert!(
        stale.is_err(),
        "a new connection trusting only the old CA fails"
    );
    before
        .create_session(create_request("acme", "c"))
        .await
        .expect("an established connection keeps working");

    // A broken file is refused and the node keeps its certificates.
    std::fs::write(pki.dir.path().join("node-1.key"), "not a key").unwrap();
    assert!(node.reload_tls().is_err());
    after
        .create_session(create_request("acme", "d"))
        .await
        .unwrap();
    node.stop().await.unwrap();
}

#[test]
fn serving_a_public_address_without_tls_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], wait: Duration| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read as _;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return Some((status, err));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (status, stderr) = run(&[], Duration::from_secs(60)).expect("serve exits by itself");
    assert!(!status.success());
    assert!(stderr.contains("needs TLS"), "stderr: {stderr}");
    // With --insecure it serves (and is stopped here after a moment).
    assert!(
        run(&["--insecure"], Duration::from_secs(3)).is_none(),
        "--insecure serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_forms_and_replicates_over_the_peer_listener() {
    let pki = Pki::new(CLUSTER);
    let root = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let key = certs::api_key().0;
    for id in 1..=2u64 {
        let mut config: Config =
            common::cluster::cluster_config(&root.path().join(format!("n{id}")), id, id == 1);
        config.cluster_id = CLUSTER.into();
        config.tls = Some(pki.node_tls(CLUSTER, id));
        config.auth = AuthConfig {
            principals: vec![principal("ops", Role::Operator, &[], Some(&key))],
        };
        nodes.push(server::start(config).await.unwrap());
    }
    let admin_channel = tls_channel(nodes[0].addr(), pki.client_tls(None))
        .await
        .unwrap();
    let mut admin = ClusterClient::new(admin_channel);
    // Wait for node 1 to lead, then add node 2 by its peer address.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes[0].node().raft().metrics().borrow().current_leader != Some(1) {
        assert!(Instant::now() < deadline, "node 1 leads in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin
        .add_learner(with_key(
            AddLearnerRequest {
                node_id: 2,
                addr: nodes[1].peer_addr().to_string(),
                timeout_ms: 0,
            },
            Some(&key),
        ))
        .await
        .expect("the learner is added over mTLS");
    let status = admin
        .promote(with_key(
            PromoteRequest {
                node_id: 2,
                force: false,
            },
            Some(&key),
        ))
        .await
        .expect("promoted")
        .into_inner()
        .status
        .unwrap();
    let two = status.members.iter().find(|m| m.node_id == 2).unwrap();
    assert_eq!(two.addr, nodes[1].peer_addr().to_string());
    assert_eq!(
        two.client_addr,
        nodes[1].addr().to_string(),
        "status names client addresses"
    );

    // Status through the follower names the same client addresses (asked over mTLS).
    let mut via_follower = ClusterClient::new(
        tls_channel(nodes[1].addr(), pki.client_tls(None))
            .await
            .unwrap(),
    );
    let status = via_follower
        .status(with_key(ClusterStatusRequest {}, Some(&key)))
        .await
        .unwrap()
        .into_inner();
    let one = status.members.iter().find(|m| m.node_id == 1).unwrap();
    assert_eq!(one.client_addr, nodes[0].addr().to_string());
    for node in nodes {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_names_principals_and_holds_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, digest) = certs::api_key();
    let (ops_key, ops_digest) = certs::api_key();
    let config = dir.path().join("sessiond.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.principals]]\nname = \"login-service\"\nrole = \"service\"\ntenants = [\"acme\"]\napi_key_sha256 = \"{digest}\"\n\n\
             [[auth.principals]]\nname = \"ops\"\nrole = \"operator\"\napi_key_sha256 = \"{ops_digest}\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("sessiond.log");
    let server = common::ServerProcess::spawn(
        &dir.path().join("data"),
        &log,
        &["--config", config.to_str().unwrap()],
    );
    let with = |key: &str| {
        Client::for_cluster_with(
            &[server.endpoint()],
            &ClientOptions {
                tls: None,
                api_key: Some(key.to_owned()),
            },
        )
        .unwrap()
    };
    let wrong_key = certs::api_key().0;
    let refused = with(&wrong_key)
        .create_session(create_request("acme", "alice"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(refused.message(), "unknown API key");
    let service = with(&key);
    service
        .create_session(create_request("acme", "alice"))
        .await
        .unwrap();
    service
        .revoke(RevokeRequest {
            tenant: "acme".into(),
            scope: RevokeScope::User as i32,
            id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut admin = ClusterClient::new(
        Endpoint::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let denied = admin
        .remove(with_key(RemoveRequest { node_id: 1 }, Some(&key)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    admin
        .status(with_key(ClusterStatusRequest {}, Some(&ops_key)))
        .await
        .unwrap();
    server.terminate();

    let text = std::fs::read_to_string(&log).unwrap();
    let audit: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "sessiond::audit")
        .collect();
    let event = |name: &str| {
        audit
            .iter()
            .find(|v| v["fields"]["event"] == name)
            .unwrap_or_else(|| panic!("no {name} audit event in {audit:?}"))
            .clone()
    };
    assert_eq!(
        event("credential_refused")["fields"]["reason"],
        "unknown API key"
    );
    let revoked = event("bulk_revocation");
    assert_eq!(revoked["fields"]["principal"], "login-service");
    assert_eq!(revoked["fields"]["user_id"], "alice");
    assert_eq!(revoked["fields"]["revoked"], 1);
    let refused = event("permission_refused");
    assert_eq!(refused["fields"]["principal"], "login-service");
    assert_eq!(refused["fields"]["method"], "/sessiond.v1.Cluster/Remove");
    for secret in [&key, &ops_key, &wrong_key] {
        assert!(!text.contains(secret.as_str()), "a key reached the log");
    }
}
