"""Personal metadata out of an image before it is published, without re-encoding it.

A photo's EXIF can say where it was taken (GPS), with which camera (its serial number) and
when; XMP, IPTC and comments can name people and places; a video or a second picture
appended after the image (a "motion photo") carries metadata of its own. ``strip`` keeps
what decides how the image looks and drops the rest, copying the compressed image data
byte for byte, so the pixels are exactly the source's. It keeps what it knows and drops
what it does not, so a new kind of metadata is dropped too:

    JPEG  keeps JFIF (APP0, without a thumbnail), the ICC profile (APP2), Adobe (APP14: its
          colour transform) and every segment that is not APPn or COM; drops the other
          APPn (EXIF, XMP, IPTC/Photoshop, MPF, C2PA) and comments.
    PNG   keeps the critical chunks, transparency, colour (gAMA, cHRM, sRGB, iCCP, cICP,
          mDCv, cLLi, sBIT), bKGD, hIST, pHYs and animation (acTL, fcTL, fdAT); drops the
          rest: tEXt, zTXt, iTXt, tIME, eXIf, private chunks.
    WebP  keeps VP8X (its flags fixed), the image, alpha, animation and ICC chunks; drops
          EXIF, XMP and unknown chunks, and fixes the RIFF size.
    GIF   drops comments and every application extension but the loop count
          (NETSCAPE2.0, ANIMEXTS1.0).
    BMP, TIFF  unchanged: BMP has no such metadata; TIFF is not stripped (see README).

The EXIF Orientation of a JPEG, PNG or WebP stays, as a minimal EXIF holding that one tag
in the source's byte order, so a photo still shows the right way up. Whatever follows the
image's end is dropped.

An image with nothing to drop comes back as the very same object, after one walk over its
structure and no copy; a stripped image strips to itself. The bytes were verified
(``imagetype.verify``), yet nothing is trusted: a structure it cannot follow raises
``CorruptImage``, never half-stripped bytes.
"""
import struct
import zlib

from . import imagetype
from .errors import CorruptImage

_EXIF = b"Exif\0\0"  # what starts a JPEG's EXIF segment (and some PNG eXIf chunks)
_ORIENTATION = 0x0112


def strip(data, image_type):
    """``data`` of ``image_type`` without personal metadata: the same object when it has
    none. Raises ``CorruptImage`` when its structure cannot be followed."""
    stripper = _STRIPPERS.get(image_type)
    return data if stripper is None else stripper(data)


class _Edit:
    """The output as ranges of the input, some of them replaced; copied once, at the end."""

    def __init__(self, data):
        self.data = data
        self.view = memoryview(data)
        self.pieces = []
        self.copied = 0

    def replace(self, start, end, new):
        """Put ``new`` (b"": nothing) in place of ``data[start:end]``, unless it is the same."""
        if self.view[start:end] == new:
            return
        self.pieces.append(self.view[self.copied:start])
        if new:
            self.pieces.append(new)
        self.copied = end

    def result(self, end):
        """The edited bytes up to ``end``, the image's end: what follows it is dropped."""
        if not self.pieces and end == len(self.data):
            return self.data
        self.pieces.append(self.view[self.copied:end])
        return b"".join(self.pieces)


# --- JPEG --------------------------------------------------------------------------------------

_JPEG_KEPT_APPS = {0xE0: b"JFIF\0", 0xE2: b"ICC_PROFILE\0", 0xEE: b"Adobe"}


def _jpeg(data):
    edit, view, exif_seen = _Edit(data), memoryview(data), False
    for marker, start, end in imagetype.jpeg_segments(data):
        if marker == 0xD9:  # end of image
            return edit.result(end)
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            continue  # frame, tables, scans, restart markers: the image itself
        payload = view[start + 4:end]
        signature = _JPEG_KEPT_APPS.get(marker)
        if signature is not None and payload[:len(signature)] == signature:
            if marker == 0xE0:
                edit.replace(start, end, _jfif_without_thumbnail(payload))
            continue
        new = b""
        if marker == 0xE1 and payload[:6] == _EXIF and not exif_seen:
            exif_seen = True
            tiff = _orientation_only(payload[6:])
            new = _jpeg_segment(0xE1, _EXIF + tiff) if tiff else b""
        edit.replace(start, end, new)
    raise AssertionError("jpeg_segments ends with EOI or raises")


def _jfif_without_thumbnail(payload):
    """The JFIF segment with its fields but no thumbnail (a thumbnail may show what a crop
    removed); nothing when it is too short to be one."""
    if len(payload) < 14:
        return b""
    return _jpeg_segment(0xE0, bytes(payload[:12]) + b"\0\0")


def _jpeg_segment(marker, payload):
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


# --- PNG ---------------------------------------------------------------------------------------

_PNG_KEPT = frozenset({b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"cICP", b"mDCv", b"cLLi",
                       b"sBIT", b"bKGD", b"hIST", b"pHYs", b"acTL", b"fcTL", b"fdAT"})


def _png(data):
    edit, view, exif_seen = _Edit(data), memoryview(data), False
    for kind, start, end in imagetype.png_chunks(data):
        if kind == b"IEND":
            return edit.result(end)
        if kind[0] < 0x61 or kind in _PNG_KEPT:  # upper-case first letter: critical
            continue
        new = b""
        if kind == b"eXIf" and not exif_seen:
            exif_seen = True
            tiff = _orientation_only(view[start + 8:end - 4])
            new = _png_chunk(b"eXIf", tiff) if tiff else b""
        edit.replace(start, end, new)
    raise AssertionError("png_chunks ends with IEND or raises")


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# --- WebP --------------------------------------------------------------------------------------

_WEBP_KEPT = frozenset({b"VP8X", b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def _webp(data):
    view = memoryview(data)
    chunks = list(imagetype.webp_chunks(data))
    extended = bool(chunks) and chunks[0][0] == b"VP8X"
    kept, exif_kept, changed = [], False, False
    for kind, start, end in chunks:
        if kind in _WEBP_KEPT:
            kept.append(view[start:end])
            continue
        new = b""
        if kind == b"EXIF" and extended and not exif_kept:
            (size,) = struct.unpack_from("<I", data, start + 4)
            tiff = _orientation_only(view[start + 8:start + 8 + size])
            new = _webp_chunk(b"EXIF", tiff) if tiff else b""
            exif_kept = bool(new)
        changed = changed or view[start:end] != new
        if new:
            kept.append(new)
    end_of_riff = chunks[-1][2] if chunks else 12
    if extended:
        vp8x = kept[0]
        if len(vp8x) < 18:
            raise CorruptImage("corrupt WebP: VP8X chunk cut short")
        flags = (vp8x[8] & ~(_VP8X_EXIF | _VP8X_XMP)) | (_VP8X_EXIF if exif_kept else 0)
        if flags != vp8x[8]:
            kept[0] = bytes(vp8x[:8]) + bytes([flags]) + bytes(vp8x[9:])
            changed = True
    if not changed and end_of_riff == len(data):
        return data
    body = b"".join(kept)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _webp_chunk(kind, payload):
    return kind + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)


# --- GIF ---------------------------------------------------------------------------------------

_GIF_KEPT_APPS = frozenset({b"\x0bNETSCAPE2.0", b"\x0bANIMEXTS1.0"})  # the loop count


def _gif(data):
    edit, view = _Edit(data), memoryview(data)
    for introducer, start, end in imagetype.gif_blocks(data):
        if introducer == 0x3B:  # trailer
            return edit.result(end)
        if introducer != 0x21:
            continue
        label = data[start + 1]
        if label == 0xFE or (label == 0xFF and bytes(view[start + 2:start + 14]) not in _GIF_KEPT_APPS):
            edit.replace(start, end, b"")
    raise AssertionError("gif_blocks ends with the trailer or raises")


# --- EXIF Orientation --------------------------------------------------------------------------

def _orientation_only(tiff):
    """A minimal EXIF TIFF structure: IFD0 holding only the Orientation of ``tiff``, in its
    byte order; b"" when it has none worth keeping (absent, 1 = as stored, invalid, or
    ``tiff`` unreadable). Never raises."""
    if tiff[:6] == _EXIF:  # JPEG's prefix, which some writers put in PNG and WebP too
        tiff = tiff[6:]
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None:
        return b""
    try:
        magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
        (entries,) = struct.unpack_from(order + "H", tiff, ifd)
        for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
            tag, kind, count, value = struct.unpack_from(order + "HHIH", tiff, entry)
            if tag == _ORIENTATION:
                if magic != 42 or kind != 3 or count != 1 or not 2 <= value <= 8:
                    return b""
                return bytes(tiff[:2]) + struct.pack(order + "HIH" + "HHIHH" + "I",
                                                     42, 8, 1, _ORIENTATION, 3, 1, value, 0, 0)
    except struct.error:
        pass
    return b""


_STRIPPERS = {imagetype.JPEG: _jpeg, imagetype.PNG: _png, imagetype.WEBP: _webp,
              imagetype.GIF: _gif}
