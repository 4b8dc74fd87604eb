"""The folder sidebar: every account's folders with unread counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.message import Message as TMessage
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from chmail.client.cache_models import Folder
from chmail.client.safe_text import one_line

# Special-use folders first, in the order people expect them; the rest by name.
ORDER = {"inbox": 0, "drafts": 1, "sent": 2, "archive": 3, "junk": 4, "trash": 5}


@dataclass(frozen=True)
class FolderRef:
    account: str
    name: str


def folder_key(f: Folder) -> tuple[int, str]:
    role = f.special_use or ("inbox" if f.name.upper() == "INBOX" else "")
    return ORDER.get(role, 10), f.name.lower()


def folder_label(f: Folder) -> Text:
    text = Text(one_line(f.name))
    if f.unread:
        text.append(f" {f.unread}", style="bold")
    return text


class FolderTree(Tree[FolderRef | None]):
    """Accounts as branches, folders as leaves; selecting a folder posts ``Chosen``."""

    class Chosen(TMessage):
        def __init__(self, ref: FolderRef) -> None:
            super().__init__()
            self.ref = ref

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("Accounts", data=None, id=id)
        self.show_root = False
        self.guide_depth = 2
        self._folder_nodes: dict[FolderRef, TreeNode[FolderRef | None]] = {}
        self._accounts: dict[str, TreeNode[FolderRef | None]] = {}

    def set_folders(self, account: str, folders: Sequence[Folder]) -> None:
        """Show (or refresh) one account's folders, keeping the cursor where it was."""
        branch = self._accounts.get(account)
        if branch is None:
            branch = self.root.add(account, data=None, expand=True)
            self._accounts[account] = branch
        seen: set[FolderRef] = set()
        for f in sorted(folders, key=folder_key):
            ref = FolderRef(account, f.name)
            seen.add(ref)
            node = self._folder_nodes.get(ref)
            if node is None:
                self._folder_nodes[ref] = branch.add_leaf(folder_label(f), data=ref)
            else:
                node.set_label(folder_label(f))
        for ref in [r for r in self._folder_nodes if r.account == account and r not in seen]:
            self._folder_nodes.pop(ref).remove()

    def select_ref(self, ref: FolderRef) -> None:
        node = self._folder_nodes.get(ref)
        if node is not None:
            self.move_cursor(node)

    def on_tree_node_selected(self, event: Tree.NodeSelected[FolderRef | None]) -> None:
        event.stop()
        if event.node.data is not None:
            self.post_message(self.Chosen(event.node.data))
