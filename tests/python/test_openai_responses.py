"""The official `openai` Python SDK's Responses API (`client.responses.create`, plain and streamed,
`responses.stream` and `responses.parse`) through the gateway to every provider kind: an `openai`
provider with the Responses API (the body passes through to the bench mock's `/v1/responses`), an
`openai` provider with `responses = false`, an `anthropic` and a `gemini` provider (translated to
the bench mock's Chat Completions, Messages and Gemini API: Gemini's signed function calls carry
their `thoughtSignature` in the `call_id`, which the mock requires back), and the built-in mock."""

import json

import openai
import pydantic
import pytest

from conftest import TOOL_TEXT, mock_stats

# The model of each provider kind.
KINDS = {
    "openai": "up/gpt-test",
    "openai_chat": "upchat/gpt-test",
    "anthropic": "anth/claude-test",
    "gemini": "gem/gemini-test",
    "mock": "mock/echo",
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
# A hosted tool, as Codex sends one: passed on to OpenAI, dropped for every other provider.
WEB_SEARCH = {"type": "web_search"}


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=f"http://{gateway['api']}/v1", api_key="client-key", max_retries=0, timeout=10)


@pytest.mark.parametrize("kind", KINDS)
def test_plain(client, kind):
    raw = client.responses.with_raw_response.create(
        model=KINDS[kind], instructions="be brief", input="hello responses"
    )
    resp = raw.parse()
    assert isinstance(resp, openai.types.responses.Response)
    assert resp.object == "response" and resp.id.startswith("resp_"), resp
    assert resp.status == "completed"
    assert resp.output_text == "mock: hello responses"
    assert resp.output[0].type == "message" and resp.output[0].role == "assistant"
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert raw.headers["x-deepintshield-provider"] == KINDS[kind].split("/")[0]


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_event_sequence(client, kind):
    stream = client.responses.create(model=KINDS[kind], input="stream this please", stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"], types
    assert types[-1] == "response.completed", types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "mock: stream this please"
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done[0].item.content[0].text == text
    final = events[-1].response
    assert final.status == "completed" and final.output_text == text
    assert final.id == events[0].response.id
    assert final.usage.output_tokens > 0


def function_calls(resp):
    return [item for item in resp.output if item.type == "function_call"]


@pytest.mark.parametrize("kind", KINDS)
def test_function_tool_round_trip(client, kind):
    model = KINDS[kind]
    history = [{"role": "user", "content": "use tool get_weather please"}]
    first = client.responses.create(model=model, input=history, tools=[WEATHER, WEB_SEARCH])
    [call] = function_calls(first)
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": TOOL_TEXT}
    assert call.call_id
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny"})
    second = client.responses.create(model=model, input=history, tools=[WEATHER, WEB_SEARCH])
    assert second.output_text == "mock: tool result: sunny"
    assert not function_calls(second)


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_function_tool_round_trip(client, kind):
    model = KINDS[kind]
    history = [{"role": "user", "content": "use tool get_weather"}]
    with client.responses.stream(model=model, input=history, tools=[WEATHER]) as stream:
        args = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        first = stream.get_final_response()
    [call] = function_calls(first)
    assert json.loads(args) == json.loads(call.arguments) == {"city": TOOL_TEXT}
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "rain"})
    with client.responses.stream(model=model, input=history, tools=[WEATHER]) as stream:
        second = stream.get_final_response()
    assert second.output_text == "mock: tool result: rain"


class Weather(pydantic.BaseModel):
    city: str


@pytest.mark.parametrize("kind", KINDS)
def test_structured_output_parse(client, kind):
    resp = client.responses.parse(model=KINDS[kind], input="the weather as JSON", text_format=Weather)
    assert resp.output_parsed == Weather(city=TOOL_TEXT), resp.output_text


@pytest.mark.parametrize("kind", KINDS)
def test_previous_response_id_is_refused(client, kind):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=KINDS[kind], input="next turn", previous_response_id="resp_123")
    assert e.value.status_code == 400
    assert e.value.code == "previous_response_id_unsupported"
    assert "no conversation state" in e.value.message


def test_each_openai_provider_gets_the_api_it_has(client, gateway):
    before = mock_stats(gateway)
    client.responses.create(model=KINDS["openai"], input="to the responses api")
    after = mock_stats(gateway)
    assert after["responses_requests"] - before["responses_requests"] == 1
    assert after["last_model"] == "gpt-test"
    client.responses.create(model=KINDS["openai_chat"], input="to chat completions")
    last = mock_stats(gateway)
    assert last["responses_requests"] == after["responses_requests"]
    assert last["requests"] - after["requests"] == 1
    assert last["messages_requests"] == after["messages_requests"]


@pytest.mark.parametrize("kind", ["openai", "openai_chat", "anthropic"])
def test_mid_stream_failure_reaches_the_sdk(client, kind):
    model = KINDS[kind].split("/")[0] + "/chunks-8-failafter-2"
    stream = client.responses.create(model=model, input="this stream fails", stream=True)
    seen = []
    with pytest.raises(openai.APIError) as e:
        for event in stream:
            seen.append(event.type)
    assert "mock: injected mid-stream failure" in e.value.message or "Overloaded" in e.value.message, e.value
    assert seen[0] == "response.created" and "response.completed" not in seen


@pytest.mark.parametrize("kind", ["openai", "openai_chat", "anthropic"])
def test_upstream_error_status_reaches_the_sdk(client, kind):
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=KINDS[kind].split("/")[0] + "/status-429", input="x")


@pytest.mark.parametrize("streamed", [False, True])
def test_anthropic_thinking_survives_the_tool_round_trip(client, gateway, streamed):
    """With extended thinking on (`reasoning.effort`), the bench mock answers a signed thinking
    block before its tool call and, as Anthropic does, refuses the tool result's turn unless the
    assistant turn starts with that block, signature intact. The client asks for
    `reasoning.encrypted_content` and sends the reasoning item back: the gateway's envelope in it
    carries the signature to Anthropic and back."""
    model = KINDS["anthropic"]
    history = [{"role": "user", "content": "use tool get_weather please"}]
    asked = dict(tools=[WEATHER], reasoning={"effort": "high"}, include=["reasoning.encrypted_content"])

    def create(**kw):
        if not streamed:
            return client.responses.create(model=model, input=history, **asked, **kw)
        with client.responses.stream(model=model, input=history, **asked, **kw) as stream:
            return stream.get_final_response()

    first = create()
    assert [item.type for item in first.output] == ["reasoning", "function_call"], first.output
    reasoning = first.output[0]
    assert reasoning.summary[0].text == "mock: thinking about the request"
    assert reasoning.encrypted_content.startswith("deepintshield:v1:")
    [call] = function_calls(first)
    turn = [item.model_dump(exclude_none=True) for item in first.output]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}

    # Without the reasoning state, Anthropic's refusal reaches the SDK.
    lost = [dict(item, encrypted_content=None) if item["type"] == "reasoning" else item for item in turn]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, input=history + lost + [result], **asked)
    assert "Expected `thinking` or `redacted_thinking`" in e.value.message

    history += turn + [result]
    second = create()
    assert second.output_text == "mock: tool result: sunny"
    sent = mock_stats(gateway)["last_body"]["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["thinking", "tool_use"], sent


def test_reasoning_state_only_when_asked(client):
    resp = client.responses.create(
        model=KINDS["anthropic"], input="use tool get_weather", tools=[WEATHER], reasoning={"effort": "low"}
    )
    assert resp.output[0].type == "reasoning"
    assert resp.output[0].encrypted_content is None
