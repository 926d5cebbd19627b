//! The admin listener: `GET /health`, `GET /stats` (JSON) and `GET /metrics` (Prometheus), read
//! from the current gateway generation and the service counters, the governance API under
//! `/admin/` ([`governance`]), and the optional admin token (`server.admin_token`) that
//! `/stats`, `/metrics` and `/admin/` then require (`/admin/` is refused without one).
//! `/health` stays open, for load balancers and probes that carry no credentials; it tells
//! nothing but up or draining.

use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::app::{method_not_allowed, not_found, Gateway};
use crate::error::{ApiError, ErrorKind};
use crate::http::{Handler, Method, Request, Response};
use crate::route::bearer_token;
use crate::stats::ServiceStats;

pub mod governance;
pub mod prometheus;

/// The `/stats` document of a gateway generation.
pub fn stats_json(g: &Gateway) -> serde_json::Value {
    let mut pools = serde_json::Map::new();
    for p in &g.pools {
        pools.insert(p.name().to_string(), p.to_json());
    }
    let objpools: Vec<_> = g.objpools.iter().map(|p| p.snapshot()).collect();
    json!({
        "uptime_s": g.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "draining": g.draining.load(Ordering::Relaxed),
        "front": g.front.get().map(|f| f.to_json()),
        "pools": pools,
        "objpools": objpools,
    })
}

/// The admin listener's handler.
pub struct AdminHandler {
    pub gateway: Arc<ArcSwap<Gateway>>,
    pub service: Arc<ServiceStats>,
}

impl AdminHandler {
    /// `/stats`: the gateway's document plus the config generation, reload counters and each
    /// pool's number of upstream keys (never the keys).
    fn stats(&self, g: &Gateway) -> serde_json::Value {
        let mut v = stats_json(g);
        v["config"] = json!({
            "path": g.config.path.display().to_string(),
            "generation": g.generation,
        });
        v["service"] = self.service.to_json();
        for (name, p) in &g.config.providers {
            if let Some(pool) = v["pools"].get_mut(name) {
                pool["keys"] = p.keys.len().into();
                pool["plugins"] = g.plugins.stats.pool_json(name);
            }
        }
        v["governance"] = governance::stats_json(g);
        v
    }

    fn metrics(&self, g: &Gateway) -> Response {
        let text = prometheus::render(&prometheus::Scrape {
            pools: &g.pools,
            front: g.front.get().map(|f| &**f),
            objpools: &g.objpools,
            service: &self.service,
            generation: g.generation,
            draining: g.draining.load(Ordering::Relaxed),
        });
        let mut text = text;
        governance::metrics(g, &mut text);
        Response {
            status: 200,
            content_type: prometheus::CONTENT_TYPE,
            headers: Vec::new(),
            body: text.into_bytes(),
            stream: None,
        }
    }
}

/// With `server.admin_token` set, `/stats` and `/metrics` need `Authorization: Bearer <token>`
/// (the scheme in any case), compared by its SHA-256 in constant time; `/health` needs nothing.
fn check_token(g: &Gateway, req: &Request) -> Result<(), ApiError> {
    let Some(token) = &g.config.server.admin_token else {
        return Ok(());
    };
    if req.path == "/health" {
        return Ok(());
    }
    if req.header("authorization").and_then(bearer_token).is_none() {
        return Err(ApiError::new(
            ErrorKind::Unauthorized,
            "missing_admin_token",
            "this admin endpoint needs the admin token: send Authorization: Bearer <token>",
        ));
    }
    if governance::token_ok(req, token) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::Unauthorized,
            "invalid_admin_token",
            "incorrect admin token",
        ))
    }
}

/// A 401 for the admin token, with the challenge RFC 9110 asks for.
fn unauthorized(e: &ApiError) -> Response {
    let mut resp = Response::error(e);
    resp.headers.push((
        "www-authenticate",
        "Bearer realm=\"deepintshield-admin\"".into(),
    ));
    resp
}

impl Handler for AdminHandler {
    /// Every admin endpoint is a `GET`: anything else is answered before its body is read, as is
    /// a request without the admin token when one is set.
    fn admit(&self, req: &Request) -> Option<Response> {
        if req.path.starts_with(governance::PREFIX) {
            return governance::admit(&self.gateway.load(), req);
        }
        match (req.method, req.path.as_str()) {
            (Method::Get | Method::Head, "/health" | "/stats" | "/metrics") => {
                check_token(&self.gateway.load(), req)
                    .err()
                    .map(|e| unauthorized(&e))
            }
            (_, "/health" | "/stats" | "/metrics") => {
                Some(Response::error(&method_not_allowed(req.method)))
            }
            (_, path) => Some(Response::error(&not_found(path))),
        }
    }

    fn handle(&self, req: &mut Request) -> Response {
        let current = self.gateway.load_full();
        let g = &current;
        if req.path.starts_with(governance::PREFIX) {
            return match governance::admit(g, req) {
                Some(refused) => refused,
                None => governance::handle(g, req),
            };
        }
        if let Err(e) = check_token(g, req) {
            return unauthorized(&e);
        }
        match (req.method, req.path.as_str()) {
            (Method::Get | Method::Head, "/health") => {
                if g.draining.load(Ordering::Relaxed) {
                    Response::json(503, br#"{"status":"draining"}"#.to_vec())
                } else {
                    Response::json(200, br#"{"status":"ok"}"#.to_vec())
                }
            }
            (Method::Get | Method::Head, "/stats") => {
                let body = serde_json::to_vec_pretty(&self.stats(g)).unwrap_or_default();
                Response::json(200, body)
            }
            (Method::Get | Method::Head, "/metrics") => self.metrics(g),
            (_, "/health" | "/stats" | "/metrics") => {
                Response::error(&method_not_allowed(req.method))
            }
            (_, path) => Response::error(&not_found(path)),
        }
    }
}
