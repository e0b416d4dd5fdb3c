"""`graphvla sweep`: a controlled comparison from one sweep file - every cell trained and
evaluated on the same data, sample order, schedule and episodes, refused when a cell changes more
than its axes declare, reported with intervals and paired tests (resumable; --report rebuilds)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import did_you_mean
from .options import UserError, handles_errors


@click.command(name="sweep")
@click.argument("sweep_file", required=False, metavar="SWEEP.yaml")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="output folder: cells/, results.md/json/csv and plots")
@click.option("--data", default=None, help="train on this data YAML or dataset instead of the sweep's `data:`")
@click.option("--only", multiple=True, metavar="CELL", help="run only this cell (all its seeds); repeatable")
@click.option("--seed", "seeds", multiple=True, type=int, metavar="N",
              help="run only this training seed of the sweep's seeds; repeatable (with --only: those cells' runs at it)")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="runs trained and evaluated side by side (each also uses the sweep's eval workers)")
@click.option("--report", "report_dir", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="rebuild DIR's report from its finished cells; trains nothing")
@click.option("--check", is_flag=True, help="validate the file and the controls, print the cells, train nothing")
@click.option("--no-progress", is_flag=True, help="no progress bar over the runs")
@handles_errors
def sweep_cmd(sweep_file, out, data, only, seeds, workers, report_dir, check, no_progress):
    """Train and evaluate every cell of SWEEP.yaml (a path or a packaged sweep: `smoke`, `heads-mt10`, ...)
    into OUT; finished runs are skipped and an interrupted one resumes from its last checkpoint."""
    from ..runners.sweep import check_controls, execute_sweep, load_sweep, write_report
    from ..runners.sweep.execute import SWEEP_JSON, read_output, start_output

    if report_dir:
        if sweep_file or out:
            raise UserError("--report DIR rebuilds a finished sweep's report: give neither SWEEP.yaml nor -o")
        if not (Path(report_dir) / SWEEP_JSON).is_file():
            raise UserError(f"--report {report_dir}: no {SWEEP_JSON} there (not a `graphvla sweep` output folder)")
        sweep = read_output(report_dir)
        write_report(sweep, sweep.runs(), report_dir)
        click.echo(f"wrote {Path(report_dir) / 'results.md'} (and .json, .csv, plots)")
        return
    if not sweep_file:
        raise UserError("give a sweep file (or --report DIR)")
    sweep = load_sweep(sweep_file, data)
    runs = sweep.runs()
    cells = sweep.cells()
    for name in only:
        if name not in cells:
            raise UserError(f"--only {name}: no such cell in {sweep.file} "
                            f"({did_you_mean(name, cells) or 'cells: ' + ', '.join(cells)})")
    for seed in seeds:
        if seed not in sweep.seeds:
            raise UserError(f"--seed {seed}: {sweep.file} trains seeds {', '.join(map(str, sweep.seeds))}")
    specs = check_controls(sweep, runs)  # every cell, so a bad one is found before any trains
    if check:
        for run in runs:
            click.echo(f"{run.key}: {run.graph} " + " ".join(f"--set {s}" for s in run.sets)
                       + "".join(f" (recording: {o.text})" for o in run.record))
        click.echo(f"{len(cells)} cells x {len(sweep.seeds)} seeds = {len(runs)} runs; controls hold")
        return
    if not out:
        raise UserError("give -o OUT, the sweep's output folder")
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    todo = [r for r in runs if (not only or r.cell in only) and (not seeds or r.seed in seeds)]
    out = start_output(sweep, specs[runs[0].key][0], Path(out).resolve(), log=log, runs=runs, specs=specs, todo=todo)
    failed = execute_sweep(sweep, todo, specs, sweep.data, out, workers=workers, progress=not no_progress,
                           log=log)
    write_report(sweep, runs, out)
    click.echo((out / "results.md").read_text())
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}; the others are reported. "
                        f"Fix and run the same command again: finished runs are kept")


commands = [sweep_cmd]
