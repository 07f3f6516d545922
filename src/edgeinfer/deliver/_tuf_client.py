"""The agent's TUF client: python-tuf's ngclient with a paced httpx fetcher, in one-line errors.

:func:`open_updater` makes ngclient's ``Updater`` over the agent's metadata directory (from
the root provisioned at setup); :func:`refresh_targets` refreshes it and returns the
verified targets, mapping ngclient's errors to the agent's.

ngclient's own ``Urllib3Fetcher`` retries a dead server three times (minutes per file,
with urllib3's retry warnings on stderr) and reads in 400 kB chunks, so a server that
trickles bytes is never noticed. :class:`PacedFetcher` implements ngclient's
``FetcherInterface._fetch`` with the same httpx client settings as the target downloader:
no retries (the next cycle is the retry), each read bounded by the cycle's deadline, a
minimum average rate (:class:`~edgeinfer.deliver._transfer.Pace`), and failures raised as
ngclient's ``DownloadError`` family with the URL (credentials redacted) and the cause in
a few words.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

from edgeinfer.deliver._transfer import Pace, describe_failure, redact_url
from edgeinfer.deliver.download import DownloadConfig
from edgeinfer.deliver.errors import AgentError, UpdateDownloadError, UpdateRefused

__all__ = ["PacedFetcher", "open_updater", "refresh_targets"]


def open_updater(
    metadata_dir: Path, repo_url: str, root: Path | None, fetcher: PacedFetcher
) -> Any:
    """ngclient's ``Updater`` for ``repo_url``, trusting ``root`` on the very first run."""
    from tuf.api.exceptions import RepositoryError
    from tuf.ngclient import Updater, UpdaterConfig  # type: ignore[attr-defined]

    metadata_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = None
    if not (metadata_dir / "root.json").exists():
        if root is None:
            raise AgentError(
                f"{metadata_dir.parent} has no trusted root yet; provision one on the first "
                "run with --root ROOT_JSON (the repository's root.json, obtained securely)"
            )
        try:
            bootstrap = Path(root).read_bytes()
        except OSError as exc:
            raise AgentError(f"cannot read trusted root {root}: {exc}") from None
    base = repo_url.rstrip("/")
    try:
        return Updater(
            str(metadata_dir),
            f"{base}/metadata/",
            target_base_url=f"{base}/targets/",
            fetcher=fetcher,
            config=UpdaterConfig(),
            bootstrap=bootstrap,
        )
    except (RepositoryError, ValueError) as exc:
        raise AgentError(f"trusted root is not valid TUF root metadata: {exc}") from None


def refresh_targets(updater: Any, metadata_dir: Path, repo_url: str) -> dict[str, Any]:
    """Refresh the metadata; the verified targets (path -> ``TargetFile``)."""
    from tuf.api.metadata import Metadata, Targets  # type: ignore[attr-defined]

    try:
        updater.refresh()
    except exceptions.RepositoryError as exc:
        raise UpdateRefused(f"repository metadata refused ({type(exc).__name__}: {exc})") from None
    except exceptions.DownloadError as exc:
        # the fetcher's messages name the URL and the cause; ngclient's own wrapper does not
        cause = exc.__cause__  # set when ngclient wrapped another error; ours carry theirs
        detail = str(exc) if str(exc) else type(exc).__name__
        if cause is not None and not isinstance(cause, exceptions.DownloadError):
            detail += f" ({describe_failure(cause)})"
        shown = redact_url(repo_url.rstrip("/"))
        where = "" if shown in detail else f" from {shown}"
        raise UpdateDownloadError(
            f"cannot fetch repository metadata{where}: {detail}; will retry next cycle"
        ) from None
    # ngclient persisted targets.json only after verifying it in this refresh
    md = Metadata[Targets].from_file(str(metadata_dir / "targets.json"))
    return dict(md.signed.targets)


class PacedFetcher(FetcherInterface):  # type: ignore[misc]
    """Fetches TUF metadata for one update cycle."""

    def __init__(
        self,
        config: DownloadConfig,
        *,
        deadline: float | None,
        deadline_s: float,
        user_agent: str,
        auth: tuple[str, str] | None = None,
    ) -> None:
        import httpx

        self.config = config
        self.deadline = deadline
        self.deadline_s = deadline_s
        self._client = httpx.Client(
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
            follow_redirects=True,
            headers={"User-Agent": user_agent},
            auth=auth,
        )

    def close(self) -> None:
        self._client.close()

    def _pace(self) -> Pace:
        c = self.config
        return Pace(self.deadline, c.min_rate, c.rate_window, deadline_s=self.deadline_s)

    def _fetch(self, url: str) -> Iterator[bytes]:
        import httpx

        pace = self._pace()
        shown = redact_url(url)
        if (why := pace.problem(0)) is not None:
            raise exceptions.SlowRetrievalError(f"{shown}: {why}")
        c = self.config
        read, connect = pace.timeout(c.read_timeout, c.connect_timeout)
        timeout = httpx.Timeout(read, connect=connect)
        try:
            request = self._client.build_request("GET", url, timeout=timeout)
            response = self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise exceptions.SlowRetrievalError(f"{shown}: {pace.timed_out()}") from None
        except httpx.HTTPError as exc:
            raise exceptions.DownloadError(f"{shown}: {describe_failure(exc)}") from None
        if response.status_code != 200:
            response.close()
            raise exceptions.DownloadHTTPError(
                f"{shown}: HTTP {response.status_code}", response.status_code
            )
        return self._body(response, pace, shown)

    @staticmethod
    def _body(response: Any, pace: Pace, shown: str) -> Iterator[bytes]:
        import httpx

        try:
            for chunk in response.iter_bytes():  # as it arrives, so the pace sees a trickle
                if (why := pace.problem(len(chunk))) is not None:
                    raise exceptions.SlowRetrievalError(f"{shown}: {why}")
                yield chunk
        except httpx.TimeoutException:
            raise exceptions.SlowRetrievalError(f"{shown}: {pace.timed_out()}") from None
        except httpx.HTTPError as exc:
            raise exceptions.DownloadError(f"{shown}: {describe_failure(exc)}") from None
        finally:
            response.close()
