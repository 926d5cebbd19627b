//! Name resolution for upstream calls on the calling worker thread. ureq's default resolver
//! starts a new thread for every lookup that has a timeout; with thousands of workers that is a
//! thread per request, and under load `pid_max` runs out. Workers are OS threads already, so the
//! lookup simply blocks them (the system resolver bounds it; `connect_timeout_ms` bounds the rest).

use std::net::ToSocketAddrs;

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Addresses kept from one lookup (ureq's own limit).
const ADDRS_MAX: usize = 16;

#[derive(Debug, Default)]
pub struct ThreadResolver;

impl Resolver for ThreadResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ureq::Error::BadUri(uri.to_string()));
        };
        let port = authority
            .port_u16()
            .unwrap_or(if scheme.as_str() == "https" { 443 } else { 80 });
        let host = authority.host();
        // An IP literal needs no lookup (and IPv6 literals keep their brackets in `host`).
        let target = format!("{host}:{port}");
        let addrs = target.to_socket_addrs().map_err(ureq::Error::Io)?;
        let mut out = self.empty();
        for addr in config.ip_family().keep_wanted(addrs).take(ADDRS_MAX) {
            out.push(addr);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}
