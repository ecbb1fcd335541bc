"""Personal metadata out of an image before it is published, without re-encoding it.

A photo's EXIF can say where it was taken (GPS), with which camera (its serial number) and
when; XMP, IPTC and comments can name people and places; a video or a second picture
appended after the image (a "motion photo") carries metadata of its own. ``strip`` keeps
what decides how the image looks and drops the rest, copying the compressed image data
byte for byte, so the pixels are exactly the source's. In JPEG, PNG and WebP it keeps what
it knows and drops what it does not, so a new kind of metadata is dropped too:

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
    TIFF  drops, in place, the entries of every page's directory that hold or point to
          metadata (EXIF and GPS directories, XMP, IPTC, Photoshop, Make, Model, DateTime,
          Artist, HostComputer) and zeros what they pointed to; the file keeps its length
          and its image data. Bytes that nothing points to stay as they are.
    BMP   unchanged: it has no such metadata.

The EXIF Orientation of a JPEG, PNG or WebP stays, as a minimal EXIF holding that one tag
in the source's byte order, so a photo still shows the right way up. Whatever follows the
image's end is dropped.

An image with nothing to drop comes back as the very same object, after one walk over its
structure and no copy; a stripped image strips to itself. The bytes were verified
(``imagetype.verify``), yet nothing is trusted: a structure it cannot follow raises
``CorruptImage``, never half-stripped bytes.
"""
import bisect
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


# --- TIFF --------------------------------------------------------------------------------------

# Entries whose values are metadata: who and what took it (Make, Model, DateTime, Artist,
# HostComputer), XMP, IPTC, Photoshop's resources, the EXIF and GPS directories.
_TIFF_DROPPED = frozenset({271, 272, 306, 315, 316, 700, 33723, 34377, 34665, 34853})
_TIFF_DIRECTORIES = frozenset({34665, 34853, 40965})  # EXIF, GPS, Interoperability
_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_TIFF_IMAGE_DATA = ((273, 279), (324, 325), (513, 514))  # strips, tiles, an old-style JPEG


def _tiff(data):
    """In place: the metadata entries leave each directory of the chain (which shrinks, its
    freed entries zeroed), and what they pointed to (EXIF and GPS directories with their
    values, maker notes included) becomes zeros. Nothing moves, so the image data stays
    where and what it was. Metadata overlapping what is kept is refused as corrupt."""
    tiff = _Tiff(data)
    kept_ranges, erased, rewrites = [], [], []
    for ifd in tiff.chain():
        entries = tiff.entries(ifd)
        kept = [entry for entry in entries if entry[1] not in _TIFF_DROPPED]
        kept_ranges.append((ifd, ifd + 6 + 12 * len(entries)))
        kept_ranges.extend(entry[4] for entry in kept if entry[4])
        kept_ranges.extend(tiff.image_data(kept))
        for entry in entries:
            if entry[1] in _TIFF_DROPPED:
                erased.extend(tiff.reach(entry, depth=0))
        if len(kept) < len(entries):
            rewrites.append((ifd, entries, kept))
    if not rewrites:
        return data
    _refuse_overlaps(erased, kept_ranges)
    out = bytearray(data)
    for start, end in erased:
        out[start:end] = bytes(end - start)
    for ifd, entries, kept in rewrites:
        end = ifd + 6 + 12 * len(entries)
        directory = (struct.pack(tiff.order + "H", len(kept)) + b"".join(data[at:at + 12] for at, *_ in kept)
                     + data[end - 4:end])  # the next directory's offset
        out[ifd:end] = directory + bytes(end - ifd - len(directory))
    return bytes(out)


def _refuse_overlaps(erased, kept):
    """Raise CorruptImage if a range to erase overlaps one to keep (a file whose metadata
    shares bytes with its image cannot be stripped without harming it)."""
    kept = sorted(kept)
    starts, reach, furthest = [start for start, _ in kept], [], 0
    for _, end in kept:
        furthest = max(furthest, end)
        reach.append(furthest)  # the furthest end among the ranges starting so far
    for start, end in erased:
        before = bisect.bisect_left(starts, end)  # the kept ranges starting before this one ends
        if before and reach[before - 1] > start:
            raise CorruptImage(f"corrupt TIFF: metadata at bytes {start}-{end} overlaps what is kept")


class _Tiff:
    """Reads a classic TIFF's directories; every offset is checked against the file."""

    def __init__(self, data):
        self.data = data
        self.order = "<" if data[:2] == b"II" else ">"

    def _unpack(self, fmt, at):
        try:
            return struct.unpack_from(self.order + fmt, self.data, at)
        except struct.error:
            raise CorruptImage(f"corrupt TIFF: an offset points past the end (byte {at})") from None

    def chain(self):
        """The offsets of IFD0 and each next directory."""
        (ifd,) = self._unpack("I", 4)
        seen = []
        while ifd:
            if ifd in seen or len(seen) >= 1024:
                raise CorruptImage("corrupt TIFF: its directories loop")
            seen.append(ifd)
            (count,) = self._unpack("H", ifd)
            (ifd,) = self._unpack("I", ifd + 2 + 12 * count)
        return seen

    def entries(self, ifd):
        """``(at, tag, type, count, value)`` of each entry: ``value`` is the (start, end) of
        a value stored out of the entry, else None."""
        (count,) = self._unpack("H", ifd)
        self._unpack("I", ifd + 2 + 12 * count)  # the whole directory is in the file
        entries = []
        for at in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind, number, offset = self._unpack("HHII", at)
            size = _TIFF_SIZES.get(kind, 1) * number
            value = None
            if size > 4:
                if offset + size > len(self.data):
                    raise CorruptImage(f"corrupt TIFF: the value of tag {tag} lies past the end")
                value = (offset, offset + size)
            entries.append((at, tag, kind, number, value))
        return entries

    def numbers(self, entry):
        at, _, kind, number, value = entry
        if kind not in (3, 4, 13):
            return []
        return list(self._unpack(f"{number}{'H' if kind == 3 else 'I'}", value[0] if value else at + 8))

    def image_data(self, entries):
        """The (start, end) of the strips, tiles or JPEG the entries point to."""
        by_tag = {entry[1]: entry for entry in entries}
        ranges = []
        for offsets, counts in _TIFF_IMAGE_DATA:
            if offsets in by_tag and counts in by_tag:
                starts, sizes = self.numbers(by_tag[offsets]), self.numbers(by_tag[counts])
                ranges.extend((start, start + size) for start, size in zip(starts, sizes))
        return ranges

    def reach(self, entry, depth):
        """What a dropped entry's value occupies: its bytes, and for a directory (EXIF, GPS,
        Interoperability) the directory with every value in it."""
        at, tag, kind, number, value = entry
        ranges = [value] if value else []
        if tag in _TIFF_DIRECTORIES and depth < 3:
            for ifd in self.numbers(entry):
                entries = self.entries(ifd)
                ranges.append((ifd, ifd + 6 + 12 * len(entries)))
                for inner in entries:
                    ranges.extend(self.reach(inner, depth + 1))
        return ranges


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
              imagetype.GIF: _gif, imagetype.TIFF: _tiff}
