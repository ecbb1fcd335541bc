"""Content is judged by its bytes: magic numbers for images, a short guess for the rest."""

import io
import struct
import zlib

import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from uploader import imagetype
from uploader.errors import CorruptImage, failure_class, source_may_recover
from testbed.fakes.image_source import MIN_SIZED_JPEG, declared_png, make_image, sized_jpeg_parts


def _ftyp(major, *compatible):
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\0\0\0\x08meta"


@pytest.mark.parametrize("fmt, mime, ext", [
    ("png", "image/png", "png"),
    ("jpg", "image/jpeg", "jpg"),
    ("gif", "image/gif", "gif"),
    ("tiff", "image/tiff", "tiff"),
    ("bmp", "image/bmp", "bmp"),
    ("webp", "image/webp", "webp"),
])
@pytest.mark.parametrize("tag", ["", "a-tag"])
def test_sniffs_generated_images(fmt, mime, ext, tag):
    assert imagetype.sniff(make_image(fmt, tag)) == imagetype.ImageType(mime, ext)


@pytest.mark.parametrize("data, mime", [
    (b"MM\0*\0\0\0\x08" + bytes(24), "image/tiff"),  # big-endian TIFF
    (b"II*\0\x08\0\0\0" + bytes(24), "image/tiff"),
    (b"GIF87a\x01\0\x01\0" + bytes(20), "image/gif"),
    (b"\xff\xd8\xff\xe1\0\x10Exif" + bytes(20), "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\x08acTL" + bytes(20), "image/png"),  # APNG counts as PNG
    (b"RIFF\x24\0\0\0WEBPVP8 \x18\0\0\0" + bytes(20), "image/webp"),  # lossy WebP
    (b"BM" + bytes(12) + struct.pack("<I", 124) + bytes(20), "image/bmp"),  # BITMAPV5HEADER
    (_ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
    (_ftyp(b"mif1", b"mif1", b"heic"), "image/heic"),
    (_ftyp(b"avif", b"mif1", b"avif"), "image/avif"),
    (_ftyp(b"mif1", b"mif1", b"avif"), "image/avif"),
    (_ftyp(b"mif1", b"mif1"), "image/heif"),
])
def test_sniffs_magic_numbers(data, mime):
    assert imagetype.sniff(data).mime == mime


@pytest.mark.parametrize("data", [
    b"", b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"BM is not a bitmap, just text",
    b"RIFF\0\0\0\0WAVEfmt ", _ftyp(b"isom", b"mp42"), b"<html></html>",
])
def test_sniff_refuses_non_images(data):
    assert imagetype.sniff(data) is None


@pytest.mark.parametrize("data, guess", [
    (b"", "empty"),
    (b"<!DOCTYPE html>\n<html><body>hi</body></html>", "HTML"),
    (b"  \n<HTML lang=en><head>", "HTML"),
    (b"\xef\xbb\xbf<!doctype html><title>x</title>", "HTML"),
    (b"<!-- comment -->\n<html>", "HTML"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "XML/SVG"),
    (b'<svg width="1" height="1"></svg>', "XML/SVG"),
    (b'{"error": "not found"}', "JSON"),
    (b"[1, 2, 3]\n", "JSON"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
    (b"Not Found\n", "plain text"),
    ("caf\u00e9 au lait".encode(), "plain text"),
    (b"{ not json", "plain text"),
    (b"\x00\x01\x02\x03\xfe\xff", "binary data"),
    (_ftyp(b"isom", b"mp42"), "MP4 video"),
    (b"\x1f\x8b\x08\0\0\0\0\0", "gzip data"),
    (make_image("webp"), "WebP image"),
    (_ftyp(b"heic", b"heic"), "HEIC image"),
])
def test_describe_guesses_what_it_is(data, guess):
    assert imagetype.describe(data) == guess


def test_imgur_accepts_the_classic_formats_only():
    assert imagetype.ACCEPTED_BY_IMGUR == {"image/jpeg", "image/png", "image/gif", "image/tiff", "image/bmp"}
    assert "image/webp" not in imagetype.ACCEPTED_BY_IMGUR


def test_image_type_is_frozen():
    with pytest.raises(AttributeError):
        imagetype.PNG.mime = "text/html"


@pytest.mark.parametrize("fmt", ["png", "jpg", "gif", "tiff", "bmp", "webp"])
def test_tags_make_distinct_bytes(fmt):
    assert make_image(fmt, "one") != make_image(fmt, "two")


def test_sniff_needs_only_a_prefix():
    for fmt in ("png", "jpg", "gif", "tiff", "bmp", "webp"):
        data = make_image(fmt, "x")
        assert imagetype.sniff(data[:imagetype.SNIFF_BYTES]) == imagetype.sniff(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_sniff_and_describe_never_fail(data):
    kind = imagetype.sniff(data)
    assert kind is None or kind.mime.startswith("image/")
    assert isinstance(imagetype.describe(data), str)


# --- structure of a whole body: cut short or garbage behind the magic number --------------------

VERIFIED = ["png", "jpg", "gif", "tiff", "bmp"]
NAMES = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "tiff": "TIFF", "bmp": "BMP"}


def verify(data):
    imagetype.verify(data, imagetype.sniff(data))


def corrupt_reason(data):
    with pytest.raises(CorruptImage) as caught:
        verify(data)
    return str(caught.value)


@pytest.mark.parametrize("fmt", VERIFIED + ["webp"])
@pytest.mark.parametrize("tag", ["", "a-tag", "x" * 300, "\u00e9t\u00e9 \U0001f600"])
def test_every_generated_image_is_whole(fmt, tag):
    verify(make_image(fmt, tag))


@pytest.mark.parametrize("size", [*range(MIN_SIZED_JPEG, 420), 20_000, 20_480, 65_537, 65_537 + 3,
                                  65_537 + 4, 3 * 65_537 + 1, 300_000, 1_048_576])
def test_every_sized_jpeg_is_whole(size):
    for tag in (f"/sized/{size}.jpg", f"/sized/{size}.jpg?pace=0.15"):
        data = b"".join(bytes(part) for part in sized_jpeg_parts(size, tag))
        assert len(data) == size
        verify(data)


@pytest.mark.parametrize("fmt", ["png", "jpg", "gif", "bmp"])
def test_every_cut_is_seen(fmt):
    """Any prefix of these formats lacks their end (IEND, EOI, trailer) or their stated size."""
    data = make_image(fmt, "cut")
    for end in range(imagetype.SNIFF_BYTES, len(data)):
        assert corrupt_reason(data[:end]).startswith(f"truncated {NAMES[fmt]}: "), end


def test_a_png_cut_after_50_bytes():
    data = make_image("png", "x" * 200)
    assert corrupt_reason(data[:50]) == "truncated PNG: chunk IDAT cut short"
    assert corrupt_reason(data[:-12]) == "truncated PNG: no IEND chunk"


def test_a_tiff_cut_inside_its_first_directory():
    data = make_image("tiff", "cut")
    assert corrupt_reason(data[:9]) == "truncated TIFF: first IFD at byte 8, got 9 bytes"
    assert corrupt_reason(data[:40]) == "truncated TIFF: first IFD (10 entries) cut short"
    for end in range(10, 8 + 2 + 12 * 10 + 4):
        assert corrupt_reason(data[:end]).startswith("truncated TIFF: "), end


def png_chunk(kind, payload, crc=None):
    crc = zlib.crc32(kind + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
GIF_HEADER = b"GIF89a\x01\x00\x01\x00\x00\x00\x00"  # 1x1, no global colour table
TIFF_HEADER = b"II*\x00"


def bad_idat_crc():
    data = bytearray(make_image("png", "crc"))
    data[data.index(b"IDAT") + 5] ^= 0x01  # one bit of the compressed pixels
    return bytes(data)


@pytest.mark.parametrize("data, reason", [
    (PNG_SIGNATURE + b"<html><body>gotcha</body></html>" * 3,
     "corrupt PNG: invalid chunk type 'l><b' at byte 12"),
    (PNG_SIGNATURE + png_chunk(b"IDAT", b"x") + png_chunk(b"IEND", b""),
     "corrupt PNG: first chunk is IDAT, not IHDR"),
    (bad_idat_crc(), "corrupt PNG: bad CRC in chunk IDAT"),
    (PNG_SIGNATURE + png_chunk(b"IHDR", bytes(13), crc=0) + png_chunk(b"IEND", b""),
     "corrupt PNG: bad CRC in chunk IHDR"),
    (PNG_SIGNATURE + b"\xff\xff\xff\xffIHDR" + bytes(40), "corrupt PNG: chunk IHDR claims 4294967295 bytes"),
    (PNG_SIGNATURE + png_chunk(b"IHDR", bytes(13)) + bytes(30), "corrupt PNG: invalid chunk type"),
    (JPEG_SOI + b"\xffgarbage, not a segment" + bytes(20), "corrupt JPEG: unexpected marker 0x67 at byte 3"),
    (make_image("jpg")[:20] + b"<html><body>an error page</body></html>",
     "corrupt JPEG: no marker at byte 20 (0x3C)"),
    (JPEG_SOI + b"\xff\xe0\x00\x01" + bytes(40), "corrupt JPEG: segment 0xE0 has length 1"),
    (JPEG_SOI + b"\xff\xe0\x00\x04ab\xff\xd8" + bytes(30), "corrupt JPEG: unexpected marker 0xD8 at byte 9"),
    (JPEG_SOI + b"\xff\xe0\x00\x04abXY" + bytes(30), "corrupt JPEG: no marker at byte 8 (0x58)"),
    (JPEG_SOI + b"\xff\xda\x00\x08" + bytes(6) + b"\x12\x34\xff\x00\xff\xd0" * 8,
     "truncated JPEG: no end-of-image marker"),
    (GIF_HEADER + b"garbage after the screen descriptor" + bytes(10), "corrupt GIF: unknown block 0x67 at byte 13"),
    (GIF_HEADER + b"!\xfe\x03abc\x00" + b"\x00" + bytes(20), "corrupt GIF: unknown block 0x00 at byte 20"),
    (GIF_HEADER + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00" + bytes(20),
     "corrupt GIF: unknown block 0x00 at byte 28"),
    (TIFF_HEADER + struct.pack("<I", 4) + bytes(40), "corrupt TIFF: first IFD at byte 4, inside the header"),
    (TIFF_HEADER + struct.pack("<I", 0x7FFFFFFF) + bytes(40), "truncated TIFF: first IFD at byte 2147483647"),
    (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 500) + bytes(40),
     "truncated TIFF: first IFD (500 entries) cut short"),
    (b"BM" + struct.pack("<IHHI", 10_000, 0, 0, 54) + struct.pack("<I", 40) + bytes(60),
     "truncated BMP: header says 10000 bytes, got 78"),
    (b"BM" + struct.pack("<IHHI", 0, 0, 0, 5000) + struct.pack("<I", 40) + bytes(60),
     "truncated BMP: pixels start at byte 5000, got 78 bytes"),
])
def test_garbage_behind_a_magic_number_is_refused(data, reason):
    assert imagetype.sniff(data) is not None
    assert corrupt_reason(data).startswith(reason)


@pytest.mark.parametrize("fmt, trailer", [
    ("png", bytes(16)), ("jpg", bytes(3)), ("jpg", b"ftyp-mp4 video of a motion photo"),
    ("gif", bytes(7)), ("png", b"trailing junk after IEND"),
])
def test_bytes_after_the_end_are_ignored(fmt, trailer):
    verify(make_image(fmt, "end") + trailer)


def test_a_jpeg_with_several_scans_and_restart_markers_is_whole():
    core = make_image("jpg", "progressive")
    sos = core.index(b"\xff\xda")
    scan = core[sos:-2]
    entropy = b"\x12\xff\x00\x34\xff\xd0\x56\xff\xff\xd1\x78"  # stuffing, RST0, fill + RST1
    data = core[:sos] + scan + entropy + b"\xff\xc4\x00\x02" + scan + b"\xff\xd9"
    verify(data)
    assert corrupt_reason(data[:-2]) == "truncated JPEG: no end-of-image marker"


def test_corrupt_images_are_final_source_failures():
    with pytest.raises(CorruptImage) as caught:
        verify(bad_idat_crc())
    assert failure_class(caught.value) == "source_broken"
    assert not source_may_recover(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VERIFIED), st.integers(min_value=0, max_value=400), st.binary(max_size=300))
def test_verify_says_corrupt_or_nothing(fmt, cut, tail):
    data = make_image(fmt, "fuzz")[:max(cut, imagetype.SNIFF_BYTES)] + tail
    kind = imagetype.sniff(data)
    try:
        imagetype.verify(data, kind)
    except CorruptImage as exc:
        assert str(exc).startswith(("truncated ", "corrupt "))


# --- width x height, read from the header ------------------------------------------------------

def pillow(fmt, size=(37, 23), **options):
    """An image made and read back by Pillow, the test-only decoder."""
    out = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(out, fmt, **options)
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).size == size
    return data


def header_end(data, kind):
    """The shortest prefix of ``data`` whose header gives the size (found by bisection:
    once a prefix has it, every longer one has it too)."""
    low, high = 0, len(data)
    while low < high:
        middle = (low + high) // 2
        if imagetype.dimensions(data[:middle], kind) is None:
            low = middle + 1
        else:
            high = middle
    return low


# A JPEG's frame header after a large EXIF segment, as in a camera's photo.
LARGE_EXIF = b"Exif\0\0MM\0*\0\0\0\x08\0\0" + bytes(60_000)


@pytest.mark.parametrize("fmt, options, header", [
    ("PNG", {}, 33),  # IHDR, its CRC included
    ("JPEG", {}, None), ("JPEG", {"progressive": True, "exif": LARGE_EXIF}, None),
    ("GIF", {}, 10),  # the logical screen
    ("BMP", {}, 26),
    ("TIFF", {}, None),
    ("WEBP", {"lossless": True}, 25), ("WEBP", {"lossless": False}, 30),
    ("WEBP", {"lossless": False, "exif": b"Exif\0\0II*\0\x08\0\0\0\0\0"}, 30),  # VP8X: the canvas
])
def test_width_and_height_come_from_the_header_as_soon_as_it_is_in(fmt, options, header):
    data = pillow(fmt, **options)
    kind = imagetype.sniff(data)
    assert imagetype.dimensions(data, kind) == (37, 23)
    end = header_end(data, kind)
    assert end == header if header else end < len(data)
    assert imagetype.dimensions(data[:end - 1], kind) is None
    if fmt == "JPEG":  # right after the frame header (SOFn), before any scan
        sof = next(stop for marker, _, stop in imagetype.jpeg_segments(data) if marker in imagetype.SOF_MARKERS)
        assert end == sof and end > 60_000 * ("exif" in options)


def test_bmp_sizes_in_every_header_and_row_order():
    rows = bytes(112 * 23)  # 37 BGR pixels, padded to 4 bytes, 23 rows
    core = b"BM" + struct.pack("<IHHI", 26 + len(rows), 0, 0, 26) + struct.pack("<IHHHH", 12, 37, 23, 1, 24)
    top_down = b"BM" + struct.pack("<IHHI", 54 + len(rows), 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, 37, -23, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    for data in (core + rows, top_down + rows):
        assert Image.open(io.BytesIO(data)).size == (37, 23)
        assert imagetype.dimensions(data, imagetype.BMP) == (37, 23)


def test_tiff_sizes_in_either_byte_order_short_or_long():
    entries = [(256, 4, 37), (257, 3, 23), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 12 * 9 + 4),
               (277, 3, 1), (278, 4, 23), (279, 4, 37 * 23)]
    ifd = struct.pack(">H", len(entries)) + b"".join(
        struct.pack(">HHI", tag, kind, 1) + (struct.pack(">HH", value, 0) if kind == 3 else struct.pack(">I", value))
        for tag, kind, value in entries) + bytes(4)
    data = b"MM\0*" + struct.pack(">I", 8) + ifd + bytes(37 * 23)
    assert Image.open(io.BytesIO(data)).size == (37, 23)
    assert imagetype.dimensions(data, imagetype.TIFF) == (37, 23)


def test_a_gif_measures_the_canvas_every_frame_needs():
    screen = b"GIF89a" + struct.pack("<HH", 10, 10) + b"\0\0\0"
    frame = b"," + struct.pack("<4HB", 5, 2, 100, 3, 0) + b"\x02\x02\x44\x01\0"  # at (5, 2), 100 x 3
    data = screen + frame + b";"
    imagetype.verify(data, imagetype.GIF)
    assert imagetype.dimensions(data, imagetype.GIF) == (105, 10)
    assert imagetype.dimensions(screen + frame[:5], imagetype.GIF) == (10, 10)  # the screen, till the frame is in


def test_a_100_byte_png_can_declare_3_6_gigapixels():
    data = declared_png(60_000, 60_000)
    assert len(data) < 100
    imagetype.verify(data, imagetype.PNG)  # whole as a file: only its size gives it away
    assert imagetype.dimensions(data, imagetype.PNG) == (60_000, 60_000)


def test_a_header_that_fails_its_crc_gives_no_size():
    data = bytearray(declared_png(60_000, 60_000))
    data[17] ^= 0xFF  # the width, under the CRC
    assert imagetype.dimensions(bytes(data), imagetype.PNG) is None


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VERIFIED + ["webp"]), st.integers(min_value=0, max_value=400), st.binary(max_size=300))
def test_dimensions_are_a_size_or_none_never_an_error(fmt, cut, tail):
    data = make_image(fmt, "fuzz")[:max(cut, imagetype.SNIFF_BYTES)] + tail
    size = imagetype.dimensions(data, imagetype.sniff(data))
    assert size is None or (len(size) == 2 and all(isinstance(n, int) and n >= 0 for n in size))
