"""Config errors fail before any compute and name the offending text, with a close match when there is one."""

from __future__ import annotations

import pytest

from jaxgen import cli
from jaxgen.config import ConfigError, check_requirements, parse, user_message


def test_quickstart_parses_with_overrides():
    parse(["configs/quickstart.gin"], ["TRAIN_STEPS=7", "train.run.log_every=3"])
    import gin

    assert gin.query_parameter("%TRAIN_STEPS") == 7


@pytest.mark.parametrize("binding, expected", [
    ("TRAIN_STEP=5", r"(?s)macro 'TRAIN_STEP'.*Did you mean 'TRAIN_STEPS'"),
    ("train.run.train_stepz=5", r"(?s)'train.run' doesn't have a parameter named 'train_stepz'.*'train.run.train_steps'"),
    ("train.rnu.seed=1", r"(?s)No configurable matching 'train.rnu'.*Did you mean 'train.run'"),
    ("optim.OptimizerConfig.learning_rat=0.1", r"(?s)learning_rat.*Did you mean 'optim.OptimizerConfig.learning_rate'"),
    ("TRAIN_STEPS", r"(?s)not of the form NAME=VALUE"),
    ("TRAIN_STEPS=abc", r"Override 'TRAIN_STEPS=abc': 'abc' is not a value gin reads"),
    ("TRAIN_STEPS=[1,", r"Override 'TRAIN_STEPS=\[1,': '\[1,' is not a value gin reads"),
])
def test_misspelled_bindings_are_named_with_a_suggestion(binding, expected):
    with pytest.raises(ConfigError, match=expected):
        parse(["configs/quickstart.gin"], [binding])


def test_missing_config_file_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"(?s)'configs/quickstrat.gin' does not exist.*configs/quickstart.gin"):
        parse(["configs/quickstrat.gin"])


def test_unknown_configurable_inside_a_file_is_named(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("from __gin__ import dynamic_registration\nfrom jaxgen import train\ninclude 'quickstart.gin'\n"
                   "train.run.optimiser = 3\n")
    with pytest.raises(ConfigError, match=r"(?s)optimiser.*Did you mean 'train.run.optimizer'"):
        parse([str(bad)])


def test_required_macro_must_be_set(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("from __gin__ import dynamic_registration\ninclude 'common/run.gin'\n")
    with pytest.raises(ConfigError, match="TRAIN_STEPS"):
        parse([str(bad)])


def test_cli_reports_config_errors_before_creating_the_workdir(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = cli.main(["run", "configs/quickstart.gin", "--workdir", str(workdir), "--gin.TRAIN_STEP=5"])
    assert code == 2
    assert "TRAIN_STEPS" in capsys.readouterr().err
    assert not workdir.exists()


def test_includes_resolve_against_this_parse_only():
    """An earlier parse's folders must neither shadow nor break the next experiment's includes."""
    parse(["configs/instant/supervised_smoke.gin"])
    parse(["configs/quickstart_smoke.gin"])
    import gin

    assert gin.query_parameter("%TRAIN_STEPS") == 6


def test_includes_are_files_even_when_a_package_of_the_same_name_is_importable(tmp_path, monkeypatch):
    """`include 'diffusion/...'` must not import `diffusion`: under pytest `tests/diffusion` is a namespace package on
    sys.path, and gin's package-resource reader crashed on it (TypeError) before the search reached configs/."""
    (tmp_path / "diffusion").mkdir()
    (tmp_path / "instant").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    parse(["configs/diffusion/dit_smoke.gin"])
    parse(["configs/instant/fixmatch_smoke.gin"])


def test_a_gpu_only_recipe_declares_it_and_its_cpu_tier_does_not():
    import gin

    parse(["configs/svg/video_dit_moving_objects.gin"])
    assert gin.query_parameter("config.requirements.backends") == ["gpu"]
    parse(["configs/svg/video_dit_moving_objects_tiny.gin"])
    check_requirements()  # a CPU tier passes on any machine


def test_a_machine_without_the_backend_is_refused_in_one_line_without_gin_call_lines(tmp_path):
    recipe = tmp_path / "elsewhere.gin"
    recipe.write_text("from __gin__ import dynamic_registration\nfrom jaxgen import config\n"
                      "include 'quickstart_smoke.gin'\nconfig.requirements.backends = ['abacus']\n")
    parse([str(recipe)])
    with pytest.raises(ConfigError) as error:
        check_requirements()
    assert "In call to configurable 'requirements'" in str(error.value)  # gin's addition, which we drop
    message = user_message(error.value)
    assert message.startswith("This experiment runs only on ABACUS") and "\n" not in message
