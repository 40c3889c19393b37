//! TLS for the two listeners and for the connections a node opens to its peers.
//!
//! One cluster CA signs every certificate. A node's certificate names it with the URI SAN
//! `sessiond://<cluster_id>/node/<id>` (plus the DNS names and IPs it is reached at); a
//! client certificate with `sessiond://<cluster_id>/client/<name>` (or, from another issuer
//! tool, only a subject CN). The peer listener requires a certificate from the CA; the
//! client listener asks for one as configured.
//!
//! Certificates rotate without downtime: [`ServerTls::reload`] (on SIGHUP) reads the files
//! again and swaps the configuration that new connections use; established connections keep
//! theirs until they close. Handshakes run in their own tasks so that a slow or silent
//! client never holds up the accept loop.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::{ClientCertPolicy, TlsConfig};
use crate::Error;

/// URI scheme of the identities in sessiond certificates.
pub const IDENTITY_SCHEME: &str = "sessiond://";
/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting to be picked up by the server.
const ACCEPT_QUEUE: usize = 128;

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentity {
    /// A node of cluster `cluster`.
    Node {
        /// The cluster named in the certificate.
        cluster: String,
        /// The node id named in the certificate.
        id: u64,
    },
    /// A client; `cluster` is absent when only a subject CN names it.
    Client {
        /// The cluster named in the certificate, if any.
        cluster: Option<String>,
        /// The principal name.
        name: String,
    },
}

/// The URI SAN naming node `id` of `cluster`.
pub fn node_uri(cluster: &str, id: u64) -> String {
    format!("{IDENTITY_SCHEME}{cluster}/node/{id}")
}

/// The URI SAN naming client `name` of `cluster`.
pub fn client_uri(cluster: &str, name: &str) -> String {
    format!("{IDENTITY_SCHEME}{cluster}/client/{name}")
}

/// The identity in a (DER) certificate: its sessiond URI SAN, else its subject CN as a
/// client name. `None` if it names neither or does not parse.
pub fn cert_identity(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(identity) = parse_identity_uri(uri) {
                    return Some(identity);
                }
            }
        }
    }
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(CertIdentity::Client {
        cluster: None,
        name: cn.to_owned(),
    })
}

fn parse_identity_uri(uri: &str) -> Option<CertIdentity> {
    let rest = uri.strip_prefix(IDENTITY_SCHEME)?;
    let (cluster, rest) = rest.split_once('/')?;
    let (kind, value) = rest.split_once('/')?;
    let cluster = cluster.to_owned();
    match kind {
        "node" => Some(CertIdentity::Node {
            cluster,
            id: value.parse().ok()?,
        }),
        "client" if !value.is_empty() => Some(CertIdentity::Client {
            cluster: Some(cluster),
            name: value.to_owned(),
        }),
        _ => None,
    }
}

/// The PEM files of a node, read.
struct Material {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::invalid(field, format!("{}: {e}", path.display())))
}

impl Material {
    fn load(files: &TlsConfig) -> Result<Self, Error> {
        Ok(Material {
            ca: read("tls.ca_file", &files.ca_file)?,
            cert: read("tls.cert_file", &files.cert_file)?,
            key: read("tls.key_file", &files.key_file)?,
        })
    }

    fn roots(&self) -> Result<RootCertStore, Error> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca) {
            let cert = cert.map_err(|e| Error::invalid("tls.ca_file", e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| Error::invalid("tls.ca_file", e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(Error::invalid("tls.ca_file", "holds no certificate"));
        }
        Ok(roots)
    }

    fn server_config(&self, clients: ClientCertPolicy) -> Result<Arc<ServerConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid("tls.cert_file", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| Error::invalid("tls.key_file", e.to_string()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("tls: {e}")))?;
        let builder = match clients {
            ClientCertPolicy::None => builder.with_no_client_auth(),
            policy => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider);
                let verifier = if policy == ClientCertPolicy::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| Error::invalid("tls.ca_file", e.to_string()))?,
                )
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| Error::invalid("tls.cert_file", e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// The TLS configuration of one listener, reloadable from its files.
pub struct ServerTls {
    files: TlsConfig,
    clients: ClientCertPolicy,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// The client listener's TLS: client certificates as `files.client_certs` says.
    pub fn client_listener(files: &TlsConfig) -> Result<Arc<Self>, Error> {
        Self::new(files, files.client_certs)
    }

    /// The peer listener's TLS: a certificate from the cluster CA is required.
    pub fn peer_listener(files: &TlsConfig) -> Result<Arc<Self>, Error> {
        Self::new(files, ClientCertPolicy::Required)
    }

    fn new(files: &TlsConfig, clients: ClientCertPolicy) -> Result<Arc<Self>, Error> {
        let config = Material::load(files)?.server_config(clients)?;
        Ok(Arc::new(ServerTls {
            files: files.clone(),
            clients,
            current: RwLock::new(config),
        }))
    }

    /// Reads the files again; new connections use them, established ones are untouched. On
    /// an error the previous configuration stays in force.
    pub fn reload(&self) -> Result<(), Error> {
        let config = Material::load(&self.files)?.server_config(self.clients)?;
        *self
            .current
            .write()
            .map_err(|_| Error::Internal("tls lock poisoned".into()))? = config;
        Ok(())
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current
            .read()
            .ok()
            .map(|c| TlsAcceptor::from(c.clone()))
    }

    /// Accepts connections on `listener` and completes their handshakes, each in its own
    /// task; a failed handshake is logged at debug level and dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(async move {
            loop {
                let (stream, remote) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::debug!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let _ = stream.set_nodelay(true);
                let Some(acceptor) = self.acceptor() else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// The TLS settings of a node's outgoing connections (to peers, and to the leader's client
/// listener when relaying administration): the cluster CA as the only root, and the node's
/// certificate as its client identity. Reloadable like [`ServerTls`].
pub fn node_client_config(files: &TlsConfig) -> Result<ClientTlsConfig, Error> {
    let material = Material::load(files)?;
    material.roots()?;
    Ok(material.client_config())
}

/// The TLS settings of a client: the CA to trust and, optionally, a client certificate.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, Error> {
    let mut config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca", ca_file)?));
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_parse() {
        assert_eq!(
            parse_identity_uri(&node_uri("prod", 3)),
            Some(CertIdentity::Node {
                cluster: "prod".into(),
                id: 3
            })
        );
        assert_eq!(
            parse_identity_uri(&client_uri("prod", "billing")),
            Some(CertIdentity::Client {
                cluster: Some("prod".into()),
                name: "billing".into()
            })
        );
        assert_eq!(parse_identity_uri("sessiond://prod/node/x"), None);
        assert_eq!(parse_identity_uri("spiffe://prod/node/1"), None);
        assert_eq!(parse_identity_uri("sessiond://prod/client/"), None);
    }
}
