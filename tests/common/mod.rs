//! Shared helpers for the integration tests: an in-process node on a free loopback port with
//! a temporary data directory, and the real `sessiond` binary as a child process.
#![allow(dead_code)]

pub mod cluster;
pub mod process;
pub mod workload;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sessiond::client::Client;
use sessiond::config::Config;
use sessiond::proto::v1::*;
use sessiond::server::{self, RunningNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A config for a test node: loopback port 0 (the OS picks a free one) and `data_dir`.
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    }
}

/// An in-process node and a client connected to it.
pub struct TestNode {
    pub node: RunningNode,
    pub client: Client,
}

impl TestNode {
    /// Starts a node with `config` and connects a client.
    pub async fn start(config: Config) -> TestNode {
        let node = server::start(config).await.expect("node starts");
        let client = Client::connect(&format!("http://{}", node.addr()))
            .await
            .expect("client connects");
        TestNode { node, client }
    }

    /// Stops the node gracefully.
    pub async fn stop(self) {
        self.node.stop().await.expect("node stops cleanly");
    }
}

/// A create request for `user` in `tenant` with defaults otherwise.
pub fn create_request(tenant: &str, user: &str) -> CreateSessionRequest {
    CreateSessionRequest {
        tenant: tenant.to_owned(),
        user_id: user.to_owned(),
        ..Default::default()
    }
}

/// A rotate request for `token`.
pub fn rotate_request(token: &str) -> RotateRequest {
    RotateRequest {
        refresh_token: token.to_owned(),
        ..Default::default()
    }
}

/// An administrator's revocation of one session.
pub fn revoke_session(tenant: &str, session_id: &str) -> RevokeRequest {
    RevokeRequest {
        tenant: tenant.to_owned(),
        scope: RevokeScope::Session as i32,
        id: session_id.to_owned(),
        reason: RevocationReason::Admin as i32,
        request_id: String::new(),
    }
}

/// A linearizable lookup by session id.
pub fn lookup_by_id(tenant: &str, session_id: &str) -> LookupRequest {
    LookupRequest {
        tenant: tenant.to_owned(),
        key: Some(lookup_request::Key::SessionId(session_id.to_owned())),
        consistency: Consistency::Linearizable as i32,
    }
}

/// A peer request as node `sender` of `cluster` would send it.
pub fn peer_request<T>(message: T, cluster: &str, sender: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        sessiond::raft::network::PEER_CLUSTER_METADATA,
        cluster.parse().unwrap(),
    );
    request.metadata_mut().insert(
        sessiond::raft::network::PEER_NODE_METADATA,
        sender.to_string().parse().unwrap(),
    );
    request
}

/// The real binary running `serve` as a child process.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
}

impl ServerProcess {
    /// Starts `sessiond serve` on a free loopback port over `data_dir`, logging JSON at
    /// debug level into `log_path`, and waits until it serves.
    pub fn spawn(data_dir: &Path, log_path: &Path, extra_args: &[&str]) -> ServerProcess {
        let data_dir = data_dir.to_str().expect("UTF-8 path");
        let mut args = vec!["--listen", "127.0.0.1:0", "--data-dir", data_dir];
        args.extend_from_slice(extra_args);
        ServerProcess::spawn_with(&args, log_path)
    }

    /// Starts `sessiond serve` with `args` (JSON logs at debug level appended to `log_path`)
    /// and waits until it serves.
    pub fn spawn_with(args: &[&str], log_path: &Path) -> ServerProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file opens");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(["serve", "--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("sessiond starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log_copy = log_path.to_path_buf();
        std::thread::spawn(move || {
            let mut sink = std::fs::OpenOptions::new().append(true).open(log_copy).ok();
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(f) = sink.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if !sent {
                    if let Some(addr) = serving_addr(&line) {
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("sessiond logs its serving address within 60 s");
        ServerProcess {
            child,
            addr,
            log_path: log_path.to_path_buf(),
        }
    }

    /// The endpoint URL of this server.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().expect("child reaped");
    }

    /// Sends SIGSTOP (`paused`) or SIGCONT to the process.
    pub fn pause(&self, paused: bool) {
        let signal = if paused { "-STOP" } else { "-CONT" };
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
    }

    /// Sends SIGTERM and waits up to 30 s for a graceful exit.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().expect("wait works").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        panic!("sessiond did not exit within 30 s of SIGTERM");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in the "sessiond serving" JSON log line.
fn serving_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "sessiond serving" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// A loopback port that was free a moment ago (for processes that must keep their address
/// across restarts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Asserts that `tenant` holds no active session (a request that was refused wrote nothing).
pub async fn assert_no_active_sessions(client: &Client, tenant: &str, why: &str) {
    let count = client
        .count_sessions(CountSessionsRequest {
            tenant: tenant.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(count.active, 0, "{why}");
}

/// Connects to `endpoint`, retrying for up to 30 s while the server starts.
pub async fn connect(endpoint: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(endpoint).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The gRPC health status of `service` on the node at `addr`.
pub async fn grpc_health(addr: SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("an endpoint URL")
        .connect()
        .await
        .expect("health connects");
    let mut client = HealthClient::new(channel);
    let answer = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner();
    ServingStatus::try_from(answer.status).expect("a known status")
}

/// Waits up to `within` until `service` on `addr` reports `wanted`.
pub async fn wait_for_health(
    addr: SocketAddr,
    service: &str,
    wanted: ServingStatus,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let now = grpc_health(addr, service).await;
        if now == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} {service:?} still {now:?}, wanted {wanted:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GETs `path` on `addr`; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("an answer");
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}
