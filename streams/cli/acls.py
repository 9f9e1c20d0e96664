"""`explorer acls ROLE`: the ACLs a principal needs on a secured cluster, printed or granted."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from streams.acls import ROLE_HELP, ROLES, apply_grants, kafka_acls_commands, role_grants
from streams.settings import get_settings

console = Console(stderr=True)

RoleName = Enum("RoleName", {role.replace("-", "_"): role for role in ROLES}, type=str)  # type: ignore[misc]


def acls(
    role: Annotated[RoleName, typer.Argument(help="; ".join(f"{r}: {h}" for r, h in ROLE_HELP.items()))],
    principal: Annotated[Optional[str], typer.Option(help="Who gets them (default: User:<role>)")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Create them now, as the principal of the current "
                                                        "EXPLORER_KAFKA_* settings (an admin: ALTER on the cluster)")]
    = False,
) -> None:
    """Print the ACLs ROLE needs as kafka-acls.sh commands (topic names use EXPLORER_TOPIC_PREFIX, the group and
    state-topic prefix is EXPLORER_APP_ID); with --apply, grant them through the admin API."""
    from confluent_kafka import KafkaException

    from streams.kafka_config import redact

    settings = get_settings()
    who = principal or f"User:{role.value}"
    grants = role_grants(settings, role.value)
    for line in kafka_acls_commands(grants, who, settings.kafka_bootstrap):
        print(line)
    if apply:
        try:
            count = apply_grants(settings, who, grants)
        except KafkaException as exc:
            console.print(f"[bold red]error:[/] could not create the ACLs: "
                          f"{escape(redact(exc.args[0].str(), settings))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from exc
        console.print(f"granted {count} ACLs to {who}")


def register(app: typer.Typer) -> None:
    app.command()(acls)
