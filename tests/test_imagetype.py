"""Content is judged by its bytes: magic numbers for images, a short guess for the rest."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from uploader import imagetype
from tests.fakes.image_source import make_image


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
