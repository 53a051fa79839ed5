"""``python -m batchfarm.actors.cli`` runs the ``batchfarm`` command."""

from batchfarm.actors.cli import main

main()
