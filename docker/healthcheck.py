"""The runtime image's HEALTHCHECK: a `graft serve` container is healthy when its server is ready.

It asks /v2/health/ready on the address and port that the container's command
gave `graft serve` (127.0.0.1:8000 by default); any other command (a batch job)
is healthy while it runs. Standard library only.
"""

import sys
import urllib.request


def serve_address(argv: list[str]) -> tuple[str, str] | None:
    if "serve" not in argv:
        return None
    options = {"--host": "127.0.0.1", "--port": "8000"}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in options:
            options[name] = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    host = options["--host"]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return (f"[{host}]" if ":" in host else host), options["--port"]


def main() -> int:
    with open("/proc/1/cmdline", "rb") as f:
        argv = [part.decode() for part in f.read().split(b"\0") if part]
    address = serve_address(argv)
    if address is None:
        return 0
    url = f"http://{address[0]}:{address[1]}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
