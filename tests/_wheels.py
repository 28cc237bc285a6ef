"""Wheels written by hand for tests that pip-install packages offline (no build backend, no index)."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile


def wheel(name: str, version: str, files: dict[str, str]) -> tuple[str, bytes]:
    """A pure-Python wheel of `files` (path in the wheel → text): its file name and its bytes."""
    dist_info = f"{name}-{version}.dist-info"
    entries = {
        **files,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in entries.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
            archive.writestr(path, data)
        archive.writestr(f"{dist_info}/RECORD", "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n")
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()
