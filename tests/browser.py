"""Headless Chromium for tests: the system's Chromium driven by Playwright (no browser download).

Tests that need a browser use the ``browser`` fixture from ``conftest.py``; it
skips with a reason when Playwright or a Chromium binary is missing (``.ci/run``
installs both), so the rest of the suite runs anywhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Flags for a sandboxed, offline machine: no background connections, no GPU, no sandbox as root.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots kept by browser tests (git-ignored)


def chromium_path() -> str | None:
    """The system Chromium: $GRAFT_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    explicit = os.environ.get("GRAFT_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def launch(playwright):
    """A headless Chromium browser from a started ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
