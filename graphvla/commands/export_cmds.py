"""`graphvla export`: a trained policy as a frozen inference graph (torch.export or ONNX) that
`graphvla serve DIR` serves with the same wire protocol."""
from __future__ import annotations

import click

from .options import handles_errors


@click.command(name="export")
@click.argument("run", type=click.Path(exists=True))
@click.option("-o", "--output", "output", required=True, type=click.Path(),
              help="folder to write (must not exist, or be empty)")
@click.option("--format", "fmt", type=click.Choice(["torch-export", "onnx"]), default="torch-export", show_default=True,
              help="torch-export: a torch.export program (policy.pt2); onnx: the same through torch.onnx (policy.onnx)")
@handles_errors
def export(run, output, fmt):
    """Export the policy in RUN (a run folder: its latest checkpoint; or a checkpoint folder) with its
    normalization folded in, plus what a server needs (metadata, tokenizer, serve section)."""
    from ..runners.export import export_policy
    from ..runners.exported import read_manifest

    folder = export_policy(run, output, fmt)
    manifest = read_manifest(folder)
    inputs = ", ".join(f"{d['name']} {d['dtype']} {d['shape']}" for d in manifest["inputs"])
    click.echo(f"exported {manifest['metadata']['name']} ({fmt}) to {folder}/{manifest['graph_file']}")
    click.echo(f"graph inputs: {inputs}")
    click.echo(f"serve it with: graphvla serve {folder}")


commands = [export]
