"""Diffusers backend: a UNet (pixel DDPM/DDIM or Stable Diffusion) as `eps_fn(x, t)`.

`UNetEps` wraps a diffusers `UNet2DModel` or `UNet2DConditionModel` into the ε-prediction
function `belm_core` solvers call. The model output is converted to ε with α_t, σ_t of
the schedule (float64):

    "epsilon":       ε = ε_θ(x_t, t)
    "v_prediction":  ε = σ_t x_t + α_t v_θ(x_t, t)            (v = α_t ε − σ_t x_0)
    "sample":        ε = (x_t − α_t x̂_0(x_t, t)) / σ_t          (x_0-prediction)

and classifier-free guidance is ε = ε_u + g (ε_c − ε_u), with the unconditional and the
conditional branch in ONE batched UNet call (MATH.md §7).

Precision (MATH.md §8): the solver state x stays in its own dtype (float64 by default);
only the UNet runs in the model's dtype (fp16/bf16 on CUDA, fp32 on CPU). The
conversion above is done in x's dtype, from the float64 x and the upcast model output.

Determinism: exact reconstruction needs ε to be a function of (x, t) bit for bit. The
UNet runs under `torch.no_grad()` in eval mode (no dropout), on a contiguous copy of x
(the same memory layout for every call: a channels-last input picks other conv kernels
whose rounding differs, measured here as a 1e-17 → 7e-11 loss of exactness) and with
the same batch layout; on CUDA, cuDNN autotuning (`torch.backends.cudnn.benchmark`) can pick a
different convolution kernel between calls and should stay off (its default).

`load_pipeline(path_or_id)` loads a diffusers pipeline folder component by component
and returns a `Pipeline` with the schedule, ε-functions for prompts, and VAE encode/decode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import warnings
from typing import Literal, NamedTuple, Sequence

import torch


from .config import PREDICTION_TYPES, PredictionType, schedule_from_config, to_eps
from .guidance import check_guidance

__all__ = [
    "UNetEps", "Pipeline", "load_pipeline", "schedule_from_config", "resolve_device", "resolve_dtype",
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
        guidance_scale: g in ε = ε_u + g (ε_c − ε_u). g = 1 runs the conditional branch
            alone; any other g needs the negative of every conditioning the UNet takes.
        model_dtype: dtype the UNet input is cast to; default the UNet's parameter dtype
            (giving another one is a ValueError: cast the UNet itself with `unet.to(dtype)`).

    Calling `eps(x, t)` with x a tensor (B, C, H, W) of any float dtype and device and t a
    model time returns ε with x's dtype and device. Outputs with twice the input channels
    (learned variance, e.g. guided diffusion) keep the first half.
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
        missing = [f"negative_{name}" for name in self.cond if name not in self.uncond]
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
    def _expand(value: torch.Tensor, batch: int, name: str) -> torch.Tensor:
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
                k: torch.cat([self._expand(self.uncond[k], batch, f"negative_{k}"), self._expand(v, batch, k)])
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
# Pipelines
# ---------------------------------------------------------------------------------
class Pipeline:
    """A loaded diffusion model: UNet + schedule (+ VAE, text encoder, tokenizer for latent models).

    Attributes:
        unet, vae, text_encoder, tokenizer: the components (the last three None for pixel models).
        schedule: `DiscreteVP` from the scheduler config (see `schedule_from_config`).
        scheduler_config: the scheduler config dict.
        prediction_type: "epsilon", "v_prediction" or "sample".
        device, dtype: where and in which dtype the networks run.
        path: where it was loaded from.
    """

    def __init__(self, *, unet, scheduler_config: dict, vae=None, text_encoder=None, tokenizer=None, path: str = ""):
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.schedule = schedule_from_config(self.scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type={self.prediction_type!r} in the scheduler config is not supported; "
                f"choose one of {list(PREDICTION_TYPES)}"
            )
        self.path = str(path)
        param = next(unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        if self.is_conditional and (text_encoder is None or tokenizer is None):
            raise ValueError(f"{self.path}: a conditional UNet needs a text_encoder and a tokenizer")

    def __repr__(self) -> str:
        kind = "latent" if self.is_latent else "pixel"
        cond = "text-conditional" if self.is_conditional else "unconditional"
        return (
            f"Pipeline({self.path!r}, {kind}, {cond}, prediction_type={self.prediction_type!r}, "
            f"resolution={self.resolution}, device={self.device}, dtype={self.dtype})"
        )

    # -- properties -----------------------------------------------------------------------
    @property
    def is_conditional(self) -> bool:
        return _is_conditional(self.unet)

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one model-space sample."""
        h, w = _pair(self.unet.config.sample_size)
        return (int(self.unet.config.in_channels), h, w)

    @property
    def resolution(self) -> int | tuple[int, int]:
        """Native image size (UNet sample_size × VAE scale factor); an int for square models."""
        h, w = _pair(self.unet.config.sample_size)
        h, w = h * self.vae_scale_factor, w * self.vae_scale_factor
        return h if h == w else (h, w)

    # -- text -------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[str]) -> torch.Tensor:
        """Text-encoder embeddings (B, L, D) of a prompt (padded to the tokenizer's max length).

        A prompt longer than `max_prompt_tokens` is cut there, with a UserWarning naming the cut
        text, as diffusers does; `prompt_tokens(prompt)` tells what was used.
        """
        if not self.is_conditional:
            raise ValueError(f"prompt={prompt!r} was given, but {self.path} is an unconditional model")
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
            raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        max_length = self.max_prompt_tokens
        for p in dict.fromkeys(prompt):
            cut = prompt_tokens(self.tokenizer, p, max_length).truncated
            if cut:  # the wording diffusers uses, so users recognise it
                warnings.warn(
                    "The following part of your input was truncated because CLIP can only handle sequences up to "
                    f"{max_length} tokens: {cut!r}",
                    UserWarning, stacklevel=3,
                )
        tokens = self.tokenizer(
            list(prompt), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            emb = self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]
        return emb.to(self.dtype)

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens the text encoder takes, start and end tokens included."""
        return int(min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings))

    def prompt_tokens(self, prompt: str) -> PromptTokens:
        """The prompt as the text encoder uses it (see `prompt_tokens`); no warning."""
        if not self.is_conditional:
            raise ValueError(f"prompt={prompt!r} was given, but {self.path} is an unconditional model")
        return prompt_tokens(self.tokenizer, prompt, self.max_prompt_tokens)

    def eps_fn(
        self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
        guidance_scale: float = 1.0,
    ) -> UNetEps:
        """ε(x, t) for a prompt with classifier-free guidance g = `guidance_scale`.

        Conditional models: no prompt means the empty prompt; g > 1 without a negative
        prompt guides away from the empty prompt (as diffusers does); g < 1 needs an
        explicit negative prompt. Unconditional models take neither a prompt nor g ≠ 1.
        """
        if not self.is_conditional and (prompt is not None or negative_prompt is not None):
            which = "prompt" if prompt is not None else "negative_prompt"
            raise ValueError(
                f"{which}={prompt if prompt is not None else negative_prompt!r} was given, but the model at "
                f"{self.path} is unconditional ({type(self.unet).__name__}) and takes no prompt"
            )
        g = check_guidance(guidance_scale, negative_given=negative_prompt is not None, conditional=self.is_conditional)
        if not self.is_conditional:
            return UNetEps(self.unet, self.schedule, prediction_type=self.prediction_type)
        cond = self.encode_prompt("" if prompt is None else prompt)
        uncond = None
        if g != 1.0:
            uncond = self.encode_prompt("" if negative_prompt is None else negative_prompt)
        return UNetEps(
            self.unet, self.schedule, prediction_type=self.prediction_type,
            encoder_hidden_states=cond, negative_encoder_hidden_states=uncond, guidance_scale=g,
        )

    # -- images <-> model space ----------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [−1, 1] → model space, float64 on the pipeline's device.

        Latent models: z = (mean of the VAE posterior − shift_factor) · scaling_factor
        (the mean, not a sample: deterministic). Pixel models: the images themselves.
        """
        images = _check_images(images)
        if self.vae is None:
            return images.to(self.device, torch.float64)
        with torch.no_grad():
            mean = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mean
        z = mean.to(torch.float64)
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            z = z - float(shift)
        return z * float(self.vae.config.scaling_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model space → images (N, 3, H, W) in [−1, 1] (not clamped), float32 on the CPU."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch tensor, got {type(z).__name__}")
        if self.vae is None:
            return z.detach().to("cpu", torch.float32)
        z = z.to(torch.float64) / float(self.vae.config.scaling_factor)
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            z = z + float(shift)
        with torch.no_grad():
            images = self.vae.decode(z.to(self.device, self.vae.dtype)).sample
        return images.to("cpu", torch.float32)


def _pair(size) -> tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor (N, 3, H, W) in [-1, 1], got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    return images


# ---------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------
def _resolve_folder(path_or_id: str | os.PathLike) -> Path:
    """A local pipeline folder, downloading a hub snapshot when `path_or_id` is not a folder."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
    if path.exists():
        raise FileNotFoundError(f"model {text!r} is a file, not a diffusers pipeline folder")
    if not looks_like_hub_id:
        raise FileNotFoundError(f"model folder {text!r} does not exist (expected a diffusers pipeline folder)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            text,
            allow_patterns=["model_index.json", "scheduler/*", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*"],
        )
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, auth: all end in one clear message
        raise FileNotFoundError(
            f"model {text!r} is neither a local folder nor a reachable hub repository "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    return Path(local)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what} is missing: {path} not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} at {path} is unreadable: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} at {path} is not a JSON object")
    return data


def _load_component(folder: Path, name: str, loader, **kwargs):
    sub = folder / name
    if not sub.is_dir():
        raise FileNotFoundError(f"model folder {folder} has no {name!r} component ({sub} is missing)")
    try:
        return loader(str(folder), subfolder=name, **kwargs)
    except Exception as err:  # noqa: BLE001 - turn any loader failure into one line naming the component
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"could not load the {name!r} component of {folder}: {type(err).__name__}: {first}") from None


def load_pipeline(
    path_or_id: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Pipeline:
    """Load a diffusers pipeline folder (the `save_pretrained` layout) or a hub id.

    Components are loaded one by one: `unet` (UNet2DModel or UNet2DConditionModel, read from
    unet/config.json), `scheduler` (only its config JSON), and for latent models `vae`
    (AutoencoderKL), `text_encoder` (CLIPTextModel) and `tokenizer` (CLIPTokenizer).
    A missing folder or component is a FileNotFoundError naming it; an unreadable one a
    ValueError naming it.

    Args:
        path_or_id: local folder, or a hub id such as "google/ddpm-cifar10-32" when a hub is reachable.
        device: default "cuda" when available, else "cpu".
        dtype: "float32", "float16", "bfloat16" or a torch dtype; default float16 on CUDA,
            float32 on CPU. The networks run in it; the solver state stays float64.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder = _resolve_folder(path_or_id)
    index = _read_json(folder / "model_index.json", "model_index.json (the pipeline's component list)")
    unsupported = sorted(k for k in ("vqvae", "transformer", "prior", "decoder") if k in index)
    if unsupported:
        raise ValueError(
            f"{folder}: pipeline {index.get('_class_name', '?')} has component(s) {unsupported}; only UNet pipelines "
            "(pixel DDPM/DDIM, Stable Diffusion 1.x/2.x) are supported"
        )
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json", "the 'scheduler' component's config")
    unet_config = _read_json(folder / "unet" / "config.json", "the 'unet' component's config")
    unet_class = unet_config.get("_class_name", "UNet2DModel")
    loaders = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
    if unet_class not in loaders:
        raise ValueError(f"unet class {unet_class!r} in {folder / 'unet'} is not supported; expected one of {list(loaders)}")
    unet = _load_component(folder, "unet", loaders[unet_class].from_pretrained, torch_dtype=dt)
    vae = text_encoder = tokenizer = None
    latent = "vae" in index or unet_class == "UNet2DConditionModel"
    if latent:
        vae = _load_component(folder, "vae", AutoencoderKL.from_pretrained, torch_dtype=dt)
    if unet_class == "UNet2DConditionModel":
        from transformers import CLIPTextModel, CLIPTokenizer

        text_encoder = _load_component(folder, "text_encoder", CLIPTextModel.from_pretrained, dtype=dt)
        tokenizer = _load_component(folder, "tokenizer", CLIPTokenizer.from_pretrained)
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.to(dev).eval()
    return Pipeline(
        unet=unet, scheduler_config=scheduler_config, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        path=str(path_or_id),
    )
