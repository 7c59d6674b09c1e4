"""The click group, its error handling and the registration of every command."""

from __future__ import annotations

import os
import sys
import warnings

import click

from graft.cli.errors import exit_code, one_line
from graft.errors import GraftError


class GraftGroup(click.Group):
    """Turns errors into one line on stderr and an exit code (``--debug``: the traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (GraftError, OSError, ImportError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(exit_code(exc))


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@click.group(cls=GraftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks (with their causes) instead of one-line errors.")
@click.version_option(package_name="graft")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """graft: a folder of pictures in, a classifier that runs anywhere out."""
    ctx.obj = {"debug": debug}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ logs, when a command loads it
    if debug:
        os.environ["GRAFT_DEBUG"] = "1"  # graft.quiet shows the native start-up lines it captured
    else:
        warnings.showwarning = _show_warning



def main() -> None:
    cli(prog_name="graft")


def _register() -> None:
    from graft.cli import build, export, predict, report, serve

    for module in (build, export, predict, report, serve):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()
