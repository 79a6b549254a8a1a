"""Cloudinary delivery URLs -> the asset behind them.

    https://res.cloudinary.com/<cloud>/<resource_type>/<type>/[<transformation>/...][v<version>/]<public_id>[.<ext>]

also on `<cloud>-res.cloudinary.com` (private CDN, no cloud in the path) and on
configured custom domains (with or without the cloud in the path). Only assets
this account owns and can delete by public id are returned: resource types
image, video and raw, delivery type `upload`. Everything else is a `Rejection`
with a reason: `explain()` never raises, `parse_delivery_url()` logs the reason.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

RESOURCE_TYPES = frozenset({"image", "video", "raw"})
#: Delivery types whose assets we own and delete by public id. `fetch`, the
#: social types and `private`/`authenticated` (not deletable here) are skipped.
DELETABLE_TYPES = frozenset({"upload"})

_SHARED_HOSTS = frozenset({"res.cloudinary.com", *(f"res-{n}.cloudinary.com" for n in range(1, 6))})
_PRIVATE_CDN_HOST = re.compile(r"^(?P<cloud>[a-z0-9][a-z0-9_\-]*)-res\.cloudinary\.com$")
_VERSION = re.compile(r"^v\d+$")
# Transformation parameters (https://cloudinary.com/documentation/transformation_reference).
_TRANSFORMATION_KEYS = (
    "a|ac|af|ar|b|bo|br|c|co|cs|d|dl|dn|dpr|du|e|eo|f|fl|fn|fps|g|h|if|ki|l|o|p|pg|q|r|"
    "so|sp|t|u|vc|vs|w|x|y|z"
)
_TRANSFORMATION_COMPONENT = re.compile(
    rf"^(?:(?:{_TRANSFORMATION_KEYS})_.+|\$[A-Za-z0-9]+_.+|if_end)$"
)
_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,5}$")
#: In a decoded public id: never from an upload, and a way to name another asset.
_FORBIDDEN_IN_PUBLIC_ID = re.compile(r"[\\%\x00-\x1f\x7f]")
MAX_URL_LENGTH = 4096


class RejectionKind(Enum):
    OTHER_CLOUD = "other cloud"  # a Cloudinary URL of another account: never ours
    UNKNOWN_HOST = "unknown host"  # not Cloudinary, nor a configured custom domain
    NOT_DELETABLE = "not deletable"  # fetch/private/authenticated types, other resources
    MALFORMED = "malformed"

    @property
    def may_refer_to_ours(self) -> bool:
        """Whether such a URL might still point at one of our assets (be careful)."""
        return self in (RejectionKind.UNKNOWN_HOST, RejectionKind.MALFORMED)


@dataclass(frozen=True, order=True)
class Asset:
    """One deletable asset: what the Admin API identifies it by."""

    cloud_name: str
    resource_type: str
    delivery_type: str
    public_id: str

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.delivery_type}/{self.public_id}"


@dataclass(frozen=True)
class Rejection:
    kind: RejectionKind
    reason: str


@dataclass(frozen=True)
class DeliveryConfig:
    """Which URLs are ours: the cloud name and the custom delivery domains."""

    cloud_name: str
    custom_domains: frozenset[str] = frozenset()
    #: Every cloud's URLs count, each asset with its own cloud: for listing only
    #: (`procqueue images orphans` with no cloud name set), never for deleting.
    any_cloud: bool = False

    @classmethod
    def of(cls, cloud_name: str, custom_domains: Iterable[str] = ()) -> DeliveryConfig:
        domains = frozenset(domain.strip().lower() for domain in custom_domains if domain.strip())
        return cls(cloud_name.strip(), domains)

    @classmethod
    def every_cloud(cls) -> DeliveryConfig:
        return cls("", any_cloud=True)


def _is_transformation(segment: str) -> bool:
    return all(_TRANSFORMATION_COMPONENT.match(part) for part in segment.split(","))


def _cloud_and_path(
    host: str, segments: list[str], config: DeliveryConfig
) -> tuple[str, list[str]]:
    if host in _SHARED_HOSTS:
        if not segments or not segments[0]:
            raise _Reject(RejectionKind.MALFORMED, "no cloud name in the path")
        return segments[0], segments[1:]
    private_cdn = _PRIVATE_CDN_HOST.match(host)
    if private_cdn:
        return private_cdn["cloud"], segments
    if host in config.custom_domains:
        if segments and segments[0] in RESOURCE_TYPES:
            return config.cloud_name, segments
        if not segments or not segments[0]:
            raise _Reject(RejectionKind.MALFORMED, "empty path")
        return segments[0], segments[1:]
    if host.endswith(".cloudinary.com") or host == "cloudinary.com":
        raise _Reject(RejectionKind.NOT_DELETABLE, f"{host} is not a delivery host")
    raise _Reject(
        RejectionKind.UNKNOWN_HOST,
        f"host {host!r} is neither Cloudinary nor a configured custom domain "
        "(PROCQUEUE_CLOUDINARY_DOMAINS)",
    )


def _public_id(resource_type: str, rest: list[str]) -> str:
    version_at = next((i for i, segment in enumerate(rest[:-1]) if _VERSION.match(segment)), None)
    if version_at is not None:
        transformations, parts = rest[:version_at], rest[version_at + 1 :]
        odd = [segment for segment in transformations if not _is_transformation(segment)]
        if odd:
            raise _Reject(
                RejectionKind.MALFORMED, f"{odd[0]!r} before the version is not a transformation"
            )
    else:
        start = 0
        while start < len(rest) - 1 and _is_transformation(rest[start]):
            start += 1
        parts = rest[start:]
    *folders, name = parts
    if resource_type != "raw":  # raw public ids keep their extension
        stem, dot, extension = name.rpartition(".")
        if dot and stem and _EXTENSION.match(extension):
            name = stem
    return _checked_public_id("/".join([*folders, name]))


def _checked_public_id(public_id: str) -> str:
    """The decoded public id, unless it could name an asset other than the one its
    segments spell: `.`/`..`/empty segments (also once decoded: `a%2F..%2Fb`, or
    `...jpg` losing its extension), a backslash, a `%` left after decoding (encoded
    twice), a control character. Cloudinary makes none of these on upload; the
    folder check (PROCQUEUE_CLOUDINARY_FOLDERS) then reads the id as it is deleted."""
    for segment in public_id.split("/"):
        if unicodedata.normalize("NFKC", segment).strip() in ("", ".", ".."):
            raise _Reject(
                RejectionKind.MALFORMED,
                f"empty or relative segment in the public id {public_id[:200]!r}",
            )
    odd = _FORBIDDEN_IN_PUBLIC_ID.search(public_id)
    if odd:
        raise _Reject(
            RejectionKind.MALFORMED,
            f"{odd.group()!r} in the public id {public_id[:200]!r} (backslashes, a % left "
            "after decoding and control characters are never in an uploaded asset's id)",
        )
    return public_id


class _Reject(Exception):
    def __init__(self, kind: RejectionKind, reason: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(kind, reason)


def _explain(url: str, config: DeliveryConfig) -> Asset:
    if not isinstance(url, str) or not url.strip():
        raise _Reject(RejectionKind.MALFORMED, "empty")
    if len(url) > MAX_URL_LENGTH:
        raise _Reject(RejectionKind.MALFORMED, f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
    except ValueError as error:
        raise _Reject(RejectionKind.MALFORMED, f"not a URL ({error})") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise _Reject(RejectionKind.MALFORMED, "not an http(s) URL")
    raw_segments = parts.path.split("/")[1:]
    segments = [unquote(segment) for segment in raw_segments]
    cloud, path = _cloud_and_path(host, segments, config)
    if not config.any_cloud and cloud.lower() != config.cloud_name.lower():
        raise _Reject(RejectionKind.OTHER_CLOUD, f"cloud {cloud!r}, not {config.cloud_name!r}")
    if len(path) < 3:
        raise _Reject(RejectionKind.MALFORMED, "expected /<resource_type>/<type>/<public_id>")
    resource_type, delivery_type, rest = path[0], path[1], path[2:]
    if resource_type not in RESOURCE_TYPES:
        raise _Reject(RejectionKind.NOT_DELETABLE, f"resource type {resource_type!r}")
    if delivery_type not in DELETABLE_TYPES:
        raise _Reject(
            RejectionKind.NOT_DELETABLE,
            f"delivery type {delivery_type!r} (only {', '.join(sorted(DELETABLE_TYPES))} "
            "assets are deleted)",
        )
    owner = cloud if config.any_cloud else config.cloud_name
    return Asset(owner, resource_type, delivery_type, _public_id(resource_type, rest))


def explain(url: str, config: DeliveryConfig) -> Asset | Rejection:
    """The asset behind a delivery URL, or why there is none. Never raises."""
    try:
        return _explain(url, config)
    except _Reject as rejected:
        return rejected.rejection


def parse_delivery_url(url: str, config: DeliveryConfig) -> Asset | None:
    """The asset behind a delivery URL; None (with a log line) when there is none to delete."""
    found = explain(url, config)
    if isinstance(found, Rejection):
        logger.info("image URL skipped (%s: %s): %.200s", found.kind.value, found.reason, url)
        return None
    return found


def assets_of(urls: Iterable[str], config: DeliveryConfig) -> list[Asset]:
    """The distinct deletable assets behind some URLs, in a stable order."""
    found = {parse_delivery_url(url, config) for url in urls}
    return sorted(asset for asset in found if asset is not None)
