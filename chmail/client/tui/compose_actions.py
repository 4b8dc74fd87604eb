"""New mail, reply, reply-all and forward: build a Draft and open the compose screen."""

from __future__ import annotations

from email.utils import getaddresses
from typing import TYPE_CHECKING

from chmail.client.tui.api import Draft
from chmail.client.tui.mailview import forward_body, quote
from chmail.client.tui.screens.compose import ComposeScreen
from chmail.client.tui.screens.pick_folder import PickFolderScreen
from chmail.errors import ChmailError

if TYPE_CHECKING:
    from chmail.client.tui.screens.main import MainScreen


def _open(screen: MainScreen, draft: Draft, title: str) -> None:
    app = screen.capp

    def done(outbox_id: str | None) -> None:
        if outbox_id:
            screen.status.say("Mail queued in the outbox; it is being sent.")
            screen.load_folders()

    app.push_screen(ComposeScreen(app.mail, draft, editor=app.config.ui.editor, title=title), done)


def _account(screen: MainScreen) -> str:
    if screen.folder is not None:
        return screen.folder.account
    return screen.capp.mail.account_names()[0]


def new(screen: MainScreen) -> None:
    _open(screen, Draft(account=_account(screen)), "New mail")


def resume_draft(screen: MainScreen) -> None:
    """D: pick a saved draft and go on writing it."""
    account = _account(screen)

    async def run() -> None:
        try:
            drafts = await screen.capp.mail.drafts(account)
        except ChmailError as exc:
            screen.status.fail(str(exc))
            return
        if not drafts:
            screen.status.say("No saved drafts.")
            return
        labels = [f"{d.subject or '(no subject)'}  —  to {d.to or '(nobody yet)'}" for d in drafts]
        picked = await screen.app.push_screen_wait(PickFolderScreen(labels, "Which draft?"))
        if picked is not None:
            _open(screen, drafts[labels.index(picked)], "Draft")

    screen.run_worker(run(), group="drafts", exclusive=True)


def _prefixed(prefix: str, subject: str) -> str:
    return subject if subject.lower().startswith(prefix.lower()) else f"{prefix} {subject}"


def reply(screen: MainScreen, *, everyone: bool) -> None:
    msg, view = screen.opened, screen.view
    if msg is None or view is None:
        screen.status.say("Open a mail first (Enter), then reply.")
        return
    me = screen.capp.mail.email_of(msg.account).lower()
    to = [msg.from_addr]
    cc: list[str] = []
    if everyone:
        others = getaddresses([msg.to, msg.cc])
        seen = {msg.from_addr.lower(), me}
        for name, addr in others:
            if addr and addr.lower() not in seen:
                seen.add(addr.lower())
                cc.append(f"{name} <{addr}>" if name else addr)
    refs = (*msg.references, msg.message_id) if msg.message_id else msg.references
    draft = Draft(
        account=msg.account,
        to=", ".join(to),
        cc=", ".join(cc),
        subject=_prefixed("Re:", msg.subject),
        body=quote(view),
        in_reply_to=msg.message_id,
        references=tuple(refs),
    )
    _open(screen, draft, "Reply to all" if everyone else "Reply")


def forward(screen: MainScreen) -> None:
    msg, view = screen.opened, screen.view
    if msg is None or view is None:
        screen.status.say("Open a mail first (Enter), then forward it.")
        return
    draft = Draft(
        account=msg.account, subject=_prefixed("Fwd:", msg.subject), body=forward_body(view)
    )
    _open(screen, draft, "Forward")
