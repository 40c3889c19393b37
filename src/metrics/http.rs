//! The HTTP listener on `metrics_listen`: `/metrics` (Prometheus text format), `/healthz`
//! (liveness: the process answers and Raft has not stopped) and `/readyz` (readiness: the
//! health verdict, with its reason when not ready), for Kubernetes probes and scrapers.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::health::Verdict;
use crate::raft::RaftNode;

/// What the handlers read.
#[derive(Clone)]
struct Probes {
    node: RaftNode,
    verdict: watch::Receiver<Verdict>,
}

/// Serves the endpoints on `listener` until `stopped` turns true.
pub async fn serve(
    listener: TcpListener,
    node: RaftNode,
    verdict: watch::Receiver<Verdict>,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Probes { node, verdict });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        super::render(),
    )
}

async fn healthz(State(p): State<Probes>) -> impl IntoResponse {
    if p.node.raft().metrics().borrow().running_state.is_ok() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "raft has stopped\n".to_owned(),
        )
    }
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    match &*p.verdict.borrow() {
        Verdict::Serving => (StatusCode::OK, "ready\n".to_owned()),
        Verdict::NotServing(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}
