"""LangChain's `langchain-openai` against the gateway: `ChatOpenAI` (invoke, stream, bind_tools,
with_structured_output) to every provider kind (the built-in mock, an `openai` provider and an
`anthropic` one, which the gateway translates), and `OpenAIEmbeddings` (embed_query,
embed_documents) to the built-in mock and an `openai` provider."""

import math

import pydantic
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from conftest import MODELS, TOOL_TEXT

CHAT_MODELS = [MODELS["mock"], MODELS["openai"], MODELS["anthropic"]]


def chat(gateway, model, **kwargs):
    return ChatOpenAI(
        model=model,
        base_url=f"http://{gateway['api']}/v1",
        api_key="client-key",
        max_retries=0,
        timeout=10,
        **kwargs,
    )


class Weather(pydantic.BaseModel):
    """How the weather is in a city."""

    city: str
    summary: str


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_invoke(gateway, model):
    msg = chat(gateway, model).invoke("Hello LangChain")
    assert msg.content == "mock: Hello LangChain"
    assert msg.usage_metadata["input_tokens"] > 0
    assert msg.usage_metadata["total_tokens"] == msg.usage_metadata["input_tokens"] + msg.usage_metadata["output_tokens"]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream(gateway, model):
    chunks = list(chat(gateway, model, stream_usage=True).stream("stream it"))
    assert "".join(c.content for c in chunks) == "mock: stream it"
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] > 0


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_bind_tools_round_trip(gateway, model):
    llm = chat(gateway, model).bind_tools([get_weather])
    question = HumanMessage("use tool get_weather for Paris")
    ai = llm.invoke([question])
    assert len(ai.tool_calls) == 1
    call = ai.tool_calls[0]
    assert call["name"] == "get_weather"
    assert call["args"] == {"city": TOOL_TEXT}
    result = ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])
    final = llm.invoke([question, ai, result])
    assert final.content == f"mock: tool result: sunny in {TOOL_TEXT}"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_with_structured_output(gateway, model):
    weather = chat(gateway, model).with_structured_output(Weather).invoke("weather in Paris as JSON")
    assert weather == Weather(city=TOOL_TEXT, summary=TOOL_TEXT)


@pytest.mark.parametrize("model", ["mock/text-embedding-3-small", "up/text-embedding-3-small"])
def test_embeddings(gateway, model):
    # check_embedding_ctx_length=False sends the texts as they are (the default tokenizes them
    # with tiktoken, which downloads its tables).
    emb = OpenAIEmbeddings(
        model=model,
        base_url=f"http://{gateway['api']}/v1",
        api_key="client-key",
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    query = emb.embed_query("what is the weather")
    docs = emb.embed_documents(["it is sunny", "what is the weather", "it rains"])
    assert len(docs) == 3 and all(len(d) == len(query) > 0 for d in docs)
    assert docs[1] == pytest.approx(query)
    assert docs[0] != pytest.approx(docs[2])
    assert math.isclose(sum(x * x for x in query), 1.0, rel_tol=1e-4)
