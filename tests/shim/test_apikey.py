"""A rotated API key reaches the shim without a restart (``shim/apikey.py``).

Kubernetes updates a mounted Secret by writing a new timestamped folder and
swapping the volume's ``..data`` symlink; these tests rotate keys the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import httpx
import pytest
from scripted import ScriptedBackend, ServerThread, scripted_args
from shimproc import wait_until

from turnout.shim.apikey import ApiKeyFile
from turnout.shim.app import create_app


class SecretVolume:
    """A folder laid out like a Secret volume: ``token -> ..data/token``, ``..data -> ..<version>``."""

    def __init__(self, root: Path, key: str) -> None:
        self.root, self.version = root, 0
        self.write(key)
        (root / "token").symlink_to(Path("..data") / "token")

    @property
    def path(self) -> str:
        return str(self.root / "token")

    def write(self, key: str) -> None:
        self.version += 1
        folder = self.root / f"..v{self.version}"
        folder.mkdir()
        (folder / "token").write_text(key)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.replace(tmp, self.root / "..data")  # atomic, as the kubelet does


def test_the_key_follows_a_rotated_secret(tmp_path: Path) -> None:
    vol = SecretVolume(tmp_path, "first\n")
    key = ApiKeyFile(vol.path, interval=0)
    assert key.current() == b"first"
    vol.write("second")
    assert key.current() == b"second"


def test_the_file_is_looked_at_once_per_interval(tmp_path: Path) -> None:
    vol = SecretVolume(tmp_path, "first")
    key = ApiKeyFile(vol.path, interval=3600)
    vol.write("second")
    assert key.current() == b"first"  # not looked at again within the interval
    key._next = 0  # the interval has passed
    assert key.current() == b"second"


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_an_empty_rotation_keeps_the_previous_key(tmp_path: Path, bad: str, caplog) -> None:
    vol = SecretVolume(tmp_path, "first")
    key = ApiKeyFile(vol.path, interval=0)
    with caplog.at_level(logging.WARNING, logger="turnout.shim"):
        vol.write(bad)
        assert key.current() == b"first"
        assert key.current() == b"first"
    warnings = [r for r in caplog.records if "keeping the previous key" in r.getMessage()]
    assert len(warnings) == 1  # said once, not per request
    vol.write("third")
    assert key.current() == b"third"


def test_a_removed_file_keeps_the_previous_key(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("first")
    key = ApiKeyFile(str(f), interval=0)
    f.unlink()
    assert key.current() == b"first"
    f.write_text("back")
    assert key.current() == b"back"


def test_a_bad_file_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        ApiKeyFile(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        ApiKeyFile(str(tmp_path / "empty"))


def test_the_key_never_reaches_the_log(tmp_path: Path, caplog) -> None:
    vol = SecretVolume(tmp_path, "sekrit-one")
    key = ApiKeyFile(vol.path, interval=0)
    with caplog.at_level(logging.DEBUG, logger="turnout.shim"):
        vol.write("sekrit-two")
        key.current()
        vol.write("")
        key.current()
    assert caplog.records and not any("sekrit" in r.getMessage() for r in caplog.records)


def test_a_running_shim_accepts_the_rotated_key_and_refuses_the_old(tmp_path: Path, free_port_factory) -> None:
    vol = SecretVolume(tmp_path, "old-key")
    port = free_port_factory()
    args = dataclasses.replace(scripted_args(port), api_key_file=vol.path)
    with ServerThread(create_app(ScriptedBackend(args), args), port) as server:
        url = server.base_url + "/v1/models"

        def status(token: str) -> int:
            return httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code

        wait_until(lambda: status("old-key") == 200, "the shim serves with the first key")
        assert status("new-key") == 401
        vol.write("new-key")
        wait_until(lambda: status("new-key") == 200, "the rotated key is accepted")
        assert status("old-key") == 401
