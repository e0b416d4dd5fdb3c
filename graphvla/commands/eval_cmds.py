"""`graphvla eval`: closed-loop evaluation of a run on a simulated suite, through the policy server."""
from __future__ import annotations

from pathlib import Path

import click
import yaml

from .options import UserError, handles_errors, set_option
from .serve_cmds import key_map_option, load_run_policy, serve_options, serve_section


@click.command(name="eval")
@click.argument("run", required=False, type=click.Path(exists=True))
@click.option("--suite", type=click.Choice(["metaworld"]), default="metaworld", show_default=True)
@click.option("--tasks", default="mt10", show_default=True, help="comma-separated task names, or 'mt10'")
@click.option("--episodes", type=int, default=10, show_default=True, help="episodes per task")
@click.option("--seed-offset", type=int, default=100000, show_default=True,
              help="episode i uses env seed OFFSET+i; the default lies above every seed `graphvla data metaworld` "
                   "uses unless it was given --seed near it")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="the recorded dataset: refuse eval seeds that a demonstration of the same task used")
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
@key_map_option
@set_option
@handles_errors
def eval_cmd(run, suite, tasks, episodes, seed_offset, data_dir, out, server, api_key, adapter, execute, adapter_sets,
             max_steps, no_gif, key_map, overrides):
    """Evaluate RUN in closed loop on a simulated suite through the policy server; print the
    success rate per task with a 95% Wilson interval and write results.json + GIFs."""
    from ..client import PolicyClient, load_adapter
    from ..runners.eval.runner import evaluate_metaworld, format_table
    from ..runners.serve import ServerThread

    if not run and not server:
        raise UserError("give a RUN folder or --server ws://HOST:PORT")
    if episodes < 1:
        raise UserError("--episodes must be >= 1")
    from ..sim.metaworld import MT10

    task_list = MT10 if tasks.strip().lower() == "mt10" else [t.strip() for t in tasks.split(",") if t.strip()]
    from ..sim.metaworld import _check_task

    for task in task_list:  # fail before any episode runs
        _check_task(task)
    if data_dir:
        from ..runners.eval.runner import check_disjoint_seeds

        check_disjoint_seeds(data_dir, task_list, seed_offset, episodes)
    adapter_overrides = {"actions.execute": execute} if execute else {}
    for text in adapter_sets:
        if "=" not in text:
            raise UserError(f"--adapter-set {text}: expected KEY=VALUE, e.g. actions.clip=[-1, 1]")
        key, raw = text.split("=", 1)
        adapter_overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    adapter_obj = load_adapter(adapter or suite, adapter_overrides)
    out_dir = Path(out) if out else (Path(run) / f"eval-{suite}" if run and Path(run).is_dir() else Path(f"eval-{suite}"))
    out_dir.mkdir(parents=True, exist_ok=True)

    thread = None
    if server is None:
        section = serve_section(run, overrides, key_map)
        thread = ServerThread(load_run_policy(run), serve_options(section, "127.0.0.1", 0, None, None, None, None)).start()
        server = thread.url
    try:
        with PolicyClient(server, None, api_key=api_key if thread is None else None) as client:
            reset = client.reset if client.metadata.get("server") == "graphvla" else None
            summary = evaluate_metaworld(client.infer, client.metadata, adapter_obj, task_list, episodes, seed_offset,
                                         out_dir, max_steps=max_steps, gifs=not no_gif, reset=reset,
                                         log=lambda m: click.echo(m, err=True))
    finally:
        if thread is not None:
            thread.stop()
    click.echo(format_table(summary))
    click.echo(f"wrote {out_dir / 'results.json'}" + ("" if no_gif else f" and {len(task_list)} GIFs"))


commands = [eval_cmd]
