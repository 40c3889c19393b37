//! Node configuration: defaults, an optional TOML file, then command-line flags and
//! environment variables (flags win over the file, the file over the defaults).
//!
//! `sessiond serve` with no flags and no file runs a single-node cluster on `./data`,
//! listening on 127.0.0.1:50051. Every duration is in milliseconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::SledOptions;
use crate::Error;

/// Everything a node needs to run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's Raft id (never reused within a cluster).
    pub node_id: u64,
    /// Address the gRPC server binds.
    pub listen_addr: SocketAddr,
    /// Address clients use to reach this node (default: the bound address).
    pub advertise_addr: Option<String>,
    /// Address the peer listener (Raft transport and forwarding, nothing else) binds.
    /// Default: the client listener's IP, port + 1 (port 0 stays 0: any free port).
    pub peer_listen_addr: Option<SocketAddr>,
    /// Address other nodes use to reach this node's peer listener; it is the address in the
    /// Raft membership (default: the bound peer address).
    pub peer_advertise_addr: Option<String>,
    /// The cluster's identity: sent with every peer message (a mismatch is refused) and
    /// named in node certificates (`sessiond://<cluster_id>/node/<id>`).
    pub cluster_id: String,
    /// TLS for both listeners (absent: plaintext).
    pub tls: Option<TlsConfig>,
    /// Client credentials and their roles (no principal: every call is allowed).
    pub auth: AuthConfig,
    /// Allow serving a non-loopback address without TLS or authentication.
    pub insecure: bool,
    /// Directory holding the sled database and snapshots.
    pub data_dir: PathBuf,
    /// On the first start, make this node a one-node cluster. False for a node that joins an
    /// existing cluster: it waits until an operator adds it (`sessiond cluster add-learner`).
    pub bootstrap: bool,
    /// Log output format.
    pub log_format: LogFormat,
    /// Session lifetimes and limits.
    pub sessions: SessionPolicy,
    /// Per-tenant overrides, keyed by tenant name.
    pub tenants: BTreeMap<String, TenantPolicy>,
    /// Admission limits per tenant.
    pub limits: LimitsConfig,
    /// Garbage collection of expired records.
    pub gc: GcConfig,
    /// Raft timing and log compaction.
    pub raft: RaftConfig,
    /// Revocation stream subscribers.
    pub watch: WatchConfig,
    /// Storage engine settings.
    pub storage: StorageConfig,
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Address of the HTTP listener serving `/metrics`, `/healthz` and `/readyz` (off unless
    /// set).
    pub metrics_listen: Option<SocketAddr>,
    /// When the node reports itself not serving.
    pub health: HealthConfig,
    /// Test-only: shift this node's clock by this many ms (simulates a skewed node).
    pub clock_offset_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            advertise_addr: None,
            peer_listen_addr: None,
            peer_advertise_addr: None,
            cluster_id: "sessiond".into(),
            tls: None,
            auth: AuthConfig::default(),
            insecure: false,
            data_dir: PathBuf::from("data"),
            bootstrap: true,
            log_format: LogFormat::Human,
            sessions: SessionPolicy::default(),
            tenants: BTreeMap::new(),
            limits: LimitsConfig::default(),
            gc: GcConfig::default(),
            raft: RaftConfig::default(),
            watch: WatchConfig::default(),
            storage: StorageConfig::default(),
            max_message_bytes: 4 * 1024 * 1024,
            metrics_listen: None,
            health: HealthConfig::default(),
            clock_offset_ms: 0,
        }
    }
}

/// TLS files of a node. The same CA verifies peer certificates (always required on the peer
/// listener) and client certificates (as `client_certs` says); the node's certificate serves
/// both listeners and is its client certificate towards peers. All files are PEM and are read
/// again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA certificate.
    pub ca_file: PathBuf,
    /// This node's certificate chain.
    pub cert_file: PathBuf,
    /// This node's private key.
    pub key_file: PathBuf,
    /// Client certificates on the client listener.
    #[serde(default)]
    pub client_certs: ClientCertPolicy,
}

/// Whether the client listener asks for client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertPolicy {
    /// Not asked for: clients authenticate with API keys.
    None,
    /// Verified when presented; API keys also work.
    #[default]
    Optional,
    /// Every client must present one signed by the CA.
    Required,
}

/// Who may call the client listener. Without any principal every call is allowed (the
/// loopback development mode).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The known principals.
    pub principals: Vec<PrincipalConfig>,
}

/// One principal: a name, a role, its tenants, and how it proves who it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// The principal's name. A client certificate naming it (URI SAN
    /// `sessiond://<cluster_id>/client/<name>`, or else its subject CN) authenticates as it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The tenants it may act in; `"*"` means every tenant.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// SHA-256 (hex) of its bearer API key (`sessiond certs api-key` makes one), if it uses one.
    #[serde(default)]
    pub api_key_sha256: Option<String>,
}

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An auth service: create, rotate, revoke, lease, touch, lookup, validate, list, count.
    Service,
    /// An API gateway: lookup, validate, watch, list revoked (read only).
    Gateway,
    /// An operator: cluster administration and status.
    Operator,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Lifetimes, windows and limits applied when a request leaves a value at 0 (default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionPolicy {
    /// Absolute session lifetime when the request gives none.
    pub default_ttl_ms: i64,
    /// Longest absolute lifetime a request may ask for.
    pub max_ttl_ms: i64,
    /// Idle timeout when the request gives none (0 = no idle timeout).
    pub default_idle_timeout_ms: i64,
    /// Access-token lifetime when the request gives none.
    pub access_token_ttl_ms: i64,
    /// Longest access-token lifetime a request may ask for.
    pub max_access_token_ttl_ms: i64,
    /// Reuse grace window: a rotated token presented again within it gets the same
    /// successor (0 disables).
    pub reuse_grace_ms: i64,
    /// Renewal lease lifetime when the request gives none.
    pub lease_ttl_ms: i64,
    /// Longest renewal lease a request may ask for.
    pub max_lease_ttl_ms: i64,
    /// Per-user session limit for tenants without their own (0 = unlimited).
    pub max_sessions_per_user: u32,
    /// How long idempotency keys are remembered.
    pub dedup_retention_ms: i64,
    /// Spread of expiries: a session's lifetime is shortened by a random 0..=pct percent,
    /// chosen by the proposer (0 = none, at most 50).
    pub ttl_jitter_pct: u32,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        const MINUTE: i64 = 60_000;
        const DAY: i64 = 24 * 60 * MINUTE;
        SessionPolicy {
            default_ttl_ms: 30 * DAY,
            max_ttl_ms: 365 * DAY,
            default_idle_timeout_ms: 0,
            access_token_ttl_ms: 15 * MINUTE,
            max_access_token_ttl_ms: DAY,
            reuse_grace_ms: 10_000,
            lease_ttl_ms: 10_000,
            max_lease_ttl_ms: 5 * MINUTE,
            max_sessions_per_user: 0,
            dedup_retention_ms: 10 * MINUTE,
            ttl_jitter_pct: 0,
        }
    }
}

/// Settings that differ per tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantPolicy {
    /// Per-user session limit in this tenant (0 = unlimited); creating one more session
    /// revokes the user's oldest.
    pub max_sessions_per_user: Option<u32>,
    /// Requests per second this node admits for this tenant (0 = unlimited); overrides
    /// `limits.tenant_requests_per_sec`.
    pub requests_per_sec: Option<u32>,
}

/// Admission limits that keep one tenant from taking a node's whole capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second each node admits per tenant (0 = unlimited, the default); over
    /// it, RESOURCE_EXHAUSTED.
    pub tenant_requests_per_sec: u32,
    /// Requests a tenant may send at once above its rate (0 = one second's worth).
    pub tenant_burst: u32,
}

/// Periodic removal of expired sessions, access tokens and idempotency records.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// How often the leader proposes a collection.
    pub interval_ms: u64,
    /// Most records one collection command removes. A collection is one log entry that every
    /// write behind it waits for: 5,000 records took 250 ms to apply on a 1M-session state,
    /// 500 stay near 25 ms (the collector proposes the next batch at once while one comes
    /// back full, so small batches do not fall behind).
    pub batch_limit: u32,
    /// How long revocation events stay retained for stream subscribers to resume from
    /// (0 keeps them forever).
    pub event_retention_ms: i64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_ms: 5_000,
            batch_limit: 500,
            event_retention_ms: 24 * 60 * 60_000,
        }
    }
}

/// Revocation stream subscribers: buffering, progress, and when a slow one is cut off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Messages buffered per subscriber.
    pub buffer: usize,
    /// How often an idle stream gets a progress message.
    pub progress_interval_ms: u64,
    /// How long a subscriber's full buffer may stay full before it is cut off.
    pub slow_subscriber_timeout_ms: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            buffer: 1024,
            progress_interval_ms: 2_000,
            slow_subscriber_timeout_ms: 5_000,
        }
    }
}

/// The bounds beyond which gRPC health and `/readyz` report the node not serving (it also
/// is while no leader is known).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Most committed entries this node may have left to apply.
    pub max_apply_lag: u64,
    /// Longest time a leader may go without a quorum acknowledging it.
    pub max_leader_ack_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            max_apply_lag: 1_000,
            max_leader_ack_ms: 3_000,
        }
    }
}

/// Raft timing and compaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after at least this many entries since the last one ...
    pub snapshot_logs_since_last: u64,
    /// ... and once the log since the last one takes this percentage of its file's size
    /// (0: the entry count alone decides).
    pub snapshot_log_percent: u64,
    /// Entries kept in the log behind the snapshot (for slow followers).
    pub max_in_snapshot_log_to_keep: u64,
    /// Whether the leader answers LINEARIZABLE reads from a leader lease, without a quorum
    /// round per read. Off by default: it assumes that the nodes' monotonic clocks run at
    /// rates within ~5 % of each other, that no host is suspended or paused, and the same
    /// `election_timeout_max_ms` on every node (README "Lease reads").
    pub lease_reads: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 20_000,
            snapshot_log_percent: 50,
            max_in_snapshot_log_to_keep: 1_000,
            lease_reads: false,
        }
    }
}

/// Storage engine settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// sled page cache of the state database, in MiB. sled's heap grows by 7–9 times
    /// what is added here while a whole state is read (a snapshot build), and two state
    /// databases are open while one is rebuilt or installed. At 1M sessions a build and
    /// rebuild at rest peaked at 1,026, 974 and 726 MiB with 48, 32 and 24 MiB (the
    /// tightest of three nodes, 4.4–5.1 GB states). `mixed` with 24 against 32 MiB: 7 %
    /// faster on one node, 11 % slower on three after a cold restart (one run each; README
    /// "One million sessions").
    pub cache_capacity_mb: u64,
    /// Whether sled compresses the databases it creates (zstd): less disk (a 1.6× smaller
    /// state) for much more CPU: writes take 1.5–1.7× the server CPU, and restarts and
    /// installs several times longer (sled compresses every page it writes and decompresses
    /// every page it reads). Off by default. Databases keep the setting they were created with
    /// until an install or a rebuild replaces them.
    pub compression: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_capacity_mb: 24,
            compression: false,
        }
    }
}

impl StorageConfig {
    /// The page cache in bytes.
    pub fn cache_capacity_bytes(&self) -> u64 {
        self.cache_capacity_mb * 1024 * 1024
    }

    /// How the node opens its sled databases.
    pub fn sled_options(&self) -> SledOptions {
        SledOptions {
            cache_bytes: self.cache_capacity_bytes(),
            compression: self.compression,
        }
    }
}

impl Config {
    /// Reads a TOML file; fields it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid("config", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_toml(&text)
    }

    /// Parses TOML text; fields it leaves out keep their defaults.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let config: Config =
            toml::from_str(text).map_err(|e| Error::invalid("config", e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// The per-user session limit that applies to `tenant` (0 = unlimited).
    pub fn max_sessions_per_user(&self, tenant: &str) -> u32 {
        self.tenants
            .get(tenant)
            .and_then(|t| t.max_sessions_per_user)
            .unwrap_or(self.sessions.max_sessions_per_user)
    }

    /// The request rate this node admits for `tenant` (0 = unlimited).
    pub fn tenant_requests_per_sec(&self, tenant: &str) -> u32 {
        self.tenants
            .get(tenant)
            .and_then(|t| t.requests_per_sec)
            .unwrap_or(self.limits.tenant_requests_per_sec)
    }

    /// The peer listener's bind address: as configured, else the client listener's IP with
    /// the next port (port 0 stays 0).
    pub fn peer_listen_addr(&self) -> SocketAddr {
        self.peer_listen_addr.unwrap_or_else(|| {
            let port = match self.listen_addr.port() {
                0 => 0,
                p => p.saturating_add(1),
            };
            SocketAddr::new(self.listen_addr.ip(), port)
        })
    }

    /// Whether this is the open development mode: no TLS and no principals.
    pub fn is_open(&self) -> bool {
        self.tls.is_none() && self.auth.principals.is_empty()
    }

    /// Refuses to expose an unprotected node: a listener bound to a non-loopback address
    /// needs TLS and authentication, unless `insecure` is set.
    pub fn check_exposure(&self) -> Result<(), Error> {
        let exposed = [self.listen_addr, self.peer_listen_addr()]
            .iter()
            .any(|a| !a.ip().is_loopback());
        if exposed && !self.insecure {
            if self.tls.is_none() {
                return Err(Error::invalid(
                    "tls",
                    "a non-loopback listener needs TLS (tls.*) or --insecure",
                ));
            }
            if self.auth.principals.is_empty() {
                return Err(Error::invalid(
                    "auth",
                    "a non-loopback listener needs authentication (auth.principals) or --insecure",
                ));
            }
        }
        Ok(())
    }

    /// Rejects settings that contradict each other.
    pub fn check(&self) -> Result<(), Error> {
        let s = &self.sessions;
        let positive = [
            ("sessions.default_ttl_ms", s.default_ttl_ms),
            ("sessions.max_ttl_ms", s.max_ttl_ms),
            ("sessions.access_token_ttl_ms", s.access_token_ttl_ms),
            (
                "sessions.max_access_token_ttl_ms",
                s.max_access_token_ttl_ms,
            ),
            ("sessions.lease_ttl_ms", s.lease_ttl_ms),
            ("sessions.max_lease_ttl_ms", s.max_lease_ttl_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(Error::invalid("config", format!("{name} must be positive")));
        }
        if s.default_ttl_ms > s.max_ttl_ms
            || s.access_token_ttl_ms > s.max_access_token_ttl_ms
            || s.lease_ttl_ms > s.max_lease_ttl_ms
        {
            return Err(Error::invalid("config", "a default exceeds its maximum"));
        }
        if s.reuse_grace_ms < 0
            || s.default_idle_timeout_ms < 0
            || s.dedup_retention_ms < 0
            || self.gc.event_retention_ms < 0
        {
            return Err(Error::invalid("config", "durations must not be negative"));
        }
        let r = &self.raft;
        if r.election_timeout_min_ms <= r.heartbeat_ms
            || r.election_timeout_max_ms <= r.election_timeout_min_ms
        {
            return Err(Error::invalid(
                "config",
                "raft timeouts must satisfy heartbeat < election min < election max",
            ));
        }
        if self.gc.batch_limit == 0 {
            return Err(Error::invalid(
                "config",
                "gc.batch_limit must be at least 1",
            ));
        }
        if self.node_id == 0 {
            return Err(Error::invalid("config", "node_id must be at least 1"));
        }
        if self.cluster_id.is_empty()
            || self.cluster_id.len() > 64
            || !self
                .cluster_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(Error::invalid(
                "config",
                "cluster_id must be 1-64 letters, digits, '-', '.' or '_'",
            ));
        }
        crate::auth::check_principals(&self.auth)?;
        if s.ttl_jitter_pct > 50 {
            return Err(Error::invalid(
                "config",
                "sessions.ttl_jitter_pct must be at most 50",
            ));
        }
        let w = &self.watch;
        if w.buffer < 2 || w.progress_interval_ms == 0 || w.slow_subscriber_timeout_ms == 0 {
            return Err(Error::invalid(
                "config",
                "watch.buffer must be at least 2 and its intervals positive",
            ));
        }
        if !(8..=65_536).contains(&self.storage.cache_capacity_mb) {
            return Err(Error::invalid(
                "config",
                "storage.cache_capacity_mb must be between 8 and 65536",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_a_local_single_node() {
        let c = Config::default();
        c.check().unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.sessions.reuse_grace_ms, 10_000);
        assert_eq!(c.sessions.access_token_ttl_ms, 15 * 60_000);
    }

    #[test]
    fn a_zero_gc_batch_limit_is_refused() {
        // The GC loop proposes again while a batch comes back full: with a limit of 0 every
        // batch is "full" and it never stops.
        let mut c = Config::default();
        c.gc.batch_limit = 0;
        assert!(c.check().is_err());
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let c = Config::from_toml(
            r#"
            node_id = 3
            [sessions]
            reuse_grace_ms = 0
            [tenants.acme]
            max_sessions_per_user = 2
            "#,
        )
        .unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.sessions.reuse_grace_ms, 0);
        assert_eq!(
            c.sessions.default_ttl_ms,
            SessionPolicy::default().default_ttl_ms
        );
        assert_eq!(c.max_sessions_per_user("acme"), 2);
        assert_eq!(c.max_sessions_per_user("other"), 0);
    }

    #[test]
    fn unknown_and_contradictory_settings_are_rejected() {
        assert!(Config::from_toml("nodeid = 1").is_err());
        assert!(Config::from_toml("[sessions]\ndefault_ttl_ms = 10\nmax_ttl_ms = 5").is_err());
        assert!(Config::from_toml("[raft]\nheartbeat_ms = 900").is_err());
        assert!(Config::from_toml("node_id = 0").is_err());
        assert!(Config::from_toml("cluster_id = \"a/b\"").is_err());
        assert!(Config::from_toml("[storage]\ncache_capacity_mb = 1").is_err());
        let c = Config::from_toml("[storage]\ncache_capacity_mb = 64").unwrap();
        assert_eq!(c.storage.cache_capacity_bytes(), 64 << 20);
        assert!(Config::from_toml("[sessions]\nttl_jitter_pct = 51").is_err());
        assert!(Config::from_toml("[sessions]\nttl_jitter_pct = 50").is_ok());
    }

    #[test]
    fn peer_listener_defaults_to_the_next_port() {
        let mut c = Config::default();
        assert_eq!(c.peer_listen_addr().to_string(), "127.0.0.1:50052");
        c.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        assert_eq!(c.peer_listen_addr().port(), 0);
    }

    #[test]
    fn exposure_without_tls_and_auth_needs_insecure() {
        let mut c = Config::default();
        c.check_exposure().unwrap();
        c.listen_addr = SocketAddr::from(([0, 0, 0, 0], 50051));
        assert!(c.check_exposure().is_err());
        c.insecure = true;
        c.check_exposure().unwrap();
    }
}
