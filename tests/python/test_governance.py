"""Governance through the official `openai` and `anthropic` SDKs, unchanged: a gateway with the
ledger and governance plugins, keys made through the admin API, and each outcome as the SDKs see
it: 401, 403, 429 with its rate-limit headers, a budget spent before a stream (refused) and during
one (it finishes; the next is refused), on each provider kind, in both client APIs."""

import json
import os
import tempfile
import urllib.request

import anthropic
import openai
import pytest

from conftest import MODELS, UPSTREAM_KEY, running_gateway

ADMIN_TOKEN = "sdk-admin-token-4b2e8f1c6d3a"
KINDS = list(MODELS)


@pytest.fixture(scope="module")
def governed(mock, accounts):
    workdir = tempfile.mkdtemp(prefix="gov-sdk-")
    prices = os.path.join(workdir, "prices.toml")
    with open(prices, "w") as f:
        # Every model of the test providers, at a price that makes one answer cost cents.
        f.write(
            '[[price]]\nproviders = ["mock", "up", "anth", "gem", "vtx"]\nmodels = ["*"]\n'
            "input = 1000\noutput = 2000\n"
        )
    config = f"""
[plugins]
order = ["ledger", "governance"]

[store]
path = "{workdir}/gov.db"
batch_interval_ms = 20

[prices]
path = "{prices}"

[providers.mock]
type = "mock"

[providers.up]
type = "openai"
base_url = "http://{mock}/v1"
keys = [{{ key = "env:SDK_UPSTREAM_KEY" }}]

[providers.anth]
type = "anthropic"
base_url = "http://{mock}"
keys = [{{ key = "env:SDK_UPSTREAM_KEY" }}]

[providers.gem]
type = "gemini"
base_url = "http://{mock}/v1beta"
keys = [{{ key = "env:SDK_UPSTREAM_KEY" }}]

[providers.vtx]
type = "vertex"
base_url = "http://{mock}/v1"

[providers.vtx.vertex]
project = "mock-project"
location = "us-central1"
credentials_file = "file:{accounts["vtx"]}"
token_uri = "http://{mock}/token"
"""
    env = {"SDK_UPSTREAM_KEY": UPSTREAM_KEY, "GOV_ADMIN": ADMIN_TOKEN}
    with running_gateway(config, env, server='admin_token = "env:GOV_ADMIN"') as (api, admin):
        yield {"api": api, "admin": admin}


def admin(governed, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://{governed['admin']}{path}",
        data=data,
        method=method,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def new_key(governed, **spec):
    return admin(governed, "POST", "/admin/keys", spec)["key"]


def requests_of(governed, name):
    """Requests the ledger holds for the key `name`."""
    groups = admin(governed, "GET", "/admin/usage?group_by=key")["groups"]
    return sum(g["requests"] for g in groups if g["key"] == name)


def oai(governed, key, retries=0):
    return openai.OpenAI(base_url=f"http://{governed['api']}/v1", api_key=key, max_retries=retries, timeout=10)


def ant(governed, key, retries=0):
    return anthropic.Anthropic(base_url=f"http://{governed['api']}", api_key=key, max_retries=retries, timeout=10)


def ask_openai(client, model, stream=False):
    messages = [{"role": "user", "content": "hello governance"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        return chunks
    return client.chat.completions.create(model=model, messages=messages)


def ask_anthropic(client, model, stream=False):
    messages = [{"role": "user", "content": "hello governance"}]
    if stream:
        with client.messages.stream(model=model, max_tokens=64, messages=messages) as s:
            events = list(s)
            return events, s.get_final_message()
    return client.messages.create(model=model, max_tokens=64, messages=messages)


def test_unknown_and_missing_keys_are_authentication_errors(governed):
    with pytest.raises(openai.AuthenticationError) as e:
        ask_openai(oai(governed, "dis-not-a-key"), MODELS["mock"])
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as e:
        ask_anthropic(ant(governed, "dis-not-a-key"), MODELS["mock"])
    assert e.value.body["error"]["type"] == "authentication_error"


def test_a_model_the_key_may_not_use_is_permission_denied(governed):
    key = new_key(governed, name="narrow", models=["mock/*"])
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask_openai(oai(governed, key), MODELS["openai"])
    assert e.value.body["code"] == "model_not_allowed"
    with pytest.raises(anthropic.PermissionDeniedError):
        ask_anthropic(ant(governed, key), MODELS["anthropic"])
    assert ask_openai(oai(governed, key), MODELS["mock"]).choices[0].message.content


def test_a_rate_limit_is_a_rate_limit_error_with_its_headers(governed):
    key = new_key(governed, name="limited", rpm=2, tpm=1000000)
    ask_openai(oai(governed, key), MODELS["mock"])
    ask_anthropic(ant(governed, key), MODELS["mock"])
    with pytest.raises(openai.RateLimitError) as e:
        ask_openai(oai(governed, key), MODELS["mock"])
    h = e.value.response.headers
    assert h["x-ratelimit-limit-requests"] == "2"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-limit-tokens"] == "1000000"
    assert "x-ratelimit-reset-requests" in h and "x-ratelimit-remaining-tokens" in h
    assert 1 <= int(h["retry-after"]) <= 60
    with pytest.raises(anthropic.RateLimitError) as e:
        ask_anthropic(ant(governed, key), MODELS["mock"])
    assert e.value.response.headers["x-ratelimit-limit-requests"] == "2"


@pytest.mark.parametrize("kind", KINDS)
def test_a_budget_spent_during_a_stream_finishes_it_and_refuses_the_next(governed, kind):
    model = MODELS[kind]
    # The OpenAI SDK: the stream that spends the budget finishes with its usage chunk.
    key = new_key(governed, name=f"stream-openai-{kind}", budget_usd="0.001/day")
    chunks = ask_openai(oai(governed, key), model, stream=True)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.RateLimitError) as e:
        ask_openai(oai(governed, key), model, stream=True)
    assert e.value.body["code"] == "budget_exceeded"
    assert "resets at" in e.value.body["message"]
    # The Anthropic SDK: the same with message_stop and the final usage.
    key = new_key(governed, name=f"stream-anthropic-{kind}", budget_usd="0.001/day")
    events, final = ask_anthropic(ant(governed, key), model, stream=True)
    assert events[-1].type == "message_stop"
    assert final.usage.output_tokens > 0
    with pytest.raises(anthropic.RateLimitError) as e:
        ask_anthropic(ant(governed, key), model, stream=True)
    assert "budget" in e.value.body["error"]["message"]


def test_a_spent_budget_is_not_retried_by_the_sdks(governed):
    key = new_key(governed, name="no-retry", budget_usd="0.001/day")
    ask_openai(oai(governed, key), MODELS["mock"])
    before = requests_of(governed, "no-retry")
    with pytest.raises(openai.RateLimitError):
        ask_openai(oai(governed, key, retries=2), MODELS["mock"])
    with pytest.raises(anthropic.RateLimitError):
        ask_anthropic(ant(governed, key, retries=2), MODELS["mock"])
    # x-should-retry: false: one request each, no retries.
    assert requests_of(governed, "no-retry") == before + 2


def test_every_provider_kind_is_charged(governed):
    for kind in KINDS:
        name = f"charged-{kind}"
        key = new_key(governed, name=name, budget_usd="100/day")
        r = ask_openai(oai(governed, key), MODELS[kind])
        m = ask_anthropic(ant(governed, key), MODELS[kind])
        tokens = r.usage.prompt_tokens + r.usage.completion_tokens
        tokens += m.usage.input_tokens + m.usage.output_tokens
        live = admin(governed, "GET", f"/admin/keys/{name}")["live"]["spend"]["day"]
        assert live["tokens"] == tokens
        assert live["usd"] > 0
