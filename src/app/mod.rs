//! The API listener's application: one [`Gateway`] per config generation and the
//! [`ApiHandler`] that dispatches each request to the client API it speaks (OpenAI Chat
//! Completions and Responses, Anthropic Messages and token counting, the model list).

mod chat;
mod models;
mod stream;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::api;
use crate::config::Config;
use crate::cost::PriceTable;
use crate::error::{ApiError, ErrorKind};
use crate::http::{FrontStats, Handler, Method, Request, Response};
use crate::job::{ClientApi, ReplyChannel};
use crate::log::{self, AccessRecord};
use crate::objpool::{ObjPool, ObjPoolStats};
use crate::plugins::{Auth, Pipeline, Principal, Shared};
use crate::pool::ProviderPool;
use crate::route::Router;

/// Response header naming the provider that served a request.
pub const PROVIDER_HEADER: &str = "x-deepintshield-provider";
/// The path prefix under which the Anthropic API is also served (`/anthropic/v1/messages`).
pub const ANTHROPIC_PREFIX: &str = "/anthropic";

/// Everything the handlers share: one generation of the running config. Built at start-up and
/// again by each reload (see `crate::service`); handlers load the current one per request.
pub struct Gateway {
    pub router: Router,
    pub pools: Vec<Arc<ProviderPool>>,
    pub json_depth_max: usize,
    pub replies: Arc<ObjPool<ReplyChannel>>,
    pub objpools: Vec<Arc<dyn ObjPoolStats>>,
    pub started: Instant,
    /// Set when shutdown begins (health turns 503).
    pub draining: AtomicBool,
    /// The API listener's counters, set once it is serving.
    pub front: OnceLock<Arc<FrontStats>>,
    /// The config this generation was built from.
    pub config: Arc<Config>,
    /// 1 at start-up, +1 per applied reload.
    pub generation: u64,
    /// This generation's plugins, in order.
    pub pipeline: Arc<Pipeline>,
    /// Who may send requests (client keys, virtual keys).
    pub auth: Auth,
    /// Plugin state shared by every generation (the store, key table, counters).
    pub plugins: Arc<Shared>,
}

impl Gateway {
    /// A gateway serving `config` through `pools` (one per provider, in `config.providers`
    /// order, which is the router's numbering). The object pools and `started` are shared by
    /// every generation.
    pub fn new(
        config: Arc<Config>,
        pools: Vec<Arc<ProviderPool>>,
        replies: Arc<ObjPool<ReplyChannel>>,
        objpools: Vec<Arc<dyn ObjPoolStats>>,
        started: Instant,
        generation: u64,
    ) -> Gateway {
        debug_assert_eq!(pools.len(), config.providers.len());
        let plugins = Arc::new(Shared::empty());
        let pipeline = Arc::new(Pipeline::new(
            &config,
            &plugins,
            Arc::new(PriceTable::default()),
        ));
        Gateway {
            auth: Auth::new(&config, &plugins.governance),
            pipeline,
            plugins,
            router: Router::new(&config),
            pools,
            json_depth_max: config.server.json_depth_max,
            replies,
            objpools,
            started,
            draining: AtomicBool::new(false),
            front: OnceLock::new(),
            config,
            generation,
        }
    }

    /// This gateway with the plugins of its config over `shared` state, pricing with `prices`.
    pub fn with_plugins(mut self, shared: Arc<Shared>, prices: Arc<PriceTable>) -> Gateway {
        self.pipeline = Arc::new(Pipeline::new(&self.config, &shared, prices));
        self.auth = Auth::new(&self.config, &shared.governance);
        self.plugins = shared;
        self
    }

    /// Who sent the request: what [`ApiHandler::admit`] found on its head, else worked out now.
    fn authorize(&self, req: &Request) -> Result<Principal, ApiError> {
        let found = req
            .extension
            .get()
            .and_then(|e| e.downcast_ref::<Principal>())
            .cloned();
        match found {
            Some(principal) => Ok(principal),
            None => self.auth.authenticate(req),
        }
    }
}

pub use crate::plugins::auth::presented_key;

/// What a request asks for, by method and path.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Chat(ClientApi),
    Models,
    Model(String),
    MethodNotAllowed,
    NotFound,
}

impl Endpoint {
    fn of(method: Method, path: &str) -> Endpoint {
        let path = path.strip_prefix(ANTHROPIC_PREFIX).unwrap_or(path);
        let chat = match path {
            "/v1/chat/completions" | "/chat/completions" => Some(ClientApi::OpenAiChat),
            "/v1/messages" => Some(ClientApi::AnthropicMessages),
            "/v1/messages/count_tokens" => Some(ClientApi::AnthropicCountTokens),
            "/v1/embeddings" | "/embeddings" => Some(ClientApi::OpenAiEmbeddings),
            "/v1/completions" | "/completions" => Some(ClientApi::OpenAiCompletions),
            "/v1/responses" | "/responses" => Some(ClientApi::OpenAiResponses),
            _ => None,
        };
        let get = matches!(method, Method::Get | Method::Head);
        match (chat, path) {
            (Some(api), _) if method == Method::Post => Endpoint::Chat(api),
            (Some(_), _) => Endpoint::MethodNotAllowed,
            (None, "/v1/models") if get => Endpoint::Models,
            (None, "/v1/models") => Endpoint::MethodNotAllowed,
            (None, p) if get && p.starts_with("/v1/models/") => {
                Endpoint::Model(percent_decode(&p["/v1/models/".len()..]))
            }
            _ => Endpoint::NotFound,
        }
    }
}

/// `%XX` escapes decoded (the openai SDK sends `mock%2Fgpt-4o`); invalid escapes and non-UTF-8
/// results are kept as sent.
pub fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// The client API whose error shape a request gets: Anthropic's for its paths and for requests
/// carrying `anthropic-version` (the anthropic SDK sends it everywhere), else OpenAI's.
pub fn error_api(req: &Request) -> ClientApi {
    let anthropic_path = req.path.starts_with(ANTHROPIC_PREFIX)
        || req.path.starts_with("/v1/messages")
        || req.header("anthropic-version").is_some();
    if anthropic_path {
        ClientApi::AnthropicMessages
    } else {
        ClientApi::OpenAiChat
    }
}

/// The error response in the shape of the request's client API.
pub fn error_for(req: &Request, err: &ApiError) -> Response {
    let api = error_api(req);
    let mut resp = api::error_response(api, err);
    if api.is_anthropic() {
        resp.headers.push(("request-id", req.id.clone()));
    }
    resp
}

/// The API listener's handler: serves each request on the gateway current when it arrived.
pub struct ApiHandler(pub Arc<ArcSwap<Gateway>>);

impl Handler for ApiHandler {
    fn handle(&self, req: &mut Request) -> Response {
        let current = self.0.load_full();
        let g = &current;
        let result = match Endpoint::of(req.method, &req.path) {
            Endpoint::Chat(api) => return self.chat_endpoint(g, req, api),
            Endpoint::Models => g.models(req),
            Endpoint::Model(id) => g.model(req, &id),
            Endpoint::MethodNotAllowed => Err(method_not_allowed(req.method)),
            Endpoint::NotFound => Err(not_found(&req.path)),
        };
        result.unwrap_or_else(|e| error_for(req, &e))
    }

    fn error_response(&self, req: &Request, err: &ApiError) -> Response {
        error_for(req, err)
    }

    /// Path, method and client key are checked on the head, so that a request bound to be
    /// refused never costs a body read. A refused chat request still writes its access line.
    fn admit(&self, req: &Request) -> Option<Response> {
        let refusal = match Endpoint::of(req.method, &req.path) {
            Endpoint::MethodNotAllowed => method_not_allowed(req.method),
            Endpoint::NotFound => not_found(&req.path),
            endpoint => {
                let e = match self.0.load().auth.authenticate(req) {
                    Ok(principal) => {
                        let _ = req.extension.set(Box::new(principal));
                        return None;
                    }
                    Err(e) => e,
                };
                if matches!(endpoint, Endpoint::Chat(_)) {
                    log::access(&AccessRecord {
                        request_id: req.id.clone(),
                        status: e.status(),
                        error_code: e.code,
                        total_us: req.received_at.elapsed().as_micros() as u64,
                        ..AccessRecord::default()
                    });
                }
                e
            }
        };
        Some(error_for(req, &refusal))
    }
}

impl ApiHandler {
    /// A chat request of `api`, with its access line (written when the answer or the stream ends).
    fn chat_endpoint(&self, g: &Arc<Gateway>, req: &mut Request, api: ClientApi) -> Response {
        let mut rec = AccessRecord {
            request_id: req.id.clone(),
            ..AccessRecord::default()
        };
        let resp = self.chat_current(g, req, api, &mut rec);
        let mut resp = resp.unwrap_or_else(|e| {
            rec.error_code = e.code;
            error_for(req, &e)
        });
        if api.is_anthropic() && !resp.headers.iter().any(|(n, _)| *n == "request-id") {
            resp.headers.push(("request-id", req.id.clone()));
        }
        rec.status = resp.status;
        rec.total_us = req.received_at.elapsed().as_micros() as u64;
        if resp.stream.is_none() {
            log::access(&rec);
        }
        resp
    }
}

pub fn method_not_allowed(m: Method) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method_not_allowed",
        format!("method {m:?} is not allowed on this path"),
    )
}

pub fn not_found(path: &str) -> ApiError {
    let shown: String = path.chars().take(200).collect();
    ApiError::new(
        ErrorKind::NotFound,
        "not_found",
        format!("no route for {shown}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        use ClientApi::*;
        let post = |p| Endpoint::of(Method::Post, p);
        assert_eq!(post("/v1/chat/completions"), Endpoint::Chat(OpenAiChat));
        assert_eq!(post("/v1/messages"), Endpoint::Chat(AnthropicMessages));
        assert_eq!(post("/v1/responses"), Endpoint::Chat(OpenAiResponses));
        assert_eq!(post("/responses"), Endpoint::Chat(OpenAiResponses));
        assert_eq!(
            Endpoint::of(Method::Get, "/v1/responses"),
            Endpoint::MethodNotAllowed
        );
        assert_eq!(
            post("/anthropic/v1/messages"),
            Endpoint::Chat(AnthropicMessages)
        );
        assert_eq!(
            post("/anthropic/v1/messages/count_tokens"),
            Endpoint::Chat(AnthropicCountTokens)
        );
        assert_eq!(
            Endpoint::of(Method::Get, "/v1/messages"),
            Endpoint::MethodNotAllowed
        );
        assert_eq!(Endpoint::of(Method::Get, "/v1/models"), Endpoint::Models);
        assert_eq!(
            Endpoint::of(Method::Get, "/v1/models/mock%2Fgpt-4o"),
            Endpoint::Model("mock/gpt-4o".into())
        );
        assert_eq!(post("/v1/models"), Endpoint::MethodNotAllowed);
        assert_eq!(post("/v2/x"), Endpoint::NotFound);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%2f"), "%zz/");
        assert_eq!(percent_decode("%ff"), "%ff");
    }
}
