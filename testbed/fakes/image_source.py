"""A local web server full of images and traps, standing in for the sites clients link to.

Tests and benchmarks point the fetcher at it instead of the internet. It runs a
stdlib ``ThreadingHTTPServer`` in a background thread and records every request it
answers, so an SSRF test can prove that a refused URL never reached it.

Routes: ``/img/<name>.<ext>`` (png jpg gif tiff bmp webp; bytes differ per name),
``/sized/<n>.jpg[?...]`` (a valid JPEG of exactly n bytes, n >= 159, streamed; the bytes differ
per path and query, and ``pace=<seconds>`` waits between 64 KiB parts), ``/html``,
``/lying.jpg`` (HTML labelled image/jpeg), ``/status/<code>``, ``/redirect/<n>``,
``/redirect-to?url=<u>[&status=30x]``, ``/loop``, ``/slow/<seconds-per-byte>``,
``/huge`` (announces 10 GB), ``/huge-chunked`` (endless chunked body),
``/truncated.jpg`` (promises 2000 bytes, sends 100), ``/held/<name>.png`` (answered
only once ``release()`` lets it go: a source as slow as a test needs), plus routes added
with ``add``.
"""

import collections
import functools
import http.server
import logging
import re
import struct
import threading
import time
import urllib.parse
import zlib

from .server import LoopbackServer

log = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
                 "tiff": "image/tiff", "tif": "image/tiff", "bmp": "image/bmp", "webp": "image/webp"}
STREAM_LIMIT_BYTES = 200 * 1024 * 1024
STREAM_LIMIT_SECONDS = 60.0
_ZEROS = bytes(65536)
_HTML = b"<!DOCTYPE html>\n<html><head><title>Not an image</title></head><body>Hello</body></html>\n"

Request = collections.namedtuple("Request", "path time")
Request.__doc__ = "One request answered: its path with query, and when (``time.monotonic()``)."


# --- tiny valid images ---------------------------------------------------------------------

def make_image(fmt, tag=""):
    """Return a valid small image in ``fmt``; ``tag`` makes its bytes differ per name.

    The tag sits where no metadata strip removes it, so what the service stores is what
    was served: in the pixels (PNG and GIF: one row of them), in a Huffman table no scan
    uses (JPEG), in the ImageDescription (TIFF), in the gap before the pixels (BMP). Only
    WebP carries it as XMP, which the strip drops. Without a tag: 1x1 pixel.
    """
    fmt = fmt.lower()
    text = tag.encode("utf-8")
    makers = {"png": _png, "jpg": _jpeg, "jpeg": _jpeg, "gif": _gif, "tiff": _tiff, "tif": _tiff,
              "bmp": _bmp, "webp": _webp}
    if fmt not in makers:
        raise ValueError(f"unknown image format {fmt!r}")
    return makers[fmt](text)


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(text):
    row = text or b"\x80"  # 8-bit greyscale, one row: a pixel per byte of the tag
    ihdr = struct.pack(">IIBBBBB", len(row), 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" + row)) + _png_chunk(b"IEND", b""))


def declared_png(width, height):
    """A PNG of under 100 bytes whose header declares ``width`` x ``height`` pixels: whole as
    a file (lengths, CRCs, IEND), though its pixel data is only a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0\0")) + _png_chunk(b"IEND", b""))


def _jpeg_segment(marker, payload):
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def _unused_huffman_table(symbols):
    """A definition of AC Huffman table 3, which no scan here uses: up to 255 ``symbols``,
    all with 8-bit codes. Decoders read it and go on; a metadata strip keeps it."""
    counts = bytearray(16)
    counts[7] = len(symbols)
    return b"\x13" + bytes(counts) + symbols


def _jpeg(text):
    """Baseline 1x1 greyscale: one-code Huffman tables, a single DC-0 + EOB block."""
    huffman_one_code = bytes([1] + [0] * 15) + b"\0"
    tag = b"".join(_unused_huffman_table(text[i:i + 255]) for i in range(0, len(text), 255))
    return b"".join([
        b"\xff\xd8",
        _jpeg_segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"),
        _jpeg_segment(0xC4, tag) if text else b"",
        _jpeg_segment(0xDB, b"\0" + b"\x01" * 64),
        _jpeg_segment(0xC0, b"\x08\0\x01\0\x01\x01\x01\x11\0"),
        _jpeg_segment(0xC4, b"\x00" + huffman_one_code),
        _jpeg_segment(0xC4, b"\x10" + huffman_one_code),
        _jpeg_segment(0xDA, b"\x01\x01\0\0\x3f\0"),
        b"\x3f",  # DC category 0 ("0"), EOB ("0"), padded with ones
        b"\xff\xd9",
    ])


def _gif(text):
    if not text:
        return (b"GIF89a\x01\0\x01\0\x80\0\0" + b"\0\0\0\xff\xff\xff"
                + b",\0\0\0\0\x01\0\x01\0\0" + b"\x02\x02\x44\x01\0" + b";")
    greys = bytes(v for grey in range(256) for v in (grey, grey, grey))
    pixels = _lzw_literals(text)
    blocks = b"".join(bytes([len(pixels[i:i + 255])]) + pixels[i:i + 255] for i in range(0, len(pixels), 255))
    return (b"GIF89a" + struct.pack("<HH", len(text), 1) + b"\xf7\0\0" + greys
            + b"," + struct.pack("<4HB", 0, 0, len(text), 1, 0) + b"\x08" + blocks + b"\0;")


def _lzw_literals(pixels):
    """8-bit pixels as GIF LZW data without compression: 9-bit literal codes, a clear code
    every 250 of them so the code width never grows."""
    codes = []
    for i in range(0, len(pixels), 250):
        codes.append(256)  # clear
        codes.extend(pixels[i:i + 250])
    codes.append(257)  # end of information
    value = sum(code << (9 * n) for n, code in enumerate(codes))
    return value.to_bytes((9 * len(codes) + 7) // 8, "little")


def _tiff(text):
    description = text + b"\0"
    entries = [(256, 3, 1, 1), (257, 3, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (270, 2, len(description), None), (273, 4, 1, None), (277, 3, 1, 1),
               (278, 3, 1, 1), (279, 4, 1, 1)]
    ifd_size = 2 + 12 * len(entries) + 4
    description_at = 8 + ifd_size
    pixel_at = description_at + len(description) + (len(description) % 2)
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 270:
            value = description_at if len(description) > 4 else None
        if tag == 273:
            value = pixel_at
        if value is None:  # short ASCII stored in the entry itself
            ifd += struct.pack("<HHI", tag, kind, count) + description.ljust(4, b"\0")
        elif kind == 3:
            ifd += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += b"\0\0\0\0"
    extra = (description if len(description) > 4 else b"").ljust(pixel_at - description_at, b"\0")
    return b"II*\0" + struct.pack("<I", 8) + ifd + extra + b"\x80"


def _bmp(text):
    offset = 14 + 40 + len(text)  # the tag sits in the gap before the pixels
    pixels = b"\x80\x80\x80\0"  # one BGR pixel, row padded to 4 bytes
    size = offset + len(pixels)
    info = struct.pack("<IiiHHIIiiII", 40, 1, 1, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", size, 0, 0, offset) + info + text + pixels


def _webp_chunk(kind, payload):
    return kind + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def _webp(text):
    """Lossless 1x1 (Google's feature-test image), extended format with an XMP chunk for the tag."""
    vp8l = _webp_chunk(b"VP8L", bytes.fromhex("2f00000010071011118888fe07"))
    if text:
        body = _webp_chunk(b"VP8X", b"\x04" + b"\0" * 9) + vp8l + _webp_chunk(b"XMP ", text)
    else:
        body = vp8l
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def sized_jpeg_parts(nbytes, tag="sized"):
    """Yield a JPEG of exactly ``nbytes`` in <=64 KiB parts; the padding is Huffman tables no
    scan uses (fewer than 21 bytes: fill bytes before a marker), which a strip keeps.

    Valid from ``MIN_SIZED_JPEG`` bytes up: when the tag does not fit it is left out (so
    such small images no longer differ per tag); below that minimum the image is cut short.
    """
    core = make_image("jpg", tag)
    if len(core) > nbytes:
        core = make_image("jpg")
    fill = nbytes - len(core)
    if fill < 0:
        yield core[:nbytes]
        return
    yield core[:2]
    if fill < 21:
        yield b"\xff" * fill
    while fill >= 21:
        size = min(fill, 65535)
        if 0 < fill - size < 21:
            size -= 21
        yield _padding_segment(size)
        fill -= size
    yield core[2:]


@functools.lru_cache(maxsize=4)
def _padding_segment(size):
    """A DHT segment of ``size`` (21 to 65535) bytes: unused tables of zero symbols."""
    payload, tables = size - 4, []
    while payload:
        n = min(255, payload - 17)
        if 0 < payload - 17 - n < 17:
            n -= 17  # leave room for a whole table
        tables.append(_unused_huffman_table(bytes(n)))
        payload -= 17 + n
    return _jpeg_segment(0xC4, b"".join(tables))


MIN_SIZED_JPEG = len(make_image("jpg"))


# --- the server ----------------------------------------------------------------------------

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # benchmarks open many connections at once

    def handle_error(self, request, client_address):
        log.debug("image source: error answering %s", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms stall
    source = None  # set on a per-server subclass

    def setup(self):
        super().setup()
        with self.source._lock:
            self.source.connections += 1

    def do_GET(self):
        try:
            self.source._answer(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, fmt, *args):
        log.debug("image source: " + fmt, *args)


class ImageSource(LoopbackServer):
    """A local HTTP(S) server of images and misbehaving routes; see the module docstring.

    ``latency`` (seconds) delays every answer. ``requests`` lists what was asked, in order.
    """

    handler, handler_attribute, server_base = _Handler, "source", _Server
    thread_name = "image-source"

    def __init__(self, host="127.0.0.1", port=0, *, ssl_context=None):
        super().__init__(host, port, ssl_context=ssl_context)
        self.latency = 0.0
        self.connections = 0  # connections accepted (a client keeping them alive opens few)
        self._routes = {}
        self._log = []
        self._lock = threading.Lock()
        self._held = threading.Semaphore(0)

    def release(self, n=1):
        """Let ``n`` requests of ``/held/`` be answered (held now or to come)."""
        self._held.release(n)

    @property
    def requests(self):
        with self._lock:
            return list(self._log)

    @property
    def paths(self):
        return [request.path for request in self.requests]

    def clear(self):
        with self._lock:
            self._log.clear()

    def add(self, path, body, content_type="image/png", status=200, headers=None):
        """Serve ``body`` at ``path`` (exact, query included or not) before any built-in route."""
        self._routes[path] = (status, body, content_type, dict(headers or {}))

    # --- answering

    def _answer(self, h):
        with self._lock:
            self._log.append(Request(h.path, time.monotonic()))
        if self.latency:
            self._stopping.wait(self.latency)
        parts = urllib.parse.urlsplit(h.path)
        path, query = parts.path, urllib.parse.parse_qs(parts.query)
        route = self._routes.get(h.path) or self._routes.get(path)
        if route:
            status, body, content_type, headers = route
            return self._send(h, status, body, content_type, headers)
        if match := re.fullmatch(r"/flaky/(\d+)/([^/]+)\.png", path):
            failures, name = int(match.group(1)), match.group(2)
            with self._lock:  # the first ``failures`` requests of this path answer 503
                seen = sum(1 for r in self._log if r.path == h.path)
            if seen <= failures:
                return self._send(h, 503, b"busy, try later\n", "text/plain")
            return self._send(h, 200, make_image("png", name), "image/png")
        if match := re.fullmatch(r"/held/([^/]+)\.png", path):
            while not self._held.acquire(timeout=0.05):
                if self._stopping.is_set():
                    h.close_connection = True
                    return None
            return self._send(h, 200, make_image("png", match.group(1)), "image/png")
        if match := re.fullmatch(r"/img/([^/]+)\.([a-z]+)", path):
            name, ext = match.groups()
            if ext in CONTENT_TYPES:
                return self._send(h, 200, make_image(ext, name), CONTENT_TYPES[ext])
        if match := re.fullmatch(r"/sized/(\d+)\.jpg", path):
            size = int(match.group(1))
            pace = float(query.get("pace", ["0"])[0])  # seconds between 64 KiB parts
            # Tagged with the query too: distinct URLs, distinct bytes (no accidental dedup).
            return self._stream(h, sized_jpeg_parts(size, h.path), "image/jpeg", length=size,
                                pace=pace)
        if path in ("/html", "/lying.jpg"):
            content_type = "text/html; charset=utf-8" if path == "/html" else "image/jpeg"
            return self._send(h, 200, _HTML, content_type)
        if match := re.fullmatch(r"/status/(\d{3})", path):
            return self._send(h, int(match.group(1)), f"status {match.group(1)}\n".encode(), "text/plain")
        if match := re.fullmatch(r"/redirect/(\d+)", path):
            hops = int(match.group(1))
            if hops == 0:
                return self._send(h, 200, make_image("png", "redirected"), "image/png")
            return self._redirect(h, f"/redirect/{hops - 1}")
        if path == "/redirect-to" and "url" in query:
            return self._redirect(h, query["url"][0], int(query.get("status", ["302"])[0]))
        if path == "/loop":
            return self._redirect(h, "/loop")
        if match := re.fullmatch(r"/slow/([\d.]+)", path):
            return self._trickle(h, make_image("png", "slow"), float(match.group(1)))
        if path == "/huge":
            header = make_image("jpg", "huge")[:-2]
            return self._stream(h, self._endless(header), "image/jpeg", length=10 * 1024 ** 3)
        if path == "/huge-chunked":
            return self._stream(h, self._endless(make_image("jpg", "huge")[:-2]), "image/jpeg")
        if path == "/truncated.jpg":
            body = b"".join(sized_jpeg_parts(2000, "truncated"))[:100]
            h.close_connection = True
            return self._send(h, 200, body, "image/jpeg", {"Content-Length": "2000"})
        return self._send(h, 404, b"not found\n", "text/plain")

    def _send(self, h, status, body, content_type, headers=None):
        headers = dict(headers or {})
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        no_body = status in (204, 304) or status < 200
        if not no_body:
            h.send_header("Content-Length", headers.pop("Content-Length", str(len(body))))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        if not no_body:
            h.wfile.write(body)

    def _redirect(self, h, location, status=302):
        self._send(h, status, b"", "text/plain", {"Location": location})

    def _trickle(self, h, body, seconds_per_byte):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.flush()
        for i in range(len(body)):
            if self._stopping.wait(seconds_per_byte):
                return
            h.wfile.write(body[i:i + 1])

    def _endless(self, header):
        yield header
        while True:
            yield _ZEROS

    def _stream(self, h, parts, content_type, length=None, pace=0.0):
        """Send ``parts`` (chunked if no length) until done, the client leaves, or the limits."""
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        if length is None:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(length))
        h.end_headers()
        started, sent = time.monotonic(), 0
        if not pace:  # one write per 64 KiB, not per part: the bench counts the fake's CPU
            parts = _coalesced(parts, 64 * 1024)
        for part in parts:
            if self._stopping.is_set() or sent > STREAM_LIMIT_BYTES \
                    or time.monotonic() - started > STREAM_LIMIT_SECONDS:
                h.close_connection = True
                return
            h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if length is None else part)
            sent += len(part)
            if pace and len(part) > 4 and self._stopping.wait(pace):
                return
        if length is None:
            h.wfile.write(b"0\r\n\r\n")
        if length is not None and sent < length:
            h.close_connection = True


def _coalesced(parts, size):
    """``parts`` joined into pieces of at least ``size`` bytes (the last may be smaller)."""
    pending, pending_bytes = [], 0
    for part in parts:
        pending.append(part)
        pending_bytes += len(part)
        if pending_bytes >= size:
            yield b"".join(pending)
            pending, pending_bytes = [], 0
    if pending:
        yield b"".join(pending)
