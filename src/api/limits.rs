//! Admission limits: how many revocation streams one connection may hold open at once.
//!
//! A stream costs the node a delivery task and a buffer for as long as it stays open, so one
//! client must not be able to open thousands of them over one connection. Connections are
//! told apart by their peer address (client address and port); a stream over the limit is
//! refused with RESOURCE_EXHAUSTED, and its slot is freed when the stream ends or the
//! client drops it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::Status;

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

#[cfg(test)]
mod tests {
    use super::*;

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
