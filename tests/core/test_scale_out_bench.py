"""The scale-out benchmark runs end to end on CPU (`--quick`: 4 forced host devices, tiny Wan, HunyuanVideo and
DiT, Pallas interpret), so it cannot rot before a multi-GPU machine is lent: for Wan (captions by cross-attention) and
HunyuanVideo (text in the joint attention) the 4-device sequence-parallel step must equal the 1-device one and keep
its activations split (its compiled program gathers weights, never a whole-sequence activation in the blocks), and
FSDP training must run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.launch import REPO, env


@pytest.mark.slow  # a benchmark's CPU run: `python -m pytest -m slow` (not in the default run)
def test_scale_out_quick_runs_and_agrees_with_one_device(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "bench" / "scale_out.py"), "--quick", "--out",
                           str(tmp_path)], cwd=REPO, env=env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "scale_out_quick.json").read_text())
    assert result["device_counts"] == [1, 4] and result["devices"] == 4
    assert sorted(result["video"]) == ["hunyuan-13B", "wan-14B"]
    for name, video in result["video"].items():
        rows = video["rows"]
        assert [(r["devices"], r["variant"]) for r in rows] == [(1, "dense"), (1, "svg"), (4, "dense"), (4, "svg")]
        for row in rows[2:]:
            assert row["relative_l2_vs_1"] < 2e-2, (name, row)  # bf16 agreement; a wrong exchange gives ~1
            assert row["collectives"]["all-to-all"]["count"] >= 4, (name, row)  # q, k, v and the output
            assert row["collectives"]["all-gather"]["count"] > 0, (name, row)  # FSDP: weights, layer by layer
    # Both keep the sequence split through their blocks: no collective there holds a whole-sequence activation (a
    # program that lost the split does: HunyuanVideo's single-stream blocks on the joint sequence gathered it).
    for name, video in result["video"].items():
        for row in video["rows"][2:]:
            assert not [kind for kind, entry in row["collectives"].items() if entry["whole_sequence_in_blocks"]], \
                (name, row)
    dit_rows = result["dit"]["rows"]
    assert [r["devices"] for r in dit_rows] == [1, 4] and all(r["images_per_s"] > 0 for r in dit_rows)
