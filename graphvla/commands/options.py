"""What every command module shares: the user-error type, the repeatable --set option and the
decorator that prints spec and input errors as one clean line with exit code 1."""
from __future__ import annotations

import functools

import click

from ..errors import SpecError


# An error in the user's input, printed as 'Error: message' without a traceback (exit 1). A name
# for click's own type rather than a subclass: command modules define no classes (tests/test_layout.py).
UserError = click.ClickException


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
