//! A tower layer around the gRPC server counting every request by method and status code,
//! with its latency, so that no handler has to.
//!
//! The status is read from the response headers: a failed call answers with `grpc-status` in
//! its headers (trailers-only), a successful unary call with `grpc-status: 0` in trailers,
//! counted here as `Ok`. For a server stream the code and latency describe its start.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{Histogram, IntCounter};
use tower::{Layer, Service};

use super::{RPC_REQUESTS, RPC_SECONDS};

/// Most distinct method labels; further paths are counted as `other` (clients choose paths,
/// so an unbounded set would be a cardinality attack).
const MAX_METHODS: usize = 64;

/// The metrics of one method label, with its counter and histogram per status code made
/// as codes are met (looking labels up in the metric families on every call was ~2% of a
/// lookup's CPU).
struct MethodMetrics {
    label: String,
    by_code: Mutex<HashMap<Option<i32>, (IntCounter, Histogram)>>,
}

impl MethodMetrics {
    fn new(label: String) -> Arc<Self> {
        Arc::new(MethodMetrics {
            label,
            by_code: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one call that ended with `code` (`None`: a transport error) after `seconds`.
    fn observe(&self, code: Option<i32>, seconds: f64) {
        let (requests, latency) = {
            let mut by_code = self.by_code.lock().unwrap_or_else(|e| e.into_inner());
            by_code
                .entry(code)
                .or_insert_with(|| {
                    let code = code_name(code);
                    let labels = [self.label.as_str(), code.as_str()];
                    (
                        RPC_REQUESTS.with_label_values(&labels),
                        RPC_SECONDS.with_label_values(&labels),
                    )
                })
                .clone()
        };
        requests.inc();
        latency.observe(seconds);
    }
}

/// Method labels handed out so far, by request path (at most [`MAX_METHODS`]).
static METHODS: LazyLock<Mutex<HashMap<String, Arc<MethodMetrics>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// What every path without a label of its own is counted as.
static OTHER: LazyLock<Arc<MethodMetrics>> = LazyLock::new(|| MethodMetrics::new("other".into()));

/// The metrics of a request path `/package.Service/Method`.
fn method_metrics(path: &str) -> Arc<MethodMetrics> {
    let mut methods = METHODS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = methods.get(path) {
        return known.clone();
    }
    let valid = path.len() <= 128
        && path.starts_with('/')
        && path[1..].split('/').count() == 2
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_'));
    if !valid || methods.len() >= MAX_METHODS {
        return OTHER.clone();
    }
    let metrics = MethodMetrics::new(path.to_owned());
    methods.insert(path.to_owned(), metrics.clone());
    metrics
}

/// The status code in `grpc-status` (absent: the call succeeded), as a known code's number.
fn status_code(status: Option<&http::HeaderValue>) -> i32 {
    let code = status
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from);
    code as i32
}

/// The label of a status code (`None`: a transport error): the code's name.
fn code_name(code: Option<i32>) -> String {
    code.map_or_else(
        || "TransportError".to_owned(),
        |code| format!("{:?}", tonic::Code::from(code)),
    )
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
        let method = method_metrics(request.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            let code = match &answered {
                Ok(response) => Some(status_code(response.headers().get("grpc-status"))),
                Err(_) => None,
            };
            method.observe(code, started.elapsed().as_secs_f64());
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
            method_metrics("/sessiond.v1.SessionAuthority/Rotate").label,
            "/sessiond.v1.SessionAuthority/Rotate"
        );
        assert_eq!(method_metrics("/a b/c").label, "other");
        assert_eq!(method_metrics("/only-one-part").label, "other");
        for i in 0..2 * MAX_METHODS {
            let label = method_metrics(&format!("/x.Y/M{i}")).label.clone();
            assert!(label.starts_with("/x.Y/M") || label == "other");
        }
        assert!(METHODS.lock().unwrap().len() <= MAX_METHODS);
        assert_eq!(code_name(Some(status_code(None))), "Ok");
        assert_eq!(
            code_name(Some(status_code(Some(&http::HeaderValue::from_static(
                "3"
            ))))),
            "InvalidArgument"
        );
        assert_eq!(
            code_name(Some(status_code(Some(&http::HeaderValue::from_static(
                "99"
            ))))),
            "Unknown"
        );
        assert_eq!(code_name(None), "TransportError");
        // The label values are an interface (dashboards and alerts match them): pinned by
        // name, so that a change in how tonic spells a code shows up here.
        let names = [
            "Ok",
            "Cancelled",
            "Unknown",
            "InvalidArgument",
            "DeadlineExceeded",
            "NotFound",
            "AlreadyExists",
            "PermissionDenied",
            "ResourceExhausted",
            "FailedPrecondition",
            "Aborted",
            "OutOfRange",
            "Unimplemented",
            "Internal",
            "Unavailable",
            "DataLoss",
            "Unauthenticated",
        ];
        for (code, name) in (0..).zip(names) {
            assert_eq!(code_name(Some(code)), name, "code {code}");
        }
    }

    #[test]
    fn calls_are_counted_under_their_method_and_code() {
        let method = method_metrics("/sessiond.test.Layer/Count");
        let count = || {
            RPC_REQUESTS
                .with_label_values(&["/sessiond.test.Layer/Count", "NotFound"])
                .get()
        };
        let before = count();
        method.observe(Some(tonic::Code::NotFound as i32), 0.001);
        method.observe(Some(tonic::Code::NotFound as i32), 0.001);
        method.observe(Some(tonic::Code::Ok as i32), 0.001);
        assert_eq!(count(), before + 2);
    }
}
