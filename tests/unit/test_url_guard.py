"""The URL guard (shared/net/urls.py) as pure logic: literal IPs, and host names
answered by a resolver function of the test's own, so nothing touches DNS or the network.

tests/test_webhook_guard.py checks the same guard in front of real servers (nothing
connects to a refused address) and tests/test_image_refs.py the s3:// side of image
references; this file covers what the guard decides, for both kinds of URL.
"""

from __future__ import annotations

import pytest

from shared.errors import InvalidInput
from shared.net.image_refs import IMAGE_URL, ImageHostUnresolved, ImageUrlRefused
from shared.net.urls import (
    WEBHOOK_URL,
    ResolvedUrl,
    UrlKind,
    WebhookUrlRefused,
    check_public_url,
    forbidden_reason,
    resolve_public_url,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
KINDS = [pytest.param(WEBHOOK_URL, id="webhook"), pytest.param(IMAGE_URL, id="image")]


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"an IP literal was resolved: {host}:{port}")


def answers(*addresses: str):  # type: ignore[no-untyped-def]
    def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolver


def resolve(url: str, kind: UrlKind = WEBHOOK_URL, *, allow_http: bool = True,
            networks: list[str] | None = None, resolver=no_dns) -> ResolvedUrl:  # type: ignore[no-untyped-def]
    return resolve_public_url(url, kind, allow_http=allow_http,
                              allowed_networks=networks or [], resolver=resolver)


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback address 127.0.0.1"),
        ("127.255.0.9", "loopback"),
        ("10.0.0.1", "private address 10.0.0.1"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "cloud metadata address 169.254.169.254"),
        ("169.254.170.2", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),  # public on paper, Azure-internal in fact
        ("169.254.7.7", "link-local"),
        ("100.64.0.1", "shared address space"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("240.1.2.3", "reserved"),
        ("255.255.255.255", "reserved"),
        ("198.18.0.1", "non-public"),  # benchmarking range
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "non-public"),  # documentation range
        ("::ffff:127.0.0.1", "IPv4-mapped address ::ffff:127.0.0.1 (loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "NAT64"),  # 169.254.169.254 behind NAT64
        ("2002:a00:1::1", "6to4"),  # 10.0.0.1
        ("::a00:1", "IPv4-compatible"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo"),  # client 10.0.0.1
    ],
)
def test_forbidden_addresses_say_why(address: str, reason: str) -> None:
    assert reason in str(forbidden_reason(address, []))


@pytest.mark.parametrize(
    "address",
    [PUBLIC_V4, "8.8.8.8", "1.1.1.1", PUBLIC_V6, "2606:4700:4700::1111",
     "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(address, []) is None


def test_an_address_that_is_not_one_is_named() -> None:
    assert forbidden_reason("example.com", []) == "'example.com', which is not a valid IP address"


def test_allowed_networks_exempt_exactly_their_addresses() -> None:
    assert forbidden_reason("10.1.2.3", ["10.1.0.0/16"]) is None
    assert "private" in str(forbidden_reason("10.2.0.1", ["10.1.0.0/16"]))
    assert forbidden_reason("::1", ["::1/128"]) is None
    # An IPv4 network admits the IPv4-mapped form of its addresses, not the IPv6 loopback.
    assert forbidden_reason("::ffff:127.0.0.1", ["127.0.0.1/32"]) is None
    assert forbidden_reason("::1", ["127.0.0.1/32"]) is not None
    # Non-strict: host bits set in the network are tolerated.
    assert forbidden_reason("192.168.1.9", ["192.168.1.1/24"]) is None


def test_allowed_networks_must_be_a_list_of_networks() -> None:
    with pytest.raises(ValueError, match="list of CIDR strings"):
        forbidden_reason("8.8.8.8", "10.0.0.0/8")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        forbidden_reason("8.8.8.8", ["ten-dot-something"])


# --- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/x", "https://[::1]:8443/", "https://169.254.169.254/latest/meta-data",
     "https://10.0.0.1/", "https://[::ffff:10.0.0.1]/", "https://[64:ff9b::7f00:1]/"],
)
def test_internal_literals_are_refused_without_a_lookup(kind: UrlKind, url: str) -> None:
    with pytest.raises(kind.refused) as refused:
        resolve(url, kind)
    err = refused.value
    assert f"{kind.noun} is refused" in err.message and "use a public https URL" in err.message
    assert err.http_status == 400 and isinstance(err, InvalidInput)
    # The check made at submit time refuses it the same way.
    with pytest.raises(kind.refused):
        check_public_url(url, kind, allow_http=True, allowed_networks=[])


def test_each_kind_has_its_own_error_code() -> None:
    assert WebhookUrlRefused("x").code == "webhook_url_refused"
    assert ImageUrlRefused("x").code == "image_url_refused"


@pytest.mark.parametrize("kind", KINDS)
def test_plain_http_needs_the_kinds_own_setting(kind: UrlKind) -> None:
    with pytest.raises(kind.refused) as refused:
        resolve(f"http://{PUBLIC_V4}/", kind, allow_http=False)
    assert kind.allow_http_setting in refused.value.message
    assert resolve(f"http://{PUBLIC_V4}/", kind, allow_http=True).port == 80


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/", "scheme 'ftp'"),
        ("//example.com/", "scheme '(none)'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("https://user:secret@example.com/", "user name or password"),
        ("https://@example.com/", "user name or password"),
        ("https:///path", "has no host"),
        ("https://example.com:0/", "port"),
        ("https://example.com:65536/", "port"),
        ("https://example.com:-1/", "port"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com/a\tb", "whitespace"),
        ("https://example.com/\x7f", "control"),
        ("https://[::1/", "could not be parsed"),
        ("https://under_score-.example/", "not a valid domain name"),
        ("https://" + "a" * 64 + ".example/", "not a valid domain name"),
        ("https://example.com/" + "p" * 2100, "longer than 2048"),
    ],
)
def test_malformed_urls_are_refused(url: str, words: str) -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        resolve(url, resolver=answers(PUBLIC_V4))
    assert words in refused.value.message


def test_a_public_literal_resolves_to_itself_with_the_request_target() -> None:
    got = resolve(f"https://{PUBLIC_V4}/hook?a=1&b=2#frag")
    assert got == ResolvedUrl(url=f"https://{PUBLIC_V4}/hook?a=1&b=2", scheme="https",
                              host=PUBLIC_V4, port=443, target="/hook?a=1&b=2",
                              address=PUBLIC_V4)


def test_an_ipv6_literal_loses_its_brackets() -> None:
    got = resolve(f"https://[{PUBLIC_V6}]:8443")
    assert (got.host, got.port, got.target, got.address) == (PUBLIC_V6, 8443, "/", PUBLIC_V6)


def test_names_are_lowercased_idna_encoded_and_resolved_once() -> None:
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return [PUBLIC_V6, PUBLIC_V4]

    got = resolve("HTTPS://Bücher.Example:8443/x", resolver=resolver)
    assert asked == [("xn--bcher-kva.example", 8443)]
    assert (got.scheme, got.host, got.address) == ("https", "xn--bcher-kva.example", PUBLIC_V6)


def test_a_trailing_dot_and_underscores_are_valid_names() -> None:
    assert resolve("https://_srv.example.com./", resolver=answers(PUBLIC_V4)).host == \
        "_srv.example.com."


@pytest.mark.parametrize("answer", [["10.0.0.5"], [PUBLIC_V4, "127.0.0.1"],
                                    ["192.168.1.1", PUBLIC_V4], [PUBLIC_V6, "fd00::1"]])
def test_one_internal_address_in_the_answer_refuses_the_name(answer: list[str]) -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        resolve("https://hooks.example.test/", resolver=answers(*answer))
    assert "hooks.example.test resolves to" in refused.value.message


@pytest.mark.parametrize("kind", KINDS)
def test_a_name_that_does_not_resolve_is_the_kinds_unresolved_error(kind: UrlKind) -> None:
    def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    for resolver in (fails, answers()):
        with pytest.raises(kind.unresolved, match="could not resolve"):
            resolve("https://nowhere.example.test/", kind, resolver=resolver)
    assert IMAGE_URL.unresolved is ImageHostUnresolved  # the worker retries these later


def test_a_resolver_answer_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(WebhookUrlRefused, match="invalid address 'bogus'"):
        resolve("https://odd.example.test/", resolver=answers("bogus"))


def test_allowed_networks_admit_local_receivers_for_development() -> None:
    got = resolve("http://127.0.0.1:9000/hook", networks=["127.0.0.0/8"])
    assert (got.address, got.port, got.target) == ("127.0.0.1", 9000, "/hook")
    got = resolve("http://receiver.local.test/", networks=["10.5.0.0/16"],
                  resolver=answers("10.5.0.7"))
    assert got.address == "10.5.0.7"
    with pytest.raises(WebhookUrlRefused):
        resolve("http://127.0.0.1/", networks=["10.0.0.0/8"])


def test_check_public_url_leaves_names_unresolved() -> None:
    # A name is checked for form only: whoever connects resolves it and checks again.
    check_public_url("https://internal.example.test/x", WEBHOOK_URL, allow_http=False,
                     allowed_networks=[])
    with pytest.raises(WebhookUrlRefused, match="must use https"):
        check_public_url("http://internal.example.test/x", WEBHOOK_URL, allow_http=False,
                         allowed_networks=[])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("url", "answer", "network"), [
    ("https://127.0.0.1/hook", None, "127.0.0.1/32"),
    ("https://[::1]/hook", None, "::1/128"),
    ("https://intranet.example/hook", "10.1.2.3", "10.1.2.3/32"),
])
def test_a_private_address_refusal_names_the_setting_that_allows_it(
    kind: UrlKind, url: str, answer: str | None, network: str
) -> None:
    resolver = answers(answer) if answer else no_dns
    with pytest.raises(kind.refused) as refused:
        resolve_public_url(url, kind, allow_http=False, allowed_networks=[], resolver=resolver)
    message = str(refused.value)
    assert kind.allowed_networks_setting in message, message
    assert f'["{network}"]' in message, message
    # ... and that setting, with that value, is what lets the same URL through.
    allowed = resolve_public_url(url, kind, allow_http=False, allowed_networks=[network],
                                 resolver=resolver)
    assert allowed.address == network.split("/")[0]
