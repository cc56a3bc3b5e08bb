"""The `cnnkit` command: one module per group of subcommands, each turning flags into a Python call."""
