"""Where webhooks may be sent (server-side request forgery protection).

A store owner chooses the URL, so without a check they could make our servers call our own
internals (the database, the broker, a cloud metadata service at 169.254.169.254). Only
globally routable unicast addresses are allowed: loopback, private, link-local, carrier-grade
NAT, multicast, reserved, documentation and unspecified addresses are refused, including
IPv4 addresses hidden inside IPv6 (mapped, 6to4, Teredo, NAT64). Operators can allow
listed networks (tests and `make dev` allow loopback for their local receivers).

The check runs on the URL at creation and again on the resolved address at connect time,
because DNS can change between the two (a name that resolved to a public address may
resolve to 127.0.0.1 later).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
MAX_URL_LENGTH = 2048


class UrlNotAllowed(ValueError):
    """The URL (or the address it resolves to) is not a place we deliver to."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_forbidden(ip: IPAddress) -> str | None:
    """None for a public unicast address, else the kind of address it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped (link-local) address"
        inner = _embedded_v4(ip)
        if inner is not None:
            reason = why_forbidden(inner)
            return f"{reason} (embedded in IPv6)" if reason else None
    for attr, label in (
        ("is_unspecified", "unspecified address"),
        ("is_loopback", "loopback address"),
        ("is_link_local", "link-local address (cloud metadata lives here)"),
        ("is_multicast", "multicast address"),
        ("is_private", "private address"),
        ("is_reserved", "reserved address"),
    ):
        if getattr(ip, attr):
            return label
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), 192.0.0.0/24
        return "non-public address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> AddressPolicy:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.allowed_networks)

    def check(self, ip: IPAddress | str) -> None:
        """Raise UrlNotAllowed unless we may connect to this address."""
        if isinstance(ip, str):
            ip = ipaddress.ip_address(ip)
        if self._allowed(ip):
            return
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and self._allowed(ip.ipv4_mapped):
            return
        reason = why_forbidden(ip)
        if reason is not None:
            raise UrlNotAllowed(f"{ip} is not allowed: {reason}")


@dataclass(frozen=True)
class Destination:
    url: str
    scheme: str
    host: str  # without brackets
    port: int
    ip_literal: IPAddress | None


def parse_url(url: str, *, allow_http: bool) -> Destination:
    """Syntactic checks of an endpoint URL (no DNS): scheme, host, port."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise UrlNotAllowed(f"URL longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlNotAllowed(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UrlNotAllowed("the URL must be https")
    if scheme == "http" and not allow_http:
        raise UrlNotAllowed("the URL must be https (plain http is not allowed here)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlNotAllowed("the URL has no host")
    if any(c.isspace() for c in url):
        raise UrlNotAllowed("the URL contains whitespace")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
        if host.replace(".", "").isdigit() or host.lower().startswith("0x"):
            # Legacy numeric forms (2130706433, 0x7f.1, 127.1) that resolvers map to addresses.
            raise UrlNotAllowed("numeric hosts must be written as dotted-quad IPv4 addresses") from None
    return Destination(url, scheme, host, port or (443 if scheme == "https" else 80), literal)
