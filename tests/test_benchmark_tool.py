"""tools.benchmark on its smallest workload: it runs, prints every column, and every side trains as eager torch."""

import json
import subprocess
import sys
from pathlib import Path

from tools.benchmark import COLUMNS

REPO = Path(__file__).resolve().parent.parent


def test_benchmark_smallest_workload(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "tools.benchmark", "--steps", "3", "--rounds", "1", "--models", "mlp"]
    run = subprocess.run(
        [*command, "--optimizers", "sgd", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    header = next(line for line in run.stdout.splitlines() if line.startswith("| workload"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == COLUMNS
    assert "DISAGREE" not in run.stdout and "fails" not in run.stdout, run.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["side"] for r in rows] == ["optgraph", "eager", "torch.compile"]
    for row in rows:
        assert row["ok"] is True, row
        assert row["rel_l2_diff"] <= 1e-4 and row["max_abs_diff"] < 1e-4, row
        assert len(row["round_means_ms"]) == 1 and row["median_ms"] > 0 and row["rss_mb"] > 0, row
        assert row["first_step_s"] > 0 and row["state_mb"] > 0, row
        assert (row["side"] == "eager") == ("compile_s" not in row), row
    assert rows[1]["vs_eager"] == 1.0
    targets = {t["target"] for t in json.loads(out.read_text())["targets"]}
    assert "at most 0.35 of eager torch's step time" in targets and "compile + first step within 2 s" in targets
