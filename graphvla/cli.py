"""`graphvla ...`: the command-line interface. Each command lives in its own module and is
registered here; spec errors print as 'file:line:col: error: path: message' with exit code 1
(a traceback only with --debug)."""
from __future__ import annotations

import functools
import importlib
import sys

import click

from .errors import SpecError

# Modules that define commands (each exposes `commands`: a list of click commands).
COMMAND_MODULES = [
    "graphvla.commands.spec_cmds",
    "graphvla.commands.check_cmds",
    "graphvla.commands.train_cmds",
    "graphvla.commands.serve_cmds",
    "graphvla.commands.fast_cmds",
    "graphvla.commands.data_cmds",
    "graphvla.commands.quickstart_cmds",
]


class UserError(click.ClickException):
    """An error in the user's input, printed without a traceback."""


def set_option(f):
    """--set a.b.c=value (repeatable): override any key of the spec."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set blocks.head.with.hidden=512 (repeatable)")(f)


def handles_errors(f):
    """Turn SpecError and other user-facing errors into clean messages and exit code 1."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug", False)
        try:
            return f(*args, **kwargs)
        except SpecError as e:
            if debug:
                raise
            click.echo(e.format(), err=True)
            ctx.exit(1)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            if debug:
                raise
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            click.echo(f"error: {msg}", err=True)
            ctx.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show Python tracebacks")
@click.version_option(package_name="graphvla")
def main(debug):
    """GraphVLA: Vision-Language-Action policies from a YAML graph."""


def _register():
    for name in COMMAND_MODULES:
        mod = importlib.import_module(name)
        for cmd in mod.commands:
            main.add_command(cmd)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
