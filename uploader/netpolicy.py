"""Which network destinations the fetcher may connect to: pure policy, no I/O.

The service downloads whatever URL a client names and publishes the bytes, so a
URL must never reach inside the network (SSRF). The fetcher resolves a host once,
asks this module about every address, and connects only to an address that passed.
This module therefore judges addresses, not names; names matter only for the
operator's host lists (denied, only, private allowed).

Host spellings are normalised the way the C resolver (``inet_aton``) reads them, so
``2130706433``, ``0x7f.1``, ``017700000001`` and ``127.1`` are all 127.0.0.1, and
IPv4 addresses wrapped in IPv6 (mapped, compatible, NAT64, 6to4, Teredo) are judged
by the IPv4 address inside.
"""

import functools
import ipaddress
import re

from .errors import ConfigError, FetchError, InvalidSourceURL, SourceRefused


_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# First match wins, so narrow ranges come before the wider ones holding them.
_IPV4_CLASSES = [
    (_V4("0.0.0.0/32"), "unspecified"),
    (_V4("0.0.0.0/8"), "reserved"),  # "this network"
    (_V4("10.0.0.0/8"), "private"),
    (_V4("100.64.0.0/10"), "carrier-grade NAT"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.0.0.0/24"), "reserved"),  # IETF protocol assignments
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("192.88.99.0/24"), "reserved"),  # former 6to4 relay anycast
    (_V4("192.168.0.0/16"), "private"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("240.0.0.0/4"), "reserved"),
]
_IPV6_CLASSES = [
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("2001:2::/48"), "benchmarking"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("2001::/23"), "reserved"),  # IETF protocol assignments
    (_V6("3fff::/20"), "documentation"),
    (_V6("fc00::/7"), "unique-local"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
]
_GLOBAL_UNICAST = _V6("2000::/3")  # all other IPv6 space is unassigned or special
_NAT64 = _V6("64:ff9b::/96")
_IPV4_COMPATIBLE = _V6("::/96")
_IPV4_TRANSLATED = _V6("::ffff:0:0:0/96")
_ARTICLE_AN = {"unspecified"}

_NUMBER = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


def _embedded_ipv4(ip):
    """The IPv4 address wrapped in ``ip`` and the wrapping's name, or (None, None)."""
    if ip.version == 4:
        return None, None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip.teredo is not None:
        server, client = ip.teredo
        # Judge by whichever end is forbidden, the client first.
        return (server if _classify_plain(server) and not _classify_plain(client) else client), "Teredo"
    if ip in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-translated"
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip)), "IPv4-compatible"
    return None, None


def _classify_plain(ip):
    """Classify ``ip`` by its own ranges only, without unwrapping."""
    for network, name in (_IPV4_CLASSES if ip.version == 4 else _IPV6_CLASSES):
        if ip in network:
            return name
    if ip.version == 6 and ip not in _GLOBAL_UNICAST:
        return "reserved"
    return None


def classify(ip):
    """(the special-purpose class of ``ip``: "loopback", "private", ..., or None if public;
    how it was wrapped, or None). IPv4 addresses wrapped in IPv6 are judged by the address
    inside, and the wrapping is said ("IPv4-mapped 10.0.0.1")."""
    inner, wrapping = _embedded_ipv4(ip)
    if inner is None:
        return _classify_plain(ip), None
    name = _classify_plain(inner)
    if name is not None:
        return name, f"{wrapping} {inner}"
    if wrapping in ("IPv4-compatible", "IPv4-translated"):
        return "reserved", f"{wrapping} {inner}"  # deprecated forms: nothing real lives there
    return None, None


@functools.lru_cache(maxsize=1024)  # pure, and asked several times for every hop
def parse_ip_literal(host):
    """Read ``host`` as an IP address the way the C resolver would, or return None for a name.

    Accepts ``inet_aton`` spellings (``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
    ``127.1``), an optional trailing dot, and IPv6 with or without brackets. A host
    that ends in a number but is not a valid address, and IPv6 zone ids, are refused
    with ``FetchError`` rather than left to a resolver to guess at.
    """
    if host.startswith("[") or ":" in host:
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if "%" in inner:
            raise SourceRefused(f"refused: IPv6 zone ids are not allowed ('{host}')")
        try:
            return ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidSourceURL(f"invalid IPv6 address '{host}'") from None
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not _NUMBER.fullmatch(labels[-1]):
        return None  # a name: the last label of a real name is never numeric
    try:
        values = [_inet_aton_number(label) for label in labels]
    except ValueError:
        values = None
    if not values or len(values) > 4 or any(v > 255 for v in values[:-1]) \
            or values[-1] >= 256 ** (5 - len(values)):
        raise InvalidSourceURL(f"invalid IPv4 address '{host}'")
    number = values[-1]
    for position, value in enumerate(values[:-1]):
        number += value << (8 * (3 - position))
    return ipaddress.IPv4Address(number)


def _inet_aton_number(label):
    """One dotted part as ``inet_aton`` reads it: 0x hex, leading-zero octal, else decimal."""
    if not _NUMBER.fullmatch(label):
        raise ValueError(label)
    if label[:2].lower() == "0x":
        return int(label[2:] or "0", 16)
    if len(label) > 1 and label.startswith("0"):
        return int(label, 8)  # ValueError on 8 or 9, as inet_aton refuses them
    return int(label)


@functools.lru_cache(maxsize=1024)  # pure, and asked several times for every hop
def normalize_host(host):
    """Return ``host`` as a lower-case ASCII name or canonical IP string, or raise FetchError.

    Non-ASCII names go through IDNA (which also folds full-width digits and dots, so
    they cannot smuggle a numeric address past the checks); one trailing dot is dropped.
    """
    if not host:
        raise InvalidSourceURL("invalid URL: no host name")
    if host.startswith("[") or ":" in host:
        return str(parse_ip_literal(host))
    try:
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidSourceURL(f"invalid host name '{host}'") from None
    ascii_host = ascii_host.lower()
    ip = parse_ip_literal(ascii_host)
    if ip is not None:
        return str(ip)
    if ascii_host.endswith("."):
        ascii_host = ascii_host[:-1]
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(label) for label in ascii_host.split(".")):
        raise InvalidSourceURL(f"invalid host name '{host}'")
    return ascii_host


def _article(name):
    return "an" if name in _ARTICLE_AN else "a"


class AddressPolicy:
    """Decides whether a host and each of its addresses may be fetched from.

    Entries of every list are host names (``example.com``), suffix patterns
    (``*.example.com``, sub-domains only) or CIDRs / single addresses. In order:
    ``denied_hosts`` always refuses; a non-empty ``only_hosts`` refuses every host it
    does not name (by name, or by every address it resolves to); then special
    addresses (private, loopback, ...) are refused unless ``allow_private_networks``,
    or a ``private_hosts_allowed`` entry names the host or the address.
    """

    def __init__(self, allow_private_networks=False, *, private_hosts_allowed=(), only_hosts=(),
                 denied_hosts=()):
        self.allow_private_networks = allow_private_networks
        self._private_allowed = _HostList(private_hosts_allowed, "private_hosts_allowed")
        self._only = _HostList(only_hosts, "only_hosts")
        self._denied = _HostList(denied_hosts, "denied_hosts")

    def check_host(self, host):
        """Refuse a host name the operator denied, or did not list in ``only_hosts``.

        Addresses, IP literals included, are judged by ``check_address``; so is a name
        when ``only_hosts`` holds networks, which the name's addresses may fall into."""
        name = normalize_host(host)
        if self._denied.has_name(name):
            raise SourceRefused(f"refused: host {name} is denied by configuration")
        if self._only and not self._only.networks and not self._only.has_name(name) \
                and parse_ip_literal(name) is None:
            raise SourceRefused(f"refused: host {name} is not in the allow-list (fetch.only_hosts)")

    def check_address(self, ip, host):
        """Refuse ``ip`` (an address ``host`` resolved to, or the literal itself) unless allowed."""
        name = normalize_host(host)
        if parse_ip_literal(name) == ip:
            same = host.strip("[]").lower() == str(ip)
            lead, comma = (f"{ip} is", "") if same else (f"{host} is {ip}", ",")
        else:
            lead, comma = f"host {name} resolves to {ip}", ","
        which = "which is " if comma else ""
        if self._denied.has_address(ip):
            raise SourceRefused(f"refused: {lead}{comma} {which}denied by configuration")
        if self._only and not (self._only.has_name(name) or self._only.has_address(ip)):
            raise SourceRefused(f"refused: {lead}{comma} {which}not in the allow-list (fetch.only_hosts)")
        if self.allow_private_networks or self._private_allowed.has_address(ip) \
                or self._private_allowed.has_name(name):
            return
        class_name, wrapping = classify(ip)
        if class_name is None:
            return
        reason = f"refused: {lead}{comma} {_article(class_name)} {class_name} address"
        if wrapping:
            reason += f" ({wrapping})"
        raise SourceRefused(reason)


class _HostList:
    """An operator list of names, ``*.suffix`` patterns and networks."""

    def __init__(self, entries, key):
        if isinstance(entries, str):
            entries = [entries]
        self.names, self.suffixes, self.networks = set(), [], []
        for entry in entries:
            text = str(entry).strip().lower()
            try:
                self.networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            try:
                if text.startswith("*."):
                    self.suffixes.append("." + normalize_host(text[2:]))
                    continue
                name = normalize_host(text)
            except FetchError as exc:
                raise ConfigError(f"{key}: bad entry {entry!r} ({exc})") from None
            ip = parse_ip_literal(name)
            if ip is not None:
                self.networks.append(ipaddress.ip_network(ip))
            else:
                self.names.add(name)

    def __bool__(self):
        return bool(self.names or self.suffixes or self.networks)

    def has_name(self, name):
        return name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)

    def has_address(self, ip):
        inner, _ = _embedded_ipv4(ip)
        return any(ip in net or (inner is not None and inner in net) for net in self.networks)
