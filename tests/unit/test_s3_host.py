"""The S3 host client (``hosts.s3``) in-process, against moto's S3 server on loopback and a
proxy in front of it that fails when told: keys, headers, links and deletes; what each
refusal becomes; the checksum setting; the upload policy's retries and pauses for S3;
the start-up probe of the bucket."""
import hashlib

import pytest
import requests

from uploader import cli, preflight
from uploader.config import BackoffConfig, config_from_dict
from uploader.errors import AuthRejectedError, PermanentHostError, RetryableHostError
from uploader.hosts import gate_settings
from uploader.hosts.citizen import PoliteUploader
from uploader.hosts.s3 import CACHE_CONTROL, S3Host, new_client
from uploader.page import image_origins
from uploader.backends.sqlite.coordinator import Coordinator

from tests.support import loopback_only, write_config
from tests.doubles import Report
from tests.s3support import CHECKSUM_HEADERS, png

KEY_ID, SECRET = "AKIDTESTS3HOST", "s3cr3t-never-shown-anywhere"


@pytest.fixture
def bucket(moto_s3):
    return moto_s3.new_bucket()


def host_at(endpoint, bucket, **settings):
    settings = {"prefix": "img/", "access_key_id": KEY_ID, "secret_access_key": SECRET,
                **settings}
    return S3Host(bucket=bucket, endpoint_url=endpoint, link_base=f"{endpoint}/{bucket}",
                  **settings)


def test_an_image_is_stored_under_its_own_hash_served_and_deleted(moto_s3, s3_proxy, bucket):
    host = host_at(s3_proxy.url, bucket)
    data = png(1)
    uploaded = host.upload(data, filename="cat.png", mime="image/png")
    key = f"img/{hashlib.sha256(data).hexdigest()}.png"
    assert uploaded.deletehash == key
    assert uploaded.link == f"{s3_proxy.url}/{bucket}/{key}"
    served = requests.get(uploaded.link, timeout=10)  # as anyone would, without credentials
    assert served.status_code == 200 and served.content == data
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["Cache-Control"] == CACHE_CONTROL == "public, max-age=31536000, immutable"
    assert host.upload(data, filename="other-name.png", mime="image/png") == uploaded  # same bytes
    assert moto_s3.keys(bucket) == [key]
    assert host.delete(key) is True
    assert requests.get(uploaded.link, timeout=10).status_code in (403, 404)
    assert moto_s3.keys(bucket) == []
    deletes = len(s3_proxy.seen("DELETE"))
    assert host.delete("img/../../other-bucket/x.png") is False  # not one of our keys
    assert host.delete("elsewhere/" + key[4:]) is False
    assert len(s3_proxy.seen("DELETE")) == deletes  # nothing sent for them


def test_no_checksum_header_is_sent_unless_required(moto_s3, s3_proxy, bucket):
    """boto3 >= 1.36 adds CRC checksum headers to every upload, which many S3-compatible
    stores refuse; ours are made with ``when_required``. The same upload from a client
    with boto3's defaults carries them (so this test can fail)."""
    host_at(s3_proxy.url, bucket).upload(png(2), filename="a.png", mime="image/png")
    new_client(endpoint_url=s3_proxy.url, region_name="us-east-1", aws_access_key_id="test",
               aws_secret_access_key="test").put_object(Bucket=bucket, Key="by-default.png",
                                                        Body=png(3))
    ours, theirs = s3_proxy.seen("PUT")
    assert not [name for name in ours.headers if name.startswith(CHECKSUM_HEADERS)]
    assert [name for name in theirs.headers if name.startswith(CHECKSUM_HEADERS)]


@pytest.mark.parametrize("kind, code, error", [
    ("access_denied", "AccessDenied", AuthRejectedError),
    ("invalid_key", "InvalidAccessKeyId", AuthRejectedError),
    ("bad_signature", "SignatureDoesNotMatch", AuthRejectedError),
    ("internal", "InternalError", RetryableHostError),
    ("slowdown", "SlowDown", RetryableHostError),
])
def test_each_refusal_names_the_bucket_and_its_cause(s3_proxy, bucket, kind, code, error):
    s3_proxy.fail_next(1, kind)
    with pytest.raises(error) as info:
        host_at(s3_proxy.url, bucket).upload(png(4), filename="a.png", mime="image/png")
    reason = str(info.value)
    assert reason.startswith(f"S3 bucket '{bucket}': ") and f"({code}, HTTP " in reason
    assert getattr(info.value, "pool_wide", False) is (kind == "slowdown")  # everyone waits


def test_a_missing_bucket_fails_for_good(s3_proxy):
    with pytest.raises(PermanentHostError) as info:
        host_at(s3_proxy.url, "no-such-bucket-here").upload(png(5), filename="a.png",
                                                            mime="image/png")
    assert str(info.value) == ("S3 bucket 'no-such-bucket-here': no such bucket: create it, or "
                               "check s3.bucket and s3.endpoint_url (NoSuchBucket, HTTP 404)")


def test_a_slowdown_passes_on_retry_after_and_the_secret_never_shows(s3_proxy, bucket):
    s3_proxy.fail_next(1, "slowdown", retry_after=7,
                       message=f"slow down, {KEY_ID}, whose secret is {SECRET}")
    with pytest.raises(RetryableHostError) as info:
        host_at(s3_proxy.url, bucket).upload(png(6), filename="a.png", mime="image/png")
    assert info.value.retry_after == 7 and info.value.pool_wide
    assert SECRET not in str(info.value) and KEY_ID not in str(info.value)
    assert "slow down, ***, whose secret is ***" in str(info.value)


def test_no_answer_in_time_and_a_dropped_connection_are_worth_another_try(s3_proxy, bucket):
    host = host_at(s3_proxy.url, bucket, read_timeout=0.3)
    s3_proxy.fail_next(1, "slow", delay=5)
    with pytest.raises(RetryableHostError, match=r"timed out after 0.3 s"):
        host.upload(png(7), filename="a.png", mime="image/png")
    s3_proxy.fail_next(1, "drop")
    with pytest.raises(RetryableHostError, match=r"^S3 bucket '[^']+': unreachable: "):
        host.upload(png(8), filename="a.png", mime="image/png")
    host.upload(png(9), filename="a.png", mime="image/png")  # and then it works again


def test_empty_keys_leave_credentials_to_boto3s_chain(s3_proxy, bucket, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    with loopback_only(monkeypatch):  # nothing beyond this machine is asked for them
        with pytest.raises(AuthRejectedError, match="no credentials"):
            host_at(s3_proxy.url, bucket, access_key_id="", secret_access_key="").upload(
                png(10), filename="a.png", mime="image/png")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-environment")
        host_at(s3_proxy.url, bucket, access_key_id="", secret_access_key="").upload(
            png(11), filename="a.png", mime="image/png")
    (sent,) = s3_proxy.uploads()
    assert "Credential=from-the-environment/" in sent.headers["authorization"]


def policy(host, coordinator):
    return PoliteUploader(host, coordinator=coordinator, credentials=None, owner=("w0", 1),
                          max_attempts=4, backoff=BackoffConfig(0.05, 0.1))


def s3_gate():
    return Coordinator(gate_settings(config_from_dict({"s3": {"bucket": "pics"}}, environ={})))


def test_the_policy_retries_5xx_and_fails_refusals_at_once(s3_proxy, bucket):
    coordinator = s3_gate()
    uploader = policy(host_at(s3_proxy.url, bucket), coordinator)
    s3_proxy.fail_next(2, "internal")
    report = Report()
    uploader.upload(png(12), filename="a.png", mime="image/png", report=report)
    assert report.attempts == 3 and len(s3_proxy.uploads()) == 3
    s3_proxy.fail_next(1, "access_denied")
    report = Report()
    with pytest.raises(AuthRejectedError, match="AccessDenied"):
        uploader.upload(png(13), filename="a.png", mime="image/png", report=report)
    assert report.attempts == 1 and len(s3_proxy.uploads()) == 4  # no retry of a refusal
    s3_proxy.fail_next(10, "internal")
    report = Report()
    with pytest.raises(RetryableHostError, match="InternalError"):
        uploader.upload(png(14), filename="a.png", mime="image/png", report=report)
    assert report.attempts == 4  # max_attempts, then the URL fails: no endless retries


def test_a_slowdown_pauses_every_upload_of_the_pool(s3_proxy, bucket):
    coordinator = s3_gate()
    uploader = policy(host_at(s3_proxy.url, bucket), coordinator)
    s3_proxy.fail_next(1, "slowdown", retry_after=0.5)
    report = Report()
    uploader.upload(png(15), filename="a.png", mime="image/png", report=report)
    assert report.attempts == 2
    refused, retried = s3_proxy.uploads()
    assert refused.status == 503 and retried.at - refused.at >= 0.5
    assert coordinator.gate.state.pause_why.startswith(
        f"S3 asked us to slow down: S3 bucket '{bucket}': Please reduce your request rate.")


def test_the_probe_writes_and_deletes_an_object_and_says_what_failed(moto_s3, s3_proxy, bucket):
    def config(name=bucket):
        return config_from_dict({"image_host": "s3", "s3": {
            "bucket": name, "endpoint_url": s3_proxy.url, "prefix": "img/",
            "access_key_id": KEY_ID, "secret_access_key": SECRET},
            "storage": {"path": "/nonexistent-dir/store.sqlite3"}}, environ={})

    def bucket_problems(config):
        return [line for line in preflight.problems(config) if "storage.path" not in line]

    assert bucket_problems(config()) == []
    assert moto_s3.keys(bucket) == []  # the probe object is gone again
    probes = [r.key for r in s3_proxy.seen() if r.method in ("PUT", "DELETE")]
    assert len(probes) == 2 and probes[0] == probes[1] and probes[0].startswith("img/.image-")
    (line,) = bucket_problems(config("not-a-bucket"))
    assert line.startswith(f"S3 bucket 'not-a-bucket' at {s3_proxy.url}: cannot write a probe"
                           " object: no such bucket") and "(NoSuchBucket, HTTP 404)" in line
    s3_proxy.fail_next(1, "access_denied")
    (line,) = bucket_problems(config())
    assert "cannot write a probe object: access denied" in line and "AccessDenied" in line
    s3_proxy.fail_next(1, "access_denied", method="DELETE")
    (line,) = bucket_problems(config())
    assert "wrote a probe object but cannot delete it" in line and "AccessDenied" in line
    assert SECRET not in line and KEY_ID not in line


def test_the_page_lets_thumbnails_load_from_where_links_point():
    def origins(s3):
        return image_origins(config_from_dict({"s3": {"bucket": "pics", **s3}}, environ={}))
    assert origins({"public_url": "https://cdn.example.com/images/"}) == ["https://cdn.example.com"]
    assert origins({"endpoint_url": "http://127.0.0.1:9000"}) == ["http://127.0.0.1:9000"]
    assert origins({"region": "eu-west-3"}) == ["https://pics.s3.eu-west-3.amazonaws.com"]


def test_bin_serve_checks_the_bucket_and_hides_the_secret(tmp_path, capsys, moto_s3, s3_proxy,
                                                          bucket):
    def s3_config(name):
        directory = tmp_path / name
        directory.mkdir()
        return str(write_config(directory, image_host="auto", s3={
            "bucket": name, "endpoint_url": s3_proxy.url, "access_key_id": KEY_ID,
            "secret_access_key": SECRET}))

    assert cli.main(["--config", s3_config(bucket), "--check-config"]) == 0
    printed = capsys.readouterr()
    assert '"secret_access_key": "***"' in printed.out and '"access_key_id": "***"' in printed.out
    assert SECRET not in printed.out + printed.err and KEY_ID not in printed.out + printed.err
    assert [r.method for r in s3_proxy.seen()] == ["PUT", "DELETE"]  # a probe, gone again
    assert moto_s3.keys(bucket) == []
    missing = s3_config("no-such-bucket")
    for args, prefix in ((["--check-config"], "problem: "), ([], "cannot start: ")):
        assert cli.main(["--config", missing, *args]) == 2  # bin/serve makes the same check
        lines = capsys.readouterr().err.splitlines()
        assert [line for line in lines if line.startswith(prefix)] == lines[:1]  # first, alone
        line = lines[0]
        assert line == (f"{prefix}S3 bucket 'no-such-bucket' at {s3_proxy.url}: cannot write a "
                        "probe object: no such bucket: create it, or check s3.bucket and "
                        "s3.endpoint_url (NoSuchBucket, HTTP 404)")
