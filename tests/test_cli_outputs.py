"""The CLI's output folder and its early checks (belm/commands.py, belm/outputs.py, belm/cli.py).

Properties: a bad --out exits 2 with one line before the model is loaded; --out never holds
a mix of two runs; a write error mid-run (full disk, permissions) or an interrupt leaves the
previous outputs byte for byte; prompts longer than the text encoder's limit are reported.
"""

from __future__ import annotations

import errno
import json

import pytest
import torch

import backends.unet
import belm.images
from belm.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder):
    """name → bytes of every file in `folder`."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def never_load(monkeypatch):
    """load_pipeline fails the test if it is called."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(backends.unet, "load_pipeline", load)


def reconstruct_args(model, image, out, *extra):
    return ["reconstruct", "--model", model, "--image", image, "--steps", 2, "--no-progress", "--out", out, *extra]


# ---------------------------------------------------------------------------------
# checks before any work
# ---------------------------------------------------------------------------------
def test_bad_out_exits_2_before_loading(capsys, never_load, monkeypatch, model_dirs, image_files, tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.png").write_bytes(b"old")
    cases = {
        str(a_file): "existing file",
        str(a_file / "sub"): "which is a file",
        "": "empty",
        "  ": "empty",
        str(full): "--overwrite",
    }
    model, image = model_dirs["ddpm"], image_files["a"]
    for out, needle in cases.items():  # never_load: rejected before the model is loaded
        code, stdout, err = run_cli(capsys, *reconstruct_args(model, image, out))
        assert code == 2, (out, err)
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, (out, err)
    monkeypatch.chdir(full)
    for out in (".", ".."):
        code, _, err = run_cli(capsys, *reconstruct_args(model, image, out, "--overwrite"))
        assert code == 2 and "current folder" in err, err
    assert a_file.read_text() == "keep me"
    assert snapshot(full) == {"old.png": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "results.txt"]  # no staging folder left


def test_unwritable_out_exits_2_before_loading(capsys, never_load, monkeypatch, model_dirs, image_files, tmp_path):
    import belm.outputs

    def refuse(parent, prefix):
        raise PermissionError(errno.EACCES, "Permission denied", str(parent))

    monkeypatch.setattr(belm.outputs, "_new_folder", refuse)  # root ignores chmod: refuse as the OS would
    code, _, err = run_cli(capsys, *reconstruct_args(model_dirs["ddpm"], image_files["a"], tmp_path / "ro" / "out"))
    assert code == 2 and "cannot write in" in err and "Permission denied" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--device", "meta"], "meta"),
        (["--device", "lazy"], "not a device the models can run on"),
        (["--dtype", "int8"], "dtype"),
        (["--guidance", "0.5"], "--negative-prompt"),
        (["--guidance", "nan"], "finite"),
    ],
)
def test_bad_options_exit_2_before_loading(capsys, never_load, model_dirs, image_files, tmp_path, extra, needle):
    code, _, err = run_cli(capsys, *reconstruct_args(model_dirs["ddpm"], image_files["a"], tmp_path / "o", *extra))
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []


def test_image_folder_is_reported_as_a_folder(capsys, never_load, model_dirs, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    code, _, err = run_cli(capsys, *reconstruct_args(model_dirs["ddpm"], folder, tmp_path / "o"))
    assert code == 2 and "is a directory" in err and "pictures" in err


def test_unavailable_spacing_gets_the_schedules_message(capsys, model_dirs, image_files, tmp_path):
    code, _, err = run_cli(capsys, *reconstruct_args(model_dirs["ddpm"], image_files["a"], tmp_path / "o",
                                                     "--spacing", "beta"))
    assert code == 2
    assert "spacing='beta' is not available for DiscreteVP" in err and "'trailing'" in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------
# never a mix of two runs
# ---------------------------------------------------------------------------------
def test_rerun_replaces_the_folder_only_with_overwrite(capsys, model_dirs, image_files, tmp_path):
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, *reconstruct_args(model_dirs["ddpm"], image_files["a"], out))
    assert code == 0 and {"input.png", "reconstruction.png", "metrics.json"} <= set(snapshot(out))
    interp = ["interpolate", "--model", model_dirs["ddpm"], "--image", image_files["a"], "--image", image_files["b"],
              "--frames", 3, "--steps", 2, "--no-progress", "--out", out]
    before = snapshot(out)
    code, _, err = run_cli(capsys, *interp)
    assert code == 2 and "not empty" in err
    assert snapshot(out) == before
    code, _, _ = run_cli(capsys, *interp, "--overwrite")
    assert code == 0
    names = set(snapshot(out))
    assert names == {"frame_000.png", "frame_001.png", "frame_002.png", "strip.png", "metrics.json"}
    assert json.loads((out / "metrics.json").read_text())["command"] == "interpolate"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # staging and old folders are gone


def test_empty_existing_out_is_used(capsys, model_dirs, image_files, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    code, _, _ = run_cli(capsys, *reconstruct_args(model_dirs["ddpm"], image_files["a"], out))
    assert code == 0 and (out / "reconstruction.png").is_file()


@pytest.mark.parametrize("failure", ["disk full", "permission", "interrupt"])
def test_failure_mid_write_keeps_previous_outputs(capsys, monkeypatch, model_dirs, image_files, tmp_path, failure):
    out = tmp_path / "out"
    assert run_cli(capsys, *reconstruct_args(model_dirs["ddpm"], image_files["a"], out))[0] == 0
    before = snapshot(out)
    real_save, calls = belm.images.save_image, []
    errors = {
        "disk full": OSError(errno.ENOSPC, "No space left on device"),
        "permission": PermissionError(errno.EACCES, "Permission denied"),
        "interrupt": KeyboardInterrupt(),
    }

    def save_image(image, path):
        calls.append(path)
        if len(calls) == 3:  # two frames written, then the disk fills up
            raise errors[failure]
        return real_save(image, path)

    monkeypatch.setattr(belm.images, "save_image", save_image)
    argv = ["interpolate", "--model", model_dirs["ddpm"], "--image", image_files["a"], "--image", image_files["b"],
            "--frames", 4, "--steps", 2, "--no-progress", "--overwrite", "--out", out]
    if failure == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            main([str(a) for a in argv])
    else:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert errors[failure].strerror in err and "previous contents are unchanged" in err
    assert len(calls) == 3
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------------
# long prompts
# ---------------------------------------------------------------------------------
LONG = "a cat and a dog on a mat with a hat"  # 15 tokens + 2; the tiny encoder takes 12


def test_long_prompt_warns_and_metrics_record_what_was_used(capsys, model_dirs, image_files, tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, *reconstruct_args(model_dirs["sd"], image_files["a"], out, "--prompt", LONG))
    assert code == 0
    assert "warning: The following part of your input was truncated because CLIP can only handle sequences up to 12" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["prompt_tokens"] == 12
    assert LONG.startswith(m["prompt"]) and len(m["prompt"]) < len(LONG)
    assert m["prompt_truncated"] and LONG.endswith(m["prompt_truncated"])
    assert m["prompt_truncated"] in err


def test_prompt_tokens_and_warning(pipes):
    sd = pipes["sd"]
    short = sd.prompt_tokens("a cat")
    assert short.text == "a cat" and short.truncated == "" and short.tokens == 2 + 2  # "a", "cat" + start/end
    used = sd.prompt_tokens(LONG)
    assert used.tokens == sd.max_prompt_tokens == 12
    # the embedding of the long prompt is that of the text it was cut to
    with pytest.warns(UserWarning, match="truncated"):
        long_emb = sd.encode_prompt(LONG)[0]["encoder_hidden_states"]
    assert (long_emb == sd.encode_prompt(used.text)[0]["encoder_hidden_states"]).all()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sd.encode_prompt("a cat")  # fits: no warning


def test_sdxl_long_prompt_warns_once_and_both_encoders_use_the_cut_text(tiny):
    from backends.pipelines import adapt

    sdxl = adapt(tiny["sdxl"])
    used = sdxl.prompt_tokens(LONG)
    assert used.tokens == sdxl.max_prompt_tokens == 12 and used.truncated
    with pytest.warns(UserWarning, match="truncated") as record:
        long_cond, _ = sdxl.encode_prompt(LONG)
    assert sum("truncated" in str(w.message) for w in record) == 1
    cut_cond, _ = sdxl.encode_prompt(used.text)
    assert torch.equal(long_cond["encoder_hidden_states"], cut_cond["encoder_hidden_states"])
    assert torch.equal(long_cond["added_cond_kwargs"]["text_embeds"], cut_cond["added_cond_kwargs"]["text_embeds"])
