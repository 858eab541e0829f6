"""``python -m fedadmet``: the same as the ``fedadmet`` command."""

from fedadmet.cli.main import main

main()
