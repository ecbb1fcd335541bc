"""A full disk is a wait with its reason, never a failure: the local image host's disk, and
the embedded store's.

The disks are real: the service runs in a user and mount namespace of its own
(``unshare --user --map-root-user --mount``, no root needed) with a small tmpfs over its
image directory and, on SQLite, another over its store. The test fills and frees them
from outside, through ``/proc/<pid>/root``. Nothing outside the namespace is mounted, and
no system file is touched.
"""
import errno
import os
import sys
from pathlib import Path

import requests

from uploader import jobs

from tests.support import ServiceProcess
from tests.support import wait_until


def test_a_full_disk_is_a_wait_with_its_reason_then_the_work_goes_on(make_config, backend,
                                                                      image_source, tmp_path):
    images, store = tmp_path / "images-disk", tmp_path / "store-disk"
    images.mkdir()
    store.mkdir()
    config = make_config(local={"directory": str(images)},
                         storage={"path": str(store / "store.sqlite3")})
    disks = {images: "1m"} if backend == "postgresql" else {images: "1m", store: "8m"}
    service = ServiceProcess(config, command=namespaced(config, disks)).start()
    try:
        seen = Path(f"/proc/{service.proc.pid}/root")  # the service's view of its disks
        assert not (images / "filler").exists()
        fill(seen / images.relative_to("/") / "filler")
        assert not (images / "filler").exists()  # that disk is the namespace's alone

        # The local host's disk is full: the URLs wait, saying why, and the health says so.
        urls = [image_source.url_for(f"/img/full-{n}.png") for n in range(2)]
        job_id = service.post_job(urls)

        def all_waiting():
            found = service.job(job_id)
            return all((u["waiting"] or {}).get("reason") for u in found["urls"]) and found

        job = wait_until(all_waiting)
        for entry in job["urls"]:
            assert entry["state"] == jobs.IN_FLIGHT and entry["attempts"] == 1
            assert entry["waiting"]["reason"] == ("the local image directory is full (No space "
                                                  "left on device); trying again")
        said = wait_until(lambda: (h := health(service))["status"] == "degraded" and h)
        assert said["degraded"] == ["the local image directory is full (No space left on "
                                    "device); trying again (2 URLs waiting)"]

        # Room again: the images go up, nothing failed, the health is ok.
        os.unlink(seen / images.relative_to("/") / "filler")
        job = service.wait_job(job_id, timeout=60)
        assert job["uploaded"]["failed"] == [] and len(job["uploaded"]["complete"]) == 2
        assert all(u["waiting"] is None and u["attempts"] == 1 for u in job["urls"])
        assert requests.get(job["urls"][0]["link"], timeout=10).status_code == 200
        assert wait_until(lambda: health(service)["status"] == "ok")

        if backend == "sqlite":  # the embedded store's disk is full: POST says so
            fill(seen / store.relative_to("/") / "filler")
            refused = requests.post(f"{service.url}/v1/images/upload", timeout=30, json={
                "urls": [image_source.url_for(f"/img/later-{n}.png") for n in range(100)]})
            assert refused.status_code == 503 and refused.headers["Retry-After"]
            assert refused.json() == {"error": "the store is full (its disk has no space left); "
                                               "retry once space is freed"}
            os.unlink(seen / store.relative_to("/") / "filler")
            again = wait_until(lambda: (answer := requests.post(  # once its retry is due
                f"{service.url}/v1/images/upload", timeout=30, json={"urls": [
                    image_source.url_for("/img/after-full.png")]})).status_code == 202 and answer)
            assert service.wait_job(again.json()["jobId"])["uploaded"]["failed"] == []
        log = service.read_log()
        assert "Traceback" not in log and "internal error" not in log
    finally:
        service.kill()


def namespaced(config: Path, disks: dict) -> list:
    """The service's command, in a namespace where each directory of ``disks`` is a tmpfs
    of that size."""
    mounts = " && ".join(f"mount -t tmpfs -o size={size} tmpfs '{path}'"
                         for path, size in disks.items())
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            f'{mounts} && exec "$@"', "sh",
            sys.executable, "-m", "uploader", "--config", str(config)]


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its disk is full."""
    with open(path, "wb", buffering=0) as filler:
        while True:
            try:
                filler.write(b"\0" * 65536)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


def health(service) -> dict:
    return requests.get(f"{service.url}/healthz", timeout=10).json()
