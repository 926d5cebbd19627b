"""The official `openai` Python SDK, unchanged, against an `anthropic` provider (the bench mock's
Messages API): the gateway translates Chat Completions to Messages and the answers back."""

import json

import openai
import pydantic
import pytest

from conftest import MODELS, TOOL_TEXT, UPSTREAM_KEY, mock_stats

MODEL = MODELS["anthropic"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 3}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=f"http://{gateway['api']}/v1", api_key="client-key", max_retries=0, timeout=10)


def test_plain(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello Claude"}],
    )
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "claude-test"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "mock: Hello Claude"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert raw.headers["x-deepintshield-provider"] == "anth"
    seen = mock_stats(gateway)
    assert seen["last_model"] == "claude-test"
    # Anthropic's authentication and version header, the provider's key, not the client's.
    assert seen["last_api_key"] == UPSTREAM_KEY
    assert seen["last_authorization"] == ""
    assert seen["last_headers"]["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in seen["last_headers"]


def test_streaming_with_usage(client):
    messages = [{"role": "user", "content": "stream with usage"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "mock: stream with usage"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    # One usage chunk, last, with no choices; the same numbers as the whole answer's.
    with_usage = [c for c in chunks if c.usage]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    # Without include_usage, no usage chunk.
    plain = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert not [c for c in plain if c.usage]
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == content


def test_tool_calls(client):
    messages = [{"role": "user", "content": "Weather in Paris? use tool get_weather"}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    # The bench mock fills required properties: strings with its tool text, integers with their minimum.
    assert json.loads(call.function.arguments) == {"city": TOOL_TEXT, "days": 3}

    # The round trip: the tool's result goes back, the model answers with text.
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "mock: tool result: sunny"


def test_streamed_tool_calls(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "use tool get_weather"}],
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    ids, names, arguments, finishes, usage = set(), set(), [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
        for call in choice.delta.tool_calls or []:
            assert call.index == 0
            if call.id:
                ids.add(call.id)
            if call.function and call.function.name:
                names.add(call.function.name)
            if call.function and call.function.arguments:
                arguments.append(call.function.arguments)
    assert len(ids) == 1 and names == {"get_weather"}
    assert len(arguments) > 1, "arguments are streamed in pieces"
    assert json.loads("".join(arguments)) == {"city": TOOL_TEXT, "days": 3}
    assert finishes == ["tool_calls"]
    assert usage and usage.prompt_tokens > 0 and usage.completion_tokens > 0


class Weather(pydantic.BaseModel):
    city: str
    temperature: int
    sunny: bool


def test_structured_output_parse(client):
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "The weather in Paris, as JSON."}],
        response_format=Weather,
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert message.tool_calls is None
    # Built by the bench mock from the schema: strings its tool text, integers 1, booleans true.
    assert message.parsed == Weather(city=TOOL_TEXT, temperature=1, sunny=True)
    assert json.loads(message.content) == message.parsed.model_dump()
