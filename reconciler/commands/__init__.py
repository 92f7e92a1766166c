"""The subcommands of `edgefleet`, one module per family, each registering its parsers."""
