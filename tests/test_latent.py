"""The Latent: validation at construction, save/load round trips, and metadata-less latents."""

import dataclasses
import os
import warnings

import numpy as np
import pytest

from belm_core import DiscreteVP, Latent, LatentMetadataWarning, Solver
from belm_core.latent import FORMAT_VERSION
from helpers import AnalyticEps, held_out_mixture, mse

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors")
from safetensors.numpy import save_file as save_numpy  # noqa: E402

SD = DiscreteVP.scaled_linear()
STEPS, UNTIL = 20, 12


@pytest.fixture(scope="module")
def problem():
    data = held_out_mixture((4,), seed=31)
    return AnalyticEps(data, SD), data.sample(8, seed=2)


def _as(kind, x):
    return torch.from_numpy(x.copy()) if kind == "torch" else x


def _bits_equal(a, b) -> bool:
    if hasattr(a, "detach"):
        return a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    return a.dtype == b.dtype and np.array_equal(a, b)


# -- acceptance: a partial latent saved and loaded reconstructs exactly ----------------------------
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("method", ["o-belm", "bdia", "edict"])
def test_partial_latent_save_load_reconstructs_exactly(problem, tmp_path, kind, method):
    eps, x0 = problem
    x0 = _as(kind, x0)
    solver = Solver(SD, steps=STEPS, method=method)
    latent = solver.invert(eps, x0, until=UNTIL)
    path = tmp_path / "z.safetensors"
    latent.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a saved latent keeps its metadata: no LatentMetadataWarning
        loaded = Latent.load(path)
        from_loaded = solver.sample(eps, loaded)
    assert (loaded.index, loaded.method, loaded.grid_key, loaded.dtype) == (
        UNTIL, latent.method, latent.grid_key, latent.dtype,
    )
    assert loaded.kind == kind and all(_bits_equal(a, b) for a, b in zip(loaded.states, latent.states))
    assert _bits_equal(from_loaded, solver.sample(eps, latent))
    assert mse(from_loaded, x0) <= 1e-20


def test_torch_latent_keeps_bfloat16_and_float16_bits(tmp_path):
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        states = (torch.randn(3, 5, generator=g).to(dtype), torch.randn(3, 5, generator=g).to(dtype))
        latent = Latent(states, index=4, method="bdia(gamma=0.9)", grid_key="abc", dtype=str(dtype)[6:])
        latent.save(tmp_path / "z.safetensors")
        loaded = Latent.load(tmp_path / "z.safetensors")
        assert loaded.dtype == str(dtype)[6:] and loaded.states[0].device.type == "cpu"
        assert all(_bits_equal(a, b) for a, b in zip(loaded.states, states))


def test_numpy_latent_loads_as_numpy_with_its_dtype(tmp_path):
    states = (np.float32([[1.5, -2.0]]), np.float32([[0.25, 3.0]]))
    Latent(states, dtype="float64").save(tmp_path / "z")
    loaded = Latent.load(str(tmp_path / "z"))
    assert isinstance(loaded.states[0], np.ndarray) and loaded.dtype == "float64"
    assert loaded.index is None and loaded.method is None and loaded.grid_key is None
    assert all(_bits_equal(a, b) for a, b in zip(loaded.states, states))


def test_load_device_moves_torch_states_and_refuses_numpy(tmp_path):
    Latent((torch.ones(2),)).save(tmp_path / "t")
    assert Latent.load(tmp_path / "t", device="meta").states[0].device.type == "meta"
    Latent((np.ones(2),)).save(tmp_path / "n")
    with pytest.raises(ValueError, match="device='cpu' applies to torch latents"):
        Latent.load(tmp_path / "n", device="cpu")


@pytest.mark.cuda
def test_cuda_latent_saves_and_loads_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    latent = Latent((torch.randn(4, device="cuda"), torch.randn(4, device="cuda")), index=3)
    latent.save(tmp_path / "z")
    assert Latent.load(tmp_path / "z").states[0].device.type == "cpu"
    loaded = Latent.load(tmp_path / "z", device="cuda")
    assert all(_bits_equal(a, b) for a, b in zip(loaded.states, latent.states))


# -- atomic writes ----------------------------------------------------------------------------------
def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    good = Latent((np.arange(4.0), np.arange(4.0) + 1), index=2)
    path = tmp_path / "z.safetensors"
    good.save(path)

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 7)  # half a file, then the write dies
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.numpy.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        Latent((np.zeros(4), np.zeros(4)), index=3).save(path)
    assert os.listdir(tmp_path) == ["z.safetensors"]  # no temporary file left behind
    kept = Latent.load(path)
    assert kept.index == 2 and np.array_equal(kept.states[1], np.arange(4.0) + 1)


def test_save_to_a_directory_or_a_missing_folder_is_refused(tmp_path):
    latent = Latent((np.ones(2),))
    with pytest.raises(IsADirectoryError, match="is a directory"):
        latent.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        latent.save(tmp_path / "nowhere" / "z.safetensors")


# -- files that are not belm latents ---------------------------------------------------------------
def test_load_refuses_files_that_are_not_belm_latents(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Latent file"):
        Latent.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        Latent.load(tmp_path / "junk")
    # plain arrays saved without belm's metadata: refused, not guessed
    save_numpy({"state_0": np.ones(3), "state_1": np.ones(3)}, tmp_path / "plain")
    with pytest.raises(ValueError, match="not a belm latent"):
        Latent.load(tmp_path / "plain")


def _belm_meta(**changes):
    meta = {"belm.format": "latent", "belm.version": str(FORMAT_VERSION), "belm.kind": "numpy", "belm.n_states": "1"}
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


@pytest.mark.parametrize(
    "meta, tensors, match",
    [
        (_belm_meta(**{"belm.version": "2"}), ["state_0"], "format version '2'"),
        (_belm_meta(**{"belm.version": None}), ["state_0"], "format version None"),
        (_belm_meta(**{"belm.kind": "jax"}), ["state_0"], "belm.kind='jax'"),
        (_belm_meta(**{"belm.n_states": "2"}), ["state_0"], "do not match belm.n_states=2"),
        (_belm_meta(), ["state_0", "extra"], "do not match belm.n_states=1"),
        (_belm_meta(**{"belm.index": "ten"}), ["state_0"], "belm.index='ten' is not an integer"),
        (_belm_meta(**{"belm.dtype": "int8"}), ["state_0"], "dtype='int8'"),
    ],
)
def test_load_refuses_inconsistent_belm_files(tmp_path, meta, tensors, match):
    save_numpy({name: np.ones(3) for name in tensors}, tmp_path / "z", metadata=meta)
    with pytest.raises(ValueError, match=match):
        Latent.load(tmp_path / "z")


# -- metadata-less latents: never silently wrong -----------------------------------------------------
def test_latent_without_metadata_warns_and_names_the_unchecked_fields(problem):
    eps, x0 = problem
    solver = Solver(SD, steps=STEPS, method="o-belm")
    partial = solver.invert(eps, x0, until=UNTIL)
    bare = Latent(partial.states)
    with pytest.warns(LatentMetadataWarning, match=r"no index \(assumed the noisiest, N=20.*no method.*no grid_key") as record:
        wrong = solver.sample(eps, bare)
    assert record[0].filename == __file__  # points at the caller, not at belm_core
    assert mse(wrong, x0) > 1e-3  # what the warning is about: sampled from N, the partial latent is wrong
    with pytest.warns(LatentMetadataWarning) as record:
        solver.sample(eps, bare.replace(index=UNTIL))
    assert "no index" not in str(record[0].message) and "no method" in str(record[0].message)


def test_hand_built_latent_with_full_metadata_is_exact_and_silent(problem):
    eps, x0 = problem
    solver = Solver(SD, steps=STEPS, method="bdia")
    partial = solver.invert(eps, x0, until=UNTIL)
    rebuilt = Latent(tuple(partial.states), index=UNTIL, method=solver.method.signature(), grid_key=solver.grid.key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mse(solver.sample(eps, rebuilt), x0) <= 1e-20


# -- validation at construction ---------------------------------------------------------------------
X = np.zeros((2, 3))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(states=None), TypeError, "tuple of arrays"),
        (dict(states=X), TypeError, "tuple of arrays"),
        (dict(states=()), ValueError, "at least one state"),
        (dict(states=(X, [[0.0] * 3] * 2)), TypeError, r"states\[1\] must be a NumPy array or a torch tensor, got list"),
        (dict(states=(X, 3)), TypeError, r"states\[1\].*got int"),
        (dict(states=(None, X)), TypeError, r"states\[0\].*got NoneType"),
        (dict(states=(X, torch.zeros(2, 3, dtype=torch.float64))), TypeError, "mix NumPy arrays and torch tensors"),
        (dict(states=(X, X[:1])), ValueError, "share one shape"),
        (dict(states=(X, X.astype(np.float32))), ValueError, "share one dtype"),
        (dict(states=(torch.zeros(3), torch.zeros(3, device="meta"))), ValueError, "share one device"),
        (dict(states=(np.zeros(3, dtype=np.int64),)), TypeError, r"states\[0\] has dtype int64"),
        (dict(states=(np.zeros(()),)), ValueError, "0-d scalar"),
        (dict(states=(np.float64(1.0),)), TypeError, r"states\[0\].*got float64"),
        (dict(states=(X,), dtype="float8"), ValueError, "dtype='float8' is not allowed"),
        (dict(states=(X,), dtype="double"), ValueError, "dtype='double' is not allowed"),
        (dict(states=(X,), dtype=np.float32), TypeError, "dtype=.*must be a dtype name"),
        (dict(states=(X,), dtype="bfloat16"), ValueError, "needs torch states"),
        (dict(states=(X,), index=-1), ValueError, "index=-1"),
        (dict(states=(X,), index=2.0), ValueError, "index=2.0"),
        (dict(states=(X,), index=True), ValueError, "index=True"),
        (dict(states=(X,), index="3"), ValueError, "index='3'"),
        (dict(states=(X,), method=3), TypeError, "method=3 must be a str"),
        (dict(states=(X,), grid_key=b"k"), TypeError, "grid_key=b'k' must be a str"),
    ],
)
def test_bad_latent_contents_are_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        Latent(**kwargs)


def test_replace_is_validated_and_index_normalised():
    latent = Latent([X, X], index=np.int64(3))
    assert type(latent.index) is int and isinstance(latent.states, tuple)
    with pytest.raises(TypeError, match="mix"):
        latent.replace(states=(X, torch.zeros(2, 3, dtype=torch.float64)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        latent.index = 4
