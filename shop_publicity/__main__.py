"""``chmail-shop``: the mall back office on the command line.

Every subcommand takes ``--data DIR`` (default: the XDG data folder + ``/shop``) and
``--config FILE``. Errors print one sentence and exit 1; ``--json`` output is for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from chmail import config as chconfig
from chmail.client.safe_text import one_line
from chmail.errors import ChmailError, ShopError
from shop_publicity import board as boardmod
from shop_publicity import campaigns, members, products, reports
from shop_publicity.models import Segment
from shop_publicity.store import Store

log = logging.getLogger(__name__)
Handler = Callable[[argparse.Namespace, chconfig.Config, Store], Awaitable[int]]


def _out(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def data_dir(args: argparse.Namespace, cfg: chconfig.Config) -> Path:
    if getattr(args, "data", None):
        return Path(args.data)
    if cfg.shop.data_dir:
        return Path(cfg.shop.data_dir)
    return chconfig.data_dir() / "shop"


# ---------------------------------------------------------------------- members


async def members_import(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    rep = await members.import_csv(store, a.file)
    if a.json:
        _out(
            {
                "rows": rep.rows,
                "added": rep.added,
                "updated": rep.updated,
                "unchanged": rep.unchanged,
                "bad": [{"line": ln, "error": e} for ln, e in rep.bad],
            }
        )
    else:
        print(rep.summary())
    return 0 if not rep.bad else 3


async def members_list(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    rows = await store.members(limit=a.limit, offset=a.offset)
    if a.json:
        _out([r.to_json() for r in rows])
        return 0
    for r in rows:
        state = "unsubscribed" if r.unsubscribed_at else ("no consent" if not r.consent else "")
        line = f"{r.email:<32} {r.name:<24} {', '.join(r.interests):<24} {state}"
        print(f"{r.id:>6}  {one_line(line)}")  # (imported data: shown, never obeyed)
    return 0


async def members_show(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    mem = await store.member(a.member)
    if mem is None:
        raise ShopError(f"There is no member {a.member!r} (give an e-mail, login or id).")
    data = mem.to_json()
    data["chats"] = await store.past_chats(mem.id)
    if a.json:
        _out(data)
    else:
        for k, v in data.items():
            print(f"{k:>16}: {v}")
    return 0


async def members_export(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    n = await reports.export_members(store, a.as_login, a.out)
    print(
        f"Exported {n} members to {a.out or 'stdout'}; recorded in the audit log.", file=sys.stderr
    )
    return 0


# ---------------------------------------------------------------------- products / operators


async def products_add(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    p = products.check_product(a.sku, a.title, a.description, a.price, a.image_url, a.landing_url)
    await products.add(store, p)
    print(f"Saved product {p.sku}.")
    return 0


async def products_import(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    saved, bad = await products.import_csv(store, a.file)
    print(f"{saved} products saved, {len(bad)} refused.")
    for line, why in bad:
        print(f"  line {line}: {why}")
    return 0 if not bad else 3


async def products_list(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    rows = await store.products()
    if a.json:
        _out([p.to_json() for p in rows])
    else:
        for p in rows:
            print(one_line(f"{p.sku:<16} {p.title:<40} {p.price}"))
    return 0


async def operators_add(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    from chmail.headers import check_login

    try:
        check_login(a.login)
    except ChmailError as exc:
        raise ShopError(str(exc)) from None
    await store.add_operator(a.login, a.role)
    print(f"{a.login} is now {'an admin' if a.role == 'admin' else 'an operator'}.")
    return 0


async def operators_list(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    for login, role in await store.operators():
        print(f"{login:<32} {role}")
    return 0


async def operators_canned(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    if a.key and a.text:
        await store.set_canned(a.key, a.text)
    for key, text in await store.canned():
        print(f"{key:<12} {text}")
    return 0


# ---------------------------------------------------------------------- campaigns


def _read(text: str | None, file: str | None, what: str) -> str:
    if file:
        try:
            return Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ShopError(f"Cannot read the {what} file {file}: {exc.strerror}.") from exc
    if text is None:
        raise ShopError(f"Give the {what} with --{what} TEXT or --{what}-file FILE.")
    return text


async def campaign_create(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    seg = Segment(
        interests=tuple(i.strip().lower() for i in a.for_interest),
        age_bands=tuple(a.age_band),
        jobs=tuple(a.job),
        hobbies=tuple(h.strip().lower() for h in a.hobby),
        langs=tuple(a.member_lang),
    )
    pool = [p for chunk in a.pool for p in chunk.split(",") if p]
    cid = await campaigns.create(
        store,
        cfg.shop,
        name=a.name,
        subject=_read(a.subject, a.subject_file, "subject"),
        body=_read(a.body, a.body_file, "body"),
        sku=a.sku,
        lang=a.lang,
        segment=seg,
        pool=pool,
    )
    if a.json:
        _out({"campaign": cid})
    else:
        n = len(await store.segment_member_ids(seg))
        print(f"Campaign {cid} created (draft); {n} members match its segment today.")
    return 0


async def campaign_preview(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    r = await campaigns.preview(store, cfg.shop, a.campaign, a.member)
    sys.stdout.write(r.raw.decode("utf-8", "replace").replace("\r\n", "\n"))
    return 0


async def campaign_send(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    from shop_publicity import run

    res = await run.send(store, cfg.shop, a.campaign, data_dir(a, cfg), quiet=a.quiet)
    if a.json:
        _out(await campaigns.status(store, a.campaign))
    return 0 if res.status == "done" else 2


async def campaign_pause(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    await campaigns.pause(store, a.campaign)
    print(f"Campaign {a.campaign} paused; `chmail-shop campaign resume {a.campaign}` carries on.")
    return 0


async def campaign_status(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    ids = [a.campaign] if a.campaign else await store.campaign_ids()
    rows = [await campaigns.status(store, cid) for cid in ids]
    if a.json:
        _out(rows[0] if a.campaign else rows)
        return 0
    for s in rows:
        extra = f" ({s['pause_reason']})" if s["pause_reason"] else ""
        print(
            f"{s['campaign']:>4} {s['name']:<24} {s['status']}{extra}: {s['sent']} sent, "
            f"{s['failed']} failed, {s['skipped']} skipped, {s['pending']} to go"
        )
        for f in s["failures"]:
            failure = f"{f['email']}: {f['error']}"
            print(f"       {one_line(failure)}")  # (a server's words: shown, never obeyed)
    return 0


async def board_cmd(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    b = boardmod.Board()
    if a.once:
        await b.catch_up(store, a.campaign)
        if a.json:
            _out(b.figures(a.campaign) if a.campaign else b.figures())
        else:
            print(boardmod.render_text(b))
        return 0
    if sys.stdout.isatty():
        from shop_publicity.tui.board import run_board

        await run_board(store, a.campaign)
        return 0
    stop = asyncio.Event()
    await boardmod.follow(
        store, b, lambda bd: print(boardmod.render_text(bd), flush=True), stop, a.campaign
    )
    return 0


async def report_cmd(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    data = await reports.report(store, a.campaign)
    if a.json:
        _out(data)
    else:
        print(reports.render(data))
    return 0


async def bridge_cmd(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    from shop_publicity.chbridge import run_bridge

    print(f"Bridge to {cfg.shop.ch_server} as {cfg.shop.ch_login} (Ctrl-C stops it)", flush=True)
    await run_bridge(cfg.shop, store)
    return 0


async def serve_cmd(a: argparse.Namespace, cfg: chconfig.Config, store: Store) -> int:
    from shop_publicity.unsubscribe import UnsubscribeServer

    srv = UnsubscribeServer(store, await campaigns.shop_key(store))
    host, port = await srv.start(a.listen or cfg.shop.unsubscribe_listen)
    print(f"Unsubscribe endpoint on http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await srv.close()
    return 0


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS: a subcommand's copy of an option must not reset what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data", metavar="DIR", default=argparse.SUPPRESS, help="the shop's data folder"
    )
    common.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS, help="config file (default: XDG)"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more"
    )
    p = argparse.ArgumentParser(
        prog="chmail-shop", description=__doc__.splitlines()[0], parents=[common]
    )
    groups = p.add_subparsers(dest="group", required=True)

    def cmd(sub: Any, name: str, fn: Handler, help: str, json_flag: bool = False) -> Any:
        sp = sub.add_parser(name, help=help, parents=[common])
        sp.set_defaults(func=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    g = groups.add_parser("members", help="the member DB").add_subparsers(dest="cmd", required=True)
    cmd(g, "import", members_import, "import members from a CSV file", True).add_argument("file")
    sp = cmd(g, "list", members_list, "list members", True)
    sp.add_argument("--limit", type=int, default=100)
    sp.add_argument("--offset", type=int, default=0)
    cmd(g, "show", members_show, "one member, with past chats", True).add_argument("member")
    sp = cmd(g, "export", members_export, "export all members as CSV (admin; audited)")
    sp.add_argument(
        "--as",
        dest="as_login",
        required=True,
        metavar="LOGIN",
        help="the admin doing the export (recorded in the audit log)",
    )
    sp.add_argument("--out", metavar="FILE", help="write here instead of stdout")

    g = groups.add_parser("products", help="the product/ad DB").add_subparsers(
        dest="cmd", required=True
    )
    sp = cmd(g, "add", products_add, "add or update a product")
    sp.add_argument("sku")
    sp.add_argument("--title", required=True)
    for opt in ("description", "price", "image-url", "landing-url"):
        sp.add_argument(f"--{opt}", default="")
    cmd(g, "import", products_import, "import products from CSV").add_argument("file")
    cmd(g, "list", products_list, "list products", True)

    g = groups.add_parser("operators", help="operators and admins").add_subparsers(
        dest="cmd", required=True
    )
    sp = cmd(g, "add", operators_add, "add an operator (CH login)")
    sp.add_argument("login")
    sp.add_argument("--role", choices=("operator", "admin"), default="operator")
    cmd(g, "list", operators_list, "list operators")
    sp = cmd(g, "canned", operators_canned, "list canned replies, or set KEY TEXT")
    sp.add_argument("key", nargs="?")
    sp.add_argument("text", nargs="?")

    g = groups.add_parser("campaign", help="campaigns").add_subparsers(dest="cmd", required=True)
    sp = cmd(g, "create", campaign_create, "create a draft campaign", True)
    sp.add_argument("--name", required=True)
    sp.add_argument("--subject")
    sp.add_argument("--subject-file")
    sp.add_argument("--body")
    sp.add_argument("--body-file")
    sp.add_argument("--sku")
    sp.add_argument("--lang", default="en", help="the campaign's language (X-CH-Context)")
    sp.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="LOGIN[,LOGIN]",
        help="operators who answer this campaign's chats",
    )
    sp.add_argument("--for-interest", action="append", default=[], metavar="INTEREST")
    sp.add_argument("--age-band", action="append", default=[])
    sp.add_argument("--job", action="append", default=[])
    sp.add_argument("--hobby", action="append", default=[])
    sp.add_argument("--member-lang", action="append", default=[])
    sp = cmd(g, "preview", campaign_preview, "show the mail one member would get")
    sp.add_argument("campaign", type=int)
    sp.add_argument("member")
    for name, fn, text in (
        ("send", campaign_send, "send (or carry on sending)"),
        ("resume", campaign_send, "resume a paused or crashed send"),
    ):
        sp = cmd(g, name, fn, text, True)
        sp.add_argument("campaign", type=int)
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cmd(g, "pause", campaign_pause, "pause a running send").add_argument("campaign", type=int)
    cmd(g, "status", campaign_status, "where campaigns stand", True).add_argument(
        "campaign", type=int, nargs="?"
    )

    sp = cmd(groups, "board", board_cmd, "the live response board", True)
    sp.add_argument("campaign", type=int, nargs="?")
    sp.add_argument("--once", action="store_true", help="print the figures once and exit")
    cmd(groups, "report", report_cmd, "a campaign's report", True).add_argument(
        "campaign", type=int
    )
    cmd(groups, "bridge", bridge_cmd, "stay linked to the CH server: pools, chats, briefs")
    sp = cmd(groups, "serve", serve_cmd, "run the unsubscribe endpoint")
    sp.add_argument("--listen", metavar="HOST:PORT")
    return p


async def _main(args: argparse.Namespace) -> int:
    cfg = chconfig.load(getattr(args, "config", None))
    store = await Store.open(data_dir(args, cfg))
    try:
        fn: Handler = args.func
        return await fn(args, cfg, store)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(_main(args))
    except ChmailError as exc:
        print(f"chmail-shop: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
