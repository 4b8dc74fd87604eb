"""Text from outside shown on a terminal: control characters become visible stand-ins,
never escape sequences the terminal obeys (safe_text.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chmail.client.safe_text import block, one_line

_C0_C1 = {chr(c) for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]}


def test_escape_sequences_are_drawn_not_obeyed() -> None:
    """ESC, BEL, DEL and the one-byte CSI show as their pictures or U+FFFD."""
    assert one_line("Invoice \x1b[2J\x1b]0;pwned\x07 \x7f \x9b31m") == (
        "Invoice ␛[2J␛]0;pwned␇ ␡ \ufffd31m"
    )


def test_one_line_turns_line_breaks_into_spaces() -> None:
    """A header value folded or broken by a hostile sender stays on one line."""
    assert one_line("a\r\nb\nc\td\re") == "a b c d e"


def test_block_keeps_lines_and_tabs_and_shows_a_lone_cr() -> None:
    """Multi-line text keeps its line feeds and tabs; CRLF becomes LF; a lone CR, which
    would send the cursor back over the line, is shown."""
    assert block("one\r\ntwo\n\tthree\rfour\x1b[K") == "one\ntwo\n\tthree␍four␛[K"


def test_ordinary_text_is_unchanged() -> None:
    """Korean, Japanese, emoji, non-breaking and zero-width spaces pass as they are."""
    text = "견적서 お見積もり 🎉 a\u00a0b\u200bc"
    assert one_line(text) == text
    assert block(text + "\nnext") == text + "\nnext"


def _stand_in(c: str) -> str:
    code = ord(c)
    return chr(0x2400 + code) if code < 0x20 else "\u2421" if code == 0x7F else "\ufffd"


@given(st.text())
def test_nothing_a_terminal_obeys_gets_through(text: str) -> None:
    """Whatever the input, no C0 or C1 control comes out (but the line feeds and tabs of
    a block), and each control is replaced where it was, by its own stand-in."""
    text = text.replace("\r\n", "\n")  # (the one pair turned into one character)
    line, lines = one_line(text), block(text)
    assert not _C0_C1 & set(line)
    assert not (_C0_C1 - {"\n", "\t"}) & set(lines)
    for c, shown, shown_block in zip(text, line, lines, strict=True):
        if c not in _C0_C1:
            assert shown == shown_block == c
        elif c in "\t\n\r":
            assert shown == " "
            assert shown_block == (c if c != "\r" else "␍")
        else:
            assert shown == shown_block == _stand_in(c)
