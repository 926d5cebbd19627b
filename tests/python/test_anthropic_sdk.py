"""The official `anthropic` Python SDK, unchanged, against the gateway's Anthropic Messages API, on
each provider kind: an `anthropic` provider (passthrough to the bench mock's Messages API), an
`openai` provider (translated to the bench mock's Chat Completions) and the built-in mock."""

import json

import anthropic
import httpx
import pytest

from conftest import MODELS, TOOL_TEXT, UPSTREAM_KEY, mock_stats

KINDS = list(MODELS)

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"],
    },
}


@pytest.fixture()
def client(gateway):
    return anthropic.Anthropic(
        base_url=f"http://{gateway['api']}", api_key="client-key", max_retries=0, timeout=10
    )


def upstream_model(model):
    return model.split("/", 1)[1]


def raw_stream(gateway, body, path="/v1/messages"):
    """POST a streamed request and read the SSE as sent: (response, [(event name, data)])."""
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "client-key"}
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", f"http://{gateway['api']}{path}", json=body, headers=headers) as r:
            lines = list(r.iter_lines())
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
            name = None
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return r, events


def check_sequence(events, block_type):
    """Anthropic's stream shape: message_start, one content block (start, deltas, stop),
    message_delta, message_stop; each `event:` name is its data's `type`. `ping`s may come
    anywhere after message_start. Returns (start message, content block start, deltas,
    message_delta)."""
    for name, data in events:
        assert name == data["type"], (name, data)
    names = [n for n, _ in events]
    assert names[0] == "message_start", names
    body = [(n, d) for n, d in events if n != "ping"]
    kinds = [n for n, _ in body]
    deltas = kinds.count("content_block_delta")
    assert deltas >= 1, kinds
    assert kinds == (
        ["message_start", "content_block_start"]
        + ["content_block_delta"] * deltas
        + ["content_block_stop", "message_delta", "message_stop"]
    ), kinds
    start, block_start = body[0][1]["message"], body[1][1]
    assert (start["type"], start["role"], start["content"]) == ("message", "assistant", [])
    assert start["id"].startswith("msg_")
    assert block_start["index"] == 0 and block_start["content_block"]["type"] == block_type
    assert all(d["index"] == 0 for n, d in body if n.startswith("content_block_"))
    return start, block_start["content_block"], [d["delta"] for _, d in body[2 : 2 + deltas]], body[-2][1]


def check_stream_usage(start, message_delta):
    """Output tokens in message_delta; input tokens in message_start (Anthropic) or in
    message_delta (a translated OpenAI stream, whose usage comes last)."""
    assert message_delta["usage"]["output_tokens"] > 0, message_delta
    input_tokens = max(start["usage"].get("input_tokens", 0), message_delta["usage"].get("input_tokens", 0))
    assert input_tokens > 0, (start, message_delta)


@pytest.mark.parametrize("kind", KINDS)
def test_messages_create(client, kind):
    model = MODELS[kind]
    raw = client.messages.with_raw_response.create(
        model=model,
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": "Hello Anthropic SDK"}],
    )
    msg = raw.parse()
    assert isinstance(msg, anthropic.types.Message)
    assert (msg.type, msg.role, msg.model) == ("message", "assistant", upstream_model(model))
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "mock: Hello Anthropic SDK"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert raw.headers["x-deepintshield-provider"] == model.split("/")[0]
    assert raw.headers["request-id"] == raw.headers["x-request-id"]


@pytest.mark.parametrize("kind", KINDS)
def test_messages_stream_text(client, gateway, kind):
    model = MODELS[kind]
    with client.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "stream me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock: stream me"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0

    body = {"model": model, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "raw"}]}
    r, events = raw_stream(gateway, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    start, block, deltas, message_delta = check_sequence(events, "text")
    assert start["model"] == upstream_model(model)
    assert block["text"] == ""
    assert all(d["type"] == "text_delta" for d in deltas)
    assert "".join(d["text"] for d in deltas) == "mock: raw"
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    check_stream_usage(start, message_delta)


@pytest.mark.parametrize("kind", KINDS)
def test_messages_stream_tool_use(client, gateway, kind):
    model = MODELS[kind]
    with client.messages.stream(
        model=model,
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "use tool get_weather"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["tool_use"]
    call = final.content[0]
    assert call.name == "get_weather" and call.id
    assert call.input == {"city": TOOL_TEXT}

    body = {
        "model": model,
        "max_tokens": 64,
        "stream": True,
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "please use tool get_weather"}],
    }
    _, events = raw_stream(gateway, body)
    start, block, deltas, message_delta = check_sequence(events, "tool_use")
    assert block["name"] == "get_weather" and block["id"] and block["input"] == {}
    assert all(d["type"] == "input_json_delta" for d in deltas)
    assert json.loads("".join(d["partial_json"] for d in deltas)) == {"city": TOOL_TEXT}
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    check_stream_usage(start, message_delta)


@pytest.mark.parametrize("kind", KINDS)
def test_tool_use_round_trip(client, kind):
    model = MODELS[kind]
    messages = [{"role": "user", "content": "What is the weather in Paris? use tool get_weather"}]
    first = client.messages.create(model=model, max_tokens=64, tools=[WEATHER_TOOL], messages=messages)
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert (call.name, call.input) == ("get_weather", {"city": TOOL_TEXT})
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}],
        },
    ]
    final = client.messages.create(model=model, max_tokens=64, tools=[WEATHER_TOOL], messages=messages)
    assert final.stop_reason == "end_turn"
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == "mock: tool result: sunny, 21 C"
    assert final.usage.input_tokens > first.usage.input_tokens


@pytest.mark.parametrize("kind", KINDS)
def test_count_tokens(client, gateway, kind):
    model = MODELS[kind]
    before = mock_stats(gateway)["count_tokens_requests"]

    def count(text):
        raw = client.messages.with_raw_response.count_tokens(
            model=model, system="be brief", messages=[{"role": "user", "content": text}]
        )
        return raw.parse().input_tokens, raw.headers

    short, headers = count("count these tokens")
    long, _ = count("count these tokens " * 40)
    assert 0 < short < long
    asked = mock_stats(gateway)["count_tokens_requests"] - before
    if kind == "anthropic":
        # The provider's own endpoint, asked twice; its answer is not an estimate.
        assert asked == 2
        assert "x-deepintshield-estimate" not in headers
    else:
        assert asked == 0
        assert headers["x-deepintshield-estimate"] == "token-count"


def test_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nope/x", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    body = e.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "nope/x" in body["error"]["message"]
    assert e.value.response.headers["request-id"]


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_overloaded_upstream_after_the_gateways_retries(client, gateway, kind):
    # The gateway's default max_retries is 2: three attempts, then the last answer is passed on.
    model = MODELS[kind].split("/")[0] + "/status-529"
    before = mock_stats(gateway)["requests"]
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 529
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "overloaded_error"
    assert e.value.response.headers["x-deepintshield-provider"] == model.split("/")[0]
    assert mock_stats(gateway)["requests"] - before == 3


@pytest.mark.parametrize("path", ["/v1/messages", "/anthropic/v1/messages", "/v1/messages/count_tokens"])
def test_bad_json_is_an_invalid_request_error(gateway, path):
    r = httpx.post(
        f"http://{gateway['api']}{path}",
        content=b'{"model": "anth/claude-test", "messages": [',
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
        timeout=10,
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]
    assert r.headers["request-id"]


def test_models_list_and_retrieve(client):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert {"gpt-4o-mini", "mock/gpt-4o-mini", "mock/echo"} <= set(ids)
    assert all(m.type == "model" and m.display_name and m.created_at for m in page.data)
    assert page.has_more is False
    assert (page.first_id, page.last_id) == (ids[0], ids[-1])
    info = client.models.retrieve("mock/echo")
    assert (info.id, info.type) == ("mock/echo", "model")


def test_anthropic_prefix(gateway):
    client = anthropic.Anthropic(
        base_url=f"http://{gateway['api']}/anthropic", api_key="client-key", max_retries=0, timeout=10
    )
    msg = client.messages.create(
        model=MODELS["anthropic"], max_tokens=16, messages=[{"role": "user", "content": "prefixed"}]
    )
    assert msg.content[0].text == "mock: prefixed"
    count = client.messages.count_tokens(model=MODELS["mock"], messages=[{"role": "user", "content": "x"}])
    assert count.input_tokens > 0
    assert "mock/echo" in [m.id for m in client.models.list()]


def test_beta_messages_pass_headers_to_an_anthropic_provider(client, gateway):
    raw = client.beta.messages.with_raw_response.create(
        model=MODELS["anthropic"],
        max_tokens=16,
        betas=["context-management-2025-06-27", "interleaved-thinking-2025-05-14"],
        messages=[{"role": "user", "content": "beta"}],
        # Claude Code sends `?beta=true`; this SDK version does not.
        extra_query={"beta": "true"},
    )
    sent = raw.http_request
    assert sent.url.params.get("beta") == "true"
    assert raw.parse().content[0].text == "mock: beta"
    seen = mock_stats(gateway)
    assert seen["last_model"] == "claude-test"
    # The provider's key, never the client's; the client's version and betas.
    assert seen["last_api_key"] == UPSTREAM_KEY
    headers = seen["last_headers"]
    assert "client-key" not in json.dumps(headers)
    assert headers["anthropic-version"] == sent.headers["anthropic-version"]
    assert headers["anthropic-beta"] == "context-management-2025-06-27,interleaved-thinking-2025-05-14"
    assert headers["x-request-id"] == raw.headers["x-request-id"]


def test_rate_limited_upstream_keeps_its_retry_after(client):
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(
            model="anth/status-429", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert e.value.response.headers["retry-after"] == "1"


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_a_mid_stream_failure_ends_with_an_error_event(client, gateway, kind):
    # The bench mock sends 3 content chunks, then its API's error event.
    model = MODELS[kind].split("/")[0] + "/chunks-8-failafter-3"
    messages = [{"role": "user", "content": "a long enough answer to cut"}]
    body = {"model": model, "max_tokens": 64, "stream": True, "messages": messages}
    r, events = raw_stream(gateway, body)
    assert r.status_code == 200
    names = [n for n, _ in events if n != "ping"]
    assert names[:2] == ["message_start", "content_block_start"], names
    assert names[2:5] == ["content_block_delta"] * 3, names
    assert names[-1] == "error" and "message_stop" not in names, names
    error = events[-1][1]
    assert error["type"] == "error" and error["error"]["type"] and error["error"]["message"]

    received = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model=model, max_tokens=64, messages=messages) as stream:
            for text in stream.text_stream:
                received.append(text)
    assert received, "the text before the failure arrived"
    assert e.value.body["type"] == "error"
    assert "mid-stream failure" in e.value.body["error"]["message"]
