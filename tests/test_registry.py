"""The registry: layer merging, the shipped data, lookups, and writes that are safe to run side by side."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from vaereg.config import Config
from vaereg.errors import RegistryError
from vaereg.store.registry.read import Registry
from vaereg.store.registry.schema import KNOWN_BASES, KnownFile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64
ID_1 = "0123456789abcdef0123456789abcdef"
ENC_1 = "11111111111111111111111111111111"
DEC_1 = "22222222222222222222222222222222"
MSE_SAFETENSORS = "735e4c3a447a3255760d7f86845f09f937809baa529c17370d83e4c3758f3c75"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def home(config: Config) -> Path:
    """The test's isolated VAEREG_HOME (conftest), where the local registry lives."""
    return config.home


# --- merging ------------------------------------------------------------------------------------------


def test_three_layers_merge_field_by_field(tmp_path: Path, home: Path) -> None:
    shipped = write(
        tmp_path / "shipped.toml",
        f"""
schema = 1
[vae.alpha]
name = "Alpha"
aliases = ["a1"]
family = "kl-f8-4ch"
notes = "shipped notes"
source = "https://example.org/alpha"
flags = ["f1"]
[[vae.alpha.files]]
sha256 = "{SHA_A}"
names = ["alpha.ckpt"]
source = "https://example.org/alpha.ckpt"

[vae.beta]
name = "Beta"
""",
    )
    shared = tmp_path / "team"
    # Files in a shared folder are layers in name order: 20-* is read after 10-*.
    write(shared / "20-more.toml", f"""
[vae.alpha]
notes = "team notes"
[[vae.alpha.files]]
sha256 = "{SHA_A.upper()}"
names = ["alpha.safetensors", "alpha.ckpt"]
[[vae.alpha.files]]
sha256 = "{SHA_B}"
names = ["alpha-fp16.safetensors"]
""")
    write(shared / "10-team.toml", """
schema = 1
[vae.alpha]
name = "Team Alpha"
aliases = ["a2", "a1"]
notes = "overridden by 20-more"
""")
    local = write(home / "registry.toml", """
[vae.alpha]
aliases = ["a3"]
family = "kl-f8-16ch"
source = ""
replace = ["flags"]
flags = ["f2"]

[vae.gamma]
name = "Gamma"
""")
    registry = Registry.load(Config(home=home, shared_registries=(shared,)), shipped=shipped)

    assert registry.warnings == []
    assert [(layer.path, layer.writable) for layer in registry.layers] == [
        (shipped, False),
        (shared / "10-team.toml", False),
        (shared / "20-more.toml", False),
        (local, True),
    ]
    alpha = registry.entries["alpha"]
    assert alpha.name == "Team Alpha"  # a later layer wins on a scalar
    assert alpha.family == "kl-f8-16ch"
    assert alpha.notes == "team notes"
    assert alpha.source is None  # "" clears
    assert alpha.aliases == ("a1", "a2", "a3")  # union, in order of first appearance
    assert alpha.flags == ("f2",)  # replace = ["flags"]: the local list stands alone
    assert [(f.sha256, f.names, f.source) for f in alpha.files] == [
        (SHA_A, ("alpha.ckpt", "alpha.safetensors"), "https://example.org/alpha.ckpt"),
        (SHA_B, ("alpha-fp16.safetensors",), None),
    ]
    assert registry.entries["beta"].name == "Beta"  # untouched by later layers
    assert list(registry.entries) == ["alpha", "beta", "gamma"]
    assert alpha.to_json()["files"][1] == {"sha256": SHA_B, "names": ["alpha-fp16.safetensors"], "source": None}


# --- the shipped data -----------------------------------------------------------------------------------


#: The family names the shipped registry may use: the architectures vaereg tells apart (docs/identity-spec.md).
SHIPPED_FAMILIES = {
    "kl-f8-4ch", "kl-f8-16ch", "flux2-32ch", "wan21", "wan22", "hunyuanvideo", "hunyuanvideo15", "ltxv",
    "cosmos", "mochi", "dc-ae", "taesd", "consistency-decoder",
}


def test_shipped_registry_is_well_formed(config: Config) -> None:
    text = resources.files("vaereg.registry_data").joinpath("vaes.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert data["schema"] == 1
    seen: dict[str, str] = {}
    for slug, entry in data["vae"].items():
        assert re.fullmatch(r"[a-z0-9._-]+", slug)
        assert entry["source"].startswith("https://"), slug
        assert entry["family"] in SHIPPED_FAMILIES, slug
        assert entry["base"] in KNOWN_BASES, slug
        assert entry["files"], slug
        for known in entry["files"]:
            assert re.fullmatch(r"[0-9a-f]{64}", known["sha256"]), (slug, known["sha256"])
            assert known["source"].startswith("https://"), (slug, known["sha256"])
            assert known["names"], (slug, known["sha256"])
            assert seen.setdefault(known["sha256"], slug) == slug, f"{known['sha256']} listed twice"

    registry = Registry.load(config)
    assert registry.warnings == []
    assert set(registry.entries) == set(data["vae"])
    assert "fp16-nan-prone" in registry.entries["sdxl-vae"].flags
    # Two different files published under one name: the hash tells them apart.
    assert [e.slug for e in registry.find_by_sha256(MSE_SAFETENSORS)] == ["vae-ft-mse-840000"]
    sdxl_names = {e.slug for e in registry.entries.values() for f in e.files if "sdxl_vae.safetensors" in f.names}
    assert sdxl_names == {"sdxl-vae", "sdxl-vae-fp16-fix"}
    # FLUX.2's two flux2-vae.safetensors: ComfyUI's [dev] file is the diffusers layout, its [klein] file BFL's.
    flux2 = {e.slug for e in registry.entries.values() for f in e.files if "flux2-vae.safetensors" in f.names}
    assert flux2 == {"flux2-vae", "flux2-ae"}
    # A name or alias leads to one entry: no two entries share one, in any case.
    holders: dict[str, str] = {}
    for entry in registry.entries.values():
        for label in {entry.name.casefold(), *(alias.casefold() for alias in entry.aliases)}:
            assert holders.setdefault(label, entry.slug) == entry.slug, f"{label!r}: {holders[label]}, {entry.slug}"
        assert registry.holders_of(entry.name)[0].entry.slug == entry.slug


# --- lookups --------------------------------------------------------------------------------------------


def test_lookups_by_id_sha256_and_prefix_in_any_case(home: Path, config: Config) -> None:
    write(home / "registry.toml", f"""
[vae.mine]
name = "Mine"
id = "{ID_1.upper()}"
encoder_id = "{ENC_1}"
decoder_id = "{DEC_1}"
[[vae.mine.files]]
sha256 = "{SHA_C}"
""")
    registry = Registry.load(config)

    assert [e.slug for e in registry.find_by_id(ID_1.upper())] == ["mine"]
    assert registry.find_by_id(ENC_1) == []  # an encoder id is not an id
    assert [e.slug for e in registry.find_by_sha256(MSE_SAFETENSORS.upper())] == ["vae-ft-mse-840000"]
    assert [e.slug for e in registry.find_by_sha256(f"  {SHA_C}\n")] == ["mine"]

    found = registry.match([DEC_1.upper(), MSE_SAFETENSORS, "f" * 64, DEC_1])
    assert [(m.entry.slug, m.field, m.value) for m in found] == [
        ("mine", "decoder_id", DEC_1),
        ("vae-ft-mse-840000", "sha256", MSE_SAFETENSORS),
    ]

    assert [(m.entry.slug, m.field) for m in registry.search_prefix("0123456789AB")] == [("mine", "id")]
    assert [(m.entry.slug, m.field) for m in registry.search_prefix("735E4C")] == [("vae-ft-mse-840000", "sha256")]
    assert registry.search_prefix("abcdef99") == []
    for bad in ("735e4", "not-hex!"):
        with pytest.raises(ValueError):
            registry.search_prefix(bad)


# --- writes ---------------------------------------------------------------------------------------------


def test_plan_touches_nothing_until_executed(home: Path, config: Config) -> None:
    registry = Registry.load(config)
    plan = registry.plan_set_name(ID_1, "My Anime VAE", family="kl-f8-4ch")
    assert plan.describe() == [
        f"vae.my-anime-vae: create for id {ID_1}",
        "vae.my-anime-vae: name = 'My Anime VAE'",
        "vae.my-anime-vae: family = 'kl-f8-4ch'",
        f"vae.my-anime-vae: id = '{ID_1}'",
    ]
    assert list(home.iterdir()) == []  # nothing written, not even a lock

    assert plan.execute() == ("my-anime-vae",)
    text = (home / "registry.toml").read_text(encoding="utf-8")
    assert text.startswith("# vaereg local registry")
    assert tomllib.loads(text)["vae"]["my-anime-vae"] == {"name": "My Anime VAE", "family": "kl-f8-4ch", "id": ID_1}

    registry.reload()
    entry = registry.set_name(ID_1.upper(), "Renamed")  # the id's entry keeps its slug
    assert (entry.slug, entry.name) == ("my-anime-vae", "Renamed")
    other = registry.set_name("f" * 32, "Renamed")  # a new id with a taken name gets a new slug
    assert other.slug == "renamed"
    third = registry.set_name("e" * 32, "My Anime VAE")
    assert third.slug == "my-anime-vae-2"

    assert registry.remove_name("f" * 32) is None  # a local-only entry with nothing else in it goes
    assert "renamed" not in registry.entries


def test_learn_ids_fills_a_shipped_entry_and_refuses_a_contradiction(home: Path, config: Config) -> None:
    registry = Registry.load(config)
    entry = registry.learn_ids("vae-ft-mse-840000", ID_1, ENC_1, DEC_1, "kl-f8-4ch")
    assert (entry.id, entry.encoder_id, entry.decoder_id, entry.name) == (
        ID_1, ENC_1, DEC_1, "vae-ft-mse-840000-ema-pruned"
    )
    local = tomllib.loads((home / "registry.toml").read_text(encoding="utf-8"))
    # Only what the shipped layer lacked is written: the family already agreed.
    assert local["vae"]["vae-ft-mse-840000"] == {"id": ID_1, "encoder_id": ENC_1, "decoder_id": DEC_1}

    before = (home / "registry.toml").read_bytes()
    assert registry.learn_ids("vae-ft-mse-840000", ID_1.upper(), ENC_1, DEC_1).id == ID_1  # no change, no write
    with pytest.raises(RegistryError, match="has id 0123"):
        registry.learn_ids("vae-ft-mse-840000", "9" * 32)
    assert (home / "registry.toml").read_bytes() == before


def test_a_write_keeps_a_persons_comments_and_order(home: Path, config: Config) -> None:
    original = """\
# hand-kept registry: please keep my order
schema = 1

# my favourite, used for everything
[vae.zeta]
notes = "notes first, on purpose"   # why: I read notes first
name = "Zeta"
aliases = ["z"]  # short

# comes after zeta on purpose
[vae.alpha]
name = "Alpha"
"""
    path = write(home / "registry.toml", original)
    registry = Registry.load(config)

    registry.add_aliases("zeta", ["zz"])
    registry.add_flags("zeta", ["mine"])
    assert path.read_text(encoding="utf-8") == original.replace(
        'aliases = ["z"]  # short\n', 'aliases = ["z", "zz"]  # short\nflags = ["mine"]\n'
    )

    edited = path.read_text(encoding="utf-8")
    registry.set_name(ID_1, "Omega")  # a new entry goes after everything a person wrote
    after = path.read_text(encoding="utf-8")
    assert after.startswith(edited)
    assert after[len(edited):] == f'\n[vae.omega]\nname = "Omega"\nid = "{ID_1}"\n'


def test_added_files_go_in_as_tables_and_merge_by_hash(home: Path, config: Config) -> None:
    registry = Registry.load(config)
    registry.update("kl-f8-anime2", {"files": [KnownFile(SHA_A, ("anime2-copy.pt",), "https://example.org/x")]})
    entry = registry.update(
        "kl-f8-anime2", {"files": [{"sha256": SHA_A.upper(), "names": ["anime2-copy.pt", "renamed.pt"]}]}
    )
    shipped_hash = "df3c506e51b7ee1d7b5a6a2bb7142d47d488743c96aa778afb0f53a2cdc2d38d"
    assert [f.sha256 for f in entry.files] == [shipped_hash, SHA_A]
    assert entry.files[1].names == ("anime2-copy.pt", "renamed.pt")
    text = (home / "registry.toml").read_text(encoding="utf-8")
    assert text.count("[[vae.kl-f8-anime2.files]]") == 1


@pytest.mark.parametrize(
    ("broken", "line", "col", "problem"),
    [
        ('schema = 1\n\n[vae.mine]\nname = "unterminated\n', 4, 21, "invalid TOML"),
        ('schema = 1\n\n[vae.mine]\nname = "Mine"\n  aliases = 3\n', 5, 3, "vae.mine.aliases must be a list"),
    ],
)
def test_a_broken_local_registry_is_reported_and_never_overwritten(
    home: Path, config: Config, broken: str, line: int, col: int, problem: str
) -> None:
    path = write(home / "registry.toml", broken)
    before = path.read_bytes()

    registry = Registry.load(config)
    assert len(registry.warnings) == 1
    warning = registry.warnings[0]
    location = re.match(rf"{re.escape(str(path))}:(\d+):(\d+): ", warning)
    assert location, warning
    assert (int(location[1]), int(location[2])) == (line, col)
    assert problem in warning
    assert registry.layers[-1].error == warning
    assert "vae-ft-mse-840000" in registry.entries  # the other layers still count
    assert "mine" not in registry.entries

    with pytest.raises(RegistryError) as refused:
        registry.add_aliases("vae-ft-mse-840000", ["mine"])
    assert str(refused.value) == warning
    assert path.read_bytes() == before


# --- concurrency and locks ------------------------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from vaereg.config import Config
from vaereg.store.registry.read import Registry
home, go, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
registry = Registry.load(Config(home=home), lock_timeout=30)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
registry.add_aliases("vae-ft-mse-840000", [f"writer-{n}-a", f"writer-{n}-b"])
"""

HOLDER = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])  # kept in a name: a dropped FileLock releases itself
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_eight_processes_add_aliases_to_one_entry_at_once(tmp_path: Path, home: Path, config: Config) -> None:
    go = tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(home), str(go), str(n)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in range(8)
    ]
    try:
        for writer in writers:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        go.touch()  # every writer planned against a registry with no local file: all of them create it
        for writer in writers:
            _, stderr = writer.communicate(timeout=60)
            assert writer.returncode == 0, stderr
    finally:
        for writer in writers:
            writer.kill()

    data = tomllib.loads((home / "registry.toml").read_text(encoding="utf-8"))
    wanted = {f"writer-{n}-{part}" for n in range(8) for part in "ab"}
    assert set(data["vae"]["vae-ft-mse-840000"]["aliases"]) == wanted
    assert len(data["vae"]["vae-ft-mse-840000"]["aliases"]) == 16
    merged = Registry.load(config).entries["vae-ft-mse-840000"].aliases
    assert wanted <= set(merged)
    assert not list(home.glob("*.tmp"))


def _hold_lock(lock_path: Path) -> subprocess.Popen[str]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_lock_left_by_a_killed_holder_does_not_block(home: Path, config: Config) -> None:
    lock_path = home / "registry.toml.lock"
    holder = _hold_lock(lock_path)
    registry = Registry.load(config, lock_timeout=0.2)
    with pytest.raises(RegistryError, match="locked by another process"):
        registry.add_aliases("sdxl-vae", ["while-held"])  # the lock really is held
    holder.kill()  # SIGKILL: the holder never releases anything
    holder.wait()
    assert lock_path.exists()

    registry.lock_timeout = 2
    started = time.monotonic()
    entry = registry.add_aliases("sdxl-vae", ["after-the-crash"])
    assert time.monotonic() - started < 1.5
    assert "after-the-crash" in entry.aliases


def test_a_lock_held_by_a_live_process_times_out_quickly(home: Path, config: Config) -> None:
    holder = _hold_lock(home / "registry.toml.lock")
    try:
        registry = Registry.load(config, lock_timeout=0.3)
        started = time.monotonic()
        locked = r"registry\.toml is locked by another process for more than 0\.3s"
        with pytest.raises(RegistryError, match=locked):
            registry.add_aliases("sdxl-vae", ["never"])
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()
    assert not (home / "registry.toml").exists()
