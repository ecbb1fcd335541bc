"""What the S3 tests share: credentials for moto, a service configuration naming a bucket,
small distinct PNGs, and the key an image's bytes are stored under."""
import hashlib
import struct
import zlib


KEY_ID, SECRET = "AKIDSYSTEMTEST", "s3-secret-that-must-never-show"

CHECKSUM_HEADERS = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm")


def png(value: int) -> bytes:
    """A 1x1 greyscale PNG whose pixel is ``value``: images that differ in their pixels."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
            ">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes([0, value % 256]))) + chunk(b"IEND", b""))


def s3_config(endpoint, bucket, **more):
    """Sections for S3 at ``endpoint``; ``image_host: auto`` picks it (a bucket is named)."""
    return {"image_host": "auto", "s3": {"bucket": bucket, "endpoint_url": endpoint,
                                         "prefix": "img/", "access_key_id": KEY_ID,
                                         "secret_access_key": SECRET}, **more}


def key_of(data: bytes) -> str:
    return f"img/{hashlib.sha256(data).hexdigest()}.png"
