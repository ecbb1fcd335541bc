"""What a downloaded body really is, judged by its bytes.

Servers lie: an HTML error page is often served as ``image/jpeg`` and a ``.png``
URL may hold a WebP. So the fetcher ignores Content-Type and the URL's extension
and looks at the magic numbers here. Only the first few dozen bytes are needed,
which lets the fetcher give up on a non-image early.

Once the whole body is in, ``verify`` checks what each format gives for free, so a
file cut short or garbage behind a magic number is not republished: PNG chunk
lengths and CRCs up to IEND, the JPEG segment chain up to its end-of-image marker,
the GIF block chain up to its trailer, the BMP file size and pixel offset, the TIFF
header and first IFD, the WebP RIFF size and chunks. Bytes after a format's end (zero
padding, the video a "motion photo" appends to its JPEG) are ignored, as every decoder
ignores them. The walkers behind those checks (``jpeg_segments``, ``png_chunks``,
``gif_blocks``, ``webp_chunks``) are public: ``metadata`` strips along the same paths.

``dimensions`` reads the width x height a header declares, from the first bytes of a body
still arriving, so a small file that declares gigapixels is refused before it is all in.
"""

import dataclasses
import json
import re
import struct
import zlib

from .errors import CorruptImage


@dataclasses.dataclass(frozen=True)
class ImageType:
    """An image format: its MIME type and the usual file extension (without dot)."""

    mime: str
    ext: str


JPEG = ImageType("image/jpeg", "jpg")
PNG = ImageType("image/png", "png")
GIF = ImageType("image/gif", "gif")
TIFF = ImageType("image/tiff", "tiff")
BMP = ImageType("image/bmp", "bmp")
WEBP = ImageType("image/webp", "webp")
HEIC = ImageType("image/heic", "heic")
HEIF = ImageType("image/heif", "heif")
AVIF = ImageType("image/avif", "avif")

ACCEPTED_BY_IMGUR = frozenset({JPEG.mime, PNG.mime, GIF.mime, TIFF.mime, BMP.mime})
"""What Imgur takes through the API (see shared/imgur-api.md); WebP and HEIC are refused."""

SNIFF_BYTES = 32
"""How many leading bytes ``sniff`` needs to decide; fewer only when the body is shorter."""

_NAMES = {
    JPEG: "JPEG", PNG: "PNG", GIF: "GIF", TIFF: "TIFF", BMP: "BMP",
    WEBP: "WebP", HEIC: "HEIC", HEIF: "HEIF", AVIF: "AVIF",
}
# BITMAPCOREHEADER, OS/2 v2 (short and full), BITMAPINFOHEADER, V2, V3, V4, V5.
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"mif1", b"msf1", b"mif2"}
_VIDEO_BRANDS = {b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"M4V ", b"qt  ", b"3gp4", b"3gp5"}
_HTML = re.compile(rb"\s*<(!doctype\s+html|html|head|body|title|script|meta|div|p|a|iframe|!--)[\s>]",
                   re.IGNORECASE)
_XML = re.compile(rb"\s*<(\?xml|svg|rss|feed)[\s>]", re.IGNORECASE)


def sniff(data):
    """Return the ``ImageType`` of ``data`` by its magic number, or None if it is no image."""
    head = bytes(data[:SNIFF_BYTES])
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG  # APNG is a PNG with extra chunks; Imgur takes it as such.
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return TIFF
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return BMP
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return _sniff_isobmff(head)


def dimensions(data, image_type):
    """``(width, height)`` in pixels as the header of ``data`` declares them, or None while
    ``data`` (a whole body, or the start of one still arriving) does not reach them.

    Nothing is decoded, so a 100-byte PNG that declares 60,000 x 60,000 pixels measures
    as such. A GIF measures the canvas that its screen and every frame in ``data`` need."""
    read = _SIZE_READERS.get(image_type)
    if read is None:
        return None
    try:
        return read(data)  # no memoryview: the fetcher's bytearray of the first bytes grows after
    except (CorruptImage, struct.error):  # cut short (still arriving), or broken: verify says which
        return None


def verify(data, image_type):
    """Raise ``CorruptImage`` with a precise reason if ``data`` (a whole body that ``sniff``
    found to be ``image_type``) is cut short or broken inside; formats without a check pass."""
    check = _VERIFIERS.get(image_type)
    if check is not None:
        check(memoryview(data))


def png_chunks(data):
    """Yield ``(kind, start, end)`` for each chunk of a PNG, IHDR first, up to and including
    IEND: ``start`` is its length field, ``end`` is past its CRC. Raises ``CorruptImage``."""
    pos, first = 8, True
    while True:
        if pos + 8 > len(data):
            raise CorruptImage("truncated PNG: no IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if not kind.isalpha() or not kind.isascii():
            raise CorruptImage(f"corrupt PNG: invalid chunk type {_shown(kind)} at byte {pos + 4}")
        name = kind.decode("ascii")
        if first and kind != b"IHDR":
            raise CorruptImage(f"corrupt PNG: first chunk is {name}, not IHDR")
        if length > 0x7FFFFFFF:
            raise CorruptImage(f"corrupt PNG: chunk {name} claims {length} bytes")
        end = pos + 12 + length
        if end > len(data):
            raise CorruptImage(f"truncated PNG: chunk {name} cut short")
        yield kind, pos, end
        if kind == b"IEND":
            return
        pos, first = end, False


def _png(data):
    """Every chunk's length and CRC, from IHDR up to and including IEND."""
    for kind, start, end in png_chunks(data):
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(data[start + 4:end - 4]) != crc:
            raise CorruptImage(f"corrupt PNG: bad CRC in chunk {kind.decode('ascii')}")


# In entropy-coded data a 0xFF byte is followed by 0x00 (a stuffed 0xFF), a restart
# marker (0xD0-0xD7) or fill (0xFF); anything else starts the next marker segment.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length


SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
"""Start-of-frame markers (every coding process): their segment gives the image's size."""


def jpeg_segments(data):
    """Yield ``(marker, start, end)`` for each marker after SOI, up to and including EOI:
    ``start`` is the 0xFF just before the marker byte (fill bytes before it are in no
    segment), ``end`` is past its segment; a scan (SOS, 0xDA) ends where its entropy-coded
    data does. Raises ``CorruptImage``."""
    pos, size = 2, len(data)
    while True:
        if pos >= size:
            raise CorruptImage("truncated JPEG: no end-of-image marker")
        if data[pos] != 0xFF:
            raise CorruptImage(f"corrupt JPEG: no marker at byte {pos} (0x{data[pos]:02X})")
        while pos < size and data[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        if pos >= size:
            raise CorruptImage("truncated JPEG: no end-of-image marker")
        marker = data[pos]
        start = pos - 1
        pos += 1
        if marker == 0xD9:
            yield marker, start, pos
            return
        if marker in _JPEG_STANDALONE:
            yield marker, start, pos
            continue
        if marker < 0xC0 or marker == 0xD8:  # 0x02-0xBF are reserved; a second SOI is wrong
            raise CorruptImage(f"corrupt JPEG: unexpected marker 0x{marker:02X} at byte {pos - 1}")
        if pos + 2 > size:
            raise CorruptImage("truncated JPEG: no end-of-image marker")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise CorruptImage(f"corrupt JPEG: segment 0x{marker:02X} has length {length}")
        pos += length
        if pos > size:
            raise CorruptImage("truncated JPEG: no end-of-image marker")
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                raise CorruptImage("truncated JPEG: no end-of-image marker")
            pos = found.start()
        yield marker, start, pos


def _jpeg(data):
    """The chain of marker segments, through each scan's data, must reach EOI (FFD9)."""
    for _ in jpeg_segments(data):
        pass


def gif_blocks(data):
    """Yield ``(introducer, start, end)`` for each block after the header and global colour
    table, up to and including the trailer (0x3B): 0x21 an extension (its label at
    ``start + 1``), 0x2C an image (descriptor, local colour table, pixels). Raises ``CorruptImage``."""
    size = len(data)
    if size < 13:
        raise CorruptImage("truncated GIF: no trailer")
    pos = 13 + _gif_colour_table(data[10])
    while pos < size:
        introducer, start = data[pos], pos
        if introducer == 0x3B:
            yield introducer, start, pos + 1
            return
        if introducer == 0x21:  # extension: label, then data sub-blocks
            pos = _gif_sub_blocks(data, pos + 2)
        elif introducer == 0x2C:  # image: descriptor, local colour table, LZW size, sub-blocks
            if pos + 10 > size:
                break
            pos = _gif_sub_blocks(data, pos + 10 + _gif_colour_table(data[pos + 9]) + 1)
        else:
            raise CorruptImage(f"corrupt GIF: unknown block 0x{introducer:02X} at byte {pos}")
        if pos > size:
            break
        yield introducer, start, pos
    raise CorruptImage("truncated GIF: no trailer")


def _gif(data):
    """Header, colour tables, then extension and image blocks up to the trailer (0x3B)."""
    for _ in gif_blocks(data):
        pass


def _gif_colour_table(flags):
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0


def _gif_sub_blocks(data, pos):
    """The position after a chain of length-prefixed sub-blocks and its 0 terminator."""
    size = len(data)
    while pos < size:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos
    return size + 1  # ran off the end: the caller finds no trailer


def _bmp(data):
    """The header's file size and pixel offset must lie within the data."""
    if len(data) < 14:
        raise CorruptImage("truncated BMP: header cut short")
    file_size, offset = struct.unpack_from("<I4xI", data, 2)
    if file_size > len(data):
        raise CorruptImage(f"truncated BMP: header says {file_size} bytes, got {len(data)}")
    if offset >= len(data):
        raise CorruptImage(f"truncated BMP: pixels start at byte {offset}, got {len(data)} bytes")


def _tiff(data):
    """The header's first IFD (entry count, entries, next offset) must lie within the data."""
    if len(data) < 8:
        raise CorruptImage("truncated TIFF: header cut short")
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    if offset < 8:
        raise CorruptImage(f"corrupt TIFF: first IFD at byte {offset}, inside the header")
    if offset + 2 > len(data):
        raise CorruptImage(f"truncated TIFF: first IFD at byte {offset}, got {len(data)} bytes")
    (entries,) = struct.unpack_from(order + "H", data, offset)
    if offset + 2 + 12 * entries + 4 > len(data):
        raise CorruptImage(f"truncated TIFF: first IFD ({entries} entries) cut short")


def webp_chunks(data):
    """Yield ``(kind, start, end)`` for each chunk inside the RIFF container of a WebP:
    ``end`` is past its payload and the pad byte that evens it. Raises ``CorruptImage``."""
    if len(data) < 12:
        raise CorruptImage("truncated WebP: header cut short")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end_of_riff = 8 + riff_size
    if end_of_riff > len(data):
        raise CorruptImage(f"truncated WebP: RIFF says {end_of_riff} bytes, got {len(data)}")
    pos = 12
    while pos < end_of_riff:
        if pos + 8 > end_of_riff:
            raise CorruptImage(f"corrupt WebP: chunk header at byte {pos} cut short")
        kind, size = struct.unpack_from("<4sI", data, pos)
        end = pos + 8 + size + (size & 1)
        if pos + 8 + size > end_of_riff:
            raise CorruptImage(f"truncated WebP: chunk {_shown(kind)} cut short")
        yield kind, pos, min(end, end_of_riff)  # the last chunk's pad byte may be missing
        pos = end


_WEBP_IMAGES = frozenset({b"VP8 ", b"VP8L", b"ANMF"})


def _webp(data):
    """The RIFF size, the chunk chain within it, and an image in it."""
    kinds = [kind for kind, _, _ in webp_chunks(data)]
    if not kinds or kinds[0] not in (b"VP8 ", b"VP8L", b"VP8X"):
        raise CorruptImage("corrupt WebP: no VP8, VP8L or VP8X chunk first")
    if not _WEBP_IMAGES.intersection(kinds):
        raise CorruptImage("corrupt WebP: no image data")


def _png_size(data):
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None  # sizes that cannot be trusted: verify says why
    return struct.unpack_from(">II", data, 16)


def _jpeg_size(data):
    for marker, start, _ in jpeg_segments(data):
        if marker in SOF_MARKERS:
            height, width = struct.unpack_from(">HH", data, start + 5)
            return width, height
        if marker == 0xDA:  # a scan before any frame header
            return None
    return None


def _gif_size(data):
    width, height = struct.unpack_from("<HH", data, 6)
    try:
        for introducer, start, _ in gif_blocks(data):
            if introducer == 0x2C:
                left, top, frame_width, frame_height = struct.unpack_from("<4H", data, start + 1)
                width, height = max(width, left + frame_width), max(height, top + frame_height)
    except CorruptImage:
        pass  # still arriving: the frames so far
    return width, height


def _bmp_size(data):
    if len(data) < 26:
        return None
    if int.from_bytes(data[14:18], "little") == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack_from("<HH", data, 18)
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(width), abs(height)  # a negative height means rows stored top-down


def _tiff_size(data):
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (entries,) = struct.unpack_from(order + "H", data, offset)
    found = {}
    for entry in range(offset + 2, offset + 2 + 12 * entries, 12):
        tag, kind, count = struct.unpack_from(order + "HHI", data, entry)
        if tag in (256, 257) and count >= 1 and kind in (3, 4):  # ImageWidth, ImageLength
            found[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, entry + 8)[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _webp_size(data):
    kind = bytes(data[12:16])
    if len(data) < (25 if kind == b"VP8L" else 30):
        return None
    if kind == b"VP8X":  # the canvas: 24-bit width - 1, height - 1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8L" and data[20] == 0x2F:  # 14-bit width - 1, height - 1
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # key frame: 14-bit width, height
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def _shown(raw):
    return repr(bytes(raw))[1:]


def _sniff_isobmff(head):
    """HEIC and AVIF are ISO media files: an ``ftyp`` box naming brands."""
    if head[4:8] != b"ftyp" or len(head) < 12:
        return None
    size = int.from_bytes(head[:4], "big")
    major = head[8:12]
    compatible = {head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    brands = {major} | compatible
    if major in _AVIF_BRANDS or (major in _HEIF_BRANDS and brands & _AVIF_BRANDS):
        return AVIF
    if major in _HEIC_BRANDS or (major in _HEIF_BRANDS and brands & _HEIC_BRANDS):
        return HEIC
    if major in _HEIF_BRANDS:
        return HEIF
    return None


_VERIFIERS = {PNG: _png, JPEG: _jpeg, GIF: _gif, BMP: _bmp, TIFF: _tiff, WEBP: _webp}
_SIZE_READERS = {PNG: _png_size, JPEG: _jpeg_size, GIF: _gif_size, BMP: _bmp_size, TIFF: _tiff_size,
                 WEBP: _webp_size}
MEASURABLE = frozenset(_SIZE_READERS)
"""The types whose header ``dimensions`` reads: every type a host accepts."""


def name(image_type):
    """A short human name for an image type ("WebP", "JPEG")."""
    return _NAMES.get(image_type, image_type.mime)


def describe(data):
    """A short human guess at what ``data`` is, for "not an image: looks like ..." messages."""
    head = bytes(data[:1024])
    if not head:
        return "empty"
    image_type = sniff(head)
    if image_type is not None:
        return f"{name(image_type)} image"
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        head = head[3:] if head.startswith(b"\xef\xbb\xbf") else head[2:]
    if _HTML.match(head):
        return "HTML"
    if _XML.match(head):
        return "XML/SVG"
    if head.startswith(b"%PDF-"):
        return "PDF"
    if head[4:8] == b"ftyp" and head[8:12] in _VIDEO_BRANDS:
        return "MP4 video"
    if head.startswith(b"\x1f\x8b"):
        return "gzip data"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    text = _as_text(head, complete=len(data) <= len(head))
    if text is None:
        return "binary data"
    if text.lstrip()[:1] in ("{", "[") and _looks_like_json(data):
        return "JSON"
    return "plain text"


def _as_text(head, *, complete):
    """Decode ``head`` as UTF-8 text without control characters, or return None."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of a prefix is still text.
        if complete or exc.start < len(head) - 3:
            return None
        text = head[:exc.start].decode("utf-8")
    if any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return None
    return text


def _looks_like_json(data):
    """True if ``data`` parses as JSON, or is too long to tell and starts like it."""
    if len(data) > 64 * 1024:
        return True
    try:
        json.loads(bytes(data))
    except ValueError:
        return False
    return True
