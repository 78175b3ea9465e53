"""Jinja2 rendering: one directory per template, one file per channel and part.

    templates/<template>/email.subject.txt   email.txt   email.html
    templates/<template>/sms.txt
    templates/<template>/push.title.txt      push.txt

`.html` files are autoescaped, the others are not. Undefined variables are errors
(`StrictUndefined`): a template that needs data the event did not carry fails loudly, and
the notification is FAILED with the error recorded instead of going out half-empty. A
directory in `DROPSLOT_NOTIFICATIONS_TEMPLATES_DIR` overrides single files by the same
relative path, so an operator can restyle a mail without a release.

Times are shown in the pickup branch's time zone when catalog knows it (the branch's
`opening_hours.timezone`, carried as `tz` in the payload), else in UTC; the zone is always
named ("16:30 CET", "15:30 UTC").
"""

from __future__ import annotations

import base64
import re
import struct
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import segno

from .domain.failures import TemplateFailure
from .domain.model import TEMPLATES, Channel

PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
QR_CID = "checkin-qr"

# ISO 4217 currencies without minor units (the rest: two decimals; three-decimal ones are rare
# enough for drops that they show as two until someone needs them).
_ZERO_DECIMAL = {"JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "PYG", "RWF", "KMF", "GNF", "VUV"}


@dataclass(frozen=True)
class InlineImage:
    cid: str
    data: bytes
    subtype: str = "png"
    filename: str = "checkin-qr.png"


@dataclass(frozen=True)
class Rendered:
    channel: Channel
    subject: str | None  # email subject, push title
    text: str
    html: str | None = None
    images: list[InlineImage] = field(default_factory=list)


def _zone(tz: str | None) -> tzinfo:
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass  # an unknown zone must not fail the message: fall back to UTC
    return UTC


def _as_datetime(value: Any, tz: str | None = None) -> datetime:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise TypeError(f"not a date-time: {value!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(_zone(tz))


def format_when(value: Any, tz: str | None = None) -> str:
    """'Tue 24 Nov 2026, 14:00 UTC' (or '..., 15:00 CET' in a branch's zone)."""
    dt = _as_datetime(value, tz)
    return f"{dt:%a} {dt.day} {dt:%b %Y, %H:%M} {dt.tzname()}"


def format_time(value: Any, tz: str | None = None) -> str:
    dt = _as_datetime(value, tz)
    return f"{dt:%H:%M} {dt.tzname()}"


def format_money(cents: int, currency: str) -> str:
    currency = (currency or "").upper()
    if currency in _ZERO_DECIMAL:
        return f"{cents} {currency}"
    sign = "-" if cents < 0 else ""
    whole, minor = divmod(abs(int(cents)), 100)
    return f"{sign}{whole}.{minor:02d} {currency}"


# A fixed mask pattern (any of the eight is valid QR; scanners read them all): segno's search
# for the "best" mask scored all eight and was half the cost of a confirmation mail.
QR_MASK = 2
QR_SCALE = 6
QR_BORDER = 4


def qr_png(token: str) -> bytes:
    """The check-in QR as a 1-bit grayscale PNG (black modules, white quiet zone of 4).

    Deterministic: the same token always gives the same bytes. Encoded by segno; the PNG is
    written here a module row at a time (segno's writer walks every pixel in Python, which
    cost more than the encoding): during a drop a thousand confirmations render at once."""
    matrix = segno.make(token, error="m", micro=False, mask=QR_MASK, boost_error=False).matrix
    return png_1bit(matrix, scale=QR_SCALE, border=QR_BORDER)


def png_1bit(matrix: Any, *, scale: int, border: int) -> bytes:
    """Rows of modules (truthy = dark) as a PNG: bit depth 1, colour type 0 (0 black, 1 white)."""
    size = (len(matrix) + 2 * border) * scale
    pad = (-size) % 8
    quiet = "1" * (border * scale)

    def packed(bits: str) -> bytes:
        bits += "0" * pad
        return b"\x00" + int(bits, 2).to_bytes(len(bits) // 8, "big")  # filter type 0 per row

    white = packed("1" * size)
    rows = [white] * (border * scale)
    for row in matrix:
        line = packed(quiet + "".join("0" * scale if dark else "1" * scale for dark in row) + quiet)
        rows.extend([line] * scale)
    rows.extend([white] * (border * scale))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) \
        + chunk(b"IEND", b"")


class Renderer:
    def __init__(self, override_dir: str | Path | None = None):
        loaders: list[jinja2.BaseLoader] = []
        if override_dir:
            loaders.append(jinja2.FileSystemLoader(str(override_dir)))
        loaders.append(jinja2.FileSystemLoader(str(PACKAGE_TEMPLATES)))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=True,
        )
        self.env.filters["when"] = format_when
        self.env.filters["time"] = format_time
        self.env.filters["money"] = format_money

    def _part(self, template: str, name: str, context: dict[str, Any]) -> str:
        return self.env.get_template(f"{template}/{name}").render(context)

    def render(self, template: str, channel: Channel, context: dict[str, Any]) -> Rendered:
        """Render one message; any failure is a TemplateFailure with the reason."""
        try:
            spec = TEMPLATES[template]
        except KeyError:
            raise TemplateFailure(f"template error: unknown template {template!r}") from None
        try:
            if channel is Channel.EMAIL:
                images: list[InlineImage] = []
                ctx = dict(context)
                if spec.qr and context.get("reservation", {}).get("checkin_token"):
                    images.append(InlineImage(QR_CID, qr_png(context["reservation"]["checkin_token"])))
                    ctx["qr_cid"] = QR_CID
                else:
                    ctx["qr_cid"] = None
                return Rendered(
                    channel,
                    _one_line(self._part(template, "email.subject.txt", ctx)),
                    self._part(template, "email.txt", ctx).strip() + "\n",
                    self._part(template, "email.html", ctx),
                    images,
                )
            if channel is Channel.SMS:
                return Rendered(channel, None, _one_line(self._part(template, "sms.txt", context)))
            return Rendered(
                channel,
                _one_line(self._part(template, "push.title.txt", context)),
                _one_line(self._part(template, "push.txt", context)),
            )
        except jinja2.TemplateNotFound as exc:
            raise TemplateFailure(f"template error: {template}/{exc.name} not found") from exc
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateFailure(
                f"template error: syntax error in {exc.name or template} line {exc.lineno}: {exc.message}"
            ) from exc
        except jinja2.TemplateError as exc:
            raise TemplateFailure(f"template error in {template}/{channel}: {exc}") from exc
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise TemplateFailure(f"template error in {template}/{channel}: {type(exc).__name__}: {exc}") from exc


def _one_line(text: str) -> str:
    # Subjects and SMS are single lines; CR/LF in a subject would also be a header injection.
    return re.sub(r"\s+", " ", text).strip()


def html_with_inline_images(html: str, images: list[InlineImage]) -> str:
    """For the dev mailbox page: `cid:` references become data: URIs a browser can show."""
    for img in images:
        uri = f"data:image/{img.subtype};base64," + base64.b64encode(img.data).decode()
        html = html.replace(f"cid:{img.cid}", uri)
    return html
