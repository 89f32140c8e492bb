"""What a workdir keeps: one run at a time, a config change refused once a run has results (or kept as history when
asked for), every start's run_info."""

from __future__ import annotations

import json
import os

import pytest

from jaxgen.core import workdir as workdir_lib


def claim(workdir, text, **kwargs):
    workdir_lib.claim(workdir, text, **kwargs).release()


def history(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_run_at_a_time_and_the_refused_one_learns_who_holds_it(tmp_path):
    held = workdir_lib.claim(tmp_path / "w", "A = 1\n")
    try:
        with pytest.raises(workdir_lib.WorkdirError, match=f"in use by process {os.getpid()} on host"):
            workdir_lib.claim(tmp_path / "w", "A = 1\n")
    finally:
        held.release()
    claim(tmp_path / "w", "A = 1\n")  # released: free again


def test_a_config_change_is_free_before_results_then_refused_unless_asked(tmp_path):
    workdir = tmp_path / "w"
    claim(workdir, "A = 1\nB = 2\n")
    claim(workdir, "A = 1\nB = 3\n")  # nothing trained yet: the new config replaces it, the old one is kept
    assert (workdir / "config.1.gin").read_text() == "A = 1\nB = 2\n"
    (workdir / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (workdir / "checkpoints" / "4").mkdir(parents=True)
    with pytest.raises(workdir_lib.WorkdirError, match=r"up to step 4\); this command changes 'B = 3' -> 'B = 4'"):
        claim(workdir, "A = 1\nB = 4\n")
    assert (workdir / "config.gin").read_text() == "A = 1\nB = 3\n" and not (workdir / "config.2.gin").exists()
    claim(workdir, "A = 1\nB = 4\n", allow_config_change=True)
    assert (workdir / "config.2.gin").read_text() == "A = 1\nB = 3\n"
    assert [(h["from_step"], h["previous"]) for h in history(workdir / "config_history.jsonl")] == [
        (0, "config.1.gin"), (4, "config.2.gin")]


def test_a_failed_start_that_saved_nothing_is_undone(tmp_path):
    def failed(workdir, text, saves=False, **kwargs):
        held = workdir_lib.claim(workdir, text, **kwargs)
        if saves:
            (workdir / "checkpoints" / "8").mkdir()
        held.abandon()
        held.release()

    workdir = tmp_path / "w"
    failed(workdir, "A = 1\n")
    assert not workdir.exists()
    claim(workdir, "A = 1\n")
    (workdir / "checkpoints" / "4").mkdir(parents=True)
    failed(workdir, "A = 2\n", allow_config_change=True)
    assert sorted(p.name for p in workdir.iterdir()) == [workdir_lib.LOCK_FILE, "checkpoints", "config.gin"]
    assert (workdir / "config.gin").read_text() == "A = 1\n"
    failed(workdir, "A = 2\n", saves=True, allow_config_change=True)  # it trained: the change stays on record
    assert (workdir / "config.gin").read_text() == "A = 2\n" and (workdir / "config.1.gin").exists()
    assert [h["from_step"] for h in history(workdir / "config_history.jsonl")] == [4]


def test_a_path_that_cannot_be_a_folder_is_named(tmp_path):
    (tmp_path / "notes").write_text("x")
    with pytest.raises(workdir_lib.WorkdirError, match="is a file, not a folder"):
        claim(tmp_path / "notes", "A = 1\n")
    with pytest.raises(workdir_lib.WorkdirError, match="cannot be created"):
        claim(tmp_path / "notes" / "run", "A = 1\n")


def test_every_start_is_kept(tmp_path):
    for step in (0, 4, 8):
        workdir_lib.record_start(tmp_path, {"start_step": step})
    assert json.loads((tmp_path / "run_info.json").read_text()) == {"start_step": 8}
    assert history(tmp_path / "run_info.history.jsonl") == [{"start_step": 0}, {"start_step": 4}]


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    def unsupported(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(workdir_lib.fcntl, "flock", unsupported)
    claim(tmp_path / "w", "A = 1\n")
    assert "cannot be locked (Function not implemented)" in caplog.text
    assert (tmp_path / "w" / "config.gin").read_text() == "A = 1\n"
