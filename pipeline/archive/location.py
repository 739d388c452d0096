"""Where a store lives: a local directory or `s3://bucket/prefix` on S3 or an S3-compatible server.

Credentials and endpoint come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL) and reach Lance as `storage_options`; they are never printed
or written into the store. The store's metadata file sits beside its tables, in the same place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from pipeline.files import atomic_write

REMOTE_SCHEME = "s3://"
LOCAL_SESSIONS = Path("ingest/sessions")  # where sessions of a remote store are kept (they stay on this machine)
CONNECT_TIMEOUT_S = 5
REQUEST_TIMEOUT_S = 60
RETRIES = 3


class StoreError(Exception):
    """A store that is missing, cannot be reached (bad credentials, no bucket, no endpoint), of another format,
    or built with settings other than the ones asked for."""


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


@dataclass(frozen=True)
class Location:
    uri: str  # a local path as given, or s3://bucket/prefix (no trailing slash)
    # the storage options fixed when the location was handed to another process (see `carried`); None: read
    # from this process's environment each time
    fixed_options: tuple[tuple[str, str], ...] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, store: "str | Path | Location") -> "Location":
        if isinstance(store, Location):
            return store
        text = str(store)
        return cls(text.rstrip("/") if text.startswith(REMOTE_SCHEME) else text)

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """A local store is a path (os.fspath, open, shutil); an s3:// store is not."""
        if self.remote:
            raise TypeError(f"{self.uri} is an object-store URI, not a local path")
        return self.uri

    @property
    def remote(self) -> bool:
        return self.uri.startswith(REMOTE_SCHEME)

    @property
    def bucket_key(self) -> tuple[str, str]:
        parsed = urlparse(self.uri)
        return parsed.netloc, parsed.path.strip("/")

    def carried(self) -> "Location":
        """This location with its storage options fixed now, for a process that lacks the AWS variables (a Ray
        worker: a local Ray is started without secrets in its environment)."""
        options = self.storage_options()
        return replace(self, fixed_options=None if options is None else tuple(sorted(options.items())))

    def storage_options(self) -> dict[str, str] | None:
        """Lance's options for this store, from the environment (None for a local directory)."""
        if not self.remote:
            return None
        if self.fixed_options is not None:
            return dict(self.fixed_options)
        options = {"connect_timeout": f"{CONNECT_TIMEOUT_S}s", "timeout": f"{REQUEST_TIMEOUT_S}s",
                   "client_max_retries": str(RETRIES)}
        for variable, key in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
                              ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                              ("AWS_SESSION_TOKEN", "aws_session_token")):
            if _env(variable):
                options[key] = _env(variable)
        region = _env("AWS_REGION") or _env("AWS_DEFAULT_REGION")
        if region:
            options["aws_region"] = region
        endpoint = _env("AWS_ENDPOINT_URL")
        if endpoint:
            options["aws_endpoint"] = endpoint
            options["allow_http"] = str(endpoint.startswith("http://")).lower()
        return options

    def connect(self, *, read_consistency_interval: float | None = None):
        """A LanceDB connection to the store."""
        import lancedb
        from datetime import timedelta

        interval = None if read_consistency_interval is None else timedelta(seconds=read_consistency_interval)
        return lancedb.connect(self.uri, storage_options=self.storage_options(),
                               read_consistency_interval=interval)

    def table_uri(self, name: str) -> str:
        return f"{self.uri}/{name}.lance" if self.remote else str(Path(self.uri) / f"{name}.lance")

    # --- small files beside the tables (the store's metadata) ------------------------------------------------------

    def read_text(self, name: str) -> str | None:
        """The text of file `name` in the store, or None when there is none."""
        if not self.remote:
            try:
                return (Path(self.uri) / name).read_text()
            except (FileNotFoundError, NotADirectoryError):
                return None
        filesystem, path = self._s3(name)
        try:
            with filesystem.open_input_stream(path) as stream:
                return stream.read().decode()
        except FileNotFoundError:
            self._check_bucket(filesystem)
            return None
        except OSError as exc:
            raise self._error(exc) from None

    def write_text(self, name: str, text: str) -> None:
        """Replace file `name` in the store at once (a durable rename locally; one PUT on S3, which is atomic)."""
        if not self.remote:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            atomic_write(Path(self.uri) / name, text)
            return
        filesystem, path = self._s3(name)
        try:
            with filesystem.open_output_stream(path) as stream:
                stream.write(text.encode())
        except OSError as exc:
            raise self._error(exc) from None

    def is_file(self) -> bool:
        """Whether a local store path names a file (an object store has no such case)."""
        return not self.remote and Path(self.uri).exists() and not Path(self.uri).is_dir()

    def list_names(self) -> list[str]:
        """The names directly inside the store (files, table directories); empty when there is nothing there."""
        if not self.remote:
            directory = Path(self.uri)
            return [entry.name for entry in directory.iterdir()] if directory.is_dir() else []
        from pyarrow import fs

        filesystem, path = self._s3("")
        try:
            infos = filesystem.get_file_info(fs.FileSelector(path, recursive=False, allow_not_found=True))
        except OSError as exc:
            raise self._error(exc) from None
        return [info.base_name for info in infos]

    def sessions_dir(self) -> Path:
        """Where agent sessions of this store live: beside a local store; on this machine for a remote one."""
        if not self.remote:
            return Path(self.uri).parent / "sessions"
        bucket, key = self.bucket_key
        return LOCAL_SESSIONS / bucket / key

    def _s3(self, name: str):
        from pyarrow import fs

        options = self.storage_options() or {}
        endpoint = options.get("aws_endpoint")
        parsed = urlparse(endpoint) if endpoint else None
        filesystem = fs.S3FileSystem(
            access_key=options.get("aws_access_key_id"), secret_key=options.get("aws_secret_access_key"),
            session_token=options.get("aws_session_token"), region=options.get("aws_region"),
            endpoint_override=parsed.netloc if parsed else None, scheme=parsed.scheme if parsed else "https",
            connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S,
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=RETRIES))
        bucket, key = self.bucket_key
        return filesystem, "/".join(part for part in (bucket, key, name) if part)

    def _check_bucket(self, filesystem) -> None:
        from pyarrow import fs

        bucket, _ = self.bucket_key
        try:
            info = filesystem.get_file_info(bucket)
        except OSError as exc:
            raise self._error(exc) from None
        if info.type == fs.FileType.NotFound:
            raise StoreError(f"cannot reach the store at {self.uri}: no bucket {bucket!r}")

    def _error(self, exc: OSError) -> StoreError:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return StoreError(f"cannot reach the store at {self.uri}: {lines[0] if lines else type(exc).__name__}")
