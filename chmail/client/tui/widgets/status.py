"""The status bar: sync progress, IMAP and CH connection state, the last error in words."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from chmail.client.safe_text import one_line

STATE_STYLE = {
    "online": "green",
    "connected": "green",
    "idle": "green",
    "connecting": "yellow",
    "syncing": "yellow",
    "offline": "red",
    "error": "red",
    "off": "dim",
}


class StatusBar(Static):
    """One line; every part is a reactive so workers update it by assignment."""

    mail_state: reactive[str] = reactive("off")
    ch_state: reactive[str] = reactive("off")
    sync: reactive[str] = reactive("")
    error: reactive[str] = reactive("")
    note: reactive[str] = reactive("")

    def render(self) -> Text:
        text = Text()
        text.append("Mail ", style="bold")
        text.append(self.mail_state, style=STATE_STYLE.get(self.mail_state, ""))
        text.append("  CH ", style="bold")
        text.append(self.ch_state, style=STATE_STYLE.get(self.ch_state, ""))
        # (errors and notes may quote a server's words: shown, never obeyed)
        if self.sync:
            text.append(f"  {one_line(self.sync)}", style="yellow")
        if self.error:
            text.append(f"  {one_line(self.error)}", style="bold red")
        elif self.note:
            text.append(f"  {one_line(self.note)}")
        text.append("   ? help")
        return text

    def say(self, note: str) -> None:
        """A transient note (replaces the last one); clears a shown error."""
        self.error = ""
        self.note = note

    def fail(self, error: str) -> None:
        self.error = error
