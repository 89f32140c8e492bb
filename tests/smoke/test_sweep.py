"""`jaxgen sweep`: the grid's workdirs and overrides, parallel runs through the CLI, resuming, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxgen import cli, sweep
from jaxgen.core import metrics

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "quickstart_smoke.gin")
MLP_TIER = str(REPO / "configs" / "quickstart" / "mlp.gin")


def test_grid_names_workdirs_and_binds_seeds():
    jobs = sweep.grid([SMOKE], [sweep.NO_TIER, MLP_TIER], [0, 3], ["TRAIN_STEPS=4"])
    assert [j.name for j in jobs] == ["quickstart_smoke/base/s0", "quickstart_smoke/mlp/s0",
                                      "quickstart_smoke/base/s3", "quickstart_smoke/mlp/s3"]
    assert jobs[3].configs == (SMOKE, MLP_TIER)
    assert jobs[2].bindings == ("TRAIN_STEPS=4", "SEED=3")
    command = jobs[2].command(Path("/r"))
    assert command[-2:] == ["--gin.TRAIN_STEPS=4", "--gin.SEED=3"]
    assert command[command.index("--workdir") + 1] == "/r/quickstart_smoke/base/s3"


def test_grid_refuses_missing_files_and_clashing_tier_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gin"):
        sweep.grid([SMOKE], ["nope.gin"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "mlp.gin").write_text("")
    with pytest.raises(ValueError, match="tier file names must be distinct"):
        sweep.grid([SMOKE], [MLP_TIER, str(tmp_path / "a" / "mlp.gin")])
    (tmp_path / "a" / "quickstart_smoke.gin").write_text("")
    with pytest.raises(ValueError, match="config file names must be distinct"):
        sweep.grid([SMOKE, str(tmp_path / "a" / "quickstart_smoke.gin")])
    with pytest.raises(ValueError, match="seeds must be distinct"):
        sweep.grid([SMOKE], seeds=[1, 1])


def test_sweep_runs_in_parallel_skips_finished_runs_and_reports_failures(tmp_path, capsys):
    args = ["sweep", "--root", str(tmp_path), "--configs", SMOKE, "--seeds", "0", "1", "--parallel", "2",
            "--gin.TRAIN_STEPS=3", "--gin.EVAL_EVERY=0", "--gin.CHECKPOINT_EVERY=3"]
    assert cli.main(args) == 0
    shown = capsys.readouterr()
    assert "sweep: 2/2 done, quickstart_smoke/base/s" in shown.out and "\r" not in shown.err, "off a terminal: lines"
    runs = sweep.collect(tmp_path)
    assert sorted(runs) == ["quickstart_smoke/base/s0", "quickstart_smoke/base/s1"]
    for name, records in runs.items():
        assert max(r["step"] for r in records if "loss" in r) == 3, name
        assert "SEED = " + name[-1] in (tmp_path / name / "config.gin").read_text()
    first_loss = {n: [r["loss"] for r in recs if "loss" in r] for n, recs in runs.items()}
    assert first_loss["quickstart_smoke/base/s0"] != first_loss["quickstart_smoke/base/s1"], "seeds not applied"

    capsys.readouterr()
    assert cli.main(args) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out

    bad = ["sweep", "--root", str(tmp_path / "bad"), "--configs", SMOKE, "--gin.NOT_A_MACRO=1"]
    assert cli.main(bad) == 1
    status = json.loads((tmp_path / "bad" / "quickstart_smoke" / "base" / "s0" / sweep.STATUS_FILE).read_text())
    assert status["returncode"] == 2
    assert "NOT_A_MACRO" in (tmp_path / "bad" / "quickstart_smoke" / "base" / "s0" / "log.txt").read_text()
    assert sweep.collect(tmp_path / "bad") == {}
    assert metrics.read_records(tmp_path / "bad" / "quickstart_smoke" / "base" / "s0") == []
