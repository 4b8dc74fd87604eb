"""Campaigns: create (checked), preview for one member, pause, resume, status.

A campaign is created as a draft. ``send`` (sender.py) snapshots its segment into the
per-recipient table and mails; ``pause`` stops a running send between two mails;
``resume`` carries on from the table. What a template can use:

* ``member``: name, first_name, email, age_band, job, hobbies, interests, lang
* ``product``: sku, title, description, price, image_url, landing_url (or None)
* ``campaign``: id, name
* ``unsubscribe_url``: the member's own one-click unsubscribe link
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from chmail.config import ShopConfig
from chmail.errors import ShopError
from chmail.headers import format_context
from shop_publicity import compose as c
from shop_publicity import models as m
from shop_publicity.store import Store
from shop_publicity.templates import Templates, compile_templates, render

_LANG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")


async def shop_key(store: Store) -> str:
    """The shop's HMAC key for unsubscribe tokens, made once per data folder."""
    return await store.setting_init("unsubscribe_key", secrets.token_hex(32))


def context(
    campaign: m.Campaign, product: m.Product | None, member: m.Member, unsubscribe_url: str
) -> dict[str, Any]:
    return {
        "member": {
            "name": member.name,
            "first_name": member.first_name,
            "email": member.email,
            "age_band": member.age_band,
            "job": member.job,
            "hobbies": list(member.hobbies),
            "interests": list(member.interests),
            "lang": member.lang,
        },
        "product": product.to_json() if product else None,
        "campaign": {"id": campaign.id, "name": campaign.name},
        "unsubscribe_url": unsubscribe_url,
    }


def ch_context(campaign: m.Campaign) -> str:
    """The X-CH-Context value: what the operator will see the customer saw."""
    values = {"campaign": str(campaign.id)}
    if campaign.sku:
        values["sku"] = campaign.sku
    values["lang"] = campaign.lang
    return format_context(values)


async def create(
    store: Store,
    cfg: ShopConfig,
    *,
    name: str,
    subject: str,
    body: str,
    sku: str | None,
    lang: str = "en",
    segment: m.Segment | None = None,
    pool: list[str] | None = None,
) -> int:
    """Check everything a send will need, then save the draft. Returns its id."""
    if not name.strip():
        raise ShopError("A campaign needs a name.")
    compile_templates(subject, body)  # raises TemplateError with the line
    if not _LANG.fullmatch(lang):
        raise ShopError(f"Language {lang!r} is not a code like en, ko or pt-BR.")
    if sku is not None and await store.product(sku) is None:
        raise ShopError(f"There is no product {sku!r}; add it with `chmail-shop products add`.")
    for login in pool or []:
        if await store.operator_role(login) is None:
            raise ShopError(
                f"{login!r} is not an operator; add it with `chmail-shop operators add {login}`."
            )
    return await store.create_campaign(
        name=name.strip(),
        subject_tpl=subject,
        body_tpl=body,
        sku=sku,
        lang=lang,
        segment=segment or m.Segment(),
        from_addr=cfg.from_addr,
        pool=pool or [],
        secret=secrets.token_hex(16),
    )


async def get(store: Store, cid: int) -> m.Campaign:
    camp = await store.campaign(cid)
    if camp is None:
        raise ShopError(f"There is no campaign {cid}; `chmail-shop campaign status` lists them.")
    return camp


@dataclass(frozen=True)
class Rendered:
    message_id: str
    subject: str
    body: str
    raw: bytes


async def preview(store: Store, cfg: ShopConfig, cid: int, member_key: str) -> Rendered:
    """The exact mail ``member_key`` would get (without the X-CH lease)."""
    camp = await get(store, cid)
    member = await store.member(member_key)
    if member is None:
        raise ShopError(f"There is no member {member_key!r} (give an e-mail, login or id).")
    product = await store.product(camp.sku) if camp.sku else None
    return render_for(camp, product, member, cfg, await shop_key(store))


def render_for(
    camp: m.Campaign,
    product: m.Product | None,
    member: m.Member,
    cfg: ShopConfig,
    key: str,
    extra: list[tuple[str, str]] | None = None,
    msg_id: str | None = None,
    tpls: Templates | None = None,
) -> Rendered:
    tpls = tpls or compile_templates(camp.subject_tpl, camp.body_tpl)
    url = c.unsubscribe_url(cfg.unsubscribe_base_url, key, camp.id, member.id)
    subject, body = render(tpls, context(camp, product, member, url))
    mid = msg_id or c.message_id(camp.secret, camp.id, member.id, c.domain_of(camp.from_addr))
    raw = c.compose(
        from_addr=camp.from_addr,
        to_addr=member.email,
        to_name=member.name,
        subject=subject,
        body=body,
        msg_id=mid,
        unsubscribe=url,
        extra=extra,
    )
    return Rendered(mid, subject, body, raw)


async def pause(store: Store, cid: int, reason: str = "paused by the admin") -> None:
    camp = await get(store, cid)
    if camp.status != m.RUNNING:
        raise ShopError(f"Campaign {cid} is {camp.status}, not sending; nothing to pause.")
    await store.set_status(cid, m.PAUSED, reason)


async def status(store: Store, cid: int) -> dict[str, Any]:
    camp = await get(store, cid)
    counts = await store.counts(cid)
    return {
        "campaign": cid,
        "name": camp.name,
        "status": camp.status,
        "pause_reason": camp.pause_reason,
        "sku": camp.sku,
        "lang": camp.lang,
        "segment": camp.segment.to_json(),
        "pool": list(camp.pool),
        "recipients": sum(counts.values()),
        **counts,
        "uncertain_resent": await store.uncertain_total(cid),
        "failures": [{"email": e, "error": w} for e, w in await store.failures(cid, 10)],
    }
