//! The tower layer in front of every service of the client listener: it authenticates the
//! call, checks the principal's role against the method, logs refusals to the audit trail,
//! and hands the [`Principal`] to the handler in the request extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use super::{access, audit, authorize, Access, Authenticator, Principal};

/// Installs [`AuthService`] around a server's routes.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer authenticating with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// Authenticates and authorizes each call before `S` sees it.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The API key of an `authorization: Bearer <key>` header, if any.
fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, &'static str> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| Some(k.trim()))
        .ok_or("the authorization header must be 'Bearer <API key>'")
}

impl<S> AuthService<S> {
    fn check<B>(&self, request: &http::Request<B>) -> Result<Principal, Status> {
        let method = request.uri().path();
        let required = access(method);
        let connection = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let remote = connection
            .and_then(|c| c.get_ref().remote_addr())
            .or_else(|| {
                request
                    .extensions()
                    .get::<TcpConnectInfo>()
                    .and_then(|c| c.remote_addr())
            });
        let certs = connection.and_then(|c| c.peer_certs());
        let authenticated = bearer(request.headers())
            .map_err(super::Unauthenticated)
            .and_then(|key| {
                self.auth
                    .authenticate(key, certs.as_deref().map(|c| &c[..]))
            });
        let principal = match authenticated {
            Ok(p) => p,
            Err(_) if required == Access::Public => Principal::open(),
            Err(e) => {
                audit::credential_refused(remote, method, e.0);
                return Err(Status::unauthenticated(e.0));
            }
        };
        authorize(&principal, required).inspect_err(|status| {
            audit::permission_refused(remote, method, &principal, status.message());
        })?;
        Ok(principal)
    }
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.check(&request) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}
