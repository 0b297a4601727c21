"""Hub ids without a network fail at once (issue 28: after ~28 s of the hub client's retries)."""

from __future__ import annotations

import socket

import pytest

from tgmae.hub import ModelUnavailableError, hub_reachable, load_pretrained


def _closed_port() -> int:
    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_fails_before_the_hub_client_is_called(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub_reachable()
    calls = []

    def loader(name, **kwargs):
        calls.append(kwargs)
        raise OSError("not in the cache")

    with pytest.raises(ModelUnavailableError, match=r"'org/some-model'.*could not be reached \(no network\?\)"):
        load_pretrained(loader, "org/some-model")
    assert calls == [{"local_files_only": True}]  # the cache only: the network try never started


def test_offline_mode_fails_at_once_too(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def loader(name, **kwargs):
        calls.append(kwargs)
        raise OSError("not in the cache")

    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE=1"):
        load_pretrained(loader, "org/some-model")
    assert calls == [{"local_files_only": True}]


def test_a_reachable_endpoint_is_seen_as_such(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable()
