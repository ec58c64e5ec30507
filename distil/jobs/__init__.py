"""Each Ray stage as a module: ``python -m distil.jobs.<stage>`` (what ``jobs/*.py`` and the CLI run)."""
