"""Helpers shared by the command-line tests (imported by them; pytest puts tests/ on sys.path)."""

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
