//! The etcd and Redis stores of `sessiond bench` against real servers started here (a
//! single-member etcd and a redis-server without persistence, on free loopback ports): each
//! keeps the rotation contract the load generator measures, so that the comparison with
//! sessiond is like for like: a token rotates at most once, even when raced, and a revoked
//! session is gone.
#![cfg(feature = "compare")]

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sessiond::bench::etcd::EtcdStore;
use sessiond::bench::redis::RedisStore;
use sessiond::bench::store::{Held, ReadConsistency, SessionStore};
use tempfile::TempDir;

/// How long a server may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A server child process, killed (by its pid) when dropped, with its data directory.
struct Server {
    child: Child,
    dir: TempDir,
}

impl Server {
    /// Starts `program` with `args`, its output going to a log file in `dir`.
    fn spawn(program: &str, args: &[String], dir: TempDir) -> Server {
        let log = File::create(dir.path().join("server.log")).expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{program}` ({e}); install it: apt-get install -y etcd-server redis-server")
            });
        Server { child, dir }
    }

    /// Connects through `connect` until it succeeds, panicking with the server's log when the
    /// deadline passes or the server exits.
    async fn ready<S, F, Fut>(&mut self, connect: F) -> S
    where
        F: Fn() -> Fut,
        Fut: Future<Output = anyhow::Result<S>>,
    {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let error = match connect().await {
                Ok(store) => return store,
                Err(e) => e,
            };
            let exited = self.child.try_wait().expect("child status");
            if exited.is_some() || Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
                panic!("server not ready ({exited:?}): {error:#}\n--- server log ---\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the time of asking.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A single-member etcd cluster and a store connected to it.
async fn start_etcd() -> (Server, EtcdStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let args = [
        "--name=bench".to_owned(),
        format!("--data-dir={}", dir.path().join("etcd").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=bench={peer}"),
        "--initial-cluster-state=new".to_owned(),
    ];
    let mut server = Server::spawn("etcd", &args, dir);
    let endpoints = vec![client];
    let store = server.ready(|| EtcdStore::connect(&endpoints)).await;
    (server, store)
}

/// A redis-server without persistence and a store connected to it.
async fn start_redis() -> (Server, RedisStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let args = [
        "--port".to_owned(),
        port.to_string(),
        "--bind".to_owned(),
        "127.0.0.1".to_owned(),
        "--save".to_owned(),
        String::new(),
        "--appendonly".to_owned(),
        "no".to_owned(),
        "--dir".to_owned(),
        dir.path().display().to_string(),
    ];
    let mut server = Server::spawn("redis-server", &args, dir);
    let endpoints = vec![format!("redis://127.0.0.1:{port}")];
    let store = server.ready(|| RedisStore::connect(&endpoints)).await;
    (server, store)
}

/// The failure kind of an operation that must fail.
fn failure<T: std::fmt::Debug>(result: Result<T, sessiond::bench::store::OpError>) -> String {
    result.expect_err("operation must fail").kind()
}

/// Create → lookup → rotate; the old token never rotates again, even raced by clones; revoke
/// ends the session.
async fn rotates_each_token_at_most_once(store: impl SessionStore) {
    let held = store.create("user-1").await.expect("create");
    for consistency in [ReadConsistency::Linearizable, ReadConsistency::Local] {
        store.lookup(&held, consistency).await.expect("lookup");
    }

    let next = store.rotate(&held).await.expect("rotate");
    assert_eq!(next.session_id, held.session_id);
    assert_ne!(next.refresh_token, held.refresh_token);
    assert_eq!(failure(store.rotate(&held).await), "outcome:cas_failed");

    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move { store.rotate(&next).await })
        })
        .collect();
    let mut winners: Vec<Held> = Vec::new();
    for racer in racers {
        match racer.await.expect("racer") {
            Ok(won) => winners.push(won),
            Err(e) => assert_eq!(e.kind(), "outcome:cas_failed"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "one token redeemed {} times",
        winners.len()
    );
    let current = winners.remove(0);
    store
        .lookup(&current, ReadConsistency::Linearizable)
        .await
        .expect("lookup after rotations");

    store.revoke(&current).await.expect("revoke");
    for consistency in [ReadConsistency::Linearizable, ReadConsistency::Local] {
        assert_eq!(
            failure(store.lookup(&current, consistency).await),
            "outcome:not_found"
        );
    }
    assert!(store.rotate(&current).await.is_err());
    assert_eq!(failure(store.revoke(&current).await), "outcome:not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_rotates_each_token_at_most_once() {
    let (_server, store) = start_etcd().await;
    rotates_each_token_at_most_once(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rotates_each_token_at_most_once() {
    let (_server, store) = start_redis().await;
    rotates_each_token_at_most_once(store).await;
}
