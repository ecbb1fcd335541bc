"""The address policy refuses every non-public destination, however it is spelled."""

import ipaddress

import pytest
from hypothesis import given, strategies as st

from uploader.errors import ConfigError, FetchError, SourceRefused
from uploader.netpolicy import AddressPolicy, classify, normalize_host, parse_ip_literal

ip = ipaddress.ip_address

SPECIAL = [
    # IPv4
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "reserved"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"), ("254.1.1.1", "reserved"),
    ("192.0.2.1", "documentation"), ("198.51.100.7", "documentation"), ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"), ("198.19.255.255", "benchmarking"),
    ("192.0.0.8", "reserved"), ("192.88.99.1", "reserved"),
    # IPv6
    ("::1", "loopback"), ("::", "unspecified"),
    ("fe80::1", "link-local"), ("febf::1", "link-local"),
    ("fc00::1", "unique-local"), ("fd12:3456::1", "unique-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"), ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"), ("3fff::1", "documentation"),
    ("2001:2::1", "benchmarking"),
    ("100::1", "reserved"), ("2001:10::1", "reserved"), ("4000::1", "reserved"),
    ("64:ff9b:1::1", "reserved"),
    # IPv4 wrapped in IPv6
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "link-local"), ("::ffff:0.0.0.0", "unspecified"),
    ("::ffff:100.64.0.1", "carrier-grade NAT"), ("::ffff:255.255.255.255", "broadcast"),
    ("::127.0.0.1", "loopback"), ("::10.0.0.1", "private"), ("::8.8.8.8", "reserved"),
    ("::ffff:0:127.0.0.1", "loopback"),
    ("64:ff9b::127.0.0.1", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("64:ff9b::192.168.0.1", "private"),
    ("2002:7f00:1::1", "loopback"), ("2002:a9fe:a9fe::", "link-local"), ("2002:c0a8:101::1", "private"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "documentation"),  # Teredo client 192.0.2.45
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo client 127.0.0.1
]


@pytest.mark.parametrize("address, expected", SPECIAL)
def test_classifies_special_addresses(address, expected):
    assert classify(ip(address))[0] == expected


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0", "172.15.255.255",
    "172.32.0.0", "192.169.0.0", "223.255.255.255", "2606:4700:4700::1111", "2a00:1450:4001::200e",
    "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo, client 8.8.8.8
])
def test_public_unicast_is_not_classified(address):
    assert classify(ip(address))[0] is None


@pytest.mark.parametrize("spelling, expected", [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0X7F000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.0.0.01", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("0x7f.0x0.0x0.0x1", "127.0.0.1"),
    ("00000000000000177.0.0.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0x", "0.0.0.0"),
    ("10.0x10.1", "10.16.0.1"),
    ("169.254.43518", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("4294967295", "255.255.255.255"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("[0:0:0:0:0:0:0:1]", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("[::FFFF:7F00:1]", "::ffff:7f00:1"),
])
def test_parses_ip_spellings_like_inet_aton(spelling, expected):
    assert parse_ip_literal(spelling) == ip(expected)


@pytest.mark.parametrize("name", ["example.com", "localhost", "1x.example", "a1", "0x7g", "127.0.0.1.nip.io"])
def test_names_are_not_literals(name):
    assert parse_ip_literal(name) is None


@pytest.mark.parametrize("bad, reason", [
    ("256.0.0.1", "invalid IPv4 address"),
    ("1.2.3.4.5", "invalid IPv4 address"),
    ("4294967296", "invalid IPv4 address"),
    ("127..1", "invalid IPv4 address"),
    ("08.0.0.1", "invalid IPv4 address"),  # inet_aton refuses 8 and 9 in octal
    ("example.123", "invalid IPv4 address"),
    ("1.256.0", "invalid IPv4 address"),
    ("%31%32%37.0.0.1", "invalid IPv4 address"),
    ("[fe80::1%25eth0]", "zone ids are not allowed"),
    ("fe80::1%eth0", "zone ids are not allowed"),
    ("[::1::2]", "invalid IPv6 address"),
    ("[127.0.0.1]", "invalid IPv6 address"),
])
def test_refuses_ambiguous_numeric_hosts(bad, reason):
    with pytest.raises(FetchError, match=reason):
        parse_ip_literal(bad)


@pytest.mark.parametrize("host, expected", [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1"),  # full-width digits
    ("127\u30020\u30020\u30021", "127.0.0.1"),  # ideographic full stops
    ("b\u00fccher.example", "xn--bcher-kva.example"),
    ("0x7F.1", "127.0.0.1"),
    ("[::1]", "::1"),
    ("under_score.example", "under_score.example"),
])
def test_normalizes_hosts(host, expected):
    assert normalize_host(host) == expected


@pytest.mark.parametrize("host", ["", "a b.example", "evil.com\\@x", "%6cocalhost", "a..b", "127.0.0.1..",
                                  "x" * 64 + ".com"])
def test_refuses_malformed_hosts(host):
    with pytest.raises(FetchError):
        normalize_host(host)


@pytest.mark.parametrize("address, host, reason", [
    ("127.0.0.1", "127.0.0.1", "refused: 127.0.0.1 is a loopback address"),
    ("10.0.0.1", "10.0.0.1", "refused: 10.0.0.1 is a private address"),
    ("0.0.0.0", "0.0.0.0", "refused: 0.0.0.0 is an unspecified address"),
    ("127.0.0.1", "0x7f.1", "refused: 0x7f.1 is 127.0.0.1, a loopback address"),
    ("127.0.0.1", "2130706433", "refused: 2130706433 is 127.0.0.1, a loopback address"),
    ("::1", "[::1]", "refused: ::1 is a loopback address"),
    ("169.254.169.254", "evil.test",
     "refused: host evil.test resolves to 169.254.169.254, a link-local address"),
    ("::ffff:7f00:1", "mapped.test",
     "refused: host mapped.test resolves to ::ffff:7f00:1, a loopback address (IPv4-mapped 127.0.0.1)"),
    ("64:ff9b::a00:1", "nat64.test",
     "refused: host nat64.test resolves to 64:ff9b::a00:1, a private address (NAT64 10.0.0.1)"),
    ("fd00::1", "ula.test", "refused: host ula.test resolves to fd00::1, a unique-local address"),
])
def test_refusal_reasons_are_precise(address, host, reason):
    with pytest.raises(FetchError) as caught:
        AddressPolicy().check_address(ip(address), host)
    assert str(caught.value) == reason


def test_public_addresses_pass():
    AddressPolicy().check_address(ip("93.184.216.34"), "example.com")
    AddressPolicy().check_address(ip("2606:2800:220:1:248:1893:25c8:1946"), "example.com")
    AddressPolicy().check_host("example.com")


def test_allow_private_networks_lets_everything_but_denied_through():
    policy = AddressPolicy(allow_private_networks=True, denied_hosts=["10.9.0.0/16", "secret.test"])
    policy.check_address(ip("127.0.0.1"), "localhost")
    policy.check_address(ip("169.254.169.254"), "169.254.169.254")
    with pytest.raises(FetchError, match="refused: host x.test resolves to 10.9.1.1, which is denied"):
        policy.check_address(ip("10.9.1.1"), "x.test")
    with pytest.raises(FetchError, match="refused: host secret.test is denied by configuration"):
        policy.check_host("Secret.Test.")


@pytest.mark.parametrize("allowed, address, host", [
    (["127.0.0.1"], "127.0.0.1", "127.0.0.1"),
    (["127.0.0.0/8"], "127.0.0.2", "some.test"),
    (["10.0.0.0/8"], "::ffff:10.1.1.1", "mapped.test"),
    (["intranet.test"], "10.1.1.1", "intranet.test"),
    (["*.corp.test"], "192.168.1.1", "wiki.corp.test"),
    (["fd00::/8"], "fd00::5", "v6.test"),
])
def test_private_hosts_allowed_bypass_the_private_refusal(allowed, address, host):
    AddressPolicy(private_hosts_allowed=allowed).check_address(ip(address), host)


@pytest.mark.parametrize("allowed, address, host", [
    (["127.0.0.1/32"], "127.0.0.2", "127.0.0.2"),
    (["intranet.test"], "10.1.1.1", "other.test"),
    (["*.corp.test"], "192.168.1.1", "corp.test"),  # a suffix pattern covers sub-domains only
    (["*.corp.test"], "192.168.1.1", "evilcorp.test"),
])
def test_private_hosts_allowed_exempt_only_what_they_name(allowed, address, host):
    with pytest.raises(FetchError, match="refused"):
        AddressPolicy(private_hosts_allowed=allowed).check_address(ip(address), host)


@pytest.mark.parametrize("denied, host, address", [
    (["evil.test"], "evil.test", "93.184.216.34"),
    (["*.evil.test"], "a.b.evil.test", "93.184.216.34"),
    (["93.184.216.0/24"], "fine.test", "93.184.216.34"),
    (["93.184.216.34"], "93.184.216.34", "93.184.216.34"),
    (["8.8.8.8"], "mapped.test", "::ffff:8.8.8.8"),
    (["2606:4700::/32"], "v6.test", "2606:4700::1111"),
])
def test_denied_hosts_win_even_over_private_hosts_allowed(denied, host, address):
    policy = AddressPolicy(private_hosts_allowed=[host, address], denied_hosts=denied)
    with pytest.raises(FetchError, match="denied by configuration"):
        policy.check_host(host)
        policy.check_address(ip(address), host)


@pytest.mark.parametrize("only, address, host", [
    (["cdn.test"], "93.184.216.34", "cdn.test"),
    (["*.cdn.test"], "93.184.216.34", "a.b.cdn.test"),
    (["93.184.216.0/24"], "93.184.216.34", "anything.test"),
    (["93.184.216.34"], "93.184.216.34", "93.184.216.34"),
    (["8.8.8.0/24"], "::ffff:8.8.8.8", "mapped.test"),
])
def test_only_hosts_let_listed_hosts_through(only, address, host):
    policy = AddressPolicy(only_hosts=only)
    policy.check_host(host)
    policy.check_address(ip(address), host)


@pytest.mark.parametrize("only, host", [
    (["cdn.test"], "other.test"),
    (["cdn.test"], "www.cdn.test"),
    (["*.cdn.test"], "cdn.test"),
    (["*.cdn.test"], "evilcdn.test"),
])
def test_only_hosts_refuse_unlisted_names_before_resolving(only, host):
    with pytest.raises(SourceRefused, match=f"^refused: host {host} is not in the allow-list"):
        AddressPolicy(only_hosts=only).check_host(host)


@pytest.mark.parametrize("only, address, host, reason", [
    (["93.184.216.0/24"], "93.184.217.1", "other.test",
     "refused: host other.test resolves to 93.184.217.1, which is not in the allow-list"),
    (["93.184.216.0/24"], "93.184.217.1", "93.184.217.1", "refused: 93.184.217.1 is not in the allow-list"),
    (["cdn.test"], "93.184.216.34", "93.184.216.34", "refused: 93.184.216.34 is not in the allow-list"),
])
def test_only_hosts_refuse_unlisted_addresses(only, address, host, reason):
    policy = AddressPolicy(only_hosts=only)
    policy.check_host(host)  # a network in the list: the addresses decide
    with pytest.raises(SourceRefused, match=f"^{reason}"):
        policy.check_address(ip(address), host)


def test_only_hosts_and_private_hosts_allowed_are_separate():
    only = AddressPolicy(only_hosts=["intranet.test"])
    with pytest.raises(SourceRefused, match="a private address"):
        only.check_address(ip("10.1.1.1"), "intranet.test")
    both = AddressPolicy(only_hosts=["intranet.test"], private_hosts_allowed=["intranet.test"])
    both.check_address(ip("10.1.1.1"), "intranet.test")
    exempt = AddressPolicy(private_hosts_allowed=["intranet.test"])
    exempt.check_host("elsewhere.test")  # an exemption is no allow-list
    exempt.check_address(ip("93.184.216.34"), "elsewhere.test")


def test_denied_hosts_win_over_only_hosts():
    policy = AddressPolicy(only_hosts=["*.test", "93.184.216.0/24"], denied_hosts=["bad.test", "93.184.216.66"])
    with pytest.raises(SourceRefused, match="denied by configuration"):
        policy.check_host("bad.test")
    with pytest.raises(SourceRefused, match="denied by configuration"):
        policy.check_address(ip("93.184.216.66"), "good.test")


@pytest.mark.parametrize("key", ["denied_hosts", "only_hosts", "private_hosts_allowed"])
@pytest.mark.parametrize("entry", ["a b", "*.", "bad/host", "300.1.1.1"])
def test_bad_list_entries_are_config_errors(key, entry):
    with pytest.raises(ConfigError, match=key):
        AddressPolicy(**{key: [entry]})


@given(st.integers(0, 2 ** 32 - 1))
def test_every_spelling_of_an_ipv4_address_parses_the_same(number):
    expected = ipaddress.IPv4Address(number)
    octets = expected.packed
    low16 = int.from_bytes(octets[2:], "big")
    spellings = [str(number), hex(number), "0" + oct(number)[2:],
                 f"{octets[0]}.{int.from_bytes(octets[1:], 'big')}",
                 "0" + f"{octets[0]:o}" + f".{octets[1]:#x}.{low16}",
                 str(expected) + "."]
    for spelling in spellings:
        assert parse_ip_literal(spelling) == expected, spelling


@given(st.integers(0, 2 ** 32 - 1))
def test_wrapped_ipv4_is_judged_by_the_address_inside(number):
    inner = ipaddress.IPv4Address(number)
    expected = classify(inner)[0]
    assert classify(ipaddress.IPv6Address((0xFFFF << 32) | number))[0] == expected  # IPv4-mapped
    assert classify(ipaddress.IPv6Address((0x64FF9B << 96) | number))[0] == expected  # NAT64
    assert classify(ipaddress.IPv6Address((0x2002 << 112) | (number << 80)))[0] == expected  # 6to4
    if expected is None:
        assert inner.is_global and not inner.is_multicast  # never more lenient than the stdlib
    if inner.is_private:
        assert expected is not None
