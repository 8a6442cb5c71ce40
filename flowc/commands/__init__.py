"""Subcommands of `flowc` that live in their own modules (see flowc.cli.COMMAND_MODULES)."""
