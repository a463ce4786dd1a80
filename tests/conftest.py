import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _same_torch_rng_for_every_test():
    """Each test starts from torch's global random state seeded with 0 and leaves the global state as it
    found it: no test's draws depend on which tests ran before it (or on ``-k`` / ``-x`` selections)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.fixture
def counting_layer():
    """A layer factory that records every (in, out) it builds and every cond its layers receive."""
    from adactr.nn.mlp import Linear

    calls: list[tuple[int, int]] = []
    conds: list = []

    class Counting(Linear):
        def forward(self, x, cond=None):
            conds.append(cond)
            return super().forward(x)

    def factory(i: int, o: int) -> torch.nn.Module:
        calls.append((i, o))
        return Counting(i, o)

    return factory, calls, conds


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        if os.environ.get("ADACTR_REQUIRE_DATA") == "1":  # CI sets it: a missing ../shared must not pass quietly
            pytest.fail(f"ADACTR_REQUIRE_DATA=1 but {SHARED_DATA} does not exist")
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def world_csv(tmp_path_factory) -> dict[str, Path]:
    """A small multi-domain click world written as CSV files (train/valid/test)."""
    from adactr.data.synthetic import write_click_world

    return write_click_world(tmp_path_factory.mktemp("world"), n_rows=6000, seed=1)


@pytest.fixture(scope="session")
def world_data(tmp_path_factory, world_csv) -> Path:
    """The click world, prepared (domain + group columns, a numerical and a multi-valued field)."""
    from adactr.cli import main

    out = tmp_path_factory.mktemp("prepared") / "world"
    assert main(["prepare", "--train", str(world_csv["train"]), "--valid", str(world_csv["valid"]),
                 "--test", str(world_csv["test"]), "--numerical", "price", "--sequence", "tags",
                 "--domain", "domain", "--group", "user_id", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def kill_after_first_epoch(monkeypatch):
    """``arm()`` makes training stop as if killed right after epoch 1 was checkpointed; it returns the undo.
    ``arm(when=None)`` kills it right after the first checkpoint, wherever that is (mid-epoch included);
    ``when`` is otherwise the checkpoint's ``(epoch, step_in_epoch)``."""
    from adactr.train import trainer as trainer_mod

    def arm(when: tuple[int, int] | None = (1, 0)):
        original = trainer_mod.Trainer._save

        def save_then_die(self, model, opts, best, result, at):
            original(self, model, opts, best, result, at)
            if when is None or (at.epoch, at.step_in_epoch) == when:
                raise KeyboardInterrupt

        monkeypatch.setattr(trainer_mod.Trainer, "_save", save_then_die)
        return lambda: monkeypatch.setattr(trainer_mod.Trainer, "_save", original)
    return arm
