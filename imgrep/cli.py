"""Command line: ``serve`` (default), ``check IMAGE...``, ``--version``, ``--help``.

Builds the config once and wires the pieces; the only place besides the servers
where a broad ``except`` turns failures into an exit code and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import __version__
from .checker import ImageChecker
from .copier import Copier, CopyResult, Progress
from .results import ERROR, EXISTS
from .config import Config, load_config
from .errors import ConfigError, ImgrepError
from .logs import Logger
from .reference import Reference, parse_reference
from .registry import RegistryClient, Repo
from .replicator import Replicator
from .server import App, CertificateReloader, HttpServer, Lifecycle
from .telemetry import Telemetry
from .transport import Transport
from .webhook import JSON, Webhook
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

__all__ = ["main"]

#: seconds the ``check`` command gives the registries
CHECK_TIMEOUT = 60.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgrep",
        description="Kubernetes validating admission webhook that checks container images exist "
        "in their registries and replicates them to a target registry. Configured by environment "
        "variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"imgrep {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the webhook and health servers (default)")
    check = commands.add_parser("check", help="check that images exist; exit 0 all exist, 1 any missing, 2 any error")
    check.add_argument("images", nargs="+", metavar="IMAGE")
    copy = commands.add_parser("copy", help="replicate one image (every platform) with the webhook's engine; "
                                            "prints the digest")
    copy.add_argument("source", metavar="SOURCE")
    copy.add_argument("target", metavar="TARGET", help="without a tag, the source's tag (or digest) is used")
    copy.add_argument("--progress", action="store_true", help="show bytes copied on stderr")
    return parser


@dataclass(frozen=True)
class Runtime:
    """What ``serve`` and the commands share, built from one Config."""

    config: Config
    logger: Logger
    telemetry: Telemetry
    transport: Transport
    client: RegistryClient
    checker: ImageChecker
    copier: Copier
    replicator: Replicator | None


def build_runtime(config: Config) -> Runtime:
    logger = Logger(config.log_format, config.debug)
    telemetry = Telemetry()
    try:
        transport = Transport(
            insecure_registries=config.insecure_registries,
            ca_file=config.registry_ca_file,
            observe=telemetry.observe_registry_request,
        )
    except ssl.SSLError as exc:
        raise ConfigError("REGISTRY_CA_FILE", f"not a PEM certificate bundle ({exc.reason})") from None
    client = RegistryClient(transport, config.credentials)
    checker = ImageChecker(client, cache_ttl=config.cache_ttl_seconds, allowed_registries=config.allowed_registries)
    blob_pool = ThreadPoolExecutor(config.copy_concurrency, thread_name_prefix="imgrep-blob")
    copier = Copier(client, blob_pool, on_blob=lambda result, size: telemetry.blobs.labels(result=result).inc())
    replicator = None
    if config.target:
        replicator = Replicator(copier, client, config.target, include_registry=config.target_include_registry,
                                timeout=config.replication_timeout_seconds,
                                on_done=_replication_recorder(config, telemetry, logger))
    return Runtime(config, logger, telemetry, transport, client, checker, copier, replicator)


def _replication_recorder(config: Config, telemetry: Telemetry, logger: Logger):
    def record(reference: Reference, result: CopyResult | None, seconds: float, error: str) -> None:
        labels = dict(source_registry=telemetry.registry_label(reference.registry),
                      target_registry=config.target.host)
        outcome = "failed" if result is None else "copied" if result.copied else "exists"
        telemetry.replications.labels(**labels, result=outcome).inc()
        telemetry.replication_duration.observe(seconds)
        if result is not None:
            telemetry.replicated_bytes.labels(**labels).inc(result.stats.bytes)
            logger.info("replicated", image=str(reference), digest=result.digest, result=outcome,
                        blobs_copied=result.stats.copied, blobs_existing=result.stats.exists,
                        blobs_mounted=result.stats.mounted, bytes=result.stats.bytes, seconds=round(seconds, 3))
        else:
            logger.warning("replication_failed", image=str(reference), error=error, seconds=round(seconds, 3))
    return record


def _strip_scheme(image: str) -> str:
    return image[len("docker://"):] if image.startswith("docker://") else image


def run_check(runtime: Runtime, images: list[str]) -> int:
    results = runtime.checker.check_all([_strip_scheme(i) for i in images], time.monotonic() + CHECK_TIMEOUT)
    for result in results:
        reason = result.reason + (f": {result.detail}" if result.detail else "")
        print(f"{result.status}\t{result.image}\t{result.digest or '-'}\t{reason or '-'}")
    statuses = {r.status for r in results}
    if ERROR in statuses:
        return 2
    return 0 if statuses == {EXISTS} else 1


def _explicit_identifier(text: str) -> bool:
    """Whether a reference names a tag or digest itself (parse_reference defaults to latest)."""
    return "@" in text or ":" in text.rsplit("/", 1)[-1]


def run_copy(runtime: Runtime, source_text: str, target_text: str, show_progress: bool) -> int:
    source = parse_reference(_strip_scheme(source_text))
    target_text = _strip_scheme(target_text)
    target = parse_reference(target_text)
    explicit_tag = target.tag if _explicit_identifier(target_text) and not target.digest else ""
    progress = Progress()
    done = threading.Event()
    reporter = threading.Thread(target=_report_progress, args=(progress, done), daemon=True)
    if show_progress:
        reporter.start()
    try:
        result = runtime.copier.copy(
            Repo(source.api_host, source.repository), source.identifier, Repo(target.api_host, target.repository),
            time.monotonic() + runtime.config.replication_timeout_seconds, progress, tag=explicit_tag)
    finally:
        done.set()
        if show_progress:
            reporter.join()
    print(result.digest)
    return 0


def _report_progress(progress: Progress, done: threading.Event) -> None:
    """Bytes done on stderr: rewritten in place on a terminal, a line every few seconds otherwise."""
    terminal = sys.stderr.isatty()
    interval = 0.5 if terminal else 5.0
    while not done.wait(interval):
        sys.stderr.write(("\r" if terminal else "") + f"copied {progress.describe()}" + ("" if terminal else "\n"))
        sys.stderr.flush()
    sys.stderr.write(("\r" if terminal else "") + f"copied {progress.describe()}\n")


def _json(document: object) -> tuple[int, str, bytes]:
    return 200, JSON, json.dumps(document).encode()


def _listen(variable: str, port: int, *args, **kwargs) -> HttpServer:
    try:
        return HttpServer(("", port), *args, **kwargs)
    except OSError as exc:
        raise ListenError(f"cannot listen on {variable}={port}: {exc.strerror or exc}") from None


class ListenError(ImgrepError):
    """A port that cannot be bound (in use, or privileged)."""


def run_serve(runtime: Runtime) -> int:
    config, logger = runtime.config, runtime.logger
    lifecycle = Lifecycle()
    webhook = Webhook(config, runtime.checker, runtime.telemetry, logger, replicator=runtime.replicator)

    def metrics(_body, _headers):
        return 200, METRICS_CONTENT_TYPE, runtime.telemetry.render()

    def healthz(_body, _headers):
        return _json({"status": "ok"})

    def readyz(_body, _headers):
        if lifecycle.ready and not lifecycle.draining:
            return _json({"status": "ready"})
        return 503, JSON, json.dumps({"status": "shutting down" if lifecycle.draining else "starting"}).encode()

    def validate(body, headers):
        status, answer = webhook.handle(body, headers.get("content-type", ""))
        return status, JSON, answer

    certificates = None
    if not config.skip_tls:
        try:
            certificates = CertificateReloader(config.tls_cert_path, config.tls_key_path, logger)
        except (OSError, ValueError) as exc:
            raise ConfigError("TLS_CERT_PATH", f"cannot load certificate and key: {exc}") from None
    common = {("GET", "/healthz"): healthz, ("GET", "/metrics"): metrics}
    health = _listen("HEALTH_PORT", config.health_port, App({**common, ("GET", "/readyz"): readyz}, logger),
                     logger, lifecycle)
    server = _listen("PORT", config.port, App({**common, ("POST", "/validate"): validate}, logger), logger,
                     lifecycle, certificates=certificates, max_connections=config.max_connections)
    signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        # only a list append: the handler must not take a lock the main thread may hold
        signal.signal(signum, lambda number, _frame: signals.append(number))
    health.serve_in_thread()
    server.serve_in_thread()
    lifecycle.ready = True
    logger.info("started", version=__version__, config=config.summary())
    while not signals:
        time.sleep(0.1)
    lifecycle.draining = True
    logger.info("draining", delay_seconds=config.shutdown_delay_seconds)
    time.sleep(config.shutdown_delay_seconds)
    # an answer in progress needs at most the admission budget
    server.drain(grace=config.admission_budget_seconds + 2)
    health.drain(grace=1)
    logger.info("stopped")
    # Background lookups and copies are abandoned, not awaited: each is safe to
    # interrupt (nothing half-copied is ever tagged), and waiting could outlast
    # the pod's termination grace period.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        runtime = build_runtime(load_config(os.environ))
        if args.command == "check":
            return run_check(runtime, args.images)
        if args.command == "copy":
            return run_copy(runtime, args.source, args.target, args.progress)
        return run_serve(runtime)
    except ConfigError as exc:
        print(f"imgrep: configuration error: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(f"imgrep: {exc}", file=sys.stderr)
        return 1
    except ImgrepError as exc:
        print(f"imgrep: {exc}", file=sys.stderr)
        return 2
