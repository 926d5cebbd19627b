"""The official `openai` SDK's embeddings and legacy completions through the gateway: embeddings
(float and base64) from the built-in mock and from an `openai` provider (the bench mock), legacy
`completions.create` plain and streamed to an `openai` provider, and the 404 where a provider has
no such endpoint."""

import base64
import math
import struct

import openai
import pytest

from conftest import MODELS, mock_stats


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=f"http://{gateway['api']}/v1", api_key="client-key", max_retries=0, timeout=10)


@pytest.mark.parametrize("model", ["mock/text-embedding-3-small", "up/text-embedding-3-small"])
def test_embeddings_float_and_base64(client, model):
    texts = ["the quick brown fox", "jumps over", "the quick brown fox"]
    floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
    # The SDK asks for base64 by default and decodes it itself.
    b64 = client.embeddings.create(model=model, input=texts)
    assert floats.object == "list" and len(floats.data) == 3
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert floats.usage.prompt_tokens > 0
    for f, b in zip(floats.data, b64.data):
        assert len(f.embedding) == len(b.embedding) > 0
        assert all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(f.embedding, b.embedding))
        assert math.isclose(sum(x * x for x in f.embedding), 1.0, rel_tol=1e-4)
    # Deterministic: equal texts, equal vectors; different texts, different ones.
    assert floats.data[0].embedding == floats.data[2].embedding
    assert floats.data[0].embedding != floats.data[1].embedding


def test_embeddings_dimensions_and_raw_base64(client, gateway):
    raw = client.embeddings.with_raw_response.create(
        model="up/text-embedding-3-small", input="hello", dimensions=16, encoding_format="base64"
    )
    body = raw.http_response.json()
    vector = base64.b64decode(body["data"][0]["embedding"])
    assert len(vector) == 16 * 4
    assert math.isclose(sum(x * x for x in struct.unpack("<16f", vector)), 1.0, rel_tol=1e-4)
    seen = mock_stats(gateway)
    assert seen["last_path"] == "/v1/embeddings"
    assert seen["last_body"]["dimensions"] == 16


def test_legacy_completion_plain(client, gateway):
    resp = client.completions.create(model="up/gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=7)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == "mock: Say this is a test"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    seen = mock_stats(gateway)
    assert seen["last_path"] == "/v1/completions"
    assert seen["last_body"]["max_tokens"] == 7
    assert seen["last_model"] == "gpt-3.5-turbo-instruct"


@pytest.mark.parametrize("include_usage", [False, True])
def test_legacy_completion_streamed(client, include_usage):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client.completions.create(model="up/chunks-4-instruct", prompt="stream me", stream=True, **kwargs)
    text, usage, finish = "", None, None
    for chunk in stream:
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            text += c.text
            finish = c.finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "mock: stream me"
    assert finish == "stop"
    assert (usage is not None) == include_usage
    if usage:
        assert usage.completion_tokens > 0


@pytest.mark.parametrize("model", [MODELS["mock"], MODELS["anthropic"]])
def test_legacy_completion_elsewhere_is_404(client, model):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model=model, prompt="x")
    assert e.value.code == "unsupported_operation"
