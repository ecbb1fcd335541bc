"""What a downloaded body really is, judged by its bytes.

Servers lie: an HTML error page is often served as ``image/jpeg`` and a ``.png``
URL may hold a WebP. So the fetcher ignores Content-Type and the URL's extension
and looks at the magic numbers here. Only the first few dozen bytes are needed,
which lets the fetcher give up on a non-image early.
"""

import dataclasses
import json
import re


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
