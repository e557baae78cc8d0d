"""The catalog: lookups by every hash kind, names that follow a VAE into every copy, the shipped registry,
ambiguous prefixes, reclaimable bytes, and the registry-changed event.

`library` (built once per session, small channel counts) is a models folder holding one VAE (A) as fp32
safetensors, fp16 safetensors and .pt, two byte-identical renamed copies of the fp32 file plus a hard link
to one of them, a checkpoint embedding it; a decoder fine-tune of it (B, sharing A's encoder) in fp32 and
fp16; and a checkpoint with no VAE. Each test records it into its own index.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from events import Events
from factory import make_checkpoint, make_vae, save_ckpt, save_safetensors

from vaereg.cli import main
from vaereg.config import Config
from vaereg.errors import RegistryError
from vaereg.identity.analyze import identify
from vaereg.identity.report import FileHashes, HashReport
from vaereg.plugin.manager import Plugins, get_plugin_manager
from vaereg.store.catalog import (
    AmbiguousQueryError,
    Catalog,
    NoMatchError,
    reclaimable_bytes,
)
from vaereg.store.index import Index
from vaereg.store.ingest import Ingest
from vaereg.store.registry.read import Registry

A_FILES = (
    "vae.safetensors",
    "vae-fp16.safetensors",
    "vae.pt",
    "copy-a.safetensors",
    "copy-b.safetensors",
    "copy-a-link.safetensors",
    "checkpoint.safetensors",
)
B_FILES = ("finetune.safetensors", "finetune-fp16.safetensors")
NO_VAE = "unet-only.safetensors"
KINDS = ("id", "exact_id", "encoder_id", "decoder_id", "sha256", "autov1", "autov2", "autov3", "blake3")


@dataclass(frozen=True)
class Library:
    root: Path
    reports: dict[str, HashReport]

    def path(self, name: str) -> str:
        return str(self.root / name)

    def hash(self, name: str, kind: str) -> str:
        report = self.reports[name]
        holder = report.vae if kind in ("id", "exact_id", "encoder_id", "decoder_id") else report.file
        value = getattr(holder, kind)
        assert value, (name, kind)
        return value

    def record(self, index: Index, names: tuple[str, ...] = (*A_FILES, *B_FILES, NO_VAE)) -> None:
        for name in names:
            index.record(self.path(name), os.stat(self.path(name)), self.reports[name])


def _fp16(sd: dict) -> dict:
    return {key: value.astype(np.float16) for key, value in sd.items()}


_built: list[Library] = []  # the test modules that import `library` share one build


@pytest.fixture(scope="session")
def library(tmp_path_factory, plugins) -> Library:
    if _built:
        return _built[0]
    root = tmp_path_factory.mktemp("library")
    vae_a, vae_b = make_vae(ch=8, seed=3), make_vae(ch=8, seed=3, decoder_seed=7)
    save_safetensors(vae_a, root / "vae.safetensors")
    save_safetensors(_fp16(vae_a), root / "vae-fp16.safetensors")
    save_ckpt(vae_a, root / "vae.pt", wrap=False)
    shutil.copyfile(root / "vae.safetensors", root / "copy-a.safetensors")
    shutil.copyfile(root / "vae.safetensors", root / "copy-b.safetensors")
    os.link(root / "copy-a.safetensors", root / "copy-a-link.safetensors")
    save_safetensors(make_checkpoint(vae_a), root / "checkpoint.safetensors")
    save_safetensors(vae_b, root / "finetune.safetensors")
    save_safetensors(_fp16(vae_b), root / "finetune-fp16.safetensors")
    save_safetensors(make_checkpoint({}), root / NO_VAE)
    reports = {name: identify(root / name, plugins) for name in (*A_FILES, *B_FILES, NO_VAE)}
    for name, report in reports.items():
        assert report.ok and report.file and report.file.sha256, (name, report.error)
        assert (report.vae is None) == (name == NO_VAE), name
    _built.append(Library(root, reports))
    return _built[0]



def run(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in process: exit status, stdout and stderr of one call."""
    capsys.readouterr()
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def indexed(library: Library) -> Library:
    """The library, recorded in this test's index."""
    with Index(Config.load().index) as index:
        library.record(index)
    return library

@pytest.fixture
def registry(config) -> Registry:
    return Registry.load(config)


@pytest.fixture
def catalog(library, index, registry) -> Catalog:
    library.record(index)
    return Catalog(index, registry)


def write_shipped(path: Path, text: str) -> Path:
    path.write_text("schema = 1\n" + text, encoding="utf-8")
    return path


# --- the library is what the tests say it is ----------------------------------------------------------


def test_the_library_holds_two_vaes_in_the_expected_copies(library: Library) -> None:
    ids = {name: library.reports[name].vae.id for name in (*A_FILES, *B_FILES)}
    assert len({ids[name] for name in A_FILES}) == 1
    assert len({ids[name] for name in B_FILES}) == 1
    assert ids["vae.safetensors"] != ids["finetune.safetensors"]
    a, fp16, b = (library.reports[n].vae for n in ("vae.safetensors", "vae-fp16.safetensors", "finetune.safetensors"))
    assert a.exact_id != fp16.exact_id and fp16.dtype == "F16"
    assert a.encoder_id == b.encoder_id and a.decoder_id != b.decoder_id
    assert library.reports["checkpoint.safetensors"].vae.prefix == "first_stage_model."
    assert library.reports["vae.pt"].format == "torch-zip"
    sha = {name: library.hash(name, "sha256") for name in A_FILES}
    assert len({sha[n] for n in A_FILES if n.startswith(("vae.safe", "copy-"))}) == 1  # 4 names, one content


# --- lookup ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["full", "UPPER", "prefix"])
def test_lookup_by_any_hash_kind_finds_the_entry_and_every_copy(
    library: Library, catalog: Catalog, kind: str, form: str
) -> None:
    vae_id = library.hash("vae.safetensors", "id")
    catalog.name(vae_id, "My VAE", note="a note", flags=["fp16-ok"])
    # Ids and file hashes of the fp16 copy (its exact_id and bytes are its own). AutoV1 hashes the 64 KiB at
    # 1 MiB, which a file this small does not reach (every such file has the AutoV1 of nothing), and which
    # in the fp32 files lies in the encoder the fine-tune shares: the checkpoint's is A's alone.
    source = "checkpoint.safetensors" if kind == "autov1" else "vae-fp16.safetensors"
    value = library.hash(source, kind)
    query = {"full": value, "UPPER": value.upper(), "prefix": value[:8].upper()}[form]

    result = catalog.lookup(query)

    assert not result.ambiguous and result.found
    (match,) = [m for m in result.matches if m.id == vae_id]
    assert (match.name, match.notes, match.flags, match.family, match.latent_channels) == (
        "My VAE", "a note", ("fp16-ok",), "kl-f8-4ch", 4
    )
    assert sorted(copy.path for copy in match.copies) == sorted(library.path(n) for n in A_FILES)
    assert {(c.path.rsplit("/", 1)[-1], c.embedded) for c in match.copies if c.embedded} == {
        ("checkpoint.safetensors", True)
    }
    assert (kind, value) in {(hit.kind, hit.value) for hit in match.matched}
    # The shared encoder leads to the fine-tune too; nothing else leads anywhere else.
    others = {m.id for m in result.matches} - {vae_id}
    assert others == ({library.hash("finetune.safetensors", "id")} if kind == "encoder_id" else set())


def test_lookup_of_a_copy_inside_a_checkpoint_and_of_a_pt_file(library: Library, catalog: Catalog) -> None:
    vae_id = library.hash("vae.safetensors", "id")
    for name in ("checkpoint.safetensors", "vae.pt"):
        (match,) = catalog.lookup(library.hash(name, "blake3")).matches
        assert match.id == vae_id and len(match.copies) == len(A_FILES)


def test_nothing_matches_a_hash_no_vae_has(library: Library, catalog: Catalog) -> None:
    assert catalog.lookup("0123456789abcdef0123").matches == ()
    # The checkpoint without a VAE is indexed, but holds nothing to name.
    result = catalog.lookup(library.hash(NO_VAE, "sha256"))
    assert (result.matches, result.ambiguous, result.found) == ((), False, False)
    with pytest.raises(NoMatchError, match="nothing matches"):
        catalog.resolve(library.hash(NO_VAE, "sha256"))


@pytest.mark.parametrize("query", ["abcde", "12345", "xyz123", "", "0x1234567"])
def test_a_query_that_is_not_a_hash_is_refused(catalog: Catalog, query: str) -> None:
    with pytest.raises(ValueError):
        catalog.lookup(query)


def test_a_shared_encoder_id_leads_to_every_vae_with_it_without_being_ambiguous(
    library: Library, catalog: Catalog
) -> None:
    result = catalog.lookup(library.hash("vae.safetensors", "encoder_id"))
    assert not result.ambiguous
    both = {library.hash(name, "id") for name in ("vae.safetensors", "finetune.safetensors")}
    assert {m.id for m in result.matches} == both
    # ... but naming needs one VAE, and says which ones it could be.
    with pytest.raises(AmbiguousQueryError) as raised:
        catalog.name(library.hash("vae.safetensors", "encoder_id"), "Which?")
    assert {m.id for m in raised.value.candidates} == {m.id for m in result.matches}
    assert library.hash("finetune.safetensors", "id") in str(raised.value)


def test_a_prefix_of_two_values_of_one_kind_is_ambiguous(library: Library, catalog: Catalog, index: Index) -> None:
    real = library.hash("vae-fp16.safetensors", "sha256")
    # Another copy of A whose SHA-256 starts like the fp16 file's (a made-up row: real files cannot be made so).
    twin = real[:8] + ("0" if real[8] != "0" else "1") + real[9:]
    report = library.reports["vae.safetensors"]
    fake = replace(report, path="/elsewhere/twin.safetensors", file=FileHashes(size=1, sha256=twin))
    index.record("/elsewhere/twin.safetensors", os.stat(library.path("vae.safetensors")), fake)

    result = catalog.lookup(real[:8])

    assert result.ambiguous
    (match,) = result.matches  # both values lead to A
    assert {hit.value for hit in match.matched if hit.kind == "sha256"} == {real, twin}
    assert catalog.resolve(real[:8]) == library.hash("vae.safetensors", "id")  # one VAE: naming may go on
    assert not catalog.lookup(real).ambiguous


def test_a_prefix_of_two_kinds_of_hash_of_two_vaes_is_ambiguous(
    library: Library, catalog: Catalog, index: Index
) -> None:
    real = library.hash("vae-fp16.safetensors", "sha256")
    # A copy of the fine-tune whose BLAKE3 starts like A's fp16 SHA-256: one value per kind, two VAEs.
    lookalike = FileHashes(size=1, sha256="e" * 64, blake3=real[:8] + "0" * 56)
    fake = replace(library.reports["finetune.safetensors"], file=lookalike)
    index.record("/elsewhere/lookalike.safetensors", os.stat(library.path("finetune.safetensors")), fake)

    result = catalog.lookup(real[:8])

    assert result.ambiguous
    assert {m.id: [h.kind for h in m.matched] for m in result.matches} == {
        library.hash("vae.safetensors", "id"): ["sha256", "autov2"],
        library.hash("finetune.safetensors", "id"): ["blake3"],
    }


def test_a_prefix_of_hashes_of_two_vaes_is_ambiguous(
    library: Library, index: Index, config: Config, tmp_path: Path
) -> None:
    real = library.hash("vae-fp16.safetensors", "sha256")
    shipped = write_shipped(
        tmp_path / "shipped.toml",
        f'[vae.lookalike]\nname = "Lookalike"\n[[vae.lookalike.files]]\nsha256 = "{real[:8]}{"0" * 56}"\n',
    )
    library.record(index)
    catalog = Catalog(index, Registry.load(config, shipped=shipped))

    result = catalog.lookup(real[:8])

    assert result.ambiguous and not result.found
    assert {(m.id, m.name) for m in result.matches} == {
        (library.hash("vae.safetensors", "id"), None),
        (None, "Lookalike"),
    }
    with pytest.raises(AmbiguousQueryError, match="2 VAEs"):
        catalog.plan_name(real[:8], "Nope")
    assert not config.registry.exists()


# --- names follow the VAE ------------------------------------------------------------------------------


def test_naming_one_copy_names_every_copy(library: Library, catalog: Catalog, config: Config) -> None:
    result = catalog.name(library.hash("vae.pt", "sha256"), "My VAE")

    assert result.changed and result.entry.name == "My VAE"
    assert result.entry.id == library.hash("vae.safetensors", "id")
    assert (result.entry.family, result.entry.encoder_id, result.entry.decoder_id) == (
        "kl-f8-4ch", library.hash("vae.safetensors", "encoder_id"), library.hash("vae.safetensors", "decoder_id")
    )
    for name in A_FILES:
        (match,) = catalog.lookup(library.hash(name, "sha256")).matches
        assert match.name == "My VAE", name
    (fine,) = catalog.lookup(library.hash("finetune.safetensors", "sha256")).matches
    assert fine.name is None
    assert [v.label for v in catalog.distinct_vaes()] == ["My VAE", "unnamed"]
    text = config.registry.read_text(encoding="utf-8")
    assert text.count("[vae.") == 1 and 'name = "My VAE"' in text

    again = catalog.name(library.hash("vae-fp16.safetensors", "id"), "My VAE")
    assert not again.changed and config.registry.read_text(encoding="utf-8") == text


def test_a_plan_writes_nothing_until_executed(library: Library, catalog: Catalog, config: Config) -> None:
    plan = catalog.plan_name(library.hash("vae.safetensors", "autov2"), "Planned", note="why", flags=["nan"])
    assert plan.slug == "planned" and not plan.empty
    assert any("name = 'Planned'" in line for line in plan.changes)
    assert any("flags 'nan'" in line for line in plan.changes) and any("note 'why'" in line for line in plan.changes)
    assert not config.registry.exists()
    assert plan.execute().entry.flags == ("nan",)
    assert catalog.plan_name(library.hash("vae.safetensors", "id"), "Planned", note="why", flags=["nan"]).empty


def test_alias_needs_a_named_vae_then_adds_to_its_entry(library: Library, catalog: Catalog) -> None:
    vae_id = library.hash("vae.safetensors", "id")
    with pytest.raises(RegistryError, match="name it first"):
        catalog.alias(vae_id, ["mine"])
    catalog.name(vae_id, "My VAE")
    result = catalog.alias(library.hash("checkpoint.safetensors", "sha256")[:10], ["mine", "the one"])
    assert result.entry.aliases == ("mine", "the one")
    assert catalog.lookup(library.hash("vae-fp16.safetensors", "blake3")).matches[0].aliases == ("mine", "the one")


def test_unname_removes_the_local_name_and_changes_nothing_when_there_is_none(
    library: Library, catalog: Catalog, config: Config
) -> None:
    vae_id, fine_id = library.hash("vae.safetensors", "id"), library.hash("finetune.safetensors", "id")
    plan = catalog.plan_unname(vae_id)
    assert plan.empty
    nothing = plan.execute()
    assert (nothing.changed, nothing.entry, nothing.id) == (False, None, vae_id)
    assert not config.registry.exists()  # nothing written
    catalog.name(vae_id, "My VAE")
    catalog.name(fine_id, "Fine")
    result = catalog.unname(library.hash("vae-fp16.safetensors", "sha256"))
    assert result.changed and result.entry is None  # only identity fields were left: the entry went
    assert catalog.lookup(vae_id).matches[0].name is None
    assert catalog.lookup(fine_id).matches[0].name == "Fine"
    assert "[vae.my-vae]" not in config.registry.read_text(encoding="utf-8")


def test_unname_of_the_only_local_entry_leaves_an_empty_registry(
    library: Library, catalog: Catalog, config: Config
) -> None:
    vae_id = library.hash("vae.safetensors", "id")
    catalog.name(vae_id, "My VAE")
    result = catalog.unname(vae_id)
    assert result.changed and result.entry is None
    assert "[vae." not in config.registry.read_text(encoding="utf-8")


# --- the shipped registry ------------------------------------------------------------------------------


@pytest.fixture
def shipped(library: Library, tmp_path: Path) -> Path:
    return write_shipped(
        tmp_path / "shipped.toml",
        f"""
[vae.shipped-vae]
name = "Shipped VAE"
aliases = ["shipped"]
family = "kl-f8-4ch"
notes = "from the shipped registry"
[[vae.shipped-vae.files]]
sha256 = "{library.hash('finetune.safetensors', 'sha256')}"

[vae.elsewhere]
name = "Elsewhere VAE"
family = "kl-f8-16ch"
[[vae.elsewhere.files]]
sha256 = "{'d' * 64}"
""",
    )


@pytest.fixture
def shipped_catalog(library: Library, index: Index, config: Config, shipped: Path) -> Catalog:
    """The library indexed (no scan: the registry has learnt no ids), names from the `shipped` registry."""
    library.record(index)
    return Catalog(index, Registry.load(config, shipped=shipped))


def test_a_shipped_entry_names_every_copy_of_a_file_it_lists(library: Library, shipped_catalog: Catalog) -> None:
    catalog = shipped_catalog
    fine_id = library.hash("finetune.safetensors", "id")
    # No scan taught the registry any id yet: the listed file's SHA-256 joins the entry to its VAE.
    queries = (library.hash("finetune.safetensors", "sha256"), library.hash("finetune-fp16.safetensors", "sha256"))
    for query in (*queries, fine_id):
        (match,) = catalog.lookup(query).matches
        assert (match.id, match.name, match.slug, match.notes) == (
            fine_id, "Shipped VAE", "shipped-vae", "from the shipped registry"
        ), query
        assert {c.path for c in match.copies} == {library.path(n) for n in B_FILES}
    assert {v.name for v in catalog.distinct_vaes()} == {"Shipped VAE", None}


def test_a_shipped_entry_whose_file_is_not_here_still_matches(shipped_catalog: Catalog) -> None:
    catalog = shipped_catalog
    for query in ("d" * 64, "D" * 12):
        (match,) = catalog.lookup(query).matches
        assert (match.id, match.name, match.family, match.latent_channels, match.copies) == (
            None, "Elsewhere VAE", "kl-f8-16ch", 16, ()
        )
        assert [(h.kind, h.value) for h in match.matched] == [("sha256", "d" * 64)]
    with pytest.raises(NoMatchError, match="no copy of it has been scanned"):
        catalog.resolve("d" * 64)


def test_a_scan_teaches_the_shipped_entry_its_ids(
    library: Library, index: Index, config: Config, shipped: Path, plugins
) -> None:
    from vaereg.store.scan import plan_scan

    registry = Registry.load(config, shipped=shipped)
    plan_scan([library.root], index).execute(Ingest(index, plugins, registry))
    fine_id = library.hash("finetune-fp16.safetensors", "id")
    assert registry.get("shipped-vae").id == fine_id  # learnt, into the local registry
    (match,) = Catalog(index, Registry.load(config, shipped=shipped)).lookup(fine_id).matches
    assert match.name == "Shipped VAE" and len(match.copies) == len(B_FILES)


def test_naming_a_vae_of_a_shipped_entry_overrides_it_locally(library: Library, shipped_catalog: Catalog) -> None:
    catalog = shipped_catalog
    fp16_sha = library.hash("finetune-fp16.safetensors", "sha256")

    result = catalog.name(fp16_sha, "My fine-tune")
    assert (result.slug, result.entry.name, result.entry.aliases) == ("shipped-vae", "My fine-tune", ("shipped",))
    assert result.entry.id == library.hash("finetune.safetensors", "id")  # learnt on the way
    catalog.alias(fp16_sha, ["ft"])
    (match,) = catalog.lookup(fp16_sha).matches
    assert (match.name, match.aliases) == ("My fine-tune", ("shipped", "ft"))
    assert len(catalog.registry.find_by_id(match.id)) == 1

    catalog.unname(fp16_sha)  # the shipped name shows again
    (match,) = catalog.lookup(fp16_sha).matches
    assert (match.name, match.aliases) == ("Shipped VAE", ("shipped", "ft"))
    with pytest.raises(RegistryError, match="does not come from the local registry"):
        catalog.unname(fp16_sha)


# --- ls ------------------------------------------------------------------------------------------------


def test_distinct_vaes_count_copies_and_reclaimable_bytes_exactly(
    library: Library, catalog: Catalog, index: Index, tmp_path: Path
) -> None:
    # Unhashed and embedded duplicates waste nothing reclaimable: one more identical copy recorded without
    # file hashes, and a second identical checkpoint.
    shutil.copyfile(library.path("vae.safetensors"), tmp_path / "unhashed.safetensors")
    shutil.copyfile(library.path("checkpoint.safetensors"), tmp_path / "checkpoint-2.safetensors")
    unhashed = replace(library.reports["vae.safetensors"], file=FileHashes(size=0))
    index.record(str(tmp_path / "unhashed.safetensors"), os.stat(tmp_path / "unhashed.safetensors"), unhashed)
    index.record(
        str(tmp_path / "checkpoint-2.safetensors"),
        os.stat(tmp_path / "checkpoint-2.safetensors"),
        library.reports["checkpoint.safetensors"],
    )

    vaes = {v.id: v for v in catalog.distinct_vaes()}

    a = vaes[library.hash("vae.safetensors", "id")]
    b = vaes[library.hash("finetune.safetensors", "id")]
    assert len(vaes) == 2
    size = os.stat(library.path("vae.safetensors")).st_size
    # vae, copy-a (= copy-a-link, one inode) and copy-b hold the same bytes: two of the three are waste.
    assert a.reclaimable_bytes == 2 * size
    assert (len(a.copies), a.standalone, a.embedded) == (len(A_FILES) + 2, len(A_FILES), 2)
    assert (b.reclaimable_bytes, b.standalone, b.embedded, b.family, b.latent_channels) == (0, 2, 0, "kl-f8-4ch", 4)
    line = a.to_json()
    assert list(line)[:6] == ["id", "name", "family", "latent_channels", "copies", "reclaimable_bytes"]
    assert {"path", "format", "size", "embedded", "sha256"} <= set(line["copies"][0])


def test_reclaimable_bytes_counts_each_inode_once(library: Library, index: Index) -> None:
    library.record(index, ("copy-a.safetensors", "copy-a-link.safetensors"))
    copies = index.copies(library.hash("vae.safetensors", "id"))
    assert len(copies) == 2 and reclaimable_bytes(copies) == 0  # two names of one file


# --- the registry-changed event ------------------------------------------------------------------------


def test_name_alias_and_unname_tell_the_plugins(library: Library, index: Index, registry: Registry) -> None:
    events = Events()
    pm = get_plugin_manager(entry_point_group=None, builtins=False)
    pm.register(events, name="test-registry-events")
    library.record(index)
    catalog = Catalog(index, registry, Plugins(pm))
    vae_id = library.hash("vae.safetensors", "id")

    catalog.name(vae_id, "My VAE")
    catalog.name(vae_id, "My VAE")  # no change: no event
    catalog.alias(vae_id, ["mine"])
    catalog.unname(vae_id)

    assert [(slug, entry and (entry["name"], entry["aliases"], entry["id"])) for slug, entry in events.seen] == [
        ("my-vae", ("My VAE", [], vae_id)),
        ("my-vae", ("My VAE", ["mine"], vae_id)),
        ("my-vae", (None, ["mine"], vae_id)),  # the aliases keep the entry
    ]
    assert events.seen[0][1] == registry.get("my-vae").to_json() | {"name": "My VAE", "aliases": []}


# --- the ls table's counts ------------------------------------------------------------------------------


def test_overview_counts_exactly_what_distinct_vaes_lists(library: Library, index: Index, config: Config, shipped: Path) -> None:
    from vaereg.cli.cmd_ls import label

    """`overview` (SQL counts, for `ls` over 100,000 files) against `distinct_vaes` (every copy listed), on the
    library plus a diffusers copy, checkpoints with bases, a second named VAE and an entry known by SHA-256."""
    library.record(index)
    a = library.reports["vae.safetensors"]
    diffusers = library.root / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"
    index.record(str(diffusers), os.stat(library.path("vae.safetensors")), a)
    checkpoint = library.reports["checkpoint.safetensors"]
    for base, name in (("SD1", "sd15.safetensors"), ("SDXL", "xl.safetensors"), ("SD1", "other.safetensors")):
        index.record(library.path(name), os.stat(library.path("checkpoint.safetensors")), replace(checkpoint, base=base))
    merged = replace(checkpoint.vae, id="f" * 32, exact_id="e" * 32)  # a VAE only a checkpoint holds
    index.record(library.path("merged.safetensors"), os.stat(library.path("checkpoint.safetensors")),
                 replace(checkpoint, vae=merged))
    registry = Registry.load(config, shipped=shipped)
    catalog = Catalog(index, registry)
    catalog.name(library.hash("vae.safetensors", "id"), "Zeta", note=None)

    listed, counted = Catalog(index, Registry.load(config, shipped=shipped)).distinct_vaes(), catalog.overview()

    assert [v.id for v in counted] == [v.id for v in listed] and len(listed) == 3
    for full, count in zip(listed, counted):
        assert (count.first_standalone, count.first_embedded, label(count)) == (
            full.first_standalone, full.first_embedded, label(full)
        )
        assert (count.name, count.slug, count.aliases, count.family, count.bases) == (
            full.name, full.slug, full.aliases, full.family, full.bases
        )
        assert (count.copies, count.standalone, count.embedded) == (len(full.copies), full.standalone, full.embedded)
        assert (count.reclaimable_bytes, count.diffusers_paths) == (full.reclaimable_bytes, full.diffusers_paths)
    zeta, shipped_vae = {v.name: v for v in counted}["Zeta"], {v.name: v for v in counted}["Shipped VAE"]
    assert (zeta.copies, zeta.embedded, zeta.bases, zeta.diffusers_paths) == (11, 4, ["SD1", "SDXL"], (str(diffusers),))
    assert zeta.reclaimable_bytes == 2 * os.stat(library.path("vae.safetensors")).st_size
    assert shipped_vae.id == library.hash("finetune.safetensors", "id")  # joined by a listed SHA-256
    assert [label(v) for v in counted] == ["Shipped VAE", "Zeta", "unnamed (in merged.safetensors)"]
