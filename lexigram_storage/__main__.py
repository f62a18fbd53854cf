"""``python -m lexigram_storage``: the storage command line (see ``lexigram_storage.cli``)."""

import sys

try:
    from lexigram_storage.cli.app import app
except ModuleNotFoundError as exc:  # typer or rich: the cli extra
    if exc.name not in ("typer", "rich"):
        raise
    sys.stderr.write(f'error: the storage command line needs {exc.name}: '
                     'pip install "lexigram_storage[cli]"\n')
    sys.exit(2)

app(prog_name="python -m lexigram_storage")
