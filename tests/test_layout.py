"""The package's layering holds (import-linter's contracts in setup.cfg), and they catch a circle."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "colorize_cli"


def _lint(cwd: Path, env_path: Path) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (the [test] extra)")
    return subprocess.run([lint, str(cwd / "setup.cfg"), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(env_path)},
                          timeout=300)


def test_contracts_are_kept():
    proc = _lint(REPO, REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_a_circle_breaks_them(tmp_path):
    # the same source with one import added that closes a circle (the registry needing a bundle's loader,
    # as before the layout): the contracts must say so
    shutil.copytree(PACKAGE, tmp_path / "colorize_cli", ignore=shutil.ignore_patterns("weights", "*.npy", "__pycache__"))
    shutil.copy(REPO / "setup.cfg", tmp_path / "setup.cfg")
    registry = tmp_path / "colorize_cli" / "model" / "registry.py"
    registry.write_text(registry.read_text() + "\n\ndef _loader():\n    from .bundle import load_run\n\n    return load_run\n")
    proc = _lint(tmp_path, tmp_path)
    assert proc.returncode != 0
    assert "no import circles" in proc.stdout and "BROKEN" in proc.stdout
    assert "colorize_cli.model" in proc.stdout and ".registry -> .bundle" in proc.stdout


def test_no_module_over_500_lines():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 500, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
