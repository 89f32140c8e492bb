"""The CLI end to end: list, data, run -> eval on the same workdir, tpu command."""

from __future__ import annotations

import json

from jaxgen import cli


def test_list_shows_every_experiment_with_its_recipe(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    quickstart = next(line for line in lines if line.startswith("configs/quickstart.gin "))
    assert "MNIST-5k" in quickstart and "→" in quickstart and "accuracy" in quickstart
    assert not any(line.startswith("configs/common/") for line in lines), "tier files are not experiments"


def test_data_list_and_inspect(tmp_path, capsys):
    assert cli.main(["data", "list"]) == 0
    assert "mnist5k" in capsys.readouterr().out
    picture = tmp_path / "digits.png"
    assert cli.main(["data", "inspect", "digits", "--split", "test", "--picture", str(picture)]) == 0
    out = capsys.readouterr().out
    assert "train=1437" in out and "test=360" in out and "shape (8, 8, 1)" in out
    assert picture.stat().st_size > 1000
    assert cli.main(["data", "inspect", "cifar100"]) == 2
    assert "jaxgen data prepare cifar100" in capsys.readouterr().err


def test_run_then_eval_the_workdir(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["run", "configs/quickstart_smoke.gin", "--workdir", str(workdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Results in {workdir}" in out and "eval/classification: accuracy" in out
    assert "TRAIN_STEPS = 6" in (workdir / "config.gin").read_text()
    assert cli.main(["eval", "--workdir", str(workdir), "--step", "3"]) == 0
    metrics = json.loads((workdir / "eval" / "3" / "metrics.json").read_text())
    assert metrics["classification"]["examples"] == 1000
    for picture in ("predictions.png", "confusion.png"):
        assert (workdir / "eval" / "3" / picture).stat().st_size > 1000
    assert cli.main(["eval", "--workdir", str(tmp_path / "nothing")]) == 2


def test_a_changed_config_keeps_the_old_one(tmp_path):
    workdir = tmp_path / "run"
    args = ["run", "configs/quickstart_smoke.gin", "--workdir", str(workdir), "--no-progress"]
    assert cli.main(args + ["--gin.TRAIN_STEPS=2", "--gin.EVAL_EVERY=0"]) == 0
    assert cli.main(args + ["--gin.TRAIN_STEPS=3", "--gin.EVAL_EVERY=0"]) == 0
    assert "TRAIN_STEPS = 2" in (workdir / "config.1.gin").read_text()
    assert "TRAIN_STEPS = 3" in (workdir / "config.gin").read_text()


def test_tpu_prints_the_pod_command_with_multihost(capsys):
    assert cli.main(["tpu", "configs/quickstart.gin", "--tpu", "pod", "--zone", "us-central2-b", "--workdir",
                     "/gcs/b/run", "--gin.TRAIN_STEPS=10"]) == 0
    command = capsys.readouterr().out.strip()
    assert command.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all")
    assert "--multihost" in command and "--gin.TRAIN_STEPS=10" in command and "configs/quickstart.gin" in command


def test_bench_lists_the_benchmark_scripts_and_rejects_unknown_ones(capsys):
    assert cli.main(["bench"]) == 0
    assert "trainer_scaling" in capsys.readouterr().out.split()
    assert cli.main(["bench", "trainer_scalng"]) == 2
    assert "available" in capsys.readouterr().err


def test_an_experiment_can_choose_a_forked_trainer(tmp_path):
    from support import forked

    config = tmp_path / "forked.gin"
    config.write_text("from __gin__ import dynamic_registration\nfrom jaxgen import config\nfrom support import forked\n"
                      "config.trainer.run = @forked.run\nforked.run.label = 'from gin'\n")
    assert cli.main(["run", str(config), "--workdir", str(tmp_path / "w"), "--restore-step", "7"]) == 0
    assert forked.CALLS[-1] == {"workdir": tmp_path / "w", "restore_step": 7, "mode": "train", "label": "from gin"}
    assert cli.main(["eval", "--workdir", str(tmp_path / "w")]) == 0
    assert forked.CALLS[-1]["mode"] == "eval" and forked.CALLS[-1]["label"] == "from gin"
