"""The folder of one ``optgraph train`` run, and how it is written so that a run can resume exactly.

::

    OUT/checkpoint/   the session's state, written by session.save (an artifact itself, replaced atomically)
    OUT/progress.json where the loop stands: epoch, batch, steps, losses; the run's settings
    OUT/loss.png      the loss curve

The checkpoint and ``progress.json`` are two files, each replaced atomically, so a run killed
between the two must not pair a checkpoint with the wrong position. ``progress.json`` is
written before each save with the position that save will hold ("pending") beside the last
one saved ("committed", with the sha256 of its checkpoint), and again after the save with the
new position committed. On resume, the checkpoint's sha256 tells which of the two it holds.
Never imports torch.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from optgraph.artifact import Manifest
from optgraph.artifact.names import CHECKPOINT_FILE, GRAPH_FILES, MANIFEST_FILE, SHA256_KEY
from optgraph.artifact.storage import new_file_mode
from optgraph.cli.errors import UsageError
from optgraph.errors import ArtifactError

FORMAT = "optgraph-train"
VERSION = 1
CHECKPOINT_DIR = "checkpoint"
PROGRESS_FILE = "progress.json"
PLOT_FILE = "loss.png"


def read_manifest(directory: Path) -> Manifest:
    """The manifest of an artifact directory (only the manifest: the session loads and checks the rest)."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such artifact directory")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e})") from None
    return Manifest.from_json(text)


def _digests(manifest: Manifest) -> dict[str, str]:
    digests = manifest.extra.get(SHA256_KEY)
    return digests if isinstance(digests, dict) else {}


def graph_digests(manifest: Manifest) -> dict[str, str]:
    """The sha256 of each graph file: equal for an artifact and every checkpoint trained from it."""
    files = set(GRAPH_FILES.values())
    return {f: d for f, d in _digests(manifest).items() if f in files}


class RunDir:
    """Paths of a run folder, and the progress file's two-phase writes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoint = root / CHECKPOINT_DIR
        self.progress = root / PROGRESS_FILE
        self.plot = root / PLOT_FILE

    def holds_run(self) -> bool:
        return self.progress.exists() or self.checkpoint.exists()

    def clear(self) -> None:
        """Forget a previous run's progress and curve (its checkpoint is replaced by the next save)."""
        self.progress.unlink(missing_ok=True)
        self.plot.unlink(missing_ok=True)

    def _checkpoint_digest(self) -> str | None:
        if not self.checkpoint.is_dir():
            return None
        return _digests(read_manifest(self.checkpoint)).get(CHECKPOINT_FILE)

    def load(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(settings, record)`` of the run to resume; ``record["state"]`` is the position the checkpoint holds."""
        if not self.progress.is_file() or not self.checkpoint.is_dir():
            raise UsageError(
                f"nothing to resume in {self.root}: it needs {PROGRESS_FILE} and {CHECKPOINT_DIR}/ "
                "from an earlier optgraph train --out"
            )
        try:
            saved = json.loads(self.progress.read_text())
            if saved.get("format") != FORMAT or saved.get("version") != VERSION:
                raise ValueError(f"format {saved.get('format')!r} version {saved.get('version')!r}")
            settings, committed, pending = saved["settings"], saved["committed"], saved["pending"]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{self.progress}: not a progress file of optgraph train ({e})") from None
        digest = self._checkpoint_digest()
        if committed is not None and digest == committed["checkpoint_sha256"]:
            return settings, committed
        if pending is not None:  # the save finished; the process stopped before it could say so
            return settings, {"checkpoint_sha256": digest, "state": pending["state"]}
        raise UsageError(
            f"{self.checkpoint} is not the checkpoint {self.progress} describes; "
            "it was written by something else since: start a new run with another --out"
        )

    def commit(
        self, session, settings: dict[str, Any], state: dict[str, Any], committed: dict | None, write: bool = True
    ) -> dict:
        """Save the session and the position it is at; returns the new committed record.

        Data-parallel, every rank calls this (the save is collective: rank 0 writes the checkpoint, every
        rank returns once it is written) and rank 0 alone writes the progress file (``write``).
        """
        state = copy.deepcopy(state)  # the position this save holds: the caller's dict moves on with the loop
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
            self._write({"settings": settings, "committed": committed, "pending": {"state": state}})
        session.save(self.checkpoint)
        record = {"checkpoint_sha256": self._checkpoint_digest() if write else None, "state": state}
        if write:
            self._write({"settings": settings, "committed": record, "pending": None})
        return record

    def _write(self, body: dict[str, Any]) -> None:
        text = json.dumps({"format": FORMAT, "version": VERSION, **body})
        fd, tmp = tempfile.mkstemp(prefix=f".{PROGRESS_FILE}.", dir=self.root)
        os.chmod(tmp, new_file_mode())  # as a plain write would make it, not mkstemp's private mode
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.progress)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
