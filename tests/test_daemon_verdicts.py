"""The daemon keeps `check`'s kept verdicts current (watch/verdicts.py): after a download changes the library,
the verdict kept for a checkpoint is computed again in the background, and the next `vaereg check` answers
with it - the same answer a fresh check gives - without computing anything."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time

import factory
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_daemon import SETTLE, running, wait_for, wait_idle

from vaereg.answers.known import KnownVaes
from vaereg.api import Vaereg
from vaereg.cli import main
from vaereg.config import Config
from vaereg.identity import analyze
from vaereg.watch import verdicts


@pytest.fixture
def config(config: Config) -> Config:
    return dataclasses.replace(config, settle_seconds=SETTLE, reconcile_interval=3600.0, workers=2)


def kept(config: Config) -> dict[str, str]:
    with sqlite3.connect(config.index) as db:
        return dict(db.execute("SELECT path, key FROM answers"))


def check_json(capsys, *args: str) -> dict:
    assert main(["check", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_download_refreshes_the_kept_verdict_and_the_next_check_only_reads_it(
    tmp_path, config, plugins, capsys, monkeypatch
):
    monkeypatch.setattr(verdicts, "SETTLE", 0.2)
    lib = tmp_path / "lib"
    lib.mkdir()
    a, b = factory.make_vae(seed=1), factory.make_vae(seed=2)
    factory.save_safetensors(a, lib / "vae-a.safetensors")
    factory.save_safetensors(b, lib / "vae-b.safetensors")
    merge = {k: (np.float32(0.7) * a[k] + np.float32(0.3) * b[k]).astype(np.float32) for k in a}
    model = lib / "merge.safetensors"
    save_file(factory.to_torch(factory.make_checkpoint(merge), torch.float16), str(model))

    with running(config, plugins, [lib]) as daemon:
        wait_idle(daemon)
        before = check_json(capsys, str(model))  # computed, and kept
        assert before["embedded"]["relation"] == "blend" and list(kept(config)) == [str(model)]
        key_before = kept(config)[str(model)]

        save_file(factory.to_torch(a, torch.bfloat16), str(lib / "vae-a-bf16.safetensors"))  # a download
        wait_for(lambda: kept(config)[str(model)] != key_before, "the kept verdict to be computed again")
        wait_idle(daemon)
        assert daemon.verdicts.refreshed >= 1

        gathered = []
        real = KnownVaes.gather.__func__
        monkeypatch.setattr(KnownVaes, "gather", classmethod(lambda cls, *a, **k: gathered.append(1) or real(cls, *a, **k)))
        after = check_json(capsys, str(model))
        assert gathered == []  # the daemon's verdict, nothing computed
        assert after == check_json(capsys, "--rehash", str(model))  # what a fresh check says
        assert after != before and str(lib / "vae-a-bf16.safetensors") in after["recommended"]["paths"]


def test_a_changed_file_is_left_to_its_identification_not_read_by_the_refresh(tmp_path, config, plugins, capsys, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    model = lib / "model.safetensors"
    save_file(factory.to_torch(factory.make_checkpoint(factory.make_vae(seed=3)), torch.float16), str(model))
    with running(config, plugins, [lib]) as daemon:
        wait_idle(daemon)
    check_json(capsys, str(model))  # kept
    with open(model, "ab") as f:  # changed while no daemon watches: the row no longer matches the file
        f.write(b"\0" * 8)
    read = []
    real = analyze.analyze
    monkeypatch.setattr(analyze, "analyze", lambda *a, **k: read.append(a[0]) or real(*a, **k))
    with Vaereg(config, plugins=plugins) as services:
        refresh = verdicts.VerdictRefresh(services, plugins, config, threading.Event())
        assert services.index.verdict_paths()[1] == [str(model)]
        refresh._refresh()
    assert read == [] and refresh.refreshed == 0


@pytest.mark.parametrize("check_ahead", [True, False])
def test_check_ahead_keeps_a_verdict_for_every_checkpoint(tmp_path, config, plugins, capsys, monkeypatch, check_ahead):
    """With `[daemon] check_ahead` (the default) a checkpoint nobody checked yet has its verdict kept by the
    daemon, so the first `check` computes nothing; without it, only verdicts asked for are kept."""
    monkeypatch.setattr(verdicts, "SETTLE", 0.2)
    config = dataclasses.replace(config, check_ahead=check_ahead)
    lib = tmp_path / "lib"
    lib.mkdir()
    factory.save_safetensors(factory.make_vae(seed=4), lib / "vae.safetensors")
    models = [lib / f"model-{n}.safetensors" for n in range(3)]
    for n, model in enumerate(models):
        save_file(factory.to_torch(factory.make_checkpoint(factory.make_vae(seed=5 + n)), torch.float16), str(model))
    lora = factory.save_safetensors(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 8), np.float32)},
        lib / "lora.safetensors",
    )
    with running(config, plugins, [lib]) as daemon:
        wait_idle(daemon)
        if check_ahead:
            wait_for(lambda: sorted(kept(config)) == sorted(map(str, models)), "a verdict kept for each checkpoint")
        else:
            time.sleep(3 * verdicts.SETTLE)  # paces the test: nothing may appear meanwhile
            assert kept(config) == {}
        gathered = []
        real = KnownVaes.gather.__func__
        monkeypatch.setattr(KnownVaes, "gather", classmethod(lambda cls, *a, **k: gathered.append(1) or real(cls, *a, **k)))
        first = check_json(capsys, str(models[0]))
        assert (gathered == []) is check_ahead
        assert first == check_json(capsys, "--rehash", str(models[0]))
    assert str(lora) not in kept(config)
