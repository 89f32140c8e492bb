"""The CLI end to end: list, data, run -> eval on the same workdir, tpu command; what a workdir keeps (eval never
moves checkpoints, a config change is refused or kept as history) and the one-line refusals of bad input."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxgen import cli


def test_list_shows_every_experiment_with_its_whole_recipe_and_hardware(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "150")
    assert cli.main(["list"]) == 0
    rows = capsys.readouterr().out.split("\n\n")
    hardware, text = rows[0].index("hardware"), rows[0].index("what it is")
    tiny = next(row for row in rows if row.startswith("configs/svg/video_dit_moving_objects_tiny.gin "))
    assert tiny.splitlines()[0][hardware:text].strip() == "2 CPU cores"
    words = " ".join(line[text:] for line in tiny.splitlines()).split()
    assert "what the notebook runs, shortened" in " ".join(words), "a recipe's continuation lines are shown"
    h100 = next(row for row in rows if row.startswith("configs/svg/video_dit_moving_objects.gin "))
    assert "1x H100" in h100 and "→ eval/sample/psnr_d0.25 24.3 dB" in h100
    quickstart = next(row for row in rows if row.startswith("configs/quickstart.gin "))
    assert "MNIST-5k" in quickstart and "→ eval/classification/accuracy" in quickstart
    assert not any(row.startswith("configs/common/") for row in rows), "tier files are not experiments"


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


def checkpoint_files(workdir):
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in (workdir / "checkpoints").rglob("*")}


def test_run_then_eval_the_workdir_reads_checkpoints_and_marks_its_records(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["run", "configs/quickstart_smoke.gin", "--workdir", str(workdir), "--no-progress",
                     "--gin.CHECKPOINT_EVERY=3"]) == 0
    out = capsys.readouterr().out
    assert f"Results in {workdir}" in out and "eval/classification: accuracy" in out
    assert "TRAIN_STEPS = 6" in (workdir / "config.gin").read_text()
    trained = (workdir / "metrics.jsonl").read_text()
    before = checkpoint_files(workdir)
    for step in ("3", "6"):  # evaluating an older step, then the last: checkpoints and "latest" stay
        assert cli.main(["eval", "--workdir", str(workdir), "--step", step]) == 0
    assert checkpoint_files(workdir) == before and not (workdir / "superseded_checkpoints").exists()
    assert (workdir / "metrics.jsonl").read_text().startswith(trained)  # training's records untouched, then
    added = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text()[len(trained):].splitlines()]
    assert [(r["step"], r["source"]) for r in added] == [(3, "eval"), (6, "eval")]  # marked re-evaluations
    assert "eval/classification/accuracy" in added[0]
    metrics = json.loads((workdir / "eval" / "3" / "metrics.json").read_text())
    assert metrics["classification"]["examples"] == 1000
    for picture in ("predictions.png", "confusion.png"):
        assert (workdir / "eval" / "3" / picture).stat().st_size > 1000
    assert cli.main(["eval", "--workdir", str(tmp_path / "nothing")]) == 2
    # Without EMA the trained weights are the evaluated ones: --weights trained is the same evaluation, untagged.
    assert cli.main(["eval", "--workdir", str(workdir), "--weights", "trained"]) == 0
    assert not (workdir / "eval" / "6-trained").exists()

    capsys.readouterr()
    victim = max((p for p in (workdir / "checkpoints" / "6" / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-1])
    assert cli.main(["eval", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "rerun with --step 3" in err and "--restore-step" not in err


def test_a_changed_config_is_refused_and_one_that_trains_is_kept_as_history(tmp_path, capsys):
    workdir = tmp_path / "run"
    args = ["run", "configs/quickstart_smoke.gin", "--workdir", str(workdir), "--no-progress", "--gin.EVAL_EVERY=0"]
    assert cli.main(args + ["--gin.TRAIN_STEPS=2"]) == 0
    names = ("config.gin", "run_info.json", "metrics.jsonl")
    files = {name: (workdir / name).read_bytes() for name in names}

    capsys.readouterr()
    assert cli.main(args + ["--gin.TRAIN_STEPS=2", "--gin.SEED=1"]) == 2
    err = capsys.readouterr().err
    assert "'SEED = 0' -> 'SEED = 1'" in err and "--allow-config-change" in err and "Traceback" not in err
    events = sorted((workdir / "tensorboard").iterdir())
    assert cli.main(args + ["--gin.TRAIN_STEPS=2"]) == 0  # the same command again: finished, harmless
    assert {name: (workdir / name).read_bytes() for name in names} == files
    assert sorted((workdir / "tensorboard").iterdir()) == events
    assert sorted(p.name for p in workdir.glob("config*")) == ["config.gin"]

    assert cli.main(args + ["--gin.TRAIN_STEPS=-3", "--allow-config-change"]) == 2  # fails before training:
    assert {name: (workdir / name).read_bytes() for name in names} == files           # the change is undone
    assert sorted(p.name for p in workdir.glob("config*")) == ["config.gin"]
    assert cli.main(args + ["--gin.TRAIN_STEPS=3", "--allow-config-change"]) == 0
    assert "TRAIN_STEPS = 2" in (workdir / "config.1.gin").read_text()
    assert "TRAIN_STEPS = 3" in (workdir / "config.gin").read_text()
    [change] = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert change["from_step"] == 2 and change["previous"] == "config.1.gin"
    [earlier] = [json.loads(line) for line in (workdir / "run_info.history.jsonl").read_text().splitlines()]
    assert earlier == json.loads(files["run_info.json"]) and earlier["start_step"] == 0
    assert json.loads((workdir / "run_info.json").read_text())["start_step"] == 2


def other_backend_recipe(tmp_path):
    import jax

    other = "tpu" if jax.default_backend() != "tpu" else "gpu"
    recipe = tmp_path / "elsewhere.gin"
    recipe.write_text("from __gin__ import dynamic_registration\nfrom jaxgen import config\n"
                      f"include 'quickstart_smoke.gin'\nconfig.requirements.backends = ['{other}']\n")
    return str(recipe)


@pytest.mark.parametrize("case", ["file", "negative", "not a number", "backend"])
def test_bad_input_gives_a_short_message_and_leaves_no_workdir(tmp_path, capsys, monkeypatch, case):
    workdir = tmp_path / "run"
    recipe, extra = "configs/quickstart_smoke.gin", []
    if case == "file":
        workdir.write_text("notes")
    elif case == "backend":
        recipe = other_backend_recipe(tmp_path)
        monkeypatch.setattr("jaxgen.data.loader.Loader.source", property(lambda _: pytest.fail("data was read")))
    else:
        extra = ["--gin.TRAIN_STEPS=" + {"negative": "-5", "not a number": "abc"}[case]]
    assert cli.main(["run", recipe, "--workdir", str(workdir), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    expected = {"file": "is a file", "negative": "train_steps must be positive; got -5",
                "not a number": "'abc' is not a value", "backend": "runs only on"}[case]
    assert expected in err and len(err.strip().splitlines()) <= 2 and "In call to configurable" not in err
    assert workdir.is_file() if case == "file" else not workdir.exists()


def test_a_workdir_in_use_by_another_process_is_refused_naming_it(tmp_path, capsys):
    """The first run holds the lock (here a bare process holding it, to keep the test fast); the second is refused."""
    from jaxgen.core import workdir as workdir_lib

    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxgen.core import workdir as w; "
         "lock = w.claim(sys.argv[1], 'A = 1\\n'); print('held', flush=True); time.sleep(120)", str(workdir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(["run", "configs/quickstart_smoke.gin", "--workdir", str(workdir), "--no-progress"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"is in use by process {holder.pid} on host {platform.node()}" in err
    assert sorted(p.name for p in workdir.iterdir()) == [workdir_lib.LOCK_FILE, "config.gin"]
    assert (workdir / "config.gin").read_text() == "A = 1\n"


def test_data_prepare_without_the_internet_fails_fast_saying_what_to_fetch(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("socket.create_connection", offline)
    assert cli.main(["data", "prepare", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-binary.tar.gz" in err and f"{tmp_path}/downloads/manual/" in err
    assert cli.main(["data", "prepare", "imagenet2012", "--data-dir", str(tmp_path)]) == 2  # a by-hand download
    err = capsys.readouterr().err
    assert "ILSVRC2012_img_train.tar" in err and f"{tmp_path}/downloads/manual/" in err
    assert cli.main(["data", "prepare", "cifar1o", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'cifar10'" in err and "abstract_reasoning" not in err and len(err) < 500


FAKE_GCLOUD = """#!{python}
# Records its arguments; `ssh --command C` runs C through bash in $HOME (one worker), `scp` copies into $HOME.
import json, os, shutil, subprocess, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"gcloud": args}}) + "\\n")
home = Path(os.environ["HOME"])
if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    sys.exit(subprocess.run(["bash", "-c", args[args.index("--command") + 1]], cwd=home).returncode)
*sources, target = [a for a in args[5:] if not a.startswith("--")]
destination = home / target.split(":", 1)[1]
assert destination.is_dir(), f"scp: {{destination}} does not exist"
for source in map(Path, sources):
    (shutil.copytree if source.is_dir() else shutil.copy)(source, destination / source.name)
"""

FAKE_PYTHON = """#!{python}
# The workers' python3: records its arguments and folder; a `jaxgen.cli` run then waits to be stopped.
import json, os, sys, time

with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"python3": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
if sys.argv[1:3] == ["-m", "jaxgen.cli"]:
    time.sleep(60)
"""


def _wait_for(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rpartition(")")[2].split()[0] != "Z"


def test_tpu_commands_run_as_printed_through_a_fake_gcloud(tmp_path, capsys, repo):
    extra = tmp_path / "mine.gin"
    extra.write_text("include 'quickstart.gin'\n")
    assert cli.main(["tpu", "configs/quickstart.gin", str(extra), "--tpu", "pod", "--zone", "us-central2-b",
                     "--workdir", "/gcs/b/my run", "--gin.NOTE='a b'"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    follow, stop = [line.removeprefix("#   ") for line in lines if line.startswith("#   ")]
    assert len(commands) == 3 and all(c.startswith("gcloud compute tpus tpu-vm ") for c in commands + [follow, stop])
    assert all("--worker=all" in c for c in commands + [stop]) and "--worker=0" in follow
    assert "'~" not in "\n".join(lines), "a quoted tilde never expands"

    bin_dir, home, log = tmp_path / "bin", tmp_path / "worker_home", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    home.mkdir()
    for name, text in (("gcloud", FAKE_GCLOUD), ("python3", FAKE_PYTHON)):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(home), "FAKE_LOG": str(log)}
    for command in commands:
        assert subprocess.run(["bash", "-c", command], cwd=repo, env=env, timeout=60).returncode == 0, command

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()]

    _wait_for(lambda: any(c.get("python3", [""])[1:2] == ["jaxgen.cli"] for c in calls()))
    run_folder = home / "jaxgen_run"
    pip, run = [c for c in calls() if "python3" in c]
    assert pip["python3"][:3] == ["-m", "pip", "install"] and "jax[tpu]" in pip["python3"]
    assert any(a.startswith("git+https://") for a in pip["python3"])
    assert run == {"python3": ["-m", "jaxgen.cli", "run", "configs/quickstart.gin", "mine.gin", "--workdir",
                               "/gcs/b/my run", "--multihost", "--no-progress", "--gin.NOTE='a b'"],
                   "cwd": str(run_folder)}
    assert (run_folder / "configs" / "quickstart.gin").is_file() and (run_folder / "configs" / "common").is_dir()
    assert (run_folder / "mine.gin").read_text() == extra.read_text() and (run_folder / "run.log").exists()
    assert '"$HOME"/jaxgen_run/run.log' in follow
    pid = int((run_folder / "run.pid").read_text())
    assert _alive(pid)
    assert subprocess.run(["bash", "-c", stop], cwd=repo, env=env, timeout=60).returncode == 0
    _wait_for(lambda: not _alive(pid))


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


def test_eval_of_trained_weights_is_refused_by_a_trainer_without_the_choice(tmp_path, capsys):
    (tmp_path / "config.gin").write_text("from __gin__ import dynamic_registration\nfrom jaxgen import config\n"
                                         "from jaxgen.projects.instant import trainer\n"
                                         "config.trainer.run = @trainer.run\n")
    assert cli.main(["eval", "--workdir", str(tmp_path), "--weights", "trained"]) == 2
    err = capsys.readouterr().err
    assert "--weights trained" in err and "jaxgen.projects.instant.trainer.run" in err
