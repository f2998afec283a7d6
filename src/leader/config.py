"""The typed configuration: every key, its type, default, allowed values and one line of help.

Every run starts from ``configs/paper.yaml`` (the paper's §4 pretraining settings), merges a
preset (``demo``, ``demo-quick``) or a user YAML file on top, then applies ``key.sub=value``
overrides from the command line (values parsed as YAML, so ``--set stage1.epochs=5`` gives an
int and ``--set student.backbone_kwargs.depths=[1,1,1,1]`` a list). The result is validated
against :class:`Config` **before anything else happens**: an unknown key is an error naming
the nearest known key ("did you mean stage1.epochs?"), a value of the wrong type or outside
its range is an error naming the key and where the value came from (file or ``--set``).

``leader config keys`` lists every key with its help; ``leader config show`` prints a resolved
config. Sections are pydantic models with attribute access (``cfg.stage1.epochs``); for older
code they also answer read-only mapping access (``cfg["stage1"]["epochs"]``, ``.get``).

Teachers and their roles (issue "one composition layer") live in ``teachers:``: one entry per
teacher with its ``kind`` (disease / anatomy / other: how evaluations and exports treat its
head), the Algorithm 1 ``stages`` it is distilled in and its loss ``weight``. The paper preset
gives the paper's two (disease: stages 1 and 2; anatomy: stage 2). A third teacher is one more
entry; ``teachers.NAME: null`` removes one.
"""

from __future__ import annotations

import copy
import difflib
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leader.errors import LeaderError

__all__ = ["Config", "ConfigError", "PRESETS", "load_config", "as_config", "apply_overrides", "deep_merge",
           "config_keys", "TeacherConfig"]

PRESETS = ("paper", "demo", "demo-quick", "claims-controlled", "claims-real")


class ConfigError(LeaderError, ValueError):
    """A configuration value or key is invalid; the message names the key and where it came from."""


def H(default: Any = ..., help: str = "", **kw: Any) -> Any:  # noqa: A002 - the field's help line
    """A pydantic field with a one-line help text (shown by ``leader config keys``)."""
    if callable(default) and not isinstance(default, (int, float, str, bool)):
        return Field(default_factory=default, description=help, **kw)
    return Field(default, description=help, **kw)


class Section(BaseModel):
    """Base of every config section: unknown keys rejected, assignments validated, and
    read-only mapping access for code written against the plain-dict configs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]``, or ``default`` for a key the section does not have (or a ``None`` value)."""
        v = getattr(self, key, None) if key in type(self).model_fields else None
        return default if v is None else v

    def keys(self) -> list[str]:
        return list(type(self).model_fields)

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in type(self).model_fields]

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields

    def to_dict(self) -> dict:
        """Plain JSON-able dict of this section."""
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- sections
class StudentConfig(Section):
    backbone: str = H("swin_base_patch4_window7_224", "student backbone S_θ: any timm model name (paper: Swin-B)")
    img_size: int = H(224, "input side in pixels; sizes the model and every resize (field report BR-19)", ge=16)
    backbone_kwargs: dict[str, Any] = H(dict, "extra keyword arguments for timm.create_model (e.g. depths)")
    hidden_dim: Optional[int] = H(None, "hidden width of the 2-layer MLP heads; null = E_DA width", ge=1)
    pretrained_file: Optional[str] = H(None, "local weights file for the backbone (never downloaded)")


class OptimConfig(Section):
    lr: float = H(2.0e-4, "AdamW peak learning rate (paper §4: 2e-4)", gt=0)
    weight_decay: float = H(0.05, "AdamW weight decay (not on biases / norms)", ge=0)
    betas: list[float] = H(lambda: [0.9, 0.999], "AdamW betas [beta1, beta2]")
    warmup_steps: int = H(0, "linear warm-up steps at the start of each stage", ge=0)
    grad_clip: Optional[float] = H(1.0, "clip the gradient norm to this value; null = no clipping", gt=0)
    fused: bool = H(True, "use the fused AdamW kernel on CUDA")
    min_lr_fraction: float = H(0.1, "cosine schedule ends at this fraction of lr", ge=0, le=1)

    @field_validator("betas")
    @classmethod
    def _two_betas(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must be two numbers in [0, 1), got {v}")
        return v


class AugmentConfig(Section):
    enabled: bool = H(True, "augment training views (one view shared by student and teachers)")
    degrees: float = H(10.0, "random affine: maximum rotation in degrees", ge=0)
    translate: float = H(0.06, "random affine: maximum shift as a fraction of the side", ge=0, le=1)
    scale: list[float] = H(lambda: [0.9, 1.1], "random affine: isotropic zoom range [lo, hi]")
    hflip_p: float = H(0.5, "probability of a horizontal flip", ge=0, le=1)
    brightness: float = H(0.2, "colour jitter: brightness factor range 1 ± b", ge=0)
    contrast: float = H(0.2, "colour jitter: contrast factor range 1 ± c", ge=0)
    p_jitter: float = H(0.8, "probability of applying the colour jitter", ge=0, le=1)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not 0 < v[0] <= v[1]:
            raise ValueError(f"scale must be [lo, hi] with 0 < lo <= hi, got {v}")
        return v


class PatchesConfig(Section):
    margin: float = H(0.25, "context around a disease box, as a fraction of its size (Algorithm 1 l. 4)", ge=0)
    min_size: float = H(32, "smallest disease patch side in stored-image pixels", ge=1)
    healthy_per_image: int = H(2, "healthy patches sampled per normal image (Algorithm 1 l. 5)", ge=0)
    healthy_size_frac: list[float] = H(lambda: [0.15, 0.35], "healthy patch side range, fraction of the image width")
    on_bad_box: Literal["skip", "error"] = H("skip", "an invalid box: skip it (listed) or stop with an error")
    context_per_image: int = H(0, "extra stage-2 patches from every training image, diseased or not (random "
                                  "position and side in healthy_size_frac): anatomical context; 0 = the paper's "
                                  "pairs only", ge=0)

    @field_validator("healthy_size_frac")
    @classmethod
    def _frac(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"healthy_size_frac must be [lo, hi] with 0 < lo <= hi <= 1, got {v}")
        return v


class StageConfig(Section):
    epochs: int = H(100, "epochs of this stage (0 skips it)", ge=0)
    batch_size: int = H(64, "global batch: over all ranks and gradient-accumulation micro-steps", ge=1)
    grad_accum: Optional[int] = H(None, "micro-steps per optimizer step (default: the top-level grad_accum)", ge=1)
    micro_batch_size: Optional[int] = H(None, "per-rank micro-batch (instead of grad_accum)", ge=1)


class DataConfig(Section):
    on_error: Literal["skip", "raise"] = H("skip", "unreadable sample during training: skip (weight 0, "
                                                   "listed in RUN/skipped.json) or raise")
    max_skip_fraction: float = H(0.05, "more distinct unreadable samples than this fraction stops the run",
                                 ge=0, le=1)


class DistributedConfig(Section):
    strategy: Literal["ddp", "fsdp"] = H("ddp", "data parallel (ddp) or sharded (fsdp) student under torchrun")
    backend: str = H("auto", "process-group backend: auto (nccl on GPUs, gloo otherwise), nccl, gloo")
    timeout_s: float = H(1800, "collective timeout in seconds", gt=0)
    find_unused_parameters: bool = H(False, "DDP: search for parameters without gradient (slower)")
    static_graph: bool = H(False, "DDP static_graph optimisation")
    broadcast_buffers: bool = H(True, "DDP: broadcast buffers (BatchNorm statistics) every step")
    reshard: bool = H(True, "FSDP: free the gathered parameters after each forward")


class TeacherConfig(Section):
    """One frozen expert and its role (paper Fig. 2: a branch per teacher)."""

    source: Optional[str] = H(None, "where the teacher comes from (same forms as --teacher NAME=PATH); "
                                    "null = given on the command line")
    kind: Literal["disease", "anatomy", "other"] = H("other", "what the teacher knows: how evaluations, "
                                                                "exports and reports treat its head")
    stages: list[int] = H(lambda: [2], "Algorithm 1 stages it is distilled in: 1 (whole images), "
                                       "2 (image/patch pairs)")
    weight: float = H(1.0, "weight of its loss term in L = Σ weight · ℓ (Eq. 3)", ge=0)
    target_norm: Literal["none", "center", "standardize", "global"] = H(
        "none", "loss in a normalised teacher space: none, center (subtract the mean), standardize (per-dimension "
                "mean and std), global (mean and one scale for all dimensions); statistics from the training "
                "samples, kept in the head")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[int]) -> list[int]:
        if not v or any(s not in (1, 2) for s in v) or len(set(v)) != len(v):
            raise ValueError(f"stages must be a non-empty list of distinct values from [1, 2], got {v}")
        return sorted(v)


class _FitCommon(Section):
    """What both recipes of `leader teachers fit` take."""

    arch: str = H("resnet18", "timm architecture of the fitted expert")
    img_size: int = H(128, "input side of the fitted expert", ge=16)
    epochs: int = H(10, "training epochs", ge=1)
    batch_size: int = H(32, "batch size", ge=1)
    lr: float = H(1.0e-3, "peak learning rate (one-cycle)", gt=0)


class FitDiseaseConfig(_FitCommon):
    arch: str = H("resnet18", "timm architecture of the disease expert fitted by `leader teachers fit`")


class FitAnatomyConfig(_FitCommon):
    arch: str = H("convnext_atto", "timm architecture of the anatomy expert fitted by `leader teachers fit`")
    epochs: int = H(6, "training epochs", ge=1)
    crops_per_image: int = H(4, "random crops per image per epoch (position targets)", ge=1)
    zones: bool = H(True, "also learn the lung zone of zone patches where lung masks / boxes / contours exist")


class FitConfig(Section):
    disease: FitDiseaseConfig = H(FitDiseaseConfig, "recipe for a supervised disease expert")
    anatomy: FitAnatomyConfig = H(FitAnatomyConfig, "recipe for a label-free anatomy expert")


class EvalConfig(Section):
    retrieval_k: int = H(100, "K of precision@K in zero-shot retrieval (paper Fig. 4: 100)", ge=1)
    retrieval_queries: int = H(200, "diseased-patch queries sampled per evaluation", ge=1)
    tsne_perplexity: float = H(30.0, "t-SNE perplexity of the anatomy maps", gt=0)


class PhantomsConfig(Section):
    n_images: int = H(60, "generated chest phantoms when no data root is given", ge=4)


def _default_teachers() -> dict[str, TeacherConfig]:
    return {}


class TargetStatsConfig(Section):
    samples: int = H(2048, "training samples (images and patches) the target statistics are computed on", ge=16)
    batch_size: int = H(64, "batch size of that pass over the frozen teachers", ge=1)


class Config(Section):
    """The whole configuration of a run (paper §4 defaults in ``configs/paper.yaml``)."""

    seed: int = H(0, "seed of the initial student, the data order and every augmentation")
    precision: Literal["bf16", "fp32"] = H("bf16", "bf16 autocast where supported, or fp32")
    num_workers: int = H(4, "DataLoader worker processes", ge=0)
    device: str = H("auto", "auto (CUDA when available) | cpu | cuda | cuda:N")
    student: StudentConfig = H(StudentConfig, "the student backbone and heads")
    loss: Literal["mse", "cosine", "smooth_l1", "soft_ce"] = H("mse", "distillation loss ℓ_s (Eq. 1-2; paper: mse)")
    optim: OptimConfig = H(OptimConfig, "AdamW and its schedule")
    augment: AugmentConfig = H(AugmentConfig, "random affine + flip + colour jitter (paper §4)")
    patches: PatchesConfig = H(PatchesConfig, "diseased / healthy patches (Algorithm 1 lines 1-7)")
    stage1: StageConfig = H(lambda: StageConfig(epochs=100, batch_size=64),
                            "stage 1: disease branch on whole images (Algorithm 1 lines 8-14)")
    stage2: StageConfig = H(lambda: StageConfig(epochs=100, batch_size=32),
                            "stage 2: all branches on image/patch pairs (Algorithm 1 lines 15-27)")
    teachers: dict[str, Optional[TeacherConfig]] = H(_default_teachers, "the frozen experts and their roles")
    teacher_cache: dict[str, str] = H(dict, "NAME: DIR — read a teacher's embeddings from its cache")
    target_stats: TargetStatsConfig = H(TargetStatsConfig, "how teachers.<name>.target_norm statistics are computed")
    teacher_views: Literal["auto", "online"] = H("auto", "auto: restrict views to those a teacher cache holds; "
                                                         "online: always augment")
    log_every: int = H(10, "steps between progress log lines", ge=1)
    checkpoint_every: int = H(500, "steps between checkpoints (0: only at epoch ends)", ge=0)
    keep_checkpoints: int = H(2, "complete checkpoints kept in RUN/checkpoints", ge=1)
    max_steps: Optional[int] = H(None, "stop with a checkpoint after this many optimizer steps (0 or null: no limit)", ge=0)
    grad_accum: int = H(1, "default micro-steps per optimizer step", ge=1)
    channels_last: Union[Literal["auto"], bool] = H("auto", "channels-last memory format (auto: on CUDA)")
    compile: bool = H(False, "torch.compile the student")
    prefetch_factor: int = H(2, "batches prefetched per DataLoader worker", ge=1)
    shuffle_buffer: int = H(2000, "samples held for shuffling when streaming shards", ge=1)
    data: DataConfig = H(DataConfig, "unreadable samples during training")
    distributed: DistributedConfig = H(DistributedConfig, "torchrun settings (docs/distributed.md)")
    fit: FitConfig = H(FitConfig, "recipes of `leader teachers fit` (the demo's own experts)")
    eval: EvalConfig = H(EvalConfig, "zero-shot checks of the demo")
    phantoms: PhantomsConfig = H(PhantomsConfig, "generated data")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        base, _, idx = str(v).partition(":")
        if base not in ("auto", "cpu", "cuda", "mps") or (idx and (base != "cuda" or not idx.isdigit())):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {v!r}")
        return str(v)

    @field_validator("teachers")
    @classmethod
    def _drop_removed(cls, v: dict) -> dict:
        return {k: t for k, t in v.items() if t is not None}

    # ---------------------------------------------------------------- teacher roles
    def teacher(self, name: str) -> TeacherConfig:
        """The role of teacher ``name``.

        Raises:
            ConfigError: ``name`` is not in ``teachers:`` (the message shows how to add it).
        """
        t = self.teachers.get(name)
        if t is None:
            raise ConfigError(
                f"teacher {name!r} is not in the config's teachers ({', '.join(sorted(self.teachers)) or 'none'}); "
                f"add it, e.g. --set teachers.{name}.kind=other --set teachers.{name}.stages=[2]")
        return t

    def stage_teachers(self, stage: int, names: Iterable[str]) -> list[str]:
        """Of ``names`` (the teachers at hand), those distilled in ``stage``, in the given order."""
        return [n for n in names if stage in self.teacher(n).stages]

    def teachers_of_kind(self, kind: str, names: Iterable[str] | None = None) -> list[str]:
        """Names of the configured teachers (or of ``names``) whose ``kind`` is ``kind``."""
        pool = self.teachers if names is None else {n: self.teacher(n) for n in names}
        return [n for n, t in pool.items() if t.kind == kind]


# ----------------------------------------------------------------------------- schema walking
def _unwrap(tp: Any) -> Any:
    """``Optional[X]`` → ``X``."""
    if typing.get_origin(tp) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _child(tp: Any, key: str) -> tuple[bool, Any]:
    """Is ``key`` valid below a value of type ``tp``, and the type found there."""
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        f = tp.model_fields.get(key)
        return (f is not None, f.annotation if f is not None else None)
    if typing.get_origin(tp) is dict:
        return True, typing.get_args(tp)[1]
    return True, Any  # free-form below (Any, lists)


def _is_open(tp: Any) -> bool:
    tp = _unwrap(tp)
    return tp is Any or (typing.get_origin(tp) is dict and _unwrap(typing.get_args(tp)[1]) is Any)


def config_keys() -> list[tuple[str, str, Any, str]]:
    """Every key of :class:`Config`: ``(dotted key, type, default, help)`` in schema order.

    Per-teacher keys are listed as ``teachers.<name>.KEY``.
    """
    out: list[tuple[str, str, Any, str]] = []

    def walk(model: type[BaseModel], prefix: str, defaults: Any) -> None:
        for name, f in model.model_fields.items():
            tp = _unwrap(f.annotation)
            key = prefix + name
            default = getattr(defaults, name, None) if defaults is not None else None
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                walk(tp, key + ".", default)
            elif typing.get_origin(tp) is dict and isinstance(_unwrap(typing.get_args(tp)[1]), type) and \
                    issubclass(_unwrap(typing.get_args(tp)[1]), BaseModel):
                walk(_unwrap(typing.get_args(tp)[1]), key + ".<name>.", _unwrap(typing.get_args(tp)[1])())
            else:
                out.append((key, _type_name(f.annotation), default, f.description or ""))

    walk(Config, "", Config())
    return out


def _type_name(tp: Any) -> str:
    tp0 = _unwrap(tp)
    opt = " | null" if tp0 is not tp else ""
    if typing.get_origin(tp0) is Literal:
        return " | ".join(map(str, typing.get_args(tp0))) + opt
    if typing.get_origin(tp0) is Union:
        return " | ".join(_type_name(a) for a in typing.get_args(tp0)) + opt
    if typing.get_origin(tp0) is typing.Literal:
        return " | ".join(map(str, typing.get_args(tp0))) + opt
    if typing.get_origin(tp0) in (list, dict):
        args = ", ".join(getattr(a, "__name__", str(a)).replace("typing.", "") for a in typing.get_args(tp0))
        return f"{typing.get_origin(tp0).__name__}[{args}]" + opt
    return getattr(tp0, "__name__", str(tp0)) + opt


def _all_dotted() -> list[str]:
    return [k for k, *_ in config_keys()]


def _nearest(bad: str) -> str | None:
    known = _all_dotted()
    generic = bad
    parts = bad.split(".")
    if len(parts) > 2 and parts[0] == "teachers":  # teachers.NAME.KEY -> teachers.<name>.KEY
        generic = ".".join(["teachers", "<name>"] + parts[2:])
    hit = difflib.get_close_matches(generic, known, n=1, cutoff=0.6)
    if not hit:  # the last part alone, among keys of the same section
        sec = generic.rpartition(".")[0]
        pool = [k for k in known if k.rpartition(".")[0] == sec]
        hit = difflib.get_close_matches(generic, pool, n=1, cutoff=0.4)
    if not hit:
        return None
    if generic != bad:
        return hit[0].replace("<name>", parts[1])
    return hit[0]


def check_keys(data: Mapping[str, Any], source: str, prefix: str = "", tp: Any = None) -> None:
    """Reject any key of ``data`` that :class:`Config` does not have.

    Raises:
        ConfigError: ``unknown config key 'a.b' in SOURCE (did you mean 'a.c'?)``.
    """
    tp = Config if tp is None else tp
    if not isinstance(data, Mapping) or _is_open(tp):
        return
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        ok, sub = _child(tp, str(key))
        if not ok:
            near = _nearest(dotted)
            hint = f" (did you mean {near!r}?)" if near else ""
            raise ConfigError(f"unknown config key {dotted!r} in {source}{hint}; `leader config keys` lists them all")
        sub_u = _unwrap(sub)
        if isinstance(value, Mapping) and (
                (isinstance(sub_u, type) and issubclass(sub_u, BaseModel)) or typing.get_origin(sub_u) is dict):
            check_keys(value, source, dotted + ".", sub)
        elif isinstance(value, Mapping) and not _is_open(sub) and sub is not Any:
            raise ConfigError(f"config key {dotted!r} in {source} takes a {_type_name(sub)}, not a mapping")


# ----------------------------------------------------------------------------- loading
def _read_yaml(path_or_preset: str | Path) -> tuple[dict, str]:
    name = str(path_or_preset)
    if name in PRESETS:
        text = resources.files("leader").joinpath("configs", f"{name}.yaml").read_text()
        source = f"preset {name!r}"
    else:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"config {name!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
            )
        text = path.read_text()
        source = f"config file {path}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level of a config must be a mapping, got {type(data).__name__}")
    return data, source


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """Return ``base`` updated recursively by ``update`` (mappings merge, other values replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw  # validated (and named) against the schema below
    return key.strip().split("."), value


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested plain-dict config (no schema check).

    Raises:
        ConfigError: an override without ``=``, or one that descends into a non-mapping.
    """
    out = _plain(cfg)
    for item in overrides or ():
        parts, value = _parse_override(item)
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping in the config")
            node = nxt
        node[parts[-1]] = value
    return out


def _plain(cfg: Any) -> dict:
    if isinstance(cfg, BaseModel):
        return cfg.model_dump(mode="python", exclude_unset=False)
    return copy.deepcopy(dict(cfg))


def _validate(data: Mapping[str, Any], sources: Mapping[str, str]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        src = next((sources[k] for k in (key, *(".".join(loc[:i]) for i in range(len(loc) - 1, 0, -1)))
                    if k in sources), "the paper defaults")
        if err["type"] == "extra_forbidden":
            near = _nearest(key)
            hint = f" (did you mean {near!r}?)" if near else ""
            raise ConfigError(f"unknown config key {key!r} in {src}{hint}") from None
        got = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"config key {key!r}: {msg} (got {got!r}, from {src})") from None


def load_config(preset_or_path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load the paper defaults, merge a preset / YAML file, apply overrides, validate.

    Args:
        preset_or_path: ``None`` (paper defaults only), a preset name from :data:`PRESETS`,
            or a path to a YAML file.
        overrides: ``key.sub=value`` strings (``--set``); values are parsed as YAML.

    Returns:
        The validated :class:`Config`.

    Raises:
        FileNotFoundError: ``preset_or_path`` is neither a preset nor a file.
        ConfigError: (a ``ValueError``) an unknown key — with the nearest known one — or a
            value of the wrong type / outside its range, naming the key and its source.
    """
    base, _ = _read_yaml("paper")
    sources: dict[str, str] = {}
    if preset_or_path is not None and str(preset_or_path) != "paper":
        layer, src = _read_yaml(preset_or_path)
        check_keys(layer, src)
        sources.update({k: src for k in _dotted_keys(layer)})
        base = deep_merge(base, layer)
    overrides = list(overrides or ())
    for item in overrides:
        parts, value = _parse_override(item)
        check_keys(_nest(parts, value), f"--set {item}")
        sources[".".join(parts)] = f"--set {item}"
    return _validate(apply_overrides(base, overrides), sources)


def _nest(parts: list[str], value: Any) -> dict:
    out: Any = value
    for p in reversed(parts):
        out = {p: out}
    return out


def _dotted_keys(d: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + str(k))
        if isinstance(v, Mapping):
            out += _dotted_keys(v, f"{prefix}{k}.")
    return out


def as_config(cfg: Config | Mapping[str, Any] | None) -> Config:
    """``cfg`` as a validated :class:`Config` (a plain mapping is checked like a YAML file).

    Raises:
        ConfigError: unknown keys or invalid values.
    """
    if cfg is None:
        return load_config()
    if isinstance(cfg, Config):
        return cfg
    data = _plain(cfg)
    check_keys(data, "the given config mapping")
    return _validate(data, {})


def with_overrides(cfg: Config, overrides: Iterable[str] | Mapping[str, Any]) -> Config:
    """A copy of ``cfg`` with ``key=value`` strings or a nested mapping applied, validated.

    Raises:
        ConfigError: unknown keys or invalid values.
    """
    data = cfg.model_dump(mode="python")
    if isinstance(overrides, Mapping):
        check_keys(overrides, "the given overrides")
        return _validate(deep_merge(data, overrides), {})
    overrides = list(overrides)
    sources = {}
    for item in overrides:
        parts, value = _parse_override(item)
        check_keys(_nest(parts, value), f"--set {item}")
        sources[".".join(parts)] = f"--set {item}"
    return _validate(apply_overrides(data, overrides), sources)
