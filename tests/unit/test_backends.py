"""Every backend answers every call its protocol declares, with the same signature, and
the protocols declare every call the service makes."""
import ast
import functools
import inspect
import pathlib

import pytest

import uploader
from uploader.backends import protocols
from uploader.backends.memory import MemoryCoordinator, MemoryStore
from uploader.backends.postgres.coordinator import PgCoordinator
from uploader.backends.postgres.credentials import PgCredentials
from uploader.backends.postgres.store import PostgresStore
from uploader.backends.sqlite.coordinator import Coordinator, CoordinatorProxy
from uploader.backends.sqlite.credentials import Credentials
from uploader.backends.sqlite.store import SqliteStore

IMPLEMENTATIONS = [
    (protocols.Store, SqliteStore), (protocols.Store, PostgresStore),
    (protocols.Store, MemoryStore),
    (protocols.Coordinator, Coordinator), (protocols.Coordinator, PgCoordinator),
    (protocols.Coordinator, MemoryCoordinator),
    (protocols.Coordinator, CoordinatorProxy),
    (protocols.Credentials, Credentials), (protocols.Credentials, PgCredentials),
]


def declared(protocol):
    """The calls and the attributes a protocol declares (its own, not Protocol's)."""
    calls = {name: value for name, value in vars(protocol).items()
             if callable(value) and not name.startswith("_")}
    return calls, set(vars(protocol).get("__annotations__", {}))


def shape(function):
    """A signature without its annotations: names, kinds and defaults of the parameters."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("protocol, implementation", IMPLEMENTATIONS,
                         ids=lambda x: x.__name__)
def test_a_backend_implements_every_call_of_its_protocol_with_the_same_signature(
        protocol, implementation):
    calls, attributes = declared(protocol)
    assert calls, "the protocol declares no call"
    for name, call in calls.items():
        assert callable(getattr(implementation, name, None)), f"{name} is missing"
        if implementation is CoordinatorProxy and name not in vars(CoordinatorProxy):
            continue  # made by MakeProxyType: (*args, **kwds), the manager's call checks
        assert shape(getattr(implementation, name)) == shape(call), name
    for name in attributes:  # a class attribute, or one its body declares for __init__ to set
        assert hasattr(implementation, name) or any(
            name in vars(cls).get("__annotations__", {}) for cls in implementation.__mro__), \
            f"attribute {name} is missing"


def test_every_call_both_coordinators_answer_is_declared():
    """The calls the embedded and the shared coordinators share are the protocol's: a
    public call on both but missing from it would be a contract kept only by habit."""
    calls, _ = declared(protocols.Coordinator)
    both = ({n for n in vars(Coordinator) if not n.startswith("_")}
            & {n for n in vars(PgCoordinator) if not n.startswith("_")})
    assert both <= set(calls)


def test_the_in_memory_coordinator_reuses_what_its_store_holds_for_the_same_account():
    store = MemoryStore()
    link = "https://i.example/1.png"
    with store.transaction():
        store.create_job("job", ["https://a.example/1.png"], account="key")
        (task,) = store.claim(1)
        store.finish(task, "complete", attempts=1, link=link, sha256="aa", host="imgur")
    coordinator = MemoryCoordinator(store=store, host="imgur")
    assert coordinator.claim_many([("aa", "key", (0, 1, 1)), ("bb", "key", (0, 1, 2)),
                                   ("aa", "other", (0, 1, 3))]) == [
        ("reuse", link), ("upload", None), ("upload", None)]


def pruning_story(store):
    """What ``prune`` deletes, batch by batch, as a store's jobs and effects settle: a job
    whose delivery is pending waits for it, one not finished stays, a settled host deletion
    goes once the jobs are done with. ``older_than`` -1: everything finished is past it."""
    def prune_all():
        batches = []
        while batch := store.prune(-1):
            batches.append(batch)
        return batches

    def settle(kind):
        with store.transaction():
            (effect,) = [e for e in store.claim_effects(10, 60) if e.kind == kind]
            assert store.record_effect(effect.id, state="done", error=None)

    with store.transaction():
        store.create_job("hooked", ["https://a.example/1", "https://a.example/2"],
                         callback_url="http://127.0.0.1:9/hook")
        store.create_job("plain", ["https://b.example/1"])
        store.create_job("running", ["https://c.example/1", "https://c.example/2"])
        tasks = {task.url: task for task in store.claim(10)}
        for url, task in tasks.items():
            if url != "https://c.example/2":
                store.finish(task, "complete", attempts=1, link=url + ".png", sha256=url,
                             host="s3", deletehash=url[-1])
    story = [prune_all()]  # "plain" goes; "hooked" waits for its delivery
    settle("webhook")
    story.append(prune_all())  # "hooked" goes, with its settled delivery
    with store.transaction():
        image_id = next(u[11] for u in store.read_job("running")[1] if u[3])
        store.delete_image(image_id, "")
    settle("host_delete")
    story.append(prune_all())  # the settled host deletion, the jobs being done with
    story.append([store.read_job(job_id) is not None for job_id in ("hooked", "plain", "running")])
    return story


def test_the_in_memory_store_prunes_as_sqlite_does(tmp_path):
    sqlite = SqliteStore(str(tmp_path / "store.sqlite3"), "me")
    try:
        expected = pruning_story(sqlite)
    finally:
        sqlite.close()
    assert expected == [[{"urls": 1, "jobs": 1}], [{"urls": 2, "outbox": 1, "jobs": 1}],
                        [{"outbox": 1}], [False, False, True]]
    assert pruning_story(MemoryStore()) == expected


@functools.lru_cache(maxsize=None)
def used_outside_the_backends() -> dict:
    """The attributes the service's code reads of each name (``store``, ``self.store``,
    ``shared.coordinator``...), outside the backends: {name: attributes}."""
    root = pathlib.Path(uploader.__file__).parent
    used = {}
    for path in root.rglob("*.py"):
        if "backends" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                value = node.value
                name = value.id if isinstance(value, ast.Name) else getattr(value, "attr", None)
                used.setdefault(name, set()).add(node.attr)
    return used


@pytest.mark.parametrize("holder, protocol", [("store", protocols.Store),
                                              ("coordinator", protocols.Coordinator)])
def test_every_call_the_service_makes_of_a_backend_is_declared(holder, protocol):
    calls, attributes = declared(protocol)
    used = used_outside_the_backends()[holder]
    assert len(used) > 10  # the scan finds the calls
    assert used <= set(calls) | attributes
