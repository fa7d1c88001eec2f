"""``python -m flashkit.cli``: the ``flashkit`` command."""

from flashkit.cli import main

main()
