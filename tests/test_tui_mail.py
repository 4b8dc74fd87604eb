"""The TUI over a real IMAP account (Dovecot) and a real SMTP relay: read, search, flag,
move with undo, compose and send."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, TextArea

from chmail.client.cache_models import FLAGGED
from chmail.client.tui.screens.compose import ComposeScreen
from chmail.client.tui.screens.pick_folder import PickFolderScreen
from chmail.client.tui.widgets.message_list import MessageList
from chmail.client.tui.widgets.status import StatusBar
from tests.fixtures.chserver import RunningServer
from tests.fixtures.mailstack import MailUser
from tests.tui_env import (
    add_ch_user,
    config_for,
    deliver,
    mail,
    running_tui,
    screen_text,
    wait_for,
)
from tests.tui_helpers import HOSTILE_MAIL, TERMINAL_CONTROLS


async def _inbox_with(user: MailUser, *subjects: str) -> None:
    for s in subjects:
        msg, _ = mail("Carol <carol@example.org>", user.address, s, f"Body of {s}.\n")
        await deliver(user, bytes(msg))


async def test_opens_inbox_and_reads_a_mail(mail_user: MailUser, tmp_path: Path) -> None:
    """The inbox is listed newest first and Enter shows the mail's headers and text."""
    await _inbox_with(mail_user, "First note", "Second note")
    async with running_tui(config_for(mail_user, None), tmp_path) as (app, pilot):
        ml = app.screen.query_one(MessageList)
        await wait_for(pilot, lambda: ml.total == 2, "two rows")
        await wait_for(pilot, lambda: ml.current is not None)
        assert ml.current is not None
        assert ml.current.subject == "Second note"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "Body of Second note." in screen_text(app), "the body")
        text = screen_text(app)
        assert "From: Carol <carol@example.org>" in text
        assert "No chat link in this mail." in text


async def test_search_flag_move_and_undo(mail_user: MailUser, tmp_path: Path) -> None:
    """/ narrows the list; s flags; M moves to Archive; u undoes the move."""
    await _inbox_with(mail_user, "Invoice 42", "Holiday photos", "Invoice 43")
    async with running_tui(config_for(mail_user, None), tmp_path) as (app, pilot):
        ml = app.screen.query_one(MessageList)
        await wait_for(pilot, lambda: ml.total == 3, "three rows")
        await pilot.press("slash", *"holiday", "enter")
        await wait_for(pilot, lambda: ml.total == 1, "one search hit")
        await wait_for(pilot, lambda: ml.current is not None)
        assert ml.current is not None
        assert ml.current.subject == "Holiday photos"

        await pilot.press("s")
        await wait_for(
            pilot, lambda: ml.current is not None and FLAGGED in ml.current.flags, "flag shown"
        )
        await pilot.press("escape")
        await wait_for(pilot, lambda: ml.total == 3, "back to the folder")

        await pilot.press("M")
        await wait_for(pilot, lambda: isinstance(app.screen, PickFolderScreen), "folder picker")
        picker = app.screen
        assert isinstance(picker, PickFolderScreen)
        picker.dismiss("Archive")
        await wait_for(pilot, lambda: ml.total == 2, "moved out of INBOX")
        status = app.screen.query_one(StatusBar)
        assert "Moved to Archive" in status.note

        await pilot.press("u")
        await wait_for(pilot, lambda: ml.total == 3, "move undone")
        assert "Undone" in status.note


async def test_compose_and_send_stamps_chat_link(
    mail_user: MailUser, mail_user2: MailUser, chserver: RunningServer, tmp_path: Path
) -> None:
    """m opens the editor; ctrl+s queues the mail; it reaches the recipient with X-CH headers."""
    await add_ch_user(chserver, mail_user)
    await _inbox_with(mail_user, "Hello")
    async with running_tui(config_for(mail_user, chserver), tmp_path) as (app, pilot):
        ml = app.screen.query_one(MessageList)
        await wait_for(pilot, lambda: ml.total == 1)
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ComposeScreen), "compose screen")
        compose = app.screen
        compose.query_one("#to", Input).value = mail_user2.address
        compose.query_one("#subject", Input).value = "Dinner on Saturday?"
        compose.query_one("#body", TextArea).text = "Shall we?\n"
        await wait_for(pilot, lambda: compose.saves >= 1, "draft autosaved")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, ComposeScreen), "sent")
        box = mail_user2.stack.dovecot.maildir(mail_user2.name)

        def arrived() -> bytes | None:
            for path in (box / "new").glob("*"):
                data = path.read_bytes()
                if b"Dinner on Saturday?" in data:
                    return data
            return None

        await wait_for(pilot, lambda: arrived() is not None, "delivery to the recipient")
        raw = arrived()
        assert raw is not None
        assert b"X-CH-Login: " + mail_user.name.encode() in raw
        assert b"X-CH-Sig:" in raw


async def test_draft_is_kept_and_resumed(mail_user: MailUser, tmp_path: Path) -> None:
    """A mail being written is saved as a draft; D lists it and reopens it in the editor."""
    await _inbox_with(mail_user, "Hello")
    async with running_tui(config_for(mail_user, None), tmp_path) as (app, pilot):
        ml = app.screen.query_one(MessageList)
        await wait_for(pilot, lambda: ml.total == 1)
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ComposeScreen), "compose screen")
        compose = app.screen
        compose.query_one("#to", Input).value = "zoe@example.org"
        compose.query_one("#subject", Input).value = "Half-written thoughts"
        await wait_for(pilot, lambda: compose.saves >= 1, "draft autosaved")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ComposeScreen), "closed")
        await pilot.press("D")
        await wait_for(pilot, lambda: isinstance(app.screen, PickFolderScreen), "draft list")
        await wait_for(pilot, lambda: "Half-written thoughts" in screen_text(app), "listed")
        picker = app.screen
        assert isinstance(picker, PickFolderScreen)
        picker.dismiss(picker.folders[0])
        await wait_for(pilot, lambda: isinstance(app.screen, ComposeScreen), "draft reopened")
        assert app.screen.query_one("#subject", Input).value == "Half-written thoughts"
        assert app.screen.query_one("#to", Input).value == "zoe@example.org"


async def test_escape_sequences_in_a_mail_are_shown_not_obeyed(
    mail_user: MailUser, tmp_path: Path
) -> None:
    """A mail whose sender, subject, body and attachment name carry terminal escape
    sequences is listed, read and shown raw with every control character drawn as a
    visible stand-in (ESC as ␛): none reaches the terminal."""
    await deliver(mail_user, HOSTILE_MAIL)
    async with running_tui(config_for(mail_user, None), tmp_path) as (app, pilot):
        ml = app.screen.query_one(MessageList)
        await wait_for(pilot, lambda: ml.total == 1, "the row")
        await wait_for(pilot, lambda: "Invoice ␛[2J␛[31mpaid" in screen_text(app), "the row")
        listed = screen_text(app)
        assert "Mal␛[5mlory" in listed
        assert not TERMINAL_CONTROLS & set(listed)
        await pilot.press("enter")
        await wait_for(pilot, lambda: "Hello ␛[2J" in screen_text(app), "the body")
        shown = screen_text(app)
        assert "␛[41mred␛]0;pwned␇ and \ufffd31m C1." in shown
        assert "a__8mb.pdf" in shown  # the attachment's name, as it would be saved
        assert not TERMINAL_CONTROLS & set(shown)
        await pilot.press("V")
        await wait_for(pilot, lambda: "Content-Disposition" in screen_text(app), "the source")
        assert not TERMINAL_CONTROLS & set(screen_text(app))
