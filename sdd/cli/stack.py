"""``sdd stack up|down|status``: the local Prefect + MLflow stack (:mod:`sdd.stack`)."""

from __future__ import annotations

import typer

from sdd.cli.common import exit_on_error
from sdd.cli.types import Text

stack_app = typer.Typer(help="The local Prefect + MLflow stack (servers, work pools, workers).",
                        no_args_is_help=True)


@stack_app.command("up")
def stack_up(
    prefect_port: int = typer.Option(4200, "--prefect-port", min=1, max=65535,
                                     help="Port of the Prefect server and UI."),
    mlflow_port: int = typer.Option(5000, "--mlflow-port", min=1, max=65535,
                                    help="Port of the MLflow server and UI."),
    guard_port: int = typer.Option(5055, "--guard-port", min=1, max=65535,
                                   help="Port of the promotion guard's webhook receiver."),
    no_guard: bool = typer.Option(False, "--no-guard", help="Do not start the promotion guard (the nightly "
                                  "re-erase run and `sdd models --check` still check protected aliases)."),
    host: str = typer.Option("127.0.0.1", "--host", parser=Text(), help="Interface the servers listen on."),
    reerase_cron: str = typer.Option("0 2 * * *", "--reerase-cron", parser=Text(),
                                     help="Cron (UTC) of the re-erase check."),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="Do not (re)apply prefect.yaml."),
    prefect_db_url: str | None = typer.Option(
        None, "--prefect-db-url", envvar="SDD_PREFECT_DB_URL", show_envvar=True, parser=Text(),
        help="Prefect server database, e.g. postgresql+asyncpg://user:pw@host:5432/prefect "
             "(default: SQLite in PREFECT_HOME)"),
    mlflow_backend_uri: str | None = typer.Option(
        None, "--mlflow-backend-uri", envvar="SDD_MLFLOW_BACKEND_URI", show_envvar=True, parser=Text(),
        help="MLflow backend store, e.g. postgresql://user:pw@host:5432/mlflow (default: .sdd/mlflow.db)"),
    auth: bool = typer.Option(
        False, "--auth", help="Require HTTP basic auth on Prefect and MLflow; the user:password comes from "
                              "$SDD_STACK_AUTH or the file $SDD_STACK_AUTH_FILE names, never from the command line."),
) -> None:
    """Start Prefect and MLflow servers, create the cpu/gpu pools, deploy, start a worker per pool."""
    from sdd.stack import StackAuth, StackConfig, up

    with exit_on_error():
        info = up(StackConfig(host=host, prefect_port=prefect_port, mlflow_port=mlflow_port,
                              guard_port=guard_port, guard=not no_guard,
                              reerase_cron=reerase_cron, deploy=not no_deploy,
                              prefect_db_url=prefect_db_url, mlflow_backend_uri=mlflow_backend_uri,
                              auth=StackAuth.from_environment() if auth else None))
    typer.echo(f"Prefect UI  {info['prefect_ui']}")
    typer.echo(f"MLflow UI   {info['mlflow_ui']}")
    if info.get("guard"):
        typer.echo(f"guard       {info['guard']} (protected aliases: params/registry.yaml)")
    typer.echo(f"workers     {', '.join(info['pools'])} (logs in {info['logs']})")
    typer.echo(f"use it:     export PREFECT_API_URL={info['prefect_api']} "
               f"MLFLOW_TRACKING_URI={info['mlflow_ui']}")
    if auth:
        typer.echo("auth:       basic; clients also need PREFECT_API_AUTH_STRING=user:password and "
                   "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")


@stack_app.command("down")
def stack_down() -> None:
    """Stop the workers, then the servers."""
    from sdd.stack import down

    stopped = down()
    typer.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status() -> None:
    """Show the stack's URLs and which of its processes run."""
    from sdd.stack import status

    info = status()
    if not info["processes"]:
        typer.echo("the stack is not running (sdd stack up)")
        raise typer.Exit(1)
    for key in ("prefect_ui", "mlflow_ui"):
        if key in info:
            typer.echo(f"{key:10s}  {info[key]}")
    for name, proc in info["processes"].items():
        state = "running" if proc["alive"] else "STOPPED"
        typer.echo(f"{name:16s} pid {proc['pid']:<8d} {state}  {proc['log']}")
    if not all(p["alive"] for p in info["processes"].values()):
        raise typer.Exit(1)

