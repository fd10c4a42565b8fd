"""Artifacts in an S3-compatible store (AWS S3, MinIO), reached by boto3; agents and browsers use pre-signed URLs.

The upload URL is signed with the declared ``Content-Length`` and ``x-amz-checksum-sha256``:
S3 and MinIO refuse a PUT whose length or checksum differs. The server does not rely on that
alone (not every S3-compatible server checks): ``actions.complete_upload`` reads the object
back and hashes it before the artifact is listed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from aegis_site.core import clock
from tasks.artifacts.errors import ArtifactRefused
from tasks.artifacts.storage import READ_CHUNK_BYTES, Upload

CONTENT_TYPE = "application/octet-stream"


def unavailable(error: Exception) -> ArtifactRefused:
    """The store did not answer, or refused the server itself (credentials, bucket): a 503, not the caller's fault."""
    return ArtifactRefused("store_unavailable", f"The artifact store failed: {error}", status=503)


def _call(operation: Callable[..., Any], **params: Any) -> Any:
    try:
        return operation(**params)
    except (BotoCoreError, ClientError) as error:
        raise unavailable(error) from error


def _client(endpoint_url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=settings.TASK_ARTIFACT_S3_REGION,
        aws_access_key_id=settings.TASK_ARTIFACT_S3_ACCESS_KEY or None,
        aws_secret_access_key=settings.TASK_ARTIFACT_S3_SECRET_KEY or None,
        # Path-style addressing: MinIO and other self-hosted stores have no per-bucket host names.
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"mode": "standard"}),
    )


@dataclass
class S3Storage:
    bucket: str
    client: Any  # the server's own calls (HEAD, GET, DELETE), at the endpoint it reaches
    signer: Any  # signs URLs for agents and browsers, at the address they reach (a signature covers the host)
    ttl_s: int
    name: str = "s3"

    @classmethod
    def from_settings(cls) -> S3Storage:
        return cls(
            bucket=settings.TASK_ARTIFACT_S3_BUCKET,
            client=_client(settings.TASK_ARTIFACT_S3_ENDPOINT_URL),
            signer=_client(settings.TASK_ARTIFACT_S3_PUBLIC_URL),
            ttl_s=settings.TASK_ARTIFACT_URL_TTL,
        )

    def upload(self, key: str, size: int, sha256: str, base_url: str) -> Upload:
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        params = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentLength": size,
            "ContentType": CONTENT_TYPE,
            "ChecksumSHA256": checksum,
        }
        url = self.signer.generate_presigned_url("put_object", Params=params, ExpiresIn=self.ttl_s)
        headers = {"Content-Type": CONTENT_TYPE, "x-amz-checksum-sha256": checksum}
        return Upload(url=url, expires_at=clock.now() + timedelta(seconds=self.ttl_s), headers=headers)

    def download_url(self, key: str, filename: str, base_url: str) -> str:
        params = {
            "Bucket": self.bucket,
            "Key": key,
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
            "ResponseContentType": CONTENT_TYPE,
        }
        url: str = self.signer.generate_presigned_url("get_object", Params=params, ExpiresIn=self.ttl_s)
        return url

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise unavailable(error) from error
        except BotoCoreError as error:
            raise unavailable(error) from error
        return int(head["ContentLength"])

    def read(self, key: str) -> Iterator[bytes]:
        body = _call(self.client.get_object, Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(READ_CHUNK_BYTES)
        except BotoCoreError as error:
            raise unavailable(error) from error
        finally:
            body.close()

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            objects = [{"Key": key} for key in keys[start : start + 1000]]
            _call(self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
