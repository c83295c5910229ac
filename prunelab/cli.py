"""``prunelab`` command line: run, list, report, bench."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prunelab import publish, results, runner
from prunelab.params import parse_cli_value


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"-p {pair!r} is not key=value")
        out[key] = parse_cli_value(value)
    return out


def _profile(chosen: str | None) -> str:
    """``--profile``, else ``$PRUNELAB_PROFILE`` (as the notebooks read it), else ``default``; never two answers."""
    env = os.environ.get("PRUNELAB_PROFILE")
    if chosen:
        runner.check_profile(chosen)
    if chosen and env and chosen != env:
        raise ValueError(f"--profile {chosen} disagrees with PRUNELAB_PROFILE={env}; drop one of them")
    return runner.check_profile(chosen or env or "default")


def _slurm_config(args):
    from prunelab.executors import SlurmConfig

    extra = {}
    for pair in args.slurm_arg:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-arg {pair!r} is not key=value (e.g. --slurm-arg account=mylab)")
        extra[key.lstrip("-")] = value
    return SlurmConfig(partition=args.partition, gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job,
                       mem_gb=_gigabytes(args.mem), time_min=_minutes(args.time), max_parallel=args.max_parallel,
                       extra=extra)


def _gigabytes(text: str | None) -> float | None:
    if text is None:
        return None
    units = {"": 1, "G": 1, "GB": 1, "M": 1 / 1024, "MB": 1 / 1024, "T": 1024, "TB": 1024}
    number = text.rstrip("GMTBgmtb")
    try:
        return float(number) * units[text[len(number):].upper()]
    except (ValueError, KeyError):
        raise ValueError(f"--mem {text!r}: give a size such as 16G, 16000M or 16 (GB)") from None


def _minutes(text: str) -> int:
    """``--time``: minutes (``90``) or Slurm's ``[D-]HH:MM[:SS]``."""
    try:
        days, _, clock = text.rpartition("-")
        parts = [int(x) for x in clock.split(":")]
        if len(parts) == 1:
            return int(days or 0) * 1440 + parts[0]
        hours, minutes, seconds = (parts + [0])[:3]
        return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)
    except ValueError:
        raise ValueError(f"--time {text!r}: give minutes (90) or [D-]HH:MM[:SS] (01:30:00)") from None


def _importable_here() -> None:
    """The user's ``-p model=mynets:small`` imports from the folder ``prunelab run`` starts from, here
    and in the notebooks' kernels: that folder goes in ``$PRUNELAB_CALLER_DIR`` (the kernels inherit
    it), which only that import searches, after installed packages (`zoo._import_user_module`).
    ``sys.path`` and ``PYTHONPATH`` are left alone: a ``seaborn.py`` here never shadows seaborn."""
    from prunelab.models import zoo

    os.environ[zoo.CALLER_DIR_ENV] = os.path.abspath(os.getcwd())


def _runnable(names: list[str], named: bool) -> tuple[list[str], list[str]]:
    """``names`` less the notebooks whose profile file cannot be read, and one line for each of those.

    A notebook asked for by name with a broken profile is an error; in the whole suite (or a
    study) it is skipped, so one malformed file does not stop the others.
    """
    broken = runner.broken_profiles()
    for name in names:
        if named and name in broken:
            raise ValueError(broken[name])
    return [n for n in names if n not in broken], [f"skipped {n}: {why}" for n, why in broken.items()
                                                   if not named or n in names]


def cmd_run(args) -> int:
    from prunelab import executors

    profile = _profile(args.profile)
    _importable_here()
    names = runner.expand(args.notebooks) if args.notebooks else runner.notebooks()
    names, skipped = _runnable(names, named=bool(args.notebooks) and not set(args.notebooks) & set(runner.studies()))
    shares = runner.split_overrides(names, _overrides(args.param))
    n = executors.check_shards(args.shards)
    if args.recompute_stale and (n > 1 or args.executor == "slurm"):
        raise ValueError("--recompute-stale runs each notebook in one local job: drop --shards and --executor slurm")
    slurm = _slurm_config(args) if args.executor == "slurm" else None
    print(f"profile {profile}", flush=True)
    for line in skipped:
        print(f"prunelab: error: {line}", file=sys.stderr, flush=True)
    for name in names:
        runner.resolve(name, profile, shares[name])  # bad parameters fail before anything runs
    if slurm:
        records = executors.submit_slurm(names, profile, shares, n, slurm, force=args.force, fresh=args.fresh)
        print(f"submitted {len(records)} Slurm jobs; watch them with `prunelab status`", flush=True)
        if args.wait and records:
            executors.wait_slurm(records, timeout_min=args.wait_timeout)
            print("every gather job completed; results under " + str(results.runs_root()), flush=True)
        return 0
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} (profile {profile}{f', {n} shards' if n > 1 else ''})", flush=True)
        try:
            run, executed = executors.run_local(name, profile, shares[name], n, force=args.force,
                                                progress=not args.quiet, fresh=args.fresh,
                                                recompute_stale=args.recompute_stale)
        except runner.Interrupted as err:
            print(f"prunelab: {err}", file=sys.stderr)
            return 130
        print(f"    {'done' if executed else 'skipped, complete (use --force to rerun)'}: {run.path}", flush=True)
        changed = runner.overridden(name, run.params)
        if executed and profile in runner.PUBLISHED_PROFILES and changed:
            print(f"    not published to figures/{profile}/: its parameters are not the profile's "
                  f"({' '.join(changed)}); its claims say so", flush=True)
    return 1 if skipped else 0


def cmd_status(args) -> int:
    from prunelab import executors

    root = Path(args.runs) if args.runs else results.runs_root()
    if not root.is_dir():
        raise ValueError(f"no runs folder at {root} (run `prunelab run` first, or point --runs at one)")
    print(executors.status(root, args.profile and runner.check_profile(args.profile)))
    return 0


def cmd_list(args) -> int:
    profile = _profile(args.profile)
    groups = runner.studies()
    broken = runner.broken_profiles()
    print("studies (run a whole one with `prunelab run NAME`; -p applies to every notebook that takes it):")
    for study, members in groups.items():
        print(f"  {study}: {', '.join(members)}")
    for study, members in groups.items():
        shared = sorted(set.intersection(*(set(runner.declared_types(n)) for n in members)))
        print(f"  {study} parameters shared by all {len(members)}: {', '.join(shared)}")
    print()
    for name in runner.notebooks():
        if name in broken:
            print(f"{name}  cannot be listed: {broken[name]}")
            continue
        params = runner.resolve(name, profile)
        study = next((s for s, members in groups.items() if name in members), None)
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if k != "profile")
        print(f"{name}  [{profile}]{f'  (study {study})' if study else ''}\n    {shown}")
    print("\nmodel=package.module:factory runs your own Python code: your module, imported from the folder "
          "`prunelab run` starts from (after installed packages)")
    return 1 if broken else 0


def cmd_check(args) -> int:
    checked, lines = publish.stale(args.profile)
    where = f"figures/{args.profile}/" if args.profile else "figures/"
    for line in lines:
        print(line)
    if lines:
        print(f"{len(lines)} of {checked} published files in {where} are stale: rerun their notebooks "
              "(prunelab run NOTEBOOK --profile PROFILE) to regenerate them", file=sys.stderr)
        return 1
    print(f"all {checked} published files in {where} are current", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    if args.check:
        return cmd_check(args)
    root = Path(args.runs) if args.runs else results.runs_root()
    if not root.is_dir():
        raise ValueError(f"nothing to report: no runs folder at {root} (run `prunelab run` first, or point --runs at one)")
    if args.output == "-":
        print(publish.report(root, Path.cwd(), args.profile, args.latest, args.include_overridden))
        return 0
    if args.output:
        out = _report_output(Path(args.output))
    else:  # inside a runs folder others may write: never through a link someone planted there
        out = root / "REPORT.md"
        results.check_replaceable(out)
    text = publish.report(root, out.parent, args.profile, args.latest, args.include_overridden)
    results.write_text(out, text)
    print(text)
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


def _report_output(given: Path) -> Path:
    """Where ``--output`` writes: ``given``, or the file a symlink there points to (written through,
    the link itself kept); only an absent path or a regular file, in a folder that exists.

    Raises:
        ValueError: a folder, device, FIFO or socket, or a missing folder (one line naming ``given``).
    """
    target = Path(os.path.realpath(given))
    if not target.parent.is_dir():
        raise ValueError(f"--output {given}: the folder {target.parent} does not exist")
    if target.is_dir():
        raise ValueError(f"--output {given} is a folder; give a file name, e.g. {given / 'REPORT.md'}")
    if target.exists() and not target.is_file():
        kind = results.kind_of(os.stat(target).st_mode)
        raise ValueError(f"--output {given} is {kind}; the report is written to a regular file only "
                         "(use --output - for standard output)")
    return target


def cmd_bench(args) -> int:
    import torch

    from prunelab import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench.parse_rows(args.rows)
    cfg = bench.BenchConfig(quick=args.quick, device=args.device)
    print(f"[bench] {bench.describe()}", flush=True)
    bench.run(rows, cfg, Path(args.output) if args.output else None, [Path(r) for r in args.runs] or None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunelab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks with papermill into run folders")
    run.add_argument("notebooks", nargs="*", help="notebook or study names (default: all), e.g. 00_tour, 00, nmt, cnn")
    run.add_argument("--profile", help=f"one of {', '.join(runner.PROFILES)} (default: $PRUNELAB_PROFILE, else default)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    run.add_argument("--force", action="store_true", help="rerun even if the run folder is complete")
    run.add_argument("--fresh", action="store_true", help="rerun and recompute everything the run folder holds "
                     "(cached grid points, kept models and masks)")
    run.add_argument("--recompute-stale", action="store_true", help="rerun, recomputing only the cached grid points "
                     "that other code computed (`prunelab report --check` lists them)")
    run.add_argument("--quiet", action="store_true", help="no per-cell progress bar")
    run.add_argument("--executor", choices=("local", "slurm"), default="local",
                     help="local (this machine, the default) or slurm (submitit job arrays)")
    run.add_argument("--shards", type=int, default=1, help="split each notebook's grid over N jobs (local: N worker "
                     "processes, one per GPU when there are several), then gather")
    slurm = run.add_argument_group("Slurm (with --executor slurm)")
    slurm.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    slurm.add_argument("--gpus-per-job", type=int, default=0, help="GPUs per job (default 0)")
    slurm.add_argument("--cpus-per-job", type=int, default=1, help="CPUs per job (default 1)")
    slurm.add_argument("--mem", help="memory per job, e.g. 16G (default: the cluster's)")
    slurm.add_argument("--time", default="60", help="time limit per job: minutes or [D-]HH:MM[:SS] (default 60)")
    slurm.add_argument("--max-parallel", type=int, default=0, help="most shard jobs running at once (default: no cap)")
    slurm.add_argument("--wait", action="store_true", help="stay until every submitted job has finished")
    slurm.add_argument("--wait-timeout", type=float, default=0, metavar="MIN",
                       help="with --wait: give up waiting after MIN minutes (default 0: never)")
    slurm.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. account=mylab or qos=high")
    run.set_defaults(func=cmd_run)
    sta = sub.add_parser("status", help="grid points done per run folder and the state of submitted jobs")
    sta.add_argument("--runs", help="runs folder (default: $PRUNELAB_RUNS or ./runs)")
    sta.add_argument("--profile", help="only the runs of this profile")
    sta.set_defaults(func=cmd_status)
    lst = sub.add_parser("list", help="show the notebooks and their parameters")
    lst.add_argument("--profile", help="default: $PRUNELAB_PROFILE, else default")
    lst.set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="collect every claim and figure into one Markdown page")
    rep.add_argument("--runs", help="runs folder (default: $PRUNELAB_RUNS or ./runs)")
    rep.add_argument("--output", help="where to write the page, a regular file or - for standard output "
                     "(default: <runs>/REPORT.md)")
    rep.add_argument("--profile", help="only the runs of this profile")
    rep.add_argument("--latest", action="store_true", help="only the last finished run of each notebook "
                     "(runs with -p overrides left out)")
    rep.add_argument("--include-overridden", action="store_true", help="with --latest, keep runs whose "
                     "parameters were overridden too (each is marked)")
    rep.add_argument("--check", action="store_true", help="only list published figures whose code changed since "
                     "they were made (exit 1 if any)")
    rep.set_defaults(func=cmd_report)
    ben = sub.add_parser("bench", help="time prunelab against torch.nn.utils.prune and Torch-Pruning; one table of ratios")
    ben.add_argument("--quick", action="store_true", help="smaller models: a few minutes on a laptop CPU")
    ben.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ben.add_argument("--rows", default="1,2,3,4,5", help="comma-separated rows: 1 masking, 2 masked step, "
                     "3 saliency, 4 structured latency, 5 suite wall time")
    ben.add_argument("--output", help="CSV path (default: <runs>/bench/bench-<device>[-quick].csv)")
    ben.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ben.add_argument("--runs", action="append", default=[], help="runs folder(s) with recorded default/paper runs (row 5)")
    ben.set_defaults(func=cmd_bench)
    return parser


def _absolute_runs() -> None:
    """A relative ``$PRUNELAB_RUNS`` means the caller's folder: made absolute once, here, so the
    notebooks' kernels (which run in ``notebooks/``) and every job see the same runs folder."""
    runs = os.environ.get("PRUNELAB_RUNS")
    if runs and not os.path.isabs(os.path.expanduser(runs)):
        os.environ["PRUNELAB_RUNS"] = os.path.abspath(os.path.expanduser(runs))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _absolute_runs()
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"prunelab: error: {message}", file=sys.stderr)
        return 1
    except OSError as err:  # an unwritable or missing place: say which, in one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"prunelab: error: {where}{err.strerror or err} (check --output, --runs and $PRUNELAB_RUNS)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prunelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
