"""What a downloaded body really is, judged by its bytes.

Servers lie: an HTML error page is often served as ``image/jpeg`` and a ``.png``
URL may hold a WebP. So the fetcher ignores Content-Type and the URL's extension
and looks at the magic numbers here. Only the first few dozen bytes are needed,
which lets the fetcher give up on a non-image early.

Once the whole body is in, ``verify`` checks what each format gives for free, so a
file cut short or garbage behind a magic number is not republished: PNG chunk
lengths and CRCs up to IEND, the JPEG segment chain up to its end-of-image marker,
the GIF block chain up to its trailer, the BMP file size and pixel offset, the TIFF
header and first IFD. Bytes after a format's end (zero padding, the video a "motion
photo" appends to its JPEG) are ignored, as every decoder ignores them.
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


def verify(data, image_type):
    """Raise ``CorruptImage`` with a precise reason if ``data`` (a whole body that ``sniff``
    found to be ``image_type``) is cut short or broken inside; formats without a check pass."""
    check = _VERIFIERS.get(image_type)
    if check is not None:
        check(memoryview(data))


def _png(data):
    """Every chunk's length and CRC, from IHDR up to and including IEND."""
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
        end = pos + 8 + length
        if end + 4 > len(data):
            raise CorruptImage(f"truncated PNG: chunk {name} cut short")
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[pos + 4:end]) != crc:
            raise CorruptImage(f"corrupt PNG: bad CRC in chunk {name}")
        if kind == b"IEND":
            return
        pos, first = end + 4, False


# In entropy-coded data a 0xFF byte is followed by 0x00 (a stuffed 0xFF), a restart
# marker (0xD0-0xD7) or fill (0xFF); anything else starts the next marker segment.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length


def _jpeg(data):
    """The chain of marker segments, through each scan's data, must reach EOI (FFD9)."""
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
        pos += 1
        if marker == 0xD9:
            return
        if marker in _JPEG_STANDALONE:
            continue
        if marker < 0xC0 or marker == 0xD8:  # 0x02-0xBF are reserved; a second SOI is wrong
            raise CorruptImage(f"corrupt JPEG: unexpected marker 0x{marker:02X} at byte {pos - 1}")
        if pos + 2 > size:
            raise CorruptImage("truncated JPEG: no end-of-image marker")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise CorruptImage(f"corrupt JPEG: segment 0x{marker:02X} has length {length}")
        pos += length
        if marker == 0xDA and pos <= size:  # start of scan: entropy-coded data follows
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                raise CorruptImage("truncated JPEG: no end-of-image marker")
            pos = found.start()


def _gif(data):
    """Header, colour tables, then extension and image blocks up to the trailer (0x3B)."""
    size = len(data)
    if size < 13:
        raise CorruptImage("truncated GIF: no trailer")
    pos = 13 + _gif_colour_table(data[10])
    while pos < size:
        introducer = data[pos]
        if introducer == 0x3B:
            return
        if introducer == 0x21:  # extension: label, then data sub-blocks
            pos = _gif_sub_blocks(data, pos + 2)
        elif introducer == 0x2C:  # image: descriptor, local colour table, LZW size, sub-blocks
            if pos + 10 > size:
                break
            pos = _gif_sub_blocks(data, pos + 10 + _gif_colour_table(data[pos + 9]) + 1)
        else:
            raise CorruptImage(f"corrupt GIF: unknown block 0x{introducer:02X} at byte {pos}")
    raise CorruptImage("truncated GIF: no trailer")


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
    return size  # ran off the end: the caller finds no trailer


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


_VERIFIERS = {PNG: _png, JPEG: _jpeg, GIF: _gif, BMP: _bmp, TIFF: _tiff}


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
