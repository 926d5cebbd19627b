"""Azure OpenAI and OpenAI-compatible presets behind the gateway, driven by the official SDKs: the
clients speak OpenAI (or Anthropic) to the gateway, the gateway speaks Azure to the bench mock
(deployment routes with the deployment map and api-key, the v1 API with Entra ID tokens from the
mock's token endpoint, refreshed before they expire) or a preset's OpenAI dialect. Responses
clients (the openai SDK, Codex CLI) pass through to Azure's Responses API on both of its URL
shapes."""

import json
import os
import time

import anthropic
import openai
import pytest

from conftest import TOOL_TEXT, mock_stats, running_gateway, start_mock

AZ_KEY = "azure-sdk-key-0123456789"
PRESET_KEY = "preset-sdk-key-0123"
# Tokens from the mock's endpoint live this long; the gateway replaces them after half of it.
TOKEN_LIFETIME_S = 2

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def azure_env():
    mock, m = start_mock("--tool-text", TOOL_TEXT, "--token-expires-s", str(TOKEN_LIFETIME_S))
    config = f"""
[providers.az]
type = "azure"
keys = [{{ key = "env:AZ_KEY" }}]
max_retries = 0

[providers.az.azure]
endpoint = "http://{m}"
deployments = {{ "gpt-4o" = "prod-4o", "text-embedding-3-small" = "embed-small" }}

[providers.azv1]
type = "azure"

[providers.azv1.azure]
endpoint = "http://{m}"
api_style = "v1"
deployments = {{ "gpt-4o" = "v1-gpt4o" }}
auth = "entra"
tenant = "env:AZ_TENANT"
client_id = "env:AZ_CLIENT_ID"
client_secret = "env:AZ_CLIENT_SECRET"
token_url = "http://{m}/entra/{{tenant}}/oauth2/v2.0/token"

[providers.groq]
type = "openai"
preset = "groq"
base_url = "http://{m}/v1"
keys = [{{ key = "env:PRESET_KEY" }}]

[providers.mistral]
type = "openai"
preset = "mistral"
base_url = "http://{m}/v1"
keys = [{{ key = "env:PRESET_KEY" }}]
"""
    env = {
        "AZ_KEY": AZ_KEY,
        "AZ_TENANT": "contoso",
        "AZ_CLIENT_ID": "sdk-client",
        "AZ_CLIENT_SECRET": "sdk-client-secret",
        "PRESET_KEY": PRESET_KEY,
    }
    # The SDKs send a placeholder key: these tests are about the provider, not client keys.
    try:
        with running_gateway(config, env) as (api, _):
            yield {"api": api, "mock": m}
    finally:
        mock.stop()


@pytest.fixture()
def client(azure_env):
    return openai.OpenAI(base_url=f"http://{azure_env['api']}/v1", api_key="client-key", max_retries=0, timeout=10)


def test_chat_to_azure_deployment(client, azure_env):
    resp = client.chat.completions.create(model="az/gpt-4o", messages=[{"role": "user", "content": "Hello Azure"}])
    assert resp.choices[0].message.content == "mock: Hello Azure"
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    seen = mock_stats(azure_env)
    assert seen["last_path"] == "/openai/deployments/prod-4o/chat/completions"
    assert seen["last_azure_deployment"] == "prod-4o"
    assert seen["last_azure_api_version"] == "2024-10-21"
    assert seen["last_azure_api_key"] == AZ_KEY
    # The client's key never goes upstream.
    assert seen["last_authorization"] == ""


def test_stream_to_azure_v1_with_an_entra_token(client, azure_env):
    stream = client.chat.completions.create(
        model="azv1/gpt-4o",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == "mock: stream please"
    assert usage is not None and usage.completion_tokens > 0
    seen = mock_stats(azure_env)
    assert seen["last_path"] == "/openai/v1/chat/completions"
    assert seen["last_model"] == "v1-gpt4o"
    assert seen["last_authorization"].startswith("Bearer mocktoken-")
    assert seen["last_token_request"] == {
        "tenant": "contoso",
        "client_id": "sdk-client",
        "scope": "https://cognitiveservices.azure.com/.default",
    }


def test_tool_round_trip_through_azure(client):
    messages = [{"role": "user", "content": "use tool get_weather for Paris"}]
    resp = client.chat.completions.create(model="az/gpt-4o", messages=messages, tools=[WEATHER_TOOL])
    call = resp.choices[0].message.tool_calls[0]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": TOOL_TEXT}
    messages += [resp.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    final = client.chat.completions.create(model="az/gpt-4o", messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == "mock: tool result: sunny"


def test_embeddings_to_azure(client, azure_env):
    floats = client.embeddings.create(model="az/text-embedding-3-small", input=["a", "b"], encoding_format="float")
    b64 = client.embeddings.create(model="az/text-embedding-3-small", input=["a", "b"])
    assert [len(d.embedding) for d in floats.data] == [8, 8]
    assert floats.data[0].embedding == pytest.approx(b64.data[0].embedding)
    seen = mock_stats(azure_env)
    assert seen["last_path"] == "/openai/deployments/embed-small/embeddings"


def test_entra_token_refreshed_before_it_expires(client, azure_env):
    first = mock_stats(azure_env)["token_requests"]
    deadline = time.monotonic() + 4 * TOKEN_LIFETIME_S
    while mock_stats(azure_env)["token_requests"] <= first:
        assert time.monotonic() < deadline, "the token was never refreshed"
        resp = client.chat.completions.create(model="azv1/gpt-4o", messages=[{"role": "user", "content": "tick"}])
        assert resp.choices[0].message.content == "mock: tick"
        time.sleep(0.1)
    seen = mock_stats(azure_env)
    assert seen["last_authorization"] == f"Bearer mocktoken-{seen['token_requests']}"


def test_azure_rate_limit_keeps_retry_after_ms(client):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="az/status-429-retryms-1500", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["retry-after-ms"] == "1500"
    assert e.value.response.headers["retry-after"] == "2"
    assert e.value.code == "429"


def test_groq_preset_with_its_base_url_overridden(client, azure_env):
    stream = client.chat.completions.create(
        model="groq/llama-3.3-70b-versatile", messages=[{"role": "user", "content": "fast"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "mock: fast"
    seen = mock_stats(azure_env)
    assert seen["last_path"] == "/v1/chat/completions"
    assert seen["last_authorization"] == f"Bearer {PRESET_KEY}"
    # Groq takes stream_options: the gateway asks for the usage.
    assert seen["last_body"]["stream_options"] == {"include_usage": True}


def test_mistral_preset_applies_its_settings(client, azure_env):
    stream = client.chat.completions.create(
        model="mistral/mistral-small-latest",
        messages=[{"role": "user", "content": "bonjour"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "mock: bonjour"
    assert "stream_options" not in mock_stats(azure_env)["last_body"]

    claude = anthropic.Anthropic(base_url=f"http://{azure_env['api']}", api_key="client-key", max_retries=0, timeout=10)
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    first = claude.messages.create(
        model="mistral/mistral-large-latest",
        max_tokens=100,
        tools=[tool],
        messages=[{"role": "user", "content": "use tool get_weather"}],
    )
    use = next(b for b in first.content if b.type == "tool_use")
    # Anthropic-style ids from earlier turns are rewritten to Mistral's 9 letters and digits.
    history = [
        {"role": "user", "content": "use tool get_weather"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "rain"}]},
    ]
    final = claude.messages.create(model="mistral/mistral-large-latest", max_tokens=100, tools=[tool], messages=history)
    assert final.content[0].text == "mock: tool result: rain"
    body = mock_stats(azure_env)["last_body"]
    assert body["max_tokens"] == 100 and "max_completion_tokens" not in body
    sent_id = body["messages"][1]["tool_calls"][0]["id"]
    assert len(sent_id) == 9 and sent_id.isalnum()
    assert body["messages"][2]["tool_call_id"] == sent_id


# Azure's Responses API on both URL shapes: the deployments style's `/openai/responses` (with the
# Responses API's preview api-version) and the v1 API's `/openai/v1/responses`; the deployment is
# the body's model in both, and the request passes through as the client wrote it.
AZURE_RESPONSES = [
    ("az/gpt-4o", "/openai/responses", "prod-4o"),
    ("azv1/gpt-4o", "/openai/v1/responses", "v1-gpt4o"),
]
RESPONSES_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.mark.parametrize("model, path, deployment", AZURE_RESPONSES)
def test_responses_pass_through_to_azure(client, azure_env, model, path, deployment):
    before = mock_stats(azure_env)["responses_requests"]
    resp = client.responses.create(model=model, input="Hello Azure", extra_body={"zz_future_field": [1]})
    assert resp.output_text == "mock: Hello Azure"
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    seen = mock_stats(azure_env)
    assert seen["responses_requests"] == before + 1
    assert (seen["last_path"], seen["last_model"]) == (path, deployment)
    assert seen["last_body"]["zz_future_field"] == [1]
    if model.startswith("az/"):
        assert seen["last_azure_api_version"] == "2025-04-01-preview"
        assert seen["last_azure_api_key"] == AZ_KEY
    else:
        assert seen["last_query"] == ""
        assert seen["last_authorization"].startswith("Bearer mocktoken-")


@pytest.mark.parametrize("model, path, deployment", AZURE_RESPONSES)
def test_streamed_responses_from_azure(client, azure_env, model, path, deployment):
    events = list(client.responses.create(model=model, input="stream from Azure", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "mock: stream from Azure"
    assert mock_stats(azure_env)["last_path"] == path


@pytest.mark.parametrize("model, path, deployment", AZURE_RESPONSES)
def test_responses_tool_round_trip_through_azure(client, azure_env, model, path, deployment):
    history = [{"role": "user", "content": "use tool get_weather"}]
    first = client.responses.create(model=model, input=history, tools=[RESPONSES_WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert json.loads(call.arguments) == {"city": TOOL_TEXT}
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny"})
    with client.responses.stream(model=model, input=history, tools=[RESPONSES_WEATHER]) as stream:
        second = stream.get_final_response()
    assert second.output_text == "mock: tool result: sunny"
    assert mock_stats(azure_env)["last_path"] == path


@pytest.mark.parametrize("model, path, deployment", AZURE_RESPONSES)
def test_codex_through_azure(azure_env, model, path, deployment):
    """Codex CLI's shell tool round trip with the gateway's Azure providers behind it."""
    import test_codex

    if not os.access(test_codex.CODEX, os.X_OK):
        pytest.skip(f"Codex CLI not installed at {test_codex.CODEX} (tests/run installs it)")
    assert TOOL_TEXT == "echo hello"
    before = mock_stats(azure_env)["responses_requests"]
    rc, out, err = test_codex.codex(azure_env, model, "use tool exec_command")
    assert rc == 0, (out, err)
    assert out.startswith("mock: tool result: "), (out, err)
    assert out.rstrip().endswith("Output:\nhello"), (out, err)
    seen = mock_stats(azure_env)
    # The tool call, then the answer to its result, both on Azure's Responses API.
    assert seen["responses_requests"] - before == 2
    assert (seen["last_path"], seen["last_model"]) == (path, deployment)
