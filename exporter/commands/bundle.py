"""`slimvit verify`, `sign`, `keygen` and `bundle install-*`: checking, signing and shipping a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from exporter.bundle.install import install_bundle, install_packed
from exporter.bundle.unpack import sign_pack, verify_pack
from exporter.bundle.keys import generate_keypair
from exporter.bundle.signing import sign_bundle
from exporter.bundle.verify import verify_bundle
from exporter.commands.common import app, bundle_app, console, out_console, say
from exporter.errors import ConfigError
from exporter.gate.files import dumps_strict


@app.command()
def verify(bundle: Annotated[Path, typer.Argument(help="Bundle directory or pack file.")],
           public_key: Annotated[Path | None, typer.Option(
               "--public-key", help="Ed25519 public key (PEM); manifest.sig must verify.")] = None,
           min_bundle_version: Annotated[int | None, typer.Option(
               "--min-bundle-version", help="Newest bundle_version seen before; older is a rollback.")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
           ) -> None:
    """Check a bundle as an app must before loading it; exit 1 listing every problem."""


    check = verify_pack if bundle.is_file() else verify_bundle
    report = check(bundle, public_key, min_bundle_version=min_bundle_version)
    if as_json:
        print(dumps_strict(report.to_dict(), indent=2))
    else:
        for w in report.warnings:
            say("warning:", w)
        for p in report.problems:
            say("problem:", p, "red")
        signed = {None: "signature not checked", True: "signature valid", False: "signature INVALID"}
        verdict = "ok" if report.ok else f"FAILED ({len(report.problems)} problem(s))"
        console.print(Text.assemble(f"{bundle}: ", (verdict, "green" if report.ok else "red"),
                                    f": {report.artifacts} file(s) checked, bundle_version "
                                    f"{report.bundle_version}, {signed[report.signed]}"), soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def sign(bundle: Annotated[Path, typer.Argument(help="Bundle directory or pack file (must verify first).")],
         key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM).")],
         expires: Annotated[str | None, typer.Option(
             "--expires", help="Expiry written into the manifest: 30d, 12h or an ISO 8601 time.")] = None,
         bundle_version: Annotated[int | None, typer.Option(
             "--bundle-version", help="New bundle_version written into the manifest.")] = None,
         ) -> None:
    """Sign a bundle's manifest with Ed25519 (writes manifest.sig)."""

    signer = sign_pack if bundle.is_file() else sign_bundle
    path = signer(bundle, key, expires=expires, bundle_version=bundle_version)
    console.print(f"signed: {path}")


@app.command()
def keygen(key: Annotated[Path, typer.Argument(help="Private key file to create (public: KEY.pub).")]) -> None:
    """Create an Ed25519 key pair for `slimvit sign` (set $SLIMVIT_KEY_PASSPHRASE to encrypt it)."""
    private, public = generate_keypair(key)
    console.print(f"private key: {private} (keep it secret)\npublic key:  {public} (ship it in the app)")


PrecisionsOpt = Annotated[str | None, typer.Option(
    "--precisions", help="Only these precisions (comma-separated), e.g. fp32 or int8-dynamic.")]
VariantsOpt = Annotated[str | None, typer.Option("--variants", help="Only these variant ids (comma-separated).")]
DestOpt = Annotated[Path | None, typer.Option(
    "--dest", help="Your own app's asset/resource folder (default: the demo app's).")]
UnpackedOpt = Annotated[bool, typer.Option(
    "--unpacked", help="Copy the bundle directory (the old form) instead of writing bundle.svpack.")]


@bundle_app.command("install-android")
def bundle_install_android(bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
                           sample: Annotated[Path | None, typer.Option(help="Image to classify.")] = None,
                           precisions: PrecisionsOpt = None, variants: VariantsOpt = None,
                           dest: DestOpt = None, unpacked: UnpackedOpt = False) -> None:
    """Verify BUNDLE and write its TFLite artifacts, packed, into android_demo's assets (or --dest)."""
    _install(bundle, "android", sample, precisions, variants, dest, unpacked)


@bundle_app.command("install-ios")
def bundle_install_ios(bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
                       sample: Annotated[Path | None, typer.Option(help="Image to classify.")] = None,
                       precisions: PrecisionsOpt = None, variants: VariantsOpt = None,
                       dest: DestOpt = None, unpacked: UnpackedOpt = False) -> None:
    """Verify BUNDLE and write its Core ML artifacts, packed, into ios_demo's resources (or --dest)."""
    _install(bundle, "ios", sample, precisions, variants, dest, unpacked)


def _install(bundle: Path, app_name: str, sample: Path | None, precisions: str | None, variants: str | None,
             dest: Path | None, unpacked: bool) -> None:

    if unpacked:
        if precisions or variants or dest:
            raise ConfigError("--unpacked copies the whole bundle into the demo app; drop --precisions, "
                              "--variants and --dest, or drop --unpacked")
        out_console.print(f"installed {install_bundle(bundle, app_name, sample=sample)}", highlight=False)
        return
    path = install_packed(bundle, app_name, dest=dest, precisions=precisions, variants=variants, sample=sample)
    out_console.print(f"installed {path} ({path.stat().st_size / 2**20:.2f} MiB)", highlight=False)
