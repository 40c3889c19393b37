//! etcd as a session store: the [`kv`](super::kv) model in etcd's v3 key space, each
//! operation one request (a transaction for every write).
//!
//! Keys are `s/{session_id}` (the record) and `t/{hash}` (the token index). A rotation is one
//! transaction that compares the record's value with the one the presented token makes
//! current and, only then, installs the successor's record and index key and deletes the
//! presented token's; no two rotations of one token both succeed.

use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
};

use super::kv::{draft, presented_hash, Ledger};
use super::store::{Held, OpError, ReadConsistency, SessionStore};

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An etcd cluster under load. Clones share one balanced connection to every endpoint.
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    ledger: Ledger,
}

impl EtcdStore {
    /// Connects to the etcd members at `endpoints` (`host:port` or `http://host:port`),
    /// balancing requests across them, and checks that the cluster answers.
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Self> {
        let options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .with_context(|| format!("cannot connect to etcd at {endpoints:?}"))?;
        client
            .status()
            .await
            .with_context(|| format!("etcd at {endpoints:?} does not answer"))?;
        Ok(EtcdStore {
            kv: client.kv_client(),
            ledger: Ledger::default(),
        })
    }
}

fn session_key(session_id: &str) -> String {
    format!("s/{session_id}")
}

fn token_key(hash: &str) -> String {
    format!("t/{hash}")
}

/// The class of an etcd failure: the gRPC code, or the client's error kind. Never the
/// message, which may quote keys.
fn transport(error: etcd_client::Error) -> OpError {
    use etcd_client::Error;
    let class = match error {
        Error::GRpcStatus(status) => format!("{:?}", status.code()),
        Error::TransportError(_) => "transport".into(),
        Error::IoError(_) => "io".into(),
        _ => "client".into(),
    };
    OpError::Transport(class)
}

impl SessionStore for EtcdStore {
    async fn create(&self, user_id: &str) -> Result<Held, OpError> {
        let session = draft(user_id);
        let key = session_key(&session.held.session_id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(key, session.record.as_str(), None),
                TxnOp::put(
                    token_key(&session.token_hash),
                    session.held.session_id.as_str(),
                    None,
                ),
            ]);
        let response = self.kv.clone().txn(txn).await.map_err(transport)?;
        if !response.succeeded() {
            return Err(OpError::Outcome("exists".into()));
        }
        self.ledger.remember(&session);
        Ok(session.held)
    }

    async fn rotate(&self, held: &Held) -> Result<Held, OpError> {
        let rotation = self.ledger.rotation(held)?;
        let key = session_key(&held.session_id);
        let txn = Txn::new()
            .when([Compare::value(
                key.as_str(),
                CompareOp::Equal,
                rotation.expected_record,
            )])
            .and_then([
                TxnOp::put(key, rotation.next_record, None),
                TxnOp::put(
                    token_key(&rotation.new_hash),
                    held.session_id.as_str(),
                    None,
                ),
                TxnOp::delete(token_key(&rotation.old_hash), None),
            ]);
        let response = self.kv.clone().txn(txn).await.map_err(transport)?;
        if !response.succeeded() {
            return Err(OpError::Outcome("cas_failed".into()));
        }
        Ok(rotation.next)
    }

    async fn lookup(&self, held: &Held, consistency: ReadConsistency) -> Result<(), OpError> {
        let options = match consistency {
            ReadConsistency::Linearizable => None,
            ReadConsistency::Local => Some(GetOptions::new().with_serializable()),
        };
        let response = self
            .kv
            .clone()
            .get(session_key(&held.session_id), options)
            .await
            .map_err(transport)?;
        if response.kvs().is_empty() {
            return Err(OpError::Outcome("not_found".into()));
        }
        Ok(())
    }

    async fn revoke(&self, held: &Held) -> Result<(), OpError> {
        let txn = Txn::new().and_then([
            TxnOp::delete(session_key(&held.session_id), None),
            TxnOp::delete(token_key(&presented_hash(held)?), None),
        ]);
        let response = self.kv.clone().txn(txn).await.map_err(transport)?;
        self.ledger.forget(&held.session_id);
        match response.op_responses().first() {
            Some(TxnOpResponse::Delete(deleted)) if deleted.deleted() > 0 => Ok(()),
            _ => Err(OpError::Outcome("not_found".into())),
        }
    }
}
