"""Installed size of slimtorch's core and of `slimtorch[all]`, each in a fresh venv under /tmp.

Each venv gets the CPU torch first (as the Makefile does), is measured, then gets the project (non-editable, from this
checkout) and is measured again: the difference is what slimtorch and its dependencies add beside torch.

    python tools/install_size.py [--torch torch==2.13.0] [--extras core all]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def measure(extra: str, torch_spec: str, workdir: Path) -> tuple[int, int]:
    """(site-packages bytes with torch only, bytes after installing the project with ``extra``)."""
    venv = workdir / f"venv-{extra}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, torch_spec], check=True)
    site = _site_packages(venv)
    before = _size(site)
    target = str(ROOT) if extra == "core" else f"{ROOT}[{extra}]"
    subprocess.run([*pip, target], check=True)
    return before, _size(site)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default="torch==2.13.0", help="the torch requirement installed first (default: %(default)s)")
    parser.add_argument("--extras", nargs="+", default=["core", "all"], help="'core' or extra names (default: core all)")
    args = parser.parse_args()
    mb = 1e6
    with tempfile.TemporaryDirectory(prefix="slimtorch-size-", dir="/tmp") as tmp:
        print(f"{'install':<12} {'torch alone':>12} {'with slimtorch':>15} {'slimtorch adds':>15}")
        for extra in args.extras:
            before, after = measure(extra, args.torch, Path(tmp))
            name = "slimtorch" if extra == "core" else f"[{extra}]"
            print(f"{name:<12} {before / mb:>9.0f} MB {after / mb:>12.0f} MB {(after - before) / mb:>12.0f} MB")


if __name__ == "__main__":
    main()
