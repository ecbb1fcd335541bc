"""Failure classes come from exception types, never from the wording of a reason."""
import pickle

import pytest

from uploader import errors
from uploader.errors import (AuthRejectedError, CorruptImage, FetchError, FetchTimeout, HostError,
                             InvalidSourceURL, NotAnImage, PermanentHostError, RetryableHostError,
                             SourceBroken, SourceHTTPError, SourceRefused, SourceTooLarge,
                             SourceUnreachable, TooManyPixels, TooManyRedirects, failure_class,
                             source_may_recover)


@pytest.mark.parametrize("exc, name, may_recover", [
    (SourceRefused("refused: 10.0.0.1 is a private address"), "refused", False),
    (SourceTooLarge("too large: over 20 MB"), "too_large", False),
    (TooManyPixels("image is 60000 x 60000 pixels, over the limit of 100,000,000 (images.max_pixels)"),
     "too_many_pixels", False),
    (FetchTimeout("timed out after 15 s"), "timeout", False),
    (NotAnImage("not an image: looks like HTML"), "not_an_image", False),
    (NotAnImage("unsupported image format: WebP (image/webp)"), "not_an_image", False),
    (SourceHTTPError(404), "source_http_error", False),
    (SourceBroken("truncated: got 100 of 2000 bytes"), "source_broken", True),
    (CorruptImage("corrupt PNG: bad CRC in chunk IDAT"), "source_broken", False),
    (InvalidSourceURL("unsupported URL scheme 'ftp'"), "invalid_url", False),
    (TooManyRedirects("too many redirects (more than 5)"), "too_many_redirects", False),
    (SourceUnreachable("connection refused by 192.0.2.1:80"), "source_unreachable", True),
    (FetchError("something nobody classified"), "source_unreachable", True),
])
def test_each_fetch_error_has_its_class(exc, name, may_recover):
    assert failure_class(exc) == name
    assert source_may_recover(exc) is may_recover


def test_the_class_ignores_the_wording():
    """Messages that the old prefix matching would have misread."""
    assert failure_class(NotAnImage("HTTP 500 from source")) == "not_an_image"
    assert failure_class(SourceRefused("timed out")) == "refused"
    assert not source_may_recover(SourceTooLarge("HTTP 503 from source"))
    assert source_may_recover(SourceUnreachable("refused: made up"))


@pytest.mark.parametrize("status, may_recover", [
    (429, True), (500, True), (502, True), (503, True), (504, True),
    (400, False), (401, False), (403, False), (404, False), (410, False), (501, False),
    (505, False), (204, False), (302, False)])
def test_http_statuses_that_may_pass(status, may_recover):
    exc = SourceHTTPError(status)
    assert str(exc) == f"HTTP {status} from source"
    assert exc.status == status
    assert source_may_recover(exc) is may_recover


def test_http_error_keeps_a_custom_reason_and_survives_pickling():
    exc = SourceHTTPError(302, "HTTP 302 from source without a Location header")
    copy = pickle.loads(pickle.dumps(exc))
    assert (type(copy), copy.status, str(copy)) == (SourceHTTPError, 302, str(exc))


@pytest.mark.parametrize("exc, name", [
    (AuthRejectedError("Imgur rejected the access token"), "auth_rejected"),
    (PermanentHostError("file type invalid"), "host_rejected"),
    (RetryableHostError("over capacity"), "host_unavailable"),
    (HostError("anything else"), "host_unavailable"),
    (RuntimeError("a bug"), "internal"),
])
def test_host_and_other_errors(exc, name):
    assert failure_class(exc) == name


def test_every_fetch_error_class_documents_itself():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, FetchError) and c is not FetchError]
    assert len(classes) == 11
    for cls in classes:
        assert cls.__doc__ and "\n" not in cls.__doc__.strip(), cls
        assert cls.failure_class in ("refused", "too_large", "timeout", "not_an_image",
                                     "source_http_error", "source_broken", "invalid_url",
                                     "too_many_redirects", "source_unreachable", "too_many_pixels"), cls
