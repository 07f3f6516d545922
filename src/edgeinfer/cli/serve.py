"""``edgeinfer serve``: the edge server (Open Inference Protocol over REST and gRPC)."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        repository: Path | None = typer.Argument(
            None, help="Model repository: REPOSITORY/<model>/<version>/{bundle | model.onnx}."
        ),
        follow: list[Path] = typer.Option(
            [],
            "--follow",
            help="An update agent's --state-dir: serve the bundle it committed, switching to "
            "each newly committed one without failing requests (repeatable).",
        ),
        host: str = typer.Option("127.0.0.1", help="Address to bind (REST and gRPC)."),
        port: int = typer.Option(8000, help="REST port."),
        grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port; -1 disables gRPC."),
        token: list[str] = typer.Option(
            [],
            "--token",
            envvar="EDGEINFER_TOKEN",
            help="Bearer token for inference and metadata (repeatable).",
        ),
        admin_token: list[str] = typer.Option(
            [],
            "--admin-token",
            envvar="EDGEINFER_ADMIN_TOKEN",
            help="Bearer token for load/unload/index (repeatable); none disables them.",
        ),
        max_batch_size: int = typer.Option(8, help="Rows per model run (1: no batching)."),
        max_queue_delay_us: int = typer.Option(0, help="Microseconds to wait for a fuller batch."),
        max_queue_size: int = typer.Option(64, help="Queued requests per model before 503."),
        queue_timeout: float = typer.Option(5.0, help="Seconds a request may wait queued."),
        instances: int = typer.Option(1, help="Concurrent runs per model."),
        threads: int | None = typer.Option(None, help="ONNX Runtime threads per model."),
        max_body_mb: float = typer.Option(64.0, help="Largest request body, MiB."),
        compress_min_bytes: int = typer.Option(
            8192,
            help="Compress REST answers at least this long when the client accepts zstd, "
            "gzip or deflate; -1: never.",
        ),
        poll: float = typer.Option(2.0, help="Seconds between repository scans; 0: off."),
        ssl_keyfile: str | None = typer.Option(None, "--ssl-keyfile", help="TLS key (PEM)."),
        ssl_certfile: str | None = typer.Option(None, "--ssl-certfile", help="TLS cert (PEM)."),
        ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve (REST only)."),
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
        log = logging.getLogger("edgeinfer.serve")
        if not is_loopback(host) and not token:
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
            tokens=tuple(token),
            admin_tokens=tuple(admin_token),
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
        )
        if ray:
            from edgeinfer.serve.ray import run_ray

            run_ray(config, replicas=replicas)
        else:
            typer.echo(
                f"edgeinfer serve: REST on {host}:{port}"
                + (f", gRPC on {host}:{grpc_port}" if grpc_port >= 0 else "")
            )
            run_server(config)
