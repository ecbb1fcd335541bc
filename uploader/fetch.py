"""Safe download of a client-named image URL.

Every hop goes: parse URL -> check host name -> resolve ONCE -> check every address
-> connect to a checked address (never to the name, so DNS cannot change its answer
in between) -> send the original Host header, and for https verify the certificate
against the original name (SNI) -> follow a redirect by starting over.

The body streams under a byte cap and one deadline for the whole download: a
watchdog shuts the socket when the deadline passes, so a server trickling a byte at
a time is cut off even though no single read times out. One watchdog thread per
process serves every download (a heap of deadlines), so a fetch starts no thread.
The bytes are judged by their magic number, never by Content-Type or extension, and the
image's width x height by its header as soon as that has arrived, so a decompression bomb
(a small file declaring gigapixels) is refused before it is downloaded whole.

The connections, their pinning and the deadline are ``pinnedhttp``'s.
"""

import dataclasses
import http.client
import ipaddress
import logging

from . import imagetype
from .errors import (CorruptImage, FetchError, NotAnImage, SourceBroken, SourceHTTPError,
                     SourceTooLarge, TooManyPixels, TooManyRedirects)
from .netpolicy import AddressPolicy
from .pinnedhttp import (WIRE_ERRORS, Guard, KeptAlive, connect_pinned, default_resolver,
                         parse_target, redirect_url, resolve_checked, translate_error)

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 16 * 1024  # the most one read takes; progress is reported after every read
_SMALL_READ = 4096  # reads shorter than this are gathered before they are kept
# The image's width x height is looked for in this much of the body as it arrives (a JPEG's
# EXIF and ICC segments come before its frame header); past it, in the whole body.
_HEADER_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A downloaded image: its bytes, sniffed type and the URL it finally came from."""

    data: bytes
    mime: str
    ext: str
    final_url: str


def format_size(n):
    """Human size with binary units: 20971520 -> '20 MB'."""
    for unit, scale in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if n >= scale:
            return f"{round(n / scale, 1):g} {unit}"
    return f"{n} bytes"


class Fetcher:
    """Downloads images from URLs without ever reaching a refused network address.

    Thread-safe: a fetch keeps its state in locals; the instance holds configuration and
    the connections kept alive between fetches.
    """

    def __init__(self, *, timeout_seconds=15.0, max_bytes=20 * 1024 * 1024, max_redirects=5,
                 allow_private_networks=False, private_hosts_allowed=(), only_hosts=(),
                 denied_hosts=(), accepted_mimes=imagetype.ACCEPTED_BY_IMGUR,
                 max_pixels=100_000_000, resolver=None, user_agent="image-service/0.1",
                 ca_certs=None):
        self.timeout_seconds = float(timeout_seconds)
        self.max_bytes = int(max_bytes)
        self.max_redirects = int(max_redirects)
        self.policy = AddressPolicy(allow_private_networks, private_hosts_allowed=private_hosts_allowed,
                                    only_hosts=only_hosts, denied_hosts=denied_hosts)
        self.accepted_mimes = frozenset(accepted_mimes)
        self.max_pixels = int(max_pixels)
        self.resolver = resolver or default_resolver
        self.user_agent = user_agent
        self.ca_certs = ca_certs
        self._accept = ",".join(sorted(self.accepted_mimes)) + ",*/*;q=0.1"
        self._kept = KeptAlive()

    def fetch(self, url, *, on_progress=None):
        """Download ``url`` and return a ``Fetched`` image, or raise ``FetchError`` with the reason.

        ``on_progress(received, total)`` is called as soon as the final answer's headers are
        in (``0``, and the size from Content-Length or None), then after every read of at
        most 16 KiB; a caller that passes progress on throttles it itself.
        """
        guard = Guard(self.timeout_seconds)
        try:
            for _hop in range(self.max_redirects + 1):
                target = parse_target(url, self.policy)
                addresses = resolve_checked(target, self.policy, self.resolver)
                conn, response, sock, key = self._request(target, addresses, guard)
                kept = False
                try:
                    if response.status in REDIRECT_STATUSES:
                        url = self._next_url(target, response)
                        continue
                    if response.status != 200:
                        raise SourceHTTPError(response.status)
                    data = self._read_body(response, sock, guard, on_progress)
                    kept = not response.will_close and guard.release(sock)
                finally:
                    response.close()
                    conn.sock = None  # the socket is ours: kept alive, or closed here
                    if kept:
                        self._kept.give(key, sock)
                    else:
                        sock.close()
                return self._judge(data, target.url)
            raise TooManyRedirects(f"too many redirects (more than {self.max_redirects})")
        finally:
            guard.close()

    def _request(self, target, addresses, guard):
        """Send the GET on a connection kept alive to one of the checked addresses, or on a
        new one to the first that answers. A kept connection the source has closed since
        costs one try: the GET goes again on a new one."""
        for ip in addresses:
            key = (target.scheme, target.host, target.port, str(ip))
            sock = self._kept.take(key)
            if sock is None:
                continue
            guard.attach(sock)
            try:
                return (*self._get(target, sock, guard), key)
            except (FetchError, *WIRE_ERRORS):
                sock.close()
                if guard.expired:
                    raise guard.error() from None
            break
        sock = connect_pinned(target, addresses, guard, self.ca_certs)
        key = (target.scheme, target.host, target.port, ipaddress.ip_address(
            sock.getpeername()[0]).compressed)
        try:
            return (*self._get(target, sock, guard), key)
        except (FetchError, *WIRE_ERRORS) as exc:
            sock.close()
            raise translate_error(exc, guard, target) from None

    def _get(self, target, sock, guard):
        conn = http.client.HTTPConnection(target.host, target.port)  # never connects: we give it a socket
        conn.sock = sock
        conn.putrequest("GET", target.path, skip_host=True, skip_accept_encoding=True)
        for name, value in (("Host", target.host_header), ("User-Agent", self.user_agent),
                            ("Accept", self._accept), ("Accept-Encoding", "identity")):
            conn.putheader(name, value)
        conn.endheaders()
        sock.settimeout(guard.remaining())
        return conn, conn.getresponse(), sock

    def _next_url(self, target, response):
        location = response.getheader("Location")
        if not location:
            raise SourceHTTPError(response.status,
                                  f"HTTP {response.status} from source without a Location header")
        log.debug("%s redirects to %s", target.url, location)
        return redirect_url(target.url, location)

    def _read_body(self, response, sock, guard, on_progress):
        """Stream the body under the byte cap and the deadline; fail early on a non-image.

        Reads of a useful size are kept as they came and joined once at the end (a
        growing ``bytearray`` would cost a copy and fresh pages more per image); tiny
        reads are gathered first, so a server dribbling bytes cannot make us hold an
        object per byte.
        """
        total = response.length
        if total is not None and total > self.max_bytes:
            raise SourceTooLarge(f"too large: over {format_size(self.max_bytes)}")
        if on_progress is not None:  # the headers are in: say how big, before the first byte
            on_progress(0, total)
        chunks, dribble = [], bytearray()
        size = 0
        kind = head = None  # head: the first bytes, kept until they show width x height
        try:
            while True:
                sock.settimeout(guard.remaining())
                chunk = response.read1(min(_CHUNK, self.max_bytes + 1 - size))
                if guard.expired:
                    raise guard.error()
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise SourceTooLarge(f"too large: over {format_size(self.max_bytes)}")
                if len(chunk) >= _SMALL_READ:
                    if dribble:
                        chunks.append(bytes(dribble))
                        dribble.clear()
                    chunks.append(chunk)
                else:
                    dribble += chunk
                    if len(dribble) >= _CHUNK:
                        chunks.append(bytes(dribble))
                        dribble.clear()
                if kind is None and size >= imagetype.SNIFF_BYTES:
                    head = bytearray(chunk if len(chunk) == size else b"".join(chunks) + dribble)
                    kind = self._judge(head, None)
                elif head is not None:
                    head += chunk
                if head is not None and (self._measure(head, kind) or len(head) >= _HEADER_BYTES):
                    head = None  # measured, or left to the whole body
                if on_progress is not None:
                    on_progress(size, total)
        except http.client.IncompleteRead:
            if guard.expired:
                raise guard.error() from None
            raise SourceBroken(f"truncated: the chunked body ended after {size} bytes") from None
        except WIRE_ERRORS as exc:
            raise translate_error(exc, guard, None) from None
        if total is not None and size < total:
            raise SourceBroken(f"truncated: got {size} of {total} bytes")
        chunks.append(dribble)
        return b"".join(chunks)

    def _judge(self, data, final_url):
        """Check the bytes are an accepted image and return its type; with a URL (the whole
        body is in), check its structure and size too and return the ``Fetched``."""
        if not data:
            raise NotAnImage("not an image: the source sent an empty body")
        kind = imagetype.sniff(data)
        if kind is None:
            raise NotAnImage(f"not an image: looks like {imagetype.describe(data)}")
        if kind.mime not in self.accepted_mimes:
            raise NotAnImage(f"unsupported image format: {imagetype.name(kind)} ({kind.mime})")
        if final_url is None:
            return kind
        imagetype.verify(data, kind)
        if not self._measure(data, kind) and kind in imagetype.MEASURABLE:
            raise CorruptImage(f"corrupt {imagetype.name(kind)}: no width and height in its header")
        return Fetched(data=bytes(data), mime=kind.mime, ext=kind.ext, final_url=final_url)

    def _measure(self, data, kind):
        """True once ``data`` (the body so far, or all of it) shows the image's width x height,
        False while it does not; raises ``TooManyPixels`` over ``max_pixels``."""
        size = imagetype.dimensions(data, kind)
        if size is None:
            return False
        width, height = size
        if width * height > self.max_pixels:
            raise TooManyPixels(f"image is {width} x {height} pixels, over the limit of "
                                f"{self.max_pixels:,} (images.max_pixels)")
        return True
