"""The main screen: folders | message list over the reader | chat pane; a status bar.

Every call into the mail or chat engines runs in a worker, so the screen never waits on
the network. Errors come back as sentences in the status bar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input

from chmail.client.cache_models import SEEN, Message
from chmail.client.safe_text import one_line
from chmail.client.tui import attachments, chat_actions, compose_actions
from chmail.client.tui.first_view import FirstView
from chmail.client.tui.mailview import MailView, parse
from chmail.client.tui.screens import operator_keys
from chmail.client.tui.screens.pick_folder import PickFolderScreen
from chmail.client.tui.screens.raw import RawScreen
from chmail.client.tui.undo import MailActions
from chmail.client.tui.widgets.chat_pane import ChatPane
from chmail.client.tui.widgets.folders import FolderRef, FolderTree
from chmail.client.tui.widgets.message_list import MessageList, Presence, RowSource, ch_login
from chmail.client.tui.widgets.reader import Reader
from chmail.client.tui.widgets.status import StatusBar
from chmail.errors import ChmailError

if TYPE_CHECKING:
    from chmail.client.tui.app import ChmailApp

SORT_CYCLE = ("date-desc", "date-asc", "from-asc", "subject-asc", "size-desc")


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "chat", "Chat", id="mail.chat"),
        Binding("m", "compose", "New mail", id="mail.compose"),
        Binding("D", "drafts", "Drafts", show=False, id="mail.drafts"),
        Binding("r", "reply", "Reply", id="mail.reply"),
        Binding("R", "reply_all", "Reply all", show=False, id="mail.reply-all"),
        Binding("f", "forward", "Forward", show=False, id="mail.forward"),
        Binding("s", "flag", "Flag", show=False, id="mail.flag"),
        Binding("U", "toggle_read", "Read/unread", show=False, id="mail.read"),
        Binding("d,delete", "delete", "Delete", id="mail.delete"),
        Binding("M", "move", "Move", show=False, id="mail.move"),
        Binding("u", "undo", "Undo", show=False, id="mail.undo"),
        Binding("slash", "search", "Search", id="mail.search"),
        Binding("t", "threaded", "Threads", show=False, id="mail.threads"),
        Binding("o", "sort", "Sort", show=False, id="mail.sort"),
        Binding("V", "raw", "Source", show=False, id="mail.raw"),
        Binding("S", "save_attachments", "Save attachments", show=False, id="mail.save"),
        Binding("O", "open_attachment", "Open attachment", show=False, id="mail.open"),
        Binding("A", "alarms", "Alarms", id="mail.alarms"),
        Binding("Q", "queue", "Chat queue", show=False, id="mail.queue"),
        Binding("ctrl+r", "sync", "Sync", show=False, id="mail.sync"),
        Binding("escape", "escape", "Back", show=False, id="mail.escape"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.folder: FolderRef | None = None
        self.sort = "date-desc"
        self.threaded = False
        self.search_query = ""
        self.opened: Message | None = None
        self.view: MailView | None = None
        self.presence: set[str] = set()
        self._first_done = False

    @property
    def capp(self) -> ChmailApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield FolderTree(id="folders")
            with Vertical(id="center"):
                yield Input(
                    placeholder="Search: words, from:, subject:, is:unread, has:chat", id="search"
                )
                yield MessageList(id="list")
                yield Reader(id="reader")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        cfg = self.capp.config.ui
        self.sort = cfg.sort if cfg.sort in SORT_CYCLE else "date-desc"
        self.threaded = cfg.threaded
        self.actions = MailActions(self.capp.mail)
        self.query_one("#search", Input).display = False
        self.query_one(Reader).clear("Select a mail and press Enter to read it.")
        self.query_one(MessageList).focus()
        first = self.capp.first_view
        if first.done() and first.exception() is None and (view := first.result()) is not None:
            self._first_done = True
            self._apply_first(view)
        self.load_folders()
        self.capp.main_ready()

    # ------------------------------------------------------------------ folders

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def msg_list(self) -> MessageList:
        return self.query_one(MessageList)

    @work(group="folders")
    async def load_folders(self) -> None:
        tree = self.query_one(FolderTree)
        mail = self.capp.mail
        if self.folder is None and not self._first_done:
            self._first_done = True
            view = await self.capp.first_view
            if view is not None:
                self._apply_first(view)
        for account in mail.account_names():
            try:
                folders = await mail.folders(account)
            except ChmailError as exc:
                self.status.fail(str(exc))
                continue
            tree.set_folders(account, folders)
            if self.folder is None and folders:
                inbox = next((f for f in folders if f.name.upper() == "INBOX"), folders[0])
                self.open_folder(FolderRef(account, inbox.name))
                tree.select_ref(FolderRef(account, inbox.name))

    def _apply_first(self, view: FirstView) -> None:
        tree = self.query_one(FolderTree)
        tree.set_folders(view.account, view.folders)
        self.folder = FolderRef(view.account, view.folder)
        tree.select_ref(self.folder)
        self.msg_list.show_loaded(view.source, view.total, view.rows)
        self._title(view.account, view.folder)

    def open_folder(self, ref: FolderRef) -> None:
        self.folder = ref
        self.search_query = ""
        self._show_rows()

    def refresh_rows(self) -> None:
        """Re-read the list from the cache (after a sync or a change), keeping the cursor."""
        self._show_rows(keep_cursor=True)

    def _show_rows(self, keep_cursor: bool = False) -> None:
        if self.folder is None:
            return
        mail = self.capp.mail
        source: RowSource
        if self.search_query:
            source = mail.search_rows(self.folder.account, self.search_query)
            self.msg_list.empty_text = f"Nothing matches {self.search_query!r}."
        else:
            source = mail.folder_rows(
                self.folder.account, self.folder.name, self.sort, self.threaded
            )
            self.msg_list.empty_text = "No messages in this folder."
        self.msg_list.threaded = self.threaded and not self.search_query
        self.msg_list.set_source(source, keep_cursor=keep_cursor)
        where = f"search {self.search_query!r}" if self.search_query else self.folder.name
        self._title(self.folder.account, where)

    def _title(self, account: str, where: str) -> None:
        """The list's border title (a Text: a folder name from the server is no markup)."""
        self.msg_list.border_title = Text(one_line(f"{account} / {where}  ({self.sort})"))

    @on(FolderTree.Chosen)
    def _folder_chosen(self, event: FolderTree.Chosen) -> None:
        self.open_folder(event.ref)
        self.msg_list.focus()

    @on(MessageList.Loaded)
    def _loaded(self, event: MessageList.Loaded) -> None:
        self.msg_list.border_subtitle = f"{event.total:,} messages"

    # ------------------------------------------------------------------ reading

    @on(MessageList.Highlighted)
    def _highlighted(self, event: MessageList.Highlighted) -> None:
        msg = event.message
        if msg is not None and msg.has_ch and self.capp.chat is not None:
            login = ch_login(msg)
            if login and login not in self.presence:
                self.check_presence(login)

    @work(group="presence")
    async def check_presence(self, login: str) -> None:
        chat = self.capp.chat
        if chat is None:
            return
        try:
            online = await chat.watch([login])
        except ChmailError:
            return
        self.set_online(login, login in online)

    def set_online(self, login: str, online: bool) -> None:
        if online:
            self.presence.add(login)
        else:
            self.presence.discard(login)
        self.msg_list.presence = Presence(frozenset(self.presence))
        self.msg_list.refresh()
        if self.opened is not None and ch_login(self.opened) == login:
            self.query_one(Reader).set_chat_line(self.chat_line(self.opened))

    def chat_line(self, msg: Message) -> str:
        return chat_actions.chat_line(msg, self.presence, self.capp.chat is not None)

    @on(MessageList.Opened)
    def _opened(self, event: MessageList.Opened) -> None:
        self.open_message(event.message)

    @work(group="open", exclusive=True)
    async def open_message(self, msg: Message) -> None:
        reader = self.query_one(Reader)
        reader.clear("Loading…")
        try:
            raw = await self.capp.mail.raw(msg)
        except ChmailError as exc:
            reader.clear(f"Cannot show this mail: {exc}")
            return
        self.opened, self.view = msg, parse(raw)
        reader.show(self.view, self.chat_line(msg))
        if SEEN not in msg.flags:
            try:
                await self.capp.mail.set_flag(msg, SEEN, True)
            except ChmailError as exc:
                self.status.fail(str(exc))
            self.refresh_rows()
            self.load_folders()

    def _target(self) -> Message | None:
        msg = self.msg_list.current
        if msg is None:
            self.status.say("No mail selected.")
        return msg

    # ------------------------------------------------------------------ changing mail

    @work(group="change")
    async def _change(self, verb: str, msg: Message | None, folder: str = "") -> None:
        try:
            if msg is None or verb == "undo":
                note = await self.actions.undo()
            elif verb == "flag":
                note = await self.actions.toggle_flag(msg)
            elif verb == "read":
                note = await self.actions.toggle_read(msg)
            elif verb == "move":
                note = await self.actions.move(msg, folder)
            else:
                note = await self.actions.delete(msg)
        except ChmailError as exc:
            self.status.fail(str(exc))
            return
        self.status.say(note)
        self.refresh_rows()
        self.load_folders()

    def action_flag(self) -> None:
        if msg := self._target():
            self._change("flag", msg)

    def action_toggle_read(self) -> None:
        if msg := self._target():
            self._change("read", msg)

    def action_delete(self) -> None:
        if msg := self._target():
            self._change("delete", msg)

    def action_undo(self) -> None:
        self._change("undo", self.msg_list.current)

    @work(group="move")
    async def action_move(self) -> None:
        msg = self._target()
        if msg is None:
            return
        try:
            folders = await self.capp.mail.folders(msg.account)
        except ChmailError as exc:
            self.status.fail(str(exc))
            return
        names = [f.name for f in folders if f.name != msg.folder]
        target = await self.app.push_screen_wait(PickFolderScreen(names))
        if target:
            self._change("move", msg, target)

    # ------------------------------------------------------------------ list modes

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.display = True
        box.focus()

    @on(Input.Submitted, "#search")
    def _search(self, event: Input.Submitted) -> None:
        self.search_query = event.value.strip()
        event.input.display = bool(self.search_query)
        self._show_rows()
        self.msg_list.focus()

    def action_escape(self) -> None:
        box = self.query_one("#search", Input)
        if self.search_query or box.display:
            box.value, box.display, self.search_query = "", False, ""
            self._show_rows()
            self.msg_list.focus()

    def action_threaded(self) -> None:
        self.threaded = not self.threaded
        self.status.say("Threaded view." if self.threaded else "Flat view.")
        self._show_rows()

    def action_sort(self) -> None:
        i = SORT_CYCLE.index(self.sort) if self.sort in SORT_CYCLE else -1
        self.sort = SORT_CYCLE[(i + 1) % len(SORT_CYCLE)]
        self.status.say(f"Sorted by {self.sort}.")
        self._show_rows()

    def action_raw(self) -> None:
        if self.view is not None:
            self.app.push_screen(RawScreen(self.view.raw))
        else:
            self.status.say("Open a mail first (Enter), then V shows its source.")

    def action_save_attachments(self) -> None:
        self.status.say(attachments.save_all(self.view))

    def action_open_attachment(self) -> None:
        self.status.say(attachments.open_first(self.view))

    @work(group="sync", exclusive=True)
    async def action_sync(self) -> None:
        await self.capp.sync_all()
        self.refresh_rows()
        self.load_folders()

    # ------------------------------------------------------------------ compose

    def action_compose(self) -> None:
        compose_actions.new(self)

    def action_drafts(self) -> None:
        compose_actions.resume_draft(self)

    def action_reply(self) -> None:
        compose_actions.reply(self, everyone=False)

    def action_reply_all(self) -> None:
        compose_actions.reply(self, everyone=True)

    def action_forward(self) -> None:
        compose_actions.forward(self)

    # ------------------------------------------------------------------ chat

    def action_chat(self) -> None:
        msg = self.opened if self.opened is not None else self.msg_list.current
        if msg is None:
            self.status.say("Select a mail first; c chats with its sender.")
            return
        chat_actions.escalate(self, msg)

    def action_alarms(self) -> None:
        chat_actions.show_alarms(self)

    def action_queue(self) -> None:
        chat_actions.show_queue(self)

    @on(ChatPane.Say)
    def _say(self, event: ChatPane.Say) -> None:
        chat_actions.say(self, event.session, event.text)

    @on(ChatPane.Typing)
    def _typing(self, event: ChatPane.Typing) -> None:
        chat_actions.typing(self, event.session)

    @on(ChatPane.Leave)
    def _leave(self, event: ChatPane.Leave) -> None:
        chat_actions.leave(self, event.session)

    @on(ChatPane.FileTranscript)
    def _file(self, event: ChatPane.FileTranscript) -> None:
        chat_actions.file_transcript(self, event.session)

    @on(ChatPane.Canned)
    def _canned(self, event: ChatPane.Canned) -> None:
        operator_keys.canned(self, event.session, event.n)

    @on(ChatPane.Tag)
    def _tag(self, event: ChatPane.Tag) -> None:
        operator_keys.tag(self, event.session, event.member)
