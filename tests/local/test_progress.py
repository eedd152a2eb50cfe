"""Progress of long local steps: plain lines in a pipe or log, a live bar or spinner on a real terminal (a pty)."""

from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path

import pytest

from turnout.progress import Step, human_bytes

TIME = r"\d+\.\ds"


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_plain_lines_name_each_phase_and_each_quarter() -> None:
    out = io.StringIO()
    with Step(out, "building model builtin://tiny-llama") as step:
        step("tokenizer")
        for i in range(1, 9):
            step("training", completed=i, total=8)
        step("writing safetensors and GGUF")
    lines = _lines(out)
    assert lines[:-1] == [
        "• building model builtin://tiny-llama …",
        "  tokenizer",
        "  training",
        "  25% (2/8)",
        "  50% (4/8)",
        "  75% (6/8)",
        "  writing safetensors and GGUF",
    ]
    assert re.fullmatch(rf"  done in {TIME}", lines[-1])
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue(), "no terminal control codes in a log"


def test_plain_lines_show_sizes_for_bytes_and_say_when_it_failed() -> None:
    out = io.StringIO()
    with pytest.raises(OSError), Step(out, "downloading model s3://b/m", unit="B") as step:
        step(completed=300_000, total=1_000_000)
        step(completed=600_000, total=1_000_000)
        raise OSError("connection reset")
    lines = _lines(out)
    assert lines[1:3] == ["  25% (300.0 KB of 1.0 MB)", "  50% (600.0 KB of 1.0 MB)"]
    assert re.fullmatch(rf"  failed after {TIME}", lines[-1])


def test_the_engine_start_repeats_a_phase_once() -> None:
    out = io.StringIO()
    with Step(out, "starting transformers") as step:
        for what in ("starting", "starting", "loading the model", "loading the model"):
            step.tick(what)
        step.note = "ready"
    assert _lines(out)[1:3] == ["  starting", "  loading the model"]
    assert _lines(out)[-1].endswith("(ready)")


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1500, 2_500_000, 3_000_000_000, 5e12)] == [
        "0 B", "999 B", "1.5 KB", "2.5 MB", "3.0 GB", "5000.0 GB"]


class _Pty:
    """A real pseudo-terminal: the step writes to its slave end, a thread drains the master end."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.out = os.fdopen(slave, "w", encoding="utf-8")
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        self.out.close()
        self.reader.join(timeout=5)
        os.close(self.master)
        return b"".join(self.chunks).decode("utf-8", "replace")


@pytest.fixture
def pty(monkeypatch: pytest.MonkeyPatch) -> _Pty:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "120")
    return _Pty()


def _settle(seconds: float = 0.6) -> None:
    time.sleep(seconds)  # rich redraws the line from its own thread (8 times a second)


def test_terminal_shows_a_bar_with_size_and_eta(pty: _Pty) -> None:
    with Step(pty.out, "downloading model hf://org/repo", unit="B") as step:
        assert step.terminal
        step(completed=250_000_000, total=1_000_000_000)
        _settle()
    text = pty.text()
    assert text.startswith("• downloading model hf://org/repo …")
    assert "━" in text, "a bar"
    assert re.search(r"250\.0/1000\.0 MB|0\.2/1\.0 GB|250/1000 MB", text), text
    assert "ETA" in text and "\x1b[" in text, "a live line, redrawn in place"
    assert re.search(rf"  done in {TIME}", text)
    assert "25%" not in text, "no plain quarter lines on a terminal"


def test_terminal_shows_a_spinner_and_elapsed_time_without_a_size(pty: _Pty) -> None:
    with Step(pty.out, "starting llama.cpp") as step:
        step.tick("loading the model")
        _settle()
    text = pty.text()
    assert "loading the model" in text
    assert re.search(r"0:00:0\d", text), "elapsed time"
    assert re.search("[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]", text), "a spinner"
    assert "━" not in text and "ETA" not in text, "no bar while the size is unknown"


def test_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TERM", "dumb")
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w") as out:
            assert not Step(out, "x").terminal
    finally:
        os.close(master)
