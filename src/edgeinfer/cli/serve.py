"""``edgeinfer serve``: the edge server (Open Inference Protocol over REST and gRPC)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        repository: Path | None = typer.Argument(
            None,
            metavar="REPOSITORY",
            help="Model repository: REPOSITORY/<model>/<version>/{bundle | model.onnx}.",
            show_default=False,
        ),
        follow: list[Path] = typer.Option(
            [],
            "--follow",
            metavar="STATE_DIR",
            help="An update agent's --state-dir: serve the bundle it committed, switching to "
            "each newly committed one without failing requests (repeatable).",
        ),
        host: str = typer.Option("127.0.0.1", help="Address to bind (REST and gRPC)."),
        port: int = typer.Option(8000, help="REST port."),
        grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port; -1 disables gRPC."),
        token: list[str] = typer.Option(
            [],
            "--token",
            metavar="TOKEN",
            envvar="EDGEINFER_TOKEN",
            help="Bearer token for inference, metadata and /metrics (repeatable). A token "
            "on the command line shows in `ps`: prefer --token-file or the environment "
            "variable (several tokens separated by spaces).",
        ),
        token_file: list[Path] = typer.Option(
            [],
            "--token-file",
            metavar="FILE",
            envvar="EDGEINFER_TOKEN_FILE",
            help="File of bearer tokens like --token's, one a line ('#' comments).",
        ),
        admin_token: list[str] = typer.Option(
            [],
            "--admin-token",
            metavar="TOKEN",
            envvar="EDGEINFER_ADMIN_TOKEN",
            help="Bearer token for loading and unloading models (repeatable); none disables "
            "that (the index needs only an inference token). "
            "Shows in `ps` too: prefer --admin-token-file or the environment variable.",
        ),
        admin_token_file: list[Path] = typer.Option(
            [],
            "--admin-token-file",
            metavar="FILE",
            envvar="EDGEINFER_ADMIN_TOKEN_FILE",
            help="File of admin tokens, one a line ('#' comments).",
        ),
        max_batch_size: int = typer.Option(8, help="Rows per model run (1: no batching)."),
        max_queue_delay_us: int = typer.Option(0, help="Microseconds to wait for a fuller batch."),
        max_queue_size: int = typer.Option(64, help="Queued requests per model before 503."),
        queue_timeout: float = typer.Option(5.0, help="Seconds a request may wait queued."),
        instances: int = typer.Option(1, help="Concurrent runs per model."),
        threads: int | None = typer.Option(None, help="ONNX Runtime threads per model."),
        max_body_mb: float = typer.Option(64.0, help="Largest request body, MiB."),
        max_header_bytes: int = typer.Option(
            16384,
            help="Largest request line and headers of a request, bytes (more: 431). "
            "Not under --ray.",
        ),
        header_timeout: float = typer.Option(
            60.0,
            help="Seconds a client may take to send a request's line and headers, from "
            "connecting (or, on a kept-alive connection, from its first byte); then 408. "
            "Also a gRPC connection's HTTP/2 preface. Not under --ray.",
        ),
        body_timeout: float = typer.Option(
            60.0,
            help="Seconds a client may take to send a request body, plus one per KiB "
            "received (slow links are not cut; trickling clients are); then 408.",
        ),
        max_connections: int = typer.Option(
            1000,
            help="REST connections served at once; more are answered 503 and closed; also "
            "the cap on gRPC connections (0: no cap). Not under --ray.",
        ),
        compress_min_bytes: int = typer.Option(
            8192,
            help="Compress REST answers at least this long when the client accepts zstd, "
            "gzip or deflate; -1: never.",
        ),
        poll: float = typer.Option(2.0, help="Seconds between repository scans; 0: off."),
        ssl_keyfile: str | None = typer.Option(None, "--ssl-keyfile", help="TLS key (PEM)."),
        ssl_certfile: str | None = typer.Option(None, "--ssl-certfile", help="TLS cert (PEM)."),
        ray: bool = typer.Option(
            False,
            "--ray",
            help="Serve on Ray Serve (REST only). Each replica keeps the body limits, batch "
            "and datatype checks and --body-timeout; Ray's HTTP proxy owns the connections, "
            "so --max-header-bytes, --header-timeout and --max-connections do not apply.",
        ),
        replicas: int = typer.Option(2, help="Ray Serve replicas (with --ray)."),
        freeze_heap: bool = typer.Option(
            True,
            "--freeze-heap/--no-freeze-heap",
            help="After models load, keep the long-lived heap out of the garbage collector's "
            "full collections (gc.freeze), which otherwise pause every request ~10 ms now "
            "and then.",
        ),
        switch_interval_ms: float = typer.Option(
            0.1,
            help="The GIL switch interval while serving, ms (Python's default: 5), so the "
            "inference threads hand batches back without waiting out a busy event loop; "
            "0: leave Python's.",
        ),
    ) -> None:
        """Serve every model in REPOSITORY over the Open Inference Protocol (KServe V2).

        With --follow STATE_DIR, also serve the model an update agent committed there
        (name and version from its manifest); a newly committed version is loaded, checked
        and swapped in at the next scan (--poll) while requests keep being answered.

        TLS: pass --ssl-keyfile and --ssl-certfile (used by uvicorn for REST and by gRPC).

        With --token (or --token-file, EDGEINFER_TOKEN), /metrics needs a token too:
        give Prometheus one (scrape config: authorization credentials_file).
        """
        import logging

        from edgeinfer.errors import InputError
        from edgeinfer.protocol.limits import Limits
        from edgeinfer.serve.config import BatchConfig, ServeConfig
        from edgeinfer.serve.server import is_loopback, run_server

        if repository is None and not follow:
            raise InputError("pass a model REPOSITORY, --follow STATE_DIR, or both")
        if repository is not None and not repository.is_dir():
            raise InputError(f"{repository}: no such model repository directory")
        for state_dir in follow:
            if not state_dir.is_dir():
                raise InputError(
                    f"--follow {state_dir}: no such directory (expected an update agent's "
                    "--state-dir, e.g. the one given to `edgeinfer agent`)"
                )
        if follow:
            if not poll:
                raise InputError("--follow needs --poll > 0 to see what the agent commits")
            import edgeinfer.deliver  # noqa: F401  (the deliver extra, or an install hint)
        if bool(ssl_keyfile) != bool(ssl_certfile):
            raise InputError("pass both --ssl-keyfile and --ssl-certfile, or neither")
        tokens = [*token, *(t for f in token_file for t in _read_tokens(f, "--token-file"))]
        admin_tokens = [
            *admin_token,
            *(t for f in admin_token_file for t in _read_tokens(f, "--admin-token-file")),
        ]
        log = logging.getLogger("edgeinfer.serve")
        if not is_loopback(host) and not tokens:
            log.warning(
                "binding %s, which is reachable from other machines, with no --token: anyone "
                "who can reach it can run your models",
                host,
            )
            typer.echo(
                f"warning: serving on non-loopback address {host} without a token "
                "(pass --token to require one)",
                err=True,
            )
        try:
            batching = BatchConfig(
                max_batch_size, max_queue_delay_us, max_queue_size, queue_timeout, instances
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
        size = int(max_body_mb * (1 << 20))
        if not 0 <= switch_interval_ms <= 1000:
            raise InputError(
                f"--switch-interval-ms {switch_interval_ms} must be between 0 (Python's "
                "default) and 1000"
            )
        config = ServeConfig(
            repository=repository,
            host=host,
            port=port,
            grpc_port=None if grpc_port < 0 else grpc_port,
            tokens=tuple(tokens),
            admin_tokens=tuple(admin_tokens),
            limits=Limits(max_body_bytes=size, max_tensor_bytes=size),
            compress_min_bytes=None if compress_min_bytes < 0 else compress_min_bytes,
            batching=batching,
            poll_interval_s=poll or None,
            threads=threads,
            ssl_keyfile=ssl_keyfile,
            ssl_certfile=ssl_certfile,
            follow=tuple(dict.fromkeys(p.resolve() for p in follow)),
            freeze_heap=freeze_heap,
            switch_interval_s=switch_interval_ms / 1e3 if switch_interval_ms else None,
            max_header_bytes=max_header_bytes,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            max_connections=max_connections or None,
        )
        if ray:
            from edgeinfer.serve.ray import run_ray

            typer.echo(
                "edgeinfer serve --ray: Ray's HTTP proxy owns the connections; "
                "--max-header-bytes, --header-timeout and --max-connections do not apply",
                err=True,
            )
            run_ray(config, replicas=replicas)
        else:
            if config.max_connections is not None:
                _make_room_for(config.max_connections)
            run_server(config, on_started=_banner)


def _banner(app: Any, port: int) -> None:
    """Printed once both ports are bound and the models loaded: where to connect and what
    is served (a port conflict is the only line when there is one)."""
    from edgeinfer.serve.server import startup_lines

    config = app.state.dataplane.config
    grpc_port = app.state.grpc_port
    typer.echo(
        f"edgeinfer serve: REST on {config.host}:{port}"
        + (f", gRPC on {config.host}:{grpc_port}" if grpc_port is not None else "")
    )
    for line in startup_lines(app.state.dataplane):
        typer.echo(f"  {line}")


def _read_tokens(path: Path, option: str) -> list[str]:
    """The tokens in a token file: one a line; blank lines and '#' comments are skipped."""
    from edgeinfer.errors import InputError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"{option} {path}: cannot read it ({reason})") from None
    tokens = [t.strip() for t in text.splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise InputError(f"{option} {path}: no token in it (expected one token a line)")
    if any(any(c.isspace() for c in t) for t in tokens):
        raise InputError(f"{option} {path}: a line holds spaces (expected one token a line)")
    return tokens


def _make_room_for(connections: int) -> None:
    """Raise the open-file limit so that ``connections`` sockets fit; warn if it cannot."""
    from edgeinfer._http import make_room_for

    warning = make_room_for(connections)
    if warning is not None:
        typer.echo(warning, err=True)
