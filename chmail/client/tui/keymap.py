"""Every key the TUI knows, by Binding id, and the user's remapping from ``[ui].keys``.

``[ui].keys`` maps a binding id to one or more keys (comma separated), e.g.
``"mail.chat" = "ctrl+c,c"``. Textual's keymap applies them by id everywhere; ``?`` lists
each binding with the key actually in force.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from textual.binding import Binding, BindingType

from chmail.errors import ConfigError


@dataclass(frozen=True)
class KeyRow:
    section: str
    id: str
    keys: str
    description: str


KEY_NAMES = {"question_mark": "?", "slash": "/", "space": "space", "delete": "del"}


def pretty(keys: str) -> str:
    """``question_mark,slash`` -> ``?, /`` as a user reads keys."""
    return ", ".join(KEY_NAMES.get(k.strip(), k.strip()) for k in keys.split(","))


def _bindings(items: Iterable[BindingType]) -> list[Binding]:
    out = []
    for b in items:
        if isinstance(b, Binding):
            out.append(b)
        else:
            out.extend(Binding.make_bindings([b]))
    return out


def key_table(
    sections: Iterable[tuple[str, Iterable[BindingType]]], keymap: Mapping[str, str]
) -> list[KeyRow]:
    """One row per binding id, with remapped keys where the keymap says so."""
    rows = []
    seen: set[str] = set()
    for section, items in sections:
        for b in _bindings(items):
            ident = b.id or f"{section}.{b.action}"
            if ident in seen:
                continue
            seen.add(ident)
            keys = keymap.get(b.id, b.key) if b.id else b.key
            desc = b.description or b.action.replace("_", " ")
            rows.append(KeyRow(section, ident, pretty(keys), desc))
    return rows


def check_keymap(keymap: Mapping[str, str], known: set[str]) -> None:
    """A typo in ``[ui].keys`` fails loudly rather than silently doing nothing."""
    unknown = sorted(set(keymap) - known)
    if unknown:
        raise ConfigError(
            f"[ui].keys names unknown binding ids: {', '.join(unknown)}. "
            "Press ? in chmail to see every id."
        )
