"""The images slice's settings section (docs/images.md): the Cloudinary account image
cleanup deletes from. CLOUDINARY_URL is read as the SDK reads it
(cloudinary://key:secret@cloud); the separate variables win over it. It hands out
`cloudinary`, the `CloudinaryConfig` the deleter takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from procqueue.settings import Section, bare_env

#: The Cloudinary Admin API's limit of public ids per delete_resources call.
CLOUDINARY_MAX_IDS_PER_CALL = 100


@dataclass(frozen=True)
class CloudinaryConfig:
    """The Cloudinary account image cleanup deletes from (procqueue/images/cloudinary.py)."""

    cloud_name: str
    api_key: SecretStr
    api_secret: SecretStr
    upload_prefix: str | None = None
    timeout: float = 10.0
    batch_size: int = CLOUDINARY_MAX_IDS_PER_CALL
    domains: tuple[str, ...] = ()  # custom delivery domains
    folders: tuple[str, ...] = ("items", "listings")  # cleanup deletes from these only; "*": any


class ImageSettings(Section):
    cloudinary_url: SecretStr | None = Field(
        default=None, validation_alias=bare_env("CLOUDINARY_URL")
    )
    cloudinary_cloud_name: str | None = Field(
        default=None, validation_alias=bare_env("CLOUDINARY_CLOUD_NAME")
    )
    cloudinary_api_key: SecretStr | None = Field(
        default=None, validation_alias=bare_env("CLOUDINARY_API_KEY")
    )
    cloudinary_api_secret: SecretStr | None = Field(
        default=None, validation_alias=bare_env("CLOUDINARY_API_SECRET")
    )
    cloudinary_upload_prefix: str | None = Field(default=None, pattern=r"^https?://\S+$")
    cloudinary_domains: str = ""  # custom delivery domains, comma-separated
    # The folders the marketplace uploads to: cleanup deletes nothing outside them.
    cloudinary_folders: str = Field(default="items,listings", min_length=1)
    cloudinary_batch_size: int = Field(default=100, ge=1, le=100)
    cloudinary_timeout: float = Field(default=10.0, gt=0)

    @field_validator("cloudinary_url")
    @classmethod
    def _check_cloudinary_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _cloudinary_url_parts(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _fill_cloudinary_from_url(self) -> Self:
        if self.cloudinary_url is not None:
            cloud, key, secret, prefix = _cloudinary_url_parts(
                self.cloudinary_url.get_secret_value()
            )
            self.cloudinary_cloud_name = self.cloudinary_cloud_name or cloud
            self.cloudinary_api_key = self.cloudinary_api_key or SecretStr(key)
            self.cloudinary_api_secret = self.cloudinary_api_secret or SecretStr(secret)
            self.cloudinary_upload_prefix = self.cloudinary_upload_prefix or prefix
        return self

    @property
    def cloudinary(self) -> CloudinaryConfig | None:
        """None: no Cloudinary credentials (cloud name, API key and secret)."""
        if not (
            self.cloudinary_cloud_name and self.cloudinary_api_key and self.cloudinary_api_secret
        ):
            return None
        return CloudinaryConfig(
            cloud_name=self.cloudinary_cloud_name,
            api_key=self.cloudinary_api_key,
            api_secret=self.cloudinary_api_secret,
            upload_prefix=self.cloudinary_upload_prefix,
            timeout=self.cloudinary_timeout,
            batch_size=self.cloudinary_batch_size,
            domains=self.cloudinary_domain_list,
            folders=tuple(
                part.strip().strip("/")
                for part in self.cloudinary_folders.split(",")
                if part.strip().strip("/")
            ),
        )

    @property
    def cloudinary_domain_list(self) -> tuple[str, ...]:
        """CLOUDINARY_DOMAINS, split: the custom delivery domains."""
        return tuple(part.strip() for part in self.cloudinary_domains.split(",") if part.strip())


def _cloudinary_url_parts(text: str) -> tuple[str, str, str, str | None]:
    """(cloud, api key, api secret, upload prefix) of cloudinary://key:secret@cloud."""
    parts = urlsplit(text.strip())
    if parts.scheme != "cloudinary" or not (parts.username and parts.password and parts.hostname):
        raise ValueError(
            "must look like cloudinary://<api_key>:<api_secret>@<cloud_name> "
            "(Cloudinary console: Dashboard > API environment variable)"
        )
    prefix = parse_qs(parts.query).get("upload_prefix", [None])[0]
    return parts.hostname, unquote(parts.username), unquote(parts.password), prefix
