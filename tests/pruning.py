"""Old finished jobs made on purpose, and the pruner watched: for the retention tests."""
import contextlib

from uploader import jobs


def finished_job(store, job_id, count, *, callback=None, days_ago=40.0, links=True):
    """A job of ``count`` URLs, each uploaded (a link of its own) or, without ``links``,
    failed, finished ``days_ago``."""
    with store.transaction():
        store.create_job(job_id, [f"https://example.test/{job_id}/{n}.png" for n in range(count)],
                         callback_url=callback)
    with store.transaction():
        tasks = store.claim(count)
        store.finish_many([(task, jobs.COMPLETE, {
            "attempts": 1, "link": f"https://i.example/{job_id}-{task.url_id}.png",
            "sha256": f"{job_id}-{task.url_id}", "host": "imgur"}) if links else
            (task, jobs.FAILED, {"attempts": 1, "reason": "the source answered HTTP 404"})
            for task in tasks])
    with store.transaction():
        store._execute("UPDATE jobs SET finished = finished - ? WHERE id = ?",
                       (days_ago * 86400, job_id))


def recording(store):
    """Every statement the pruner runs, with the rows it touched: [(sql, rowcount)]."""
    seen, pruning = [], store._pruning

    @contextlib.contextmanager
    def watched():
        with pruning() as run:
            if run is None:
                yield None
                return

            def recorded(sql, params=()):
                cursor = run(sql, params)
                seen.append((sql, cursor.rowcount))
                return cursor
            yield recorded
    store._pruning = watched
    return seen


def prune_all(store, older_than):
    deleted = {}
    while batch := store.prune(older_than):
        for table, rows in batch.items():
            deleted[table] = deleted.get(table, 0) + rows
    return deleted
