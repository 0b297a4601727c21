"""The command layer: one module per `tgmae` subcommand, each a `main(argv) -> int` that parses its
arguments with argparse and calls library functions (which never see argparse or argv).

`tgmae.cli` maps command names to these modules, sets up logging once and is the one error
boundary: a `UserError` raised anywhere below becomes `tgmae COMMAND: message`, exit 2.
"""
