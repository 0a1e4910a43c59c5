"""``runner doctor`` (which sandbox layers this box gives jobs) and ``runner keys generate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from runner.cli_jobs import App
from runner.errors import RunnerError

pass_app = click.make_pass_decorator(App)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def doctor(app: App, as_json: bool) -> None:
    """Report each sandbox layer as active or unavailable on this box, and why.

    Exits with status 3 when a layer named in ``[sandbox] require`` is not active: a worker
    would refuse to start.
    """
    from runner.sandbox.probe import check_required, probe

    settings = app.settings()
    report = probe()
    disabled = set(settings.sandbox.get("disable", ()))
    required = list(settings.sandbox.get("require", ()))
    missing = sorted(set(check_required(report, required)) | (disabled & set(required)))
    trusted = sorted((settings.signing.get("trusted") or {}).keys())
    record: dict[str, Any] = {
        **report.to_json(),
        "disabled": sorted(disabled),
        "required": required,
        "missing": missing,
        "signing": {"verifies_with": trusted, "signs_with": settings.signing.get("key_id")
                    or (Path(settings.signing["key"]).stem if settings.signing.get("key") else None)},
    }
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        for layer in report.layers.values():
            state = "active" if layer.active and layer.name not in disabled else (
                "disabled" if layer.name in disabled else "unavailable")
            mark = " (required)" if layer.name in required else ""
            click.echo(f"{state:<12} {layer.name:<12} {layer.detail}{mark}")
        click.echo("signing      " + (f"workers verify with key ids {', '.join(trusted)}" if trusted
                   else "off: anyone who can publish to the broker can run jobs"))
    if missing:
        raise RunnerError(f"required sandbox layers not active: {', '.join(missing)}")


@click.group()
def keys() -> None:
    """Manage Ed25519 keys for signed job messages."""


@keys.command("generate")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for KID.key (private, 0600) and KID.pub.")
@click.option("--kid", default="default", show_default=True, help="Key id (rotation: a new id).")
def keys_generate(out: Path, kid: str) -> None:
    """Write a new key pair: the private key for producers, the public key for workers."""
    from runner.signing import generate

    private, public = generate(out, kid)
    click.echo(f"private key (producers, [signing] key): {private}")
    click.echo(f"public key (workers, [signing.trusted] {kid}): {public}")
