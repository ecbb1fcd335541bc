"""``bin/serve``: load the configuration, start the service, stop it cleanly on a signal.

Exit codes: 0 after a clean stop, 2 for a bad configuration or a start that cannot
happen (the store in use, unreachable, damaged or not writable, the image directory or
the S3 bucket not writable, the port taken: one line says which), 3 when the worker
machinery broke and a supervisor should restart the service.
"""
import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import replace

from . import preflight
from .backends import describe_store
from .config import load_config
from .connections import describe_limits, open_file_limit
from .errors import ConfigError, StartError, StoreInUse, StoreUnavailable
from .logs import setup_logging
from .service import Service

log = logging.getLogger("uploader")

EXIT_BAD_CONFIG = 2
EXIT_CANNOT_START = 2  # the store is in use or unreachable, the port taken: one line says which


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bin/serve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("UPLOADER_CONFIG"),
                        help="YAML configuration file (default: env UPLOADER_CONFIG, "
                             "else the built-in defaults of config/default.yaml)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and what it names (store, directories, "
                             "database, S3 bucket), print it with secrets hidden, and exit")
    parser.add_argument("--dev", action="store_true",
                        help="try it on this machine: fetch from loopback and private networks, "
                             "listen on 127.0.0.1 only (never where others can reach it)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.dev:
        config = dev_config(config)
    found = preflight.problems(config, connect=args.check_config)
    if args.check_config:
        return check_config(config, found, args.config or "built-in defaults")
    if found:
        for problem in found:
            print(f"cannot start: {problem}", file=sys.stderr)
        return EXIT_CANNOT_START
    setup_logging(config.logging.level, config.logging.format)
    for note in config.warnings:
        log.warning("%s", note)
    if args.dev:
        log.warning("DEVELOPMENT MODE (--dev): sources on loopback and private networks are "
                    "fetched, and the service listens on %s only. Never use --dev where others "
                    "can reach the service.", config.server.host)
    return asyncio.run(serve(config))


def check_config(config, found, source: str) -> int:
    """``--check-config``: the problems first, one line each, then warnings and the
    connection limits (stderr), the configuration with secrets hidden (stdout), and the
    verdict last."""
    for problem in found:
        print(f"problem: {problem}", file=sys.stderr)
    for note in config.warnings:
        print(f"warning: {note}", file=sys.stderr)
    print(f"connections: {describe_limits(config, open_file_limit())}", file=sys.stderr,
          flush=True)
    print(json.dumps(config.redacted(), indent=2), flush=True)
    if found:
        print(f"{len(found)} problem(s), listed first: bin/serve would not start",
              file=sys.stderr)
        return EXIT_CANNOT_START
    print(f"configuration OK ({source})", file=sys.stderr)
    return 0


def dev_config(config):
    """``--dev``: try it on this machine (sources on loopback and private networks fetched),
    listening on loopback only."""
    return replace(config, server=replace(config.server, host="127.0.0.1"),
                   fetch=replace(config.fetch, allow_private_networks=True))


async def serve(config) -> int:
    service = Service(config)
    try:
        service.start()
    except (StartError, StoreInUse, StoreUnavailable) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except OSError as exc:  # the port is taken, or the address is not ours
        where = f"{config.server.host}:{config.server.port}"
        print(f"cannot start: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    describe_host(service.config)
    log.info("instance %s; store: %s", service.instance, describe_store(config.storage))
    log.info("listening on %s:%d; %s", config.server.host, service.port,
             describe_limits(config, service.open_files))
    loop = asyncio.get_running_loop()
    signals = []

    def on_signal(signum):
        signals.append(signum)
        log.info("received %s", signal.Signals(signum).name)
        service.stop(immediate=len(signals) > 1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await service.workers_ready()
    shown_host = "localhost" if config.server.host in ("0.0.0.0", "::") else config.server.host
    print(f"Starting Server on http://{shown_host}:{service.port}", flush=True)
    code = await service.stopped
    log.info("stopped (exit code %d)", code)
    return code


def describe_host(config) -> None:
    if config.resolved_image_host == "s3":
        s3 = config.s3
        log.info("image host: S3, bucket %s at %s, links under %s/", s3.bucket,
                 s3.endpoint_url or f"AWS S3 ({s3.region})", s3.link_base)
        if config.image_host == "auto" and config.imgur_credentials:
            log.info("Imgur credentials are set too; image_host auto picks s3 when s3.bucket "
                     "is set (say image_host: imgur to use Imgur)")
    elif config.resolved_image_host == "imgur":
        auth = "access token" if config.imgur.access_token else "client id"
        log.info("image host: Imgur at %s (%s)", config.imgur.api_url, auth)
    else:
        log.info("image host: local, files in %s served at %s/i/ - set s3.bucket (see "
                 "docs/object-storage.md) to store images in a bucket instead",
                 config.local.directory, config.server.base_url)


if __name__ == "__main__":
    sys.exit(main())
