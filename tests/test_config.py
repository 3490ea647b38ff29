from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from spritesafe.config import load_settings


def test_defaults_live_under_data_dir(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_path == tmp_path / "data"
    assert settings.catalog_url == f"sqlite:///{tmp_path / 'data' / 'catalog.db'}"
    assert settings.blob_root == str(tmp_path / "data" / "blobs")


def test_toml_then_env_then_kwargs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "conf" / "spritesafe.toml"
    config.parent.mkdir()
    config.write_text(
        'data_dir = "store"\nsources = ["a", "b"]\n'
        "[dedupe]\nphash_radius = 4\ndhash_radius = 9\n"
        '[canonical]\nbackground = "#102030"\n'
    )
    settings = load_settings(config)
    # Relative paths resolve against the config file's folder, not the cwd.
    assert settings.data_path == config.parent / "store"
    assert settings.dedupe.phash_radius == 4
    assert settings.canonical.background == (16, 32, 48)
    assert settings.sources == ["a", "b"]

    monkeypatch.setenv("SPRITESAFE_DEDUPE__PHASH_RADIUS", "2")
    monkeypatch.setenv("SPRITESAFE_DB_URL", "sqlite:////tmp/x.db")
    settings = load_settings(config)
    assert settings.dedupe.phash_radius == 2
    assert settings.dedupe.dhash_radius == 9  # the rest of the table still comes from TOML
    assert settings.catalog_url == "sqlite:////tmp/x.db"

    assert load_settings(config, dedupe={"phash_radius": 1}).dedupe.phash_radius == 1


def test_local_spritesafe_toml_is_found(tmp_path: Path) -> None:
    (tmp_path / "spritesafe.toml").write_text('data_dir = "elsewhere"\n')
    assert load_settings().data_path == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    "text",
    [
        "[dedupe]\nphash_radius = 7\n",  # beyond what the 8-band multi-index guarantees
        '[canonical]\nbackground = "#12345"\n',
        "unknown_key = 1\n",
    ],
)
def test_invalid_config_is_refused(tmp_path: Path, text: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ValidationError):
        load_settings(config)


def test_the_renamed_gate_margin_says_what_replaced_it(tmp_path: Path) -> None:
    config = tmp_path / "old.toml"
    config.write_text("[export]\nconfident_margin = 0.1\n")
    with pytest.raises(ValidationError, match="confident_logits"):
        load_settings(config)
    config.write_text("[export]\nconfident_logits = 3.0\n")
    assert load_settings(config).export.confident_logits == 3.0


def test_an_unknown_key_in_a_section_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("[train]\nwarm_strat = false\n")  # a typo would otherwise be ignored
    with pytest.raises(ValidationError, match=r"train\.warm_strat\s+Extra inputs"):
        load_settings(config)
    monkeypatch.setenv("SPRITESAFE_LABEL__BUDGETT", "5")
    with pytest.raises(ValidationError, match=r"label\.budgett"):
        load_settings(None)


def test_missing_explicit_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")


def test_ollama_hosts_from_env_merge_with_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "spritesafe.toml"
    config.write_text('[ollama]\nmodel = "llava:7b"\nhosts = ["http://x:1"]\n')
    assert load_settings(config).ollama.hosts == ["http://x:1"]
    monkeypatch.setenv("SPRITESAFE_OLLAMA_HOSTS", "http://a:11434, http://b:11434")
    settings = load_settings(config)
    assert settings.ollama.hosts == ["http://a:11434", "http://b:11434"]
    assert settings.ollama.model == "llava:7b"
    monkeypatch.delenv("SPRITESAFE_OLLAMA_HOSTS")
    monkeypatch.setenv("SPRITESAFE_OLLAMA__HOSTS", "http://c:1")
    assert load_settings(config).ollama.hosts == ["http://c:1"]
