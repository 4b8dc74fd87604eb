"""The reader: headers, the text (HTML shown as text), the attachments of one mail."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from chmail.client.safe_text import one_line
from chmail.client.tui.mailview import MailView, human_size


class Reader(VerticalScroll, can_focus=True):
    """Shows one parsed mail; ``chat_line`` says whether and how it can become a chat."""

    def compose(self) -> ComposeResult:
        yield Static(id="reader-headers")
        yield Static(id="reader-chat")
        yield Static(id="reader-body")
        yield Static(id="reader-attachments")

    def clear(self, note: str = "") -> None:
        self.query_one("#reader-headers", Static).update(Text(one_line(note)))
        self.query_one("#reader-chat", Static).update("")
        self.query_one("#reader-body", Static).update("")
        self.query_one("#reader-attachments", Static).update("")
        self.view: MailView | None = None

    def show(self, view: MailView, chat_line: str = "") -> None:
        self.view = view
        head = Text()
        for name, value in view.headers:
            if name.lower().startswith("x-ch-"):
                continue
            head.append(f"{name}: ", style="bold")
            head.append(value + "\n")
        self.query_one("#reader-headers", Static).update(head)
        self.set_chat_line(chat_line)
        body = view.text or "(this mail has no text)"
        if view.was_html:
            body = "[HTML mail shown as text]\n\n" + body
        self.query_one("#reader-body", Static).update(Text(body))
        if view.attachments:
            att = Text("Attachments (S saves, O opens):\n", style="bold")
            for a in view.attachments:
                line = f"{a.index + 1}. {a.filename}  {a.content_type}  {human_size(a.size)}"
                att.append(f"  {one_line(line)}\n")
        else:
            att = Text()
        self.query_one("#reader-attachments", Static).update(att)
        self.scroll_home(animate=False)

    def set_chat_line(self, line: str) -> None:
        self.query_one("#reader-chat", Static).update(Text(one_line(line)))
