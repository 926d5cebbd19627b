//! Azure OpenAI and the OpenAI-compatible presets, end to end against the bench mock acting as
//! the upstream: Azure's deployment and v1 routes (the deployment map applied, `api-version`,
//! `api-key`), Entra ID tokens fetched, refreshed before they expire and never shown, Azure's
//! `retry-after-ms` taken as the wait; presets' defaults reaching the upstream (`max_tokens`,
//! no `stream_options`, 9-character tool-call ids, reasoning sent back, no `parallel_tool_calls`,
//! tools refused, no key for local servers); legacy completions streamed with their usage;
//! Responses clients passed through to Azure's Responses API on both of its URL shapes.

mod common;

use common::*;
use std::time::Duration;

const AZ_KEY: &str = "azure-key-0123456789";
const ENTRA_SECRET: &str = "entra-client-secret-4711";

fn post(gw: &Gateway, path: &str, body: &serde_json::Value) -> Response {
    request(
        gw.api,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn anthropic(gw: &Gateway, body: &serde_json::Value) -> Response {
    request(
        gw.api,
        "POST",
        "/v1/messages",
        &[
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
        ],
        body.to_string().as_bytes(),
    )
}

/// A streamed request's response, read whole.
fn stream(gw: &Gateway, path: &str, body: &serde_json::Value) -> SseResponse {
    let body = body.to_string();
    let mut c = Conn::new(gw.api);
    c.send(
        format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.sse_response().expect("a streamed response")
}

fn azure_config(mock: &Mock) -> String {
    let m = mock.addr;
    format!(
        r#"{base}
[providers.az]
type = "azure"
keys = [{{ key = "env:AZ_KEY" }}]
max_retries = 0
rate_limit_cooldown_ms_default = 1
[providers.az.azure]
endpoint = "http://{m}"
deployments = {{ "gpt-4o" = "prod-4o", "emb" = "embed-deploy" }}

[providers.azv1]
type = "azure"
[providers.azv1.azure]
endpoint = "http://{m}/"
api_style = "v1"
deployments = {{ "gpt-4o" = "v1-4o" }}
auth = "entra"
tenant = "env:AZ_TENANT"
client_id = "env:AZ_CLIENT"
client_secret = "env:AZ_SECRET"
token_url = "http://{m}/entra/{{tenant}}/oauth2/v2.0/token"

[providers.aznores]
type = "azure"
keys = [{{ key = "env:AZ_KEY" }}]
responses = false
[providers.aznores.azure]
endpoint = "http://{m}"
deployments = {{ "gpt-4o" = "prod-4o" }}

[providers.badentra]
type = "azure"
max_retries = 0
[providers.badentra.azure]
endpoint = "http://{m}"
auth = "entra"
client_id = "env:AZ_CLIENT"
client_secret = "env:AZ_WRONG_SECRET"
token_url = "http://{m}/entra/fixed-tenant/oauth2/v2.0/token"
"#,
        base = base_config()
    )
}

fn azure_env() -> [(&'static str, &'static str); 5] {
    [
        ("AZ_KEY", AZ_KEY),
        ("AZ_TENANT", "contoso"),
        ("AZ_CLIENT", "client-app-1"),
        ("AZ_SECRET", ENTRA_SECRET),
        ("AZ_WRONG_SECRET", "wrong-secret-0815"),
    ]
}

#[test]
fn azure_deployments_route_carries_the_deployment_version_and_key() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start_with_env(&azure_config(&mock), &azure_env());
    let chat =
        serde_json::json!({"model": "az/gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&gw, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "mock: hi");
    let s = mock.stats();
    assert_eq!(
        s["last_path"],
        "/openai/deployments/prod-4o/chat/completions"
    );
    assert_eq!(s["last_azure_api_version"], "2024-10-21");
    assert_eq!(s["last_azure_api_key"], AZ_KEY);
    assert_eq!(s["last_authorization"], "", "the key goes in api-key only");

    // A model without a deployment entry is its own deployment; embeddings under it.
    let emb = serde_json::json!({"model": "az/emb", "input": ["a", "b"]});
    let r = post(&gw, "/v1/embeddings", &emb);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        mock.stats()["last_path"],
        "/openai/deployments/embed-deploy/embeddings"
    );
    let legacy = serde_json::json!({"model": "az/instruct", "prompt": "say"});
    let r = post(&gw, "/v1/completions", &legacy);
    assert_eq!(r.json()["choices"][0]["text"], "mock: say");
    assert_eq!(
        mock.stats()["last_path"],
        "/openai/deployments/instruct/completions"
    );
}

#[test]
fn azure_v1_with_entra_tokens_refreshed_before_they_expire() {
    // Tokens live 2 s: the gateway replaces one after 1 s (half its lifetime).
    let mock = Mock::start(&["--token-expires-s", "2"]);
    let gw = Gateway::start_with_env(&azure_config(&mock), &azure_env());
    let chat = serde_json::json!({"model": "azv1/gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = stream(&gw, "/v1/chat/completions", &chat);
    assert_eq!((r.status, r.content().as_str()), (200, "mock: hi"));
    let s = mock.stats();
    assert_eq!(s["last_path"], "/openai/v1/chat/completions");
    assert_eq!(s["last_query"], "");
    assert_eq!(
        s["last_model"], "v1-4o",
        "v1 names the deployment in the body"
    );
    assert_eq!(s["last_authorization"], "Bearer mocktoken-1");
    assert_eq!(s["last_token_request"]["tenant"], "contoso");
    assert_eq!(s["last_token_request"]["client_id"], "client-app-1");
    assert_eq!(
        s["last_token_request"]["scope"],
        "https://cognitiveservices.azure.com/.default"
    );
    // Within the token's first half no new token is asked for.
    let plain = serde_json::json!({"model": "azv1/gpt-4o", "messages": [{"role": "user", "content": "again"}]});
    assert_eq!(post(&gw, "/v1/chat/completions", &plain).status, 200);
    assert_eq!(mock.stats()["token_requests"], 1);
    // Every request keeps succeeding while the token is replaced before it expires.
    let refreshed = eventually(Duration::from_secs(10), || {
        let r = post(&gw, "/v1/chat/completions", &plain);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        mock.stats()["token_requests"].as_u64() >= Some(2)
    });
    assert!(refreshed, "the token was never refreshed");
    assert_eq!(mock.stats()["last_authorization"], "Bearer mocktoken-2");
}

#[test]
fn concurrent_first_requests_share_one_token_fetch() {
    let mock = Mock::start(&["--delay-ms", "50"]);
    let gw = Gateway::start_with_env(&azure_config(&mock), &azure_env());
    let api = gw.api;
    let calls: Vec<_> = (0..8)
        .map(|i| std::thread::spawn(move || chat_at(api, "azv1/gpt-4o", &format!("hi {i}")).status))
        .collect();
    let statuses: Vec<u16> = calls.into_iter().map(|c| c.join().unwrap_or(0)).collect();
    assert_eq!(statuses, vec![200; 8]);
    assert_eq!(
        mock.stats()["token_requests"],
        1,
        "one fetch for all workers"
    );
}

#[test]
fn entra_failures_are_502_without_secrets() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start_with_env(&azure_config(&mock), &azure_env());
    let chat = serde_json::json!({"model": "badentra/gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&gw, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_auth_failed");
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("status 401 (invalid_client)"), "{text}");
    assert!(!text.contains("wrong-secret"), "{text}");
    assert_eq!(mock.stats()["azure_requests"], 0, "no call without a token");
}

/// A Responses request (with a field no translation would keep) to `model`, whole or streamed.
fn responses_request(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "input": "hi", "stream": stream,
        "zz_future_field": {"kept": [1, true]}, "store": false})
}

/// The `data:` payloads of a Responses stream, as JSON.
fn responses_events(r: &SseResponse) -> Vec<serde_json::Value> {
    r.events
        .iter()
        .map(|(e, _)| {
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or(e);
            serde_json::from_str(data).unwrap_or_else(|_| panic!("bad event {e}"))
        })
        .collect()
}

#[test]
fn azure_responses_pass_through_on_both_url_shapes() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start_with_env(&azure_config(&mock), &azure_env());
    // Deployments style: `/openai/responses` with the Responses API's preview version, the
    // deployment as the body's model, every other field as the client wrote it.
    let r = post(&gw, "/v1/responses", &responses_request("az/gpt-4o", false));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["output"][0]["content"][0]["text"], "mock: hi");
    let s = mock.stats();
    assert_eq!(s["last_path"], "/openai/responses");
    assert_eq!(s["last_azure_api_version"], "2025-04-01-preview");
    assert_eq!(s["last_model"], "prod-4o");
    assert_eq!(
        s["last_body"]["zz_future_field"],
        serde_json::json!({"kept": [1, true]})
    );
    assert_eq!(s["last_azure_api_key"], AZ_KEY);
    assert_eq!(s["responses_requests"], 1);
    // v1 style, streamed: `/openai/v1/responses`, an Entra token.
    let r = stream(
        &gw,
        "/v1/responses",
        &responses_request("azv1/gpt-4o", true),
    );
    assert_eq!(r.status, 200);
    let events = responses_events(&r);
    assert_eq!(events[0]["type"], "response.created");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{events:#?}");
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        "mock: hi"
    );
    let s = mock.stats();
    assert_eq!(s["last_path"], "/openai/v1/responses");
    assert_eq!(s["last_query"], "");
    assert_eq!(s["last_model"], "v1-4o");
    assert_eq!(s["last_authorization"], "Bearer mocktoken-1");
    assert_eq!(s["responses_requests"], 2);
    // `responses = false`: translated to the deployment's chat completions.
    let r = post(
        &gw,
        "/v1/responses",
        &responses_request("aznores/gpt-4o", false),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["object"], "response");
    let s = mock.stats();
    assert_eq!(
        s["last_path"],
        "/openai/deployments/prod-4o/chat/completions"
    );
    assert!(s["last_body"].get("zz_future_field").is_none());
    assert_eq!(s["responses_requests"], 2);
    // Azure's refusals come back as Azure wrote them (an injected 429 with its retry-after-ms).
    let r = post(
        &gw,
        "/v1/responses",
        &responses_request("az/status-429-retryms-1500", false),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "429");
    assert_eq!(r.header("retry-after-ms"), Some("1500"));
}

#[test]
fn azure_retry_after_ms_is_the_wait() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start_with_env(&azure_config(&mock), &azure_env());
    let chat = serde_json::json!({"model": "az/status-429-retryms-1500", "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&gw, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "429", "Azure's body as it is");
    assert_eq!(r.header("retry-after-ms"), Some("1500"));
    assert_eq!(r.header("retry-after"), Some("2"), "rounded up to seconds");
    // The key cools for the 1.5 s Azure asked for (not the 1 ms default): the next request is
    // answered by the gateway without calling Azure.
    let before = mock.stats()["azure_requests"].clone();
    let r = post(&gw, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "provider_rate_limited");
    assert_eq!(mock.stats()["azure_requests"], before);
}

fn presets_config(mock: &Mock) -> String {
    let url = mock.base_url();
    let mut t = base_config();
    for (name, preset, key) in [
        ("mistral", "mistral", true),
        ("perplexity", "perplexity", true),
        ("deepseek", "deepseek", true),
        ("cerebras", "cerebras", true),
        ("groq", "groq", true),
        ("ollama", "ollama", false),
    ] {
        t.push_str(&format!(
            "[providers.{name}]\ntype = \"openai\"\npreset = \"{preset}\"\nbase_url = \"{url}\"\n"
        ));
        if key {
            t.push_str("keys = [{ key = \"env:PRESET_KEY\" }]\n");
        }
    }
    t
}

/// An Anthropic conversation: thinking, a tool call with Anthropic's id, and its result.
fn tool_history(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model, "max_tokens": 64, "stream": stream,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should look it up.", "signature": ""},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "sunny"}]},
        ],
    })
}

#[test]
fn preset_settings_reach_the_upstream() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start_with_env(&presets_config(&mock), &[("PRESET_KEY", "preset-key-123")]);

    // Mistral: max_tokens, no stream_options, 9-character tool-call ids that still match.
    let r = anthropic(&gw, &tool_history("mistral/mistral-large", false));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = mock.stats()["last_body"].clone();
    assert_eq!(body["max_tokens"], 64);
    assert!(body.get("max_completion_tokens").is_none(), "{body}");
    let id = body["messages"][1]["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{id}"
    );
    assert_eq!(body["messages"][2]["tool_call_id"], id.as_str());
    assert!(body["messages"][1].get("reasoning_content").is_none());
    let r = stream(
        &gw,
        "/v1/messages",
        &tool_history("mistral/mistral-large", true),
    );
    assert_eq!(r.status, 200);
    assert!(mock.stats()["last_body"].get("stream_options").is_none());
    // An OpenAI client's own stream_options are removed too; the stream still completes.
    let openai = serde_json::json!({"model": "mistral/m", "stream": true,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]});
    let r = stream(&gw, "/v1/chat/completions", &openai);
    assert_eq!((r.status, r.content().as_str()), (200, "mock: hi"));
    let body = mock.stats()["last_body"].clone();
    assert!(body.get("stream_options").is_none(), "{body}");

    // DeepSeek: the thinking goes back as reasoning_content.
    assert_eq!(
        anthropic(&gw, &tool_history("deepseek/deepseek-reasoner", false)).status,
        200
    );
    let body = mock.stats()["last_body"].clone();
    assert_eq!(
        body["messages"][1]["reasoning_content"],
        "I should look it up."
    );
    assert_eq!(
        body["messages"][1]["tool_calls"][0]["id"],
        "toolu_01A09q90qw90lq917835lq9"
    );

    // Cerebras: no parallel_tool_calls; Groq (OpenAI's defaults): sent.
    assert_eq!(
        anthropic(&gw, &tool_history("cerebras/llama", false)).status,
        200
    );
    assert!(mock.stats()["last_body"]
        .get("parallel_tool_calls")
        .is_none());
    assert_eq!(
        anthropic(&gw, &tool_history("groq/llama", false)).status,
        200
    );
    let body = mock.stats()["last_body"].clone();
    assert_eq!(body["parallel_tool_calls"], false);
    assert_eq!(body["max_completion_tokens"], 64);
    assert_eq!(mock.stats()["last_authorization"], "Bearer preset-key-123");

    // Perplexity: a request that needs tools is refused before the upstream is called.
    let before = mock.stats()["requests"].clone();
    let r = anthropic(&gw, &tool_history("perplexity/sonar", false));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(String::from_utf8_lossy(&r.body).contains("does not support tools"));
    assert_eq!(mock.stats()["requests"], before);

    // Ollama: no key configured, none sent.
    let r = gw.chat("ollama/llama3.2", "local");
    assert_eq!(r.status, 200);
    let s = mock.stats();
    assert_eq!(s["last_authorization"], "");
    assert_eq!(s["last_body"]["model"], "llama3.2");
}

#[test]
fn legacy_completions_stream_with_usage_and_404_elsewhere() {
    let mock = Mock::start(&[]);
    let toml = format!(
        "{}[providers.up]\ntype = \"openai\"\nbase_url = \"{}\"\nkeys = [{{ key = \"env:K\" }}]\n\
         [providers.anth]\ntype = \"anthropic\"\nbase_url = \"http://{}\"\nkeys = [{{ key = \"env:K\" }}]\n",
        base_config(),
        mock.base_url(),
        mock.addr
    );
    let gw = Gateway::start_with_env(&toml, &[("K", "key-for-legacy")]);
    for include_usage in [false, true] {
        let mut body =
            serde_json::json!({"model": "up/instruct", "prompt": "count", "stream": true});
        if include_usage {
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        let r = stream(&gw, "/v1/completions", &body);
        assert_eq!(r.status, 200);
        assert_eq!(r.events.last().map(|(e, _)| e.as_str()), Some("[DONE]"));
        let chunks = r.chunks();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, "mock: count");
        assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
        let usage = chunks.iter().find(|c| c["usage"].is_object());
        assert_eq!(usage.is_some(), include_usage, "{chunks:?}");
        // The gateway always asked for the usage, and counted it.
        assert_eq!(
            mock.stats()["last_body"]["stream_options"]["include_usage"],
            true
        );
    }
    // Both streams' usage was read from their last chunk ("count": 2 tokens, "mock: count": 3).
    let counters = gw.stats()["pools"]["up"]["counters"].clone();
    assert_eq!(
        (
            counters["prompt_tokens"].as_u64(),
            counters["completion_tokens"].as_u64()
        ),
        (Some(4), Some(6)),
        "{counters}"
    );
    let r = post(
        &gw,
        "/v1/completions",
        &serde_json::json!({"model": "anth/claude", "prompt": "x"}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "unsupported_operation")
    );
}
