"""Real clusters on loopback for tests and benchmarks: Ray nodes started with `ray start`,
and a Spark standalone master and worker started with the scripts pyspark ships.

Ray turns ``--node-ip-address 127.0.0.1`` into the machine's outward address when the
machine has a route out, and refuses a second node when told not to. So a cluster
here lives in a private network namespace (``unshare -n``, only loopback inside):
its nodes really are on 127.0.0.1, nothing it does can reach another address, its
ports cannot clash with anything else on the machine, and every process it started
is found (and stopped) by the namespace it runs in. Every command of a test that
talks to the cluster runs in it too (``nsenter``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import graft

REPO = Path(graft.__file__).resolve().parent.parent
RAY_PORT = 6379


def namespaces_work() -> str:
    """'' when private network namespaces can be made here, else why not."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "private network namespaces need Linux and root"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is missing"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    return "" if probe.returncode == 0 else f"unshare -n failed: {probe.stderr.strip()[:200]}"


class Namespace:
    """A private network namespace, held open by one sleeping process, with loopback up."""

    def __init__(self):
        self.holder = subprocess.Popen(["unshare", "-n", sys.executable, "-c", _LOOPBACK_UP],
                                       stdout=subprocess.PIPE, text=True)
        if self.holder.stdout.readline().strip() != "up":
            self.holder.kill()
            raise RuntimeError("could not bring loopback up in a private network namespace")
        self.link = os.readlink(f"/proc/{self.holder.pid}/ns/net")

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", *argv]

    def pids(self) -> list[int]:
        """Every process in the namespace except its holder (all of them were started here)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.holder.pid:
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == self.link:
                        found.append(int(entry))
                except OSError:
                    continue  # gone, or not ours to read
        return found

    def cpu_ticks(self) -> dict:
        """{(pid, start time): CPU clock ticks used} of the processes in the namespace."""
        found = {}
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[(pid, fields[19])] = int(fields[11]) + int(fields[12])  # utime + stime
        return found

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process in the namespace, SIGKILL what is left after ``grace``, then
        the holder (which takes the namespace with it)."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                _signal(pid, sig)
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        self.holder.kill()
        self.holder.wait(timeout=10)


_LOOPBACK_UP = """
import fcntl, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
request = struct.pack("16sH", b"lo", 0)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, request))[1]    # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))       # SIOCSIFFLAGS: IFF_UP
print("up", flush=True)
time.sleep(1e9)
"""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class RayCluster:
    """A head and worker nodes started with `ray start` on 127.0.0.1, token auth on.

    Each node has its own temp dir; ``env`` is what a client needs (RAY_AUTH_MODE=token
    and the token, and this checkout's graft on PYTHONPATH, as every node has it).
    """

    def __init__(self, cpus: tuple[int, ...] = (1, 1), object_store_mb: int = 128):
        self.root = Path(tempfile.mkdtemp(prefix="graft-ray-"))  # short: Ray's socket paths
        self.address = f"127.0.0.1:{RAY_PORT}"
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "HOME": str(self.root / "home"), "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.object_store = str(object_store_mb * 1024 * 1024)
        self.ns = Namespace()
        self.nodes: list[Path] = []
        try:
            for cpu in cpus:
                self.add_node(cpu)
        except BaseException:
            self.stop()
            raise

    def add_node(self, cpus: int, prefix: list[str] = ()) -> Path:
        """Start a node (the first is the head); ``prefix`` wraps `ray start` (e.g. unshare -m)."""
        temp = self.root / f"node{len(self.nodes)}"
        where = (["--head", "--port", str(RAY_PORT), "--include-dashboard", "false"] if not self.nodes
                 else ["--address", self.address])
        argv = [*prefix, sys.executable, "-m", "ray.scripts.scripts", "start", *where,
                "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--temp-dir", str(temp),
                "--object-store-memory", self.object_store, "--disable-usage-stats"]
        out = self.run(argv, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
        self.nodes.append(temp)
        return temp

    def run(self, argv: list[str], timeout: float, env: dict | None = None, **kwargs):
        return subprocess.run(self.ns.command(argv), env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def popen(self, argv: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.ns.command(argv), env=env or self.env, text=True, **kwargs)

    def graft(self, *args: str, timeout: float = 240, env: dict | None = None):
        return self.run([sys.executable, "-m", "graft", *args], timeout=timeout, env=env)

    def raylet_pid(self, node: Path) -> int:
        """The raylet of the node whose temp dir is ``node``."""
        for pid in self.ns.pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"/raylet") and any(str(node).encode() in a for a in argv):
                return pid
        raise LookupError(f"no raylet for {node}")

    def actor_on(self, node: Path, name: str) -> int | None:
        """A worker process of ``node`` running an actor whose class name contains ``name``."""
        raylet = self.raylet_pid(node)
        for pid in self.ns.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == raylet and name.encode() in title:
                return pid
        return None

    def node_id(self, node: Path) -> str:
        """The Ray node id of the node whose temp dir is ``node`` (from its raylet's arguments)."""
        argv = Path(f"/proc/{self.raylet_pid(node)}/cmdline").read_bytes().split(b"\0")
        for arg in argv:
            if arg.startswith(b"--node_id="):
                return arg.split(b"=", 1)[1].decode()
        raise LookupError(f"no --node_id for {node}")

    def kill(self, pid: int) -> None:
        """SIGKILL one process of this cluster (refuses any other)."""
        if pid not in self.ns.pids():
            raise LookupError(f"process {pid} is not one of this cluster's")
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        self.ns.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "RayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
