"""Train an artifact on recorded batches and write what happened: runs in any environment with optgraph.

    python tests/replay.py ARTIFACT_DIR BATCHES.safetensors OUT_DIR

``BATCHES.safetensors`` holds ``"<step>/<input or target name>"`` tensors.
After every second step the schedule advances (ReduceLROnPlateau gets the
last loss). ``OUT_DIR`` receives the final checkpoint (``session.save``) and
``history.json`` with every loss and learning rate. Only optgraph's runtime
half is imported, so this runs where torch is absent (old onnxruntime, say).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.numpy import load_file

import optgraph


def replay(artifact_dir, batches_file, out_dir) -> dict:
    """Replay the batches on a fresh CPU session; returns ``{"losses": [...], "lrs": [...]}``."""
    session = optgraph.TrainingSession(artifact_dir, providers=["CPUExecutionProvider"])
    manifest = json.loads((Path(artifact_dir) / "manifest.json").read_text())
    names = manifest["data_inputs"] + manifest["targets"]
    plateau = manifest["lr_scheduler"]["name"] == "ReduceLROnPlateau"
    batches = load_file(str(batches_file))
    history = {"losses": [], "lrs": []}
    step = 0
    while f"{step}/{names[0]}" in batches:
        loss = session.step(*(batches[f"{step}/{name}"] for name in names))
        history["losses"].append(loss)
        if step % 2 == 1:
            session.scheduler_step(loss) if plateau else session.scheduler_step()
        history["lrs"].append(session.lr)
        step += 1
    session.save(Path(out_dir) / "checkpoint")
    (Path(out_dir) / "history.json").write_text(json.dumps(history))
    return history


if __name__ == "__main__":
    replay(*sys.argv[1:4])
