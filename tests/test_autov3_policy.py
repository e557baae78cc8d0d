"""AutoV3 - a second SHA-256 over the file - is computed up to `[hash] autov3_max_mb`, or when asked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import factory
import pytest

from vaereg.cli import main
from vaereg.config import Config
from vaereg.identity.analyze import identify


def _autov3(path: Path) -> str:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n :]).hexdigest()[:12]


@pytest.fixture
def vae_file(tmp_path) -> Path:
    return factory.save_safetensors(factory.make_vae(ch=8), tmp_path / "vae.safetensors")


def test_autov3_up_to_the_limit_only(vae_file, plugins):
    size = vae_file.stat().st_size
    assert identify(vae_file, plugins).file.autov3 == _autov3(vae_file)  # default limit: 1 GiB
    assert identify(vae_file, plugins, autov3_max_bytes=size).file.autov3 == _autov3(vae_file)
    over = identify(vae_file, plugins, autov3_max_bytes=size - 1).file
    assert over.autov3 is None and over.sha256 == hashlib.sha256(vae_file.read_bytes()).hexdigest()
    assert identify(vae_file, plugins, autov3_max_bytes=None).file.autov3 == _autov3(vae_file)


def test_config_and_the_flag(vae_file, tmp_path, capsys, _isolated_home):
    (_isolated_home / "vaereg.toml").write_text("[hash]\nautov3_max_mb = 0\n")
    assert Config.load().autov3_max_bytes == 0
    assert main(["hash", "--json", str(vae_file)]) == 0
    assert json.loads(capsys.readouterr().out)["file"]["autov3"] is None
    assert main(["hash", "--json", "--autov3", str(vae_file)]) == 0
    assert json.loads(capsys.readouterr().out)["file"]["autov3"] == _autov3(vae_file)
    (_isolated_home / "vaereg.toml").write_text('[hash]\nautov3_max_mb = "all"\n')
    assert Config.load().autov3_max_bytes >= 1 << 62
    (_isolated_home / "vaereg.toml").write_text('[hash]\nautov3_max_mb = "lots"\n')
    config = Config.load()
    assert config.autov3_max_bytes == 1 << 30 and any("autov3_max_mb" in w for w in config.warnings)
