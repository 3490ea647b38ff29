"""One typed settings object, read from `spritesafe.toml` and `SPRITESAFE_*` environment.

Precedence, strongest first: keyword arguments, environment (nested fields with `__`, e.g.
`SPRITESAFE_DEDUPE__PHASH_RADIUS=4`), the TOML file, defaults. The TOML file is the one named
by `SPRITESAFE_CONFIG`, else `./spritesafe.toml` if present. Relative paths in it resolve
against the file's folder, so a run from another directory writes to the same catalog.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "SPRITESAFE_CONFIG"
OLLAMA_HOSTS_ENV = "SPRITESAFE_OLLAMA_HOSTS"  # comma-separated; same as SPRITESAFE_OLLAMA__HOSTS
DEFAULT_CONFIG_NAME = "spritesafe.toml"

_toml_path: ContextVar[Path | None] = ContextVar("spritesafe_toml_path", default=None)


class Section(BaseModel):
    """A config section: an unknown key (a typo, a renamed setting) is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ImageLimits(Section):
    """What an input may be before we decode it; anything beyond is rejected with a reason."""

    max_bytes: int = Field(32 * 2**20, gt=0, description="largest file accepted")
    max_pixels: int = Field(
        40_000_000, gt=0, description="width x height above this is refused before decoding"
    )
    max_side: int = Field(16_384, gt=0, description="longest side accepted")
    animated: Literal["first_frame", "reject"] = "first_frame"


class CanonicalSettings(Section):
    """Pixel-art canonicalization: alpha onto one fixed background, then the native grid."""

    background: tuple[int, int, int] = (255, 255, 255)
    # No practical cap: the reduction is lossless whatever the scale; a cap only makes coarse
    # sprites (a native 8x tile enlarged 10x) canonicalize differently from their originals.
    max_scale: int = Field(256, ge=1, description="largest integer pixel scale detected")
    reject_blank: bool = Field(True, description="single-colour images are rejected as blank")

    @field_validator("background", mode="before")
    @classmethod
    def _parse_hex(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.lstrip("#")
            if len(text) != 6:
                raise ValueError(f"background must be #rrggbb, got {value!r}")
            return tuple(int(text[i : i + 2], 16) for i in (0, 2, 4))
        return value

    @field_validator("background")
    @classmethod
    def _check_range(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(0 <= c <= 255 for c in value):
            raise ValueError(f"background channels must be 0..255, got {value}")
        return value


class DedupeSettings(Section):
    # A pair is near-duplicate when both hashes are within their radius. The multi-index
    # finds every pair within phash radius <= 6 (8 bands, pairs of bands as keys).
    phash_radius: int = Field(6, ge=0, le=6)
    dhash_radius: int = Field(6, ge=0, le=64)
    # A 64-bit hash of a 3x5 glyph says little: below this many content pixels only exact
    # duplicates count (measured: tiny glyph tiles otherwise chain into clusters of ~900).
    min_content_pixels: int = Field(64, ge=0)
    chunk_size: int = Field(50_000, gt=0, description="new images deduped per transaction")


class IngestSettings(Section):
    batch_size: int = Field(512, gt=0, description="items committed per transaction")
    # Two batches are in memory at once (one analyzed while the other commits), each with a
    # copy on its way to the decode workers: 4 x 32 MB, whatever an archive holds.
    batch_bytes: int = Field(32 * 2**20, gt=0, description="bytes read per batch, at most")
    workers: int = Field(0, ge=0, description="decode processes; 0 = one per CPU, 1 = inline")
    follow_symlinks: bool = True
    read_archives: bool = True


class HttpSettings(Section):
    concurrency: int = Field(8, gt=0)
    per_host_rps: float = Field(4.0, gt=0, description="requests per second to any one host")
    timeout_s: float = Field(20.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    max_bytes: int = Field(16 * 2**20, gt=0)
    user_agent: str = "spritesafe/0.1 (+https://github.com/spritesafe/spritesafe)"
    respect_robots: bool = True


class OllamaSettings(Section):
    """The vision LLM labeler. Hosts share the work; each takes `per_host_concurrency`."""

    hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:11434"]
    )
    model: str = "qwen2.5vl:3b"
    per_host_concurrency: int = Field(2, gt=0)
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(2, ge=0, description="further attempts after a host or server error")
    backoff_s: float = Field(1.0, ge=0)
    breaker_failures: int = Field(3, gt=0, description="consecutive failures that open a host")
    breaker_cooldown_s: float = Field(30.0, ge=0)
    keep_alive: str = "10m"
    seed: int = 1
    samples: int = Field(1, ge=1, description="self-consistency: answers per image")
    # One answer: temperature 0 (reproducible). Several: sampled, or they would all agree.
    sample_temperature: float = Field(0.7, ge=0)
    image_size: int = Field(384, ge=32, description="sprites are enlarged (nearest) to about this")

    @field_validator("hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        # SPRITESAFE_OLLAMA__HOSTS="http://a:11434,http://b:11434" as well as a TOML list.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value


class LabelSettings(Section):
    labeler: Literal["ollama", "teacher"] = "ollama"
    budget: int = Field(
        500,
        ge=0,
        description="calls per run: a sheet, or a sprite labelled (x ollama.samples); "
        "re-asks, confirmations and rechecks come on top",
    )
    audit_share: float = Field(0.1, ge=0, le=1, description="uniform sample, for base rates")
    # The rest of the budget is steered by the promoted model (else the newest model the
    # gate refused for its INT8 file, by its FP32 file; else the teacher): a small
    # uniform exploration share, then the top scores and, `near_share` of them, the scores
    # nearest the threshold; at most `per_cluster` picks of one near-duplicate cluster.
    # Exploration finds what the ranking misses: when a pass screens, its calls buy sheets of
    # random never-screened sprites (16 a call) and their follow-ups, else random sprites.
    explore_share: float = Field(0.05, ge=0, le=1, description="uniform, labelled explore")
    near_share: float = Field(0.25, ge=0, le=1, description="of the steered part")
    per_cluster: int = Field(2, ge=1, description="steered picks per near-duplicate cluster")
    # Group screening (labelers.screen): `screen_share` of the budget goes to contact sheets
    # of screen_grid x screen_grid sprites (one call each); flagged sprites are then labelled
    # one by one from `followup_share` of the budget, with a `screen_check_share` random sample
    # of the unflagged ones (the screen's measured recall). Below `screen_recall_floor` even
    # at the check sample's 95 % bound, with at least `screen_min_positives` positives seen,
    # the next runs use smaller sheets.
    # Most of the budget goes there: sheets are filled in the steering order, and in the loop
    # benchmark sheets + follow-ups found ~26 positives per 100 calls against ~9 for labelling
    # the top scores one by one (bench/out/loop3). `screen_share` is where the sheets start:
    # room their follow-ups leave buys more sheets (at the run's cost per sheet), and only
    # what is left after those goes to steered picks one by one.
    screen_share: float = Field(0.4, ge=0, le=1)
    followup_share: float = Field(0.45, ge=0, le=1)
    screen_grid: int = Field(4, ge=1, le=8, description="1 = no screening")
    screen_cell: int = Field(96, ge=32, description="px per cell")
    screen_check_share: float = Field(0.01, ge=0, le=1)
    screen_recall_floor: float = Field(0.7, ge=0, le=1)
    screen_min_positives: int = Field(5, ge=1)
    # Label hygiene: an LLM positive gets a second opinion (one more sample at the sampling
    # temperature) before it may train; LLM negatives that the promoted model confidently
    # calls positive are asked again, `recheck_share` of the budget at most. Both come on top
    # of the budget and are reported as `confirm` and `recheck` calls.
    confirm_positives: bool = True
    recheck_share: float = Field(0.05, ge=0, le=1)
    # The budget is spent in passes of `pass_calls` calls (labelers.stage): between passes a
    # head on the frozen backbone, refitted on every label so far (`refresh_head`), ranks what
    # is left. The budget is a cap, not a target: once the ranking knows the concept (a model,
    # or that head), a run ends when its last two passes (the first pass's partner is the last
    # pass of the run before) found positives at more than `max_calls_per_positive` calls
    # each (0: spend the whole budget), net of the LLM's false alarms expected among the
    # sprites they showed it (review.llm_false_alarm_prior, or as people measured it).
    # Judged by one pass, a limit of 5 ended runs on noise
    # (57 % found in the loop benchmark); by two, see README "The loop". A budget covering
    # every candidate is one pass.
    pass_calls: int = Field(100, ge=0, description="calls per pass; 0 = one pass")
    refresh_head: bool = True
    max_calls_per_positive: float = Field(5.0, ge=0, description="0 = spend the whole budget")
    batch_size: int = Field(32, gt=0, description="labels committed per transaction")
    teacher_pool: int = Field(10, ge=1, description="teacher pre-screens budget x this")
    rubric: Path | None = Field(None, description="rubric TOML; default labelers/rubrics")


class SnapshotSettings(Section):
    """Freezing effective labels into a dataset version: target, splits, balance."""

    # The binary target: explicit is always positive; suggestive counts when this is true.
    suggestive_is_positive: bool = False

    @property
    def positive(self) -> frozenset[str]:
        """The categories that count as the positive class."""
        return frozenset(
            {"explicit", "suggestive"} if self.suggestive_is_positive else {"explicit"}
        )

    # The weakest label a snapshot accepts: human > llm > teacher (photo-trained pre-screen).
    min_label_source: Literal["human", "llm", "teacher"] = "llm"
    min_agreement: float = Field(2 / 3, gt=0, le=1, description="LLM votes needed, as a share")
    # Realistic share of positives for validation and test; empty = estimated from the
    # uniform audit sample of the label stage.
    target_base_rate: float | None = Field(None, gt=0, lt=1)
    val_share: float = Field(0.15, gt=0, lt=0.5, description="of negative clusters")
    test_share: float = Field(0.15, gt=0, lt=0.5, description="of negative clusters")
    # Positives each of validation and test holds at least (at most 15 % of the positives
    # each): at a low rate the rate alone leaves a handful, too few to choose epochs,
    # thresholds and models by. The extra ones are weighed down so precision, PR-AUC and the
    # threshold read at the base rate (the manifest's `eval_pos_weight`). 0 = the rate only.
    min_eval_positives: int = Field(20, ge=0)
    # Training split only: downsample negatives to this many per positive, weight the loss
    # by the class ratio instead, or keep it as labelled.
    # "resample" keeps every negative and training draws each batch with
    # train.positive_share positives, so every epoch sees all negatives once.
    balance: Literal["resample", "downsample", "weights", "none"] = "resample"
    negatives_per_positive: float = Field(4.0, gt=0)
    # An LLM positive trains only when confirmed: a second LLM answer agreeing (label stage,
    # label.confirm_positives) or a person. Unconfirmed ones are left out and counted.
    confirmed_positives_only: bool = True
    # A contact sheet's flag is a second LLM opinion of its own (another prompt, another
    # image): a sprite a sheet flagged and its one-by-one answer called positive is confirmed
    # without a confirm call. Against per-call noise it is as good as a second sample, and
    # against an error the LLM always makes (sticky) neither helps: people do (review).
    sheet_confirms: bool = True
    # The audit base rate is corrected for the LLM's errors once people have decided at least
    # this many audit images (the grid review's `audit` items).
    min_reviewed_audit: int = Field(20, ge=1)
    # Easy negatives without a label call: unlabelled sprites that every contact sheet passed
    # and that the model steering the label stage ranks in the bottom `screened_below` of
    # its out-of-sample scores. Two independent opinions, as for a confirmed positive; never
    # one alone. Training split only ("resample" balance), at most `screened_negatives` per
    # labelled training image (0: none). Evaluation keeps labelled images only.
    screened_negatives: float = Field(2.0, ge=0)
    screened_below: float = Field(0.8, gt=0, le=1, description="share of the model's ranking")
    # Easy negatives from the backbone alone, for when labels are few: a linear probe on
    # the self-supervised features, fitted on the training split's labels, ranks every
    # unlabelled candidate; those in its bottom `probe_below` may train as negatives, at most
    # `probe_negatives` per labelled training image (0: none) and only until training holds
    # `probe_negatives_until` negatives. Resample balance only. With 193 labelled negatives,
    # each seen ~370 times in 1,500 steps, the student learns them by heart; the probe's
    # bottom half holds ~0.2 % positives against the corpus's 2.7 %. bench.sample_efficiency,
    # 300 clean labels, four label subsets: holdout PR-AUC 0.308 -> 0.352, every subset up.
    probe_negatives: float = Field(10.0, ge=0)
    probe_negatives_until: int = Field(2500, ge=0)
    probe_below: float = Field(0.5, gt=0, le=1, description="share of the probe's ranking")
    # Confident learning against the LLM's false alarms (cleanlab's prune by noise rate):
    # with a self-supervised backbone, every label is judged out of sample and as many
    # training positives as it estimates are wrong, the least believed, are left out.
    # Measured on all 10,000 noisy labels of bench.sample_efficiency: 0.444 -> 0.571.
    prune_false_positives: bool = True
    # ... but only from this many LLM positives up: K-fold heads on a couple of dozen score
    # many real positives confidently negative. bench.sample_efficiency, two label subsets
    # each (README "Pruning needs enough positives"): at 23-27 positives pruning changed
    # holdout PR-AUC by +0.014/-0.136 (clean) and -0.003/-0.129 (noisy); at 36-41 noisy
    # by +0.065/-0.028; at 383 noisy by +0.127.
    min_judged_positives: int = Field(30, ge=0)
    min_positives: int = Field(20, ge=3, description="refuse to snapshot with fewer")
    min_negatives: int = Field(60, ge=3, description="refuse to snapshot with fewer")
    seed: int = 0


class PretrainSettings(Section):
    """Self-supervised pretraining of the student's backbone on every candidate sprite.

    Views keep pixel art pixel art (training.views). Content-keyed: the candidates' canonical
    hashes plus these settings and the preprocessing name one result, never computed twice."""

    method: Literal["simclr", "vicreg"] = "simclr"
    # 96 px transfers to the student's 160 better than 64 px at the same cost (a 64 px step
    # is twice as fast): bench/pretrain_recipes.py.
    size: int = Field(96, ge=32, description="view size in px; fine-tuning uses train.size")
    epochs: int = Field(30, ge=1, description="passes over the candidates, at most")
    # 60k sprites on 2 CPU cores: ~30 min with AVX-512, ~50 min with AVX2 only.
    max_steps: int = Field(2000, ge=1, description="optimizer steps, at most (big catalogs)")
    batch_size: int = Field(256, ge=8, description="sprites per step (two views each)")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_share: float = Field(0.05, ge=0, lt=1, description="of the steps, linear warm-up")
    temperature: float = Field(0.2, gt=0, description="SimCLR's softmax temperature")
    projection_dim: int = Field(128, ge=8)
    # The views (training.views.ViewRecipe).
    min_crop: float = Field(0.35, gt=0, le=1, description="smallest share of a sprite kept")
    max_hue: float = Field(0.5, ge=0, le=0.5, description="palette hue turn, of a circle")
    contrast: float = Field(0.4, ge=0, lt=1)
    brightness: float = Field(0.25, ge=0, le=1)
    grayscale: float = Field(0.2, ge=0, le=1, description="probability")
    background_swap: float = Field(0.5, ge=0, le=1, description="probability")
    max_images: int = Field(0, ge=0, description="0: every candidate; else a seeded sample")
    checkpoint_every: int = Field(100, ge=1, description="steps between resumable checkpoints")
    # `grow` pretrains again once the candidates grew by this share since the last backbone.
    regrow_share: float = Field(0.25, gt=0)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (bf16 on CUDA)")
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = torch's default")
    seed: int = 0


class TrainSettings(Section):
    """The student: timm MobileNetV4-conv-small-050 with an ordinal head (two logits from one
    weight vector: training/model.py), at `size` px."""

    arch: str = "mobilenetv4_conv_small_050"
    size: int = Field(160, ge=32)
    # Where the weights start (training.init): auto = the newest self-supervised backbone
    # of this catalog, else timm's published weights if cached or downloadable, else scratch.
    init: Literal["auto", "ssl", "timm", "scratch"] = "auto"
    # With init auto and a promoted model that descends from the newest backbone, the next
    # snapshot keeps every image those weights trained on in training, and training
    # fine-tunes from them (training.init.builds_on_model): each round builds on the last.
    # Off: paired with the backbone on four loop snapshots it gained +0.015, +0.008, +0.002
    # and lost 0.019 in holdout PR-AUC (README, "Warm starts").
    warm_start: bool = False
    # The weights a grow round ships average its own run's with those of the last rounds'
    # runs (the promoted model's soup), up to this many in all, when they descend from the
    # same backbone (training.soup; a "model soup", Wortsman et al. 2022). Like a warm start,
    # the snapshot then keeps every image those runs trained on in training. On three loops'
    # four rounds the average of all four scored 0.551, 0.566, 0.574 on the holdout against
    # the last round alone's 0.534, 0.473, 0.439 (README, "Soups"). 1: off.
    soup: int = Field(4, ge=1)
    timm_weights: Path | None = Field(None, description="a local file of timm's weights")
    # How the classifier starts on pretrained weights: "prior" (zero weights, biases at the
    # trained shares) or "probe" (a logistic regression fitted on the start's frozen features
    # of the training split, shifted to those shares: linear probing, then fine-tuning, as
    # in Kumar et al. 2022, so the first steps do not pull the features toward a random
    # head). Scratch weights always start at the prior.
    head_start: Literal["prior", "probe"] = "prior"
    epochs: int = Field(40, ge=1)
    # Training length in optimizer steps: epochs x steps per epoch, but at least min_steps
    # (a small split needs many epochs) and at most max_steps (0: no cap).
    min_steps: int = Field(1500, ge=0)
    max_steps: int = Field(4000, ge=0)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    # The learning rate of every weight but the classifier's, as a share of `lr`: below 1
    # pretrained features move less (few labels pull them toward what those few share).
    backbone_lr: float = Field(1.0, gt=0, le=1)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(3.0, ge=0)
    warmup_share: float = Field(0.05, ge=0, lt=1, description="warm-up: at most this share")
    # Batches' positive share when the snapshot keeps every negative (balance = "resample").
    positive_share: float = Field(0.25, gt=0, lt=1)
    # Validation scores the exponential moving average of the weights (0: the raw weights).
    ema_decay: float = Field(0.999, ge=0, lt=1)
    # Which weights are kept: "last" (the average at the end of the schedule; validation only
    # reports), or "best" (the best windowed validation PR-AUC, early stopping). "last" since
    # 6 December 2026: on 20 paired runs of the benchmarks it scored +0.024 holdout PR-AUC on
    # average, and the windowed pick of a small validation split lost up to 0.14 (README).
    keep: Literal["best", "last"] = "last"
    selection_window: int = Field(3, ge=1, description="validations averaged (keep = best)")
    eval_every_steps: int = Field(100, ge=1, description="validate after at least this many")
    patience: int = Field(10, ge=1, description="validations without a better criterion")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = torch's default")
    # Augmentations that keep pixel art pixel art (no blur, no bilinear resampling).
    flip: bool = True
    max_shift: int = Field(8, ge=0, description="integer-offset crop, output pixels")
    hue_jitter: float = Field(0.05, ge=0, le=0.5, description="palette hue turn, of a circle")
    # The deployment threshold, chosen on validation for a target at the realistic base rate.
    threshold_for: Literal["precision", "recall"] = "precision"
    threshold_target: float = Field(0.9, gt=0, le=1)
    # A validation split with fewer positives than this cannot rank: the last (averaged)
    # weights are kept instead of the "best" epoch, and the threshold comes from the model's
    # calibration (the score whose posterior at the base rate meets the target).
    min_val_positives: int = Field(10, ge=1)
    # With fewer than `distill_below_positives` training positives one fine-tuning run is a
    # lottery; `teachers` > 1 fine-tunes that many runs (seeds seed, seed + 1, ...) from the
    # same pretrained start, and one more run, the student, learns their mean scores on the
    # unlabelled catalog (the `distill_top` they rank highest, and the probe negatives) beside
    # the labels. The student ships: one network. 1 = off (one run).
    teachers: int = Field(3, ge=1, description="runs that teach one student when positives are few")
    distill_below_positives: int = Field(100, ge=0)
    distill_top: int = Field(1000, ge=0, description="unlabelled sprites the teachers rank top")
    distill_pool: int = Field(30_000, ge=0, description="unlabelled candidates in the snapshot")
    # The LLM's false alarms, judged by fine-tuning (training.train): a network trained on
    # them learns them by heart, one that never saw a sprite scores a false alarm low. With
    # `judge_folds` >= 2 and at least `judge_min_positives` LLM positives in training, that
    # many short runs (`judge_steps` at `judge_size` pixels) each fine-tune on all folds but
    # one (near-duplicate clusters whole) and score its LLM positives; those scored below
    # `judge_below` are left out of the run that ships. A person's label is never left out.
    # 0 = off, the default: at 800 steps and 160 px it gained 0.010-0.031 holdout PR-AUC on
    # three loop snapshots; at 400 steps and 96 px (a quarter of the time) +0.025 on loop25's
    # round 3 but -0.025 on loop26's, and it took the rebuild bench to 1,114 s (over 15 min).
    judge_folds: int = Field(0, ge=0)
    judge_steps: int = Field(400, ge=1)
    judge_size: int = Field(96, ge=32)
    judge_below: float = Field(0.05, gt=0, lt=1)
    judge_min_positives: int = Field(100, ge=1)
    # The run's own early view of its training split: at the first validation from this many
    # steps on, the weights' average scores the labelled training rows and the scores go to the
    # model's folder (early_scores.json). The network has not learnt its wrong labels by heart
    # yet (on loop25's round 3 real zombies and false alarms separated with AUC 0.79 at step
    # 106, 0.71 at 530; the shipped model scored the false alarms at a median of 1.000), so
    # the review queue judges the training split's labels by them too (review.mining). No
    # file when that validation falls in the run's second half. 0 = off.
    early_scores_after: int = Field(100, ge=0)

    @property
    def threshold_positives(self) -> int:
        """Validation positives the threshold is chosen by from this many up; fewer are
        not used at all (nor for selection, which needs min_val_positives too), so the
        snapshot trains on them instead. 0: the recall rule always reads validation."""
        return self.min_val_positives if self.threshold_for == "precision" else 0


class ExportSettings(Section):
    """ONNX export, INT8 quantization and the verification gate that promotes a model."""

    # "auto" tries per-channel, + FP32 classifier, + cross-layer equalization, + FP32 stem,
    # and keeps the one that agrees best with torch on validation; or one recipe by name,
    # e.g. "per-channel+cle+fp32-head" or "per-tensor".
    recipe: str = "auto"
    calibration_images: int = Field(300, ge=1, description="from the training split")
    threads: int = Field(2, ge=1, description="onnxruntime threads for verify and classify")
    unlabelled_sample: int = Field(500, ge=0, description="unlabelled catalog images verified")
    # An image is confident when its log-odds are more than this from the threshold's (2: odds
    # 7.4x apart; at a threshold of 0.5, p > 0.88 or < 0.12). INT8's largest error on five
    # models (the loop bench's four, a rebuild's; their validation, test and unlabelled
    # images) was 0.7-1.5 log-odds: a confident flip is a broken conversion, not rounding.
    confident_logits: float = Field(2.0, gt=0, description="|logit p - logit threshold| above")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # Said with what replaced it (any other unknown key gets pydantic's "extra" error).
        if isinstance(data, dict) and "confident_margin" in data:
            raise ValueError(
                "export.confident_margin (a margin in probability) was replaced by "
                "export.confident_logits (a margin in log-odds, default 2.0)"
            )
        return data

    max_fp32_delta: float = Field(1e-4, gt=0, description="ONNX FP32 vs torch, any image")
    max_confident_flips: int = Field(0, ge=0)
    max_flip_share: float = Field(0.01, ge=0, le=1)
    max_pr_auc_drop: float = Field(0.01, ge=0)
    # A new model replaces the promoted one only if its PR-AUC on its own test split is at
    # most this much below the promoted model's on that same split (or with --force). Only
    # the test images whose labels no model's ranking chose count (the audit and the other
    # uniform picks: export.stage.UNIFORM), and only with at least `min_compare_positives`
    # positives among them; otherwise the two are not compared and the report says why.
    replace_tolerance: float = Field(0.01, ge=0)
    min_compare_positives: int = Field(10, ge=1)
    seed: int = 0


class ReviewSettings(Section):
    """Disagreement mining and the review page."""

    near_band: float = Field(0.05, gt=0, lt=0.5, description="'uncertain': |p - threshold| <")
    teacher_gap: float = Field(0.7, gt=0, le=1, description="|teacher - LLM| for a conflict")
    max_per_run: int = Field(100, ge=1, description="new queue items per run")
    max_reason_share: float = Field(0.5, gt=0, le=1, description="of max_per_run, per reason")
    # The LLM's error rates before people have measured them (pulled towards these).
    llm_miss_prior: float = Field(0.15, ge=0, lt=1)
    llm_false_alarm_prior: float = Field(0.02, ge=0, lt=1)
    audit_share: float = Field(0.1, ge=0, le=1, description="random items, share of the rest")
    # passed_over priorities come from the model's scores, which overstate the chance and
    # hardly rank (loop bench: 74 of 193 decided were positive, predicted 99.9 %); after
    # this many decisions on the reason they come from the self-supervised head, shifted to
    # what people found (review.mining.passed_over_shift).
    calibrate_after: int = Field(20, ge=1, description="decisions before passed_over is refitted")
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    # Bound beyond loopback: the names people open the page under (a DNS name, an address).
    hosts: list[str] = Field(default_factory=list)
    seed: int = 0
    # Reports from users (POST /api/report, review.reports): off while the token is empty.
    # The token ships in web bundles (`export --web --report-url`), so it is a key to this
    # one route, never the review page's token; browsers may post only from these origins
    # (scheme://name[:port], or "*"); each client IP gets `report_burst` reports at once,
    # refilled at `report_per_minute`.
    report_token: SecretStr = Field(SecretStr(""), description="empty: reports are off")
    report_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    report_max_bytes: int = Field(2 * 2**20, gt=0, description="request body, image included")
    report_per_minute: float = Field(6.0, gt=0, description="reports per client IP, refill")
    report_burst: int = Field(10, ge=1, description="reports per client IP at once")

    @field_validator("report_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        # SPRITESAFE_REVIEW__REPORT_ORIGINS="https://a.example,https://b.example" too.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value


class GrowSettings(Section):
    """The scheduled growth run: retrain only when enough new labels arrived."""

    min_new_labels: int = Field(200, ge=0, description="LLM or human labels since the snapshot")


class FlowSettings(Section):
    """How `grow` and `rebuild` run their CPU-heavy work (decode/hash in ingest, scoring)."""

    dask: bool = Field(False, description="on a Dask cluster (needs the `dask` extra)")
    dask_address: str = Field("", description="a running Dask scheduler; empty: start one")
    dask_workers: int = Field(0, ge=0, description="local cluster processes; 0: one per CPU")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SPRITESAFE_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path("data")
    db_url: str = Field("", description="SQLAlchemy URL; empty = SQLite at data_dir/catalog.db")
    blob_url: str = Field("", description="fsspec URL or folder; empty = data_dir/blobs")
    sources: list[str] = Field(default_factory=list, description="source specs, as on the CLI")
    image: ImageLimits = Field(default_factory=ImageLimits)
    canonical: CanonicalSettings = Field(default_factory=CanonicalSettings)
    dedupe: DedupeSettings = Field(default_factory=DedupeSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    label: LabelSettings = Field(default_factory=LabelSettings)
    snapshot: SnapshotSettings = Field(default_factory=SnapshotSettings)
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    grow: GrowSettings = Field(default_factory=GrowSettings)
    flows: FlowSettings = Field(default_factory=FlowSettings)
    # Folder that relative paths (data_dir, sources) resolve against; set by load_settings.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _toml_path.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    # Derived locations: one place decides where things live.
    @property
    def data_path(self) -> Path:
        path = self.data_dir if self.data_dir.is_absolute() else self.base_dir / self.data_dir
        return path.resolve()

    @property
    def catalog_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_path / 'catalog.db'}"

    @property
    def blob_root(self) -> str:
        return self.blob_url or str(self.data_path / "blobs")

    @property
    def index_path(self) -> Path:
        return self.data_path / "index"

    @property
    def snapshots_path(self) -> Path:
        return self.data_path / "snapshots"

    @property
    def pretrain_path(self) -> Path:
        return self.data_path / "pretrain"

    @property
    def models_path(self) -> Path:
        return self.data_path / "models"

    @property
    def deploy_path(self) -> Path:
        """The promoted model: what `classify` and the web bundle use by default."""
        return self.data_path / "deploy"


def find_config(explicit: str | Path | None = None) -> Path | None:
    """The TOML file to read: explicit path, $SPRITESAFE_CONFIG, or ./spritesafe.toml."""
    candidate = explicit or os.environ.get(CONFIG_ENV)
    if candidate:
        path = Path(candidate).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return path.resolve()
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local.resolve() if local.is_file() else None


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings; `overrides` win over everything (used by tests and the CLI)."""
    path = find_config(config)
    hosts = os.environ.get(OLLAMA_HOSTS_ENV)
    if hosts and "ollama" not in overrides:
        overrides["ollama"] = {"hosts": hosts}
    token = _toml_path.set(path)
    try:
        base = path.parent if path is not None else Path.cwd()
        return Settings(base_dir=base, **overrides)
    finally:
        _toml_path.reset(token)
