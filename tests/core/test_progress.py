"""What a run prints while it trains: the resume line first, a bar on a terminal, plain record lines elsewhere."""

from __future__ import annotations

import io

from jaxgen import train
from jaxgen.core import progress
from jaxgen.core.optim import OptimizerConfig
from jaxgen.data import Loader
from support.tiny import RegressionTask, regression_source


def run_tiny(workdir, train_steps, **kwargs):
    source = regression_source()
    return train.run(task=RegressionTask(), workdir=workdir, train_data=Loader(source, batch_size=8, seed=3),
                     eval_data=Loader(source, batch_size=16, split="eval", shuffle=False),
                     train_steps=train_steps, log_every=2, checkpoint_every=4, eval_every=0,
                     optimizer=OptimizerConfig(learning_rate=3e-2, schedule="constant"), async_checkpointing=False,
                     **kwargs)


def test_off_a_terminal_each_record_is_one_plain_line_and_a_resumed_run_says_so_first(tmp_path, capsys):
    run_tiny(tmp_path, 4)  # stderr is captured: not a terminal
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and not any("\r" in line for line in lines), lines
    for line, step in zip(lines, (2, 4)):
        assert line.startswith(f"step {step}/4  loss ") and line.endswith(" steps/s"), line

    run_tiny(tmp_path, 6, progress=False)
    assert capsys.readouterr().err.splitlines() == [
        f"resuming from step 4 (from workdir checkpoint {tmp_path / 'checkpoints' / '4'})"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_bar_and_no_lines():
    writer = object()
    bar, monitor_writer = progress.training_display(writer, total=10, initial=0, desc="t", enabled=True,
                                                    stream=Terminal())
    assert not bar.disable and monitor_writer is writer
    bar.close()
    bar, monitor_writer = progress.training_display(writer, total=10, initial=0, desc="t", enabled=False,
                                                    stream=io.StringIO())
    assert bar.disable and monitor_writer is writer


def test_plain_lines_come_at_most_once_per_interval_plus_the_first_and_the_last():
    class Writer:
        def __init__(self):
            self.steps = []

        def write(self, step, values):
            self.steps.append(step)

    stream, writer = io.StringIO(), Writer()
    echo = progress.EchoingWriter(writer, total=50, keys=("loss",), stream=stream, min_seconds=3600)
    for step in range(10, 51, 10):
        echo.write(step, {"loss": 1.0 / step, "steps_per_sec": 100.0})
    assert writer.steps == [10, 20, 30, 40, 50], "every record is still written"
    assert stream.getvalue().splitlines() == ["step 10/50  loss 0.1  100.0 steps/s",
                                              "step 50/50  loss 0.02  100.0 steps/s"]


def test_counted_work_draws_a_bar_on_a_terminal_and_lines_elsewhere():
    terminal = Terminal()
    with progress.CountProgress(10, desc="sampling", unit="img", stream=terminal) as bar:
        bar.update(4)
        bar.update(6)
    assert "10/10" in terminal.getvalue() and "sampling" in terminal.getvalue()

    stream = io.StringIO()
    with progress.CountProgress(10, desc="sampling", unit="img", stream=stream, min_seconds=3600) as lines:
        for _ in range(5):
            lines.update(2)
    printed = stream.getvalue().splitlines()
    assert len(printed) == 1 and printed[0].startswith("sampling 10/10 img  ") and printed[0].endswith(" img/s")

    quiet = io.StringIO()
    with progress.CountProgress(10, desc="sampling", unit="img", enabled=False, stream=quiet) as off:
        off.update(10)
    assert quiet.getvalue() == ""
