//! The Kubernetes ConfigMap (cluster/k8s/configmap.yaml) holds a configuration sessiond
//! accepts, with the metrics and probe listener the pods' probes need, the peer port the
//! StatefulSet names, and an exposure a node agrees to start with. (The manifests'
//! schemas are checked in CI with kubernetes-validate.)

use sessiond::config::Config;

#[test]
fn the_configmap_holds_a_valid_config_with_metrics_enabled() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/cluster/k8s/configmap.yaml"
    ))
    .expect("configmap.yaml is readable");
    let toml: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("sessiond.toml: |"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let config = Config::from_toml(&toml).expect("sessiond accepts the ConfigMap's TOML");
    assert_eq!(
        config.metrics_listen.map(|a| a.port()),
        Some(9090),
        "the probes use the metrics port"
    );
    assert_eq!(config.listen_addr.port(), 50051);
    assert_eq!(
        config.peer_listen_addr().port(),
        50052,
        "the peer port the StatefulSet names"
    );
    config
        .check_exposure()
        .expect("a pod listening on every interface starts (TLS or insecure)");
}
