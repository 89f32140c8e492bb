"""The other half of the smoke configs (see `test_smoke_configs.py` for why they are split)."""

from __future__ import annotations

import pytest

from tests.smoke.test_smoke_configs import SMOKE_CONFIGS, run_smoke


@pytest.mark.parametrize("config", SMOKE_CONFIGS[1::2], ids=str)
def test_smoke_config_runs(config, tmp_path):
    run_smoke(config, tmp_path)
