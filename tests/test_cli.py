"""The command line as a whole: commands from plugins, one voice for problems, exit statuses."""

from __future__ import annotations

import json

import pytest

from vaereg.cli import main
from vaereg.hookspecs import hookimpl
from vaereg.plugin import manager as manager_module
from vaereg.plugin.manager import Plugins, get_plugin_manager


def test_a_plugin_adds_a_command(monkeypatch, capsys, config):
    """vaereg_register_commands: a third-party command is parsed, listed in --help and run with the context."""
    from vaereg.cli import build_parser

    class CountPlugin:
        @hookimpl
        def vaereg_register_commands(self, register):
            def add_parser(sub):
                p = sub.add_parser("count-vaes", help="how many distinct VAEs are indexed")
                p.set_defaults(run=lambda args, ctx: print("distinct:", len(ctx.catalog().distinct_vaes())) or 0)

            register("count-vaes", add_parser)

    real = get_plugin_manager

    def with_count(*args, **kwargs):
        pm = real(*args, **kwargs)
        pm.register(CountPlugin(), name="test.count")
        return pm

    monkeypatch.setattr(manager_module, "get_plugin_manager", with_count)
    assert "count-vaes" in build_parser().format_help()
    assert main(["count-vaes"]) == 0
    assert capsys.readouterr().out == "distinct: 0\n"


def test_a_command_name_taken_twice_is_an_error():
    class Clash:
        @hookimpl
        def vaereg_register_commands(self, register):
            register("hash", lambda sub: None)

    pm = get_plugin_manager()
    pm.register(Clash(), name="test.clash")
    with pytest.raises(ValueError, match="'hash' is registered by both 'vaereg.commands' and 'test.clash'"):
        Plugins(pm).commands()




def test_info_names_the_state_and_the_fp16_kernel(capsys, config):
    from vaereg.identity.kernel import kernel

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["home"], info["index"]) == (str(config.home), str(config.index))
    assert info["fp16_kernel"] == kernel.isa() and info["fp16_kernel"] in ("baseline", "avx2+f16c")
    assert {p["name"] for p in info["plugins"]} >= {"vaereg.safetensors", "vaereg.torch_zip"}
    assert main(["info"]) == 0
    assert f"fp16 kernel {kernel.isa()}" in capsys.readouterr().out.splitlines()
