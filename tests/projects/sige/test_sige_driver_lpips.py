"""The SIGE driver's LPIPS of the sparse edit against the dense one (random LPIPS-VGG16 weights written as `.npz`
files): zero for equal results, positive for different ones; a missing weights file stops the run (and a run of the
`sige/lpips.gin` tier) before the edit starts."""

from __future__ import annotations

import numpy as np
import pytest

from jaxgen import cli
from jaxgen.core.errors import ConfigError
from jaxgen.projects.sige import driver
from tests.support.lpips_weights import write_random_lpips


def test_lpips_of_sparse_vs_dense(tmp_path):
    metric = driver._lpips(write_random_lpips(tmp_path, "vgg"))
    rng = np.random.default_rng(0)
    dense = rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    assert driver._lpips(None) is None and "lpips_sparse_vs_dense" not in driver._agreement(dense, dense)
    assert driver._agreement(dense, dense, metric)["lpips_sparse_vs_dense"] == 0.0
    sparse = dense.copy()
    sparse[:, 8:16, 8:16] = rng.uniform(-1, 1, (1, 8, 8, 3))  # a wrong patch, as a faulty sparse edit would leave
    assert driver._agreement(sparse, dense, metric)["lpips_sparse_vs_dense"] > 0


def test_a_missing_lpips_file_stops_the_run_before_the_edit(tmp_path, capsys, monkeypatch, repo):
    with pytest.raises(ConfigError, match="No LPIPS-vgg backbone weights at .*vgg16.pth.*download.pytorch.org"):
        driver.gaugan_map(model=None, lpips_weights=(str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth")))
    monkeypatch.chdir(repo)
    workdir = tmp_path / "run"
    code = cli.main(["run", "configs/sige/sdedit_smoke.gin", "configs/sige/lpips.gin", "--workdir", str(workdir),
                     f"--gin.LPIPS_BACKBONE='{tmp_path / 'vgg16.pth'}'", f"--gin.LPIPS_LIN='{tmp_path / 'vgg.pth'}'"])
    assert code != 0 and not (workdir / "results.json").exists()
    assert "No LPIPS-vgg backbone weights at" in capsys.readouterr().err
