"""Fixtures for the SDK tests: start the real gateway and bench mock binaries on free loopback ports
and stop them afterwards."""

import os
import pathlib
import subprocess
import tempfile
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
UPSTREAM_KEY = "sk-sdk-test-upstream"


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


@pytest.fixture(scope="session")
def mock():
    p = Proc([binary("deepintshield-mock"), "--listen", "127.0.0.1:0", "--threads", "1"])
    addr = p.first_line.rsplit(" ", 1)[1]
    yield addr
    p.stop()


@pytest.fixture(scope="session")
def gateway(mock):
    config = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
threads = 2

[stats]
stdout_interval_ms = 0

[providers.mock]
type = "mock"
models = ["gpt-4o-mini", "echo"]

[providers.up]
type = "openai"
base_url = "http://{mock}/v1"
keys = [{{ key = "env:SDK_UPSTREAM_KEY" }}]

[aliases]
"gpt-4o-mini" = "mock/gpt-4o-mini"
"""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config)
        path = f.name
    p = Proc([binary("deepintshield"), "--config", path], env={"SDK_UPSTREAM_KEY": UPSTREAM_KEY})
    api, admin = [part.split(" ")[0] for part in p.first_line.split("http://")[1:]]
    yield {"api": api, "admin": admin, "mock": mock}
    p.stop()
    os.unlink(path)
    assert p.p.returncode == 0, f"gateway exited with {p.p.returncode} on SIGTERM"
