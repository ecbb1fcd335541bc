"""The docs: README.md is the front door and docs/ a site that builds with every warning an error.

The site is built once, in this process (mkdocs's own build, strict as mkdocs.yml says), into a
temporary directory; the tests read what it wrote.
"""
import json
import re
from pathlib import Path

import pytest
from mkdocs.commands.build import build
from mkdocs.config import load_config

from tests.support import REPO

README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site's directory. A warning (a broken link or anchor, a page outside the nav, a
    missing snippet) fails the build: mkdocs.yml says strict, and the test says it again."""
    site_dir = tmp_path_factory.mktemp("site")
    config = load_config(config_file=str(REPO / "mkdocs.yml"), site_dir=str(site_dir), strict=True)
    build(config)
    return site_dir


def page_html(site, page):
    """The HTML mkdocs wrote for a page of docs/ (directory URLs: x.md -> x/index.html)."""
    name = Path(page).with_suffix("")
    return (site / ("index.html" if name.name == "index" else name / "index.html")).read_text()


def test_the_site_builds_strictly(site):
    assert (site / "index.html").is_file()
    assert (site / "operating-postgresql" / "index.html").is_file()


def test_the_api_reference_is_rendered_from_the_openapi_document(site):
    spec = json.loads((REPO / "uploader" / "openapi.json").read_text())
    html = page_html(site, "api-reference.md")
    operations = [op for item in spec["paths"].values() for op in item.values()
                  if isinstance(op, dict) and "operationId" in op]
    assert operations
    for operation in operations:
        assert f'id="{operation["operationId"]}"' in html, operation["operationId"]
    for schema in spec["components"]["schemas"]:
        assert f'id="schema-{schema.lower()}"' in html, schema


def test_the_configuration_page_includes_default_yaml(site):
    html = page_html(site, "configuration.md")
    text = re.sub(r"<[^>]+>", "", html).replace("&quot;", '"').replace("&amp;", "&")
    for line in (REPO / "config" / "default.yaml").read_text().splitlines():
        key = line.split("#")[0].strip()
        if key:
            assert key in text, line


def test_the_configuration_page_names_every_environment_variable():
    from uploader.config import ENV_OVERRIDES

    rows = (REPO / "docs" / "configuration.md").read_text().splitlines()
    for var, key in ENV_OVERRIDES.items():
        assert any(row.startswith(f"| `{var}` | `{key}`") for row in rows), var


def test_the_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) <= 150


def test_every_link_of_the_readme_resolves(site):
    links = [link for link in LINK.findall(README.read_text()) if "://" not in link]
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        assert (REPO / path).exists(), link
        if anchor:
            assert path.startswith("docs/") and path.endswith(".md"), link
            assert f'id="{anchor}"' in page_html(site, path[len("docs/"):]), link


def test_the_readme_states_the_command_ci_runs():
    """.ci/run ends by running the test command; the README's two commands state it as is."""
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1].strip()
    two_commands = README.read_text().split("## Two commands", 1)[1].split("```sh\n", 1)[1].split("```")[0]
    assert ci_command in [line.split("#")[0].strip() for line in two_commands.splitlines()]
