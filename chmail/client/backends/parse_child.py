"""The parse helper's own side (``python -m chmail.client.backends.parse_child``): frames
of FETCH items in on stdin, frames of staged batches (``cache_stage.image``: the parsed
messages as a serialized SQLite database of cache rows) out on stdout, until EOF.

Kept apart from parse_worker.py (the parent's side) so that the helper imports only what
parsing needs (no asyncio: a third of a cold start). The wire is described there.
"""

from __future__ import annotations

import logging
import signal
import sys

from chmail.client.backends.imap_headers import SPAN_ITEM, parse_one
from chmail.client.backends.span_rows import span_rows
from chmail.client.cache_models import NewMessage
from chmail.client.cache_stage import image_of
from chmail.client.gcpause import collector_paused

log = logging.getLogger(__name__)

READY = b"\0\0\0\0"  # an empty frame: the helper's first words, once it can parse


def parse_span(span: bytes) -> list[NewMessage]:
    """Cut and parse a run of FETCH items (what the helper does with one chunk, and the
    parent when there is no helper)."""
    out = []
    match, pos, end = SPAN_ITEM.match, 0, len(span)
    while pos < end:
        m = match(span, pos)
        if m is None:  # (the reader matched the same pattern: never, short of a bug)
            log.error("a chunk of the header FETCH is not of the shape it was cut at")
            break
        start = m.end()
        stop = start + int(m[4])
        out.append(parse_one(int(m[1]), m[2], int(m[3]), span[start:stop]))
        pos = stop + 3  # ")\r\n"
    return out


def frame(body: bytes) -> bytes:
    """A 4-byte big-endian length, then the body."""
    return len(body).to_bytes(4, "big") + body


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the parent's
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    wr.write(READY)
    wr.flush()
    while True:
        head = rd.read(4)
        if len(head) < 4:
            return
        span = rd.read(int.from_bytes(head, "big"))
        with collector_paused():  # (see gcpause.py)
            out = image_of(*span_rows(span))
        wr.write(frame(out))
        wr.flush()


if __name__ == "__main__":
    main()
