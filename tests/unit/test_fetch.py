"""The fetcher downloads images safely: SSRF refusals, limits, redirects, content checks.

Everything runs on loopback. An autouse guard (``tests.support.loopback_only``) fails any
test in which a socket tries to connect anywhere but 127.0.0.0/8 or ::1, and records the
connections made, so a refusal test can prove that no connection happened at all.
"""

import concurrent.futures
import http.client
import io
import os
import re
import socket
import ssl
import statistics
import struct
import threading
import time
import urllib.parse
import zlib

import pytest
from PIL import Image

from uploader import imagetype, pinnedhttp
from uploader.errors import (CorruptImage, FetchError, FetchTimeout, InvalidSourceURL, NotAnImage,
                             SourceBroken, SourceHTTPError, SourceRefused, SourceTooLarge,
                             SourceUnreachable, TooManyPixels, TooManyRedirects, failure_class,
                             source_may_recover)
from testbed.fakes.image_source import ImageSource, declared_png, make_image, sized_jpeg_parts
from tests.support import loopback_only
from uploader.fetch import Fetched, Fetcher, format_size
from tests.rawhttp import CERT, KEY, raw_server, resolver_for

LOCAL = ["127.0.0.1/32"]


@pytest.fixture(autouse=True)
def connections(monkeypatch):
    """Every (address, port) any socket in this process connects to; non-loopback fails the test."""
    with loopback_only(monkeypatch) as made:
        yield made


@pytest.fixture
def source():
    with ImageSource() as running:
        yield running


@pytest.fixture
def other_source():
    """A second server on 127.0.0.2: the "internal" target of SSRF tests."""
    with ImageSource(host="127.0.0.2") as running:
        yield running


def fetcher(**kwargs):
    kwargs.setdefault("timeout_seconds", 2)
    return Fetcher(**kwargs)


# --- downloads that work ----------------------------------------------------------------------

@pytest.mark.parametrize("ext, mime", [("png", "image/png"), ("jpg", "image/jpeg"), ("gif", "image/gif"),
                                       ("tiff", "image/tiff"), ("bmp", "image/bmp")])
def test_downloads_each_accepted_format(source, ext, mime):
    url = source.url_for(f"/img/cat.{ext}")
    result = fetcher(private_hosts_allowed=LOCAL).fetch(url)
    assert result == Fetched(data=make_image(ext, "cat"), mime=mime, ext=ext if ext != "jpeg" else "jpg",
                             final_url=url)


def test_content_is_judged_by_bytes_not_headers(source):
    source.add("/photo.jpg", make_image("gif", "g"), content_type="text/html")
    result = fetcher(allow_private_networks=True).fetch(source.url_for("/photo.jpg"))
    assert (result.mime, result.ext) == ("image/gif", "gif")


def test_webp_is_refused_unless_accepted(source):
    url = source.url_for("/img/w.webp")
    with pytest.raises(FetchError, match=r"^unsupported image format: WebP \(image/webp\)$"):
        fetcher(allow_private_networks=True).fetch(url)
    accepting = fetcher(allow_private_networks=True, accepted_mimes={"image/webp"})
    assert accepting.fetch(url).mime == "image/webp"


EVERY_FORMAT = imagetype.ACCEPTED_BY_IMGUR | {imagetype.WEBP.mime}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_the_pixel_limit_holds_for_every_format(source, fmt):
    out = io.BytesIO()
    Image.linear_gradient("L").resize((37, 23)).save(out, fmt)  # 851 pixels
    source.add(f"/limit.{fmt}", out.getvalue())
    url = source.url_for(f"/limit.{fmt}")
    at_the_limit = fetcher(allow_private_networks=True, accepted_mimes=EVERY_FORMAT, max_pixels=851)
    assert at_the_limit.fetch(url).data == out.getvalue()
    over = fetcher(allow_private_networks=True, accepted_mimes=EVERY_FORMAT, max_pixels=850)
    with pytest.raises(TooManyPixels, match=r"^image is 37 x 23 pixels, over the limit of 850 "
                                            r"\(images\.max_pixels\)$") as caught:
        over.fetch(url)
    assert failure_class(caught.value) == "too_many_pixels" and not source_may_recover(caught.value)


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def jpeg_segment(marker, payload):
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def declared_jpeg(width, height, before, after):
    """A JPEG whose frame header says ``width`` x ``height``, behind ``before`` bytes of APP1
    and followed by ``after`` bytes of comments."""
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "JPEG")
    data = out.getvalue()
    sof, end = next((start, end) for marker, start, end in imagetype.jpeg_segments(data) if marker == 0xC0)
    frame = data[sof:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:end]
    exif = b"".join(jpeg_segment(0xE1, bytes(60_000)) for _ in range(before // 60_000))
    comments = b"".join(jpeg_segment(0xFE, bytes(60_000)) for _ in range(after // 60_000))
    return data[:2] + exif + data[2:sof] + frame + comments + data[end:]


@pytest.mark.parametrize("body", [
    # 60,000 x 60,000 in the first bytes, 6 MB of pixel data after them
    declared_png(60_000, 60_000)[:-12] + png_chunk(b"IDAT", bytes(6_000_000)) + png_chunk(b"IEND", b""),
    # a frame header only after 180 KB of EXIF, 6 MB of comments after it
    declared_jpeg(60_000, 60_000, before=180_000, after=6_000_000),
], ids=["png", "jpeg-after-exif"])
def test_an_image_declaring_gigapixels_is_refused_before_it_is_downloaded(source, body):
    imagetype.verify(body, imagetype.sniff(body))  # a whole file: only its size gives it away
    source.add("/bomb", body)
    received = []
    with pytest.raises(TooManyPixels, match=r"^image is 60000 x 60000 pixels, over the limit of "
                                            r"100,000,000 \(images\.max_pixels\)$"):
        fetcher(allow_private_networks=True).fetch(source.url_for("/bomb"),
                                                   on_progress=lambda got, total: received.append(got))
    assert received[-1] < 250_000  # refused once the header was in, 6 MB short of the end


def test_a_header_at_the_end_of_the_file_is_measured_once_the_body_is_in(source):
    pixels = bytes(300_000)  # a TIFF may keep its directory after the pixels, past what is read early
    entries = [(256, 4, 60_000), (257, 4, 60_000), (273, 4, 8), (279, 4, len(pixels))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", tag, kind, 1, value)
                                                      for tag, kind, value in entries) + bytes(4)
    source.add("/late.tiff", b"II*\0" + struct.pack("<I", 8 + len(pixels)) + pixels + ifd)
    with pytest.raises(TooManyPixels, match=r"^image is 60000 x 60000 pixels"):
        fetcher(allow_private_networks=True).fetch(source.url_for("/late.tiff"))


def test_sends_host_header_and_user_agent_to_the_pinned_address():
    seen = {}

    def handle(conn, stop):
        request = conn.recv(65536).decode("latin-1")
        seen.update(line.split(": ", 1) for line in request.split("\r\n")[1:] if ": " in line)
        seen["line"] = request.split("\r\n")[0]
        body = make_image("png")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with raw_server(handle) as port:
        f = fetcher(private_hosts_allowed=LOCAL, resolver=resolver_for({"images.test": ["127.0.0.1"]}),
                    user_agent="test-agent/1")
        f.fetch(f"http://Images.Test:{port}/a%20b/c d.png?x=1&y=two words#frag")
    assert seen["Host"] == f"images.test:{port}"
    assert seen["User-Agent"] == "test-agent/1"
    assert seen["Accept-Encoding"] == "identity"
    assert seen["line"] == "GET /a%20b/c%20d.png?x=1&y=two%20words HTTP/1.1"


def test_ipv6_literal_host():
    with ImageSource(host="::1") as v6:
        result = fetcher(allow_private_networks=True).fetch(v6.url_for("/img/six.png"))
        assert result.final_url == f"http://[::1]:{v6.port}/img/six.png"
        assert result.data == make_image("png", "six")


def test_concurrent_fetches_share_one_fetcher(source):
    f = fetcher(private_hosts_allowed=LOCAL)
    names = [f"n{i}" for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: f.fetch(source.url_for(f"/img/{n}.png")), names))
    assert [r.data for r in results] == [make_image("png", n) for n in names]


def progress_log():
    calls = []
    return calls, lambda received, total: calls.append((received, total))


def assert_progress_steps(calls, size, total):
    """Starts at (0, total), grows by at most 16 KiB a call, ends at the whole size."""
    assert calls[0] == (0, total)
    assert calls[-1] == (size, total)
    assert all(t == total for _, t in calls)
    steps = [b - a for (a, _), (b, _) in zip(calls, calls[1:])]
    assert all(0 < step <= 16 * 1024 for step in steps)


def test_progress_is_reported_after_every_read_of_at_most_16_kib(source):
    calls, on_progress = progress_log()
    size = 300_000
    result = fetcher(private_hosts_allowed=LOCAL).fetch(source.url_for(f"/sized/{size}.jpg?pace=0.02"),
                                                on_progress=on_progress)
    assert len(result.data) == size and result.mime == "image/jpeg"
    assert_progress_steps(calls, size, size)
    assert len(calls) >= size // (16 * 1024) + 1


def test_a_small_slow_image_shows_its_size_and_progress(source):
    """The issue's case: 19 KB arriving in paced parts, once "0 of unknown" throughout."""
    calls, on_progress = progress_log()
    size = 19_000
    fetcher(private_hosts_allowed=LOCAL).fetch(source.url_for(f"/sized/{size}.jpg?pace=0.3"),
                                       on_progress=on_progress)
    assert_progress_steps(calls, size, size)
    assert len(calls) >= 3  # the size first, then at least the two paced parts


def test_progress_starts_as_soon_as_the_headers_are_in():
    """The server holds the body back until the fetcher has reported (0, total)."""
    told = threading.Event()
    body = make_image("png", "headers-first")

    def handle(conn, stop):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        if told.wait(5):
            conn.sendall(body)

    calls = []

    def on_progress(received, total):
        calls.append((received, total))
        told.set()

    with raw_server(handle) as port:
        result = fetcher(allow_private_networks=True, timeout_seconds=10).fetch(
            f"http://127.0.0.1:{port}/a.png", on_progress=on_progress)
    assert result.data == body
    assert_progress_steps(calls, len(body), len(body))


# --- SSRF: refused before any connection ------------------------------------------------------

@pytest.mark.parametrize("host, reason", [
    ("127.0.0.1", "refused: 127.0.0.1 is a loopback address"),
    ("2130706433", "refused: 2130706433 is 127.0.0.1, a loopback address"),
    ("0x7f.1", "refused: 0x7f.1 is 127.0.0.1, a loopback address"),
    ("0x7f000001", "refused: 0x7f000001 is 127.0.0.1, a loopback address"),
    ("017700000001", "refused: 017700000001 is 127.0.0.1, a loopback address"),
    ("0177.0.0.1", "refused: 0177.0.0.1 is 127.0.0.1, a loopback address"),
    ("127.1", "refused: 127.1 is 127.0.0.1, a loopback address"),
    ("127.0.0.1.", "refused: 127.0.0.1. is 127.0.0.1, a loopback address"),
    ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "refused: .* is 127.0.0.1, a loopback address"),
    ("0", "refused: 0 is 0.0.0.0, an unspecified address"),
    ("0.0.0.0", "refused: 0.0.0.0 is an unspecified address"),
    ("[::1]", "refused: ::1 is a loopback address"),
    ("[::]", "refused: :: is an unspecified address"),
    ("[::ffff:127.0.0.1]", r"loopback address \(IPv4-mapped 127.0.0.1\)"),
    ("[::ffff:7f00:1]", r"loopback address \(IPv4-mapped 127.0.0.1\)"),
    ("[::127.0.0.1]", r"loopback address \(IPv4-compatible 127.0.0.1\)"),
    ("[64:ff9b::7f00:1]", r"loopback address \(NAT64 127.0.0.1\)"),
    ("[2002:7f00:1::1]", r"loopback address \(6to4 127.0.0.1\)"),
    ("10.0.0.1", "refused: 10.0.0.1 is a private address"),
    ("172.16.5.4", "refused: 172.16.5.4 is a private address"),
    ("192.168.0.1", "refused: 192.168.0.1 is a private address"),
    ("169.254.169.254", "refused: 169.254.169.254 is a link-local address"),
    ("100.64.0.1", "refused: 100.64.0.1 is a carrier-grade NAT address"),
    ("224.0.0.251", "refused: 224.0.0.251 is a multicast address"),
    ("255.255.255.255", "refused: 255.255.255.255 is a broadcast address"),
    ("240.0.0.1", "refused: 240.0.0.1 is a reserved address"),
    ("192.0.2.10", "refused: 192.0.2.10 is a documentation address"),
    ("198.18.0.1", "refused: 198.18.0.1 is a benchmarking address"),
    ("[fe80::1]", "refused: fe80::1 is a link-local address"),
    ("[fd00::1]", "refused: fd00::1 is a unique-local address"),
    ("[fec0::1]", "refused: fec0::1 is a site-local address"),
    ("[2001:db8::1]", "refused: 2001:db8::1 is a documentation address"),
    ("[ff02::1]", "refused: ff02::1 is a multicast address"),
    ("[fe80::1%25lo]", "refused: IPv6 zone ids are not allowed"),
    ("256.1.1.1", "invalid IPv4 address '256.1.1.1'"),
])
def test_refuses_special_address_literals(source, connections, host, reason):
    with pytest.raises(FetchError, match=reason) as caught:
        fetcher().fetch(f"http://{host}:{source.port}/img/secret.png")
    assert type(caught.value) is (InvalidSourceURL if reason.startswith("invalid") else SourceRefused)
    assert connections == []
    assert source.requests == []


@pytest.mark.parametrize("answers, reason", [
    (["169.254.169.254"], "refused: host evil.test resolves to 169.254.169.254, a link-local address"),
    (["127.0.0.1"], "refused: host evil.test resolves to 127.0.0.1, a loopback address"),
    (["10.1.2.3"], "refused: host evil.test resolves to 10.1.2.3, a private address"),
    (["::1"], "refused: host evil.test resolves to ::1, a loopback address"),
    (["::ffff:7f00:1"],
     r"refused: host evil.test resolves to ::ffff:7f00:1, a loopback address \(IPv4-mapped 127.0.0.1\)"),
    (["fd12::1"], "refused: host evil.test resolves to fd12::1, a unique-local address"),
    (["0.0.0.0"], "refused: host evil.test resolves to 0.0.0.0, an unspecified address"),
])
def test_refuses_names_resolving_to_special_addresses(source, connections, answers, reason):
    f = fetcher(resolver=resolver_for({"evil.test": answers}))
    with pytest.raises(SourceRefused, match=f"^{reason}$"):
        f.fetch(f"http://evil.test:{source.port}/img/secret.png")
    assert connections == [] and source.requests == []


def test_default_resolver_refuses_localhost(source, connections):
    with pytest.raises(FetchError, match="refused: host localhost resolves to (127.0.0.1|::1), a loopback"):
        fetcher().fetch(f"http://localhost:{source.port}/img/a.png")
    assert connections == [] and source.requests == []


def test_one_bad_address_among_several_refuses_the_host(source, connections):
    f = fetcher(private_hosts_allowed=LOCAL, resolver=resolver_for({"mixed.test": ["127.0.0.1", "10.0.0.7"]}))
    with pytest.raises(FetchError, match="refused: host mixed.test resolves to 10.0.0.7, a private address"):
        f.fetch(f"http://mixed.test:{source.port}/img/a.png")
    assert connections == [] and source.requests == []


@pytest.mark.parametrize("target_host, reason", [
    ("internal.test", "refused: host internal.test resolves to 127.0.0.2, a loopback address"),
    ("127.0.0.2", "refused: 127.0.0.2 is a loopback address"),
    ("0x7f000002", "refused: 0x7f000002 is 127.0.0.2, a loopback address"),
    ("[::ffff:127.0.0.2]", r"loopback address \(IPv4-mapped 127.0.0.2\)"),
])
def test_redirect_to_a_refused_host_is_refused(source, other_source, connections, target_host, reason):
    inner = f"http://{target_host}:{other_source.port}/img/secret.png"
    start = source.url_for("/redirect-to?url=" + urllib.parse.quote(inner, safe=""))
    f = fetcher(private_hosts_allowed=LOCAL, resolver=resolver_for({"internal.test": ["127.0.0.2"]}))
    with pytest.raises(FetchError, match=reason):
        f.fetch(start)
    assert connections == [("127.0.0.1", source.port)]
    assert other_source.requests == []
    assert len(source.requests) == 1


def test_redirect_to_an_allowed_host_is_followed(source, other_source):
    inner = f"http://internal.test:{other_source.port}/img/ok.png"
    start = source.url_for("/redirect-to?url=" + urllib.parse.quote(inner, safe=""))
    f = fetcher(private_hosts_allowed=LOCAL + ["internal.test"],
                resolver=resolver_for({"internal.test": ["127.0.0.2"]}))
    result = f.fetch(start)
    assert result.final_url == inner and result.data == make_image("png", "ok")
    assert other_source.paths == ["/img/ok.png"]


@pytest.fixture
def rebinding_pair(source, monkeypatch):
    """DNS that answers 127.0.0.1 (allowed) first and 127.0.0.2 (refused) afterwards.

    A bare listener on 127.0.0.2 with the same port stands for the internal service.
    The system resolver is also made to answer 127.0.0.2, so any code path that looked
    the name up again (instead of using the checked address) would land there.
    """
    internal = socket.create_server(("127.0.0.2", source.port))
    calls = []
    answers = iter([["127.0.0.1"]])
    resolve = resolver_for({"rebind.test": lambda: next(answers, ["127.0.0.2"])}, calls)
    real_getaddrinfo = socket.getaddrinfo

    def rebound_getaddrinfo(host, *args, **kwargs):
        return real_getaddrinfo("127.0.0.2" if host == "rebind.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebound_getaddrinfo)
    yield resolve, calls, internal
    internal.setblocking(False)
    with pytest.raises(BlockingIOError):
        internal.accept()  # nothing ever connected to the internal address
    internal.close()


def test_dns_rebinding_cannot_switch_the_connected_address(source, rebinding_pair, connections):
    resolve, calls, _ = rebinding_pair
    url = f"http://rebind.test:{source.port}/img/r.png"
    result = fetcher(private_hosts_allowed=LOCAL, resolver=resolve).fetch(url)
    assert result.data == make_image("png", "r")
    assert calls == ["rebind.test"]  # resolved once; the connection used that answer
    assert connections == [("127.0.0.1", source.port)]


def test_dns_rebinding_is_checked_again_at_each_redirect_hop(source, rebinding_pair, connections):
    resolve, calls, _ = rebinding_pair
    port = source.port
    start = f"http://rebind.test:{port}/redirect-to?url=" + urllib.parse.quote(
        f"http://rebind.test:{port}/img/secret.png", safe="")
    with pytest.raises(FetchError, match="^refused: host rebind.test resolves to 127.0.0.2, a loopback"):
        fetcher(private_hosts_allowed=LOCAL, resolver=resolve).fetch(start)
    assert calls == ["rebind.test", "rebind.test"]
    assert connections == [("127.0.0.1", port)]
    assert len(source.requests) == 1 and source.paths[0].startswith("/redirect-to?url=")


# --- operator lists ---------------------------------------------------------------------------

@pytest.mark.parametrize("denied, url_host, reason", [
    (["127.0.0.1"], "127.0.0.1", "refused: 127.0.0.1 is denied by configuration"),
    (["127.0.0.0/8"], "img.test",
     "refused: host img.test resolves to 127.0.0.1, which is denied by configuration"),
    (["img.test"], "img.test", "refused: host img.test is denied by configuration"),
    (["*.test"], "img.test", "refused: host img.test is denied by configuration"),
])
def test_denied_hosts_win_over_allow_private_networks(source, connections, denied, url_host, reason):
    f = fetcher(allow_private_networks=True, private_hosts_allowed=["img.test"], denied_hosts=denied,
                resolver=resolver_for({"img.test": ["127.0.0.1"]}))
    with pytest.raises(FetchError, match=f"^{reason}$"):
        f.fetch(f"http://{url_host}:{source.port}/img/a.png")
    assert connections == [] and source.requests == []


@pytest.mark.parametrize("allowed", [["img.test"], ["*.test"], ["127.0.0.1"], ["127.0.0.0/8"]])
def test_private_hosts_allowed_reach_private_addresses(source, allowed):
    f = fetcher(private_hosts_allowed=allowed, resolver=resolver_for({"img.test": ["127.0.0.1"]}))
    assert f.fetch(f"http://img.test:{source.port}/img/a.png").mime == "image/png"


@pytest.mark.parametrize("only", [["img.test"], ["*.test"], ["127.0.0.1"], ["127.0.0.0/8"]])
def test_only_hosts_are_fetched_when_listed(source, only):
    f = fetcher(only_hosts=only, private_hosts_allowed=LOCAL,
                resolver=resolver_for({"img.test": ["127.0.0.1"]}))
    assert f.fetch(f"http://img.test:{source.port}/img/a.png").mime == "image/png"


@pytest.mark.parametrize("only, url_host, reason", [
    (["img.test"], "other.test", "refused: host other.test is not in the allow-list (fetch.only_hosts)"),
    (["*.img.test"], "img.test", "refused: host img.test is not in the allow-list (fetch.only_hosts)"),
    (["img.test"], "127.0.0.1", "refused: 127.0.0.1 is not in the allow-list (fetch.only_hosts)"),
    (["10.0.0.0/8"], "other.test",
     "refused: host other.test resolves to 127.0.0.1, which is not in the allow-list (fetch.only_hosts)"),
])
def test_only_hosts_refuse_every_other_host(source, connections, only, url_host, reason):
    f = fetcher(only_hosts=only, private_hosts_allowed=LOCAL,
                resolver=resolver_for({"img.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}))
    with pytest.raises(SourceRefused, match=f"^{re.escape(reason)}$"):
        f.fetch(f"http://{url_host}:{source.port}/img/a.png")
    assert connections == [] and source.requests == []


def test_only_hosts_apply_at_every_redirect_hop(source, connections):
    start = f"http://img.test:{source.port}/redirect-to?url=" + urllib.parse.quote(
        f"http://other.test:{source.port}/img/a.png", safe="")
    f = fetcher(only_hosts=["img.test"], private_hosts_allowed=LOCAL,
                resolver=resolver_for({"img.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}))
    with pytest.raises(SourceRefused, match=r"^refused: host other.test is not in the allow-list"):
        f.fetch(start)
    assert len(source.requests) == 1  # the first hop only


def test_only_hosts_do_not_open_private_addresses(source, connections):
    """Listing a host lets it be fetched at all; a private address still needs an exemption."""
    f = fetcher(only_hosts=["img.test"], resolver=resolver_for({"img.test": ["127.0.0.1"]}))
    with pytest.raises(SourceRefused, match="^refused: host img.test resolves to 127.0.0.1, a loopback address$"):
        f.fetch(f"http://img.test:{source.port}/img/a.png")
    assert connections == []


def test_denied_hosts_win_over_only_hosts(source, connections):
    f = fetcher(only_hosts=["*.test"], denied_hosts=["img.test"], private_hosts_allowed=LOCAL,
                resolver=resolver_for({"img.test": ["127.0.0.1"]}))
    with pytest.raises(SourceRefused, match="^refused: host img.test is denied by configuration$"):
        f.fetch(f"http://img.test:{source.port}/img/a.png")
    assert connections == []


# --- failures of the source -------------------------------------------------------------------

@pytest.mark.parametrize("path, reason, error", [
    ("/html", "^not an image: looks like HTML$", NotAnImage),
    ("/lying.jpg", "^not an image: looks like HTML$", NotAnImage),
    ("/status/404", "^HTTP 404 from source$", SourceHTTPError),
    ("/status/403", "^HTTP 403 from source$", SourceHTTPError),
    ("/status/500", "^HTTP 500 from source$", SourceHTTPError),
    ("/status/204", "^HTTP 204 from source$", SourceHTTPError),
    ("/truncated.jpg", "^truncated: got 100 of 2000 bytes$", SourceBroken),
    ("/loop", r"^too many redirects \(more than 5\)$", TooManyRedirects),
    ("/redirect/6", r"^too many redirects \(more than 5\)$", TooManyRedirects),
    ("/status/302", "^HTTP 302 from source without a Location header$", SourceHTTPError),
    ("/redirect-to?url=ftp%3A%2F%2Fexample.com%2Fa.png", "^unsupported URL scheme 'ftp'$",
     InvalidSourceURL),
    ("/redirect-to?url=file%3A%2F%2F%2Fetc%2Fpasswd", "^unsupported URL scheme 'file'$",
     InvalidSourceURL),
])
def test_source_failures_have_precise_reasons(source, path, reason, error):
    with pytest.raises(FetchError, match=reason) as caught:
        fetcher(private_hosts_allowed=LOCAL).fetch(source.url_for(path))
    assert type(caught.value) is error


@pytest.mark.parametrize("path, status, may_recover", [
    ("/status/404", 404, False), ("/status/500", 500, True), ("/status/503", 503, True),
    ("/status/429", 429, True), ("/status/501", 501, False)])
def test_http_errors_carry_their_status(source, path, status, may_recover):
    with pytest.raises(SourceHTTPError) as caught:
        fetcher(private_hosts_allowed=LOCAL).fetch(source.url_for(path))
    assert caught.value.status == status
    assert source_may_recover(caught.value) is may_recover
    assert failure_class(caught.value) == "source_http_error"


def test_custom_bodies_are_described(source):
    source.add("/data.json", b'{"error": "gone"}', content_type="image/png")
    source.add("/empty.png", b"", content_type="image/png")
    f = fetcher(private_hosts_allowed=LOCAL)
    with pytest.raises(FetchError, match="^not an image: looks like JSON$"):
        f.fetch(source.url_for("/data.json"))
    with pytest.raises(FetchError, match="^not an image: the source sent an empty body$"):
        f.fetch(source.url_for("/empty.png"))


@pytest.mark.parametrize("body, reason", [
    (make_image("png", "x" * 200)[:50], "^truncated PNG: chunk IDAT cut short$"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + bytes(range(200)),
     "^corrupt PNG: bad CRC in chunk IHDR$"),
    (make_image("jpg", "cut")[:-2], "^truncated JPEG: no end-of-image marker$"),
    (make_image("gif", "cut")[:-1], "^truncated GIF: no trailer$"),
])
def test_whole_bodies_that_are_broken_images_are_refused(source, body, reason):
    """The source sent every byte it announced; the image itself is cut or garbage."""
    source.add("/broken", body, content_type="image/png")
    with pytest.raises(CorruptImage, match=reason) as caught:
        fetcher(private_hosts_allowed=LOCAL).fetch(source.url_for("/broken"))
    assert failure_class(caught.value) == "source_broken"
    assert not source_may_recover(caught.value)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_follows_redirects_with_relative_locations(source, status):
    start = source.url_for(f"/redirect-to?status={status}&url=%2Fimg%2Frel.png")
    result = fetcher(private_hosts_allowed=LOCAL).fetch(start)
    assert result.final_url == source.url_for("/img/rel.png")


def test_redirect_limit_is_configurable(source):
    assert fetcher(private_hosts_allowed=LOCAL).fetch(source.url_for("/redirect/5")).final_url.endswith("/redirect/0")
    with pytest.raises(FetchError, match=r"too many redirects \(more than 0\)"):
        fetcher(private_hosts_allowed=LOCAL, max_redirects=0).fetch(source.url_for("/redirect/1"))
    assert len(source.requests) == 6 + 1


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/a.png", "^unsupported URL scheme 'ftp'$"),
    ("file:///etc/passwd", "^unsupported URL scheme 'file'$"),
    ("gopher://127.0.0.1:70/_x", "^unsupported URL scheme 'gopher'$"),
    ("data:image/png;base64,AAAA", "^unsupported URL scheme 'data'$"),
    ("example.com/a.png", "^invalid URL: no scheme$"),
    ("http:///a.png", "^invalid URL: no host name$"),
    ("http://example.com:99999/", "^invalid URL"),
    ("http://exa mple.com/", "^invalid host name"),
])
def test_refuses_bad_urls(connections, url, reason):
    with pytest.raises(InvalidSourceURL, match=reason):
        fetcher().fetch(url)
    assert connections == []


def test_unresolvable_host(connections):
    f = fetcher(resolver=resolver_for({"empty.test": []}))
    with pytest.raises(SourceUnreachable, match="^could not resolve host 'x.invalid'$"):
        f.fetch("http://x.invalid/a.png")
    with pytest.raises(SourceUnreachable, match="^could not resolve host 'empty.test'$"):
        f.fetch("http://empty.test/a.png")
    assert connections == []


PNG = make_image("png", "raw")


@pytest.mark.parametrize("answer, reason, error", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + PNG[:10],
     "^truncated: the chunked body ended after 10 bytes$", SourceBroken),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "^truncated: the chunked body ended",
     SourceBroken),
    (b"garbage\r\n\r\n", "^bad HTTP response from source: BadStatusLine", SourceUnreachable),
    (b"", "^connection closed by source before it answered$", SourceUnreachable),
])
def test_broken_responses(answer, reason, error):
    def handle(conn, stop):
        conn.recv(65536)
        conn.sendall(answer)

    with raw_server(handle) as port:
        with pytest.raises(FetchError, match=reason) as caught:
            fetcher(allow_private_networks=True).fetch(f"http://127.0.0.1:{port}/a.png")
    assert type(caught.value) is error
    assert source_may_recover(caught.value)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.0 200 OK\r\n\r\n" + PNG,  # length given by closing the connection
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(PNG), PNG),
])
def test_bodies_without_content_length(answer):
    def handle(conn, stop):
        conn.recv(65536)
        conn.sendall(answer)

    calls, on_progress = progress_log()
    with raw_server(handle) as port:
        result = fetcher(allow_private_networks=True).fetch(
            f"http://127.0.0.1:{port}/a.png", on_progress=on_progress)
    assert result.data == PNG
    assert_progress_steps(calls, len(PNG), None)


def test_connection_refused():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(SourceUnreachable, match=f"^connection refused by 127.0.0.1:{port}$"):
        fetcher(allow_private_networks=True).fetch(f"http://127.0.0.1:{port}/a.png")


# --- size and time limits ---------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/huge", "/huge-chunked", "/sized/2000000.jpg"])
def test_refuses_bodies_over_the_cap_without_reading_them(source, path):
    started = time.monotonic()
    with pytest.raises(SourceTooLarge, match=r"^too large: over 1 MB$"):
        fetcher(private_hosts_allowed=LOCAL, max_bytes=1024 * 1024).fetch(source.url_for(path))
    assert time.monotonic() - started < 3


def test_cap_is_exact(source):
    size = len(make_image("png", "cap"))
    url = source.url_for("/img/cap.png")
    assert len(fetcher(private_hosts_allowed=LOCAL, max_bytes=size).fetch(url).data) == size
    with pytest.raises(SourceTooLarge, match=f"^too large: over {size - 1} bytes$"):
        fetcher(private_hosts_allowed=LOCAL, max_bytes=size - 1).fetch(url)


@pytest.mark.parametrize("n, text", [(100, "100 bytes"), (10 * 1024, "10 KB"), (20 * 1024 ** 2, "20 MB"),
                                     (int(1.5 * 1024 ** 2), "1.5 MB"), (3 * 1024 ** 3, "3 GB")])
def test_sizes_read_humanly(n, text):
    assert format_size(n) == text


def test_trickling_body_is_cut_at_the_deadline(source):
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match=r"^timed out after 0.5 s$"):
        fetcher(private_hosts_allowed=LOCAL, timeout_seconds=0.5).fetch(source.url_for("/slow/0.05"))
    assert 0.4 < time.monotonic() - started < 2  # the whole trickle would take about 5 s


def test_slow_answer_times_out(source):
    source.latency = 2
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match=r"^timed out after 0.3 s$"):
        fetcher(private_hosts_allowed=LOCAL, timeout_seconds=0.3).fetch(source.url_for("/img/a.png"))
    assert time.monotonic() - started < 1.5


def test_trickling_headers_are_cut_at_the_deadline():
    """No single read waits long here; only the whole-download deadline can stop it."""
    def handle(conn, stop):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stop.wait(0.02):
            conn.sendall(b"a")

    with raw_server(handle) as port:
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"^timed out after 0.5 s$"):
            fetcher(allow_private_networks=True, timeout_seconds=0.5).fetch(f"http://127.0.0.1:{port}/")
        assert time.monotonic() - started < 2


def test_many_concurrent_deadlines_are_each_kept(source):
    """One watchdog serves every download: each trickle is cut at its own deadline.

    Deadlines are registered out of order, so a later-registered, earlier deadline must
    wake the watchdog before the one it was sleeping towards.
    """
    timeouts = [round(0.3 + 0.035 * ((7 * i) % 20), 3) for i in range(20)]  # 0.3 .. 0.965 s, shuffled
    start = threading.Barrier(len(timeouts))

    def slow_fetch(timeout):
        f = fetcher(private_hosts_allowed=LOCAL, timeout_seconds=timeout)
        start.wait()
        started = time.monotonic()
        try:
            f.fetch(source.url_for("/slow/0.05"))  # about 3.5 s if left alone
        except FetchError as exc:
            return str(exc), time.monotonic() - started
        return "finished", time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(len(timeouts)) as pool:
        outcomes = list(pool.map(slow_fetch, timeouts))
    for timeout, (message, elapsed) in zip(timeouts, outcomes):
        assert message == f"timed out after {timeout:g} s"
        assert abs(elapsed - timeout) < 0.2, (timeout, elapsed)


def test_a_fetch_starts_no_thread(source, monkeypatch):
    f = fetcher(private_hosts_allowed=LOCAL)
    f.fetch(source.url_for("/img/first.png"))  # the process's one watchdog may start here
    started = []
    real_start = threading.Thread.start

    def recording_start(thread):
        if threading.current_thread() is threading.main_thread():  # the server starts its own
            started.append(thread.name)
        return real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    for n in range(20):
        f.fetch(source.url_for(f"/img/t{n}.png"))
    assert started == []


def test_finished_downloads_do_not_pile_up_in_the_watchdog(source):
    f = fetcher(private_hosts_allowed=LOCAL, timeout_seconds=60)
    for n in range(300):
        f.fetch(source.url_for(f"/img/pile{n}.png"))
    watchdog = pinnedhttp._WATCHDOG
    assert len(watchdog._heap) <= 2 * watchdog.COMPACT_MIN + 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # 3.12+
def test_a_forked_child_gets_a_working_watchdog(source):
    fetcher(private_hosts_allowed=LOCAL).fetch(source.url_for("/img/parent.png"))  # the parent's runs
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the trickle is cut at its deadline
        code = 1
        try:
            started = time.monotonic()
            fetcher(private_hosts_allowed=LOCAL, timeout_seconds=0.3).fetch(source.url_for("/slow/0.05"))
        except FetchError as exc:
            code = 0 if str(exc) == "timed out after 0.3 s" and time.monotonic() - started < 1 else 2
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    if waited == (0, 0):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's fetch hung")
    assert os.waitstatus_to_exitcode(waited[1]) == 0


def test_a_body_in_many_small_pieces_arrives_whole():
    """Short reads are gathered before they are kept; order and bytes must survive that."""
    body = b"".join(bytes(part) for part in sized_jpeg_parts(300_000, "pieces"))
    pieces = [1, 7, 4095, 4096, 5000, 1, 2, 70000, 3, 100]

    def handle(conn, stop):
        conn.recv(65536)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        at, i = 0, 0
        while at < len(body):
            size = pieces[i % len(pieces)]
            conn.sendall(body[at:at + size])
            at, i = at + size, i + 1
            if i % 7 == 0:
                time.sleep(0.001)  # let the client catch up, so some of its reads are short

    with raw_server(handle) as port:
        result = fetcher(allow_private_networks=True).fetch(f"http://127.0.0.1:{port}/a.jpg")
    assert result.data == body and result.mime == "image/jpeg"


# --- the image source itself ------------------------------------------------------------------

def test_sized_images_differ_per_query_and_keep_their_size(source):
    f = fetcher(private_hosts_allowed=LOCAL)
    one, two, again = (f.fetch(source.url_for(f"/sized/20000.jpg?{q}")) for q in ("n=1", "n=2", "n=1"))
    assert len(one.data) == len(two.data) == 20000 and one.mime == two.mime == "image/jpeg"
    assert one.data != two.data
    assert one.data == again.data
    assert f.fetch(source.url_for("/sized/20000.jpg")).data not in (one.data, two.data)


def test_sized_images_can_be_paced(source):
    started = time.monotonic()
    result = fetcher(private_hosts_allowed=LOCAL).fetch(source.url_for("/sized/300000.jpg?pace=0.05"))
    assert len(result.data) == 300000 and result.mime == "image/jpeg"
    assert time.monotonic() - started >= 0.2  # five 64 KiB parts, 50 ms after each


def test_the_source_answers_keep_alive_requests_without_a_nagle_stall(source):
    conn = http.client.HTTPConnection("127.0.0.1", source.port, timeout=5)
    took = []
    try:
        for n in range(10):
            started = time.perf_counter()
            conn.request("GET", f"/sized/20480.jpg?k={n}")
            assert len(conn.getresponse().read()) == 20480
            took.append(time.perf_counter() - started)
    finally:
        conn.close()
    assert statistics.median(took) < 0.02  # about 44 ms each with Nagle on


def test_the_source_has_a_generous_listen_backlog(source):
    assert source._server.request_queue_size >= 128


# --- https: certificate checked against the name, connection to the checked address -----------

@pytest.fixture
def tls_source(tmp_path):
    (tmp_path / "cert.pem").write_text(CERT)
    (tmp_path / "key.pem").write_text(KEY)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_names = []
    context.sni_callback = lambda sslsock, name, ctx: server_names.append(name)
    with ImageSource(ssl_context=context) as running:
        running.server_names = server_names
        running.ca_file = str(tmp_path / "cert.pem")
        yield running


def test_https_verifies_the_certificate_against_the_original_name(tls_source):
    f = fetcher(private_hosts_allowed=LOCAL, ca_certs=tls_source.ca_file,
                resolver=resolver_for({"image.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}))
    result = f.fetch(f"https://image.test:{tls_source.port}/img/s.png")
    assert result.data == make_image("png", "s")
    assert tls_source.server_names == ["image.test"]
    with pytest.raises(FetchError, match="^TLS certificate of other.test not valid: .*mismatch"):
        f.fetch(f"https://other.test:{tls_source.port}/img/s.png")


def test_https_to_an_ip_literal_checks_the_ip_in_the_certificate(tls_source):
    f = fetcher(private_hosts_allowed=LOCAL, ca_certs=tls_source.ca_file)
    assert f.fetch(tls_source.url_for("/img/ip.png")).data == make_image("png", "ip")


def test_https_refuses_an_untrusted_certificate(tls_source):
    f = fetcher(private_hosts_allowed=LOCAL, resolver=resolver_for({"image.test": ["127.0.0.1"]}))
    with pytest.raises(FetchError, match="^TLS certificate of image.test not valid: self.signed"):
        f.fetch(f"https://image.test:{tls_source.port}/img/s.png")


def test_connections_are_kept_alive_for_the_next_image_of_the_same_address(source):
    f = fetcher(private_hosts_allowed=LOCAL)
    for n in range(5):
        assert f.fetch(source.url_for(f"/img/kept-{n}.png")).ext == "png"
    assert source.connections == 1 and len(source.requests) == 5


def test_a_kept_connection_the_source_closed_costs_one_try_not_the_url(source):
    f = fetcher(private_hosts_allowed=LOCAL)
    f.fetch(source.url_for("/img/before.png"))
    source.stop()  # every kept-alive connection is closed by the source going away ...
    source.start()  # ... and it is back on the same port
    assert f.fetch(source.url_for("/img/after.png")).ext == "png"
    assert [r.path for r in source.requests][-1] == "/img/after.png"


def test_an_answer_that_closes_its_connection_is_not_kept(source):
    source.add("/closing.png", make_image("png", "closing"), headers={"Connection": "close"})
    f = fetcher(private_hosts_allowed=LOCAL)
    for _ in range(3):
        f.fetch(source.url_for("/closing.png"))
    assert source.connections == 3
