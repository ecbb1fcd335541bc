"""Pictures for the metadata tests: images that carry every kind of personal metadata
(each piece says SECRET), and what reads them back."""
import io
import struct

from PIL import Image, ImageCms, ImageSequence

from uploader import imagetype, metadata

SECRET = b"SECRET"  # every piece of metadata below says it; none of the pixel data does
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
ORIENTATION = 0x0112


def picture(size=(40, 30), mode="RGB"):
    """A picture with detail in it, so its compressed data is not trivial."""
    image = Image.new("RGB", size)
    image.putdata([((x * 13 + y * 7) % 256, (x * y) % 256, (x + 3 * y) % 256)
                   for y in range(size[1]) for x in range(size[0])])
    return image.convert(mode)


def saved(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def exif(orientation=6, endian=">"):
    """EXIF as a camera writes it: maker, artist, serial number, GPS and the Orientation."""
    tags = Image.Exif()
    tags.endian = endian
    if orientation is not None:
        tags[ORIENTATION] = orientation
    tags[0x010F] = "SECRET maker"
    tags[0x013B] = "SECRET artist"
    tags.get_ifd(0x8769)[0xA431] = "SECRET serial"  # BodySerialNumber
    gps = tags.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0), 27: b"SECRET method"})
    return tags.tobytes()


def decoded(data):
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(data):
    return [frame.convert("RGBA").tobytes() for frame in ImageSequence.Iterator(Image.open(io.BytesIO(data)))]


def strip(data):
    return metadata.strip(data, imagetype.sniff(data))


def assert_stripped(source, out):
    """Nothing secret left, a whole image of the same pixels, and a second strip changes nothing."""
    assert SECRET in source and SECRET not in out
    imagetype.verify(out, imagetype.sniff(out))
    assert pixels(out) == pixels(source)
    assert strip(out) is out


# --- JPEG --------------------------------------------------------------------------------------

def jpeg_segment(marker, payload):
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def segments(data):
    return [(marker, data[start:end]) for marker, start, end in imagetype.jpeg_segments(data)]


def with_segments(data, before, extra):
    """``data`` with ``extra`` segments before its first segment with marker ``before``."""
    at = next(start for marker, start, _ in imagetype.jpeg_segments(data) if marker == before)
    return data[:at] + b"".join(extra) + data[at:]


def image_data(data):
    """A JPEG's segments that are the image: frame, tables, scans with their coded data."""
    return [raw for marker, raw in segments(data) if not (0xE0 <= marker <= 0xEF or marker == 0xFE)]


def photo(**options):
    """A progressive JPEG with everything a phone and an editor put in one, and a video after it."""
    data = saved(picture(), "JPEG", quality=90, progressive=True, exif=exif(), icc_profile=ICC,
                 comment=b"SECRET comment", xmp=b"<x:xmpmeta>SECRET xmp</x:xmpmeta>", **options)
    data = with_segments(data, 0xDB, [
        jpeg_segment(0xED, b"Photoshop 3.0\0" + b"8BIM\x04\x04\0\0" + struct.pack(">I", 10) + b"SECRET IPTC"),
        jpeg_segment(0xE1, b"http://ns.adobe.com/xmp/extension/\0" + b"0" * 32 + struct.pack(">II", 10, 0)
                     + b"SECRET XMP"),
        jpeg_segment(0xE2, b"MPF\0" + b"SECRET multi-picture index"),
        jpeg_segment(0xEB, b"JP\0\0\0\0\0\x01" + b"SECRET C2PA manifest"),
        jpeg_segment(0xE0, b"JFXX\0\x10" + b"SECRET thumbnail"),
    ])
    later_scan = [start for marker, start, _ in imagetype.jpeg_segments(data) if marker == 0xDA][1]
    data = data[:later_scan] + jpeg_segment(0xFE, b"SECRET between scans") + data[later_scan:]
    return data + b"\0\0\0\x18ftypmp42 SECRET motion photo video"
