//! Redis as a session store: the [`kv`](super::kv) model in one Redis server, each write one
//! Lua script (EVALSHA) so that it is atomic and one round trip.
//!
//! Keys are `s:{session_id}` (the record) and `t:{hash}` (the token index). A rotation
//! compares the record with the one the presented token makes current and, only then,
//! installs the successor's record and index key and deletes the presented token's. Reads
//! go to the same server whatever the consistency asked for (a single server has no
//! replicas to read from).

use std::sync::Arc;

use anyhow::Context as _;
use redis::aio::MultiplexedConnection;
use redis::Script;

use super::kv::{draft, presented_hash, Ledger};
use super::store::{Held, OpError, ReadConsistency, SessionStore};

/// KEYS: record, token index. ARGV: record value, session id. 1 if created, 0 if the id
/// was taken.
const CREATE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// KEYS: record, successor's index, presented token's index. ARGV: expected record,
/// successor record, session id. 1 if rotated, 0 if the presented token is not current.
const ROTATE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
return 1
";

/// KEYS: record, token index. The number of records deleted (0 or 1).
const REVOKE: &str = r"
local deleted = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return deleted
";

/// The scripts, loaded into the server once at connect and invoked by hash.
struct Scripts {
    create: Script,
    rotate: Script,
    revoke: Script,
}

/// A Redis server under load. Clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: MultiplexedConnection,
    scripts: Arc<Scripts>,
    ledger: Ledger,
}

impl RedisStore {
    /// Connects to the first of `endpoints` (`redis://host:port` or `host:port`) and loads
    /// the scripts.
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Self> {
        let endpoint = endpoints.first().context("no Redis endpoint given")?;
        let url = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("redis://{endpoint}")
        };
        let mut connection = redis::Client::open(url)
            .context("invalid Redis endpoint")?
            .get_multiplexed_async_connection()
            .await
            .context("cannot connect to Redis")?;
        let scripts = Scripts {
            create: Script::new(CREATE),
            rotate: Script::new(ROTATE),
            revoke: Script::new(REVOKE),
        };
        for script in [&scripts.create, &scripts.rotate, &scripts.revoke] {
            script
                .load_async(&mut connection)
                .await
                .context("cannot load the Redis scripts")?;
        }
        Ok(RedisStore {
            connection,
            scripts: Arc::new(scripts),
            ledger: Ledger::default(),
        })
    }
}

fn session_key(session_id: &str) -> String {
    format!("s:{session_id}")
}

fn token_key(hash: &str) -> String {
    format!("t:{hash}")
}

/// The class of a Redis failure: the server's error code, or the client's error kind.
/// Never the message, which may quote arguments.
fn transport(error: redis::RedisError) -> OpError {
    let class = match error.code() {
        Some(code) => code.to_owned(),
        None => format!("{:?}", error.kind()),
    };
    OpError::Transport(class)
}

impl SessionStore for RedisStore {
    async fn create(&self, user_id: &str) -> Result<Held, OpError> {
        let session = draft(user_id);
        let created: i64 = self
            .scripts
            .create
            .key(session_key(&session.held.session_id))
            .key(token_key(&session.token_hash))
            .arg(&session.record)
            .arg(&session.held.session_id)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(transport)?;
        if created == 0 {
            return Err(OpError::Outcome("exists".into()));
        }
        self.ledger.remember(&session);
        Ok(session.held)
    }

    async fn rotate(&self, held: &Held) -> Result<Held, OpError> {
        let rotation = self.ledger.rotation(held)?;
        let rotated: i64 = self
            .scripts
            .rotate
            .key(session_key(&held.session_id))
            .key(token_key(&rotation.new_hash))
            .key(token_key(&rotation.old_hash))
            .arg(&rotation.expected_record)
            .arg(&rotation.next_record)
            .arg(&held.session_id)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(transport)?;
        if rotated == 0 {
            return Err(OpError::Outcome("cas_failed".into()));
        }
        Ok(rotation.next)
    }

    async fn lookup(&self, held: &Held, _consistency: ReadConsistency) -> Result<(), OpError> {
        let record: Option<Vec<u8>> = redis::cmd("GET")
            .arg(session_key(&held.session_id))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(transport)?;
        record
            .map(drop)
            .ok_or_else(|| OpError::Outcome("not_found".into()))
    }

    async fn revoke(&self, held: &Held) -> Result<(), OpError> {
        let deleted: i64 = self
            .scripts
            .revoke
            .key(session_key(&held.session_id))
            .key(token_key(&presented_hash(held)?))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(transport)?;
        self.ledger.forget(&held.session_id);
        if deleted == 0 {
            return Err(OpError::Outcome("not_found".into()));
        }
        Ok(())
    }
}
