"""The official `openai` and `anthropic` Python SDKs, unchanged, against `bedrock` providers: the
bench mock serves AWS Bedrock's runtime and refuses every request whose SigV4 signature (session
token included) does not verify, as AWS does. The gateway translates Chat Completions, Messages
and embeddings to Converse and InvokeModel and the answers, event streams and errors back.

Its own mock and gateway, so that the mock can require AWS signatures:
- `bed/...`: a `bedrock` provider with the right credentials;
- `badsig/...`: one whose secret access key is wrong.
"""

import base64
import json
import struct

import anthropic
import openai
import pytest

from conftest import mock_stats, running_gateway, start_mock

AKID = "AKIDSDKTEST"
SECRET = "sdk-test-secret/K7MDENG+bPxRfiCYEX"
TOKEN = "FwoGZXIvYXdzSDKTESTTOKEN//+xyz=="
REGION = "eu-central-1"
MODEL = "bed/anthropic.claude-3-5-haiku-20241022-v1:0"

LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}


@pytest.fixture(scope="module")
def bedrock_gateway():
    mock, mock_addr = start_mock(
        "--aws-access-key-id", AKID, "--aws-secret-access-key", SECRET,
        "--aws-session-token", TOKEN, "--aws-region", REGION, "--stream-chunks", "4",
    )

    def provider(name, secret_var):
        return f"""
[providers.{name}]
type = "bedrock"
base_url = "http://{mock_addr}"

[providers.{name}.breaker]
enabled = false

[providers.{name}.bedrock]
region = "{REGION}"
access_key_id = "env:SDK_AWS_AKID"
secret_access_key = "env:{secret_var}"
session_token = "env:SDK_AWS_TOKEN"
"""

    config = f"""
{provider("bed", "SDK_AWS_SECRET")}
{provider("badsig", "SDK_AWS_WRONG_SECRET")}
"""
    env = {
        "SDK_AWS_AKID": AKID,
        "SDK_AWS_SECRET": SECRET,
        "SDK_AWS_WRONG_SECRET": "not-the-secret",
        "SDK_AWS_TOKEN": TOKEN,
    }
    # The SDKs send a placeholder key: these tests are about the provider, not client keys.
    try:
        with running_gateway(config, env) as (api, _):
            yield {"api": api, "mock": mock_addr}
    finally:
        mock.stop()


def bedrock_stats(gw):
    """The bench mock's Bedrock counters."""
    return mock_stats(gw)["bedrock"]


@pytest.fixture()
def oai(bedrock_gateway):
    return openai.OpenAI(
        base_url=f"http://{bedrock_gateway['api']}/v1", api_key="unused", max_retries=0, timeout=10
    )


@pytest.fixture()
def claude(bedrock_gateway):
    return anthropic.Anthropic(
        base_url=f"http://{bedrock_gateway['api']}", api_key="unused", max_retries=0, timeout=10
    )


def test_openai_chat(oai):
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert r.choices[0].message.content == "mock: hello"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.id.startswith("chatcmpl-")


def test_openai_stream_with_usage(oai, bedrock_gateway):
    before = bedrock_stats(bedrock_gateway)["streams_completed"]
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream this"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock: stream this"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert bedrock_stats(bedrock_gateway)["streams_completed"] == before + 1


def test_openai_tool_round_trip(oai):
    messages = [{"role": "user", "content": "please use tool lookup"}]
    r = oai.chat.completions.create(model=MODEL, messages=messages, tools=[LOOKUP_TOOL])
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"query": "please use tool lookup"}
    messages.append(r.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "found 3 results"})
    r = oai.chat.completions.create(model=MODEL, messages=messages, tools=[LOOKUP_TOOL])
    assert r.choices[0].message.content == "mock: found 3 results"
    assert r.choices[0].finish_reason == "stop"

    # The same call, streamed: the arguments arrive in fragments.
    stream = oai.chat.completions.create(
        model=MODEL, messages=messages[:1], tools=[LOOKUP_TOOL], stream=True
    )
    args, name, finish = "", None, None
    for c in stream:
        for tc in c.choices[0].delta.tool_calls or []:
            name = tc.function.name or name
            args += tc.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert (name, json.loads(args), finish) == ("lookup", {"query": "please use tool lookup"}, "tool_calls")


def test_anthropic_messages_and_stream(claude):
    r = claude.messages.create(
        model=MODEL, max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "hi claude"}]
    )
    assert r.content[0].text == "mock: hi claude"
    assert r.stop_reason == "end_turn"
    assert r.usage.output_tokens > 0

    with claude.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "stream claude"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock: stream claude"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_embeddings_titan_and_cohere(oai, bedrock_gateway):
    invokes = bedrock_stats(bedrock_gateway)["invoke"]
    # The SDK asks for base64 by default and decodes it.
    r = oai.embeddings.create(
        model="bed/amazon.titan-embed-text-v2:0", input=["first text", "second"], dimensions=256
    )
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 256 for d in r.data)
    norm = sum(x * x for x in r.data[0].embedding) ** 0.5
    assert abs(norm - 1.0) < 1e-3, "Titan v2 is asked for unit vectors"
    assert r.usage.prompt_tokens > 0
    assert bedrock_stats(bedrock_gateway)["invoke"] == invokes + 2, "one Titan call per input"

    r = oai.embeddings.create(
        model="bed/cohere.embed-english-v3",
        input=["alpha", "beta", "gamma"],
        encoding_format="float",
        extra_body={"input_type": "search_query"},
    )
    assert len(r.data) == 3 and len(r.data[0].embedding) == 1024
    assert bedrock_stats(bedrock_gateway)["invoke"] == invokes + 3, "one Cohere call for all"

    raw = oai.embeddings.with_raw_response.create(
        model="bed/amazon.titan-embed-text-v2:0", input="x", encoding_format="base64", dimensions=256
    )
    b64 = json.loads(raw.text)["data"][0]["embedding"]
    assert len(struct.unpack(f"<{256}f", base64.b64decode(b64))) == 256


def test_a_wrong_secret_gets_the_upstreams_403(oai, claude, bedrock_gateway):
    rejected = bedrock_stats(bedrock_gateway)["signature_rejected"]
    with pytest.raises(openai.PermissionDeniedError) as e:
        oai.chat.completions.create(
            model="badsig/anthropic.claude-x", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["type"] == "InvalidSignatureException"
    assert "signature" in e.value.body["message"]
    assert "not-the-secret" not in json.dumps(e.value.body)
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        claude.messages.create(
            model="badsig/anthropic.claude-x", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["error"]["type"] == "permission_error"
    assert bedrock_stats(bedrock_gateway)["signature_rejected"] == rejected + 2


def test_a_corrupt_crc_mid_stream_ends_with_an_error_event(oai, claude, bedrock_gateway):
    # The mock corrupts the CRC of the message after the second content delta.
    model = "bed/anthropic.claude-x.badcrcafter-2"
    received = []
    with pytest.raises(openai.APIError) as e:
        stream = oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "a long enough answer"}], stream=True
        )
        for c in stream:
            if c.choices:
                received.append(c.choices[0].delta.content or "")
    assert "".join(received), "the text before the corrupt frame arrived"
    assert "CRC mismatch" in str(e.value)

    received = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with claude.messages.stream(
            model=model, max_tokens=64, messages=[{"role": "user", "content": "a long enough answer"}]
        ) as stream:
            for text in stream.text_stream:
                received.append(text)
    assert "".join(received)
    assert e.value.body["type"] == "error"
    assert "CRC mismatch" in e.value.body["error"]["message"]


def test_a_throttling_exception_mid_stream_reaches_both_sdks(oai, claude):
    model = "bed/anthropic.claude-x.throttleafter-2"
    with pytest.raises(openai.APIError) as e:
        for _ in oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "throttle me please"}], stream=True
        ):
            pass
    assert "Too many requests" in str(e.value)
    with pytest.raises(anthropic.APIStatusError) as e:
        with claude.messages.stream(
            model=model, max_tokens=64, messages=[{"role": "user", "content": "throttle me please"}]
        ) as stream:
            for _ in stream.text_stream:
                pass
    assert e.value.body["error"]["type"] == "rate_limit_error"
