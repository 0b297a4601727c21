"""User errors (`tgmae.errors`): one raised inside a DataLoader worker reaches the command line
as its own one-line message (issue 28: a 54-line traceback), a bug keeps its traceback."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from tgmae.config import ConfigError
from tgmae.errors import SWITCHES, SettingsError, env_switch, worker_user_error


class Failing(Dataset):
    def __init__(self, error: Exception):
        self.error = error

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        raise self.error


def _raised_in_worker(error: Exception) -> BaseException:
    with pytest.raises(Exception) as e:
        next(iter(DataLoader(Failing(error), num_workers=1)))
    return e.value


def test_a_user_error_from_a_worker_gives_its_own_message():
    e = _raised_in_worker(ConfigError("data.num_frames=64: longer than every video"))
    assert worker_user_error(e) == "data.num_frames=64: longer than every video"
    assert worker_user_error(_raised_in_worker(FileNotFoundError("a.mp4: gone"))) == "a.mp4: gone"


def test_a_bug_in_a_worker_is_no_user_error():
    assert worker_user_error(_raised_in_worker(ZeroDivisionError("division by zero"))) is None
    assert worker_user_error(ValueError("Caught nothing")) is None


def worker_command(argv) -> int:
    """A command whose DataLoader worker finds a user error."""
    next(iter(DataLoader(Failing(ConfigError("captions missing for 2 videos: a, b")), num_workers=1)))
    return 0


def test_cli_shows_a_worker_user_error_as_one_line(monkeypatch, capsys):
    from tgmae import cli

    monkeypatch.setitem(cli.COMMANDS, "boom", (f"{__name__}:worker_command", "test"))
    assert cli.main(["boom"]) == 2
    assert capsys.readouterr().err == "tgmae boom: config error: captions missing for 2 videos: a, b\n"


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_a_switch_reads_on_or_off_and_refuses_any_other_value(name, monkeypatch):
    """Re-trial 26B M5: `TGMAE_AUTOTUNE=bogus` acted as on, and `TGMAE_DEBUG=on` as off, silently.
    A switch takes on/off words in any case (unset or empty: its default); any other value is a
    SettingsError naming the variable, the value and the accepted words."""
    for value, on in (("on", True), ("1", True), ("TRUE", True), (" yes ", True),
                      ("off", False), ("0", False), ("False", False), ("NO", False)):
        monkeypatch.setenv(name, value)
        assert env_switch(name) is on, value
    monkeypatch.setenv(name, "")
    assert env_switch(name) is SWITCHES[name]
    monkeypatch.delenv(name)
    assert env_switch(name) is SWITCHES[name]
    monkeypatch.setenv(name, "bogus")
    with pytest.raises(SettingsError, match=rf"^{name}='bogus': expected on or off \(1/0, true/false, yes/no\)"):
        env_switch(name)
