"""`graft report`, and keeping an existing report current after commands that change a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from graft.errors import first_line


@click.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="HTML file to write [BUNDLE/report.html]; MODEL_CARD.md goes beside it.")
def report(bundle_dir, output):
    """Write a self-contained HTML report and a model card for a bundle (opens offline)."""
    from graft.report import write_report

    path = write_report(bundle_dir, output)
    click.echo(f"wrote {path} and {path.parent / 'MODEL_CARD.md'}")


def after_change(bundle_dir: str | Path, had_report: bool | None = None) -> None:
    """Regenerate BUNDLE/report.html if there is one (or was one before a rebuild); else say how
    to make one. A report that cannot be written is a warning: it never changes the exit code."""
    from graft.report.html import REPORT_NAME

    path = Path(bundle_dir, REPORT_NAME)
    if not (had_report if had_report is not None else path.is_file()):
        click.echo(f"report: graft report {bundle_dir}")
        return
    try:
        from graft.report import write_report

        click.echo(f"updated {write_report(bundle_dir)}")
    except Exception as exc:  # the report is a view: it never changes the command's outcome
        click.echo(f"warning: the report was not updated ({first_line(exc)})", err=True)


COMMANDS = [report]
