//! The ledger plugin: its post-hook queues one usage row per request (time, key, team, provider,
//! model, tokens, cost, status, latency, request id) for the store's writer thread, without ever
//! waiting (a full queue drops the row and counts it).

use std::sync::Arc;

use super::{Outcome, Plugin, Principal, RequestCtx};
use crate::job::ClientApi;
use crate::store::{LedgerRow, Store};

/// The name a client API has in the ledger.
pub fn api_name(api: ClientApi) -> &'static str {
    match api {
        ClientApi::OpenAiChat => "openai_chat",
        ClientApi::AnthropicMessages => "anthropic_messages",
        ClientApi::AnthropicCountTokens => "anthropic_count_tokens",
        ClientApi::OpenAiEmbeddings => "openai_embeddings",
        ClientApi::OpenAiCompletions => "openai_completions",
        ClientApi::OpenAiResponses => "openai_responses",
    }
}

pub struct Ledger {
    store: Option<Arc<Store>>,
}

impl Ledger {
    pub fn new(store: Option<Arc<Store>>) -> Ledger {
        Ledger { store }
    }
}

/// The row of a finished request.
pub fn row(ctx: &RequestCtx, outcome: &Outcome) -> LedgerRow {
    let (key_id, team_id) = match &ctx.principal {
        Principal::Key(k) => (Some(k.record.id), k.record.team_id),
        Principal::Open | Principal::ClientKey(_) => (None, None),
    };
    // A request no provider answered is recorded against its primary route.
    let (provider, model) = match outcome.served.as_ref().or(ctx.routes.first()) {
        Some(t) => (t.provider.clone(), t.model.clone()),
        None => (String::new(), ctx.model.clone()),
    };
    let u = &outcome.usage;
    LedgerRow {
        ts_ms: crate::cost::now_unix_ms(),
        request_id: ctx.request_id.clone(),
        key_id,
        team_id,
        provider,
        model,
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_read_tokens: u.cache_read_tokens,
        cache_write_tokens: u.cache_write_tokens,
        reasoning_tokens: u.reasoning_tokens,
        cost_nusd: outcome.cost.map(|c| c.nusd),
        status: outcome.status,
        latency_ms: outcome.latency.as_millis() as u64,
        stream: ctx.stream,
        api: api_name(ctx.api),
    }
}

impl Plugin for Ledger {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn post(&self, ctx: &RequestCtx, outcome: &Outcome) {
        if let Some(store) = &self.store {
            store.record(row(ctx, outcome));
        }
    }
}
