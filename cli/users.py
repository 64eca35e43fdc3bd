"""`rag users`: the app's local accounts (RAG_AUTH=local) and every user's
grants, kept in the app database (RAG_APP_DB). Each change is audited as
done by `cli:<the OS user>`: whoever can run this on the server owns the
database anyway."""

from __future__ import annotations

import getpass
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from rag.settings import Settings
from team.access import Role, User

if TYPE_CHECKING:
    from team.appdb import AppDB


def _db() -> AppDB:
    # Imported here: `rag search` and `rag ask` need no database driver.
    from team.appdb import open_app_db

    return open_app_db(Settings())


def _by() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return "cli:?"


@click.group()
def users() -> None:
    """Local accounts and grants, in the app database ($RAG_APP_DB, by default
    <indexes_root>/.app/app.sqlite).

    Roles: admin (everything, every knowledge base, users), editor (ask,
    upload, delete, rebuild in granted knowledge bases), reader (ask and
    search in granted ones)."""


@users.command()
@click.argument("name")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option(
    "--kb", "kbs", multiple=True, metavar="KB", help="Grant this knowledge base (repeat)."
)
@click.option(
    "--password-stdin", is_flag=True,
    help="Read the password from the first line of standard input (else it is asked twice).",
)  # fmt: skip
def add(name: str, role: str, kbs: tuple[str, ...], password_stdin: bool) -> None:
    """Add the user NAME with a password."""
    user = _db().accounts.add_user(name, role, _password(password_stdin), kbs, by=_by())
    click.echo(f"Added {user.name} ({user.role}); knowledge bases: {_kbs(user)}.")


@users.command()
@click.argument("name")
@click.option(
    "--password-stdin", is_flag=True,
    help="Read the password from the first line of standard input (else it is asked twice).",
)  # fmt: skip
def passwd(name: str, password_stdin: bool) -> None:
    """Set a new password for NAME; their sessions end."""
    _db().accounts.set_password(name, _password(password_stdin), by=_by())
    click.echo(f"New password set for {name}; their sessions are ended.")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _kbs(user: User) -> str:
    if user.role is Role.ADMIN:
        return "all"  # an admin has every knowledge base, granted or not
    return ", ".join(sorted(user.grants)) or "none"


@users.command()
@click.argument("name")
@click.argument("kb")
def grant(name: str, kb: str) -> None:
    """Let NAME use the knowledge base KB (as their role allows)."""
    _db().accounts.grant(name, kb, by=_by())
    click.echo(f"Granted {kb} to {name}.")


@users.command()
@click.argument("name")
@click.argument("kb")
def revoke(name: str, kb: str) -> None:
    """Take the knowledge base KB away from NAME."""
    _db().accounts.revoke(name, kb, by=_by())
    click.echo(f"Revoked {kb} from {name}.")


@users.command()
@click.argument("name")
def remove(name: str) -> None:
    """Remove NAME with their grants, sessions, API keys and conversations."""
    talks = _db().accounts.remove_user(name, by=_by())
    click.echo(f"Removed {name} and {talks} conversation{'' if talks == 1 else 's'}.")


@users.command()
@click.argument("name")
def disable(name: str) -> None:
    """Keep NAME out (logins, sessions, API keys) without removing anything."""
    _db().accounts.set_disabled(name, True, by=_by())
    click.echo(f"Disabled {name}; their sessions are ended and their keys refused.")


@users.command()
@click.argument("name")
def enable(name: str) -> None:
    """Let a disabled NAME in again, with their grants and keys as they were."""
    _db().accounts.set_disabled(name, False, by=_by())
    click.echo(f"Enabled {name}.")


@users.command()
@click.argument("name")
@click.argument("role", type=click.Choice([r.value for r in Role]))
def role(name: str, role: str) -> None:
    """Give NAME the role ROLE (their grants stay)."""
    _db().accounts.set_role(name, role, by=_by())
    click.echo(f"{name} is now {role}.")


@users.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_users(as_json: bool) -> None:
    """The accounts, their roles and knowledge bases."""
    accounts = _db().accounts.accounts()
    if as_json:
        rows = [
            {"name": a.user.name, "role": a.user.role.value, "kbs": sorted(a.user.grants),
             "disabled": a.disabled, "created": a.created}
            for a in accounts
        ]  # fmt: skip
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    if not accounts:
        click.echo("No users yet: add one with `rag users add NAME --role admin`.")
    for a in accounts:
        created = datetime.fromtimestamp(a.created, UTC).strftime("%Y-%m-%d")
        state = " (disabled)" if a.disabled else ""
        click.echo(f"{a.user.name:<24} {a.user.role:<7} {created}  {_kbs(a.user)}{state}")
