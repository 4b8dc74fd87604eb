"""Text from outside (mail, servers, chat peers) made safe to draw on a terminal.

A mail's subject, sender or body, a folder name, a server's error text or a peer's chat
line can hold control characters. Drawn as they are, ESC and the C1 controls (U+0080 to
U+009F, which some terminals read as ESC [) start escape sequences: they clear the
screen, recolour and move the cursor, set the window title, and on some terminals make
it answer back -- the classic mail-client hole, which neomutt and aerc close the same
way. Textual and Rich pass such characters through untouched, so every string from
outside goes through one of these before it is drawn:

* a C0 control shows as its Unicode control picture (ESC as ␛, BEL as ␇), DEL as ␡, a
  C1 control as U+FFFD: visible, so a user sees that something odd was there;
* ``one_line`` (a list cell, a header, a title) turns tab, line feed and CR into spaces;
  ``block`` (a body, a chat line, raw source) keeps tab and line feed, and turns CRLF
  into a line feed (a lone CR, which would overwrite the line, shows as ␍).

Pure: no Textual (the TUI calls it; so may anything else that prints outside text).
"""

from __future__ import annotations

import re

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_BLOCK_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # (not \t, \n)
_SPACES = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


def _picture(m: re.Match[str]) -> str:
    code = ord(m.group())
    if code < 0x20:
        return chr(0x2400 + code)  # U+2400 CONTROL PICTURES: ␀ … ␟
    return "\u2421" if code == 0x7F else "\ufffd"


def one_line(text: str) -> str:
    """``text`` for one line of the screen: no control character, no line break."""
    if text.isprintable():  # (C: the usual case costs one scan)
        return text
    return _CONTROLS.sub(_picture, text.replace("\r\n", " ").translate(_SPACES))


def block(text: str) -> str:
    """``text`` for several lines: line feeds and tabs kept, every other control shown."""
    if text.isprintable():
        return text
    return _BLOCK_CONTROLS.sub(_picture, text.replace("\r\n", "\n"))
