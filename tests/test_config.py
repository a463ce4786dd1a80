"""Config: defaults in code, overrides by mapping / --set, unknown keys named."""

import pytest

from adactr.config import override, parse_sets, to_dict
from adactr.errors import ConfigError
from adactr.models.config import CrossStructure
from adactr.train.config import Optimizer, RunConfig


def test_set_coerces_types():
    cfg = override(RunConfig(), parse_sets(["model.hidden=[64,32]", "train.lr=0.01", "train.compile=true",
                                            "model.cross_structure=stacked", "train.embedding_optimizer=none"]))
    assert cfg.model.hidden == (64, 32)
    assert cfg.train.lr == 0.01 and cfg.train.compile is True
    assert cfg.model.cross_structure is CrossStructure.STACKED
    assert cfg.train.embedding_optimizer is None
    cfg = override(cfg, parse_sets(["model.hidden=16,8", "train.embedding_optimizer=sparse_adam"]))
    assert cfg.model.hidden == (16, 8) and cfg.train.embedding_optimizer is Optimizer.SPARSE_ADAM


def test_round_trip_through_dict():
    cfg = override(RunConfig(), {"model": {"hidden": [8], "dropout": 0.5}})
    assert override(RunConfig(), to_dict(cfg)) == cfg


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.hiden'.*model.hidden"):
        override(RunConfig(), parse_sets(["model.hiden=[1]"]))
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'.*valid keys: model, train"):
        override(RunConfig(), {"modle": {}})


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"train.lr: 'fast' is not float"):
        override(RunConfig(), parse_sets(["train.lr=fast"]))
    with pytest.raises(ConfigError, match=r"model.cross_structure: 'diagonal' is not one of stacked, parallel"):
        override(RunConfig(), parse_sets(["model.cross_structure=diagonal"]))
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_sets(["train.lr"])


def test_unquoted_name_lists():
    from adactr.config import _coerce

    assert _coerce("[user_id,item_id]", tuple[str, ...], "k") == ("user_id", "item_id")
    assert _coerce('["a"]', tuple[str, ...], "k") == ("a",)
    assert _coerce("a,b", tuple[str, ...], "k") == ("a", "b")
