"""Resumable, length-bounded target downloads, verified against signed TUF metadata.

python-tuf's ngclient fetches metadata; bundles and deltas come through here because
ngclient's fetcher downloads a whole target into memory-backed temp files and cannot
resume. A target is written to ``<dir>/<sha256>.part`` -- named by its signed hash, so a
partial file is only ever resumed for the very same target -- with an HTTP ``Range``
request for what is missing (a server that ignores ranges gets a fresh download). The
download stops as soon as more bytes arrive than the signed length (endless-data attack),
and the finished file is checked with ``TargetFile.verify_length_and_hashes``; a file that
fails is deleted, never resumed. Per-read and whole-download timeouts end a stalled server;
the cycle's deadline and a minimum average rate (:class:`~edgeinfer.deliver._transfer.Pace`)
end one that trickles bytes just fast enough to never time out.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.deliver._fsutil import crash_point
from edgeinfer.deliver._transfer import Pace, describe_failure, redact_url
from edgeinfer.deliver.errors import UpdateDownloadError, UpdateRefused

__all__ = ["DownloadConfig", "Downloader", "target_url"]


@dataclass(frozen=True)
class DownloadConfig:
    connect_timeout: float = 10.0  # seconds
    read_timeout: float = 30.0  # seconds without a byte before giving up
    total_timeout: float = 3600.0  # seconds for one whole target
    min_rate: float = 1024.0  # bytes/s averaged over rate_window, below which a transfer
    # is abandoned (it resumes next cycle); 0 turns the check off
    rate_window: float = 30.0  # seconds


def target_url(base_url: str, path: str, sha256: str) -> str:
    """The hash-prefixed URL of a target (the repository uses consistent snapshots)."""
    parent, sep, name = path.rpartition("/")
    return f"{base_url.rstrip('/')}/{parent}{sep}{sha256}.{name}"


class Downloader:
    """Fetches targets over HTTP(S) with httpx; one instance per agent cycle.

    ``deadline`` (a ``time.monotonic()`` value) ends every transfer of the cycle;
    ``deadline_s`` is the cycle's budget in seconds, for messages; ``auth`` is HTTP basic
    auth (user, password) for URLs given without credentials in them.
    """

    def __init__(
        self,
        config: DownloadConfig | None = None,
        *,
        deadline: float | None = None,
        deadline_s: float = 0.0,
        auth: tuple[str, str] | None = None,
    ) -> None:
        import httpx

        self.config = config or DownloadConfig()
        self.deadline = deadline
        self.deadline_s = deadline_s
        self.received = 0  # bytes received by this downloader, failed attempts included
        c = self.config
        self._client = httpx.Client(
            timeout=httpx.Timeout(c.read_timeout, connect=c.connect_timeout),
            follow_redirects=True,
            headers={"User-Agent": "edgeinfer-agent"},
            auth=auth,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, url: str, target: Any, dest_dir: Path) -> tuple[Path, int]:
        """Download (or resume) ``target`` (a tuf ``TargetFile``) into ``dest_dir``.

        Returns the verified file and the bytes received in this call. Raises
        :class:`UpdateRefused` when the data does not match the signed length and hash,
        :class:`UpdateDownloadError` when the transport fails (the part file stays).
        """
        sha = target.hashes["sha256"]
        length = int(target.length)
        part = dest_dir / f"{sha}.part"
        dest_dir.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > length:
            part.unlink()
            have = 0
        received = 0
        if have < length:
            received = self._download(url, part, have, length)
        crash_point("verify")
        with open(part, "rb") as f:
            try:
                target.verify_length_and_hashes(f)
            except Exception as exc:  # tuf LengthOrHashMismatchError
                part.unlink(missing_ok=True)
                raise UpdateRefused(
                    f"{target.path}: downloaded data does not match the signed length and "
                    f"sha256 ({exc}); the file was tampered with or truncated"
                ) from None
        return part, received

    def _download(self, url: str, part: Path, have: int, length: int) -> int:
        import httpx

        c = self.config
        headers = {"Range": f"bytes={have}-"} if have else {}
        deadline = time.monotonic() + c.total_timeout
        pace = Pace(self.deadline, c.min_rate, c.rate_window, deadline_s=self.deadline_s)
        read, connect = pace.timeout(c.read_timeout, c.connect_timeout)
        timeout = httpx.Timeout(read, connect=connect)
        shown = redact_url(url)
        received = 0
        try:
            with self._client.stream("GET", url, headers=headers, timeout=timeout) as resp:
                if resp.status_code == 206 and have:
                    if not resp.headers.get("content-range", "").startswith(f"bytes {have}-"):
                        raise UpdateDownloadError(f"{shown}: server answered an unexpected range")
                    mode = "ab"
                elif resp.status_code == 200:
                    mode, have = "wb", 0
                elif resp.status_code == 416:  # our part file is stale; start over next time
                    part.unlink(missing_ok=True)
                    raise UpdateDownloadError(f"{shown}: range not satisfiable; restarting")
                else:
                    raise UpdateDownloadError(f"{shown}: HTTP {resp.status_code}")
                with open(part, mode) as f:
                    for chunk in resp.iter_bytes():  # as it arrives: a stall keeps what came
                        if have + received + len(chunk) > length:
                            f.close()
                            part.unlink(missing_ok=True)
                            raise UpdateRefused(
                                f"{shown}: server sent more than the signed length of {length} "
                                "bytes (endless-data attack?); download abandoned"
                            )
                        f.write(chunk)
                        received += len(chunk)
                        self.received += len(chunk)
                        if received == len(chunk):
                            f.flush()
                            crash_point("download")
                        if time.monotonic() > deadline:
                            raise UpdateDownloadError(
                                f"{shown}: download exceeded {c.total_timeout:g} s; will resume"
                            )
                        if (why := pace.problem(len(chunk))) is not None:
                            raise UpdateDownloadError(
                                f"{shown}: stopped after {have + received} of {length} bytes: "
                                f"{why}; will resume"
                            )
                    f.flush()
                    os.fsync(f.fileno())
        except httpx.TimeoutException:
            raise UpdateDownloadError(
                f"{shown}: stopped after {have + received} of {length} bytes: "
                f"{pace.timed_out()}; will resume"
            ) from None
        except httpx.HTTPError as exc:
            raise UpdateDownloadError(
                f"{shown}: transfer failed after {have + received} of {length} bytes "
                f"({describe_failure(exc)}); will resume"
            ) from None
        return received
