"""Build and run graft's images in tests, with docker or podman (as docker/build.sh picks)."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "docker" / "build.sh"
MADE_BASE = "localhost/graft-base:bookworm"  # what docker/build.sh makes where no registry answers
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@functools.cache
def engine() -> str | None:
    """docker when its daemon answers, else podman when installed, else None."""
    if os.environ.get("GRAFT_ENGINE"):
        return os.environ["GRAFT_ENGINE"]
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0:
                return "docker"
        except subprocess.TimeoutExpired:
            pass
    return "podman" if shutil.which("podman") else None


def engine_env() -> dict[str, str]:
    """The environment docker/build.sh uses: podman gets docker/containers.conf unless told otherwise."""
    env = dict(os.environ)
    if engine() == "podman" and "CONTAINERS_CONF" not in env and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(ROOT / "docker" / "containers.conf")
    return env


def require_engine() -> str:
    found = engine()
    if found is None:
        message = "no working docker and no podman here (Debian: apt-get install podman runc debootstrap)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs podman (.ci/run): a missing engine is a broken setup
        pytest.skip(message)
    return found


def image(name: str) -> str:
    return f"graft-{name}:{VERSION}"


def build(*names: str, timeout: float = 1800) -> None:
    """docker/build.sh NAMES: layers that did not change are reused, so a second build takes seconds."""
    try:
        done = subprocess.run([str(BUILD_SCRIPT), *names], capture_output=True, text=True,
                              timeout=timeout, env=engine_env(), cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"docker/build.sh {' '.join(names)} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise RuntimeError(f"docker/build.sh {' '.join(names)} failed:\n{(done.stdout + done.stderr)[-4000:]}")


def command(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """One engine command (`podman ARGS`); check: raise with its output when it fails."""
    done = subprocess.run([require_engine(), *args], capture_output=True, text=True,
                          timeout=timeout, env=engine_env())
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])}... exited {done.returncode}: {done.stderr[-2000:]}")
    return done


def run(name: str, *args: str, volumes: dict | None = None, timeout: float = 900,
        extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`run --rm --network host` of an image; volumes: {host path: "/in:ro"}; returns the finished run."""
    mounts = [f"--volume={host}:{inside}" for host, inside in (volumes or {}).items()]
    return command("run", "--rm", "--network", "host", "--no-healthcheck", *mounts, *extra,
                   image(name), *args, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def engine_lines(stderr: str) -> list[str]:
    """stderr without the engine's own log lines (podman logs its healthcheck timers like this)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("time=")]


class Server:
    """The runtime image serving a bundle on 127.0.0.1:PORT (host network), started detached."""

    def __init__(self, bundle: Path, port: int, timeout: float = 120):
        self.name = f"graft-test-serve-{os.getpid()}-{port}"
        self.url = f"http://127.0.0.1:{port}"
        command("run", "--detach", "--network", "host", "--name", self.name,
                f"--volume={bundle}:/model:ro", image("runtime"), "serve", "/model",
                "--port", str(port), "--log-level", "warning")
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state() != "running":
                raise RuntimeError(f"the server container stopped ({self.state()}): {self.logs()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.url}/v2/health/ready did not answer 200 within {timeout:.0f} s: "
                           f"{self.logs()}")

    def state(self) -> str:
        return command("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()

    def logs(self) -> str:
        done = command("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-2000:]

    def stop(self, grace_s: int = 10) -> int:
        """SIGTERM, then SIGKILL after grace_s; returns the exit code (137 means it had to be killed)."""
        command("stop", "--time", str(grace_s), self.name, timeout=grace_s + 60)
        return int(command("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def remove(self) -> None:
        command("rm", "--force", self.name, check=False)
