"""The chmail TUI application: wires the engines to the screens, routes chat events.

The app owns nothing but the wiring. ``mail`` and ``chat`` are the engines (see api.py);
incoming rings pop up over whatever screen is showing, with a bell.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.timer import Timer

from chmail.client.safe_text import one_line
from chmail.client.tui import chat_actions
from chmail.client.tui.api import AlarmItem, ChatApi, ChatLine, MailApi, Ring
from chmail.client.tui.first_view import first_view
from chmail.client.tui.keymap import KeyRow, check_keymap, key_table
from chmail.client.tui.screens.help import HelpScreen
from chmail.client.tui.screens.main import MainScreen
from chmail.client.tui.screens.ring import RingScreen
from chmail.config import Config
from chmail.errors import ChmailError

log = logging.getLogger(__name__)

FIRST_VIEW_WAIT_S = 0.5  # a slow cache never holds the screen back longer than this


class ChmailApp(App[None]):
    CSS_PATH = "chmail.tcss"
    TITLE = "chmail"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True, id="app.force-quit"),
    ]

    def __init__(
        self, config: Config, mail: MailApi, chat: ChatApi | None = None, *, sync: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.mail = mail
        self.chat = chat
        self.auto_sync = sync
        self.alarms: list[AlarmItem] = []
        self.rings: dict[str, RingScreen] = {}
        self.later: set[str] = set()  # rings the user put off (l): not popped up again
        self.startup_notes: list[str] = []
        if config.ui.theme in self.available_themes:
            self.theme = config.ui.theme
        else:
            self.startup_notes.append(f"Unknown theme {config.ui.theme!r} in [ui]; default used.")
        self._reload_timer: Timer | None = None
        self._last_mail_error = ""

    async def on_mount(self) -> None:
        keys = dict(self.config.ui.keys)
        check_keymap(keys, {r.id for r in self.key_rows({})})
        self.set_keymap(keys)
        # Read the first folder before building the screen (a few ms from the cache, while
        # the loop is idle), so the very first frame already shows its rows.
        self.first_view = asyncio.ensure_future(first_view(self.mail, self.config))
        await asyncio.wait([self.first_view], timeout=FIRST_VIEW_WAIT_S)
        self.push_screen(MainScreen())

    def say(self, message: str, **kw: Any) -> None:
        """``notify`` for text that may quote a server or a peer: control characters
        shown, not obeyed (safe_text.py), and no markup read in it."""
        self.notify(one_line(message), markup=False, **kw)

    def main_ready(self) -> None:
        """The main screen is up: start the chat link and the first sync."""
        for note in self.startup_notes:
            self.say(note, severity="warning", timeout=10)
        if self.chat is not None:
            self.run_worker(self._start_chat(), group="chat-start")
        if self.auto_sync:
            self.mail.start_live(self._mail_changed)
        self._poll_mail_state()
        self.set_interval(1.0, self._poll_mail_state)

    @property
    def main(self) -> MainScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen):
                return screen
        return None

    # ------------------------------------------------------------------ mail

    def _mail_changed(self) -> None:
        """The sync changed the cache: redraw folders and the list (at most 4 times a second)."""
        if self._reload_timer is None:
            self._reload_timer = self.set_timer(0.25, self._reload)

    def _reload(self) -> None:
        self._reload_timer = None
        main = self.main
        if main is not None:
            main.load_folders()
            main.refresh_rows()

    def _poll_mail_state(self) -> None:
        main = self.main
        if main is None:
            return
        state, error = self.mail.state()
        main.status.mail_state = state
        if error and error != self._last_mail_error:
            main.status.fail(f"Mail: {error}")
        self._last_mail_error = error

    async def sync_all(self) -> None:
        main = self.main
        for account in self.mail.account_names():
            status = main.status if main else None

            def progress(text: str, status: object = status) -> None:
                if main is not None:
                    main.status.sync = text

            if status is not None:
                status.mail_state = "syncing"
            try:
                await self.mail.sync(account, progress)
            except ChmailError as exc:
                log.info("sync of %s failed: %s", account, exc)
                if main is not None:
                    main.status.mail_state = "offline"
                    main.status.fail(str(exc))
                continue
            if main is not None:
                main.status.mail_state = "connected"
                main.status.sync = ""
        if main is not None:
            main.load_folders()
            main.refresh_rows()

    # ------------------------------------------------------------------ chat events

    async def _start_chat(self) -> None:
        assert self.chat is not None
        try:
            await self.chat.start(self)
        except ChmailError as exc:
            self.on_link_state("offline", str(exc))

    def on_link_state(self, state: str, error: str) -> None:
        main = self.main
        if main is not None:
            main.status.ch_state = state
            if error:
                main.status.fail(error)

    def on_ring(self, ring: Ring) -> None:
        if ring.session in self.rings:
            self.rings[ring.session].set_context(ring.context)
            return
        if ring.session in self.later:
            return
        if self.config.ui.bell:
            self.bell()
        screen = RingScreen(ring)
        self.rings[ring.session] = screen

        def answered(accept: bool | None) -> None:
            self.rings.pop(ring.session, None)
            if accept is None:
                self.later.add(ring.session)
            else:
                self.run_worker(self._answer(ring, accept), group="ring-answer")

        self.push_screen(screen, answered)

    async def _answer(self, ring: Ring, accept: bool) -> None:
        assert self.chat is not None
        main = self.main
        try:
            if accept:
                await self.chat.accept(ring.session)
            else:
                await self.chat.decline(ring.session)
        except ChmailError as exc:
            if main is not None:
                main.status.fail(f"Could not answer: {exc}")
            return
        if accept and main is not None:
            if self.screen is not main and not isinstance(self.screen, RingScreen):
                self.say(f"Chat with {ring.caller} is open on the main screen.")
            chat_actions.open_pane(main, ring.session, ring.caller, ring.subject, "connected")

    def on_ring_gone(self, session: str, reason: str) -> None:
        screen = self.rings.pop(session, None)
        if screen is not None and screen.is_attached:
            screen.dismiss(None)
        self.say(f"Missed chat: {reason}", severity="warning")

    def on_chat_open(self, session: str, peer: str, subject: str) -> None:
        main = self.main
        if main is not None:
            chat_actions.open_pane(main, session, peer, subject, "connected")
            main.status.say(f"{peer} accepted; you are chatting.")

    def on_line(self, line: ChatLine) -> None:
        if self.main is not None:
            chat_actions.add_line(self.main, line)

    def on_typing(self, session: str, who: str) -> None:
        p = chat_actions.pane(self.main) if self.main else None
        if p is not None and p.session == session:
            p.show_typing(who)

    def on_read(self, session: str, who: str, seq: int) -> None:
        p = chat_actions.pane(self.main) if self.main else None
        if p is not None and p.session == session:
            p.show_read(seq)

    def on_ended(self, session: str, reason: str) -> None:
        p = chat_actions.pane(self.main) if self.main else None
        if p is not None and p.session == session:
            p.set_state(f"ended: {reason}")

    def on_call_moved(self, old: str, new: str, state: str) -> None:
        p = chat_actions.pane(self.main) if self.main else None
        if p is not None and p.session in (old, new):
            p.session = new
            p.set_state(state)

    def on_alarm(self, alarm: AlarmItem) -> None:
        if any(a.id == alarm.id for a in self.alarms):
            return
        self.alarms.append(alarm)
        if self.config.ui.bell:
            self.bell()
        self.say(
            f"🔔 Missed chat from {alarm.caller}: {alarm.subject}. Press A for alarms.",
            severity="warning",
            timeout=10,
        )

    def on_presence(self, login: str, online: bool) -> None:
        if self.main is not None:
            self.main.set_online(login, online)

    # ------------------------------------------------------------------ help

    def key_rows(self, keymap: dict[str, str] | None = None) -> list[KeyRow]:
        from chmail.client.tui.screens import alarms, compose, operator, operator_keys, raw
        from chmail.client.tui.widgets import chat_pane, message_list

        sections = [
            ("everywhere", self.BINDINGS),
            ("mail", MainScreen.BINDINGS),
            ("list", message_list.MessageList.BINDINGS),
            ("compose", compose.ComposeScreen.BINDINGS),
            ("chat", chat_pane.ChatPane.BINDINGS),
            ("ring", RingScreen.BINDINGS),
            ("alarms", alarms.AlarmsScreen.BINDINGS),
            ("queue", operator.OperatorScreen.BINDINGS),
            ("canned", operator_keys.CannedScreen.BINDINGS),
            ("tag", operator_keys.TagScreen.BINDINGS),
            ("dial", operator_keys.DialScreen.BINDINGS),
            ("source", raw.RawScreen.BINDINGS),
            ("help", HelpScreen.BINDINGS),
        ]
        return key_table(sections, self.config.ui.keys if keymap is None else keymap)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.key_rows()))

    async def action_quit(self) -> None:
        # The engines are closed by whoever built them (cli.tui.run_tui), after the app.
        self.exit()


def css_path() -> Path:
    return Path(__file__).with_name("chmail.tcss")
