"""The local stand-ins for the world, and the benchmarks that use them.

``fakes``: the fake Imgur, an image source, an S3 server (moto) and a proxy that fails its
requests when told, a webhook receiver, a fake of the job API; ``postgres_server`` and
``pgbouncer_server``: a throwaway PostgreSQL and PgBouncer; ``bench``: ``bin/bench`` and
the trials of ``bin/``. The test suite starts them, and so do the scripts of ``bin/``, from
the checkout: this package is not installed, and imports nothing from ``tests``.
"""
