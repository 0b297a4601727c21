"""The command table: every entry resolves, shows help, and errors are messages, not traces."""

from __future__ import annotations

import importlib

import pytest

from tgmae.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_resolves_to_a_callable(name):
    module, func = COMMANDS[name][0].split(":")
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"data", "visualize"}))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_top_level_help_and_unknown_command(capsys):
    assert main([]) == 0
    assert "pretrain" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_config_error_is_a_message(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "masking.ratio=1.5"])
    assert e.value.code == 2
    assert "config error: masking.ratio=1.5: must be strictly between 0 and 1" in capsys.readouterr().err
