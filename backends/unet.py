"""Diffusers backend: a UNet (pixel DDPM/DDIM, Stable Diffusion, SDXL) as `eps_fn(x, t)`.

`UNetEps` wraps a diffusers `UNet2DModel` or `UNet2DConditionModel` into the ε-prediction
function `belm_core` solvers call; its conditioning is any set of UNet keyword tensors
(prompt embeddings, class labels, SDXL's `added_cond_kwargs`). The model output is converted to ε with α_t, σ_t of
the schedule (float64):

    "epsilon":       ε = ε_θ(x_t, t)
    "v_prediction":  ε = σ_t x_t + α_t v_θ(x_t, t)            (v = α_t ε − σ_t x_0)
    "sample":        ε = (x_t − α_t x̂_0(x_t, t)) / σ_t          (x_0-prediction)

and classifier-free guidance is ε = ε_u + g (ε_c − ε_u), with the unconditional and the
conditional branch in ONE batched UNet call (docs/math.md §7).

Precision (docs/math.md §8): the solver state x stays in its own dtype (float64 by default);
only the UNet runs in the model's dtype (fp16/bf16 on CUDA, fp32 on CPU). The
conversion above is done in x's dtype, from the float64 x and the upcast model output.

Determinism: exact reconstruction needs ε to be a function of (x, t) bit for bit. The
UNet runs under `torch.no_grad()` in eval mode (no dropout), on a contiguous copy of x
(the same memory layout for every call: a channels-last input picks other conv kernels
whose rounding differs, measured here as a 1e-17 → 7e-11 loss of exactness) and with
the same batch layout; on CUDA, cuDNN autotuning (`torch.backends.cudnn.benchmark`) can pick a
different convolution kernel between calls and should stay off (its default).

`load_pipeline(path_or_id)` is `DiffusionPipeline.from_pretrained` with clear errors; what
belm needs of the loaded pipeline (its prompt encoding, VAE, grid) is in `backends.pipelines`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import torch


from .config import PREDICTION_TYPES, PredictionType, schedule_from_config, to_eps
from .guidance import check_guidance

__all__ = [
    "UNetEps", "load_pipeline", "schedule_from_config", "resolve_device", "resolve_dtype",
    "PromptTokens", "prompt_tokens",
]


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A torch dtype from a name or dtype; None gives float16 on CUDA and float32 elsewhere."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype!r} is not a floating dtype; choose one of float32, float16, bfloat16")
        return dtype
    key = str(dtype).strip().lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not known; choose one of float32, float16, bfloat16 (or float64)")
    return _DTYPES[key]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch device; None gives cuda when available, else cpu. An unavailable CUDA device is a ValueError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available here; use device='cpu'")
    if dev.type == "meta":
        raise ValueError(f"device={device!r} holds no data (tensors on 'meta' have shapes only); use 'cpu' or 'cuda'")
    if dev.type not in _COMPUTE_DEVICES:
        raise ValueError(f"device={device!r} is not a device the models can run on; choose one of {list(_COMPUTE_DEVICES)}")
    if not _COMPUTE_DEVICES[dev.type]():
        raise ValueError(f"device={device!r} was asked for, but {dev.type} is not available here; use device='cpu'")
    return dev


#: device types a model can compute on, with their availability test
_COMPUTE_DEVICES = {
    "cpu": lambda: True,
    "cuda": lambda: torch.cuda.is_available(),
    "mps": lambda: bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
    "xpu": lambda: bool(getattr(torch, "xpu", None)) and torch.xpu.is_available(),
}


class PromptTokens(NamedTuple):
    """A prompt as the text encoder sees it.

    text: the prompt used (the words that fit; the prompt itself when nothing was cut).
    tokens: token count including the start and end tokens (≤ the encoder's limit).
    truncated: the text cut off ("" when the prompt fits).
    """

    text: str
    tokens: int
    truncated: str


def prompt_tokens(tokenizer, prompt: str, max_length: int) -> PromptTokens:
    """Split `prompt` into what a `max_length`-token text encoder uses and what it cuts off.

    CLIP-style tokenizers add a start and an end token, so max_length − 2 prompt tokens fit.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(prompt))  # no start/end tokens, no length warning
    room = max(int(max_length) - 2, 0)
    if len(ids) <= room:
        return PromptTokens(prompt, len(ids) + 2, "")
    text, cut = (tokenizer.decode(part, skip_special_tokens=True) for part in (ids[:room], ids[room:]))
    return PromptTokens(text, room + 2, cut)


# ---------------------------------------------------------------------------------
# The ε-function
# ---------------------------------------------------------------------------------
class UNetEps:
    """ε(x, t) of a diffusers UNet, for `belm_core.Solver`.

    Args:
        unet: a `UNet2DModel` (unconditional or class-conditional) or a
            `UNet2DConditionModel`. Put into eval mode (dropout off) when it is in training mode.
        schedule: the `DiscreteVP` (or any belm_core schedule) giving α_t, σ_t.
        prediction_type: what the UNet predicts: "epsilon", "v_prediction" or "sample" (x_0).
        encoder_hidden_states: (1 or B, L, D) conditional prompt embeddings
            (text-conditional UNets only; required there).
        negative_encoder_hidden_states: (1 or B, L, D) unconditional/negative embeddings
            for classifier-free guidance.
        class_labels: (1 or B,) integer labels (class-conditional UNets, i.e. with
            `num_class_embeds` or `class_embed_type`; required there).
        negative_class_labels: (1 or B,) labels of the unconditional branch for guidance,
            e.g. the null label a model was trained with by label dropout.
        conditioning: any other UNet keyword arguments of the conditional branch, each a tensor
            with batch 1 or B or a dict of such tensors, e.g. SDXL's
            `{"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}`. Floating
            tensors are cast to the model dtype, all to the model's device.
        negative_conditioning: the same keys (and dict layout) for the unconditional branch.
        guidance_scale: g in ε = ε_u + g (ε_c − ε_u). g = 1 runs the conditional branch
            alone; any other g needs the negative of every conditioning the UNet takes.
        model_dtype: dtype the UNet input is cast to; default the UNet's parameter dtype
            (giving another one is a ValueError: cast the UNet itself with `unet.to(dtype)`).

    Calling `eps(x, t)` with x a tensor (B, C, H, W) of any float dtype and device and t a
    model time returns ε with x's dtype and device. Outputs with twice the input channels
    (learned variance, e.g. guided diffusion) keep the first half.

    A guided call is the one diffusers' pipelines make: the UNet on the batch
    [x; x] with every keyword tensor as [negative; conditional], then
    `out_u + g * (out_c − out_u)` in the model dtype, so ε equals the pipeline's own guided
    noise prediction bit for bit (before the float64 conversion of `__call__`).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        schedule,
        *,
        prediction_type: PredictionType = "epsilon",
        encoder_hidden_states: torch.Tensor | None = None,
        negative_encoder_hidden_states: torch.Tensor | None = None,
        class_labels: torch.Tensor | Sequence[int] | int | None = None,
        negative_class_labels: torch.Tensor | Sequence[int] | int | None = None,
        conditioning: Mapping[str, Any] | None = None,
        negative_conditioning: Mapping[str, Any] | None = None,
        guidance_scale: float = 1.0,
        model_dtype: torch.dtype | str | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={prediction_type!r} is not known; choose one of {list(PREDICTION_TYPES)}")
        param = next(unet.parameters())
        dtype = param.dtype if model_dtype is None else resolve_dtype(model_dtype, param.device)
        if dtype != param.dtype:
            raise ValueError(
                f"model_dtype={dtype} differs from the UNet's parameter dtype {param.dtype}; cast the UNet with "
                f"unet.to({dtype}) instead"
            )
        given = {
            "encoder_hidden_states": (encoder_hidden_states, negative_encoder_hidden_states),
            "class_labels": (class_labels, negative_class_labels),
        }
        # the UNet keyword tensors of the conditional and the unconditional branch
        self.cond: dict[str, torch.Tensor] = {}
        self.uncond: dict[str, torch.Tensor] = {}
        for name, (value, negative) in given.items():
            pair = _conditioning(unet, name, value, negative, param.device, dtype)
            if pair[0] is not None:
                self.cond[name] = pair[0]
            if pair[1] is not None:
                self.uncond[name] = pair[1]
        extra, extra_negative = _extra_conditioning(conditioning, negative_conditioning, set(given), param.device, dtype)
        self.cond.update(extra)
        self.uncond.update(extra_negative)
        missing = [
            f"negative_{name}" if name in given else f"negative_conditioning[{name!r}]"
            for name in self.cond if name not in self.uncond
        ]
        g = check_guidance(
            guidance_scale, negative_given=bool(self.cond) and not missing, conditional=bool(self.cond),
            negative_name=", ".join(missing) or "the negative branch",
        )
        if g != 1.0 and missing:  # here ε_u has no default: every guided call needs the negative tensors
            raise ValueError(
                f"guidance_scale={g} ≠ 1 needs {', '.join(missing)} (the unconditional or negative branch) "
                "for ε = ε_u + g (ε_c − ε_u)"
            )
        if unet.training:
            unet.eval()
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.guidance_scale = g
        self.model_dtype = dtype
        self.device = param.device
        self.guided = g != 1.0

    def __repr__(self) -> str:
        return (
            f"UNetEps({type(self.unet).__name__}, prediction_type={self.prediction_type!r}, "
            f"guidance_scale={self.guidance_scale}, model_dtype={self.model_dtype}, device={self.device})"
        )

    @staticmethod
    def _expand(value, batch: int, name: str):
        """`value` (a tensor, or a dict of them) with batch size `batch` (a batch of 1 is broadcast)."""
        if isinstance(value, dict):
            return {k: UNetEps._expand(v, batch, f"{name}[{k!r}]") for k, v in value.items()}
        if value.shape[0] == batch:
            return value
        if value.shape[0] == 1:
            return value.expand(batch, *value.shape[1:])
        raise ValueError(f"{name} has batch size {value.shape[0]}; expected 1 or the batch size of x ({batch})")

    def model_output(self, x: torch.Tensor, t) -> torch.Tensor:
        """The raw UNet output at (x, t) (guidance applied), in the model dtype and device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
        batch = x.shape[0]
        # contiguous: a conv kernel chosen for another memory layout (e.g. channels-last strides
        # of a permuted image) rounds differently, which breaks bit-for-bit determinism
        xm = x.to(device=self.device, dtype=self.model_dtype, memory_format=torch.contiguous_format)
        with torch.no_grad():
            if not self.guided:
                return self._unet(xm, t, {k: self._expand(v, batch, k) for k, v in self.cond.items()})
            both = {
                k: _cat(self._expand(self.uncond[k], batch, f"negative_{k}"), self._expand(v, batch, k))
                for k, v in self.cond.items()
            }
            out_u, out_c = self._unet(torch.cat([xm, xm]), t, both).chunk(2)
            return out_u + self.guidance_scale * (out_c - out_u)

    def _unet(self, xm: torch.Tensor, t, conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        timestep = torch.full((xm.shape[0],), int(round(float(t))), dtype=torch.long, device=self.device)
        out = self.unet(xm, timestep, **conditioning).sample
        if out.shape[1] == 2 * xm.shape[1]:  # learned variance: keep the mean prediction
            out = out[:, : xm.shape[1]]
        return out

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """ε(x, t) in x's dtype and device (conversion from v / x_0 in that dtype)."""
        out = self.model_output(x, t).to(device=x.device, dtype=x.dtype)
        if self.prediction_type == "epsilon":
            return out
        return to_eps(out, x, float(self.schedule.alpha(t)), float(self.schedule.sigma(t)), self.prediction_type)


def _cat(negative, value):
    """[negative; value] along the batch, key by key for dicts (diffusers' CFG batch order)."""
    if isinstance(value, dict):
        return {k: _cat(negative[k], v) for k, v in value.items()}
    return torch.cat([negative, value])


def _extra_conditioning(conditioning, negative, named: set[str], device, dtype) -> tuple[dict, dict]:
    """Validate `conditioning` / `negative_conditioning` (UNet keyword → tensor or dict of tensors)
    and cast them: floating tensors to the model dtype, all to the model's device."""
    for label, mapping in (("conditioning", conditioning), ("negative_conditioning", negative)):
        if mapping is None:
            continue
        if not isinstance(mapping, Mapping):
            raise TypeError(f"{label} must be a dict of UNet keyword arguments, got {type(mapping).__name__}")
        clash = sorted(set(mapping) & named)
        if clash:
            raise ValueError(f"{label} has key(s) {clash}; pass them as the named arguments of UNetEps instead")
    conditioning, negative = dict(conditioning or {}), dict(negative or {})
    if negative and not conditioning:
        raise ValueError("negative_conditioning was given without conditioning")
    unknown = sorted(set(negative) - set(conditioning))
    if unknown:
        raise ValueError(f"negative_conditioning has key(s) {unknown} that conditioning lacks; the keys must match")

    def cast(value, name: str):
        if isinstance(value, Mapping):
            return {k: cast(v, f"{name}[{k!r}]") for k, v in value.items()}
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            raise TypeError(f"{name} must be a tensor with a batch dimension (or a dict of them), got {value!r}")
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)

    cond = {k: cast(v, f"conditioning[{k!r}]") for k, v in conditioning.items()}
    uncond = {k: cast(v, f"negative_conditioning[{k!r}]") for k, v in negative.items()}
    for k, v in uncond.items():
        if _layout(v) != _layout(cond[k]):
            raise ValueError(
                f"negative_conditioning[{k!r}] has layout {_layout(v)}, conditioning[{k!r}] {_layout(cond[k])} "
                "(the same keys and shapes after the batch dimension are needed)"
            )
    return cond, uncond


def _layout(value):
    """Keys and per-item shapes of a conditioning value (what [negative; conditional] must share)."""
    if isinstance(value, dict):
        return {k: _layout(v) for k, v in value.items()}
    return tuple(value.shape[1:])


def _is_conditional(unet) -> bool:
    """True for a UNet that takes encoder_hidden_states (UNet2DConditionModel and kin)."""
    config = getattr(unet, "config", {})
    return "cross_attention_dim" in config or type(unet).__name__ == "UNet2DConditionModel"


def _is_class_conditional(unet) -> bool:
    """True for a UNet with a class embedding (`num_class_embeds` or `class_embed_type` set)."""
    config = getattr(unet, "config", {})
    return config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None


_HINTS = {
    "encoder_hidden_states": "use the empty prompt's embeddings for unconditional sampling",
    "class_labels": "use the null label for unconditional sampling if the model was trained with label dropout",
}


def _conditioning(unet, name: str, value, negative, device, dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validate one UNet conditioning argument and its negative; cast them for the model.

    Embeddings go to the model dtype, labels to int64, both to the model's device.
    """
    takes = _is_conditional(unet) if name == "encoder_hidden_states" else _is_class_conditional(unet)
    if not takes:
        if value is not None or negative is not None:
            raise ValueError(f"{name}/negative_{name} were given, but {type(unet).__name__} takes no {name}")
        return None, None
    if value is None:
        raise ValueError(f"{name} is required for this {type(unet).__name__} ({_HINTS[name]})")

    def cast(v):
        if name == "class_labels":
            return torch.as_tensor(v, dtype=torch.long, device=device).reshape(-1)
        return v.to(device, dtype)

    value = cast(value)
    negative = None if negative is None else cast(negative)
    if negative is not None and value.shape[1:] != negative.shape[1:]:
        raise ValueError(
            f"negative_{name} has shape {tuple(negative.shape)}, incompatible with {name} {tuple(value.shape)} "
            "(they must agree after the batch dimension)"
        )
    return value, negative




# ---------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------
def load_pipeline(
    path_or_id: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    progress: bool = True,
):
    """`DiffusionPipeline.from_pretrained(path_or_id, dtype=dtype).to(device)`, with clear errors.

    Returns the diffusers pipeline itself (StableDiffusionPipeline, StableDiffusionXLPipeline,
    DDPMPipeline, …); `belm.apps` and `backends.pipelines.adapt` take it as it is. Components
    stored as `[null, null]` in model_index.json (a safety checker, SD3's T5) are passed as None.

    Args:
        path_or_id: a `save_pretrained` folder, or a hub id such as "google/ddpm-cifar10-32"
            where a hub is reachable.
        device: default "cuda" when available, else "cpu".
        dtype: "float32", "float16", "bfloat16" or a torch dtype; default float16 on CUDA,
            float32 on CPU. The networks run in it; the solver state stays float64.
        progress: show diffusers' and transformers' loading progress bars (on stderr).

    Raises:
        FileNotFoundError: the folder, its model_index.json or a component's folder is missing
            (naming it), or a hub id cannot be reached.
        ValueError: a bad device or dtype, or a component that does not load (naming it).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    from diffusers import DiffusionPipeline

    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    local = path.is_dir()
    if not local:
        looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
        if path.exists():
            raise FileNotFoundError(f"model {text!r} is a file, not a diffusers pipeline folder")
        if not looks_like_hub_id:
            raise FileNotFoundError(f"model folder {text!r} does not exist (expected a diffusers pipeline folder)")
    index = _model_index(path if local else text, local)
    nulls = {k: None for k, v in index.items() if isinstance(v, (list, tuple)) and len(v) == 2 and v[0] is None}
    if local:
        for name, entry in index.items():
            if name.startswith("_") or name in nulls or not isinstance(entry, (list, tuple)):
                continue
            if not (path / name).is_dir():
                raise FileNotFoundError(f"model folder {path} has no {name!r} component ({path / name} is missing)")
    try:
        with _progress_bars(progress):
            pipe = DiffusionPipeline.from_pretrained(str(path) if local else text, dtype=dt, **nulls)
    except Exception as err:  # noqa: BLE001 - any loader failure becomes one line naming the component
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        names = [k for k in index if not k.startswith("_") and f"/{k}/" in first.replace(os.sep, "/")]
        what = f"the {names[0]!r} component of {text}" if names else f"the pipeline {text}"
        raise ValueError(f"could not load {what}: {type(err).__name__}: {first}") from None
    return pipe.to(dev)


@contextlib.contextmanager
def _progress_bars(show: bool):
    """diffusers' and transformers' progress bars on (as they were) or off while loading."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [diffusers_logging, transformers_logging]
    before = [lib.is_progress_bar_enabled() for lib in libraries]
    for lib in libraries:
        if not show:
            lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in zip(libraries, before):
            (lib.enable_progress_bar if enabled else lib.disable_progress_bar)()


def _model_index(source, local: bool) -> dict:
    """model_index.json of a folder or hub repository (the component list)."""
    if local:
        file = Path(source) / "model_index.json"
        if not file.is_file():
            raise FileNotFoundError(f"model_index.json (the pipeline's component list) is missing: {file} not found")
        try:
            data = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"model_index.json at {file} is unreadable: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"model_index.json at {file} is not a JSON object")
        return data
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(source))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, auth: all end in one clear message
        raise FileNotFoundError(
            f"model {source!r} is neither a local folder nor a reachable hub repository "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
