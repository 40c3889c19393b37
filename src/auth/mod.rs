//! Who is calling and what they may do, on the client listener.
//!
//! A call is authenticated by a bearer API key (`authorization: Bearer <key>`, known by its
//! SHA-256 in the configuration) or by a client certificate from the cluster CA (naming a
//! configured principal, or a node of this cluster). [`layer::AuthLayer`] checks the
//! principal's role against the method before any handler runs and hands the handler the
//! [`Principal`], whose tenant scope the handler checks against the request's tenant.
//!
//! Without any configured principal the node runs in the open development mode: every call
//! is allowed (it may only bind loopback addresses then, see `Config::check_exposure`).

pub mod audit;
pub mod layer;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::Status;

use crate::config::{AuthConfig, Role};
use crate::tls::{cert_identity, CertIdentity};
use crate::Error;

/// Which tenants a principal may act in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant.
    All,
    /// Only these.
    Only(BTreeSet<String>),
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its name, for logs and the audit trail (never a secret).
    pub name: Arc<str>,
    /// Its role; `None` in the open development mode, where everything is allowed.
    pub role: Option<Role>,
    /// The tenants it may act in.
    pub tenants: TenantScope,
}

impl Principal {
    /// The caller of the open development mode: anything, anywhere.
    pub fn open() -> Self {
        Principal {
            name: "local".into(),
            role: None,
            tenants: TenantScope::All,
        }
    }

    /// PERMISSION_DENIED unless this principal may act in `tenant`.
    pub fn check_tenant(&self, tenant: &str) -> Result<(), Status> {
        match &self.tenants {
            TenantScope::All => Ok(()),
            TenantScope::Only(t) if t.contains(tenant) => Ok(()),
            TenantScope::Only(_) => Err(Status::permission_denied(format!(
                "principal '{}' may not act in tenant '{tenant}'",
                self.name
            ))),
        }
    }

    /// The tenants this principal may see, when it is limited to some.
    pub fn limited_tenants(&self) -> Option<&BTreeSet<String>> {
        match &self.tenants {
            TenantScope::All => None,
            TenantScope::Only(t) => Some(t),
        }
    }

    /// The principal a handler was given by [`layer::AuthLayer`]; PERMISSION_DENIED if
    /// none was (the layer was not installed: deny rather than allow).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
        request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| Status::permission_denied("the call was not authenticated"))
    }
}

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a credential (health checks, reflection).
    Public,
    /// Authenticated principals with one of these roles.
    Roles(&'static [Role]),
}

const SERVICE: &[Role] = &[Role::Service];
const READERS: &[Role] = &[Role::Service, Role::Gateway];
const GATEWAY: &[Role] = &[Role::Gateway];
const OPERATOR: &[Role] = &[Role::Operator];
const EVERYONE: &[Role] = &[Role::Service, Role::Gateway, Role::Operator];

/// Who may call the gRPC method at `path` (`/package.Service/Method`). Unknown methods are
/// for operators only.
pub fn access(path: &str) -> Access {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Access::Public,
        (s, _) if s.starts_with("grpc.reflection.") => Access::Public,
        ("sessiond.v1.SessionAuthority", m) => Access::Roles(match m {
            "Lookup" | "ValidateAccessToken" => READERS,
            "WatchRevocations" | "ListRevoked" => GATEWAY,
            "CreateSession"
            | "Rotate"
            | "AcquireRenewalLease"
            | "Touch"
            | "Revoke"
            | "ListSessions"
            | "CountSessions"
            | "GetAnomalyCounters" => SERVICE,
            _ => OPERATOR,
        }),
        // Status names the leader: every client library asks it to route writes.
        ("sessiond.v1.Cluster", "Status") => Access::Roles(EVERYONE),
        _ => Access::Roles(OPERATOR),
    }
}

/// The SHA-256 (lowercase hex) of an API key, as the configuration stores it.
pub fn api_key_digest(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Rejects principal entries that cannot work: empty or duplicate names, bad key digests,
/// no tenants.
pub fn check_principals(auth: &AuthConfig) -> Result<(), Error> {
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for p in &auth.principals {
        if p.name.is_empty() || !names.insert(p.name.as_str()) {
            return Err(Error::invalid(
                "auth.principals",
                "every principal needs a unique, non-empty name",
            ));
        }
        if p.tenants.is_empty() && p.role != Role::Operator {
            return Err(Error::invalid(
                "auth.principals",
                format!(
                    "principal '{}' names no tenant (use [\"*\"] for all)",
                    p.name
                ),
            ));
        }
        if let Some(digest) = &p.api_key_sha256 {
            let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid || !keys.insert(digest.to_ascii_lowercase()) {
                return Err(Error::invalid(
                    "auth.principals",
                    format!(
                        "principal '{}': api_key_sha256 must be a unique 64-digit hex SHA-256",
                        p.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Turns credentials into principals, from the configuration.
pub struct Authenticator {
    cluster_id: String,
    open: bool,
    by_key: HashMap<String, Principal>,
    by_name: HashMap<String, Principal>,
}

/// Why a call was not authenticated (the message is safe to return and to log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unauthenticated(pub &'static str);

impl Authenticator {
    /// The authenticator of a node of `cluster_id` with the principals of `auth`.
    pub fn new(cluster_id: &str, auth: &AuthConfig) -> Self {
        let mut by_key = HashMap::new();
        let mut by_name = HashMap::new();
        for p in &auth.principals {
            let tenants = if p.tenants.iter().any(|t| t == "*") {
                TenantScope::All
            } else {
                TenantScope::Only(p.tenants.iter().cloned().collect())
            };
            let principal = Principal {
                name: p.name.as_str().into(),
                role: Some(p.role),
                tenants,
            };
            if let Some(digest) = &p.api_key_sha256 {
                by_key.insert(digest.to_ascii_lowercase(), principal.clone());
            }
            by_name.insert(p.name.clone(), principal);
        }
        Authenticator {
            cluster_id: cluster_id.to_owned(),
            open: auth.principals.is_empty(),
            by_key,
            by_name,
        }
    }

    /// Whether every call is allowed (no principal configured).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The principal of a call carrying `bearer` (the API key, if any) and the client
    /// certificate chain `certs` (if any). A key, when present, decides.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        certs: Option<&[impl AsRef<[u8]>]>,
    ) -> Result<Principal, Unauthenticated> {
        if let Some(key) = bearer {
            return self
                .by_key
                .get(&api_key_digest(key))
                .cloned()
                .ok_or(Unauthenticated("unknown API key"));
        }
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return if self.open {
                Ok(Principal::open())
            } else {
                Err(Unauthenticated(
                    "a credential is required: a client certificate or 'authorization: Bearer <API key>'",
                ))
            };
        };
        match cert_identity(leaf.as_ref()) {
            Some(CertIdentity::Node { cluster, id }) if cluster == self.cluster_id => {
                Ok(Principal {
                    name: format!("node/{id}").into(),
                    role: Some(Role::Operator),
                    tenants: TenantScope::All,
                })
            }
            Some(CertIdentity::Client { cluster, name })
                if cluster.as_deref().is_none_or(|c| c == self.cluster_id) =>
            {
                match self.by_name.get(&name) {
                    Some(p) => Ok(p.clone()),
                    None if self.open => Ok(Principal::open()),
                    None => Err(Unauthenticated(
                        "the client certificate names no known principal",
                    )),
                }
            }
            _ if self.open => Ok(Principal::open()),
            _ => Err(Unauthenticated(
                "the client certificate is not for a client of this cluster",
            )),
        }
    }
}

/// Whether `principal` may call a method with `access`.
pub fn authorize(principal: &Principal, access: Access) -> Result<(), Status> {
    match (access, principal.role) {
        (Access::Public, _) | (_, None) => Ok(()),
        (Access::Roles(roles), Some(role)) if roles.contains(&role) => Ok(()),
        (Access::Roles(_), Some(role)) => Err(Status::permission_denied(format!(
            "principal '{}' (role {}) may not call this method",
            principal.name,
            role_name(role)
        ))),
    }
}

/// The configuration name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Service => "service",
        Role::Gateway => "gateway",
        Role::Operator => "operator",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PrincipalConfig;

    fn config() -> AuthConfig {
        AuthConfig {
            principals: vec![PrincipalConfig {
                name: "svc".into(),
                role: Role::Service,
                tenants: vec!["acme".into()],
                api_key_sha256: Some(api_key_digest("k1")),
            }],
        }
    }

    #[test]
    fn keys_are_known_by_digest_only() {
        let auth = Authenticator::new("c", &config());
        let p = auth.authenticate(Some("k1"), None::<&[Vec<u8>]>).unwrap();
        assert_eq!(&*p.name, "svc");
        assert_eq!(
            auth.authenticate(Some("k2"), None::<&[Vec<u8>]>)
                .unwrap_err(),
            Unauthenticated("unknown API key")
        );
        assert!(auth.authenticate(None, None::<&[Vec<u8>]>).is_err());
    }

    #[test]
    fn open_mode_allows_anonymous_calls() {
        let auth = Authenticator::new("c", &AuthConfig::default());
        let p = auth.authenticate(None, None::<&[Vec<u8>]>).unwrap();
        authorize(&p, access("/sessiond.v1.Cluster/Remove")).unwrap();
        p.check_tenant("any").unwrap();
    }

    #[test]
    fn roles_map_to_methods() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Public);
        assert_eq!(
            access("/sessiond.v1.SessionAuthority/Lookup"),
            Access::Roles(READERS)
        );
        assert_eq!(access("/sessiond.v1.Backup/Take"), Access::Roles(OPERATOR));
        assert_eq!(
            access("/sessiond.v1.Cluster/Backup"),
            Access::Roles(OPERATOR)
        );
        assert_eq!(
            access("/sessiond.internal.v1.RaftTransport/Propose"),
            Access::Roles(OPERATOR)
        );
    }

    #[test]
    fn bad_principal_entries_are_rejected() {
        let mut c = config();
        c.principals.push(c.principals[0].clone());
        assert!(check_principals(&c).is_err());
        let mut c = config();
        c.principals[0].api_key_sha256 = Some("xyz".into());
        assert!(check_principals(&c).is_err());
        let mut c = config();
        c.principals[0].tenants.clear();
        assert!(check_principals(&c).is_err());
        check_principals(&config()).unwrap();
    }
}
