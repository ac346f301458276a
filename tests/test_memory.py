"""Training does not grow memory: state is preallocated and swapped, nothing is kept per step."""

from __future__ import annotations

from tools.memory_check import measure


def test_rss_is_flat_over_2000_steps():
    readings = measure(steps=2000, batch_size=32, report=lambda line: None)
    growth = readings[-1][1] - readings[0][1]
    assert growth < 4, f"RSS grew by {growth:.1f} MiB over 2000 steps: {readings}"
