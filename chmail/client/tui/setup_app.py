"""A one-screen app for the first run: the setup form, nothing else."""

from __future__ import annotations

from pathlib import Path

from textual.app import App

from chmail.client.tui.screens.setup import SetupScreen


class SetupApp(App[Path | None]):
    CSS_PATH = "chmail.tcss"
    TITLE = "chmail setup"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_mount(self) -> None:
        self.push_screen(SetupScreen(self.path), self.exit)
