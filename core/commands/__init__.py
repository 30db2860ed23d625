"""One module per ``poisonlens`` subcommand (see core/cli.py)."""
