import subprocess
import sys

from pcam.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for name, _, _ in COMMANDS:
        assert name in out


def test_console_script_runs_without_tensorflow():
    code = (
        "import sys; from pcam.cli import main; main(['--version']) if False else None; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
