"""Make docs/tui.svg: the real TUI (as alice, on a real demo) chatting with bob.

    .venv/bin/python scripts/tui_screenshot.py [docs/tui.svg]

Starts the demo's services in a temp dir, runs alice's TUI headless, presses c on bob's
mail; bob (a real chat client) accepts and they exchange a few lines; saves the SVG.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chmail import config as cfgmod
from chmail.client.chat import ChatEngine
from chmail.client.chlink import ChLink
from chmail.client.cli.demo import start_services, stop_services, user_config
from chmail.client.tui import boot
from chmail.client.tui.app import ChmailApp
from chmail.client.tui.widgets.chat_pane import ChatPane
from chmail.client.tui.widgets.message_list import MessageList


async def until(pilot: object, cond: object) -> None:
    for _ in range(600):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the demo did not get there in 30 s")


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="chmail-shot-") as tmp:
        data = Path(tmp)
        proc, state = await start_services(data)
        try:
            config = cfgmod.load(user_config(data, state, "alice"))
            engines = await boot.build(config, data / "alice.sqlite3")
            app = ChmailApp(config, engines.mail, engines.chat)
            engines.start_background()
            link = ChLink("127.0.0.1", state["ch_port"], "bob", state["passwords"]["bob"])
            await link.start()
            bob = ChatEngine(link, "bob")
            async with app.run_test(size=(132, 34)) as pilot:
                ml = app.screen.query_one(MessageList)
                await until(pilot, lambda: ml.total > 30 and ml.current is not None)
                await pilot.press("enter")
                chat_line = app.screen.query_one("#reader-chat")
                await until(pilot, lambda: "online now" in str(chat_line.render()))
                await pilot.press("c")
                ring = await asyncio.wait_for(bob.next_ring(), 15)
                session = await bob.join(await bob.answer(ring.call, True))
                await until(pilot, lambda: bool(app.screen.query(ChatPane)))
                session.say("Friday works! 12:30 at the noodle place?")
                await pilot.pause(0.5)
                await pilot.press(*"Perfect, see you there", "enter")
                await pilot.pause(0.5)
                session.mark_read()
                session.typing(True)
                await pilot.pause(1.0)
                app.save_screenshot(filename=out.name, path=str(out.parent))
                await session.close()
            await bob.close()
            await link.close()
            await engines.close()
        finally:
            stop_services(proc)
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/tui.svg").resolve()))
