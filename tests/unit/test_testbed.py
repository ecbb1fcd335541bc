"""testbed (the fakes, the throwaway servers, the bench) stands apart: it imports nothing from
tests, setup.cfg does not install it, and the image leaves it out."""
import ast
import configparser
import re

import setuptools

from tests.support import REPO


# A module path in code: "tests.bench.bare" run with -m, or "from tests.x import y" in a -c string.
NAMES_TESTS = re.compile(r"^tests(\.\w+)+$|\b(from|import) tests\b")


def reaches_into_tests(path):
    """The imports anywhere in the file (lazy ones in functions too), and the strings of code
    that name a module of ``tests``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        else:
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and NAMES_TESTS.search(node.value):
                yield repr(node.value)
            continue
        yield from (name for name in names if name == "tests" or name.startswith("tests."))


def test_testbed_imports_nothing_from_tests():
    files = sorted((REPO / "testbed").rglob("*.py"))
    assert len(files) > 20
    assert [f"{path.relative_to(REPO)}: {name}" for path in files
            for name in reaches_into_tests(path)] == []


def test_setup_cfg_installs_the_service_and_the_client_not_the_testbed():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    include = config["options.packages.find"]["include"].replace(",", " ").split()
    found = setuptools.find_namespace_packages(where=str(REPO), include=include)
    assert {"uploader", "image_client"} <= set(found)
    assert [name for name in found if name.split(".")[0] in ("testbed", "tests")] == []


def test_the_image_leaves_tests_and_testbed_out():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if not line.lstrip().startswith("#")}
    assert {"tests", "testbed"} <= ignored
