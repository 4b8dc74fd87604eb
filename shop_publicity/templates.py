"""Campaign templates: Jinja2 in its sandbox, with errors a marketer can act on.

Rules:

* Templates run in ``SandboxedEnvironment`` (no attribute tricks reach Python
  internals) with ``StrictUndefined``: a misspelt ``{{ memebr.name }}`` is an error
  at preview time, never an empty hole in 10,000 mails.
* Every error names the template (subject or body), the line, and what is wrong.
* The subject is one line: a rendered subject holding a line break is refused (it
  would otherwise become a header injection).
* Pure: no I/O. The sender and ``campaign preview`` call :func:`render`.
* Speed (one render per recipient): when the subject holds only expressions (no
  ``{% %}`` statement that could leak a name into the body), subject and body are also
  compiled as one template, split on a separator no template or member field holds,
  and rendered in one pass. Any failure of that pass, or an output that does not split
  in two, is rendered again the careful way, which raises the error a marketer reads;
  so the fast pass never changes what a mail says or what an error says.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import concat

from chmail.errors import ShopError

MAX_SUBJECT = 998  # RFC 5322 2.1.1: a line is at most 998 characters
_LINEBREAK = re.compile(r"[\r\n\x00]")
_SEP = "\x00\x1e<chmail-body>\x1e\x00"  # between subject and body in the one-pass template


class TemplateError(ShopError):
    """A campaign template does not compile or does not render."""

    code = "template"

    def __init__(self, which: str, line: int | None, what: str) -> None:
        where = f"line {line} of the {which}" if line else f"the {which}"
        super().__init__(f"Template error in {where}: {what}")
        self.which = which
        self.line = line


def _env() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # text/plain mail: nothing to escape
        keep_trailing_newline=True,
    )


_ENV = _env()


@dataclass(frozen=True)
class Templates:
    """A campaign's compiled subject and body."""

    subject: jinja2.Template
    body: jinja2.Template
    both: jinja2.Template | None = None  # subject + _SEP + body, for the one-pass render


def compile_templates(subject: str, body: str) -> Templates:
    tpls = Templates(_compile("subject", subject), _compile("body", body))
    if "{%" in subject or _SEP in subject or _SEP in body:
        return tpls
    try:
        both = _ENV.from_string(subject + _SEP + body)
    except jinja2.TemplateSyntaxError:  # e.g. a comment left open: the careful way
        return tpls
    return Templates(tpls.subject, tpls.body, both)


def _compile(which: str, source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(which, exc.lineno, exc.message or "syntax error") from None


def _line_in_template(exc: BaseException) -> int | None:
    """The template line an error was raised on, from the traceback Jinja rewrites."""
    tb: types.TracebackType | None = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _sentence(text: str) -> str:
    return text.rstrip(". ") + "."


def _render_one(which: str, tpl: jinja2.Template, ctx: dict[str, Any]) -> str:
    try:
        return tpl.render(ctx)
    except jinja2.UndefinedError as exc:
        raise TemplateError(which, _line_in_template(exc), _sentence(str(exc.message))) from None
    except SecurityError as exc:
        raise TemplateError(
            which, _line_in_template(exc), _sentence(f"not allowed: {exc}")
        ) from None
    except jinja2.TemplateError as exc:
        raise TemplateError(which, _line_in_template(exc), _sentence(str(exc))) from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateError(
            which, _line_in_template(exc), _sentence(f"{type(exc).__name__}: {exc}")
        ) from None


def _one_pass(both: jinja2.Template, ctx: dict[str, Any]) -> tuple[str, str] | None:
    """Subject and body in one render, or None (render them the careful way)."""
    try:
        # What Template.render does, minus its per-call dict copy and traceback rewrite
        # (the careful path below rewrites the traceback when there is an error).
        out = concat(both.root_render_func(both.new_context({**both.globals, **ctx}, True)))
    except Exception:  # any failure is rendered again the careful way, which reports it
        return None
    parts = out.split(_SEP)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def render(tpls: Templates, ctx: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) for one recipient."""
    fast = _one_pass(tpls.both, ctx) if tpls.both is not None else None
    if fast is not None:
        subject, body = fast
        subject = subject.strip()
    else:
        subject = _render_one("subject", tpls.subject, ctx).strip()
    if _LINEBREAK.search(subject):
        raise TemplateError("subject", None, "the rendered subject holds a line break.")
    if not subject:
        raise TemplateError("subject", None, "the rendered subject is empty.")
    if len(subject) > MAX_SUBJECT:
        raise TemplateError("subject", None, f"the subject is longer than {MAX_SUBJECT}.")
    if fast is None:
        body = _render_one("body", tpls.body, ctx)
    return subject, body
