//! Admission limits: how many revocation streams one connection may hold open at once, and
//! how many requests per second a node admits for one tenant.
//!
//! A stream costs the node a delivery task and a buffer for as long as it stays open, so one
//! client must not be able to open thousands of them over one connection. Connections are
//! told apart by their peer address (client address and port); a stream over the limit is
//! refused with RESOURCE_EXHAUSTED, and its slot is freed when the stream ends or the
//! client drops it.
//!
//! A tenant's requests are admitted at its configured rate (GCRA, `governor`), so one
//! tenant's flood leaves the others their share of the node; over it, RESOURCE_EXHAUSTED
//! before anything is read or proposed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_stream::Stream;
use tonic::Status;

use crate::config::Config;

/// Most revocation streams one connection may hold open at once.
pub const MAX_STREAMS_PER_CONNECTION: usize = 32;

/// Counts the open streams of each connection.
#[derive(Debug, Default)]
pub struct StreamLimiter {
    open: Mutex<BTreeMap<SocketAddr, usize>>,
}

impl StreamLimiter {
    /// A slot for one more stream of the connection from `peer`, or RESOURCE_EXHAUSTED when
    /// it already holds [`MAX_STREAMS_PER_CONNECTION`]. A peer of unknown address (not a TCP
    /// connection) is not limited.
    pub fn admit(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<StreamSlot, Status> {
        let Some(peer) = peer else {
            return Ok(StreamSlot { held: None });
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(peer).or_default();
        if *count >= MAX_STREAMS_PER_CONNECTION {
            return Err(Status::resource_exhausted(format!(
                "at most {MAX_STREAMS_PER_CONNECTION} revocation streams per connection"
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            held: Some((self.clone(), peer)),
        })
    }

    fn release(&self, peer: SocketAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&peer);
            }
        }
    }
}

/// One admitted stream's slot, freed when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    held: Option<(Arc<StreamLimiter>, SocketAddr)>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some((limiter, peer)) = self.held.take() {
            limiter.release(peer);
        }
    }
}

/// A stream that holds its connection's slot for as long as it lives.
#[derive(Debug)]
pub struct Admitted<S> {
    stream: S,
    _slot: StreamSlot,
}

impl<S> Admitted<S> {
    /// `stream`, holding `slot` until dropped.
    pub fn new(stream: S, slot: StreamSlot) -> Self {
        Admitted {
            stream,
            _slot: slot,
        }
    }
}

impl<S: Stream + Unpin> Stream for Admitted<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

/// Tenants whose rate state is kept before idle ones are forgotten.
const TRACKED_TENANTS: usize = 4096;

/// Per-tenant request rates: the default rate for every tenant without one of its own, and a
/// limiter per tenant configured with its own rate (0: unlimited).
#[derive(Debug, Default)]
pub struct TenantLimiter {
    default: Option<(u32, DefaultKeyedRateLimiter<String>)>,
    configured: BTreeMap<String, Option<(u32, DefaultDirectRateLimiter)>>,
}

impl TenantLimiter {
    /// The limits `config` sets (`limits.tenant_requests_per_sec`, `limits.tenant_burst`,
    /// `tenants.<name>.requests_per_sec`).
    pub fn new(config: &Config) -> Self {
        let burst = config.limits.tenant_burst;
        let quota = |rate: u32| {
            let rate = NonZeroU32::new(rate)?;
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            Some(Quota::per_second(rate).allow_burst(burst))
        };
        let default_rate = config.limits.tenant_requests_per_sec;
        TenantLimiter {
            default: quota(default_rate).map(|q| (default_rate, RateLimiter::keyed(q))),
            configured: config
                .tenants
                .iter()
                .filter_map(|(name, policy)| {
                    let rate = policy.requests_per_sec?;
                    let limiter = quota(rate).map(|q| (rate, RateLimiter::direct(q)));
                    Some((name.clone(), limiter))
                })
                .collect(),
        }
    }

    /// Whether no tenant has a rate (the default): callers may skip finding the tenant.
    pub fn is_unlimited(&self) -> bool {
        self.default.is_none() && self.configured.values().all(Option::is_none)
    }

    /// Admits one request for `tenant`, or RESOURCE_EXHAUSTED when the tenant is over its
    /// rate on this node.
    pub fn admit(&self, tenant: &str) -> Result<(), Status> {
        let (rate, admitted) = match self.configured.get(tenant) {
            Some(None) => return Ok(()),
            Some(Some((rate, limiter))) => (*rate, limiter.check().is_ok()),
            None => {
                let Some((rate, limiter)) = &self.default else {
                    return Ok(());
                };
                if limiter.len() > TRACKED_TENANTS {
                    limiter.retain_recent();
                }
                (*rate, limiter.check_key(&tenant.to_owned()).is_ok())
            }
        };
        if admitted {
            Ok(())
        } else {
            Err(Status::resource_exhausted(format!(
                "tenant '{tenant}' is over its request rate ({rate}/s on this node): retry later"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantPolicy;

    #[test]
    fn a_tenant_over_its_rate_is_refused_and_leaves_others_alone() {
        let mut config = Config::default();
        config.limits.tenant_requests_per_sec = 5;
        config.tenants.insert(
            "vip".into(),
            TenantPolicy {
                requests_per_sec: Some(0),
                ..Default::default()
            },
        );
        config.tenants.insert(
            "small".into(),
            TenantPolicy {
                requests_per_sec: Some(2),
                ..Default::default()
            },
        );
        let limiter = TenantLimiter::new(&config);
        assert!(!limiter.is_unlimited());
        for _ in 0..5 {
            limiter.admit("noisy").unwrap();
        }
        let refused = limiter.admit("noisy").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("'noisy'"), "{refused:?}");
        limiter
            .admit("quiet")
            .expect("another tenant keeps its share");
        for _ in 0..100 {
            limiter.admit("vip").expect("an unlimited tenant");
        }
        limiter.admit("small").unwrap();
        limiter.admit("small").unwrap();
        assert!(limiter.admit("small").is_err(), "its own, lower rate");
    }

    #[test]
    fn without_a_rate_nothing_is_limited() {
        let limiter = TenantLimiter::new(&Config::default());
        assert!(limiter.is_unlimited());
        for _ in 0..1000 {
            limiter.admit("t").unwrap();
        }
    }

    #[test]
    fn each_connection_gets_its_own_bounded_number_of_slots() {
        let limiter = Arc::new(StreamLimiter::default());
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let mut held: Vec<_> = (0..MAX_STREAMS_PER_CONNECTION)
            .map(|_| limiter.admit(Some(a)).unwrap())
            .collect();
        let refused = limiter.admit(Some(a)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            limiter.admit(Some(b)).is_ok(),
            "another connection is not affected"
        );
        held.pop();
        assert!(
            limiter.admit(Some(a)).is_ok(),
            "a dropped stream frees its slot"
        );
        drop(held);
        assert!(limiter.admit(None).is_ok());
        assert!(limiter.open.lock().unwrap().is_empty());
    }
}
