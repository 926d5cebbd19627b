"""Claude Code (`claude -p`, the real CLI) through the gateway's Anthropic Messages API, answered by
each provider kind: the built-in mock, an `openai` provider and an `anthropic` provider (both on
the bench mock). In the tool turn the model calls the Bash tool with the mocks' tool text
(`echo hello`), Claude Code runs it and sends the result back, and the mock answers
`mock: tool result: hello`.

The CLI is found at $DEEPINTSHIELD_CLAUDE, by default .npm-tools/node_modules/.bin/claude (tests/run
installs a pinned version there); without it these tests are skipped (tests/run fails instead
when DEEPINTSHIELD_REQUIRE_TOOLS=1 and npm is missing). Each run talks only to the loopback
gateway (the settings below make Claude Code send nothing else), in a fresh HOME and working
directory, with an otherwise empty environment, stdin closed, and bounded by CLAUDE_TIMEOUT_S; on
timeout its whole process group is killed."""

import os
import subprocess
import tempfile

import pytest

from conftest import MODELS, ROOT, TOOL_TEXT, accepted, mock_stats, run_cli

# Set but empty: tests/run found no way to install it.
CLAUDE = os.environ.get("DEEPINTSHIELD_CLAUDE", str(ROOT / ".npm-tools/node_modules/.bin/claude"))
# A run takes about half a second; this bounds a hung one.
CLAUDE_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(
    not os.access(CLAUDE, os.X_OK), reason=f"Claude Code not installed at {CLAUDE} (tests/run installs it)"
)


def claude(gateway, model, prompt, *args):
    """Run `claude -p PROMPT --model MODEL ARGS...` against the gateway: (exit code, stdout, stderr)."""
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as cwd:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TERM": "dumb",
            "ANTHROPIC_BASE_URL": f"http://{gateway['api']}",
            "ANTHROPIC_API_KEY": "sk-ant-client-key",
            # No traffic but the API calls (no update checks, telemetry, DNS); no retry loops.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_MAX_RETRIES": "0",
        }
        return run_cli([CLAUDE, "-p", prompt, "--model", model, *args], env, cwd, CLAUDE_TIMEOUT_S)


def test_claude_code_version():
    out = subprocess.run([CLAUDE, "--version"], capture_output=True, text=True, timeout=CLAUDE_TIMEOUT_S)
    assert out.returncode == 0 and "Claude Code" in out.stdout, out


@pytest.mark.parametrize("kind", ["mock", "openai", "anthropic"])
def test_prompt_answered_through_the_gateway(gateway, kind):
    model = MODELS[kind]
    pool = model.split("/")[0]
    before = accepted(gateway, pool)
    prompt = f"hello from claude code via {kind}"
    rc, out, err = claude(gateway, model, prompt)
    assert rc == 0, (out, err)
    assert "mock: " in out and prompt in out, (out, err)
    # One Messages request in print mode, served by the provider asked for.
    assert accepted(gateway, pool) - before == 1
    if kind != "mock":
        assert mock_stats(gateway)["last_model"] == model.split("/")[1]


@pytest.mark.parametrize("kind", ["mock", "openai", "anthropic"])
def test_bash_tool_round_trip(gateway, kind):
    assert TOOL_TEXT == "echo hello"
    model = MODELS[kind]
    pool = model.split("/")[0]
    before = accepted(gateway, pool)
    rc, out, err = claude(gateway, model, "use tool Bash", "--allowedTools", "Bash")
    assert rc == 0, (out, err)
    # "hello" is what `echo hello` printed: Claude Code ran the call and sent its result back.
    assert out.strip() == "mock: tool result: hello", (out, err)
    # The tool call, then the answer to its result.
    assert accepted(gateway, pool) - before == 2


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_overloaded_upstream_is_reported(gateway, kind):
    model = MODELS[kind].split("/")[0] + "/status-529"
    rc, out, err = claude(gateway, model, "hello")
    assert rc == 1, (out, err)
    # Claude Code read the status and the message of the Anthropic error body.
    assert "API Error: 529 mock: injected status 529" in out + err, (out, err)
