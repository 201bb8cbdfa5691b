"""CrossLMMConfig: one nested HF config for the vision tower, the LLM and the CrossLMM knobs."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping
from typing import Literal, get_args

from transformers import AutoConfig, PretrainedConfig

from crosslmm.model.vision import vision_config_from_dict, vision_grid_size

POOLING_MODES = ("avg", "max", "bilinear")
POOLING_POSITIONS = ("before_projector", "after_projector")
V2V_SCOPES = ("frame", "video")
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")
KV_SOURCES = ("encoder", "projector")
TEXT_MODEL_TYPES = ("qwen2", "llama")
DECODE_MEMORY_MODES = ("full", "topk_frames")
# docs/baselines.md; the same names as crosslmm.baselines.REDUCERS (tests/test_baselines.py checks it)
VisualReducer = Literal["pool", "random", "salient", "merge", "fastv"]
VISUAL_REDUCERS = get_args(VisualReducer)


def _text_config_from(value: dict | PretrainedConfig | None) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    value = dict(value or {"model_type": "qwen2"})
    model_type = value.pop("model_type", None)
    if model_type not in TEXT_MODEL_TYPES:
        raise ValueError(f"text_config.model_type must be one of {TEXT_MODEL_TYPES}, got {model_type!r}")
    return AutoConfig.for_model(model_type, **value)


def _choice(name: str, value, options: tuple) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def invalid_budgets(budgets: list, grid: int | None) -> list:
    """The entries of ``budgets`` that are not pooled grids s*s with s <= ``grid`` (None: any s)."""
    return [
        k
        for k in budgets
        if isinstance(k, bool)
        or not isinstance(k, int)
        or k < 1
        or math.isqrt(k) ** 2 != k
        or (grid is not None and math.isqrt(k) > grid)
    ]


def validate_decode_memory(decode_memory: str, decode_frames: int) -> None:
    """The bounded-decode setting (config fields, or a ``CrossLMMCache`` override at generate time)."""
    _choice("decode_memory", decode_memory, DECODE_MEMORY_MODES)
    if isinstance(decode_frames, bool) or not isinstance(decode_frames, int) or decode_frames < 1:
        raise ValueError(
            f"decode_frames must be a positive int (frames kept per layer), got {decode_frames!r}"
        )


class CrossLMMConfig(PretrainedConfig):
    """Vision tower + pooling projector + decoder with gated V2V/T2V cross-attention.

    Cross-attention placement: ``cross_attention_layers`` (explicit decoder-layer indices, each block runs
    right after that layer) wins over ``cross_attention_every`` (after layers 0, K, 2K, ...; for K > 1 not
    after the last layer, where a V2V update could no longer reach any supervised position); an empty list
    or ``cross_attention_every=0`` disables cross-attention, giving a plain pooled LLaVA model.
    ``cross_attention_kv_source="encoder"`` projects the raw, unpooled encoder features straight to each
    block's keys/values (the paper's efficiency numbers only fit this); ``"projector"`` routes them through
    the MLP projector first. ``video_end_token_id`` (optional) marks one slot after each video that receives
    a learned vector instead of its token embedding (LLaVA-OneVision's trailing ``image_newline``).

    ``decode_memory`` says what a generated token's T2V attends to: ``"full"`` (exact, every cached original
    token) or ``"topk_frames"``: per cross layer, only the ``decode_frames`` frames the prompt's last text
    attended to most at prefill (docs/streaming.md, "Bounded decode"). The prompt itself is always exact.

    ``tokens_per_frame_choices`` (elastic budgets): the pooled-token budgets the model is trained at, each a
    pooled grid ``s x s`` of the tower's patch grid; training draws one per batch and inference may use any of
    them, read from the inputs (video tokens / frames). None: one fixed budget, ``tokens_per_frame``, which is
    otherwise the default budget (the processor's) and must be one of the choices. A budget outside that set is
    refused unless ``allow_untrained_budgets`` (an explicit override, e.g. ``from_pretrained(dir,
    allow_untrained_budgets=True)``): then any pooled grid of the tower runs, with a warning.

    ``visual_reducer`` (the baselines of docs/baselines.md): ``"pool"`` (uniform pooling, the default);
    ``"random"``, ``"salient"`` or ``"merge"`` reduce each frame to ``tokens_per_frame`` = k tokens, any k up
    to the patches per frame, where pooling runs (``visual_reducer_seed`` fixes random drop's draws);
    ``"fastv"`` feeds every patch (``tokens_per_frame`` = patches per frame) and, from decoder layer
    ``fastv_layer`` on, attends only to the ``fastv_keep`` visual tokens per frame the last prompt token
    attended to most in layer ``fastv_layer - 1``. Reducers have one fixed budget and FastV no cross-attention.
    ``salient_layer`` (``"salient"`` only): the vision tower's transformer layer (an index into its encoder
    layers, negative from the end, as HF's ``attentions``) whose attention ranks the patches; None: the last.
    ``merge_proportional_attention`` (``"merge"`` only): ToMe's proportional attention, log(size) of each
    merged visual token added to its attention logits in every decoder layer (eager or SDPA attention).
    """

    model_type = "crosslmm"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        tokens_per_frame: int = 9,
        tokens_per_frame_choices: list[int] | None = None,
        pooling_mode: str = "avg",
        pooling_antialias: bool = True,
        pooling_position: str = "before_projector",
        cross_attention_every: int = 4,
        cross_attention_layers: list[int] | None = None,
        v2v: bool = True,
        t2v: bool = True,
        v2v_scope: str = "frame",
        cross_attention_mlp: bool = False,
        cross_attention_kv_source: str = "encoder",
        vision_feature_layer: int = -1,
        projector_type: str = "mlp2x_gelu",
        video_token_id: int | None = None,
        video_end_token_id: int | None = None,
        vision_chunk_size: int = 32,
        decode_memory: str = "full",
        decode_frames: int = 16,
        allow_untrained_budgets: bool = False,
        visual_reducer: VisualReducer = "pool",
        visual_reducer_seed: int = 0,
        fastv_layer: int | None = None,
        fastv_keep: int | None = None,
        salient_layer: int | None = None,
        merge_proportional_attention: bool = True,
        **kwargs,
    ):
        if isinstance(vision_config, dict):
            vision_config = vision_config_from_dict(vision_config)
        self.vision_config = vision_config
        self.text_config = _text_config_from(text_config)
        self.tokens_per_frame = tokens_per_frame
        self.tokens_per_frame_choices = (
            list(tokens_per_frame_choices) if tokens_per_frame_choices is not None else None
        )
        self.pooling_mode = pooling_mode
        self.pooling_antialias = pooling_antialias
        self.pooling_position = pooling_position
        self.cross_attention_every = cross_attention_every
        self.cross_attention_layers = (
            list(cross_attention_layers) if cross_attention_layers is not None else None
        )
        self.v2v = v2v
        self.t2v = t2v
        self.v2v_scope = v2v_scope
        self.cross_attention_mlp = cross_attention_mlp
        self.cross_attention_kv_source = cross_attention_kv_source
        self.vision_feature_layer = vision_feature_layer
        self.projector_type = projector_type
        self.video_token_id = video_token_id
        self.video_end_token_id = video_end_token_id
        self.vision_chunk_size = vision_chunk_size
        self.decode_memory = decode_memory
        self.decode_frames = decode_frames
        self.allow_untrained_budgets = allow_untrained_budgets
        self.visual_reducer = visual_reducer
        self.visual_reducer_seed = visual_reducer_seed
        self.fastv_layer = fastv_layer
        self.fastv_keep = fastv_keep
        self.salient_layer = salient_layer
        self.merge_proportional_attention = merge_proportional_attention
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)
        self.validate_crosslmm()

    @classmethod
    def from_fields(cls, source: str = "CrossLMMConfig", **fields) -> CrossLMMConfig:
        """A config built from fields in Python (``make_tiny``, ``build``, the bench presets): a misspelt field
        is refused, naming ``source``, as the YAML configs refuse it (:func:`check_fields`)."""
        check_fields(fields, source)
        return cls(**fields)

    def to_dict(self) -> dict:
        """The saved fields; ``allow_untrained_budgets`` is an override for one load, never written to disk."""
        values = super().to_dict()
        values.pop("allow_untrained_budgets", None)
        return values

    @property
    def pooled_grid(self) -> int:
        return math.isqrt(self.tokens_per_frame)

    @property
    def trained_budgets(self) -> list[int]:
        """Tokens per frame this model answers at: the elastic choices, or the one fixed budget."""
        return list(self.tokens_per_frame_choices or [self.tokens_per_frame])

    def check_budget(self, tokens_per_frame: int, source: str = "the inputs") -> None:
        """Refuse a budget the model was not trained at, listing the trained ones; with
        ``allow_untrained_budgets``, warn instead (the budget must still be a pooled grid of the tower)."""
        if tokens_per_frame in self.trained_budgets:
            return
        grid = vision_grid_size(self.vision_config) if self.vision_config is not None else None
        if self.allow_untrained_budgets and not invalid_budgets([tokens_per_frame], grid):
            warnings.warn(
                f"{source} use {tokens_per_frame} tokens per frame, a budget this model was not trained at "
                f"(trained: {self.trained_budgets}); allowed by allow_untrained_budgets, expect lower accuracy",
                stacklevel=2,
            )
            return
        if invalid_budgets([tokens_per_frame], grid):  # no override runs it, so none is suggested
            limit = f" with s <= {grid} (the tower's patch grid)" if grid is not None else ""
            hint = f"; {tokens_per_frame} is no pooled grid s*s{limit}: allow_untrained_budgets cannot run it"
        else:  # a pooled grid, refused only because the override is off
            hint = " (or load with allow_untrained_budgets=True to run a pooled grid it was not trained at)"
        raise ValueError(
            f"{source} use {tokens_per_frame} tokens per frame, which do not match a trained budget: this "
            f"model was trained at tokens_per_frame in {self.trained_budgets}; build the prompt with "
            f"CrossLMMProcessor(..., tokens_per_frame=K) for one of them{hint}"
        )

    def resolved_cross_layers(self) -> list[int]:
        """Decoder-layer indices after which a dual cross-attention layer runs (empty = none)."""
        if not (self.v2v or self.t2v):
            return []
        if self.cross_attention_layers is not None:
            return sorted(self.cross_attention_layers)
        k = self.cross_attention_every
        return list(range(0, self.text_config.num_hidden_layers, k)) if k else []

    def validate_crosslmm(self) -> None:
        """Fail at construction, naming the field, instead of deep inside a forward pass."""
        _choice("visual_reducer", self.visual_reducer, VISUAL_REDUCERS)
        if not isinstance(self.merge_proportional_attention, bool):
            raise ValueError(
                f"merge_proportional_attention must be a bool, got {self.merge_proportional_attention!r}"
            )
        if not self.merge_proportional_attention and self.visual_reducer != "merge":
            raise ValueError(
                f"merge_proportional_attention is the merge reducer's; visual_reducer is {self.visual_reducer!r}"
            )
        tpf = self.tokens_per_frame
        if self.visual_reducer != "pool":
            self._validate_reducer()
        elif self.salient_layer is not None:
            raise ValueError("salient_layer is the salient reducer's; visual_reducer is 'pool'")
        elif not isinstance(tpf, int) or tpf < 1 or math.isqrt(tpf) ** 2 != tpf:
            raise ValueError(f"tokens_per_frame must be a positive square (1, 4, 9, 16, ...), got {tpf!r}")
        _choice("pooling_mode", self.pooling_mode, POOLING_MODES)
        _choice("pooling_position", self.pooling_position, POOLING_POSITIONS)
        _choice("v2v_scope", self.v2v_scope, V2V_SCOPES)
        _choice("projector_type", self.projector_type, PROJECTOR_TYPES)
        _choice("cross_attention_kv_source", self.cross_attention_kv_source, KV_SOURCES)
        n_layers = self.text_config.num_hidden_layers
        if self.cross_attention_layers is not None:
            bad = [i for i in self.cross_attention_layers if not isinstance(i, int) or not 0 <= i < n_layers]
            if bad or len(set(self.cross_attention_layers)) != len(self.cross_attention_layers):
                raise ValueError(
                    f"cross_attention_layers must be distinct indices in [0, {n_layers}), "
                    f"got {self.cross_attention_layers}"
                )
        elif not isinstance(self.cross_attention_every, int) or self.cross_attention_every < 0:
            raise ValueError(f"cross_attention_every must be an int >= 0, got {self.cross_attention_every!r}")
        if self.vision_config is not None:
            grid = vision_grid_size(self.vision_config)
            if self.pooled_grid > grid:
                raise ValueError(
                    f"tokens_per_frame={tpf} needs a {self.pooled_grid}x{self.pooled_grid} grid, "
                    f"but the vision tower only gives {grid}x{grid} patches"
                )
        self._validate_budget_choices()
        if self.video_end_token_id is not None and self.video_end_token_id == self.video_token_id:
            raise ValueError(
                "video_end_token_id must differ from video_token_id (layouts count video tokens)"
            )
        if not isinstance(self.vision_chunk_size, int) or self.vision_chunk_size < 1:
            raise ValueError(f"vision_chunk_size must be a positive int, got {self.vision_chunk_size!r}")
        validate_decode_memory(self.decode_memory, self.decode_frames)

    def _validate_reducer(self) -> None:
        """A baseline reducer (not "pool"): one fixed budget k <= the patches per frame; FastV's fields."""
        name, tpf = self.visual_reducer, self.tokens_per_frame
        if self.tokens_per_frame_choices is not None or self.allow_untrained_budgets:
            raise ValueError(
                f"visual_reducer={name!r} has one fixed budget (tokens_per_frame): elastic budgets "
                "(tokens_per_frame_choices, allow_untrained_budgets) work with visual_reducer='pool' only"
            )
        patches = vision_grid_size(self.vision_config) ** 2 if self.vision_config is not None else None
        if isinstance(tpf, bool) or not isinstance(tpf, int) or tpf < 1 or (patches and tpf > patches):
            raise ValueError(
                f"tokens_per_frame must be a positive int <= {patches or 'the patches per frame'} for "
                f"visual_reducer={name!r}, got {tpf!r}"
            )
        if isinstance(self.visual_reducer_seed, bool) or not isinstance(self.visual_reducer_seed, int):
            raise ValueError(f"visual_reducer_seed must be an int, got {self.visual_reducer_seed!r}")
        layer = self.salient_layer
        if name != "salient" and layer is not None:
            raise ValueError(f"salient_layer is the salient reducer's; visual_reducer is {name!r}")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise ValueError(f"salient_layer must be an int (a tower layer) or None, got {layer!r}")
        if name != "fastv":
            if self.fastv_layer is not None or self.fastv_keep is not None:
                raise ValueError(f"fastv_layer/fastv_keep are FastV's; visual_reducer is {name!r}")
            return
        if patches is not None and tpf != patches:
            raise ValueError(
                f"visual_reducer='fastv' feeds every patch to the LLM: tokens_per_frame must be {patches} "
                f"(the tower's patches per frame), got {tpf}"
            )
        n_layers = self.text_config.num_hidden_layers
        layer, keep = self.fastv_layer, self.fastv_keep
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < n_layers:
            raise ValueError(
                f"fastv_layer (decoder layers that see every visual token) must be an int in [1, {n_layers}), "
                f"got {layer!r}"
            )
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= tpf:
            raise ValueError(
                f"fastv_keep (visual tokens kept per frame) must be an int in [1, {tpf}], got {keep!r}"
            )
        if self.resolved_cross_layers():
            raise ValueError(
                "visual_reducer='fastv' is a baseline without cross-attention: set v2v=False and t2v=False "
                "(or cross_attention_every=0)"
            )

    def _validate_budget_choices(self) -> None:
        """Each elastic budget must be a pooled grid s x s with s <= the tower's grid (exact block means
        where s divides it, adaptive pooling otherwise, as ``pool_frames`` does for the fixed budget)."""
        choices = self.tokens_per_frame_choices
        if choices is None:
            return
        grid = vision_grid_size(self.vision_config) if self.vision_config is not None else None
        valid = f"valid budgets: {[s * s for s in range(1, grid + 1)]}" if grid else "perfect squares"
        bad = invalid_budgets(choices, grid)
        if bad or not choices or len(set(choices)) != len(choices):
            where = f" of the tower's {grid}x{grid} patch grid" if grid else ""
            raise ValueError(
                f"tokens_per_frame_choices must be distinct pooled grids s*s{where} ({valid}), got {choices}"
                + (f"; invalid: {bad}" if bad else "")
            )
        if self.tokens_per_frame not in choices:
            raise ValueError(
                f"tokens_per_frame={self.tokens_per_frame} (the default budget) must be one of "
                f"tokens_per_frame_choices {choices}"
            )
        self.tokens_per_frame_choices = sorted(choices)


# Fields a config built in Python may set: CrossLMMConfig's own, PretrainedConfig's, and the token ids that
# the LLM's generation reads. Anything else would be stored by PretrainedConfig as an unused attribute.
_GENERATION_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")


def known_fields() -> set[str]:
    """The keyword arguments ``CrossLMMConfig`` reads (its own fields, PretrainedConfig's, the token ids)."""
    own = set(inspect.signature(CrossLMMConfig.__init__).parameters)
    base = set(inspect.signature(PretrainedConfig.__init__).parameters)
    return (own | base | set(_GENERATION_TOKEN_IDS)) - {"self", "kwargs"}


def check_fields(fields: Mapping, source: str = "CrossLMMConfig") -> None:
    """Refuse a misspelt field (``cross_layers=`` for ``cross_attention_layers=``), naming it, as the YAML
    configs do: ``CrossLMMConfig(**fields)`` itself keeps unknown kwargs, as every HF config does (a saved
    config.json may hold keys of other transformers versions), so each path that builds a config from its
    own fields calls this: ``CrossLMMConfig.from_fields`` (``make_tiny``, ``build_from_pretrained``, the bench
    presets), ``load_config_yaml`` and the compare demo's candidates."""
    known = known_fields()
    if unknown := sorted(set(fields) - known):
        raise ValueError(f"{source}: unknown CrossLMMConfig field(s) {unknown}; known: {sorted(known)}")
