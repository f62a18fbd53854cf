"""The command line: ``lexigram-storage``, ``python -m lexigram_storage`` and ``lexigram storage``.

``app`` holds the commands (typer and rich: ``pip install "lexigram_storage[cli]"``);
``contributor`` plugs them and the doctor checks into lexigram-cli.
"""
