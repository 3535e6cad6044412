"""`python -m boltzkit` (and `torchrun ... -m boltzkit sample ...`): the CLI."""

from boltzkit.cli import app

app()
