"""Fixtures for the SDK and client tests: start the real gateway and bench mock binaries on free
loopback ports and stop them afterwards.

The gateway serves three kinds of provider, each by its own model prefix:
- `mock/...`: the built-in mock (models `gpt-4o-mini`, `echo`, `text-embedding-3-small`);
- `up/...`: an `openai` provider on the bench mock's Chat Completions (and its Responses API, for
  Responses clients);
- `upchat/...`: an `openai` provider with `responses = false` on the same bench mock (Responses
  clients are translated to its Chat Completions);
- `anth/...`: an `anthropic` provider on the bench mock's Messages API;
- `gem/...`: a `gemini` provider on the bench mock's Gemini API (Google AI Studio);
- `vtx/...`, `vtx2/...`: `vertex` providers on the bench mock's Vertex AI endpoints, each with a
  service account of its own (throwaway RSA keys made by `openssl genpkey` for the session) whose
  tokens the mock's `POST /token` issues for TOKEN_TTL_S seconds;
- `vtxbad/...`: a `vertex` provider whose service account the token endpoint refuses.
Every made-up string (tool arguments, structured answers) is TOOL_TEXT on both mocks.
"""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import tempfile
import threading
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
UPSTREAM_KEY = "sk-sdk-test-upstream"
# What both mocks put in every string they make up: a shell command, so that a client that runs a
# Bash tool call (Claude Code) gets a known result.
TOOL_TEXT = "echo hello"
# The model of each provider kind, by the API its upstream speaks.
MODELS = {
    "anthropic": "anth/claude-test",
    "openai": "up/gpt-test",
    "mock": "mock/echo",
    "gemini": "gem/gemini-test",
    "vertex": "vtx/gemini-test",
}
# Lifetime of the access tokens the mock's token endpoint issues, seconds: short, so that a test
# sees the gateway refresh one.
TOKEN_TTL_S = 2
# The service accounts of the session: the mock knows the first two.
ACCOUNTS = ["vtx", "vtx2", "vtxbad"]


class Proc:
    def __init__(self, args, env=None):
        self.p = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self.first_line = self._wait_ready()
        # Drain both pipes so the child never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(self.p.stdout,), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.p.stderr,), daemon=True).start()

    def _wait_ready(self):
        result = {}

        def read():
            for line in self.p.stdout:
                if "listening on" in line:
                    result["line"] = line.strip()
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(20)
        if "line" not in result:
            self.stop()
            raise RuntimeError(f"{self.p.args[0]} did not start: {self.p.stderr.read()}")
        return result["line"]

    @staticmethod
    def _drain(pipe):
        for _ in pipe:
            pass

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def binary(name):
    path = TARGET / name
    if not path.exists():
        raise RuntimeError(f"{path} missing: run `cargo build --workspace --bins` first")
    return str(path)


def start_mock(*args):
    """The bench mock on a free loopback port with one thread and ARGS: (its Proc, its address)."""
    p = Proc([binary("deepintshield-mock"), "--listen", "127.0.0.1:0", "--threads", "1", *args])
    return p, p.first_line.rsplit(" ", 1)[1]


@contextlib.contextmanager
def running_gateway(config, env, server='auth = "off"'):
    """The gateway on loopback with CONFIG (TOML text after its [server] and [stats] tables; SERVER:
    more [server] lines) and ENV added to its environment: yields its API and admin addresses.
    Afterwards it is stopped with SIGTERM, which it must end with exit code 0."""
    text = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
threads = 2
{server}

[stats]
stdout_interval_ms = 0
{config}"""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gateway.toml")
        with open(path, "w") as f:
            f.write(text)
        p = Proc([binary("deepintshield"), "--config", path], env=env)
        try:
            api, admin = [part.split(" ")[0] for part in p.first_line.split("http://")[1:]]
            yield api, admin
        finally:
            p.stop()
    assert p.p.returncode == 0, f"gateway exited with {p.p.returncode} on SIGTERM"


def service_account_file(directory, name):
    """A service-account key file (Google's JSON layout) with a fresh RSA key, made for the test."""
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = pathlib.Path(directory) / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "mock-project",
                "private_key_id": f"{name}-key-1",
                "private_key": key,
                "client_email": f"{name}@mock-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return str(path)


@pytest.fixture(scope="session")
def accounts():
    with tempfile.TemporaryDirectory() as d:
        yield {name: service_account_file(d, name) for name in ACCOUNTS}


@pytest.fixture(scope="session")
def mock(accounts):
    known = [arg for name in ("vtx", "vtx2") for arg in ("--vertex-credentials", accounts[name])]
    p, addr = start_mock("--tool-text", TOOL_TEXT, *known, "--token-ttl-s", str(TOKEN_TTL_S))
    yield addr
    p.stop()


@pytest.fixture(scope="session")
def gateway(mock, accounts):
    vertex = "".join(
        f"""
[providers.{name}]
type = "vertex"
base_url = "http://{mock}/v1"
rate_limit_cooldown_ms_default = 200
rate_limit_cooldown_ms_max = 200

[providers.{name}.vertex]
project = "mock-project"
location = "us-central1"
credentials_file = "file:{accounts[name]}"
token_uri = "http://{mock}/token"

[providers.{name}.breaker]
enabled = false
"""
        for name in ACCOUNTS
    )
    config = f"""
[providers.mock]
type = "mock"
models = ["gpt-4o-mini", "echo", "text-embedding-3-small"]

[providers.mock.mock]
tool_text = "{TOOL_TEXT}"

# The bench mock's 429/503/529 carry Retry-After: 1; capping the wait keeps the fault tests short.
# The breakers are off: fault tests fail on purpose, and the breaker has tests of its own.
[providers.up]
type = "openai"
base_url = "http://{mock}/v1"
keys = [{{ key = "env:SDK_UPSTREAM_KEY" }}]
rate_limit_cooldown_ms_default = 200
rate_limit_cooldown_ms_max = 200

[providers.up.breaker]
enabled = false

[providers.upchat]
type = "openai"
base_url = "http://{mock}/v1"
responses = false
keys = [{{ key = "env:SDK_UPSTREAM_KEY" }}]

[providers.upchat.breaker]
enabled = false

[providers.anth]
type = "anthropic"
base_url = "http://{mock}"
keys = [{{ key = "env:SDK_UPSTREAM_KEY" }}]
rate_limit_cooldown_ms_default = 200
rate_limit_cooldown_ms_max = 200

[providers.anth.breaker]
enabled = false

[providers.gem]
type = "gemini"
base_url = "http://{mock}/v1beta"
keys = [{{ key = "env:SDK_UPSTREAM_KEY" }}]
rate_limit_cooldown_ms_default = 200
rate_limit_cooldown_ms_max = 200

[providers.gem.breaker]
enabled = false
{vertex}

[aliases]
"gpt-4o-mini" = "mock/gpt-4o-mini"
"""
    with running_gateway(config, {"SDK_UPSTREAM_KEY": UPSTREAM_KEY}) as (api, admin):
        yield {"api": api, "admin": admin, "mock": mock}


def mock_stats(gateway):
    """The bench mock's `GET /mock/stats` (counters and what the last call carried)."""
    with urllib.request.urlopen(f"http://{gateway['mock']}/mock/stats", timeout=5) as r:
        return json.load(r)


def accepted(gateway, pool):
    """Requests the gateway's pool POOL has accepted so far (its `/stats`)."""
    with urllib.request.urlopen(f"http://{gateway['admin']}/stats", timeout=5) as r:
        return json.load(r)["pools"][pool]["counters"]["accepted"]


def run_cli(argv, env, cwd, timeout_s):
    """Run a client's CLI (ARGV) in CWD with ENV as its whole environment, stdin closed, in a
    process group of its own that is killed afterwards (with anything it left running, a tool's
    shell): (exit code, stdout, stderr). A run past TIMEOUT_S fails the test."""
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        name = os.path.basename(argv[0])
        pytest.fail(f"{name} ran past {timeout_s} s; stdout {out!r}, stderr {err!r}")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return p.returncode, out, err
