"""The official `openai` and `anthropic` Python SDKs, unchanged, against Google providers: a
`gemini` provider (Google AI Studio, `x-goog-api-key`) and `vertex` providers (service-account
OAuth2 tokens from the mock's token endpoint) on the bench mock's Gemini endpoints. The gateway
translates Chat Completions and Messages to `generateContent` and back, embeddings to
`batchEmbedContents` / `predict`."""

import json
import time

import anthropic
import openai
import pytest

from conftest import MODELS, TOKEN_TTL_S, TOOL_TEXT, UPSTREAM_KEY, mock_stats

GOOGLE = [MODELS["gemini"], MODELS["vertex"]]

# A strict tool as pydantic and the openai SDK write it: `additionalProperties` and `$schema`,
# which Gemini refuses, must be left out by the gateway.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "strict": True,
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": False,
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 3}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=f"http://{gateway['api']}/v1", api_key="client-key", max_retries=0, timeout=20)


@pytest.fixture()
def claude(gateway):
    return anthropic.Anthropic(base_url=f"http://{gateway['api']}", api_key="client-key", max_retries=0, timeout=20)


@pytest.mark.parametrize("model", GOOGLE)
def test_plain(client, gateway, model):
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello Gemini"}],
    )
    resp = raw.parse()
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.choices[0].message.content == "mock: Hello Gemini"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    provider = model.split("/")[0]
    assert raw.headers["x-deepintshield-provider"] == provider
    seen = mock_stats(gateway)
    assert seen["last_model"] == "gemini-test"
    if provider == "gem":
        assert seen["last_goog_api_key"] == UPSTREAM_KEY
        assert seen["last_authorization"] == ""
    else:
        # A token of the service account, never the client's key.
        assert seen["last_authorization"].startswith("Bearer ya29.mock")
        assert seen["last_goog_api_key"] == ""


@pytest.mark.parametrize("model", GOOGLE)
def test_streaming_with_usage(client, model):
    messages = [{"role": "user", "content": "stream with usage"}]
    whole = client.chat.completions.create(model=model, messages=messages)
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "mock: stream with usage"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    with_usage = [c for c in chunks if c.usage]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    plain = list(client.chat.completions.create(model=model, messages=messages, stream=True))
    assert not [c for c in plain if c.usage]


@pytest.mark.parametrize("model", GOOGLE)
def test_tool_round_trip(client, model):
    messages = [{"role": "user", "content": "Weather in Paris? use tool get_weather"}]
    resp = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": TOOL_TEXT, "days": 3}
    # Gemini's thoughtSignature rides in the id; the mock refuses the next turn without it.
    assert "__sig_" in call.id
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    final = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "mock: tool result: sunny"


@pytest.mark.parametrize("model", GOOGLE)
def test_streamed_tool_round_trip(client, model):
    messages = [{"role": "user", "content": "use tool get_weather"}]
    stream = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True}
    )
    calls, finishes, usage = {}, [], None
    for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
        for d in chunk.choices[0].delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            c["id"] = d.id or c["id"]
            if d.function:
                c["name"] = d.function.name or c["name"]
                c["arguments"] += d.function.arguments or ""
    assert finishes == ["tool_calls"] and usage and usage.prompt_tokens > 0
    (call,) = calls.values()
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": TOOL_TEXT, "days": 3}
    messages += [
        {
            "role": "assistant",
            "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "rain"},
    ]
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], stream=True)
        if c.choices
    )
    assert text == "mock: tool result: rain"


def test_anthropic_messages_create_and_stream(claude):
    model = MODELS["gemini"]
    msg = claude.messages.create(
        model=model, max_tokens=100, system="be brief", messages=[{"role": "user", "content": "Hi from Claude"}]
    )
    assert msg.type == "message" and msg.id.startswith("msg_")
    assert msg.content[0].type == "text" and msg.content[0].text == "mock: Hi from Claude"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    with claude.messages.stream(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "stream it"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock: stream it"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_anthropic_tool_round_trip(claude):
    model = MODELS["gemini"]
    tools = [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    messages = [{"role": "user", "content": "use tool get_weather for Paris"}]
    msg = claude.messages.create(model=model, max_tokens=100, tools=tools, messages=messages)
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": TOOL_TEXT, "days": 3}
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "cloudy"}]},
    ]
    with claude.messages.stream(model=model, max_tokens=100, tools=tools, messages=messages) as stream:
        text = "".join(stream.text_stream)
    assert text == "mock: tool result: cloudy"


@pytest.mark.parametrize("model", [MODELS["gemini"], "vtx/text-embedding-005"])
def test_embeddings(client, model):
    raw = client.embeddings.with_raw_response.create(model=model, input=["hello", "world"], dimensions=8)
    resp = raw.parse()
    assert [d.index for d in resp.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in resp.data)
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0
    # AI Studio gives no token count: the gateway estimates it and says so.
    estimated = raw.headers.get("x-deepintshield-estimate")
    assert estimated == ("embedding-tokens" if model.startswith("gem/") else None)


def test_vertex_token_is_refreshed_when_it_expires(client, gateway):
    account = "vtx2@mock-project.iam.gserviceaccount.com"

    def token_requests():
        return mock_stats(gateway)["google_token_requests"].get(account, 0)

    assert token_requests() == 0
    client.chat.completions.create(model="vtx2/gemini-test", messages=[{"role": "user", "content": "one"}])
    assert token_requests() == 1
    client.chat.completions.create(model="vtx2/gemini-test", messages=[{"role": "user", "content": "two"}])
    assert token_requests() == 1, "a live token is reused"
    time.sleep(TOKEN_TTL_S + 1)
    resp = client.chat.completions.create(model="vtx2/gemini-test", messages=[{"role": "user", "content": "three"}])
    assert resp.choices[0].message.content == "mock: three"
    assert token_requests() == 2


def test_token_endpoint_failure_is_a_clean_502(client, claude, gateway):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="vtxbad/gemini-test", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502
    err = e.value.body
    assert err["code"] == "upstream_auth_failed"
    assert "invalid_grant" in err["message"]
    assert "PRIVATE KEY" not in json.dumps(err) and "ya29" not in json.dumps(err)
    with pytest.raises(anthropic.APIStatusError) as e:
        claude.messages.create(model="vtxbad/gemini-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "api_error"
    assert mock_stats(gateway)["google_token_requests"].get("refused", 0) >= 1


def test_safety_stop_is_content_filter(client, claude):
    model = "gem/gemini-safety"
    resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "something bad"}])
    assert resp.choices[0].finish_reason == "content_filter"
    assert not resp.choices[0].message.content
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["content_filter"]
    msg = claude.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "something bad"}])
    assert msg.stop_reason == "refusal"


def test_blocked_prompt_is_a_clear_error(client, claude):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gem/gemini-blocked", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "content_filter"
    assert "blockReason SAFETY" in e.value.body["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="vtx/gemini-blocked", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_google_errors_reach_the_client_in_its_shape(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gem/status-404", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["message"] == "mock: injected status 404"
    assert e.value.body["code"] == "NOT_FOUND"
