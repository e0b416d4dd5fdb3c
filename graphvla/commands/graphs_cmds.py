"""`graphvla graphs`: the graph library that ships with the package. Every command that takes a
graph accepts these names (`graphvla validate tiny/querytf`); `graphvla graphs copy NAME DIR` writes
one out to edit, with the bases and files it needs to still validate from DIR."""
from __future__ import annotations

import click

from .options import UserError, handles_errors


@click.group(name="graphs", invoke_without_command=True)
@click.option("--paths", is_flag=True, help="also show where each graph's YAML is installed")
@click.pass_context
@handles_errors
def graphs(ctx, paths):
    """List the packaged graphs: pass a NAME wherever a command takes a graph."""
    if ctx.invoked_subcommand is not None:
        return
    from ..spec.library import describe, packaged_graphs, packaged_path

    names = packaged_graphs()
    width = max((len(n) for n in names), default=0)
    for name in names:
        line = f"{name:{width}s}  {describe(name)}".rstrip()
        if paths:
            line += f"\n{'':{width}s}  {packaged_path(name)}"
        click.echo(line)


@graphs.command(name="copy")
@click.argument("name")
@click.argument("directory", type=click.Path(file_okay=False))
@handles_errors
def copy_cmd(name, directory):
    """Copy packaged graph NAME into DIRECTORY to edit: its YAML, the bases it `extends:` and the
    files it names (a tokenizer, say), at the same relative paths. Never overwrites a file."""
    from ..spec.library import copy_graph

    try:
        graph, written = copy_graph(name, directory)
    except FileExistsError as e:
        raise UserError(f"{e} (copy into an empty folder, or move them away)") from None
    others = [str(p.relative_to(graph.parent)) if p.is_relative_to(graph.parent) else str(p)
              for p in written if p != graph]
    extra = f" (with {', '.join(others)})" if others else ""
    click.echo(f"copied {name} to {graph}{extra}\nedit it, then: graphvla validate {graph}")


commands = [graphs]
