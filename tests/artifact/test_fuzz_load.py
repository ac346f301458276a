"""Thousands of mutated artifacts: each one loads and trains, or is an ArtifactError; nothing else.

The run is ``tools/fuzz_artifacts.py`` in a child process, so that a crash of
the process (onnxruntime parsing a broken graph) is caught too and named by
the last case it started. A larger run: ``python -m tools.fuzz_artifacts
--cases 50000 --seed 7``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).parents[2] / "tools" / "fuzz_artifacts.py"


def test_mutated_artifacts_load_and_train_or_are_rejected(tmp_path):
    progress = tmp_path / "progress.txt"
    result = subprocess.run(
        [sys.executable, str(TOOL), "--cases", "2000", "--seed", "0", "--workdir", str(tmp_path),
         "--progress", str(progress)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    last = progress.read_text().splitlines()[-1:] if progress.exists() else []
    assert result.returncode in (0, 1), (
        f"the fuzz process crashed ({result.returncode}) in {last}: {result.stderr[-2000:]}"
    )
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["failures"] == [], json.dumps(summary["failures"], indent=1)
    assert summary["cases"] == 2000 and sum(summary["outcomes"].values()) == 2000
    assert summary["outcomes"]["rejected (ArtifactError)"] > 1000  # the mutations do reach the checks
    assert summary["outcomes"]["loaded, trains as the original"] > 20  # and harmless ones still load
    assert len(summary["mutations"]) == 12
