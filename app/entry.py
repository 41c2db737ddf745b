"""The `tenantry` command's first instructions, before anything heavy is imported: `serve` notes
a stop signal from here on (app.stopping), then the CLI is imported and run."""

from __future__ import annotations

import sys

from app.stopping import note_stops


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        note_stops()
    from app.cli import main as cli_main  # the heavy imports, after the handlers

    return cli_main()
