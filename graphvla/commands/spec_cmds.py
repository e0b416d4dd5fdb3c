"""Spec commands: validate, compile, schema, blocks, viz, diff."""
from __future__ import annotations

import json

import click

from .options import handles_errors, set_option


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@handles_errors
def validate(spec, overrides):
    """Check SPEC against the schema and as a graph; report every error at once."""
    from ..compiler.validate import validate_graph

    s = validate_graph(spec, overrides)
    for w in getattr(s, "warnings", []):
        click.echo(w.format(), err=True)
    click.echo(f"{spec}: ok ({s.name}, fingerprint {s.fingerprint[:16]})")


@click.command(name="compile")
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@click.option("--code", is_flag=True, help="print the generated Python of each graph")
@handles_errors
def compile_cmd(spec, overrides, code):
    """Check SPEC, compute shapes on meta tensors and lower it to torch.fx graphs."""
    from ..compiler.compile import compile_graph

    cg = compile_graph(spec, overrides)
    click.echo(cg.summary())
    if code:
        for stream, gm in cg.train.items():
            click.echo(f"\n# train graph, stream '{stream}'" + gm.code)
        click.echo("\n# inference graph" + cg.infer.code)


@click.command()
def schema():
    """Print the JSON schema of a spec, including every registered block's `with:`."""
    from ..spec.schema import spec_schema

    click.echo(json.dumps(spec_schema(), indent=2))


@click.command()
@click.option("-v", "--verbose", is_flag=True, help="also show the defining file, ports and parameters")
def blocks(verbose):
    """List the registered block types."""
    from ..blocks.registry import defining_file, registered

    for name, cls in registered().items():
        click.echo(f"{name:24s} {cls.description}")
        if verbose:
            click.echo(f"    file {defining_file(cls)}")
            for p, d in cls.in_ports.items():
                flags = ", ".join(f for f, on in (("optional", d.optional), ("target", d.target)) if on)
                click.echo(f"    in  {p:12s} {'|'.join(d.kinds):14s} {flags}")
            for p, d in cls.out_ports.items():
                click.echo(f"    out {p:12s} {d.kind:14s} {'train only' if d.train_only else ''}")
            for k, s in (cls.params_schema.get("properties") or {}).items():
                click.echo(f"    with {k}: {s.get('type', s.get('enum', ''))} default={s.get('default', '-')}")


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="picture to write: .dot, .svg, .mmd (Mermaid) or .html (standalone page)")
@set_option
@handles_errors
def viz(spec, output, overrides):
    """Draw SPEC: blocks, edges with shapes (meta tensors), losses, the inference graph."""
    from ..compiler.compile import compile_graph
    from ..viz import FORMATS, render
    from ..viz.svg import GraphvizMissing

    suffix = output[output.rfind("."):].lower() if "." in output else ""
    if suffix not in FORMATS:
        raise click.UsageError(f"cannot tell the format of '{output}': end it in {', '.join(FORMATS)}")
    cg = compile_graph(spec, overrides, device="meta")
    try:
        render(cg, output)
    except GraphvizMissing as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {output}")


@click.command()
@click.argument("spec_a", type=click.Path(dir_okay=False))
@click.argument("spec_b", type=click.Path(dir_okay=False))
@click.option("--params", is_flag=True, help="also compare parameter counts per block (compiles both on meta)")
@set_option
@handles_errors
def diff(spec_a, spec_b, params, overrides):
    """What differs from SPEC_A to SPEC_B: blocks, wiring, losses, outputs, edges (exit 0).
    --set applies to both."""
    from ..compiler.diff import diff_specs, format_diff
    from ..spec.loader import load_spec

    a, b = load_spec(spec_a, overrides), load_spec(spec_b, overrides)
    click.echo(format_diff(a, b, diff_specs(a, b, params=params)))


commands = [validate, compile_cmd, schema, blocks, viz, diff]
