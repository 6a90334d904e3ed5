"""The AGFF trainer: EGA InfoNCE on fused similarity, atomic checkpoints, exact resume.

Resume is exact because everything that varies between steps is a function of
the step number (the batch, the learning rate) or is saved in the checkpoint
(weights, AdamW moments); the run never draws from a global RNG after init.

Under torchrun every process is one replica: it trains on its shard of the
global batch, DDP keeps the weights equal, and rank 0 alone logs and writes
checkpoints. The shards depend on (seed, step, rank) only, so a run resumes at
any world size that divides `batch_size`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tqdm import tqdm

from agff_deploy.base import write_backbone_files
from agff_deploy.chat_format import ChatFormat, read_chat_template, render_chat_format
from agff_deploy.checkpoint import (
    WEIGHT_FILE_PATTERNS,
    item_encoder,
    load_checkpoint,
    write_atomically,
    write_model_files,
)
from agff_deploy.config import IMAGE_RESIZE_MODES
from agff_deploy.errors import ArtifactError, InputError, MissingFileError
from agff_deploy.families import folder_family
from agff_deploy.model import MIN_TEMPERATURE, AGFFEmbedder, load_base_folder
from agff_deploy.preprocessing import NativeImageSettings
from agff_deploy.presets import PRESETS, local_tokenizer, preset_config, preset_family
from agff_deploy.prompts import ASPECT_TEXTS
from agff_deploy.tokenization import TOKENIZER_FILE
from agff_deploy.weights import weights_metadata

from .contrastive import ContrastiveStep, Shard
from .distributed import Replica
from .evaluate import HeldOutReport, evaluate_held_out
from .generative import GenerativeStep, SceneExamples
from .generative_probe import AnswerReport, probe_answers
from .grad_cache import chunked_backward
from .lora import add_lora, lora_merged_weights
from .mmeb import read_mmeb
from .pairs import BatchSource, ListPairs, SyntheticPairs, parse_task_mix

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainSettings:
    out: str = "ckpt"
    preset: str = "demo"
    base: str | None = None
    steps: int = 1000
    batch_size: int = 128  # the global batch, split over the processes of a torchrun
    lr: float = 1e-3
    warmup: int = 40
    seed: int = 0
    ega_alpha: float | None = None
    num_fine: int | None = None
    prompt_length: int | None = None
    tasks: str = "i2t:1,i2t-contrast:1,cls:0.25"
    data: str | None = None
    image_root: str | None = None
    max_bad_fraction: float = 0.05
    save_every: int = 200
    eval_pairs: int = 256
    lora_rank: int = 0
    gradient_checkpointing: bool = False
    chunk_size: int | None = None  # GradCache: pairs per forward pass on each process (None: all at once)
    image_size: int | None = None  # a fixed square size; without it a --base trains at native resolution
    image_resize: str | None = None  # "fixed" or "native" (default: native with --base and no --image-size)
    min_pixels: int | None = None  # native resolution's pixel range (default: the base's processor config)
    max_pixels: int | None = None
    max_text_tokens: int | None = None  # text tokens per item, a longer text cut with a warning (default: the preset's)
    threads: int | None = None
    objective: str = "contrastive"  # or "lm": generative pretraining into a base folder (train.generative)
    freeze_backbone: bool = False
    prompt_init: str = "random"  # or "aspects": fine prompt k starts at the embedding of ASPECT_TEXTS[k]
    temperature: float | None = None  # the contrastive temperature's start (default: the preset's)
    fixed_temperature: bool = False  # hold it there instead of learning it

    def check(self) -> None:
        """Refuse combinations that would silently train something else than asked."""
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.prompt_init not in PROMPT_INITS:
            raise InputError(f"--prompt-init {self.prompt_init!r}: choose one of {', '.join(PROMPT_INITS)}")
        if self.image_resize not in (None, *IMAGE_RESIZE_MODES):
            raise InputError(f"--image-resize {self.image_resize!r}: choose one of {', '.join(IMAGE_RESIZE_MODES)}")
        if self.image_resize == "native" and self.image_size:
            raise InputError("--image-size is the fixed square size; drop it for --image-resize native")
        if self.temperature is not None and self.temperature < MIN_TEMPERATURE:
            raise InputError(f"--temperature {self.temperature}: the model holds it at {MIN_TEMPERATURE} or above")
        if self.freeze_backbone and self.lora_rank:
            raise InputError("--freeze-backbone and --lora-rank both set: LoRA already freezes the backbone")
        if self.objective == "lm":
            options = {"--lora-rank": self.lora_rank, "--freeze-backbone": self.freeze_backbone,
                       "--chunk-size": self.chunk_size, "--data": self.data,
                       "--temperature": self.temperature, "--fixed-temperature": self.fixed_temperature}  # fmt: skip
            given = [flag for flag, value in options.items() if value]
            if given:
                raise InputError(
                    f"--objective lm trains the whole backbone on the built-in scenes; drop {', '.join(given)}"
                )


OBJECTIVES = ("contrastive", "lm")
PROMPT_INITS = ("random", "aspects")


def learning_rate(settings: TrainSettings, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer:
    def __init__(
        self,
        settings: TrainSettings,
        model: AGFFEmbedder,
        tokenizer: Tokenizer,
        start_step: int = 0,
        replica: Replica | None = None,
    ):
        self.settings = settings
        self.replica = replica or Replica()
        self.device = self.replica.device()
        self.replica.start()
        self.model = model.to(self.device).train()
        self.tokenizer = tokenizer
        self.encoder = item_encoder(model.config, tokenizer)
        self.out = Path(settings.out)
        self.step = start_step
        self.source = self._source()
        self._choose_trained_parameters()
        if settings.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.objective: ContrastiveStep | GenerativeStep
        if settings.objective == "lm":
            self.objective = GenerativeStep(self.model, self.encoder, self.replica, self.device)
        else:
            self.objective = ContrastiveStep(self.model, self.encoder, self.replica, self.device)
        self.step_module = self.replica.wrap(self.objective, find_unused=self._may_leave_parameters_unused())
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.01)

    def _choose_trained_parameters(self) -> None:
        """Pretraining trains the backbone alone; fine-tuning trains everything, or with the backbone frozen
        (or LoRA-adapted) the prompts, fusion and temperature (and the adapters). A fixed temperature never trains."""
        s = self.settings
        if s.objective == "lm":
            for name, param in self.model.named_parameters():
                param.requires_grad_(name.startswith("mllm."))
        elif s.lora_rank:
            add_lora(self.model, s.lora_rank)
        elif s.freeze_backbone:
            self.model.mllm.requires_grad_(False)
        if s.fixed_temperature:
            self.model.log_temperature.requires_grad_(False)

    def _may_leave_parameters_unused(self) -> bool:
        """K = 0 never uses the fusion, and a shard of --data rows may hold no image for the vision tower
        (every built-in task has an image on the query side)."""
        if self.settings.objective == "lm":
            return False
        return self.model.config.num_fine == 0 or self.settings.data is not None

    @classmethod
    def create(cls, settings: TrainSettings) -> Trainer:
        """A fresh run: build (or load) the backbone, the tokenizer and the AGFF config."""
        settings.check()
        replica = _replica(settings)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        torch.manual_seed(settings.seed)
        overrides = {
            "num_fine": settings.num_fine,
            "prompt_length": settings.prompt_length,
            "ega_alpha": settings.ega_alpha,
            "image_size": (settings.image_size,) * 2 if settings.image_size else None,
            "max_text_tokens": settings.max_text_tokens,
            "temperature": settings.temperature,
        }
        if settings.base:
            base_model = load_base_folder(settings.base)
            tokenizer = _base_tokenizer(Path(settings.base))
            chat = _base_chat_format(Path(settings.base))
            config = preset_config(
                settings.preset,
                tokenizer,
                base=base_model.config.to_dict(),
                **overrides,
                **_image_sizing(settings),
                chat_head=chat.head,
                chat_tail=chat.tail,
                base_path=str(settings.base),
            )
            model = AGFFEmbedder(config, base_model)
        else:
            tokenizer = local_tokenizer()
            model = AGFFEmbedder(preset_config(settings.preset, tokenizer, **overrides, **_image_sizing(settings)))
        if settings.prompt_init == "aspects":
            init_prompts_from_aspects(model, tokenizer)
        return cls(settings, model, tokenizer, replica=replica)

    @classmethod
    def resume(
        cls, folder: str | Path, steps: int | None = None, threads: int | None = None, chunk_size: int | None = None
    ) -> Trainer:
        """Continue the run saved in `folder` from its last checkpoint (optionally to a new step count;
        `chunk_size` changes the memory a step takes, not its result)."""
        folder = Path(folder)
        state_path = folder / STATE_FILE
        if not state_path.is_file():
            overwrite = " --overwrite" if folder.is_dir() and any(folder.iterdir()) else ""
            raise MissingFileError(
                f"--resume: {state_path} not found; start a run with `python -m train.run --out {folder}{overwrite}`"
            )
        state = json.loads(state_path.read_text())
        saved = state["settings"]
        chunk_size = chunk_size or saved.get("chunk_size")  # runs saved before GradCache have no chunk_size
        settings = TrainSettings(**dict(saved, out=str(folder), steps=steps or saved["steps"], chunk_size=chunk_size))
        if settings.lora_rank:
            raise InputError(
                f"{folder}: resuming a LoRA run is not supported; its checkpoint holds merged weights only"
            )
        replica = _replica(settings)
        if threads:
            torch.set_num_threads(threads)
        _check_step(folder, weights_metadata(folder), state["step"])
        optimizer_path = folder / OPTIMIZER_FILE
        if not optimizer_path.is_file():
            raise MissingFileError(f"--resume: {optimizer_path} is missing")
        with safe_open(optimizer_path, "pt") as f:
            _check_step(optimizer_path, f.metadata() or {}, state["step"])
        model, tokenizer = _load_backbone(folder, settings) if settings.objective == "lm" else load_checkpoint(folder)
        trainer = cls(settings, model, tokenizer, start_step=state["step"], replica=replica)
        trainer._load_optimizer(optimizer_path)
        return trainer

    def _source(self) -> BatchSource:
        s = self.settings
        if s.objective == "lm":
            return SceneExamples(s.seed, s.batch_size, self.model.config.image_size[0])
        if s.data:
            return ListPairs(read_mmeb(s.data, s.image_root, s.max_bad_fraction), s.seed, s.batch_size)
        return SyntheticPairs(s.seed, s.batch_size, self.model.config.image_size[0], parse_task_mix(s.tasks))

    def train_step(self) -> float:
        """One optimizer step on the global batch of this step; returns the global batch's loss."""
        lr = learning_rate(self.settings, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.objective.prepare(self.source.batch(self.step))
        self.optimizer.zero_grad(set_to_none=True)
        chunk = self.settings.chunk_size
        if chunk and isinstance(batch, Shard) and chunk < len(batch):
            loss = chunked_backward(self.step_module, batch, chunk)
        else:
            loss = self.step_module(batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        return self.replica.average(loss)

    def run(self, until: int | None = None) -> None:
        """Train up to step `until` (default: all steps), checkpointing every `save_every` steps and at the end."""
        end = min(until or self.settings.steps, self.settings.steps)
        main = self.replica.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.step == 0:
                self._forget_older_run()
        started, first = time.perf_counter(), self.step
        with (
            tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True, disable=not main) as bar,
            open(self.out / LOG_FILE if main else os.devnull, "a") as log,
        ):
            while self.step < end:
                loss = self.train_step()
                rate = self.settings.batch_size * (self.step - first) / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{loss:.3f}", pairs_per_s=f"{rate:.0f}")
                bar.update(1)
                log.write(json.dumps(self._log_row(loss)) + "\n")
                if self.step % self.settings.save_every == 0 or self.step == end:
                    log.flush()
                    self.save()

    def close(self) -> None:
        """Leave the process group of a torchrun (nothing to do for one process)."""
        self.step_module = self.objective
        self.replica.stop()

    def _forget_older_run(self) -> None:
        """A fresh run over an older one (`--overwrite`) starts its own log, and until its first save
        nothing in the folder may pass for a resumable state of either run."""
        (self.out / STATE_FILE).unlink(missing_ok=True)
        (self.out / LOG_FILE).unlink(missing_ok=True)

    def _log_row(self, loss: float) -> dict:
        row = {
            "step": self.step,
            "loss": round(loss, 5),
            "lr": learning_rate(self.settings, self.step - 1),
            "temperature": round(self.model.temperature.item(), 5),
            "t_f": round(self.model.fusion.t_f.item(), 5),
        }
        if isinstance(self.objective, ContrastiveStep) and self.objective.hard_share is not None:
            row["hard_share"] = round(self.objective.hard_share, 5)
        return {**row, "time": round(time.time(), 3)}

    def save(self) -> None:
        """Weights, optimizer moments and state, moved into place with the state file last (by rank 0 alone:
        DDP keeps every rank's weights and moments equal)."""
        if not self.replica.is_main:
            return
        metadata = {"step": str(self.step)}

        def write(tmp: Path) -> None:
            if self.settings.objective == "lm":
                write_backbone_files(tmp, self.model.mllm, self.tokenizer, self.model.config.image_size, metadata)
            else:
                write_model_files(tmp, self.model, self.tokenizer, metadata, self._saved_weights())
            save_file(self._optimizer_tensors(), tmp / OPTIMIZER_FILE, metadata=metadata)
            state = {"step": self.step, "settings": asdict(self.settings)}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

        write_atomically(self.out, write, last=STATE_FILE, replaces=WEIGHT_FILE_PATTERNS)

    def _saved_weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        """Plain weights: LoRA adapters are merged as they are written, so export and runtime never need peft."""
        if self.settings.lora_rank:
            return lora_merged_weights(self.model)
        return self.model.state_dict().items()

    def _optimizer_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        names = {id(p): n for n, p in self.model.named_parameters()}
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                tensors[f"{names[id(param)]}::{key}"] = value.detach().cpu().contiguous()
        return tensors

    def _load_optimizer(self, path: Path) -> None:
        params = dict(self.model.named_parameters())
        for name, value in load_file(path).items():
            param_name, key = name.split("::")
            self.optimizer.state[params[param_name]][key] = value.to(self.device)

    def evaluate(self) -> HeldOutReport | AnswerReport:
        """The held-out check of what this run trains: retrieval and pair accuracy, or (pretraining) question
        answering over `eval_pairs` scenes."""
        if self.settings.objective == "lm":
            return probe_answers(self.model, self.encoder, self.settings.eval_pairs, seed=self.settings.seed)
        return evaluate_held_out(self.model, self.encoder, self.settings.eval_pairs, seed=self.settings.seed)


def _replica(settings: TrainSettings) -> Replica:
    """This process's place in a torchrun (refused before any weights load if the batch does not split)."""
    replica = Replica.from_environment()
    replica.check_divides(settings.batch_size)
    return replica


def _check_step(path: Path, metadata: dict[str, str], step: int) -> None:
    """A checkpoint whose files disagree on the step was cut off mid-write: refuse it."""
    found = metadata.get("step")
    if found != str(step):
        raise ArtifactError(
            f"--resume: {path} is from step {found}, {STATE_FILE} says {step}; the checkpoint is inconsistent"
        )


def _load_backbone(folder: Path, settings: TrainSettings) -> tuple[AGFFEmbedder, Tokenizer]:
    """A pretraining run's own base folder, inside the embedder whose forward pass it trains."""
    tokenizer = _base_tokenizer(folder)
    image_size = (settings.image_size,) * 2 if settings.image_size else None
    backbone = load_base_folder(folder)
    config = preset_config(settings.preset, tokenizer, base=backbone.config.to_dict(), image_size=image_size)
    return AGFFEmbedder(config, backbone), tokenizer


def init_prompts_from_aspects(model: AGFFEmbedder, tokenizer: Tokenizer) -> None:
    """Start fine prompt k at the mean input embedding of the tokens of `ASPECT_TEXTS[k-1]`."""
    k = model.config.num_fine
    if k > len(ASPECT_TEXTS):
        raise InputError(f"--prompt-init aspects names {len(ASPECT_TEXTS)} aspects, fewer than --num-fine {k}")
    ids = [tokenizer.encode(text, add_special_tokens=False).ids for text in ASPECT_TEXTS[:k]]
    table = model.mllm.language_model.embed_tokens.weight
    with torch.no_grad():
        for prompt, token_ids in enumerate(ids, start=1):
            model.prompts.vectors[prompt] = table[torch.tensor(token_ids)].mean(dim=0)


def _image_sizing(settings: TrainSettings) -> dict[str, Any]:
    """How the run sizes images. From a base folder: at native resolution with the base's own processor settings
    (as its processor config holds them; its family's published ones, said once, where it has none), unless a fixed
    size is asked for. From scratch: the preset's fixed size unless native resolution is asked for, then with its
    family's published settings. --min-pixels / --max-pixels override the range."""
    if not settings.base and settings.image_resize != "native":
        return {}
    resize = settings.image_resize or ("fixed" if settings.image_size else "native")
    if settings.base:
        family = folder_family(settings.base)
        found, notes = NativeImageSettings.from_preprocessor_config(settings.base, family.image_defaults, family.label)
    else:
        found, notes = preset_family(PRESETS[settings.preset]).image_defaults, []
    for note in notes:
        print(note)
    chosen = {
        "min_pixels": settings.min_pixels or found.min_pixels,
        "max_pixels": settings.max_pixels or found.max_pixels,
        "mean": list(found.mean),
        "std": list(found.std),
        "max_ratio": found.max_ratio,
    }
    return {"image_resize": resize, "image_settings": chosen}


def _base_chat_format(folder: Path) -> ChatFormat:
    """The base's own chat turn (its template, system turn included), which fine-tuning keeps."""
    template, notes = read_chat_template(folder, folder_family(folder))
    for note in notes:
        print(note)
    return render_chat_format(template, folder)


def _base_tokenizer(folder: Path) -> Tokenizer:
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} not found: --base needs the checkpoint's tokenizer.json beside its weights")
    return Tokenizer.from_file(str(path))
