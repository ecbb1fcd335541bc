"""How the embedded mode's manager and its clients talk: plain data, pickled by the C pickler.

multiprocess's own pickler (dill, pure Python) took 0.2 ms for one call's arguments, twice
per URL. Registered on import: a process that unpickles a proxy (a worker receiving its
``Shared``) needs the name known before the proxy is rebuilt, so this module is imported
with the ``backends.sqlite`` package, which every worker imports, not by the pool alone.
"""
import pickle

import multiprocess.connection
import multiprocess.managers

SERIALIZER = "c-pickle"


class _CPickleListener(multiprocess.connection.Listener):
    def accept(self):
        return multiprocess.connection.ConnectionWrapper(super().accept(), _dumps, pickle.loads)


def _cpickle_client(*args, **kwargs):
    return multiprocess.connection.ConnectionWrapper(
        multiprocess.connection.Client(*args, **kwargs), _dumps, pickle.loads)


def _dumps(obj) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


multiprocess.managers.listener_client[SERIALIZER] = (_CPickleListener, _cpickle_client)
