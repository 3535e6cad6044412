"""`python -m boltzkit.cli`."""

from boltzkit.cli import app

app()
