"""Checkpoints: what is saved is what loads, and nothing else loads (above all, no pickle)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
from datetime import datetime, timezone
from pathlib import Path

import pytest
import safetensors.torch
import torch

from metabt.metamodels.checkpoint import (
    SIDECAR_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    save_checkpoint,
    split_inner_lrs,
)
from metabt.metamodels.checkpoint_meta import CheckpointError, CheckpointMeta


def _tensors(seed: int = 0, per_parameter_lr: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        "net.0.weight": torch.randn(16, 10, generator=g),
        "net.0.bias": torch.randn(16, generator=g),
        "net.2.weight": torch.randn(1, 16, generator=g),
        "net.2.bias": torch.randn(1, generator=g),
    }
    if per_parameter_lr:
        out.update(
            {f"inner_lr.{n}": torch.rand(t.shape, generator=g) * 0.1 for n, t in out.items()}
        )
    return out


def _metadata(per_parameter_lr: bool = True) -> dict:
    return {
        "algorithm": "metasgd" if per_parameter_lr else "maml",
        "policy": {"kind": "mlp", "hidden": [16], "activation": "tanh", "long_only": False},
        "features": {"kind": "scaled_returns", "lags": 10, "vol_halflife": 20},
        "task": {"min_support": 20, "max_support": 120, "min_query": 5, "max_query": 20},
        "objective": {"risk": 0.05, "cost": 0.01},
        "inner": {
            "steps": 5,
            "lr": None if per_parameter_lr else 0.05,
            "per_parameter_lr": per_parameter_lr,
            "length_power": 0.0,
        },
        "training_period": {"start": "2005-01-03", "end": "2011-12-30"},
        "config": {"seed": 7, "assets": ["SPY", "TLT"], "train": {"meta_steps": 600}},
        "created": "2024-05-01T12:30:00Z",
    }


def _sidecar(folder: Path) -> dict:
    return json.loads((folder / SIDECAR_FILE).read_text())


def _write_sidecar(folder: Path, sidecar: dict) -> None:
    (folder / SIDECAR_FILE).write_text(json.dumps(sidecar))


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ckpt", _tensors(), _metadata())


@pytest.mark.parametrize("per_parameter_lr", [True, False])
def test_round_trip_gives_back_tensors_and_metadata(tmp_path: Path, per_parameter_lr: bool) -> None:
    tensors, metadata = _tensors(per_parameter_lr=per_parameter_lr), _metadata(per_parameter_lr)
    save_checkpoint(tmp_path / "ckpt", tensors, metadata)
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], t), name
    dumped = meta.model_dump(mode="json")
    assert {k: dumped[k] for k in metadata} == metadata
    assert meta.tensors["net.0.weight"].shape == [16, 10]
    # either file inside the folder names the same checkpoint
    again, _ = load_checkpoint(tmp_path / "ckpt" / WEIGHTS_FILE)
    assert torch.equal(again["net.0.weight"], tensors["net.0.weight"])


def test_split_inner_lrs_pairs_each_lr_with_its_parameter(ckpt: Path) -> None:
    params, lrs = split_inner_lrs(load_checkpoint(ckpt)[0])
    assert set(lrs) == set(params) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert all(lrs[n].shape == params[n].shape for n in params)


def test_resaving_a_loaded_checkpoint_keeps_it_identical(ckpt: Path, tmp_path: Path) -> None:
    tensors, meta = load_checkpoint(ckpt)
    save_checkpoint(tmp_path / "copy", tensors, meta)
    assert load_checkpoint(tmp_path / "copy")[1] == meta


@pytest.mark.parametrize("where", [0, 3, 200, -1])
def test_one_changed_byte_in_the_weights_is_refused(ckpt: Path, where: int) -> None:
    weights = ckpt / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    pos = 8 + header_len + where if where >= 0 else len(data) + where  # inside the tensor data
    data[pos] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_checkpoint(ckpt)
    assert str(weights) in str(info.value)


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _dump_pickle(obj: object, file: Path) -> None:
    with open(file, "wb") as fh:
        pickle.dump(obj, fh)


def _dump_torch(obj: object, file: Path) -> None:
    torch.save(obj, file)


def _dump_torch_legacy(obj: object, file: Path) -> None:
    torch.save(obj, file, _use_new_zipfile_serialization=False)


def _unpickle(file: Path) -> None:
    with open(file, "rb") as fh:
        pickle.load(fh)


def _torch_load_unsafely(file: Path) -> None:
    torch.load(file, weights_only=False)


@pytest.mark.parametrize(
    ("dump", "unsafe_load"),
    [
        (_dump_pickle, _unpickle),
        (_dump_torch, _torch_load_unsafely),
        (_dump_torch_legacy, _torch_load_unsafely),
    ],
)
def test_a_pickle_renamed_to_safetensors_is_refused_and_never_runs(
    ckpt: Path, tmp_path: Path, dump, unsafe_load, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fixture is live: loading it the unsafe way does run the payload.
    probe = tmp_path / "probe-ran"
    dump({"net.0.weight": _Payload(probe)}, tmp_path / "probe.bin")
    unsafe_load(tmp_path / "probe.bin")
    assert probe.exists()

    marker = tmp_path / "payload-ran"
    weights = ckpt / WEIGHTS_FILE
    dump({"net.0.weight": _Payload(marker)}, weights)
    # An attacker can fix the hash too: the refusal must not rest on it.
    sidecar = _sidecar(ckpt)
    sidecar["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    _write_sidecar(ckpt, sidecar)

    def _forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint loader must never unpickle")

    for target, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
    ]:
        monkeypatch.setattr(target, name, _forbidden)
    for path in (ckpt, weights):
        with pytest.raises(
            CheckpointError,
            match="looks like a pickle/torch.save file; metabt only loads safetensors checkpoints",
        ):
            load_checkpoint(path)
    loose = tmp_path / "best.pt"
    weights.rename(loose)
    with pytest.raises(CheckpointError, match="pickle/torch.save"):
        load_checkpoint(loose)
    assert not marker.exists()


def test_unknown_sidecar_key_is_named_with_a_suggestion(ckpt: Path) -> None:
    sidecar = _sidecar(ckpt)
    sidecar["algoritm"] = sidecar.pop("algorithm")
    _write_sidecar(ckpt, sidecar)
    with pytest.raises(
        CheckpointError,
        match=r"unknown key 'algoritm' \(did you mean "
        r"'algorithm'\?\)",
    ) as info:
        load_checkpoint(ckpt)
    assert str(ckpt / SIDECAR_FILE) in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_nested_key_is_named(ckpt: Path) -> None:
    sidecar = _sidecar(ckpt)
    sidecar["inner"]["stpes"] = 3
    _write_sidecar(ckpt, sidecar)
    with pytest.raises(CheckpointError, match=r"unknown key 'inner.stpes' \(did you mean 'steps'"):
        load_checkpoint(ckpt)


def test_unknown_key_inside_a_tensor_entry_is_named(ckpt: Path) -> None:
    # tensors is a dict name -> entry: the hint looks inside the entry, past the tensor's name.
    sidecar = _sidecar(ckpt)
    entry = sidecar["tensors"]["net.0.bias"]
    entry["shapes"] = entry.pop("shape")
    _write_sidecar(ckpt, sidecar)
    with pytest.raises(
        CheckpointError, match=r"'tensors.net.0.bias.shapes' \(did you mean 'shape'"
    ):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("key", ["sha256", "training_period", "algorithm", "config"])
def test_missing_sidecar_key_is_named(ckpt: Path, key: str) -> None:
    sidecar = _sidecar(ckpt)
    del sidecar[key]
    _write_sidecar(ckpt, sidecar)
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(format="something-else"), "not a metabt checkpoint sidecar"),
        (lambda s: s.update(format_version=3), "newer than this metabt reads"),
        (lambda s: s.update(format_version=1), "predates variable-length"),
        (lambda s: s.update(algorithm="sgd"), "key 'algorithm'"),
        (lambda s: s["training_period"].update(start="2012-01-01"), "must be before end"),
        (lambda s: s["inner"].update(lr=0.1), "inner.lr must be null"),
        (lambda s: s["inner"].update(steps=-1), "key 'inner.steps'"),
    ],
)
def test_bad_sidecar_values_are_refused(ckpt: Path, edit, message: str) -> None:
    sidecar = _sidecar(ckpt)
    edit(sidecar)
    _write_sidecar(ckpt, sidecar)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)


def test_sidecar_that_is_not_json_is_refused(ckpt: Path) -> None:
    (ckpt / SIDECAR_FILE).write_text('{"format": "metabt-checkpoint",')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("missing", [SIDECAR_FILE, WEIGHTS_FILE])
def test_missing_file_or_folder_is_refused(ckpt: Path, missing: str) -> None:
    (ckpt / missing).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(ckpt.parent / "nope")


def test_weights_with_a_different_shape_are_refused(ckpt: Path) -> None:
    # Weights swapped for another network's, hash updated: the tensor table still catches it.
    tensors = _tensors()
    tensors["net.0.weight"] = torch.randn(32, 10)
    blob = safetensors.torch.save(tensors)
    (ckpt / WEIGHTS_FILE).write_bytes(blob)
    sidecar = _sidecar(ckpt)
    sidecar["sha256"] = hashlib.sha256(blob).hexdigest()
    _write_sidecar(ckpt, sidecar)
    with pytest.raises(
        CheckpointError,
        match=r"'net.0.weight' has shape \[32, 10\], sidecar "
        r"says \[16, 10\]",
    ):
        load_checkpoint(ckpt)


def test_non_finite_weights_are_refused_on_save_and_on_load(ckpt: Path, tmp_path: Path) -> None:
    bad = _tensors()
    bad["net.2.bias"] = torch.tensor([float("nan")])
    with pytest.raises(CheckpointError, match="NaN/inf"):
        save_checkpoint(tmp_path / "bad", bad, _metadata())
    assert not (tmp_path / "bad").exists()
    blob = safetensors.torch.save(bad)
    (ckpt / WEIGHTS_FILE).write_bytes(blob)
    sidecar = _sidecar(ckpt)
    sidecar["sha256"] = hashlib.sha256(blob).hexdigest()
    _write_sidecar(ckpt, sidecar)
    with pytest.raises(CheckpointError, match="'net.2.bias' holds 1 NaN/inf"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("keep", [0, 5, 8, 40, "header", "half"])
def test_truncated_weights_are_refused(ckpt: Path, keep: int | str) -> None:
    weights = ckpt / WEIGHTS_FILE
    data = weights.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    n = {"header": header_end, "half": (header_end + len(data)) // 2}.get(keep, keep)
    weights.write_bytes(data[:n])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    assert str(weights) in str(info.value)


def test_saving_refuses_bad_metadata_and_writes_nothing(tmp_path: Path) -> None:
    metadata = _metadata()
    metadata["polcy"] = metadata.pop("policy")
    with pytest.raises(CheckpointError, match=r"unknown key 'polcy' \(did you mean 'policy'"):
        save_checkpoint(tmp_path / "ckpt", _tensors(), metadata)
    with pytest.raises(CheckpointError, match="inner_lr"):  # per-parameter mode needs the LRs
        save_checkpoint(tmp_path / "ckpt", _tensors(per_parameter_lr=False), _metadata())
    metadata = _metadata()
    metadata["config"]["risk_free"] = float("nan")  # must not be saved as null
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "ckpt", _tensors(), metadata)
    with pytest.raises(CheckpointError, match="float32"):
        save_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(3, dtype=torch.float64)}, _metadata())
    assert list(tmp_path.iterdir()) == []


def test_saving_never_replaces_something_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "returns.csv").write_text("date,x\n")
    with pytest.raises(CheckpointError, match="not a metabt checkpoint folder"):
        save_checkpoint(precious, _tensors(), _metadata())
    assert (precious / "returns.csv").read_text() == "date,x\n"


def _fail_on_calls(monkeypatch: pytest.MonkeyPatch, failing: set[int]) -> list[int]:
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(len(calls) + 1)
        if calls[-1] in failing:
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("failing", [{1}, {2}, {1, 2, 3}])
def test_crash_while_overwriting_keeps_the_previous_checkpoint(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, failing: set[int]
) -> None:
    calls = _fail_on_calls(monkeypatch, failing)
    new = _metadata()
    new["config"] = {"seed": 8}
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(ckpt, _tensors(seed=1), new)
    assert calls, "save must go through os.replace so the swap is atomic"
    monkeypatch.undo()
    tensors, meta = load_checkpoint(ckpt)
    assert torch.equal(tensors["net.0.weight"], _tensors()["net.0.weight"])
    assert meta.config == _metadata()["config"]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"]  # no temp folders left


def test_process_killed_between_the_renames_tells_how_to_restore(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Second rename fails and so does the roll-back: what a kill at that instant leaves behind.
    _fail_on_calls(monkeypatch, {2, 3})
    with pytest.raises(OSError):
        save_checkpoint(ckpt, _tensors(seed=1), _metadata())
    monkeypatch.undo()
    (backup,) = ckpt.parent.glob(".ckpt.old-*")
    with pytest.raises(CheckpointError, match="interrupted save left the previous one at") as info:
        load_checkpoint(ckpt)
    assert str(backup) in str(info.value)
    backup.rename(ckpt)
    assert torch.equal(load_checkpoint(ckpt)[0]["net.0.bias"], _tensors()["net.0.bias"])


def test_crash_on_first_save_leaves_nothing_that_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_on_calls(monkeypatch, {1})
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ckpt", _tensors(), _metadata())
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_the_checkpoint(ckpt: Path) -> None:
    save_checkpoint(ckpt, _tensors(seed=1, per_parameter_lr=False), _metadata(False))
    tensors, meta = load_checkpoint(ckpt)
    assert meta.algorithm == "maml" and "inner_lr.net.0.bias" not in tensors
    assert torch.equal(tensors["net.0.bias"], _tensors(seed=1)["net.0.bias"])
    assert isinstance(meta, CheckpointMeta)
    assert meta.created == datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
