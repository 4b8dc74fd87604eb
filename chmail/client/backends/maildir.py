"""Maildir backend: the same interface as IMAP over a Maildir++ directory.

Rules:

* Folders: ``INBOX`` is the Maildir itself; ``Sent``, ``A/B`` are ``.Sent``, ``.A.B``
  (Maildir++), each with ``cur/ new/ tmp/``.
* Flags live in the file name (``:2,`` info, https://cr.yp.to/proto/maildir.html):
  D Draft, F Flagged, R Answered, S Seen, T Deleted.
* UIDs: Maildir has none, so each folder keeps ``chmail-uidlist`` (JSON: uidvalidity,
  next uid, unique name -> uid), updated under an exclusive lock. A message keeps its UID
  across flag changes (the unique name before ``:`` does not change).
* Files are delivered ``tmp/`` then renamed into ``cur/`` (atomic on one filesystem).
* ``wait_changes`` polls the directories' modification times (no inotify in stdlib).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path

from chmail.client.backends.base import FolderInfo, FolderState, role_of
from chmail.client.cache_models import NewMessage
from chmail.client.mime_headers import new_message
from chmail.errors import MailError

FLAG_LETTERS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
LETTER_OF = {v: k for k, v in FLAG_LETTERS.items()}
UIDLIST = "chmail-uidlist"
HEADER_READ = 64 * 1024  # bytes read to find the end of a header block
BATCH = 2000
_counter = 0


def split_name(filename: str) -> tuple[str, str]:
    """``unique:2,FS`` -> (``unique``, ``FS``)."""
    key, _, info = filename.partition(":")
    return key, info[2:] if info.startswith("2,") else ""


def flags_of(info: str) -> tuple[str, ...]:
    return tuple(FLAG_LETTERS[c] for c in info if c in FLAG_LETTERS)


def info_of(flags: Iterable[str]) -> str:
    return "".join(sorted({LETTER_OF[f] for f in flags if f in LETTER_OF}))


def unique_name() -> str:
    global _counter
    _counter += 1
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{_counter}.{host}"


class MaildirBackend:
    kind = "maildir"

    def __init__(self, account: str, root: str | Path, *, batch: int = BATCH) -> None:
        self.account = account
        self.root = Path(root)
        self.batch = batch
        self._paths: dict[str, dict[int, Path]] = {}

    async def connect(self) -> None:
        if not self.root.exists():
            await asyncio.to_thread(self._make, self.root)
        if not (self.root / "cur").is_dir():
            raise MailError(f"{self.root} is not a Maildir (no cur/ directory).")

    async def close(self) -> None:
        self._paths.clear()

    @staticmethod
    def _make(path: Path) -> None:
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)

    def _dir(self, folder: str) -> Path:
        if folder.upper() == "INBOX":
            return self.root
        if ".." in folder or folder.startswith("/"):
            raise MailError(f"{folder!r} is not a valid folder name.")
        return self.root / ("." + folder.replace("/", "."))

    # ------------------------------------------------------------ uid map

    def _scan(self, folder: str) -> tuple[dict[str, object], dict[int, Path]]:
        d = self._dir(folder)
        if not (d / "cur").is_dir():
            raise MailError(f"There is no folder {folder!r} in {self.root}.")
        files: dict[str, Path] = {}
        for sub in ("new", "cur"):
            with os.scandir(d / sub) as it:
                for entry in it:
                    if not entry.name.startswith("."):
                        files[split_name(entry.name)[0]] = Path(entry.path)
        lock_path = d / (UIDLIST + ".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._load(d)
            uids: dict[str, int] = state["uids"]  # type: ignore[assignment]
            changed = False
            for key in [k for k in uids if k not in files]:
                del uids[key]
                changed = True
            fresh = sorted((k for k in files if k not in uids), key=lambda k: (len(k), k))
            for key in fresh:
                uids[key] = int(state["next"])  # type: ignore[call-overload]
                state["next"] = int(state["next"]) + 1  # type: ignore[call-overload]
                changed = True
            if changed:
                tmp = d / (UIDLIST + ".tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, d / UIDLIST)
        by_uid = {uid: files[key] for key, uid in uids.items()}
        self._paths[folder] = by_uid
        return state, by_uid

    @staticmethod
    def _load(d: Path) -> dict[str, object]:
        try:
            state = json.loads((d / UIDLIST).read_text())
            if isinstance(state, dict) and {"uidvalidity", "next", "uids"} <= state.keys():
                return state
        except (OSError, ValueError):
            pass
        return {"uidvalidity": int(time.time()), "next": 1, "uids": {}}

    def _path(self, folder: str, uid: int) -> Path:
        p = self._paths.get(folder, {}).get(uid)
        if p is None or not p.exists():
            _, by_uid = self._scan(folder)
            p = by_uid.get(uid)
            if p is None:
                raise MailError(f"Message {uid} is no longer in {folder}.")
        return p

    # ------------------------------------------------------------ Backend

    async def folders(self) -> list[FolderInfo]:
        def run() -> list[FolderInfo]:
            out = [FolderInfo("INBOX", "/", "inbox")]
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                is_folder = entry.is_dir() and entry.name.startswith(".")
                if is_folder and (Path(entry.path) / "cur").is_dir():
                    name = entry.name[1:].replace(".", "/")
                    out.append(FolderInfo(name, "/", role_of(name)))
            return out

        return await asyncio.to_thread(run)

    async def create_folder(self, name: str) -> None:
        await asyncio.to_thread(self._make, self._dir(name))

    async def state(self, folder: str) -> FolderState:
        state, by_uid = await asyncio.to_thread(self._scan, folder)
        return FolderState(int(state["uidvalidity"]), int(state["next"]), len(by_uid))  # type: ignore[call-overload]

    async def uids(self, folder: str) -> list[int]:
        _, by_uid = await asyncio.to_thread(self._scan, folder)
        return sorted(by_uid)

    async def headers(
        self, folder: str, uids: list[int] | None
    ) -> AsyncGenerator[list[NewMessage], None]:
        if uids is None:
            uids = await self.uids(folder)
        for i in range(0, len(uids), self.batch):
            part = uids[i : i + self.batch]
            yield await asyncio.to_thread(self._read_headers, folder, part)

    def _read_headers(self, folder: str, uids: list[int]) -> list[NewMessage]:
        out = []
        for uid in uids:
            try:
                path = self._path(folder, uid)
                with open(path, "rb") as fh:
                    head = fh.read(HEADER_READ)
                    size = os.fstat(fh.fileno()).st_size
                    mtime = int(os.fstat(fh.fileno()).st_mtime)
            except (OSError, MailError):
                continue  # gone meanwhile: the next sync notices
            end = head.find(b"\n\n")
            end2 = head.find(b"\r\n\r\n")
            cut = min(x for x in (end, end2, len(head)) if x >= 0)
            flags = flags_of(split_name(path.name)[1])
            out.append(new_message(uid, head[: cut + 2], flags, size, date=mtime))
        return out

    async def flags(self, folder: str, since_modseq: int = 0) -> dict[int, frozenset[str]]:
        _, by_uid = await asyncio.to_thread(self._scan, folder)
        return {uid: frozenset(flags_of(split_name(p.name)[1])) for uid, p in by_uid.items()}

    async def body(self, folder: str, uid: int) -> bytes:
        def run() -> bytes:
            return self._path(folder, uid).read_bytes()

        try:
            return await asyncio.to_thread(run)
        except OSError as exc:
            raise MailError(f"Cannot read message {uid} in {folder}: {exc.strerror}.") from exc

    async def store_flags(
        self, folder: str, uids: list[int], add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> None:
        add, remove = set(add), set(remove)

        def run() -> None:
            for uid in uids:
                path = self._path(folder, uid)
                key, info = split_name(path.name)
                flags = (set(flags_of(info)) | add) - remove
                target = path.parent.parent / "cur" / f"{key}:2,{info_of(flags)}"
                if target != path:
                    os.rename(path, target)
                    self._paths[folder][uid] = target

        await asyncio.to_thread(run)

    async def move(self, folder: str, uids: list[int], dest: str) -> dict[int, int]:
        return await self._transfer(folder, uids, dest, keep=False)

    async def copy(self, folder: str, uids: list[int], dest: str) -> dict[int, int]:
        return await self._transfer(folder, uids, dest, keep=True)

    async def _transfer(
        self, folder: str, uids: list[int], dest: str, *, keep: bool
    ) -> dict[int, int]:
        def run() -> dict[int, int]:
            target_dir = self._dir(dest)
            if not (target_dir / "cur").is_dir():
                raise MailError(f"There is no folder {dest!r}.")
            names: dict[int, str] = {}
            for uid in uids:
                path = self._path(folder, uid)
                _, info = split_name(path.name)
                key = unique_name() if keep else split_name(path.name)[0]
                target = target_dir / "cur" / f"{key}:2,{info}"
                if keep:
                    tmp = target_dir / "tmp" / key
                    shutil.copyfile(path, tmp)
                    os.rename(tmp, target)
                else:
                    os.rename(path, target)
                names[uid] = key
            state, _ = self._scan(dest)
            self._scan(folder)
            table: dict[str, int] = state["uids"]  # type: ignore[assignment]
            return {uid: table[key] for uid, key in names.items() if key in table}

        return await asyncio.to_thread(run)

    async def expunge(self, folder: str, uids: list[int]) -> None:
        def run() -> None:
            for uid in uids:
                with contextlib.suppress(MailError, FileNotFoundError):
                    os.unlink(self._path(folder, uid))
            self._scan(folder)

        await asyncio.to_thread(run)

    async def find_message_id(self, folder: str, message_id: str) -> list[int]:
        uids = await self.uids(folder)
        found = await asyncio.to_thread(self._read_headers, folder, uids)
        return [m.uid for m in found if m.message_id == message_id]

    async def append(
        self, folder: str, raw: bytes, flags: Iterable[str] = (), date: float | None = None
    ) -> int | None:
        flags = list(flags)

        def run() -> int | None:
            d = self._dir(folder)
            if not (d / "cur").is_dir():
                self._make(d)
            key = unique_name()
            tmp = d / "tmp" / key
            with open(tmp, "xb") as fh:
                fh.write(raw)
            if date is not None:
                os.utime(tmp, (date, date))
            os.rename(tmp, d / "cur" / f"{key}:2,{info_of(flags)}")
            state, _ = self._scan(folder)
            uid = state["uids"].get(key)  # type: ignore[attr-defined]
            return int(uid) if uid is not None else None

        return await asyncio.to_thread(run)

    async def wait_changes(self, folder: str, seconds: float) -> bool:
        d = self._dir(folder)

        def stamp() -> tuple[int, int]:
            return (os.stat(d / "new").st_mtime_ns, os.stat(d / "cur").st_mtime_ns)

        before = await asyncio.to_thread(stamp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))  # polling mtimes
            if await asyncio.to_thread(stamp) != before:
                return True
        return False
