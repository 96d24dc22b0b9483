"""Loading a network (netvlad_port.loading): the package re-exports it without importing torch, and a
load validates the spec once."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_load_is_reexported_and_the_package_import_stays_cheap():
    import netvlad_port
    from netvlad_port import loading

    assert netvlad_port.load is loading.load and netvlad_port.load_spec is loading.load_spec
    code = (
        "import sys, netvlad_port; from click.testing import CliRunner; from netvlad_port.cli import main; "
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
