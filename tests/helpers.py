"""Helpers shared by several test files (imported by them; pytest puts tests/ on sys.path)."""

import io
import tarfile

from torchspine.cli import main


def run_cli(argv, capsys) -> tuple[int, str]:
    """Run ``torchspine ARGV`` in this process: (exit code, stdout + stderr). A traceback in the
    output fails the test: every error a user can cause must be one clear line."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text, text
    return rc, text


def tarball(members: dict[str, bytes]) -> bytes:
    """A .tar.gz in memory holding ``members`` (name -> bytes), like the official weight archives."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
