"""Members CSV import, products, templates, preview and the audited export."""

from __future__ import annotations

import email
import email.policy
from email.utils import formataddr
from pathlib import Path

import pytest

from chmail.errors import ShopError
from shop_publicity import campaigns, compose, members, products, reports
from shop_publicity.__main__ import main
from shop_publicity.store import Store
from shop_publicity.templates import TemplateError, Templates, compile_templates, render
from tests.shop_support import shop_config

CSV = """email,name,consent,login,age_band,job,hobbies,interests
ann@example.com,Ann Lee,yes,ann,30-39,nurse,running;hiking,shoes;outdoor
bad-address,Bob,yes,,,,,
cho@example.com,,yes,,,,,
dan@example.com,Dan,maybe,,,,,
eve@example.com,Eve Kim,no,,40-49,teacher,,books
"fay@example.com","Fay, the second",yes,Fay!,,,,
ANN@example.com,Ann Again,yes,,,,,
gus@example.com,Gus,,,20-29,,,shoes
"""


async def test_csv_import_reports_bad_rows_by_line_and_imports_the_rest(tmp_path: Path) -> None:
    """Bad rows are refused with their line and reason; good rows are imported."""
    path = tmp_path / "m.csv"
    path.write_text(CSV, encoding="utf-8")
    store = await Store.open(tmp_path / "data")
    try:
        rep = await members.import_csv(store, path)
        bad = dict(rep.bad)
        assert sorted(bad) == [3, 4, 5, 7, 8]
        assert "not an e-mail address" in bad[3]
        assert "name is empty" in bad[4]
        assert "consent 'maybe'" in bad[5]
        assert "not a valid login" in bad[7]
        assert "already on line 2" in bad[8]
        assert (rep.added, rep.updated) == (3, 0)
        ann = await store.member("ann@example.com")
        assert ann is not None
        assert ann.interests == ("outdoor", "shoes")
        assert ann.hobbies == ("running", "hiking")
        eve = await store.member("eve@example.com")
        assert eve is not None
        assert not eve.consent
        again = await members.import_csv(store, path)
        assert (again.added, again.updated, again.unchanged) == (0, 0, 3)
        assert await store.count_members() == 3
    finally:
        await store.close()


async def test_csv_with_unknown_column_is_refused_whole(tmp_path: Path) -> None:
    """A header with a typo is refused before any row is read."""
    path = tmp_path / "m.csv"
    path.write_text("email,nmae\na@example.com,A\n", encoding="utf-8")
    store = await Store.open(tmp_path / "data")
    try:
        with pytest.raises(ShopError, match=r"Line 1.*missing column\(s\) name.*unknown.*nmae"):
            await members.import_csv(store, path)
    finally:
        await store.close()


def test_template_errors_name_template_and_line() -> None:
    """Syntax errors, unknown names and sandbox escapes say which template and line."""
    with pytest.raises(TemplateError, match=r"line 2 of the body: .*"):
        compile_templates("Hi", "Hello\n{% if %}\n")
    tpls = compile_templates("Hi {{ member.name }}", "one\ntwo\n{{ memebr.name }}\n")
    with pytest.raises(TemplateError, match=r"line 3 of the body: 'memebr' is undefined\."):
        render(tpls, {"member": {"name": "A"}})
    tpls = compile_templates("Hi", "{{ member.__class__.__mro__ }}")
    with pytest.raises(TemplateError, match="line 1 of the body: not allowed"):
        render(tpls, {"member": {"name": "A"}})
    tpls = compile_templates("Hi {{ x }}", "b")
    with pytest.raises(TemplateError, match="line break"):
        render(tpls, {"x": "a\r\nBcc: victim@example.com"})


def test_one_pass_render_says_what_the_careful_render_says() -> None:
    """The one-pass render (subject and body together) gives the same mail as rendering
    each alone, and falls back to the same errors; a subject with a statement is never
    rendered together with the body (a {% set %} there must not reach the body)."""
    ctx = {"member": {"name": "Ann", "tags": ["a", "b"]}, "x": "\x1e<chmail-body>!"}
    subject = "Hi {{ member.name }} {{ x }}"
    body = "{% for t in member.tags %}{{ t }},{% endfor %}\n"
    fast = compile_templates(subject, body)
    assert fast.both is not None
    careful = Templates(fast.subject, fast.body)
    assert render(fast, ctx) == render(careful, ctx) == ("Hi Ann \x1e<chmail-body>!", "a,b,\n")
    assert compile_templates("{% set y = 1 %}Hi", "{{ y }}").both is None
    with pytest.raises(TemplateError, match="line 1 of the body: 'y' is undefined"):
        render(compile_templates("{% set y = 1 %}Hi", "{{ y }}"), {})
    bad = compile_templates("Hi {{ member.name }}", "one\n{{ member.nope.deeper }}\n")
    assert bad.both is not None
    with pytest.raises(TemplateError, match="line 2 of the body"):
        render(bad, {"member": {"name": "A"}})


def test_display_names_written_as_formataddr_writes_them() -> None:
    """The To header's fast path for plain names equals email.utils.formataddr."""
    for name in ("Member Number 7", "Ann O'Neil", "Dr. Who", "a,b", "Jürgen", "", " x", 'a"b'):
        assert compose._to(name, "a@b.example") == formataddr(
            (name, "a@b.example"), charset="utf-8"
        )


async def test_preview_renders_one_members_mail(tmp_path: Path) -> None:
    """Preview shows the exact mail for one member: names, product, unsubscribe headers."""
    path = tmp_path / "m.csv"
    path.write_text(CSV, encoding="utf-8")
    store = await Store.open(tmp_path / "data")
    try:
        await members.import_csv(store, path)
        await products.add(store, products.check_product("A-100", "Trail shoe", price="89.00"))
        cfg = shop_config(25)
        cid = await campaigns.create(
            store,
            cfg,
            name="spring",
            sku="A-100",
            subject="{{ product.title }} for {{ member.first_name }}",
            body="Dear {{ member.name }}, {{ product.price }}.\nLeave: {{ unsubscribe_url }}\n",
        )
        r = await campaigns.preview(store, cfg, cid, "ann@example.com")
        msg = email.message_from_bytes(r.raw, policy=email.policy.default)
        assert msg["Subject"] == "Trail shoe for Ann"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert str(msg["List-Unsubscribe"]).startswith("<http://127.0.0.1:1/u/")
        assert "Dear Ann Lee, 89.00." in msg.get_content()
        again = await campaigns.preview(store, cfg, cid, "ann")
        assert again.message_id == r.message_id  # deterministic per recipient
        with pytest.raises(ShopError, match="no member"):
            await campaigns.preview(store, cfg, cid, "nobody@example.com")
    finally:
        await store.close()


async def test_campaign_create_refuses_bad_template_and_unknown_product(tmp_path: Path) -> None:
    """A campaign is never saved with a broken template or a missing product."""
    store = await Store.open(tmp_path / "data")
    try:
        cfg = shop_config(25)
        with pytest.raises(TemplateError, match="line 1 of the subject"):
            await campaigns.create(store, cfg, name="x", subject="{{ x", body="b", sku=None)
        with pytest.raises(ShopError, match="no product 'NOPE'"):
            await campaigns.create(store, cfg, name="x", subject="s", body="b", sku="NOPE")
        assert await store.campaign_ids() == []
    finally:
        await store.close()


async def test_export_needs_admin_and_is_audited(tmp_path: Path) -> None:
    """Only an admin may export members; refusals and exports land in the audit log."""
    path = tmp_path / "m.csv"
    path.write_text(CSV, encoding="utf-8")
    store = await Store.open(tmp_path / "data")
    try:
        await members.import_csv(store, path)
        await store.add_operator("olga", "operator")
        await store.add_operator("boss", "admin")
        with pytest.raises(ShopError, match="not an admin"):
            await reports.export_members(store, "olga", str(tmp_path / "x.csv"))
        assert not (tmp_path / "x.csv").exists()
        n = await reports.export_members(store, "boss", str(tmp_path / "out.csv"))
        assert n == 3
        assert (tmp_path / "out.csv").read_text().startswith("email,name,consent")
        log = [(actor, action) for _, actor, _, action, _ in await store.audit_entries()]
        assert log == [("olga", "members.export.refused"), ("boss", "members.export")]
    finally:
        await store.close()


def test_cli_members_and_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI imports, lists as JSON and creates a --for-interest campaign."""
    path = tmp_path / "m.csv"
    path.write_text(CSV, encoding="utf-8")
    data = ["--data", str(tmp_path / "d")]
    assert main([*data, "members", "import", str(path)]) == 3  # some rows refused
    assert "line 3:" in capsys.readouterr().out
    assert main([*data, "members", "list", "--json"]) == 0
    assert len(__import__("json").loads(capsys.readouterr().out)) == 3
    assert (
        main(
            [
                *data,
                "campaign",
                "create",
                "--name",
                "n",
                "--subject",
                "s",
                "--body",
                "b",
                "--for-interest",
                "shoes",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2 members match" in out  # ann and gus (eve has no consent)
    assert main([*data, "campaign", "preview", "1", "nobody"]) == 1
