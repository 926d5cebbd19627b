//! Connection loop: accept, read, parse, dispatch to the handler, write.
//! (Interface fixed; implementation in progress.)

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::{Handler, Limits};
use crate::objpool::ObjPool;

/// Counters of one listener (relaxed atomics).
#[derive(Default)]
pub struct FrontStats {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    pub requests: AtomicU64,
    /// Requests being handled or whose response is being written.
    pub requests_in_flight: AtomicU64,
    pub bad_requests: AtomicU64,
    pub headers_too_large: AtomicU64,
    pub bodies_too_large: AtomicU64,
    pub timeouts: AtomicU64,
    pub handler_panics: AtomicU64,
}

impl FrontStats {
    pub fn to_json(&self) -> serde_json::Value {
        todo!()
    }
}

/// A running listener.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stats: Arc<FrontStats>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    pub fn stats(&self) -> &Arc<FrontStats> {
        &self.stats
    }
    /// Stop accepting new connections; open connections finish their current request, then close.
    pub fn stop_accepting(&self) {
        todo!()
    }
}

/// Serve `listener` (already bound) with `handler`, one coroutine per connection.
/// `buffers` lends the read and write buffers of connections.
pub fn serve(
    listener: std::net::TcpListener,
    limits: Limits,
    handler: Arc<dyn Handler>,
    buffers: Arc<ObjPool<Vec<u8>>>,
) -> io::Result<ServerHandle> {
    let _ = (listener, limits, handler, buffers);
    todo!()
}
