"""``docs/reference/config.md`` is what ``scripts/gen_config_docs.py`` writes from ``conf/`` today."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_config_page_is_current(config_docs):
    committed = (ROOT / "docs" / "reference" / "config.md").read_text()
    assert committed == config_docs.render(), "stale: run python scripts/gen_config_docs.py"


def test_config_page_shows_every_file_of_conf(config_docs):
    page = config_docs.render()
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        rel = path.relative_to(ROOT / "conf").with_suffix("").as_posix()
        heading = f"### `{rel}.yaml`" if path.parent == ROOT / "conf" else f"#### `{rel}`"
        assert heading in page, rel
    assert "SPEC" not in page and "README" not in page


def test_config_page_says_when_it_is_stale(tmp_path, config_docs, monkeypatch):
    monkeypatch.setattr(config_docs, "PAGE", tmp_path / "config.md")
    (tmp_path / "config.md").write_text("# old\n")
    assert config_docs.main(["--check"]) == 1
    assert config_docs.main([]) == 0 and config_docs.main(["--check"]) == 0
