"""``flashsale token USER``: mints a bearer token for local use (HS256, secret from configuration)."""

from __future__ import annotations

import click

from flashsale.api.tokens import issue_token
from flashsale.engine.settings import Settings


def mint(settings: Settings, user: str, *, admin: bool = False, ttl_s: int = 3600) -> str:
    if not settings.jwt_secret:
        raise click.ClickException("FLASHSALE_JWT_SECRET is not set: the token would not verify anywhere")
    return issue_token(settings.jwt_secret, settings.jwt_issuer, user, admin=admin, ttl_s=ttl_s)


@click.command()
@click.argument("user")
@click.option("--admin", is_flag=True, help="Mint an admin token (admin routes: sales, restock, fulfil).")
@click.option("--ttl", "ttl_s", default=3600, show_default=True, help="Seconds until the token expires.")
@click.pass_obj
def token(settings: Settings, user: str, admin: bool, ttl_s: int) -> None:
    """Print a bearer token for USER, signed with FLASHSALE_JWT_SECRET."""
    click.echo(mint(settings, user, admin=admin, ttl_s=ttl_s))
