"""Parse container image references the way docker and Kubernetes do.

The grammar is distribution/reference (``regexp.go``) and the Docker Hub
normalisation is its ``normalize.go`` (``ParseNormalizedNamed``), so that an
image the kubelet would pull is accepted here and one it would reject is not.
Deliberate differences: the registry host is lowercased and every Docker Hub
alias becomes ``docker.io``, so one registry has one name in caches, metrics
and credentials lookups; the name length is measured on that canonical form;
a digest must use an algorithm imgrep can verify (sha256, sha384, sha512).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from imgrep.errors import InvalidReference
from imgrep.oci.digest import digest_problem

__all__ = ["DOCKER_HUB", "DOCKER_HUB_API", "DOCKER_HUB_ALIASES", "Reference", "Repo", "parse_reference"]

DOCKER_HUB = "docker.io"
#: where Docker Hub's registry v2 API actually answers
DOCKER_HUB_API = "registry-1.docker.io"

#: names people write for Docker Hub; all are canonicalised to DOCKER_HUB
DOCKER_HUB_ALIASES = frozenset(
    {DOCKER_HUB, "index.docker.io", DOCKER_HUB_API, "registry.hub.docker.com"}
)
_OFFICIAL_PREFIX = "library/"
_DEFAULT_TAG = "latest"
#: distribution's NameTotalLengthMax: registry + "/" + repository
_NAME_MAX = 255
#: the tag grammar allows one leading character plus 127 more
_TAG_MAX = 128

# The patterns below are distribution/reference regexp.go, spelled with
# explicit ASCII classes because Python's \w and [[:xdigit:]] differ from Go's.
# path-component: alphanumeric runs joined by ".", "_", "__" or dashes
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
# domainAndPort: DNS-ish name or IPv4, or a bracketed IPv6 literal, then :port
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
# tag: [\w][\w.-]{0,127}
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# anchoredIdentifierRegexp: a bare image id, which normalize.go refuses as a name
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference; str() gives the canonical form.

    That form parses back to an equal Reference, except for a dotless host
    named only by uppercase ("MyHost/app"): lowercased, it reads as Docker Hub.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host to send registry v2 requests to (Docker Hub's API lives elsewhere)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def identifier(self) -> str:
        """What to ask the registry for: a digest pins content, so it wins over a tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class Repo:
    """A repository as the registry API addresses it: ``Reference.api_host`` and its repository.

    A Reference names an image the way people write it (``nginx``); a Repo is where its
    requests go (``registry-1.docker.io``, ``library/nginx``).
    """

    registry: str  # API host, e.g. registry-1.docker.io or 127.0.0.1:5000
    repository: str


def parse_reference(text: str) -> Reference:
    """Parse and normalise ``text``; raise InvalidReference naming the first problem."""
    if not isinstance(text, str):
        raise InvalidReference(repr(text), "reference must be a string")
    return _parse(text)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Reference:
    """Cached: admission sees the same few images over and over, and a Reference is immutable."""
    if not text:
        raise InvalidReference(text, "empty reference")
    if any(char.isspace() for char in text):
        raise InvalidReference(text, "contains whitespace")
    if "://" in text:
        raise InvalidReference(text, "url schemes are not allowed")
    if _IMAGE_ID_RE.fullmatch(text):
        raise InvalidReference(text, "a bare 64-hex image id is not a name")

    rest, at, digest = text.partition("@")
    if at:
        _check_digest(text, digest)
    else:
        digest = None
    # A tag follows the first ":" of the last path segment; earlier colons are a port.
    head, slash, last = rest.rpartition("/")
    last, colon, tag = last.partition(":")
    if colon:
        _check_tag(text, tag)
    else:
        tag = None
    name = head + slash + last
    if not name:
        raise InvalidReference(text, "missing repository name")

    registry, repository = _split_registry(name)
    if repository != repository.lower():
        raise InvalidReference(text, "repository name must be lowercase")
    if not _PATH_RE.fullmatch(repository):
        raise InvalidReference(text, "invalid repository name")
    if not _HOST_RE.fullmatch(registry):
        raise InvalidReference(text, "invalid registry host")
    registry = registry.lower()
    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = _OFFICIAL_PREFIX + repository
    if len(registry) + 1 + len(repository) > _NAME_MAX:
        raise InvalidReference(text, f"name longer than {_NAME_MAX} characters")
    if tag is None and digest is None:
        tag = _DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def _split_registry(name: str) -> tuple[str, str]:
    """Split off the registry as docker's splitDockerDomain does.

    The first component names a registry only if it looks like a host (a "."
    or ":" in it, or ``localhost``) or has uppercase letters, which a
    repository path never has; otherwise the whole name is on Docker Hub.
    """
    first, slash, rest = name.partition("/")
    if slash and (
        first == "localhost" or "." in first or ":" in first or first != first.lower()
    ):
        return first, rest
    return DOCKER_HUB, name


def _check_tag(text: str, tag: str) -> None:
    if not tag:
        raise InvalidReference(text, "empty tag")
    if len(tag) > _TAG_MAX:
        raise InvalidReference(text, f"tag longer than {_TAG_MAX} characters")
    if not _TAG_RE.fullmatch(tag):
        raise InvalidReference(text, "invalid tag")


def _check_digest(text: str, digest: str) -> None:
    """The digest grammar of ``digest.py``: go-digest's registered algorithms at their exact
    lengths. distribution's grammar also admits other algorithm names, which no
    registry or runtime can verify; a pin imgrep cannot check is refused, not trusted."""
    problem = digest_problem(digest)
    if problem is not None:
        raise InvalidReference(text, problem)
