"""Checks on client-given URLs so a client cannot make our workers call internal services
(SSRF): webhook URLs, and image URLs that workers fetch.

The host is resolved once, every address it resolves to is checked, and the caller
connects to the checked address only: resolving again at connect time would let a DNS
answer with a short TTL swap a public address for an internal one (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from shared.errors import InvalidInput

MAX_URL_LENGTH = 2048

Resolver = Callable[[str, int], list[str]]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"https": 443, "http": 80}

# Instance metadata services hand out cloud credentials; named so the refusal explains itself.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer: a public address, reachable only from inside Azure
        "fd00:ec2::254",  # AWS over IPv6
    )
)

_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

# LDH labels; underscores occur in real DNS names (e.g. service records) and are harmless here.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")

_PUBLIC_HINT = "use a public https URL"


class WebhookUrlRefused(InvalidInput):
    code = "webhook_url_refused"


@dataclass(frozen=True)
class UrlKind:
    """What a URL is for: how refusals name it, and which setting allows plain http."""

    noun: str  # "webhook URL"
    host_noun: str  # "webhook host"
    allow_http_setting: str  # the variable named when http is refused
    # The variable named when a private, loopback or link-local address is refused.
    allowed_networks_setting: str
    refused: type[InvalidInput]
    # Raised when the host name does not resolve: unlike a refusal, this may pass later.
    unresolved: type[InvalidInput]


WEBHOOK_URL = UrlKind(
    noun="webhook URL",
    host_noun="webhook host",
    allow_http_setting="VLMQ_WEBHOOK_ALLOW_HTTP",
    allowed_networks_setting="VLMQ_WEBHOOK_ALLOWED_NETWORKS",
    refused=WebhookUrlRefused,
    unresolved=WebhookUrlRefused,
)


@dataclass(frozen=True)
class ResolvedUrl:
    url: str  # the URL as given, fragment removed
    scheme: str  # "https" or "http"
    host: str  # lower-cased, IDNA-encoded, IPv6 without brackets
    port: int  # explicit or the scheme's default
    target: str  # path and query for the request line; "/" when the URL has neither
    address: str  # the one IP address the connection must go to


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def resolve_webhook_url(
    url: str,
    *,
    allow_http: bool,
    allowed_networks: Sequence[str],
    resolver: Resolver = system_resolver,
) -> ResolvedUrl:
    """Validate `url`, resolve its host once and return where to connect; raise if refused."""
    return resolve_public_url(
        url, WEBHOOK_URL, allow_http=allow_http, allowed_networks=allowed_networks,
        resolver=resolver,
    )


def resolve_public_url(
    url: str,
    kind: UrlKind,
    *,
    allow_http: bool,
    allowed_networks: Sequence[str],
    resolver: Resolver = system_resolver,
) -> ResolvedUrl:
    """Validate `url`, resolve its host once and return where to connect; raise if refused."""
    networks = _parse_networks(allowed_networks)
    parsed = _parse(url, kind, allow_http=allow_http)
    if parsed.literal is not None:
        addresses: list[IPAddress] = [parsed.literal]
    else:
        addresses = _resolve(parsed.host, parsed.port, resolver, kind)

    # One forbidden address is enough to refuse: a connection library could pick any of them,
    # and an attacker controlling the DNS answer would list a public address first.
    via_host = None if parsed.literal is not None else parsed.host
    for address in addresses:
        _refuse_forbidden(address, networks, kind, via_host=via_host)

    parts = parsed.parts
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return ResolvedUrl(
        url=url.split("#", 1)[0],
        scheme=parsed.scheme,
        host=parsed.host,
        port=parsed.port,
        target=target,
        address=str(addresses[0]),
    )


def check_public_url(
    url: str, kind: UrlKind, *, allow_http: bool, allowed_networks: Sequence[str]
) -> None:
    """The checks that need no DNS: form, scheme, credentials, port, and an IP literal host.

    For refusing a URL early (at submit) without a lookup per URL; whoever connects must
    still call resolve_public_url, which repeats these and checks what the name resolves to.
    """
    networks = _parse_networks(allowed_networks)
    parsed = _parse(url, kind, allow_http=allow_http)
    if parsed.literal is not None:
        _refuse_forbidden(parsed.literal, networks, kind, via_host=None)


@dataclass(frozen=True)
class _Parsed:
    parts: SplitResult
    scheme: str
    host: str  # lower-cased, IDNA-encoded, IPv6 without brackets
    port: int
    literal: IPAddress | None  # the host, when it is an IP address


def _parse(url: str, kind: UrlKind, *, allow_http: bool) -> _Parsed:
    refused = kind.refused
    if len(url) > MAX_URL_LENGTH:
        raise refused(
            f"{kind.noun} is longer than {MAX_URL_LENGTH} characters; use a shorter URL"
        )
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise refused(
            f"{kind.noun} contains whitespace or control characters; percent-encode them"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise refused(f"{kind.noun} could not be parsed ({exc}); {_PUBLIC_HINT}") from None
    try:
        explicit_port = parts.port
    except ValueError:
        explicit_port = 0  # refused below, after the scheme and host checks

    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise refused(
            f"{kind.noun} must use https; plain http is accepted only when "
            f"{kind.allow_http_setting} is set, which is meant for local development"
        )
    if scheme not in DEFAULT_PORTS:
        raise refused(
            f"{kind.noun} scheme {scheme or '(none)'!r} is not supported; {_PUBLIC_HINT}"
        )
    if "@" in parts.netloc:
        raise refused(
            f"{kind.noun} must not contain a user name or password; "
            "put credentials in the path or query"
        )
    if not parts.hostname:
        raise refused(f"{kind.noun} has no host; {_PUBLIC_HINT}")
    if explicit_port == 0:
        raise refused(f"{kind.noun} port must be a number between 1 and 65535")
    port = explicit_port if explicit_port is not None else DEFAULT_PORTS[scheme]

    literal = _ip_literal(parts.hostname)
    host = parts.hostname if literal is not None else _ascii_hostname(parts.hostname, kind)
    return _Parsed(parts=parts, scheme=scheme, host=host, port=port, literal=literal)


def _refuse_forbidden(
    address: IPAddress, networks: Sequence[IPNetwork], kind: UrlKind, *, via_host: str | None
) -> None:
    reason = _forbidden(address, networks)
    if reason is not None:
        via = "" if via_host is None else f"{via_host} resolves to "
        raise kind.refused(
            f"{kind.noun} is refused: {via}{reason}, which is not a public address; "
            f"{_PUBLIC_HINT}, or (local development only) have the operator add its network "
            f"to {kind.allowed_networks_setting}, e.g. '[\"{address}/{address.max_prefixlen}\"]'"
        )


def forbidden_reason(address: str, allowed_networks: Sequence[str]) -> str | None:
    """Why a connection to `address` is refused, or None when it is allowed."""
    networks = _parse_networks(allowed_networks)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r}, which is not a valid IP address"
    return _forbidden(ip, networks)


def _parse_networks(allowed_networks: Sequence[str]) -> list[IPNetwork]:
    if isinstance(allowed_networks, str):
        # A bare string would be read character by character and fail in a confusing way.
        raise ValueError("allowed_networks must be a list of CIDR strings, not one string")
    return [ipaddress.ip_network(n, strict=False) for n in allowed_networks]


def _ip_literal(hostname: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(hostname)
    except ValueError:
        return None


def _ascii_hostname(hostname: str, kind: UrlKind) -> str:
    try:
        host = hostname if hostname.isascii() else hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise kind.refused(
            f"{kind.noun} host {hostname!r} is not a valid domain name; {_PUBLIC_HINT}"
        ) from None
    host = host.lower()
    if not _HOSTNAME.match(host):
        raise kind.refused(
            f"{kind.noun} host {hostname!r} is not a valid domain name; {_PUBLIC_HINT}"
        )
    return host


def _resolve(host: str, port: int, resolver: Resolver, kind: UrlKind) -> list[IPAddress]:
    try:
        answer = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise kind.unresolved(
            f"could not resolve {kind.host_noun} {host!r} ({exc}); check the host name"
        ) from None
    if not answer:
        raise kind.unresolved(
            f"could not resolve {kind.host_noun} {host!r} (no addresses); check the host name"
        )
    addresses: list[IPAddress] = []
    for raw in answer:
        try:
            addresses.append(ipaddress.ip_address(raw))
        except ValueError:
            raise kind.refused(
                f"could not resolve {kind.host_noun} {host!r} (invalid address {raw!r}); "
                "check the host name"
            ) from None
    return addresses


def _forbidden(ip: IPAddress, networks: Sequence[IPNetwork]) -> str | None:
    if _in_networks(ip, networks):
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)

    # Traffic to an IPv4-mapped or NAT64 address ends up at the embedded IPv4 host, so that
    # host is what counts; the IPv6 checks would refuse them all (both lie in ::/8), which
    # breaks IPv6-only networks where DNS64 answers with NAT64 addresses for every name.
    mapped = ip.ipv4_mapped
    if mapped is not None:
        if _in_networks(mapped, networks):
            return None
        reason = _ipv4_reason(mapped)
        return None if reason is None else f"IPv4-mapped address ::ffff:{mapped} ({reason})"
    if ip in _NAT64:
        reason = _ipv4_reason(_low_ipv4(ip))
        return None if reason is None else f"NAT64 address {ip} ({reason})"

    for kind, embedded in _other_embedded_ipv4(ip):
        reason = _ipv4_reason(embedded)
        if reason is not None:
            return f"{kind} address {ip} ({reason})"
    return _ipv6_reason(ip)


def _in_networks(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    if ip in METADATA_ADDRESSES:
        return f"cloud metadata address {ip}"
    if ip.is_unspecified or ip in ipaddress.IPv4Network("0.0.0.0/8"):
        return f"unspecified ('this network') address {ip}"
    if ip.is_loopback:
        return f"loopback address {ip}"
    if ip.is_link_local:
        return f"link-local address {ip}"
    if ip in _SHARED_ADDRESS_SPACE:
        return f"shared address space (carrier-grade NAT) address {ip}"
    if any(ip in net for net in _RFC1918):
        return f"private address {ip}"
    if ip.is_multicast:
        return f"multicast address {ip}"
    if ip.is_reserved or ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"reserved address {ip}"
    if not ip.is_global:
        return f"non-public (special-purpose) address {ip}"
    return None


def _ipv6_reason(ip: ipaddress.IPv6Address) -> str | None:
    if ip in METADATA_ADDRESSES:
        return f"cloud metadata address {ip}"
    if ip.is_unspecified:
        return f"unspecified address {ip}"
    if ip.is_loopback:
        return f"loopback address {ip}"
    if ip.is_link_local:
        return f"link-local address {ip}"
    if ip.is_site_local:
        return f"site-local address {ip}"
    if ip in ipaddress.IPv6Network("fc00::/7"):
        return f"private (unique local) address {ip}"
    if ip.is_multicast:
        return f"multicast address {ip}"
    if ip.is_reserved:
        return f"reserved address {ip}"
    if ip.scope_id:
        return f"scoped address {ip}"
    if not ip.is_global:
        return f"non-public (special-purpose) address {ip}"
    return None


def _low_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def _other_embedded_ipv4(
    ip: ipaddress.IPv6Address,
) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses that tunnelling schemes would deliver traffic for `ip` to."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        found.append(("IPv4-compatible", _low_ipv4(ip)))
    if ip.sixtofour is not None:
        found.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found.append(("Teredo", client))
        found.append(("Teredo", server))
    return found
