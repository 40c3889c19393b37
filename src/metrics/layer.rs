//! A tower layer around the gRPC server counting every request by method and status code,
//! with its latency, so that no handler has to.
//!
//! The status is read from the response headers: a failed call answers with `grpc-status` in
//! its headers (trailers-only), a successful unary call with `grpc-status: 0` in trailers,
//! counted here as `Ok`. For a server stream the code and latency describe its start.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use super::{RPC_REQUESTS, RPC_SECONDS};

/// Most distinct method labels; further paths are counted as `other` (clients choose paths,
/// so an unbounded set would be a cardinality attack).
const MAX_METHODS: usize = 64;

/// Method labels handed out so far.
static METHODS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The label of a request path `/package.Service/Method`.
fn method_label(path: &str) -> String {
    let valid = path.len() <= 128
        && path.starts_with('/')
        && path[1..].split('/').count() == 2
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_'));
    if !valid {
        return "other".into();
    }
    let mut methods = METHODS.lock().unwrap_or_else(|e| e.into_inner());
    if methods.contains(path) || methods.len() < MAX_METHODS {
        methods.insert(path.to_owned());
        path.to_owned()
    } else {
        "other".into()
    }
}

/// The name of the status code in `grpc-status` (absent: the call succeeded).
fn code_label(status: Option<&http::HeaderValue>) -> String {
    let code = status
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from);
    format!("{code:?}")
}

/// Wraps the server's services in [`RpcMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// Counts and times each request passing to `inner`.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            let code = match &answered {
                Ok(response) => code_label(response.headers().get("grpc-status")),
                Err(_) => "TransportError".to_owned(),
            };
            let labels = [method.as_str(), code.as_str()];
            RPC_REQUESTS.with_label_values(&labels).inc();
            RPC_SECONDS
                .with_label_values(&labels)
                .observe(started.elapsed().as_secs_f64());
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_codes_named() {
        assert_eq!(
            method_label("/sessiond.v1.SessionAuthority/Rotate"),
            "/sessiond.v1.SessionAuthority/Rotate"
        );
        assert_eq!(method_label("/a b/c"), "other");
        assert_eq!(method_label("/only-one-part"), "other");
        for i in 0..2 * MAX_METHODS {
            let label = method_label(&format!("/x.Y/M{i}"));
            assert!(label.starts_with("/x.Y/M") || label == "other");
        }
        assert!(METHODS.lock().unwrap().len() <= MAX_METHODS);
        assert_eq!(code_label(None), "Ok");
        assert_eq!(
            code_label(Some(&http::HeaderValue::from_static("3"))),
            "InvalidArgument"
        );
    }
}
