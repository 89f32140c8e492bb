"""`jaxgen run|eval|sweep|list|data|bench|tpu`: parses arguments and dispatches. The library does the work.

    jaxgen run configs/quickstart.gin --workdir runs/quickstart --gin.TRAIN_STEPS=500
    jaxgen eval --workdir runs/quickstart
    jaxgen eval --workdir runs/diffusion/dit --weights trained
    jaxgen sweep --root runs/grid --configs configs/quickstart_smoke.gin --tiers - configs/quickstart/mlp.gin --seeds 1
    jaxgen list
    jaxgen data prepare mnist5k
    jaxgen data inspect digits --split test --picture digits.png
    jaxgen bench trainer_scaling --steps 60
    jaxgen tpu configs/quickstart.gin --tpu my-pod --zone us-central2-b --workdir /gcs/bucket/run
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import logging
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from jaxgen.core import workdir as workdir_lib

GIN_PREFIX = "--gin."


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host (run once per process)")
    group.add_argument("--multihost", action="store_true", help="jax.distributed.initialize() with auto-detection "
                       "(TPU pods, SLURM, Kubernetes)")
    group.add_argument("--coordinator", help="host:port of process 0, for an explicit multi-process launch")
    group.add_argument("--num-processes", type=int)
    group.add_argument("--process-id", type=int)
    group.add_argument("--heartbeat-timeout", type=int, metavar="SECONDS",
                       help="a process silent this long counts as lost and the run stops (default 45)")


def _start_distributed(args) -> None:
    from jaxgen.core import distributed

    timeout = {} if args.heartbeat_timeout is None else {"heartbeat_timeout_s": args.heartbeat_timeout}
    distributed.initialize(distributed.DistributedConfig(
        auto=args.multihost, coordinator_address=args.coordinator, num_processes=args.num_processes,
        process_id=args.process_id, **timeout,
    ))


def _summary(result, eval_folder: str | None = None) -> str:
    """What a run or evaluation wrote; `eval_folder` names its eval/ subfolder when it is not the step alone."""
    lines = [f"Results in {result.workdir.resolve()}:"]
    if result.last_train_record:
        lines.append(f"  step {result.step}: train loss {result.last_train_record['loss']:.4g}")
    for name, values in result.eval_results.items():
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        lines.append(f"  eval/{name}: {shown}")
    lines.append("  metrics.jsonl, curves.png, tensorboard/, checkpoints/, "
                 f"eval/{eval_folder or result.step}/ (metrics.json and pictures), config.gin, run_info.json")
    return "\n".join(lines)


def _all_processes_agree(ok: bool) -> bool:
    """Process 0's verdict on starting, sent to every process (one process: itself)."""
    import jax

    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def _resume_command(argv: list[str]) -> str:
    """This command line without --restore-step: a rerun continues from the workdir's latest checkpoint."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--restore-step="):
            skip = False
        elif arg == "--restore-step":
            skip = True
        else:
            kept.append(arg)
    return shlex.join(["jaxgen", *kept])


def cmd_run(args, bindings) -> int:
    from jaxgen import config
    from jaxgen.core import preemption

    preemption.set_resume_command(_resume_command(args.argv))
    _start_distributed(args)
    config.parse(args.config, bindings)
    config.check_requirements()
    import jax

    workdir = Path(args.workdir)
    is_main = jax.process_index() == 0
    claim, refusal = None, None
    if is_main:
        try:
            claim = workdir_lib.claim(workdir, config.config_text(), allow_config_change=args.allow_config_change,
                                      restore_step=args.restore_step)
        except workdir_lib.WorkdirError as e:
            refusal = e
    if not _all_processes_agree(refusal is None):
        raise refusal or workdir_lib.WorkdirError("process 0 refused to start this run; its output says why")
    try:
        run = config.configured(config.trainer)()
        result = run(workdir=workdir, restore_step=args.restore_step, progress=not args.no_progress)
    except BaseException:
        if claim is not None:
            claim.abandon()
        raise
    finally:
        if claim is not None:
            claim.release()
    if is_main:
        print(_summary(result))
    return 0


def cmd_eval(args, bindings) -> int:
    from jaxgen import config
    from jaxgen.core import evaluation

    _start_distributed(args)
    workdir = Path(args.workdir)
    config_file = workdir / workdir_lib.CONFIG_FILE
    if not config_file.is_file():
        raise config.ConfigError(f"{config_file} does not exist: is {workdir} a jaxgen run's workdir?")
    config.parse([str(config_file)], bindings)
    config.check_requirements()
    run = config.configured(config.trainer)()
    weights = {} if args.weights == "average" else {"eval_weights": args.weights}
    if weights and "eval_weights" not in inspect.signature(run).parameters:
        raise config.ConfigError(f"--weights {args.weights}: this run's trainer ({_trainer_name(run)}) has no "
                                 f"choice of evaluated weights; only jaxgen.train.run's EMA runs have one")
    result = run(workdir=workdir, restore_step=args.step, mode="eval", progress=False, **weights)
    tagged = evaluation.eval_dir(workdir, result.step, args.weights)  # written only where the run keeps an EMA
    print(_summary(result, tagged.name if weights and tagged.is_dir() else None))
    return 0


def _trainer_name(run) -> str:
    target = getattr(run, "__wrapped__", run)
    return f"{target.__module__}.{target.__qualname__}"


def _table(rows: list[tuple[str, ...]], widths: tuple[int, ...]) -> str:
    """Rows of text wrapped into columns of these widths, a blank line between rows; a newline in a cell starts a
    new paragraph."""
    lines = []
    for row in rows:
        cells = [[part for paragraph in text.split("\n") for part in textwrap.wrap(paragraph, width)] or [""]
                 for text, width in zip(row, widths)]
        for parts in itertools.zip_longest(*cells, fillvalue=""):
            lines.append("  ".join(part.ljust(width) for part, width in zip(parts, widths)).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip()


def cmd_list(args, bindings) -> int:
    from jaxgen import config

    root = Path(args.configs_dir) if args.configs_dir else config.configs_root()
    rows = [("experiment", "hardware", "what it is (→ the result it should reach)")]
    for path in config.all_config_files(root):
        recipe = config.read_recipe(path)
        if recipe.get("Recipe"):
            expected = f"\n→ {recipe['Expected']}" if recipe.get("Expected") else ""
            rows.append((str(path.relative_to(root.parent)), recipe.get("Hardware", "not stated"),
                         recipe["Recipe"] + expected))
    path_width = max(len(row[0]) for row in rows)
    hardware_width = 26
    text_width = max(40, shutil.get_terminal_size((140, 24)).columns - path_width - hardware_width - 4)
    print(_table(rows, (path_width, hardware_width, text_width)))
    return 0


def cmd_sweep(args, bindings) -> int:
    from jaxgen import sweep

    try:
        jobs = sweep.grid(args.configs, args.tiers, args.seeds, bindings)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"jaxgen sweep: error: {e}")
    statuses = sweep.run_jobs(jobs, args.root, args.parallel, rerun=args.rerun)
    failed = [s["name"] for s in statuses if s["returncode"] != 0]
    print(f"sweep: {len(statuses) - len(failed)} runs finished, {len(failed)} failed{': ' if failed else ''}"
          f"{', '.join(failed)}; results under {args.root}")
    return 1 if failed else 0


def cmd_data(args, bindings) -> int:
    from jaxgen.data import inspect as data_inspect
    from jaxgen.data import sources

    if args.action == "list":
        print(data_inspect.list_text(args.data_dir))
    elif args.action == "prepare":
        for name in args.names:
            b = sources.prepare(name, args.data_dir)
            print(f"{name}: prepared in {b.data_dir}")
    else:
        for name in args.names:
            print(data_inspect.describe(name, args.split, args.data_dir, picture=args.picture))
    return 0


def cmd_bench(args, bindings) -> int:
    from jaxgen import config

    bench_dir = config.configs_root().parent / "experiments" / "bench"
    scripts = sorted(p.stem for p in bench_dir.glob("*.py"))
    if not args.name:
        print("\n".join(scripts))
        return 0
    if args.name not in scripts:
        raise config.ConfigError(f"No benchmark {args.name!r} in {bench_dir}; available: {scripts}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(bench_dir.parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(bench_dir / f"{args.name}.py"), *args.args], env=env).returncode


def cmd_tpu(args, bindings) -> int:
    from jaxgen import config, tpu

    pod = tpu.Pod(args.tpu, args.zone, args.project, args.remote_dir.removeprefix("~/"))
    try:
        steps = tpu.launch_commands(pod, args.config, args.workdir, bindings, configs_root=config.configs_root(),
                                    install=args.install or f"git+{tpu.repository_url()}")
    except (FileNotFoundError, LookupError) as e:
        raise config.ConfigError(str(e)) from e
    for n, (what, command) in enumerate(steps, 1):
        print(f"# {n}. {what}:\n{command}")
    print(f"# Then, to follow worker 0's log (Ctrl-C stops following, not the run):\n#   {tpu.follow_command(pod)}\n"
          f"# and to stop the run (SIGTERM: a checkpoint is saved; run step 3 again to resume):\n"
          f"#   {tpu.stop_command(pod)}")
    if not args.launch:
        return 0
    if shutil.which("gcloud") is None:
        raise SystemExit("--launch needs the gcloud CLI on PATH; run the commands above where it is installed.")
    for what, command in steps:
        print(f"jaxgen tpu: {what}", file=sys.stderr)
        returncode = subprocess.run(shlex.split(command)).returncode
        if returncode:
            return returncode
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train an experiment (gin overrides: --gin.NAME=VALUE)")
    run.add_argument("config", nargs="+", help="experiment .gin file(s), e.g. configs/quickstart.gin")
    run.add_argument("--workdir", required=True)
    run.add_argument("--restore-step", type=int, help="resume from this checkpoint of the workdir instead of the latest")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--allow-config-change", action="store_true",
                     help="continue a workdir's run with a changed config (kept as history, not overwritten)")
    _add_distributed_flags(run)
    run.set_defaults(handler=cmd_run)

    evaluate = sub.add_parser("eval", help="evaluate a workdir's checkpoint with its own config.gin")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    evaluate.add_argument("--weights", choices=("average", "trained"), default="average",
                          help="a run with EMA: its moving average (default) or its trained parameters, whose "
                               "results go to eval/<step>-trained/ and eval-trained/... records")
    _add_distributed_flags(evaluate)
    evaluate.set_defaults(handler=cmd_eval)

    grid = sub.add_parser("sweep", help="run configs x tiers x seeds as parallel runs (finished runs are skipped)")
    grid.add_argument("--root", required=True, help="workdirs go to ROOT/<config>/<tier or base>/s<seed>")
    grid.add_argument("--configs", nargs="+", required=True, help="experiment .gin files")
    grid.add_argument("--tiers", nargs="+", default=["-"], help="extra .gin tiers, each run once per config ('-': none)")
    grid.add_argument("--seeds", nargs="+", type=int, default=[0])
    grid.add_argument("--parallel", type=int, default=1, help="runs at a time")
    grid.add_argument("--rerun", action="store_true", help="run again runs that already finished")
    grid.set_defaults(handler=cmd_sweep)

    listing = sub.add_parser("list", help="every experiment config: path, recipe, expected result")
    listing.add_argument("--configs-dir")
    listing.set_defaults(handler=cmd_list)

    data = sub.add_parser("data", help="list / prepare / inspect datasets")
    data.add_argument("action", choices=("list", "prepare", "inspect"))
    data.add_argument("names", nargs="*")
    data.add_argument("--split", default="train")
    data.add_argument("--data-dir")
    data.add_argument("--picture", help="inspect: save a grid of examples to this PNG")
    data.set_defaults(handler=cmd_data)

    bench = sub.add_parser("bench", help="run a benchmark script of experiments/bench (none: list them)")
    bench.add_argument("name", nargs="?")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script")
    bench.set_defaults(handler=cmd_bench)

    tpu = sub.add_parser("tpu", help="print (or --launch) the commands that install, copy the recipe and start a run "
                         "on every TPU-VM worker")
    tpu.add_argument("config", nargs="+")
    tpu.add_argument("--tpu", required=True, help="TPU VM / pod name")
    tpu.add_argument("--zone", required=True)
    tpu.add_argument("--project")
    tpu.add_argument("--workdir", required=True, help="a folder every worker sees (an NFS or gcsfuse mount such as /gcs/bucket/run)")
    tpu.add_argument("--remote-dir", default="jaxgen_run",
                     help="the run folder on each worker (recipe, run.log, run.pid); relative paths are under $HOME")
    tpu.add_argument("--install", help="the pip requirement to install on the workers (default: git+URL of "
                     "jaxgen's repository; git+URL@COMMIT pins a commit)")
    tpu.add_argument("--launch", action="store_true", help="run the first three commands (needs gcloud on PATH)")
    tpu.set_defaults(handler=cmd_tpu)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bindings = [a[len(GIN_PREFIX):] for a in argv if a.startswith(GIN_PREFIX)]
    args = build_parser().parse_args([a for a in argv if not a.startswith(GIN_PREFIX)])
    args.argv = argv
    if args.command == "data" and args.action != "list" and not args.names:
        build_parser().error(f"jaxgen data {args.action} needs at least one dataset name")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from jaxgen.config import ConfigError, user_message
    from jaxgen.core.checkpoint import CheckpointError
    from jaxgen.core.monitor import NonFiniteLossError
    from jaxgen.data.sources import DatasetMissingError
    from jaxgen.core.preemption import Stopped, resume_advice

    try:
        return args.handler(args, bindings)
    except (ConfigError, CheckpointError, DatasetMissingError, NonFiniteLossError, workdir_lib.WorkdirError) as e:
        print(f"jaxgen {args.command}: error: {user_message(e)}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(f"jaxgen {args.command}: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop: nothing new was saved
        advice = f"; nothing was saved after the latest checkpoint: {resume_advice()}" if args.command == "run" else ""
        print(f"\njaxgen {args.command}: interrupted{advice}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
