"""Choose a folder to move a mail to."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static


class PickFolderScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="pick.cancel"),
    ]

    def __init__(self, folders: list[str], title: str = "Move to which folder?") -> None:
        super().__init__()
        self.folders = folders
        self.heading = title

    def compose(self) -> ComposeResult:
        with Vertical(id="pick"):
            yield Static(self.heading)
            yield OptionList(*self.folders, id="pick-list")

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.folders[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
