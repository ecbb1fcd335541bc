"""image-service: re-hosts lists of image URLs on Imgur (or a local store) in the background."""

__version__ = "0.1.0"
