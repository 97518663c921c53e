"""Bundle signatures (torch-free): Ed25519 over the exact bytes of manifest.json, in a detached `manifest.sig`.

Integrity vs authenticity: the manifest's SHA-256 per file catches corruption (a truncated copy, a flipped bit), but
anyone who can change a file can also re-hash the manifest. A signature by a key whose public half the runtime trusts
catches that: the manifest cannot be changed without the private key, and the manifest pins every file's SHA-256.

Format: `manifest.sig` is JSON {"format": "mmsrarec-bundle-signature", "version": 1, "algorithm": "ed25519",
"key_id": the first 16 hex digits of SHA-256 over the raw 32-byte public key, "manifest_sha256": ...,
"signature": base64 of Ed25519(manifest.json's bytes)}. Keys are PEM files: the private key PKCS#8 (unencrypted, mode
0600), the public key SubjectPublicKeyInfo (`mmsrarec-edge keygen --out DIR` writes both; `openssl genpkey -algorithm
ed25519` keys work too).

Trusted public keys, all of them together: `--trust-key FILE` (repeatable; on recommend and summarize-item, and
before any command: `mmsrarec-edge --trust-key FILE serve ...`), the environment variable MMSRAREC_TRUST_KEYS (paths
separated by `:`; a directory stands for its *.pub files), and the directory
$XDG_CONFIG_HOME/mmsrarec-edge/trusted_keys/ (default ~/.config/...; its *.pub files). With none of them, signatures
are not checked (a bundle's checksums still are). With any, `load_manifest` refuses a bundle that is unsigned, signed
by another key, or whose manifest changed after signing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from .errors import BundleError, UserError

SIGNATURE = "manifest.sig"
SIG_FORMAT = "mmsrarec-bundle-signature"
TRUST_ENV = "MMSRAREC_TRUST_KEYS"
PRIVATE_NAME, PUBLIC_NAME = "bundle-signing.key", "bundle-signing.pub"

_cli_trust_keys: list[Path] = []


def config_trust_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mmsrarec-edge" / "trusted_keys"


def add_cli_trust_keys(paths) -> None:
    """Add the CLI's --trust-key files (checked here, so a mistyped path is an error before any bundle is opened)."""
    for p in map(Path, paths or ()):
        load_public_key(p, "--trust-key")
        if p not in _cli_trust_keys:
            _cli_trust_keys.append(p)


def clear_cli_trust_keys() -> None:
    _cli_trust_keys.clear()


def _key_files(spec: Path, origin: str) -> list[Path]:
    if spec.is_dir():
        return sorted(spec.glob("*.pub"))
    if not spec.is_file():
        raise UserError(f"trusted key {spec} (from {origin}) does not exist", f"fix {origin} or create the key")
    return [spec]


def trusted_key_files() -> list[tuple[Path, str]]:
    """(key file, where it was configured) for every trusted key (module docstring)."""
    out = [(p, "--trust-key") for p in _cli_trust_keys]
    env = os.environ.get(TRUST_ENV, "")
    for part in filter(None, env.split(os.pathsep)):
        out += [(p, TRUST_ENV) for p in _key_files(Path(part).expanduser(), TRUST_ENV)]
    cdir = config_trust_dir()
    if cdir.is_dir():
        out += [(p, str(cdir)) for p in _key_files(cdir, str(cdir))]
    return out


def trusted_keys() -> dict[str, object]:
    """key id -> Ed25519PublicKey for every trusted key; a malformed key file is a UserError naming it."""
    return {key_id(k): k for p, origin in trusted_key_files() for k in [load_public_key(p, origin)]}


def _raw_public(key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def load_public_key(path: Path, origin: str = "key"):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{origin} {path} does not exist", "pass a public key file (`mmsrarec-edge keygen` writes one)")
    data = path.read_bytes()
    try:
        key = load_pem_public_key(data)
    except ValueError:
        try:  # a private key file also holds its public half
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            key = None
        key = key.public_key() if isinstance(key, Ed25519PrivateKey) else None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{path}: not an Ed25519 public key in PEM format ({origin})",
                        "pass the .pub file `mmsrarec-edge keygen` wrote")
    return key


def load_private_key(path: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--sign-key {path} does not exist", "create a key pair with `mmsrarec-edge keygen --out DIR`")
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not an unencrypted PEM private key ({exc})",
                        "pass the .key file `mmsrarec-edge keygen` wrote") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path}: not an Ed25519 private key", "create one with `mmsrarec-edge keygen --out DIR`")
    return key


def generate_keypair(out_dir: Path) -> tuple[Path, Path, str]:
    """Write DIR/bundle-signing.key (0600) and DIR/bundle-signing.pub; never overwrites. Returns (key, pub, key id)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    from .io_utils import ensure_writable_dir, fsync_path

    out_dir = ensure_writable_dir(Path(out_dir))
    priv_path, pub_path = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    for p in (priv_path, pub_path):
        if p.exists():
            raise UserError(f"{p} already exists; refusing to overwrite a key", "choose another --out directory")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    for p in (priv_path, pub_path, out_dir):
        fsync_path(p)
    return priv_path, pub_path, key_id(key.public_key())


def sign_manifest(root: Path, private_key) -> dict:
    """Write root/manifest.sig for root/manifest.json's current bytes; returns the signature record."""
    manifest = (Path(root) / "manifest.json").read_bytes()
    record = {"format": SIG_FORMAT, "version": 1, "algorithm": "ed25519", "key_id": key_id(private_key.public_key()),
              "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
              "signature": base64.b64encode(private_key.sign(manifest)).decode("ascii")}
    (Path(root) / SIGNATURE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def read_signature(root: Path) -> dict | None:
    """The bundle's signature record, None when unsigned; a malformed one is a BundleError naming it."""
    path = Path(root) / SIGNATURE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable signature ({exc})", "re-sign or re-export the bundle") from exc
    if not isinstance(record, dict) or record.get("format") != SIG_FORMAT or record.get("algorithm") != "ed25519":
        raise BundleError(f"{path}: not an mmsrarec Ed25519 bundle signature", "re-sign or re-export the bundle")
    return record


def verify_manifest_signature(root: Path, manifest_bytes: bytes, keys: dict) -> str:
    """Check root/manifest.sig over `manifest_bytes` against the trusted `keys`; returns the signer's key id.
    BundleError naming the file when unsigned, signed by an untrusted key, or the manifest changed after signing."""
    from cryptography.exceptions import InvalidSignature

    root = Path(root)
    record = read_signature(root)
    if record is None:
        raise BundleError(f"{root / 'manifest.json'}: the bundle is not signed (no {SIGNATURE}) and trusted keys are "
                          "configured", "use a bundle exported with --sign-key, or --no-verify to skip at your risk")
    kid = str(record.get("key_id"))
    if kid not in keys:
        raise BundleError(f"{root / SIGNATURE}: signed by key {kid}, which is not a trusted key",
                          f"trust its public key (--trust-key, {TRUST_ENV} or {config_trust_dir()})")
    try:
        keys[kid].verify(base64.b64decode(str(record.get("signature")), validate=True), manifest_bytes)
    except (InvalidSignature, ValueError) as exc:
        raise BundleError(f"{root / SIGNATURE}: the signature does not match manifest.json (the bundle was modified "
                          "after signing)", "use the bundle as its signer exported it") from exc
    return kid
