"""`[launchers] auto_fix`: the daemon writes a new checkpoint's VAE preference, as `vaereg fix --apply` would."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

import factory
from vaereg.actions.fix import MARK
from vaereg.config import Config
from vaereg.plugin.manager import Plugins
from vaereg.watch.daemon import Daemon
from webui_standin import SdVae

DEADLINE = 60.0  # generous: a loaded machine is slow; a passing test never waits that long


def wait_for(predicate, what: str):
    deadline = time.monotonic() + DEADLINE
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def _checkpoint_bytes(tmp_path: Path, name: str, vae) -> bytes:
    from safetensors.torch import save_file

    path = tmp_path / name
    save_file(factory.to_torch(factory.make_checkpoint(vae), torch.float16), str(path))
    return path.read_bytes()


def test_a_new_merged_checkpoint_gets_its_preference_and_a_users_is_kept(tmp_path, _isolated_home):
    root = tmp_path / "stable-diffusion-webui"
    factory.make_webui(root)
    vae_dir, ckpt_dir = root / "models" / "VAE", root / "models" / "Stable-diffusion"
    vae_dir.mkdir(parents=True)
    ckpt_dir.mkdir(parents=True)
    a, b, c = factory.make_vae(seed=1), factory.make_vae(seed=2), factory.make_vae(seed=3)
    factory.save_safetensors(a, vae_dir / "vae-ft-mse.safetensors")
    factory.save_safetensors(b, vae_dir / "kl-f8-anime2.safetensors")
    factory.save_safetensors(c, vae_dir / "blessed2.safetensors")

    def merged(w: float, other):
        return {k: (w * a[k] + (1 - w) * other[k]).astype(np.float32) for k in a}

    downloads = {"AnythingMix.safetensors": _checkpoint_bytes(tmp_path, "m1.safetensors", merged(0.7, b)),
                 "chosen.safetensors": _checkpoint_bytes(tmp_path, "m2.safetensors", merged(0.6, c))}
    (ckpt_dir / "chosen.json").write_text(json.dumps({"vae": "kl-f8-anime2.safetensors"}))

    config = dataclasses.replace(Config.load(), settle_seconds=0.3, launchers=(root,), auto_fix=True)
    daemon = Daemon(config, Plugins())
    daemon.start()
    try:
        wait_for(lambda: daemon.reconciles >= 1, "the first reconcile")
        # downloads land: written elsewhere, renamed into place
        for name, data in downloads.items():
            part = ckpt_dir / f"{name}.part"
            part.write_bytes(data)
            part.rename(ckpt_dir / name)
        meta = ckpt_dir / "AnythingMix.json"
        wait_for(lambda: meta.is_file() and "vae" in json.loads(meta.read_text()), "the preference")
        wait_for(lambda: daemon.index.get(str(ckpt_dir / "chosen.safetensors")), "the second checkpoint indexed")
        wait_for(lambda: daemon.status().queued == 0 and daemon.status().hashing == 0, "the daemon idle")
    finally:
        daemon.stop()
    written = json.loads(meta.read_text())
    assert written["vae"] == "vae-ft-mse.safetensors" and written[MARK]["created"] is True
    assert json.loads((ckpt_dir / "chosen.json").read_text()) == {"vae": "kl-f8-anime2.safetensors"}
    sd_vae = SdVae(model_path=str(ckpt_dir), vae_path=str(vae_dir))
    sd_vae.refresh_vae_list()
    assert sd_vae.resolve_vae(str(ckpt_dir / "AnythingMix.safetensors")) == (
        str(vae_dir / "vae-ft-mse.safetensors"), "from user metadata")


def test_auto_fix_is_off_by_default_and_must_be_a_boolean(tmp_path):
    assert Config(home=tmp_path).auto_fix is False
    assert Config.from_mapping({"launchers": {"auto_fix": True}}, home=tmp_path, source=tmp_path / "v.toml").auto_fix
    # a wrong type is a warning with its position, and the default applies
    wrong = Config.from_mapping({"launchers": {"auto_fix": "yes"}}, home=tmp_path, source=tmp_path / "v.toml",
                                text='[launchers]\nauto_fix = "yes"\n')
    assert wrong.auto_fix is False
    assert wrong.warnings == (f"{tmp_path / 'v.toml'}:2:1: launchers.auto_fix must be true or false; using the default",)
