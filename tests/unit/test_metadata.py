"""What is published carries no personal metadata: ``metadata.strip`` drops it without
re-encoding, before the SHA-256, on every host.

Pillow (test only) makes images that carry everything (EXIF with GPS, a serial number and
the Orientation, XMP, IPTC, comments, text chunks, application extensions, a "motion
photo" appended) and decodes what strip returns: the metadata is gone (every piece of it
says SECRET), what decides the look stays (Orientation, ICC profile, loop count), the
pixels are identical and, where the format shows it, so is the compressed data.
"""
import io
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image, ImageSequence, PngImagePlugin, TiffImagePlugin

from testbed.fakes.image_source import make_image
from uploader import imagetype, metadata
from uploader.errors import CorruptImage

from tests.pictures import (ICC, ORIENTATION, assert_stripped, decoded, exif,
                            image_data, jpeg_segment, photo, picture, pixels, saved, segments,
                            strip)


@pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")  # the source's MPF
def test_jpeg_keeps_the_orientation_the_icc_profile_and_every_byte_of_the_image():
    source = photo()
    out = strip(source)
    assert_stripped(source, out)
    image = decoded(out)
    assert dict(image.getexif()) == {ORIENTATION: 6}  # no GPS, maker, serial number: only this
    assert image.info["icc_profile"] == ICC
    assert "comment" not in image.info and "xmp" not in image.info
    assert image_data(out) == image_data(source)  # tables, frame, every scan: byte for byte
    assert [marker for marker, _ in segments(out) if 0xE0 <= marker <= 0xEF or marker == 0xFE] == [
        0xE0, 0xE1, 0xE2]  # JFIF, the minimal EXIF, the ICC profile
    assert out.endswith(b"\xff\xd9")  # the video after the image is gone


@pytest.mark.parametrize("endian, mark", [("<", b"II"), (">", b"MM")])
def test_the_orientation_is_kept_alone_in_the_sources_byte_order(endian, mark):
    out = strip(saved(picture(), "JPEG", exif=exif(orientation=8, endian=endian)))
    (app1,) = [raw for marker, raw in segments(out) if marker == 0xE1]
    order = "<" if mark == b"II" else ">"
    tiff = mark + struct.pack(order + "HIHHHIHHI", 42, 8, 1, ORIENTATION, 3, 1, 8, 0, 0)
    assert app1 == jpeg_segment(0xE1, b"Exif\0\0" + tiff)
    assert dict(decoded(out).getexif()) == {ORIENTATION: 8}


@pytest.mark.parametrize("orientation", [None, 1, 0, 9])  # absent, as stored, invalid
def test_no_exif_is_kept_without_an_orientation_worth_keeping(orientation):
    source = saved(picture(), "JPEG", exif=exif(orientation))
    out = strip(source)
    assert_stripped(source, out)
    assert 0xE1 not in [marker for marker, _ in segments(out)]


def test_a_jfif_thumbnail_is_dropped_and_its_header_kept():
    source = saved(picture(), "JPEG")
    (jfif,) = [raw for marker, raw in segments(source) if marker == 0xE0]
    thumbnail = jfif[4:16] + b"\x02\x01" + b"SECRET"  # 2 x 1 RGB pixels that spell it
    source = source.replace(jfif, jpeg_segment(0xE0, thumbnail), 1)
    out = strip(source)
    assert_stripped(source, out)
    assert out == saved(picture(), "JPEG")  # the JFIF header as it was without a thumbnail


def test_adobe_segment_stays_it_says_how_to_read_cmyk():
    source = saved(picture(mode="CMYK"), "JPEG", comment=b"SECRET comment")
    out = strip(source)
    assert_stripped(source, out)
    assert [marker for marker, _ in segments(out) if marker == 0xEE] == [0xEE]


def test_an_image_without_metadata_comes_back_as_the_same_object():
    for data in (saved(picture(), "JPEG"), saved(picture(), "PNG"), saved(picture(), "GIF"),
                 saved(picture(), "WEBP"), saved(picture(), "BMP"), saved(picture(), "TIFF")):
        assert strip(data) is data


@pytest.mark.parametrize("fmt", ["jpg", "png", "gif", "tiff", "bmp"])
def test_the_fake_sources_images_keep_their_tags_through_a_strip(fmt):
    # the rest of the suite relies on it: distinct names, distinct bytes stored
    assert strip(make_image(fmt, "a-tag")) == make_image(fmt, "a-tag")


# --- PNG ---------------------------------------------------------------------------------------

def png_chunks(data):
    return [(kind, data[start:end]) for kind, start, end in imagetype.png_chunks(data)]


def test_png_keeps_colour_transparency_the_orientation_and_every_idat_byte():
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "SECRET author")
    info.add_text("Comment", "SECRET compressed " * 20, zip=True)
    info.add_itxt("Description", "SECRET international", lang="en")
    info.add(b"tIME", struct.pack(">HBBBBB", 2026, 1, 2, 3, 4, 5))
    info.add(b"gAMA", struct.pack(">I", 45455))
    info.add(b"prVt", b"SECRET private chunk")
    source = saved(picture(), "PNG", pnginfo=info, exif=exif(), icc_profile=ICC, dpi=(300, 300),
                   transparency=(0, 0, 0)) + b"SECRET after IEND"
    out = strip(source)
    assert_stripped(source, out)
    kinds = [kind for kind, _ in png_chunks(out)]
    assert kinds == [kind for kind, _ in png_chunks(source)
                     if kind not in (b"tEXt", b"zTXt", b"iTXt", b"tIME", b"prVt")]
    assert {b"iCCP", b"gAMA", b"pHYs", b"tRNS", b"eXIf"} <= set(kinds)
    idat = [raw for kind, raw in png_chunks(source) if kind == b"IDAT"]
    assert [raw for kind, raw in png_chunks(out) if kind == b"IDAT"] == idat
    image = decoded(out)
    assert dict(image.getexif()) == {ORIENTATION: 6}
    assert image.info["icc_profile"] == ICC and image.text == {}


def test_an_apng_keeps_its_animation():
    frames = [picture(), picture().rotate(180)]
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "SECRET editor")
    source = saved(frames[0], "PNG", save_all=True, append_images=frames[1:], pnginfo=info)
    out = strip(source)
    assert_stripped(source, out)
    assert len(pixels(out)) == 2
    assert {b"acTL", b"fcTL", b"fdAT"} <= {kind for kind, _ in png_chunks(out)}


# --- WebP --------------------------------------------------------------------------------------

def webp_chunks(data):
    return [(kind, data[start:end]) for kind, start, end in imagetype.webp_chunks(data)]


def webp(chunks):
    body = b"".join(chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_drops_exif_and_xmp_and_fixes_the_flags_and_the_size(lossless):
    translucent = picture(mode="RGBA")
    translucent.putalpha(Image.linear_gradient("L").resize(translucent.size))
    made = saved(translucent, "WEBP", lossless=lossless, quality=80, exif=exif(),
                 xmp=b"<x:xmpmeta>SECRET xmp</x:xmpmeta>", icc_profile=ICC)
    unknown = b"SECR" + struct.pack("<I", 7) + b"SECRET!\0"  # an unknown chunk, odd size padded
    source = webp([raw for _, raw in webp_chunks(made)] + [unknown]) + b"SECRET after the RIFF"
    out = strip(source)
    assert_stripped(source, out)
    kept = {b"ICCP", b"ALPH", b"VP8 ", b"VP8L"}
    assert [raw for kind, raw in webp_chunks(out) if kind in kept] == [
        raw for kind, raw in webp_chunks(source) if kind in kept]  # the image chunks: byte for byte
    assert [kind for kind, _ in webp_chunks(out) if kind not in kept] == [b"VP8X", b"EXIF"]
    assert out[21:30] == source[21:30]  # VP8X: the canvas as it was; the flags are fixed
    flags = out[20]
    assert flags & 0x20 and flags & 0x10  # ICC profile, alpha: as they were
    assert flags & 0x08 and not flags & 0x04  # EXIF (the orientation), no XMP
    assert struct.unpack_from("<I", out, 4)[0] == len(out) - 8
    image = decoded(out)
    assert dict(image.getexif()) == {ORIENTATION: 6}
    assert image.info["icc_profile"] == ICC and "xmp" not in image.info


def test_webp_without_an_orientation_clears_the_exif_flag():
    source = saved(picture(), "WEBP", exif=exif(orientation=None), xmp=b"<x>SECRET</x>")
    out = strip(source)
    assert_stripped(source, out)
    assert [kind for kind, _ in webp_chunks(out)] == [b"VP8X", b"VP8 "]
    assert out[20] & (0x08 | 0x04) == 0


# --- GIF ---------------------------------------------------------------------------------------

def sub_blocks(payload):
    return b"".join(bytes([len(payload[i:i + 255])]) + payload[i:i + 255]
                    for i in range(0, len(payload), 255)) + b"\0"


def gif_blocks(data):
    return [(introducer, data[start:end]) for introducer, start, end in imagetype.gif_blocks(data)]


def test_gif_keeps_the_loop_count_and_every_frame_drops_comments_and_other_extensions():
    frames = [picture(mode="P"), picture().rotate(180).convert("P")]
    made = saved(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0, duration=100,
                 comment=b"SECRET comment")
    first_image = next(start for introducer, start, _ in imagetype.gif_blocks(made) if introducer == 0x2C)
    xmp = b"!\xff" + sub_blocks(b"XMP DataXMP" + b"<x:xmpmeta>SECRET xmp</x:xmpmeta>")
    comment = b"!\xfe" + sub_blocks(b"SECRET second comment " * 20)
    source = made[:first_image] + xmp + comment + made[first_image:] + b"SECRET after the trailer"
    out = strip(source)
    assert_stripped(source, out)
    assert decoded(out).info["loop"] == 0
    assert [raw for introducer, raw in gif_blocks(out) if introducer == 0x2C] == [
        raw for introducer, raw in gif_blocks(source) if introducer == 0x2C]
    labels = [raw[:2] for introducer, raw in gif_blocks(out) if introducer == 0x21]
    assert labels.count(b"!\xf9") == 2  # each frame's delay and disposal
    assert b"!\xff\x0bNETSCAPE2.0" in out and b"!\xfe" not in labels


# --- TIFF, BMP ---------------------------------------------------------------------------------

DROPPED_TIFF_TAGS = {271, 272, 306, 315, 316, 700, 33723, 34377, 34665, 34853}


def tiff_with_everything(pages=1):
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info.update({270: "a caption", 271: "SECRET maker", 315: "SECRET artist", 274: 6,
                 700: b"<x:xmpmeta>SECRET xmp</x:xmpmeta>", 33723: b"SECRET IPTC",
                 34377: b"8BIM SECRET Photoshop resources"})
    if pages == 1:  # Pillow writes a second page's EXIF and GPS directories but points to the first's
        info[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 27: b"SECRET method"}
        info[0x8769] = {0xA431: "SECRET serial", 0x927C: b"SECRET maker note " * 8}
    frames = [picture(), picture().rotate(180)][:pages]
    return saved(frames[0], "TIFF", tiffinfo=info, save_all=True, append_images=frames[1:])


def tiff_tags(data):
    return [dict(frame.tag_v2) for frame in ImageSequence.Iterator(Image.open(io.BytesIO(data)))]


@pytest.mark.parametrize("pages", [1, 2])
def test_tiff_loses_its_metadata_entries_in_place_and_keeps_every_pixel_byte(pages):
    source = tiff_with_everything(pages)
    out = strip(source)
    assert_stripped(source, out)
    assert len(out) == len(source)  # nothing moved: the directories shrank, the rest is zeros
    before, after = tiff_tags(source), tiff_tags(out)
    assert len(after) == pages
    for page_before, page_after in zip(before, after):
        assert DROPPED_TIFF_TAGS & set(page_before) and not DROPPED_TIFF_TAGS & set(page_after)
        assert page_after == {tag: value for tag, value in page_before.items() if tag not in DROPPED_TIFF_TAGS}
        assert page_after[274] == 6 and page_after[270] == "a caption"
        offset, count = page_after[273][0], page_after[279][0]
        assert out[offset:offset + count] == source[offset:offset + count]  # the strip, byte for byte


def test_tiff_metadata_sharing_bytes_with_the_image_is_refused():
    source = bytearray(saved(picture(), "TIFF", tiffinfo={700: b"<x>SECRET xmp</x>" * 4}))
    tiff = metadata._Tiff(bytes(source))
    entries = {entry[1]: entry for entry in tiff.entries(tiff.chain()[0])}
    strip_at = tiff.numbers(entries[273])[0]
    struct.pack_into("<I", source, entries[700][0] + 8, strip_at)  # XMP "lies" in the pixels
    with pytest.raises(CorruptImage, match="^corrupt TIFF: metadata at bytes .* overlaps what is kept$"):
        strip(bytes(source))


def test_bmp_passes_unchanged():
    data = saved(picture(), "BMP")
    assert strip(data) is data


# --- bad input ---------------------------------------------------------------------------------

SOURCES = {"jpeg": saved(picture((12, 8)), "JPEG", exif=exif(), comment=b"SECRET", xmp=b"<x>SECRET</x>"),
           "png": saved(picture((12, 8)), "PNG", exif=exif()),
           "webp": saved(picture((12, 8)), "WEBP", exif=exif(), xmp=b"<x>SECRET</x>"),
           "gif": saved(picture((12, 8), mode="P"), "GIF", comment=b"SECRET", loop=0),
           "tiff": saved(picture((12, 8)), "TIFF", tiffinfo={700: b"<x>SECRET</x>", 0x8825: {1: "N", 27: b"SECRET"}})}


def strips_or_says_corrupt(data, image_type):
    """Strip either returns a whole image, which strips to itself, or raises CorruptImage."""
    try:
        out = metadata.strip(data, image_type)
    except CorruptImage as exc:
        assert str(exc).startswith(("truncated ", "corrupt "))
        return
    assert metadata.strip(out, image_type) is out


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_any_byte_of_the_headers_changed_strips_or_says_corrupt(fmt):
    source, image_type = SOURCES[fmt], imagetype.sniff(SOURCES[fmt])
    for position in range(min(len(source), 1024)):  # segments, chunks, EXIF: where parsing is
        for value in {0x00, 0xFF, source[position] ^ 0x01}:
            strips_or_says_corrupt(source[:position] + bytes([value]) + source[position + 1:], image_type)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SOURCES)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                 max_size=4),
       st.integers(0, 10**6), st.binary(max_size=40))
def test_a_mangled_image_strips_or_says_corrupt(fmt, flips, cut, tail):
    data = bytearray(SOURCES[fmt])
    for position, value in flips:
        data[position % len(data)] = value
    data = bytes(data[:max(cut % (len(data) + 1), imagetype.SNIFF_BYTES)]) + tail
    strips_or_says_corrupt(data, imagetype.sniff(SOURCES[fmt]))


def test_strip_refuses_what_it_cannot_follow():
    with pytest.raises(CorruptImage, match="^truncated JPEG: no end-of-image marker$"):
        strip(photo()[:2000])
    image = [raw for kind, raw in webp_chunks(SOURCES["webp"]) if kind == b"VP8 "]
    with pytest.raises(CorruptImage, match="^corrupt WebP: VP8X chunk cut short$"):
        strip(webp([b"VP8X" + struct.pack("<I", 2) + b"\x08\0"] + image))


# --- through the service -----------------------------------------------------------------------
