"""The operator's keys on a campaign chat (S209-S219): canned replies, interest tags,
calling a member. Small pickers, and the verbs the main screen runs them with.

* ``ctrl+o`` in a chat: the canned replies the shop sent with the chat's brief,
  numbered; one digit (or Enter on a row) sends that reply. ``F1``-``F9`` send reply
  1-9 at once, without the list.
* ``ctrl+g`` in a chat: interests for the member (comma separated); the shop stores
  them and ``campaign create --for-interest`` targets them. Works after the chat ended.
* ``d`` in the chat queue (Q): call a member about a campaign; an offline member gets
  an alarm at the next login and by mail.

Every binding has an id, so ``[ui].keys`` remaps it like any other key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static

from chmail.client.safe_text import one_line
from chmail.errors import ChmailError

if TYPE_CHECKING:
    from chmail.client.tui.api import ChatApi
    from chmail.client.tui.screens.main import MainScreen

MAX_SHOWN = 9  # replies reachable with one digit
MAX_TAGS = 20


class CannedScreen(ModalScreen[str | None]):
    """Pick a canned reply: a digit sends the reply with that number."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="canned.cancel"),
        *(
            Binding(str(n), f"pick({n})", f"Reply {n}", show=False, id=f"canned.{n}")
            for n in range(1, MAX_SHOWN + 1)
        ),
    ]

    def __init__(self, replies: list[tuple[str, str]]) -> None:
        super().__init__()
        self.replies = replies

    def compose(self) -> ComposeResult:
        with Vertical(id="op-pick"):
            yield Static("Canned reply — press its number", id="op-title")
            yield OptionList(
                *(
                    Text(one_line(f"{i}  {key}: {text}"))
                    for i, (key, text) in enumerate(self.replies[:MAX_SHOWN], start=1)
                ),
                id="canned-list",
            )

    def action_pick(self, n: int) -> None:
        if 1 <= n <= min(len(self.replies), MAX_SHOWN):
            self.dismiss(self.replies[n - 1][1])

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.replies[event.option_index][1])

    def action_cancel(self) -> None:
        self.dismiss(None)


def parse_tags(text: str) -> list[str]:
    """``running, trail shoes`` -> ``["running", "trail shoes"]`` (no empty or repeated)."""
    seen: dict[str, None] = {}
    for part in text.split(","):
        tag = " ".join(part.split()).lower()
        if tag:
            seen.setdefault(tag[:40])
    return list(seen)[:MAX_TAGS]


class TagScreen(ModalScreen[list[str] | None]):
    """Type the member's interests, comma separated; Enter stores them."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="tag.cancel"),
    ]

    def __init__(self, member: str) -> None:
        super().__init__()
        self.member = member

    def compose(self) -> ComposeResult:
        with Vertical(id="op-pick"):
            title = f"Interests of {one_line(self.member)} (comma separated)"
            yield Static(Text(title), id="op-title")
            yield Input(placeholder="e.g. trail running, rain jackets", id="tag-input")

    @on(Input.Submitted, "#tag-input")
    def _submit(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(parse_tags(event.value) or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DialScreen(ModalScreen[tuple[str, int] | None]):
    """Call a member (S209): their CH login and the campaign; Enter calls."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="dial.cancel"),
    ]

    def __init__(self, campaign: int | None) -> None:
        super().__init__()
        self.campaign = campaign

    def compose(self) -> ComposeResult:
        with Vertical(id="op-pick"):
            yield Static("Call a member about a campaign", id="op-title")
            yield Input(placeholder="member's chat login", id="dial-member")
            yield Input(
                value=str(self.campaign or ""), placeholder="campaign number", id="dial-campaign"
            )
            yield Static("", id="dial-error")

    def on_mount(self) -> None:
        self.query_one("#dial-member", Input).focus()

    @on(Input.Submitted)
    def _submit(self, event: Input.Submitted) -> None:
        event.stop()
        member = self.query_one("#dial-member", Input).value.strip()
        campaign = self.query_one("#dial-campaign", Input).value.strip()
        error = self.query_one("#dial-error", Static)
        if not member:
            error.update("Whom? Type the member's chat login.")
            self.query_one("#dial-member", Input).focus()
        elif not campaign.isdigit():
            error.update("About which campaign? Type its number.")
            self.query_one("#dial-campaign", Input).focus()
        else:
            self.dismiss((member, int(campaign)))

    def action_cancel(self) -> None:
        self.dismiss(None)


# ---------------------------------------------------------------- verbs of the main screen


def canned(screen: MainScreen, session: str, n: int = 0) -> None:
    """ctrl+o: pick a canned reply of this chat's brief and say it; F1-F9: say reply n."""
    from chmail.client.tui import chat_actions

    chat = screen.capp.chat
    if chat is None:
        return
    replies = chat.canned_replies(session)
    if not replies:
        screen.status.fail("No canned replies for this chat (the shop sends them with a brief).")
        return
    if n:
        if n > len(replies):
            screen.status.fail(f"There is no canned reply {n}; ctrl+o lists them.")
        else:
            chat_actions.say(screen, session, replies[n - 1][1])
        return

    def chosen(text: str | None) -> None:
        if text:
            chat_actions.say(screen, session, text)

    screen.app.push_screen(CannedScreen(replies), chosen)


def tag(screen: MainScreen, session: str, member: str) -> None:
    """ctrl+g: tag the member of this chat with interests (stored by the shop)."""
    chat = screen.capp.chat
    if chat is None:
        return

    def chosen(interests: list[str] | None) -> None:
        if interests:
            screen.run_worker(_tag(screen, chat, session, member, interests), group="op-tag")

    screen.app.push_screen(TagScreen(member), chosen)


async def _tag(
    screen: MainScreen, chat: ChatApi, session: str, member: str, interests: list[str]
) -> None:
    try:
        await chat.tag(session, interests)
    except ChmailError as exc:
        screen.status.fail(f"Not tagged: {exc}")
        return
    screen.status.say(f"Tagged {member}: {', '.join(interests)}.")
