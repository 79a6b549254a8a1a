"""Delivery URL -> asset: every shape the cleanup meets, and what it refuses."""

from __future__ import annotations

import logging

import pytest

from procqueue.images.cloudinary import batches
from procqueue.images.references import needles, referenced_by
from procqueue.images.urls import (
    Asset,
    DeliveryConfig,
    Rejection,
    RejectionKind,
    assets_of,
    explain,
    parse_delivery_url,
)

CONFIG = DeliveryConfig.of("demo", ["images.example.com", "cdn.shop.example"])


def image(public_id: str, resource_type: str = "image") -> Asset:
    return Asset("demo", resource_type, "upload", public_id)


R = "https://res.cloudinary.com/demo"

PARSED = [
    # plain, version, extension, http and https
    (f"{R}/image/upload/sample.jpg", image("sample")),
    (f"{R}/image/upload/v1712345678/sample.jpg", image("sample")),
    ("http://res.cloudinary.com/demo/image/upload/v1/sample.png", image("sample")),
    (f"{R}/image/upload/sample", image("sample")),
    # nested folders
    (f"{R}/image/upload/v1712345678/items/2024/item_1.jpg", image("items/2024/item_1")),
    (f"{R}/image/upload/items/item_1_b.jpg", image("items/item_1_b")),
    # chained transformations, with and without a version
    (f"{R}/image/upload/w_300,h_200,c_fill/e_sharpen/v1712345678/a/b.webp", image("a/b")),
    (f"{R}/image/upload/w_300,h_200,c_fill/e_sharpen/sample.jpg", image("sample")),
    (f"{R}/image/upload/c_thumb,g_face,w_150/f_auto,q_auto/items/x.jpg", image("items/x")),
    (f"{R}/image/upload/t_thumbnail/v3/x.jpg", image("x")),
    (f"{R}/image/upload/$w_300/w_$w/v3/x.jpg", image("x")),
    # a folder that merely contains an underscore is not a transformation
    (f"{R}/image/upload/my_folder/photo.jpg", image("my_folder/photo")),
    # dots in the public id: only the last extension is the format
    (f"{R}/image/upload/v5/my.holiday.photo.jpg", image("my.holiday.photo")),
    # video and raw (raw keeps its extension: it is part of the public id)
    (f"{R}/video/upload/v1/clips/intro.mp4", image("clips/intro", "video")),
    (f"{R}/raw/upload/v1/docs/manual.pdf", image("docs/manual.pdf", "raw")),
    # percent-encoding and unicode
    (f"{R}/image/upload/v1/%C3%A7i%C3%A7ek%20bah%C3%A7e.jpg", image("çiçek bahçe")),
    (f"{R}/image/upload/v1/çiçek.jpg", image("çiçek")),
    # query strings and fragments (the SDK's ?_a= analytics parameter)
    (f"{R}/image/upload/v1/sample.jpg?_a=BAMAGSa0", image("sample")),
    (f"{R}/image/upload/v1/sample.jpg#top", image("sample")),
    # hosts: legacy CDN sub-domains, private CDN, custom domains (with/without cloud)
    ("https://res-3.cloudinary.com/demo/image/upload/v1/sample.jpg", image("sample")),
    ("https://demo-res.cloudinary.com/image/upload/v1/sample.jpg", image("sample")),
    ("https://images.example.com/image/upload/v1/sample.jpg", image("sample")),
    ("https://cdn.shop.example/demo/image/upload/w_100/sample.jpg", image("sample")),
    ("HTTPS://RES.CLOUDINARY.COM/demo/image/upload/v1/Sample.JPG", image("Sample")),
    ("  https://res.cloudinary.com/demo/image/upload/v1/sample.jpg  ", image("sample")),
]

REJECTED = [
    # other clouds, other hosts
    ("https://res.cloudinary.com/other/image/upload/v1/sample.jpg", RejectionKind.OTHER_CLOUD),
    ("https://other-res.cloudinary.com/image/upload/v1/sample.jpg", RejectionKind.OTHER_CLOUD),
    ("https://images.example.com/other/image/upload/v1/x.jpg", RejectionKind.OTHER_CLOUD),
    ("https://example.com/demo/image/upload/v1/sample.jpg", RejectionKind.UNKNOWN_HOST),
    ("https://i.imgur.com/abc.jpg", RejectionKind.UNKNOWN_HOST),
    ("https://api.cloudinary.com/v1_1/demo/image/upload", RejectionKind.NOT_DELETABLE),
    # types we cannot own or delete by public id, and other resource types
    (f"{R}/image/fetch/https://example.com/a.jpg", RejectionKind.NOT_DELETABLE),
    (f"{R}/image/private/s--abc--/v1/secret.jpg", RejectionKind.NOT_DELETABLE),
    (f"{R}/image/authenticated/s--abc--/v1/secret.jpg", RejectionKind.NOT_DELETABLE),
    (f"{R}/image/youtube/dQw4w9WgXcQ.jpg", RejectionKind.NOT_DELETABLE),
    (f"{R}/font/upload/v1/x.ttf", RejectionKind.NOT_DELETABLE),
    # malformed strings
    ("", RejectionKind.MALFORMED),
    ("   ", RejectionKind.MALFORMED),
    ("not a url", RejectionKind.MALFORMED),
    ("ftp://res.cloudinary.com/demo/image/upload/v1/a.jpg", RejectionKind.MALFORMED),
    ("//res.cloudinary.com/demo/image/upload/v1/a.jpg", RejectionKind.MALFORMED),
    ("https://[::1/demo/image/upload/a.jpg", RejectionKind.MALFORMED),
    (f"{R}/image/upload", RejectionKind.MALFORMED),
    (f"{R}/image/upload/", RejectionKind.MALFORMED),
    ("https://res.cloudinary.com/", RejectionKind.MALFORMED),
    (f"{R}/image/upload/v1/a//b.jpg", RejectionKind.MALFORMED),
    (f"{R}/image/upload/v1/../b.jpg", RejectionKind.MALFORMED),
    (f"{R}/image/upload/somefolder/v1/b.jpg", RejectionKind.MALFORMED),
    (f"{R}/image/upload/v1/" + "x" * 5000 + ".jpg", RejectionKind.MALFORMED),
]

#: Public ids that, once percent-decoded, could name an asset other than the one their
#: segments spell (issue 22: `listings%2F..%2Favatars/x.jpg` became a delete call for
#: `listings/../avatars/x`, which passes a `listings` folder check).
ESCAPING = [
    f"{R}/image/upload/listings%2F..%2Favatars/x.jpg",
    f"{R}/image/upload/v1/listings%2F..%2Favatars/x.jpg",
    f"{R}/image/upload/w_100/v1/listings%2f..%2favatars/x.jpg",
    "https://images.example.com/image/upload/v1/listings%2F..%2Favatars/x.jpg",
    f"{R}/raw/upload/v1/listings%2F..%2Fdocs/a.pdf",
    f"{R}/image/upload/v1/listings%2F%2E%2E%2Favatars%2Fx.jpg",
    f"{R}/image/upload/v1/listings%2F.%2Fx.jpg",
    f"{R}/image/upload/v1/listings%2F%2Fx.jpg",
    f"{R}/image/upload/v1/%2Flistings/x.jpg",
    f"{R}/image/upload/v1/listings/%20..%20/x.jpg",
    f"{R}/image/upload/v1/listings/...jpg",  # "..", once the extension is taken off
    f"{R}/image/upload/v1/listings/%EF%BC%8E%EF%BC%8E/x.jpg",  # fullwidth dots
    f"{R}/image/upload/v1/listings%5C..%5Cavatars/x.jpg",
    f"{R}/image/upload/v1/listings\\x.jpg",
    f"{R}/image/upload/v1/listings%252F..%252Favatars/x.jpg",  # encoded twice
    f"{R}/image/upload/v1/listings/x%00.jpg",
    f"{R}/image/upload/v1/listings/x%0A.jpg",
]


@pytest.mark.parametrize("url", ESCAPING)
def test_public_ids_that_could_name_another_asset_are_refused(url: str) -> None:
    found = explain(url, CONFIG)
    assert isinstance(found, Rejection), found
    assert found.kind is RejectionKind.MALFORMED
    assert "public id" in found.reason


def test_a_refused_public_id_leaves_a_log_line_and_no_asset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="procqueue.images.urls")
    url = f"{R}/image/upload/v1/listings%2F..%2Favatars/x.jpg"
    assert parse_delivery_url(url, CONFIG) is None
    assert assets_of([url], CONFIG) == []
    (line, _) = [record.getMessage() for record in caplog.records]
    assert "malformed" in line and "relative segment" in line and "listings/../avatars" in line
    # an encoded slash that stays inside its folders is one more folder level
    assert explain(f"{R}/image/upload/v1/listings%2Fx.jpg", CONFIG) == image("listings/x")


@pytest.mark.parametrize(("url", "expected"), PARSED)
def test_delivery_urls_give_their_asset(url: str, expected: Asset) -> None:
    assert explain(url, CONFIG) == expected


@pytest.mark.parametrize(("url", "kind"), REJECTED)
def test_unusable_urls_are_rejected_with_a_reason(url: str, kind: RejectionKind) -> None:
    found = explain(url, CONFIG)
    assert isinstance(found, Rejection)
    assert found.kind is kind
    assert found.reason


@pytest.mark.parametrize("value", [None, 42, b"https://res.cloudinary.com/demo/image/upload/a"])
def test_non_strings_never_raise(value: object) -> None:
    found = explain(value, CONFIG)  # type: ignore[arg-type]
    assert isinstance(found, Rejection)
    assert found.kind is RejectionKind.MALFORMED


def test_skipped_urls_leave_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="procqueue.images.urls")
    assert parse_delivery_url("https://example.com/x.jpg", CONFIG) is None
    assert parse_delivery_url(f"{R}/image/fetch/https://example.com/a.jpg", CONFIG) is None
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert "unknown host" in lines[0] and "example.com/x.jpg" in lines[0]
    assert "not deletable" in lines[1] and "'fetch'" in lines[1]


def test_assets_of_dedupes_forms_of_one_asset() -> None:
    urls = [
        f"{R}/image/upload/v1/items/a.jpg",
        f"{R}/image/upload/w_100/v2/items/a.png",
        "https://images.example.com/image/upload/v1/items/a.jpg",
        f"{R}/video/upload/v1/items/a.mp4",
        "https://example.com/items/a.jpg",
    ]
    assert assets_of(urls, CONFIG) == [image("items/a"), image("items/a", "video")]


def test_a_reference_is_the_same_asset_in_any_form() -> None:
    a, b = image("items/a"), image("items/b")
    urls = [
        f"{R}/image/upload/c_fill,w_300/v9/items/a.webp",  # same asset: referenced
        f"{R}/video/upload/v1/items/b.mp4",  # same public id, another resource type
        "https://res.cloudinary.com/other/image/upload/v1/items/b.jpg",  # another cloud
    ]
    assert referenced_by(urls, [a, b], CONFIG) == {a}


def test_when_in_doubt_a_url_counts_as_a_reference() -> None:
    a = image("items/a")
    # an unconfigured custom domain might serve our asset: keep it
    assert referenced_by(["https://unknown-cdn.example/image/upload/v1/items/a.jpg"], [a], CONFIG)
    assert not referenced_by(["https://unknown-cdn.example/items/zzz.jpg"], [a], CONFIG)


def test_needles_cover_raw_and_percent_encoded_public_ids() -> None:
    assert {"çiçek bahçe", "%C3%A7i%C3%A7ek%20bah%C3%A7e"} <= set(needles([image("çiçek bahçe")]))


def test_batches_group_by_resource_and_delivery_type_up_to_the_limit() -> None:
    assets = [image(f"i{n:03}") for n in range(230)] + [image(f"v{n}", "video") for n in range(3)]
    calls = batches(assets + assets[:5], 100)
    assert [(kind, len(group)) for kind, _, group in calls] == [
        ("image", 100),
        ("image", 100),
        ("image", 30),
        ("video", 3),
    ]
    assert all(delivery == "upload" for _, delivery, _ in calls)
