"""Installing a checked export: its final name and its graft.json row, together, under the lock.

A candidate is written under a temporary name carrying its process id; once
checked, it takes its final name while the previous file is kept as
``.NAME.previous`` until the new row is written. ``sweep`` (run at the start of
every export, under the lock) removes candidates of processes that died and
puts back a previous file whose replacement never got its row.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from graft import bundle


@dataclass
class Candidate:
    """An exported file under its temporary name, and the graft.json row it would get."""

    path: Path
    row: dict

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def install(bundle_dir: Path, candidate: Candidate, echo, built: tuple | None = None) -> dict:
    """Give a checked candidate its final name and its graft.json row, under the bundle's lock.

    A flagged candidate does not replace a previous export that is good and intact. The
    previous file is kept as ``.NAME.previous`` until the new row is written, so a failure
    in between puts it back (and ``sweep`` does, after a crash).
    """
    final = bundle_dir / candidate.row["path"]
    with bundle.locked(bundle_dir):
        manifest = bundle.read_manifest(bundle_dir)
        if built is not None and bundle.build_id(manifest) != built:
            from graft.errors import ExportError

            raise ExportError(f"{bundle_dir}: the bundle was rebuilt while this export ran, so the file "
                              "belongs to the old model; run `graft export` again")
        previous = next((r for r in manifest.get("exports", []) if r.get("path") == candidate.row["path"]), None)
        if candidate.row["status"] == "flagged" and _good(previous, final):
            candidate.discard()
            echo(f"{candidate.row['path']}: the new file breaks its budget; the previous good "
                 "export is kept")
            return {**candidate.row, "kept_previous": True}
        backup = _backup(final)
        os.replace(candidate.path, final)
        bundle.fsync_dir(final.parent)
        try:
            bundle.put_export(manifest, candidate.row)
            bundle.write_manifest(bundle_dir, manifest)
        except BaseException:
            if backup is not None:
                os.replace(backup, final)
            else:
                final.unlink(missing_ok=True)
            bundle.fsync_dir(final.parent)
            raise
        if backup is not None:
            backup.unlink(missing_ok=True)
    return candidate.row


def _backup(final: Path) -> Path | None:
    """A second name for the current file (a hard link, else a copy), or None when there is none."""
    if not final.is_file():
        return None
    backup = final.with_name(f".{final.name}.previous")
    backup.unlink(missing_ok=True)
    try:
        os.link(final, backup)
    except OSError:
        shutil.copy2(final, backup)
    return backup


_CANDIDATE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.[a-z]+$")


def sweep(bundle_dir: Path) -> None:
    """Clean up after export runs that died (call under the bundle's lock): remove candidates
    whose process is gone, and put back a previous file whose replacement never got its row."""
    exports = bundle_dir / bundle.EXPORTS_DIR
    if not exports.is_dir():
        return
    rows = {r.get("path"): r for r in bundle.read_manifest(bundle_dir).get("exports", [])}
    for path in exports.iterdir():
        match = _CANDIDATE.match(path.name)
        if match and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)
        elif path.name.startswith(".") and path.name.endswith(".previous"):
            final = path.with_name(path.name[1:-len(".previous")])
            row = rows.get(final.relative_to(bundle_dir).as_posix())
            current = bundle.sha256_file(final) if final.is_file() else None
            if row and current != row.get("sha256") and bundle.sha256_file(path) == row.get("sha256"):
                os.replace(path, final)
            else:
                path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _good(row: dict | None, path: Path) -> bool:
    return bool(row) and row.get("status") == "ok" and path.is_file() and \
        bundle.sha256_file(path) == row.get("sha256")
