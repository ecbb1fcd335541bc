"""The OpenAPI description (``uploader/openapi.json``): valid, served as is, and true of the service.

One service runs for the whole module. It is seeded with a finished job (one image
uploaded to the local host, one URL refused) so that every documented success body is
seen for real, then schemathesis fuzzes every operation against the description:
no 5xx, only documented status codes, content types, headers and bodies, invalid input
refused and other methods answered 405. Fuzzed URLs are never fetched: every address but
loopback is denied and loopback is a private network, refused too (the seed job's image
source is reached as ``localhost``, the one allowed name).
"""
import json
import re

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS as REGISTERED_CHECKS, load_all_checks
from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

from testbed.fakes.image_source import ImageSource, make_image
from uploader.hosts.local import NAME_PATTERN
from uploader.submission import MAX_URL_LENGTH, url_problem

from tests.support import REPO, EVERYWHERE_BUT_LOOPBACK, ServiceProcess, write_config

pytestmark = pytest.mark.system  # starts processes or servers

SPEC_PATH = REPO / "uploader" / "openapi.json"
SPEC = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
MAX_URLS = 20
# Every address except loopback, so that no fuzzed URL can reach beyond this machine even
# where the tests have a network (names are still looked up).
REFUSED_URL = "http://192.0.2.1/a.png"  # a documentation address: refused without a lookup

# Not ``positive_data_acceptance``: a schema-valid body may rightly be refused, with a
# documented status, for what a schema cannot say (more than ``max_urls_per_job`` distinct
# URLs: 413; a URL the pattern admits but the service does not, like ``http://:80/``: 400).
load_all_checks()
CHECKS = REGISTERED_CHECKS.get_by_names([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",  # whatever breaks the schema is refused
    "unsupported_method",  # a method a path does not list answers 405 with `Allow`
])

# Positive and negative data, explicit examples and random cases; the same cases every run
# (a failure reproduces), and nothing written to the Hypothesis database.
CONFIG = schemathesis.Config.from_dict({
    "generation": {"mode": "all", "deterministic": True, "database": "none"},
    "phases": {"examples": {"enabled": True}, "fuzzing": {"enabled": True},
               "coverage": {"enabled": True}, "stateful": {"enabled": False}},
})
schema = schemathesis.openapi.from_dict(json.loads(SPEC_PATH.read_text(encoding="utf-8")),
                                        config=CONFIG)


# -- the document itself ---------------------------------------------------------------------

def deref(node):
    """``node``, or what its local ``$ref`` points to."""
    while isinstance(node, dict) and "$ref" in node:
        assert node["$ref"].startswith("#/"), node["$ref"]
        target = SPEC
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def resolve(node):
    """``node`` with every ``$ref`` replaced by its target (the document has no cycles)."""
    node = deref(node)
    if isinstance(node, dict):
        return {key: resolve(value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item) for item in node]
    return node


def as_json_schema(schema_30):
    """An OpenAPI 3.0 schema object as plain JSON Schema (``nullable`` is its only dialect here)."""
    if isinstance(schema_30, list):
        return [as_json_schema(item) for item in schema_30]
    if not isinstance(schema_30, dict):
        return schema_30
    out = {key: as_json_schema(value) for key, value in schema_30.items()
           if key not in ("nullable", "example")}
    if schema_30.get("nullable"):
        out["type"] = [out["type"], "null"]
    return out


def validator_for(schema_30):
    return jsonschema_rs.Draft4Validator(as_json_schema(resolve(schema_30)), validate_formats=True)


def operations():
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def test_document_is_valid_openapi_3_0():
    assert SPEC["openapi"] == "3.0.3"
    OPENAPI_30_VALIDATOR.validate(SPEC)  # the OpenAPI 3.0 meta-schema schemathesis ships
    resolve(SPEC)  # every $ref points somewhere
    assert SPEC["servers"] == [{"url": "/"}]
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    # Kept in one layout, 2-space indents; after an edit, reformat with
    # python -c 'import json,sys; d=json.load(open(sys.argv[1])); open(sys.argv[1],"w").write(json.dumps(d, indent=2, ensure_ascii=False)+"\n")' uploader/openapi.json
    assert SPEC_PATH.read_text(encoding="utf-8") == json.dumps(SPEC, indent=2, ensure_ascii=False) + "\n"


def test_documents_every_route_and_method():
    assert sorted((path, method) for path, method, _ in operations()) == [
        ("/healthz", "get"),
        ("/i/{name}", "get"),
        ("/i/{name}", "head"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/images", "get"),
        ("/v1/images/upload", "get"),
        ("/v1/images/upload", "post"),
        ("/v1/images/upload/{jobId}", "delete"),
        ("/v1/images/upload/{jobId}", "get"),
        ("/v1/images/upload/{jobId}/retry", "post"),
        ("/v1/images/{imageId}", "delete"),
    ]


def test_every_error_body_is_the_error_schema():
    error = {"$ref": "#/components/schemas/Error"}
    for path, method, operation in operations():
        responses = operation["responses"]
        assert "405" in responses, (path, method)
        for status, response in responses.items():
            response = deref(response)
            if int(status) < 400 or (path, status) == ("/healthz", "503"):
                continue
            if method == "head" or status in ("204", "416"):  # answers without a body
                assert "content" not in response, (path, method, status)
                continue
            assert list(response["content"]) == ["application/json"], (path, method, status)
            assert response["content"]["application/json"]["schema"] == error, (path, method, status)


def test_examples_match_their_schemas():
    checked = 0

    def walk(node):
        nonlocal checked
        if isinstance(node, dict):
            if "example" in node and ("schema" in node or "type" in node):
                validator_for(node.get("schema", node)).validate(node["example"])
                checked += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(resolve(SPEC))  # media types, parameters, headers and schemas
    assert checked >= 15


def test_schemas_agree_with_the_code():
    """Patterns and limits in the description are the ones the service applies."""
    schemas = SPEC["components"]["schemas"]
    name = SPEC["components"]["parameters"]["ImageName"]["schema"]["pattern"]
    assert name == NAME_PATTERN.pattern
    image_url = schemas["ImageUrl"]
    assert image_url["maxLength"] == MAX_URL_LENGTH
    pattern = re.compile(image_url["pattern"])
    # Everything the service accepts matches the pattern (the pattern may admit a little more:
    # the fuzz below checks that whatever breaks it is refused).
    accepted = ["http://x", "HTTPS://example.com", "https://example.com:8443/a@b?c=d#e",
                "http://[::1]:80/", "http://h\u00e9.example/\u00e9", "http://a/" + "b" * 2000,
                "http://host:/"]
    for url in accepted:
        assert url_problem(url) == "" and pattern.match(url), url
    refused = ["ftp://example.com/a.png", "http:/x", "http://", "http://u:p@host/",
               "http://@host/", "https://a b/", "http://a/\x7f", "//example.com/a.png"]
    for url in refused:
        assert url_problem(url) and not pattern.match(url), url
    job = schemas["Job"]
    assert job["properties"]["status"]["enum"] == ["pending", "in-progress", "complete"]
    assert schemas["UrlState"]["properties"]["state"]["enum"] == [
        "queued", "in_flight", "complete", "failed"]


# -- the live service ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_source():
    with ImageSource() as source:
        yield source


@pytest.fixture(scope="module")
def service(tmp_path_factory, image_source):
    directory = tmp_path_factory.mktemp("openapi")
    process = ServiceProcess(write_config(
        directory,
        server={"max_urls_per_job": MAX_URLS},
        workers={"processes": 1, "uploads_per_process": 1},
        fetch={"allow_private_networks": False, "allowed_hosts": ["localhost"],
               "denied_hosts": EVERYWHERE_BUT_LOOPBACK, "timeout_seconds": 2},
    )).start()
    # The description's example image name exists, so the examples phase sees a 200 too.
    example = SPEC["components"]["parameters"]["ImageName"]["example"]
    (directory / "images" / example).write_bytes(make_image("png", "example"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def seed_job(service, image_source):
    """A finished job: one image uploaded to the local host, one URL refused."""
    good = image_source.url_for("/img/openapi.png").replace("127.0.0.1", "localhost")
    refused = image_source.url_for("/img/refused.png")  # 127.0.0.1: a loopback address
    job = service.wait_job(service.post_job([good, refused]))
    assert [entry["state"] for entry in job["urls"]] == ["complete", "failed"], job
    return job


def call(operation, service, **parameters):
    """Call ``operation`` (``"GET /path"``) with ``parameters`` and run every check on the answer."""
    method, path = operation.split(" ", 1)
    case = schema[path][method].Case(**parameters)
    return case.call_and_validate(base_url=service.url, checks=CHECKS)


def test_served_document_is_the_file(service):
    answer = requests.get(f"{service.url}/openapi.json", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.content == SPEC_PATH.read_bytes()


def test_loads_from_the_running_service(service):
    loaded = schemathesis.openapi.from_url(f"{service.url}/openapi.json", config=CONFIG)
    assert loaded.raw_schema == SPEC
    labels = {result.ok().label for result in loaded.get_all_operations()}
    assert {"POST /v1/images/upload", "GET /v1/images/upload/{jobId}"} <= labels


def test_success_bodies_of_a_finished_job_conform(service, seed_job):
    answer = call("GET /v1/images/upload/{jobId}", service, path_parameters={"jobId": seed_job["id"]})
    assert answer.status_code == 200
    (link,) = answer.json()["uploaded"]["complete"]
    answer = call("GET /v1/images", service)
    assert link in answer.json()["uploaded"]
    name = link.rsplit("/", 1)[1]
    answer = call("GET /i/{name}", service, path_parameters={"name": name})
    assert answer.status_code == 200 and answer.headers["content-type"] == ["image/png"]
    answer = call("GET /healthz", service)
    assert answer.status_code == 200


def test_partial_and_conditional_image_answers_conform(service, seed_job):
    name = seed_job["urls"][0]["link"].rsplit("/", 1)[1]
    whole = call("GET /i/{name}", service, path_parameters={"name": name})
    assert whole.status_code == 200
    size = len(whole.content)
    part = call("GET /i/{name}", service, path_parameters={"name": name}, headers={"Range": "bytes=0-7"})
    assert part.status_code == 206 and part.content == whole.content[:8]
    outside = call("GET /i/{name}", service, path_parameters={"name": name},
                   headers={"Range": f"bytes={10 * size}-"})
    assert outside.status_code == 416
    etag = whole.headers["etag"][0]
    same = call("GET /i/{name}", service, path_parameters={"name": name}, headers={"If-None-Match": etag})
    assert same.status_code == 304
    head = call("HEAD /i/{name}", service, path_parameters={"name": name})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == [str(size)]
    assert call("HEAD /i/{name}", service, path_parameters={"name": "Nothing.png"}).status_code == 404


def test_accepted_and_pending_bodies_conform(service):
    answer = call("POST /v1/images/upload", service,
                  body={"urls": [REFUSED_URL, REFUSED_URL]})
    assert answer.status_code == 202
    job_id = answer.json()["jobId"]
    assert answer.headers["location"] == [f"/v1/images/upload/{job_id}"]
    assert call("GET /v1/images/upload/{jobId}", service,
                path_parameters={"jobId": job_id}).status_code == 200
    job = service.wait_job(job_id)
    assert job["urls"][0]["state"] == "failed"


@pytest.mark.parametrize("body, status", [
    (b"not json", 400),
    (b"[]", 400),
    (b'{"urls": []}', 400),
    (json.dumps({"urls": [f"http://h{n}.invalid/" for n in range(MAX_URLS + 1)]}).encode(), 413),
])
def test_refusals_conform(service, body, status):
    answer = call("POST /v1/images/upload", service, body=body,
                  headers={"Content-Type": "application/json"})
    assert answer.status_code == status


ALLOWED = {"/v1/images/upload": "GET, POST", "/v1/images": "GET", "/healthz": "GET",
           "/metrics": "GET", "/openapi.json": "GET", "/i/abcdefg.png": "GET, HEAD",
           "/v1/images/upload/5f6c1c4a-3a0e-4f6e-8f1c-2b0b2b7f9d11": "GET, DELETE",
           "/v1/images/upload/5f6c1c4a-3a0e-4f6e-8f1c-2b0b2b7f9d11/retry": "POST",
           "/v1/images/q2X9vR1kLmPa": "DELETE"}


@pytest.mark.parametrize("body", [None, b'{"urls": ["https://example.com/cat.png"]}'],
                         ids=["no-body", "body"])
@pytest.mark.parametrize("method, path", [
    ("PUT", "/v1/images/upload"), ("DELETE", "/v1/images/upload"), ("PATCH", "/v1/images/upload"),
    ("POST", "/v1/images"), ("PUT", "/healthz"), ("POST", "/openapi.json"),
    ("PATCH", "/i/abcdefg.png"), ("POST", "/v1/images/upload/5f6c1c4a-3a0e-4f6e-8f1c-2b0b2b7f9d11"),
    ("GET", "/v1/images/upload/5f6c1c4a-3a0e-4f6e-8f1c-2b0b2b7f9d11/retry"),
    ("GET", "/v1/images/q2X9vR1kLmPa"), ("PUT", "/v1/images/q2X9vR1kLmPa"),
])
def test_other_methods_answer_405_with_allow_and_the_error_schema(service, method, path, body):
    answer = requests.request(method, f"{service.url}{path}", data=body, timeout=10)
    assert answer.status_code == 405
    assert answer.headers["Content-Type"].startswith("application/json")
    validator_for(SPEC["components"]["schemas"]["Error"]).validate(answer.json())
    assert answer.headers.get("Allow") == ALLOWED[path]


@pytest.mark.parametrize("path", [
    "/v1/images/upload/%FF",  # not UTF-8
    "/i/%FF",
    "/i/..%2Fconfig.yaml",  # outside the image directory
    "/i/..%2Fimages%2ForunSTu.png",  # inside it, but not a name links use
])
def test_bad_path_parameters_answer_404(service, path):
    answer = requests.get(f"{service.url}{path}", timeout=10)
    assert answer.status_code == 404, answer.text
    validator_for(SPEC["components"]["schemas"]["Error"]).validate(answer.json())


def test_a_url_that_is_not_unicode_is_refused_and_the_service_lives_on(start_service):
    """JSON can spell a lone surrogate (\\ud800), which no store can encode."""
    service = start_service(workers={"processes": 1, "uploads_per_process": 1},
                            fetch={"allow_private_networks": False, "denied_hosts": EVERYWHERE_BUT_LOOPBACK})
    answer = call("POST /v1/images/upload", service, body=b'{"urls": ["http://a.invalid/\\ud800"]}',
                  headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert "urls[0]" in answer.json()["error"]
    assert requests.get(f"{service.url}/healthz", timeout=10).status_code == 200
    service.post_job([REFUSED_URL])


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz(case, service, seed_job):
    case.call_and_validate(base_url=service.url, checks=CHECKS, timeout=10)
