"""What a result is keyed by: the code that produced it and the settings it ran with.

`code_version` digests the Python sources of the packages the evaluation runs (models/, streams/, agents/), so an
edit anywhere that can change a number changes the key; the git commit, when there is one, is recorded beside it
for people. `run_key` adds the evaluation's configuration and every setting."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "streams", "agents")


def code_version(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_commit(root: Path = ROOT) -> str | None:
    """HEAD's commit, with '+dirty' when tracked files differ from it; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def run_key(code: str, config: dict[str, Any], settings: dict[str, Any]) -> str:
    payload = orjson.dumps({"code": code, "config": config, "settings": settings},
                           option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(payload).hexdigest()[:12]
