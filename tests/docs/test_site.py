"""The docs site builds strictly: a broken link or anchor, a page missing from the nav, or a docstring the
API reference cannot parse fails the build, and so this test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_site_builds_strictly_with_every_module_and_report(tmp_path, docs_pages):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    site = tmp_path / "site"
    cmd = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "-f",
        str(ROOT / "mkdocs.yml"),
        "-d",
        str(site),
    ]
    # no timeout: the build ends on its own, and a busy machine only makes it slower
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WARNING" not in done.stderr, done.stderr[-4000:]
    for page in docs_pages.api_pages():  # every module of the package has its rendered page
        html = site / "reference" / "api" / page.removesuffix(".md").removesuffix("index") / "index.html"
        assert html.is_file(), page
    for page in docs_pages.results_pages():  # every report of benchmarks/results has its page
        html = site / "results" / page.removesuffix(".md").removesuffix("index") / "index.html"
        assert html.is_file(), page
    assert (site / "reference" / "config" / "index.html").is_file()


def test_api_pages_follow_the_package(tmp_path, docs_pages):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "_private.py", "sub/__init__.py", "sub/b.py", "__main__.py"):
        (package / name).write_text('"""Doc."""\n')
    assert docs_pages.api_pages(package) == {
        "pkg/index.md": "::: pkg\n",
        "pkg/a.md": "::: pkg.a\n",
        "pkg/sub/index.md": "::: pkg.sub\n",
        "pkg/sub/b.md": "::: pkg.sub.b\n",
    }
