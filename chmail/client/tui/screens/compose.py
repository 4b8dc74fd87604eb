"""Compose, reply, reply-all and forward: a built-in editor or ``$EDITOR``.

Drafts are saved as you type (one save a second at most, in a worker), so nothing written
is lost if the terminal closes. Sending hands the mail to the outbox and closes the screen;
the outbox delivers it even if SMTP is down right now.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.suggester import Suggester
from textual.timer import Timer
from textual.widgets import Footer, Input, Label, Static, TextArea

from chmail.client.safe_text import one_line
from chmail.client.tui.api import Draft, MailApi
from chmail.errors import ChmailError

AUTOSAVE_DELAY = 1.0


class AddressSuggester(Suggester):
    """Completes the address being typed (after the last comma) from the cache."""

    def __init__(self, mail: MailApi) -> None:
        super().__init__(use_cache=False, case_sensitive=False)
        self.mail = mail

    async def get_suggestion(self, value: str) -> str | None:
        head, sep, last = value.rpartition(",")
        prefix = last.strip()
        if len(prefix) < 2:
            return None
        try:
            found = await self.mail.addresses(prefix, limit=1)
        except ChmailError:
            return None
        if not found:
            return None
        choice = found[0].display()
        if not choice.lower().startswith(prefix.lower()):
            choice = found[0].address
            if not choice.lower().startswith(prefix.lower()):
                return None
        lead = head + sep + (" " if sep else "")
        return lead + one_line(choice)


def pick_editor(configured: str) -> str:
    return configured or os.environ.get("VISUAL", "") or os.environ.get("EDITOR", "")


class ComposeScreen(Screen[str | None]):
    """Writes one mail. Dismisses with the outbox id when sent, None when closed."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "send", "Send", priority=True, id="compose.send"),
        Binding("ctrl+e", "external_editor", "$EDITOR", id="compose.editor"),
        Binding("escape", "close", "Close (keep draft)", id="compose.close"),
        Binding("ctrl+d", "discard", "Discard", id="compose.discard"),
    ]

    def __init__(self, mail: MailApi, draft: Draft, *, editor: str = "", title: str = "") -> None:
        super().__init__()
        self.mail = mail
        self.draft = draft
        self.editor = editor
        self.heading = title or "New mail"
        self._timer: Timer | None = None
        self.saves = 0

    def compose(self) -> ComposeResult:
        sugg = AddressSuggester(self.mail)
        with Vertical(id="compose"):
            yield Static(
                f"{self.heading}  —  from account {self.draft.account}", id="compose-title"
            )
            with Horizontal(classes="field"):
                yield Label("To", classes="field-label")
                yield Input(self.draft.to, id="to", suggester=sugg, placeholder="name@example.org")
            with Horizontal(classes="field"):
                yield Label("Cc", classes="field-label")
                yield Input(self.draft.cc, id="cc", suggester=sugg)
            with Horizontal(classes="field"):
                yield Label("Subject", classes="field-label")
                yield Input(self.draft.subject, id="subject")
            yield TextArea(self.draft.body, id="body", soft_wrap=True, show_line_numbers=False)
            yield Static("", id="compose-status")
        yield Footer()

    def on_mount(self) -> None:
        first = "#body" if self.draft.to else "#to"
        self.query_one(first).focus()
        if first == "#body":
            self.query_one("#body", TextArea).move_cursor((0, 0))

    # ---------------------------------------------------------------- drafts

    def _collect(self) -> Draft:
        self.draft.to = self.query_one("#to", Input).value
        self.draft.cc = self.query_one("#cc", Input).value
        self.draft.subject = self.query_one("#subject", Input).value
        self.draft.body = self.query_one("#body", TextArea).text
        return self.draft

    @on(Input.Changed)
    @on(TextArea.Changed)
    def _changed(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(AUTOSAVE_DELAY, self._autosave)

    def _autosave(self) -> None:
        self._save()

    @work(group="draft", exclusive=True)
    async def _save(self) -> None:
        draft = self._collect()
        try:
            draft.draft_id = await self.mail.save_draft(draft)
        except ChmailError as exc:
            self._status(f"Draft not saved: {exc}")
            return
        self.saves += 1
        self._status("Draft saved.")

    def _status(self, text: str) -> None:
        self.query_one("#compose-status", Static).update(text)

    # ---------------------------------------------------------------- actions

    @work(group="send", exclusive=True)
    async def action_send(self) -> None:
        draft = self._collect()
        if not draft.to.strip():
            self._status("Add at least one recipient in To before sending.")
            self.query_one("#to").focus()
            return
        if self._timer is not None:
            self._timer.stop()
        self._status("Sending…")
        try:
            outbox_id = await self.mail.send(draft)
        except ChmailError as exc:
            self._status(f"Not sent: {exc}")
            return
        if draft.draft_id is not None:
            with contextlib.suppress(ChmailError):
                await self.mail.delete_draft(draft.account, draft.draft_id)
        self.dismiss(outbox_id)

    def action_close(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        draft = self._collect()
        if draft.to or draft.subject or draft.body.strip():
            self._save_then_close()
        else:
            self.dismiss(None)

    @work(group="draft", exclusive=True)
    async def _save_then_close(self) -> None:
        try:
            self.draft.draft_id = await self.mail.save_draft(self.draft)
        except ChmailError as exc:
            self.app.notify(one_line(f"Draft not saved: {exc}"), severity="error", markup=False)
        self.dismiss(None)

    @work(group="draft", exclusive=True)
    async def action_discard(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self.draft.draft_id is not None:
            try:
                await self.mail.delete_draft(self.draft.account, self.draft.draft_id)
            except ChmailError as exc:
                self.app.notify(
                    one_line(f"Draft not deleted: {exc}"), severity="error", markup=False
                )
        self.dismiss(None)

    def action_external_editor(self) -> None:
        editor = pick_editor(self.editor)
        if not editor:
            self._status("No $EDITOR set; you are in the built-in editor.")
            return
        area = self.query_one("#body", TextArea)
        with tempfile.TemporaryDirectory(prefix="chmail-") as tmp:
            path = Path(tmp) / "mail.txt"
            path.write_text(area.text, encoding="utf-8")
            with self.app.suspend():
                subprocess.run([*shlex.split(editor), str(path)], check=False)
            area.text = path.read_text(encoding="utf-8")
        self._changed()
