"""Campaign templates: Jinja2 in its sandbox, with errors a marketer can act on.

Rules:

* Templates run in ``SandboxedEnvironment`` (no attribute tricks reach Python
  internals) with ``StrictUndefined``: a misspelt ``{{ memebr.name }}`` is an error
  at preview time, never an empty hole in 10,000 mails.
* Every error names the template (subject or body), the line, and what is wrong.
* The subject is one line: a rendered subject holding a line break is refused (it
  would otherwise become a header injection).
* Pure: no I/O. The sender and ``campaign preview`` call :func:`render`.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from chmail.errors import ShopError

MAX_SUBJECT = 998  # RFC 5322 2.1.1: a line is at most 998 characters
_LINEBREAK = re.compile(r"[\r\n\x00]")


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


def compile_templates(subject: str, body: str) -> Templates:
    return Templates(_compile("subject", subject), _compile("body", body))


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


def render(tpls: Templates, ctx: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) for one recipient."""
    subject = _render_one("subject", tpls.subject, ctx).strip()
    if _LINEBREAK.search(subject):
        raise TemplateError("subject", None, "the rendered subject holds a line break.")
    if not subject:
        raise TemplateError("subject", None, "the rendered subject is empty.")
    if len(subject) > MAX_SUBJECT:
        raise TemplateError("subject", None, f"the subject is longer than {MAX_SUBJECT}.")
    body = _render_one("body", tpls.body, ctx)
    return subject, body
