"""Codex CLI (`codex exec`, the real CLI) through the gateway's Responses API, answered by each
provider kind: the built-in mock, an `openai` provider (the request passes through to the bench
mock's `/v1/responses`), an `anthropic` and a `gemini` provider (translated to the bench mock's
Messages and Gemini APIs; Gemini's function call comes back with its `thoughtSignature`, carried
in the `call_id` Codex sends back).
Codex sends what it always sends (developer-role items, `store: false`, encrypted reasoning
asked for, function tools, a `namespace` tool and the hosted `web_search` tool) and needs an
event stream that ends in `response.completed`. In the tool turn the model calls Codex's shell
tool `exec_command` with the mocks' tool text (`echo hello`), Codex runs it and sends its output
back, and the mock answers `mock: tool result: ...` with that output. With a reasoning effort set
for Anthropic, the round trip also carries the signed thinking block Anthropic requires back.

The CLI is found at $DEEPINTSHIELD_CODEX, by default .npm-tools/node_modules/.bin/codex (tests/run
installs a pinned version there); without it these tests are skipped (tests/run fails instead
when DEEPINTSHIELD_REQUIRE_TOOLS=1 and npm is missing). Each run talks only to the loopback
gateway (the config below turns off analytics and plugins, the only other traffic of `exec`),
in a fresh HOME and working directory, with an otherwise empty environment, stdin closed, no
retries, and bounded by CODEX_TIMEOUT_S; on timeout its whole process group is killed."""

import os
import subprocess
import tempfile

import pytest

from conftest import MODELS, ROOT, TOOL_TEXT, accepted, mock_stats, run_cli

# Set but empty: tests/run found no way to install it.
CODEX = os.environ.get("DEEPINTSHIELD_CODEX", str(ROOT / ".npm-tools/node_modules/.bin/codex"))
# A run takes under a second; this bounds a hung one.
CODEX_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(
    not os.access(CODEX, os.X_OK), reason=f"Codex CLI not installed at {CODEX} (tests/run installs it)"
)

CONFIG = """\
model = "{model}"
model_provider = "gateway"

[model_providers.gateway]
name = "gateway"
base_url = "http://{api}/v1"
env_key = "GATEWAY_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[features]
plugins = false
"""


def codex(gateway, model, prompt, settings=""):
    """Run `codex exec PROMPT` on MODEL against the gateway, with SETTINGS (top-level config.toml
    lines) added: (exit code, stdout, stderr)."""
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as cwd:
        os.makedirs(os.path.join(home, ".codex"))
        with open(os.path.join(home, ".codex", "config.toml"), "w") as f:
            f.write(settings + CONFIG.format(model=model, api=gateway["api"]))
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TERM": "dumb",
            "GATEWAY_API_KEY": "codex-client-key",
        }
        return run_cli([CODEX, "exec", "--skip-git-repo-check", prompt], env, cwd, CODEX_TIMEOUT_S)


def test_codex_version():
    out = subprocess.run([CODEX, "--version"], capture_output=True, text=True, timeout=CODEX_TIMEOUT_S)
    assert out.returncode == 0 and out.stdout.startswith("codex-cli "), out


@pytest.mark.parametrize("kind", ["mock", "openai", "anthropic", "gemini"])
def test_prompt_answered_through_the_gateway(gateway, kind):
    model = MODELS[kind]
    pool = model.split("/")[0]
    before = accepted(gateway, pool)
    prompt = f"hello from codex via {kind}"
    rc, out, err = codex(gateway, model, prompt)
    assert rc == 0, (out, err)
    # Stdout holds only the final agent message. (Anthropic and Gemini take Codex's environment
    # item and the prompt as one user turn, which the bench mock echoes whole.)
    assert out.startswith("mock: ") and out.strip().endswith(prompt), (out, err)
    if kind not in ("anthropic", "gemini"):
        assert out.strip() == f"mock: {prompt}", (out, err)
    # One Responses request, served by the provider asked for.
    assert accepted(gateway, pool) - before == 1
    if kind != "mock":
        assert mock_stats(gateway)["last_model"] == model.split("/")[1]


@pytest.mark.parametrize("kind", ["mock", "openai", "anthropic", "gemini"])
def test_shell_tool_round_trip(gateway, kind):
    assert TOOL_TEXT == "echo hello"
    model = MODELS[kind]
    pool = model.split("/")[0]
    before = accepted(gateway, pool)
    rc, out, err = codex(gateway, model, "use tool exec_command")
    assert rc == 0, (out, err)
    # Codex ran `echo hello` in its shell and sent the output back; the mock quotes it.
    assert out.startswith("mock: tool result: "), (out, err)
    assert out.rstrip().endswith("Output:\nhello"), (out, err)
    assert "exited with code 0" in out, (out, err)
    # The tool call, then the answer to its result.
    assert accepted(gateway, pool) - before == 2


def test_shell_tool_round_trip_with_anthropic_thinking(gateway):
    """With `model_reasoning_effort` set, Codex 0.171 sends `reasoning.effort` for a model it does
    not know (without it, none), which becomes Anthropic's extended thinking: the bench mock
    answers a signed thinking block before the call and, as Anthropic does, refuses the tool
    result's turn unless the thinking block comes back first, signature intact. Codex keeps the
    reasoning item with its `encrypted_content` (the gateway's envelope of the signature) and
    sends it back."""
    model = MODELS["anthropic"]
    rc, out, err = codex(gateway, model, "use tool exec_command", 'model_reasoning_effort = "high"\n')
    assert rc == 0, (out, err)
    assert out.startswith("mock: tool result: "), (out, err)
    assert out.rstrip().endswith("Output:\nhello"), (out, err)
    body = mock_stats(gateway)["last_body"]
    assert body["thinking"]["type"] == "adaptive", body
    turn = body["messages"][1]["content"]
    assert [b["type"] for b in turn] == ["thinking", "tool_use"], turn
    assert turn[0]["thinking"] == "mock: thinking about the request"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
def test_upstream_error_is_reported(gateway, kind):
    rc, out, err = codex(gateway, MODELS[kind].split("/")[0] + "/status-400", "hello")
    assert rc == 1, (out, err)
    assert "mock: injected status 400" in out + err, (out, err)
