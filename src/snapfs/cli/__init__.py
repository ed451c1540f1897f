"""The command line: :mod:`.main` parses arguments and dispatches to one module per group of subcommands."""
