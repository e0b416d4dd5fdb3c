"""The block registry: built-ins, third-party blocks through the `graphvla.blocks` entry-point
group (a module that registers on import, or a Block subclass), broken plugins, unknown types."""
import importlib
import logging
import sys
import textwrap

import pytest
from conftest import state_graph

import graphvla
from graphvla.blocks import registry


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """An installed distribution `demo-plugin` whose entry points name a block class, a module and
    a module that fails to import."""
    (tmp_path / "demo_plugin.py").write_text(textwrap.dedent('''
        import torch
        from graphvla.blocks.base import Block, InPort, OutPort

        class Doubler(Block):
            type_name = "demo.doubler"
            description = "2 * x"
            in_ports = {"x": InPort(("state", "hidden"))}
            out_ports = {"y": OutPort("hidden")}

            def forward(self, x):
                return {"y": 2 * x}
    '''))
    (tmp_path / "demo_plugin_mod.py").write_text(textwrap.dedent('''
        from graphvla.blocks.base import Block, InPort, OutPort
        from graphvla.blocks.registry import register

        @register
        class Negate(Block):
            type_name = "demo.negate"
            in_ports = {"x": InPort(("state", "hidden"))}
            out_ports = {"y": OutPort("hidden")}

            def forward(self, x):
                return {"y": -x}
    '''))
    (tmp_path / "demo_plugin_broken.py").write_text("raise ImportError('needs a library that is not installed')\n")
    info = tmp_path / "demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[graphvla.blocks]\ndoubler = demo_plugin:Doubler\nnegate = demo_plugin_mod\nbroken = demo_plugin_broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry.registered()  # built-ins loaded before the snapshot, so teardown restores them
    saved = dict(registry._REGISTRY)
    monkeypatch.setattr(registry, "_loaded", False)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    for mod in ("demo_plugin", "demo_plugin_mod", "demo_plugin_broken"):
        sys.modules.pop(mod, None)


def test_entry_point_blocks_are_registered_and_compile(plugin_dist, caplog):
    import torch

    with caplog.at_level(logging.WARNING):
        types = registry.registered()
    assert "demo.doubler" in types and "demo.negate" in types
    assert "head.query_transformer" in types  # built-ins still there
    assert any("demo_plugin_broken" in r.getMessage() or "broken" in r.getMessage() for r in caplog.records)
    spec = state_graph(3, {"twice": {"type": "demo.doubler", "in": {"x": "inputs.state"}},
                           "neg": {"type": "demo.negate", "in": {"x": "twice.y"}}}, {"y": "neg.y"})
    cg = graphvla.compile_graph(spec, device="cpu")
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(cg.infer(state=x)["y"], -2 * x)


def test_unknown_type_lists_what_is_registered():
    with pytest.raises(KeyError) as e:
        registry.get_block_type("head.query_transformers")
    assert "did you mean 'head.query_transformer'" in str(e.value)


def test_register_refuses_bad_names_and_non_blocks():
    from graphvla.blocks.base import Block

    class Bad(Block):
        type_name = "NoFamily"

    with pytest.raises(ValueError, match="family.name"):
        registry.register(Bad)
    with pytest.raises(TypeError):
        registry.register(int)
