from __future__ import annotations

import pytest
from isas import available_isas, using


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own VAEREG_HOME and no user config, so nothing touches the real one."""
    home = tmp_path_factory.mktemp("vaereg-home")
    monkeypatch.setenv("VAEREG_HOME", str(home))
    monkeypatch.delenv("VAEREG_CONFIG", raising=False)
    monkeypatch.delenv("VAEREG_DISABLE_PLUGINS", raising=False)
    return home


@pytest.fixture(scope="session")
def plugins():
    from vaereg.plugin.manager import Plugins

    return Plugins()


@pytest.fixture
def config(_isolated_home):
    """The configuration every command would load in this test's isolated home."""
    from vaereg.config import Config

    return Config.load()


@pytest.fixture
def index(config):
    """The index of this test's home, closed afterwards."""
    from vaereg.store.index import Index

    with Index(config.index) as index:
        yield index


@pytest.fixture(params=available_isas())
def isa(request):
    """Each instruction set the compiled kernel has loops for on this CPU, in turn."""
    with using(request.param) as name:
        yield name


@pytest.fixture
def reads(monkeypatch):
    """The files `analyze` reads (a scan, the daemon: whatever goes through `store.ingest`), in order."""
    import vaereg.store.ingest

    seen: list[str] = []
    real = vaereg.store.ingest.analyze

    def counting(path, plugins, **kwargs):
        seen.append(str(path))
        return real(path, plugins, **kwargs)

    monkeypatch.setattr(vaereg.store.ingest, "analyze", counting)
    return seen
