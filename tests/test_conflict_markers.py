"""scripts/check-conflict-markers.py (run by `make verify`) finds git's conflict markers in tracked files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check-conflict-markers.py"
CONFLICT = "| a | b |\n<<<<<<< HEAD\n| kube/ | x |\n=======\n| kube/ | y |\n>>>>>>> work-17a\n"


def check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(repo)], capture_output=True, text=True, check=False)


def git_repo(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    subprocess.run(["git", "-C", str(tmp_path), "add", *files], check=True)
    return tmp_path


def test_clean_repository_passes(tmp_path: Path) -> None:
    # Lookalikes that are not markers: a longer rule, a marker not at the line's start, an untracked file.
    repo = git_repo(tmp_path, {"README.md": "Title\n==========\n\ntext <<<<<<< HEAD\n", "a.py": "x = '=======' \n"})
    (repo / "untracked.md").write_text(CONFLICT)
    done = check(repo)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_each_marker_is_reported_with_its_file_and_line(tmp_path: Path) -> None:
    repo = git_repo(tmp_path, {"README.md": CONFLICT, "docs/ok.md": "fine\n"})
    done = check(repo)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[:3] == ["README.md:2:<<<<<<< HEAD", "README.md:4:=======", "README.md:6:>>>>>>> work-17a"]
    assert "3 merge-conflict marker line(s)" in lines[-1]


def test_diff3_base_marker_and_binary_files(tmp_path: Path) -> None:
    repo = git_repo(tmp_path, {"a.txt": "||||||| base\n", "blob.bin": b"\x00\x01\n<<<<<<< HEAD\n"})
    done = check(repo)
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == "a.txt:1:||||||| base"
    assert "blob.bin" not in done.stderr


def test_not_a_repository_is_an_error(tmp_path: Path) -> None:
    done = check(tmp_path / "missing")
    assert done.returncode == 2
    assert "cannot search" in done.stderr


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_this_repository_has_no_markers() -> None:
    done = check(ROOT)
    assert done.returncode == 0, done.stderr
