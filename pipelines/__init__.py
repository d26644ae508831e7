"""Pipelines: the YAML config (config.py), the runner (runner.py) and the CLI (cli.py)."""
