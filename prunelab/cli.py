"""``prunelab`` command line: run, list, report, bench."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prunelab import publish, results, runner


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"-p {pair!r} is not key=value")
        out[key] = runner.parse_value(value)
    return out


def _profile(chosen: str | None) -> str:
    """``--profile``, else ``$PRUNELAB_PROFILE`` (as the notebooks read it), else ``default``; never two answers."""
    env = os.environ.get("PRUNELAB_PROFILE")
    if chosen:
        runner.check_profile(chosen)
    if chosen and env and chosen != env:
        raise ValueError(f"--profile {chosen} disagrees with PRUNELAB_PROFILE={env}; drop one of them")
    return runner.check_profile(chosen or env or "default")


def cmd_run(args) -> int:
    profile = _profile(args.profile)
    names = [runner.find_notebook(n) for n in args.notebooks] or runner.notebooks()
    overrides = _overrides(args.param)
    if overrides and len(names) > 1:
        raise ValueError("-p applies to one notebook; name it (prunelab run NOTEBOOK -p key=value)")
    print(f"profile {profile}", flush=True)
    for name in names:
        runner.resolve(name, profile, overrides)  # bad parameters fail before anything runs
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} (profile {profile})", flush=True)
        try:
            run, executed = runner.run_notebook(name, profile, overrides, force=args.force, progress=not args.quiet,
                                                fresh=args.fresh)
        except runner.Interrupted as err:
            print(f"prunelab: {err}", file=sys.stderr)
            return 130
        print(f"    {'done' if executed else 'skipped, complete (use --force to rerun)'}: {run.path}", flush=True)
        changed = runner.overridden(name, run.params)
        if executed and profile in runner.PUBLISHED_PROFILES and changed:
            print(f"    not published to figures/{profile}/: its parameters are not the profile's "
                  f"({' '.join(changed)}); its claims say so", flush=True)
    return 0


def cmd_list(args) -> int:
    profile = _profile(args.profile)
    for name in runner.notebooks():
        params = runner.resolve(name, profile)
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if k != "profile")
        print(f"{name}  [{profile}]\n    {shown}")
    return 0


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
    out = Path(args.output) if args.output else root / "REPORT.md"
    if not out.parent.is_dir():
        raise ValueError(f"--output {out}: the folder {out.parent} does not exist")
    text = publish.report(root, out.resolve().parent, args.profile, args.latest, args.include_overridden)
    results.write_text(out, text)
    print(text)
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


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
    run.add_argument("notebooks", nargs="*", help="notebook names (default: all), e.g. 00_tour or 00")
    run.add_argument("--profile", help=f"one of {', '.join(runner.PROFILES)} (default: $PRUNELAB_PROFILE, else default)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    run.add_argument("--force", action="store_true", help="rerun even if the run folder is complete")
    run.add_argument("--fresh", action="store_true", help="rerun and recompute the cached grid points too")
    run.add_argument("--quiet", action="store_true", help="no per-cell progress bar")
    run.set_defaults(func=cmd_run)
    lst = sub.add_parser("list", help="show the notebooks and their parameters")
    lst.add_argument("--profile", help="default: $PRUNELAB_PROFILE, else default")
    lst.set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="collect every claim and figure into one Markdown page")
    rep.add_argument("--runs", help="runs folder (default: $PRUNELAB_RUNS or ./runs)")
    rep.add_argument("--output", help="where to write the page (default: <runs>/REPORT.md)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
