"""Retention (``backends.prune``, ``retention.Pruner``) on both backends: finished jobs past
it go with their URLs and settled deliveries, in batches of at most 1,000 rows a
statement; running jobs, jobs with a delivery pending and links stay; one instance of a
cluster prunes at a time (SQLite reusing the pages freed: tests/unit/test_retention.py)."""
import psycopg
import pytest
import requests

from uploader.config import StorageConfig
from uploader.backends import open_store
from uploader.backends.prune import PRUNE_LOCK, ROWS

from tests.pruning import finished_job, prune_all, recording
from tests.support import wait_until


@pytest.fixture
def store(storage):
    store = open_store(StorageConfig(**storage), "me")
    yield store
    store.close()


def test_finished_jobs_past_retention_go_with_their_urls_and_settled_deliveries(store):
    month = 30 * 86400
    finished_job(store, "old", 3, callback="https://hooks.example/done")
    finished_job(store, "owed", 2, callback="https://hooks.example/owed")
    finished_job(store, "recent", 2, days_ago=1)
    with store.transaction():
        store.create_job("running", ["https://example.test/running.png"])
    with store.transaction():  # its URL in flight, its job created long ago
        assert len(store.claim(1)) == 1
        store._execute("UPDATE jobs SET created = created - ? WHERE id = 'running'", (2 * month,))
        for effect in store.claim_effects(10, 60):  # the old job's webhook delivered
            store.record_effect(effect.id, state="done" if effect.job_id == "old" else "pending",
                                error=None)
    old_rows = store.read_job("old")[1]
    old_links, image_id = [row[3] for row in old_rows], old_rows[0][11]

    assert prune_all(store, month) == {"jobs": 1, "urls": 3, "outbox": 1}
    assert store.read_job("old") is None
    assert store.list_jobs("", 10)[0] and "old" not in [r[0] for r in store.list_jobs("", 10)[0]]
    for kept in ("owed", "recent", "running"):  # a delivery pending, too young, not finished
        assert store.read_job(kept) is not None
    with store.links(100) as pages:  # its links stay listed, deduplicating, deletable
        assert set(old_links) <= {link for page in pages for link in page}
    assert store.link_for(f"old-{old_rows[0][0]}", "imgur") == old_links[0]
    assert store.image(image_id, "") is not None
    with store.transaction():
        assert store.delete_image(image_id, "") is not None

    with store.transaction():
        for effect in store.claim_effects(10, 60):  # the owed delivery gives up: settled
            store.record_effect(effect.id, state="failed", error="HTTP 500")
    assert prune_all(store, month) == {"jobs": 1, "urls": 2, "outbox": 1}
    assert store.read_job("owed") is None and store.read_job("recent") is not None


def test_no_statement_deletes_more_than_a_thousand_rows(store):
    finished_job(store, "large", 2 * ROWS + 500)
    finished_job(store, "small", 10)
    seen = recording(store)
    assert prune_all(store, 86400) == {"jobs": 2, "urls": 2 * ROWS + 510}
    deletes = [(sql, rows) for sql, rows in seen if sql.startswith("DELETE")]
    assert max(rows for _, rows in deletes) == ROWS
    assert [rows for sql, rows in deletes if "FROM urls" in sql] == [ROWS, ROWS, 500, 10]
    assert store.read_job("large") is None and store.read_job("small") is None


def test_one_instance_of_a_cluster_prunes_at_a_time(postgres):
    url = postgres.create_database()
    me = open_store(StorageConfig(url=url), "me")
    try:
        finished_job(me, "old", 2)
        with psycopg.connect(url) as other:  # another instance's batch holds the lock
            other.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE_LOCK,))
            assert me.prune(86400) is None
        assert me.prune(86400) == {"jobs": 1, "urls": 2}
    finally:
        me.close()


def test_a_pruned_job_answers_404_and_its_links_live_on(start_service, image_source):
    service = start_service(retention={"finished_jobs_seconds": 1, "check_seconds": 0.2})
    urls = [image_source.url_for("/img/retained-1.png"), image_source.url_for("/img/retained-2.png")]
    old = service.wait_job(service.post_job(urls))
    running_id = service.post_job([image_source.url_for("/slow/0.04")])  # about 4 s
    links = old["uploaded"]["complete"]
    job_url = f"{service.url}/v1/images/upload"

    wait_until(lambda: requests.get(f"{job_url}/{old['id']}", timeout=10).status_code == 404)
    listed = [job["id"] for job in requests.get(job_url, timeout=10).json()["jobs"]]
    running = service.job(running_id)  # older than retention by now, and never pruned
    assert running["status"] != "complete" and listed == [running_id]
    assert set(links) <= set(service.links())
    again = service.wait_job(service.post_job(urls[:1]))  # the same bytes: deduplicated
    assert again["urls"][0]["reused"] and again["uploaded"]["complete"] == links[:1]
    image_id = again["urls"][0]["image_id"]
    assert requests.delete(f"{service.url}/v1/images/{image_id}", timeout=10).status_code == 202
    assert links[0] not in service.links() and links[1] in service.links()
    metrics = requests.get(f"{service.url}/metrics", timeout=10).text
    pruned = dict(line.rsplit(" ", 1) for line in metrics.splitlines()
                  if line.startswith("uploader_pruned_rows_total"))
    assert float(pruned['uploader_pruned_rows_total{table="urls"}']) >= 2
    assert float(pruned['uploader_pruned_rows_total{table="jobs"}']) >= 1
    assert service.wait_job(running_id)["uploaded"]["failed"] == []
