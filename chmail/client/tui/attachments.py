"""Saving and opening a mail's attachments (S and O in the reader). Returns what to tell
the user; never raises for a missing opener."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from chmail.client.tui.mailview import MailView

NONE = "This mail has no attachments (open a mail with Enter first)."


def download_dir() -> Path:
    return Path(os.environ.get("XDG_DOWNLOAD_DIR", Path.home() / "Downloads"))


def _unused_name(folder: Path, name: str) -> Path:
    """``name`` in ``folder``, or ``name (2)`` ... : never overwrite a file."""
    path = folder / name
    stem, suffix, n = path.stem, path.suffix, 2
    while path.exists():
        path = folder / f"{stem} ({n}){suffix}"
        n += 1
    return path


def save_all(view: MailView | None) -> str:
    if view is None or not view.attachments:
        return NONE
    target = download_dir()
    target.mkdir(parents=True, exist_ok=True)
    for a in view.attachments:
        _unused_name(target, a.filename).write_bytes(a.data)
    return f"Saved {len(view.attachments)} attachment(s) to {target}."


def open_first(view: MailView | None) -> str:
    if view is None or not view.attachments:
        return NONE
    a = view.attachments[0]
    path = Path(tempfile.mkdtemp(prefix="chmail-")) / a.filename
    path.write_bytes(a.data)
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    try:
        subprocess.Popen([opener, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return f"No program to open it here; saved to {path}."
    return f"Opening {a.filename}."
