"""The official `openai` Python SDK, unchanged, against the gateway."""

import openai
import pytest

from conftest import UPSTREAM_KEY, mock_stats


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=f"http://{gateway['api']}/v1", api_key="client-key", max_retries=0, timeout=10)


def test_chat_completion_through_builtin_mock(client):
    resp = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello SDK"}],
    )
    assert isinstance(resp, openai.types.chat.ChatCompletion)
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "mock: Hello SDK"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_completion_through_openai_provider(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="up/gpt-upstream",
        messages=[{"role": "user", "content": "via upstream"}],
        temperature=0.1,
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "mock: via upstream"
    assert raw.headers["x-deepintshield-provider"] == "up"
    assert raw.headers["x-request-id"]
    stats = mock_stats(gateway)
    assert stats["last_authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert stats["last_model"] == "gpt-upstream"


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "mock/gpt-4o-mini", "mock/echo"} <= ids


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope/x", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"


def test_upstream_error_status_reaches_the_sdk(client):
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="up/status-429", messages=[{"role": "user", "content": "x"}])


def test_streaming_chunks_arrive_as_they_are_generated(client):
    import time

    stream = client.chat.completions.create(
        model="up/chunks-5-chunkdelay-200",
        messages=[{"role": "user", "content": "count to five"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    content, usage, arrivals = "", None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices and chunk.choices[0].delta.content:
            content += chunk.choices[0].delta.content
            arrivals.append(time.monotonic())
        if chunk.usage:
            usage = chunk.usage
    assert content == "mock: count to five"
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # One chunk every 200 ms upstream: they must reach the SDK spread out, not at the end.
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] >= 0.5, arrivals
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= 0.1, gaps


def test_streaming_through_builtin_mock(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "mock: hi"
