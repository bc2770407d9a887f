"""Command line: ``serve`` (default), ``check IMAGE...``, ``copy``, ``sync``, ``inventory``, ``--version``, ``--help``.

Builds the config once and wires the pieces; the only place besides the servers
where a broad ``except`` turns failures into an exit code and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from urllib.parse import urlencode, urlsplit

from imgrep import __version__
from imgrep.admission.io.checker import ImageChecker
from imgrep.admission.io.gatekeeper import GateKeeper
from imgrep.admission.io.mutator import Mutator
from imgrep.admission.io.replicator import Replicator
from imgrep.admission.io.service import Webhook
from imgrep.admission.io.tenant_credentials import PullSecretSource
from imgrep.admission.review import MAX_BODY_BYTES
from imgrep.cloud.io.credsource import credential_lookup
from imgrep.config import MUTATE_TARGET, Config, load_config
from imgrep.errors import ConfigError, ImgrepError
from imgrep.inventory.io.cluster import ClusterInventory
from imgrep.inventory.io.replicas import run_replica_inventory
from imgrep.inventory.io.store import InventoryStore
from imgrep.inventory.model import SORT_KEYS, Inventory, entry_from_dict, render_table
from imgrep.kube.io.client import KubeClient, connect
from imgrep.kube.io.copy_leases import CopyLeases
from imgrep.observe.io.logs import Logger
from imgrep.observe.io.telemetry import Telemetry
from imgrep.oci.io.bulkhead import Bulkhead
from imgrep.oci.io.copier import LOOKUP_CONCURRENCY, Copier, CopyResult, Progress
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.io.transport import Transport
from imgrep.oci.reference import Reference, Repo, parse_reference
from imgrep.oci.results import ERROR, EXISTS
from imgrep.serve.endpoints import health_router, webhook_router
from imgrep.serve.io.http import CertificateReloader, HttpServer, Lifecycle
from imgrep.sync.io.runner import DEFAULT_JOBS, MAX_JOBS, run_sync, sync_inputs

__all__ = ["main"]

#: seconds the ``check`` command gives the registries
CHECK_TIMEOUT = 60.0
#: seconds the ``inventory`` command waits for GET /images
INVENTORY_TIMEOUT = 30.0


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
    sync = commands.add_parser("sync", help="replicate many images to TARGET_REGISTRY (a list, kubectl JSON or the "
                                            "running cluster); exit 0 all in the target, 1 any missing, 2 any failed")
    sync.add_argument("input", nargs="?", metavar="FILE|-",
                      help="one reference per line (# comments), or `kubectl get pods -A -o json` output; - is stdin")
    sync.add_argument("--from-cluster", action="store_true",
                      help="also every image of every pod in the cluster (KUBECONFIG or ~/.kube/config, or in-cluster)")
    sync.add_argument("--jobs", type=_jobs, default=DEFAULT_JOBS,
                      help=f"images copied at once, 1 to {MAX_JOBS} (default: %(default)s)")
    sync.add_argument("--dry-run", action="store_true",
                      help="print what is in the target and what would be sent; copy nothing")
    inventory = commands.add_parser("inventory", help="print a running webhook's image inventory as a table")
    inventory.add_argument("--url", default="http://127.0.0.1:8080",
                           help="the webhook's health port (default: %(default)s)")
    inventory.add_argument("--sort", choices=SORT_KEYS, default="last_seen",
                           help="most recent first, most admissions first, or by registry (default: %(default)s)")
    inventory.add_argument("--namespace", help="only images seen in this namespace (comma list: any of them)")
    inventory.add_argument("--registry", help="only images from this registry host (comma list: any of them)")
    inventory.add_argument("--replicas", action="store_true",
                           help="every replica's inventory merged, found and asked through the Kubernetes API "
                                "(KUBECONFIG or ~/.kube/config, or in-cluster)")
    inventory.add_argument("--replica-namespace", default="image-replicator", metavar="NAMESPACE",
                           help="where the replicas run, with --replicas (default: %(default)s)")
    inventory.add_argument("--status", help="only images with this status: exists, missing, error, replicated "
                                            "or unchecked (comma list: any of them)")
    return parser


def _jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_JOBS}, got {text!r}")
    return int(text)


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
    credentials = credential_lookup(config.credentials, config.cloud, transport, ca_file=config.registry_ca_file,
                                    observe=_provider_recorder(logger))
    client = RegistryClient(transport, credentials, retry=config.request_retry)
    allowed = config.allowed_registries
    if allowed and config.mutate == MUTATE_TARGET:  # mutated Pods name the target: validation must not refuse it
        allowed = allowed | {config.target.host}
    checker = ImageChecker(client, cache_ttl=config.cache_ttl_seconds, lookup_timeout=config.admission_budget_seconds,
                           allowed_registries=allowed)
    # COPY_CONCURRENCY streams per source registry, and room for a second source beside a crawling one
    blob_pool = Bulkhead(2 * config.copy_concurrency, config.copy_concurrency, name="imgrep-blob")
    lookup_pool = Bulkhead(2 * LOOKUP_CONCURRENCY, LOOKUP_CONCURRENCY, name="imgrep-lookup")
    copier = Copier(client, blob_pool, retry=config.upload_retry, lookups=lookup_pool,
                    on_blob=lambda result, size: telemetry.blobs.labels(result=result).inc())
    replicator = None
    if config.target:
        replicator = Replicator(copier, client, config.target, include_registry=config.target_include_registry,
                                timeout=config.registry_timeout_seconds, remember_seconds=config.cache_ttl_seconds,
                                on_done=_replication_recorder(config, telemetry, logger))
    return Runtime(config, logger, telemetry, transport, client, checker, copier, replicator)


def _provider_recorder(logger: Logger):
    """Each credential renewal in the log: which provider, for which registry, never the credential."""
    def record(provider: str, outcome: str, registry: str, detail: str) -> None:
        if outcome == "renewed":
            logger.info("credentials_renewed", provider=provider, registry=registry, detail=detail)
        else:
            logger.warning("credentials_failed", provider=provider, registry=registry, error=detail)
    return record


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
            time.monotonic() + runtime.config.registry_timeout_seconds, progress, tag=explicit_tag)
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


def _images_url(base: str, filters: dict[str, str | None]) -> str:
    """``http://host:8080`` (or ``.../images``) and the filters given → the GET /images URL."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http://HOST:PORT, got {base!r}")
    parts.port  # noqa: B018 -- the property raises ValueError for a port that is not a number in range
    path = parts.path.rstrip("/")
    path = path if path.endswith("/images") else path + "/images"
    query = urlencode({name: value for name, value in filters.items() if value})
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query}" if query else "")


def _server_reason(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:200]


def run_inventory(url: str, sort: str, filters: dict[str, str | None]) -> int:
    """GET /images from a running webhook and print it as an aligned table."""
    try:
        images_url = _images_url(url, filters)
    except ValueError as exc:
        print(f"imgrep: --url: {exc}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(images_url, timeout=INVENTORY_TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        print(f"imgrep: {images_url}: HTTP {exc.code}: {_server_reason(exc.read())}", file=sys.stderr)
        return 2
    except urllib.error.URLError as exc:
        print(f"imgrep: cannot reach {url}: {getattr(exc.reason, 'strerror', None) or exc.reason}", file=sys.stderr)
        return 2
    except (OSError, HTTPException) as exc:
        print(f"imgrep: cannot reach {url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    try:
        entries = [entry_from_dict(item) for item in json.loads(body)["images"]]
    except (ValueError, KeyError, TypeError):
        print(f"imgrep: {images_url}: not an imgrep inventory", file=sys.stderr)
        return 2
    if not entries:
        print("imgrep: no images match", file=sys.stderr)
        return 0
    sys.stdout.write(render_table(entries, sort))
    return 0


def open_inventory(runtime: Runtime) -> tuple[Inventory, InventoryStore | None]:
    """The serving process's inventory, read back from INVENTORY_FILE when set.

    Only ``serve`` opens the file: a ``check`` run in the same pod must not append to or compact it.
    """
    inventory = Inventory(runtime.config.inventory_max)
    store = None
    if runtime.config.inventory_file:
        store = InventoryStore(runtime.config.inventory_file, inventory, runtime.logger)
        store.open()
    runtime.telemetry.inventory_images.set(len(inventory))
    return inventory, store


def _listen(variable: str, port: int, *args, **kwargs) -> HttpServer:
    try:
        return HttpServer(("", port), *args, **kwargs)
    except OSError as exc:
        raise ListenError(f"cannot listen on {variable}={port}: {exc.strerror or exc}") from None


class ListenError(ImgrepError):
    """A port that cannot be bound (in use, or privileged)."""


@dataclass(frozen=True)
class ClusterFeatures:
    """What needs the Kubernetes API, and a word for each on why it is on or off (the start-up line)."""

    kube: KubeClient | None
    pull_secrets: PullSecretSource | None
    said: dict[str, str]


def cluster_features(runtime: Runtime) -> ClusterFeatures:
    config = runtime.config
    connection = connect(config.kube)
    said = {"api": connection.description}
    pull_secrets = None
    if connection.client is None:
        if config.gate_pods:
            raise ConfigError("GATE_PODS", f"true needs the Kubernetes API, which is {connection.description}")
        for feature in ("pull_secrets", "cluster_inventory", "copy_leases", "gate_pods"):
            said[feature] = "off: no API access"
        return ClusterFeatures(None, None, said)
    if not config.kube.pull_secrets:
        said["pull_secrets"] = "off: PULL_SECRETS=false"
    else:
        # imgrep's own lookup (static credentials, then cloud providers) for what no Secret covers
        pull_secrets = PullSecretSource(connection.client, runtime.transport, runtime.client.credentials,
                                        runtime.logger, cache_seconds=config.kube.pull_secret_cache_seconds,
                                        target_host=config.target.host if config.target else "")
        said["pull_secrets"] = "on (needs get on secrets and serviceaccounts in the namespaces served)"
    interval = config.kube.cluster_inventory_seconds
    said["cluster_inventory"] = (f"on, every {interval:g} s (needs list on pods cluster-wide)" if interval
                                 else "off: CLUSTER_INVENTORY_SECONDS=0")
    if runtime.replicator is None:
        said["copy_leases"] = "off: TARGET_REGISTRY is not set"
    elif not config.kube.copy_leases:
        said["copy_leases"] = "off: COPY_LEASES=false"
    else:
        namespace = config.kube.pod_namespace or connection.client.namespace or "image-replicator"
        identity = _identity(config)
        leases = CopyLeases(connection.client, namespace, identity, runtime.logger,
                            duration=config.kube.copy_lease_seconds)
        runtime.replicator.exclusive = leases.exclusive
        said["copy_leases"] = (f"on, as {identity} in namespace {namespace} (needs get, create, update, delete "
                               "on leases there)")
    said["gate_pods"] = ("on (needs list and update on pods and create on events cluster-wide)" if config.gate_pods
                         else "off: GATE_PODS=false")
    return ClusterFeatures(connection.client, pull_secrets, said)


def start_gatekeeper(runtime: Runtime, features: ClusterFeatures, webhook: Webhook,
                     mutator: Mutator) -> GateKeeper | None:
    """The gatekeeper, told when /mutate gates a Pod and when a copy ends (README "Scheduling gates")."""
    if not runtime.config.gate_pods or features.kube is None:
        return None
    gatekeeper = GateKeeper(features.kube, webhook, runtime.config, runtime.telemetry, runtime.logger,
                            identity=_identity(runtime.config))
    mutator.on_gated = gatekeeper.after_gating
    runtime.replicator.after_copy = gatekeeper.wake
    gatekeeper.start()
    return gatekeeper


def _identity(config: Config) -> str:
    """This replica's name in Leases and Events: its Pod's name (``POD_NAME``), else the host name."""
    return config.kube.pod_name or socket.gethostname()


def start_cluster_inventory(runtime: Runtime, features: ClusterFeatures, inventory: Inventory,
                            store: InventoryStore | None) -> ClusterInventory | None:
    interval = runtime.config.kube.cluster_inventory_seconds
    if features.kube is None or not interval:
        return None
    watcher = ClusterInventory(features.kube, inventory, runtime.logger, runtime.telemetry, interval=interval,
                               store=store)
    watcher.start()
    return watcher


def run_serve(runtime: Runtime) -> int:
    config, logger = runtime.config, runtime.logger
    lifecycle = Lifecycle()
    cluster = cluster_features(runtime)
    inventory, inventory_store = open_inventory(runtime)
    webhook = Webhook(config, runtime.checker, runtime.telemetry, logger, replicator=runtime.replicator,
                      inventory=inventory, inventory_store=inventory_store, pull_secrets=cluster.pull_secrets)
    mutator = Mutator(config, webhook, runtime.telemetry, logger)

    certificates = None
    if not config.skip_tls:
        try:
            certificates = CertificateReloader(config.tls_cert_path, config.tls_key_path, logger)
        except (OSError, ValueError) as exc:
            raise ConfigError("TLS_CERT_PATH", f"cannot load certificate and key: {exc}") from None
    metrics = runtime.telemetry.render
    health = _listen("HEALTH_PORT", config.health_port, health_router(lifecycle, inventory, metrics), logger,
                     lifecycle, max_body=MAX_BODY_BYTES)
    server = _listen("PORT", config.port, webhook_router(webhook, mutator, metrics, logger), logger, lifecycle,
                     certificates=certificates, max_connections=config.max_connections, max_body=MAX_BODY_BYTES)
    # Blocked here, before any thread starts, so every thread inherits the mask and the
    # signals wait for sigwait below: no handler races a lock, and the main thread
    # sleeps without waking up (each wake-up would take the GIL from a request).
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    health.serve_in_thread()
    server.serve_in_thread()
    lifecycle.ready = True
    logger.info("started", version=__version__, config=config.summary(), cluster=cluster.said)
    watcher = start_cluster_inventory(runtime, cluster, inventory, inventory_store)
    gatekeeper = start_gatekeeper(runtime, cluster, webhook, mutator)
    signal.sigwait(stop_signals)
    lifecycle.draining = True
    logger.info("draining", delay_seconds=config.shutdown_delay_seconds)
    time.sleep(config.shutdown_delay_seconds)
    # an answer in progress needs at most the admission budget
    server.drain(grace=config.admission_budget_seconds + 2)
    health.drain(grace=1)
    for background in (watcher, gatekeeper):
        if background is not None:
            background.stop()
    if inventory_store is not None:
        inventory_store.close()
    logger.info("stopped")
    # Background lookups and copies are abandoned, not awaited: each is safe to
    # interrupt (nothing half-copied is ever tagged), and waiting could outlast
    # the pod's termination grace period.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    filters = {"namespace": getattr(args, "namespace", None), "registry": getattr(args, "registry", None),
               "status": getattr(args, "status", None)}
    if args.command == "inventory" and not args.replicas:  # a plain HTTP client: no environment needed
        return run_inventory(args.url, args.sort, filters)
    try:
        if args.command == "inventory":
            connection = connect(load_config(os.environ).kube, allow_default_kubeconfig=True)
            if connection.client is None:
                raise ConfigError("KUBECONFIG", f"--replicas needs the Kubernetes API: {connection.description}")
            return run_replica_inventory(connection.client, args.replica_namespace, args.sort, filters)
        runtime = build_runtime(load_config(os.environ))
        if args.command == "check":
            return run_check(runtime, args.images)
        if args.command == "copy":
            return run_copy(runtime, args.source, args.target, args.progress)
        if args.command == "sync":
            return run_sync(runtime.config, runtime.copier, runtime.client,
                            sync_inputs(runtime.config, args.input, args.from_cluster, sys.stdin),
                            jobs=args.jobs, dry_run=args.dry_run)
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
    except KeyboardInterrupt:  # Ctrl-C during check or copy; serve handles it as SIGTERM
        print("imgrep: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the command line's boundary: one line, never a traceback
        print(f"imgrep: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
