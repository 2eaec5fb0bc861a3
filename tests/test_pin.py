"""`pudding pin`: a derived pudding dir whose requests without `pudding_set` run one set.

(That a dir without a router serves its `default_set` to such requests, exactly, is
tests/test_engine_exactness.py::test_default_set_without_arg.)
"""

import json

import pytest

from conftest import TINY_SETS
from vllm_pudding.artifact import META_FILE, build_pudding_dir, load_pudding_dir
from vllm_pudding.cli import main as cli
from vllm_pudding.config import PuddingConfig, RouterRef
from vllm_pudding.pin import pin_pudding_dir


@pytest.fixture
def routed(tiny_base, tmp_path):
    """A tiny pudding dir with a router folder (its content is never read here)."""
    pool = PuddingConfig(omission_sets=TINY_SETS, router=RouterRef(path="router-hidden",
                                                                   kind="hidden"))
    d = build_pudding_dir(tiny_base, pool, tmp_path / "src", meta={"pool_file": "tiny.json"})
    (d / "router-hidden").mkdir()
    (d / "router-hidden" / "router.json").write_text("{}")
    return d


def test_pin_writes_default_set_without_router(routed, tiny_base, tmp_path):
    out = pin_pudding_dir(routed, 2, tmp_path / "pinned")
    pool = load_pudding_dir(out)
    assert pool.default_set == 2 and pool.router is None
    assert pool.omission_sets == TINY_SETS  # set ids keep their meaning
    assert not (out / "router-hidden").exists()
    weights = out / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (tiny_base / "model.safetensors").resolve()
    meta = json.loads((out / META_FILE).read_text())
    assert meta["pinned_from"] == str(routed.resolve()) and meta["pinned_set"] == 2
    assert meta["pinned_layers"] == TINY_SETS[2]
    assert meta["source_router"] == {"path": "router-hidden", "kind": "hidden"}
    assert meta["source_meta"]["pool_file"] == "tiny.json"
    assert meta["base_model"] == str(tiny_base.resolve())
    # Re-pinning an earlier pinned dir overwrites it.
    assert load_pudding_dir(pin_pudding_dir(routed, 0, out)).default_set == 0


def test_pin_a_set_outside_the_routable_ones(tiny_base, tmp_path):
    """Sets outside `routable_sets` stay pinnable, so `pudding pin` can pin them too: the
    pinned dir has no router, and its routable_sets (which would exclude its default) go."""
    pool = PuddingConfig(omission_sets=TINY_SETS, routable_sets=[0, 2])
    src = build_pudding_dir(tiny_base, pool, tmp_path / "src")
    pinned = load_pudding_dir(pin_pudding_dir(src, 1, tmp_path / "pinned"))
    assert pinned.default_set == 1 and pinned.routable_sets is None


@pytest.mark.parametrize("bad", [3, -1, True, "1"])
def test_pin_rejects_set_ids_outside_the_pool(routed, tmp_path, bad):
    with pytest.raises(ValueError, match=r"not a set id of the pool .*\(0\.\.2\)"):
        pin_pudding_dir(routed, bad, tmp_path / "pinned")
    assert not (tmp_path / "pinned").exists()


def test_pin_refuses_to_overwrite_the_source_or_other_folders(routed, tmp_path):
    with pytest.raises(ValueError, match="is the source dir"):
        pin_pudding_dir(routed, 0, routed)
    other = tmp_path / "data"
    other.mkdir()
    with pytest.raises(ValueError, match="not a pudding dir"):
        pin_pudding_dir(routed, 0, other)
    with pytest.raises(ValueError, match="not a model dir"):
        pin_pudding_dir(tmp_path / "data", 0, tmp_path / "x")


def test_pin_cli(routed, tmp_path, capsys):
    cli(["pin", str(routed), "--set", "1", str(tmp_path / "p1")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "p1")
    assert load_pudding_dir(tmp_path / "p1").default_set == 1
    with pytest.raises(SystemExit) as e:
        cli(["pin", str(routed), "--set", "7", str(tmp_path / "p7")])
    assert e.value.code == 2
    assert "--set 7: not a set id of the pool" in capsys.readouterr().err
