//! `sessiond certs`: a development CA, node certificates, client certificates and API keys,
//! made with rcgen. Node certificates name the node (`sessiond://<cluster_id>/node/<id>`)
//! and the hosts it is reached at; client certificates name a principal
//! (`sessiond://<cluster_id>/client/<name>`, also the subject CN). For production, any CA
//! works as long as its certificates carry the same URI SANs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::tls::{client_uri, node_uri};

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// What `sessiond certs` makes.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// A new CA for one cluster: `<dir>/ca.pem` and `<dir>/ca.key`.
    Ca(CommonArgs),
    /// A node certificate signed by `<dir>/ca.pem`: `<dir>/node-<id>.pem` and `.key`.
    Node {
        /// Where the CA is and the files go, and the cluster id.
        #[command(flatten)]
        common: CommonArgs,
        /// The node id.
        #[arg(long)]
        id: u64,
        /// A DNS name or IP the node is reached at (repeat; default localhost and 127.0.0.1).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// A client certificate for principal `name`: `<dir>/client-<name>.pem` and `.key`.
    Client {
        /// Where the CA is and the files go, and the cluster id.
        #[command(flatten)]
        common: CommonArgs,
        /// The principal name (as in `auth.principals`).
        #[arg(long)]
        name: String,
    },
    /// A random API key and the SHA-256 to put in `auth.principals.api_key_sha256`.
    ApiKey,
}

/// Where the files are and which cluster they are for.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Directory of the CA and the certificates made.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// The cluster id named in the certificates (as `cluster_id` in the configuration).
    #[arg(long, default_value = "sessiond")]
    pub cluster_id: String,
}

/// A self-signed CA for cluster `cluster_id`.
pub fn ca(cluster_id: &str) -> Result<Pem, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("sessiond CA {cluster_id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn leaf(ca: &Pem, common_name: &str, sans: Vec<SanType>) -> Result<Pem, rcgen::Error> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for node `id` of `cluster_id`, valid for `hosts` (DNS names or IPs), as
/// server and as client.
pub fn node(ca: &Pem, cluster_id: &str, id: u64, hosts: &[String]) -> Result<Pem, rcgen::Error> {
    let mut sans = vec![SanType::URI(node_uri(cluster_id, id).try_into()?)];
    for host in hosts {
        sans.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into()?),
        });
    }
    leaf(ca, &format!("node-{id}"), sans)
}

/// A client certificate for principal `name` of `cluster_id`.
pub fn client(ca: &Pem, cluster_id: &str, name: &str) -> Result<Pem, rcgen::Error> {
    leaf(
        ca,
        name,
        vec![SanType::URI(client_uri(cluster_id, name).try_into()?)],
    )
}

/// A fresh random API key and its SHA-256 (hex).
pub fn api_key() -> (String, String) {
    use base64::Engine as _;
    let key = format!(
        "sdk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let digest = crate::auth::api_key_digest(&key);
    (key, digest)
}

fn write(dir: &Path, name: &str, pem: &Pem) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &pem.cert).with_context(|| format!("writing {}", cert.display()))?;
    std::fs::write(&key, &pem.key).with_context(|| format!("writing {}", key.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    println!("wrote {} and {}", cert.display(), key.display());
    Ok(())
}

fn read_ca(dir: &Path) -> anyhow::Result<Pem> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (make the CA first: sessiond certs ca)",
                path.display()
            )
        })
    };
    Ok(Pem {
        cert: read("ca.pem")?,
        key: read("ca.key")?,
    })
}

/// Runs `sessiond certs …`.
pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Ca(c) => write(&c.dir, "ca", &ca(&c.cluster_id)?),
        CertsCommand::Node { common, id, hosts } => {
            let hosts = if hosts.is_empty() {
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
            } else {
                hosts
            };
            let ca = read_ca(&common.dir)?;
            let pem = node(&ca, &common.cluster_id, id, &hosts)?;
            write(&common.dir, &format!("node-{id}"), &pem)
        }
        CertsCommand::Client { common, name } => {
            let ca = read_ca(&common.dir)?;
            let pem = client(&ca, &common.cluster_id, &name)?;
            write(&common.dir, &format!("client-{name}"), &pem)
        }
        CertsCommand::ApiKey => {
            let (key, digest) = api_key();
            println!("api key (give it to the client; it is not stored): {key}");
            println!("api_key_sha256 = \"{digest}\"");
            Ok(())
        }
    }
}
