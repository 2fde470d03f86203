"""One module per ``uba-batch`` subcommand; each exposes a Click command named ``command``."""
