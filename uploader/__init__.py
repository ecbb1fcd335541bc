"""image-service: re-hosts lists of image URLs on S3-compatible storage, Imgur or its own disk, in the background."""

__version__ = "0.1.0"
