"""`graphvla eval`: closed-loop evaluation of a run on a simulated suite, through the policy server."""
from __future__ import annotations

from pathlib import Path

import click
import yaml

from ..hub import resolve
from .options import UserError, handles_errors, set_option
from .serve_cmds import key_map_option, serve_section


def eval_protocol(run, protocol, tasks, buckets, episodes, workers, data_dir, out, server, api_key, adapter,
                  execute, adapter_overrides, no_gif, key_map, overrides, validation=False, threads=None):
    from ..runners.eval.evaluate import default_out_dir, evaluate_run_protocol, protocol_label
    from ..runners.eval.protocol import format_protocol_table
    from ..sim import protocol_module

    P = protocol_module(protocol)
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    bucket_list = [b.strip() for b in (buckets or "").split(",") if b.strip()]
    try:
        task_list = P.select(bucket_list, names)
    except ValueError as e:
        raise UserError(f"--tasks/--buckets: {e}") from None
    if workers < 1:
        raise UserError("--workers must be >= 1")
    if threads is not None and (threads < 1 or server):
        raise UserError(f"--threads {threads}: " + ("must be >= 1" if threads < 1 else
                        "sets the threads of the server this command starts; --server names one already running"))
    section = serve_section(run, overrides, key_map) if run else {}
    out_dir = Path(out) if out else default_out_dir(run, f"{protocol}-validation" if validation else protocol)
    summary = evaluate_run_protocol(run, task_list, episodes, workers, out_dir, data_dir=data_dir, server=server,
                                    api_key=api_key, adapter=adapter, execute=execute,
                                    adapter_overrides=adapter_overrides, gifs=not no_gif, section=section,
                                    log=lambda m: click.echo(m, err=True), protocol=protocol,
                                    validation=validation, threads=threads)
    click.echo(format_protocol_table(summary, label=protocol_label(summary)))
    click.echo(f"wrote {out_dir / 'results.json'}, results.md" + ("" if no_gif else f" and {len(task_list)} GIFs"))


@click.command(name="eval")
@click.argument("run", required=False, type=click.Path(exists=True))
@click.option("--protocol", default=None, metavar="NAME",
              help="a published evaluation protocol (exactly its episodes; `--protocol list` names them)")
@click.option("--suite", type=click.Choice(["metaworld"]), default="metaworld", show_default=True,
              help="without --protocol: GraphVLA's own Meta-World suite (seeds from --seed-offset)")
@click.option("--tasks", default=None, help="comma-separated task names, or 'mt10' [suite: mt10; protocol: all 50]")
@click.option("--buckets", default=None, help="--protocol: comma-separated buckets (easy,medium,hard,very_hard)")
@click.option("--episodes", type=int, default=10, show_default=True, help="episodes per task")
@click.option("--workers", type=int, default=1, show_default=True,
              help="--protocol: processes taking tasks side by side (same per-episode results as 1)")
@click.option("--threads", type=int, default=None,
              help="--protocol: CPU threads of the policy's forward passes [torch's default: OMP_NUM_THREADS or the "
                   "cores]; closed-loop episodes depend on it (float sums in another order), so results.json records "
                   "it: rerun with the recorded count to reproduce a table episode for episode")
@click.option("--seed-offset", type=int, default=100000, show_default=True,
              help="episode i uses env seed OFFSET+i; the default lies above every seed `graphvla data metaworld` "
                   "uses unless it was given --seed near it")
@click.option("--data", "data_dir", default=None,
              help="the recorded dataset (a folder or a Hub id org/name[@revision]): refuse eval seeds that a "
                   "demonstration of the same task used")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="folder for results.json and one GIF per task [RUN/eval-SUITE]")
@click.option("--server", default=None, help="use a running server (ws://host:port) instead of starting one")
@click.option("--api-key", envvar="GRAPHVLA_API_KEY", default=None)
@click.option("--adapter", default=None, help="benchmark adapter: a name in graphvla/configs/benchmarks or a YAML path [SUITE]")
@click.option("--execute", type=int, default=None, help="execute K of the H predicted actions before re-querying")
@click.option("--adapter-set", "adapter_sets", multiple=True, metavar="KEY=VALUE",
              help="override an adapter key, e.g. actions.ensemble={decay: 0.01} (repeatable)")
@click.option("--max-steps", type=int, default=None, help="episode length cap [from the adapter's env.max_steps]")
@click.option("--no-gif", is_flag=True, help="do not record GIFs")
@click.option("--validation", is_flag=True,
              help="--protocol: instead of its episodes, up to --episodes scenes per task that neither its evaluation "
                   "nor the recording (--data or the run's) starts from; to choose settings without the test episodes")
@key_map_option
@set_option
@handles_errors
def eval_cmd(run, protocol, suite, tasks, buckets, episodes, workers, threads, seed_offset, data_dir, out, server,
             api_key, adapter, execute, adapter_sets, max_steps, no_gif, validation, key_map, overrides):
    """Evaluate RUN in closed loop through the policy server: on a published protocol
    (--protocol starvla-mt50 or lerobot-metaworld: per task, per bucket and overall beside the
    peers' published rows)
    or on GraphVLA's own suite; success rates with Wilson 95% intervals, results.json + GIFs."""
    from ..client import load_adapter
    from ..runners.eval.evaluate import default_out_dir, evaluate_run_suite
    from ..runners.eval.protocol import PROTOCOLS
    from ..runners.eval.runner import format_table

    if protocol == "list":
        for name, about in PROTOCOLS.items():
            click.echo(f"{name}: {about}")
        click.echo("(without --protocol: --suite metaworld, GraphVLA's own MT10 suite)")
        return
    if protocol is not None and protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol}: unknown protocol (known: {', '.join(PROTOCOLS)}; see --protocol list)")
    if not run and not server:
        raise UserError("give a RUN folder or --server ws://HOST:PORT")
    if episodes < 1:
        raise UserError("--episodes must be >= 1")
    if data_dir is not None:
        data_dir = str(resolve(data_dir, repo_type="dataset"))  # a Hub id: its snapshot in the cache
        if not Path(data_dir).is_dir():
            raise UserError(f"--data {data_dir}: no such folder")
    adapter_overrides = {}
    for text in adapter_sets:
        if "=" not in text:
            raise UserError(f"--adapter-set {text}: expected KEY=VALUE, e.g. actions.clip=[-1, 1]")
        key, raw = text.split("=", 1)
        adapter_overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    if protocol is not None:
        if max_steps is not None or seed_offset != 100000:
            raise UserError("--max-steps and --seed-offset belong to --suite; a protocol fixes its own episodes")
        return eval_protocol(run, protocol, tasks, buckets, episodes, workers, data_dir, out, server, api_key, adapter,
                             execute, adapter_overrides, no_gif, key_map, overrides, validation, threads)
    if buckets or workers != 1 or validation or threads is not None:
        raise UserError("--buckets, --workers, --threads and --validation need --protocol")
    from ..sim.metaworld import MT10

    tasks = tasks or "mt10"
    task_list = MT10 if tasks.strip().lower() == "mt10" else [t.strip() for t in tasks.split(",") if t.strip()]
    from ..sim.metaworld import _check_task

    for task in task_list:  # fail before any episode runs
        _check_task(task)
    if data_dir:
        from ..runners.eval.runner import check_disjoint_seeds

        check_disjoint_seeds(data_dir, task_list, seed_offset, episodes)
    if execute:
        adapter_overrides["actions.execute"] = execute
    adapter_obj = load_adapter(adapter or suite, adapter_overrides)
    out_dir = Path(out) if out else default_out_dir(run, suite)
    section = serve_section(run, overrides, key_map) if server is None else None
    summary = evaluate_run_suite(run, task_list, episodes, seed_offset, out_dir, adapter=adapter_obj, server=server,
                                 api_key=api_key, section=section, max_steps=max_steps, gifs=not no_gif,
                                 log=lambda m: click.echo(m, err=True))
    privileged = summary["config"]["privileged"]
    click.echo(format_table(summary))
    if privileged:
        click.echo(f"privileged upper bound: {summary['config']['graph']} reads the simulator's state (objects, goal), "
                   "which no robot has")
    click.echo(f"wrote {out_dir / 'results.json'}" + ("" if no_gif else f" and {len(task_list)} GIFs"))


commands = [eval_cmd]
