"""Products (the ad DB): add one, import a CSV, list.

A SKU travels in ``X-CH-Context`` (``sku=A-100``), so it follows that header's value
grammar: 1 to 64 of letters, digits, ``.``, ``_``, ``:`` and ``-``. URLs must be http(s).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from pathlib import Path

from chmail.errors import ShopError
from shop_publicity.models import Product
from shop_publicity.store import Store

_SKU = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_URL = re.compile(r"https?://[^\s<>\"']{1,2000}")
COLUMNS = ("sku", "title", "description", "price", "image_url", "landing_url")


def check_product(
    sku: str,
    title: str,
    description: str = "",
    price: str = "",
    image_url: str = "",
    landing_url: str = "",
) -> Product:
    sku = sku.strip()
    if not _SKU.fullmatch(sku):
        raise ShopError(
            f"SKU {sku!r} is not valid: use 1 to 64 letters, digits, '.', '_', ':' or '-'"
        )
    if not title.strip():
        raise ShopError("the title is empty")
    for what, url in (("image URL", image_url), ("landing URL", landing_url)):
        if url.strip() and not _URL.fullmatch(url.strip()):
            raise ShopError(f"the {what} {url.strip()!r} is not an http(s) URL")
    return Product(
        sku,
        title.strip(),
        description.strip(),
        price.strip(),
        image_url.strip(),
        landing_url.strip(),
    )


async def add(store: Store, product: Product) -> None:
    await store.upsert_product(product)


async def import_csv(store: Store, path: str | Path) -> tuple[int, list[tuple[int, str]]]:
    """Import products; returns (saved, [(line, why)])."""
    try:
        text = (await asyncio.to_thread(Path(path).read_bytes)).decode("utf-8-sig")
    except OSError as exc:
        raise ShopError(f"Cannot read {path}: {exc.strerror}.") from exc
    except UnicodeDecodeError:
        raise ShopError(f"{path} is not UTF-8 text; save it as CSV UTF-8 and retry.") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "sku" not in fields or "title" not in fields or set(fields) - set(COLUMNS):
        raise ShopError(
            f"Line 1 of {path}: columns must be among {', '.join(COLUMNS)} (sku and title "
            "required)."
        )
    reader.fieldnames = fields
    saved, bad = 0, []
    line = 1
    for row in reader:
        start = line + 1
        line = reader.line_num
        try:
            product = check_product(**{k: (row.get(k) or "") for k in COLUMNS})
        except ShopError as exc:
            bad.append((start, str(exc)))
            continue
        await store.upsert_product(product)
        saved += 1
    return saved, bad
