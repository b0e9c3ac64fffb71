"""The three-way preference head, LoRA wrapping and adapter save / load (the backbone: pref_core.model.backbone).

`PreferenceModel` wraps a causal LM and reads one hidden state per example, at
the last real token (the space after "Answer:"). Two heads turn it into three
class logits (winner_model_a, winner_model_b, winner_tie):

* ``label_token``: the next-token logits of the three label words, computed as
  ``hidden_last @ lm_head.weight[label_ids].T``. This is what the seed notebook
  computed from the full ``(batch, seq, vocab)`` logits, at a ``3 / vocab``
  fraction of the head cost and without materialising those logits.
* ``classifier``: a fresh ``nn.Linear(hidden, 3)`` named ``score``, trained
  together with LoRA and saved with the adapter (peft ``modules_to_save``).

LoRA is applied by peft to the whole wrapper (a custom ``nn.Module`` is a
supported peft target), so one ``PeftModel`` holds the adapter and the
classifier head: the Trainer checkpoints and resumes it like any peft model,
and ``save_pretrained`` writes only the trainable weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from torch import nn

from pref_core.config.choices import Head, require_choice
from pref_core.data.labels import NUM_CLASSES, get_label_token_ids
from pref_core.model.backbone import load_backbone, resolve_load_device
from pref_core.model.losses import preference_loss

if TYPE_CHECKING:
    from peft import PeftModel

    from pref_core.config.schema import LoraSettings, ModelConfig

logger = logging.getLogger(__name__)

# Written next to the adapter weights: what a reload must rebuild around them.
PREFERENCE_HEAD_FILE = "preference_head.json"
# Name of the classifier head inside PreferenceModel; peft saves it via modules_to_save.
CLASSIFIER_NAME = "score"

# -- preference model -----------------------------------------------------------------------------------------------


def last_token_indices(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, from the attention mask alone.

    Works for right and left padding. Searching for the pad id instead breaks when the pad id
    (often eos) also occurs inside the text.

    attention_mask: (batch, seq) of 0/1. Returns a LongTensor (batch,).
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, seq), got shape {tuple(attention_mask.shape)}")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (seq,)
    # -1 where padded, so the max over a row is the last real position.
    last = torch.where(attention_mask.bool(), positions, -1).amax(dim=1)  # (batch,)
    if bool((last < 0).any()):
        rows = torch.nonzero(last < 0).flatten().tolist()
        raise ValueError(f"rows {rows} of the batch have no real token (attention_mask is all zeros)")
    return last.long()


class PreferenceModel(nn.Module):
    """A causal LM read at the last real token by a three-way head (see the module docstring).

    forward(input_ids (batch, seq), attention_mask (batch, seq), labels=None)
    -> {"loss": scalar or None, "logits": (batch, 3) float32}.
    """

    # The Trainer passes `num_items_in_batch` to models whose forward takes **kwargs; ours computes a
    # per-batch mean, so the Trainer must scale the loss for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(
        self,
        backbone: nn.Module,
        head: str,
        label_token_ids: Optional[Sequence[int]] = None,
        pad_token_id: Optional[int] = None,
    ):
        super().__init__()
        require_choice("model.head", head, Head)
        self.backbone = backbone
        self.head = head
        self.pad_token_id = pad_token_id
        self.add_head(head, label_token_ids)

    def add_head(self, head: str, label_token_ids: Optional[Sequence[int]] = None) -> None:
        """Build `head` on this backbone (its label token ids for label_token). One base can carry both heads when
        it serves models trained with different heads (blend members, `load_preference_members`); `use_head` picks
        the one forward reads."""
        require_choice("model.head", head, Head)
        text_config = self.backbone.config.get_text_config()
        # bitsandbytes backbones are placed at load time and never moved: put the head beside them.
        device = self.backbone.get_input_embeddings().weight.device
        if head == "label_token":
            if label_token_ids is None or len(label_token_ids) != NUM_CLASSES:
                raise ValueError(f"the label_token head needs {NUM_CLASSES} label token ids, got {label_token_ids!r}")
            # Not persistent: derived from the tokenizer, never saved with the adapter.
            ids = torch.tensor(list(label_token_ids), dtype=torch.long, device=device)
            self.register_buffer("label_token_ids", ids, persistent=False)
            # Gemma-2/3 squash the LM logits with tanh softcapping; apply it so the head equals the LM's own logits.
            self.logit_softcapping = getattr(text_config, "final_logit_softcapping", None)
        elif not hasattr(self, CLASSIFIER_NAME):
            # With a bias, so the head can learn the class prior (the tie rate) directly.
            score = nn.Linear(text_config.hidden_size, NUM_CLASSES, bias=True)
            nn.init.normal_(score.weight, std=getattr(text_config, "initializer_range", 0.02))
            nn.init.zeros_(score.bias)
            self.add_module(CLASSIFIER_NAME, score.to(device=device, dtype=torch.float32))

    def use_head(self, head: str, label_token_ids: Optional[Sequence[int]] = None) -> None:
        """Read `head` from now on (built by add_head); a label_token head reads these label token ids."""
        if head == "label_token":
            if not hasattr(self, "label_token_ids"):
                raise ValueError("use_head('label_token'): the model has no label_token head; add_head it first")
            if label_token_ids is not None:
                self.label_token_ids.copy_(torch.as_tensor(list(label_token_ids), dtype=torch.long))
        elif not hasattr(self, CLASSIFIER_NAME):
            raise ValueError("use_head('classifier'): the model has no classifier head; add_head it first")
        self.head = head

    @property
    def config(self):
        """The backbone's config (the Trainer and peft read attributes such as use_cache from it)."""
        return self.backbone.config

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> dict[str, Optional[torch.Tensor]]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # Positions count real tokens only, so a left-padded row is computed like the unpadded row. (RoPE only
        # sees relative offsets and would not mind the shift; absolute position embeddings would.)
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (batch, seq)
        decoder = self.backbone.get_decoder()
        hidden = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (batch, seq, hidden)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        hidden_last = hidden[rows, last_token_indices(attention_mask).to(hidden.device)]  # (batch, hidden)
        logits = self._head(hidden_last)  # (batch, 3)
        loss = preference_loss(logits, labels.to(logits.device)) if labels is not None else None
        return {"loss": loss, "logits": logits}

    def _head(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """(batch, hidden) -> (batch, 3) float32 logits, computed in fp32 whatever the weights' dtype.

        Under bf16 a logit near 20 moves in steps of 0.125, a few points of probability; the projection is
        3 x hidden multiply-adds per row, so fp32 costs nothing. Autocast is off for it: it would cast back.
        """
        with torch.autocast(device_type=hidden_last.device.type, enabled=False):
            if self.head == "classifier":
                score = getattr(self, CLASSIFIER_NAME)
                # Created in fp32 (and kept so by peft's modules_to_save); called as a module so that peft's
                # wrapper dispatches to the trained copy.
                return score(hidden_last.to(score.weight.dtype)).float()  # (batch, 3)
            lm_head = self.backbone.get_output_embeddings()
            label_ids = self.label_token_ids.to(lm_head.weight.device)
            weight = lm_head.weight[label_ids].float()  # (3, hidden): only the label rows of the LM head
            logits = hidden_last.to(device=weight.device, dtype=torch.float32) @ weight.T  # (batch, 3)
            if getattr(lm_head, "bias", None) is not None:
                logits = logits + lm_head.bias[label_ids].float()
            if self.logit_softcapping:
                logits = torch.tanh(logits / self.logit_softcapping) * self.logit_softcapping
            return logits


def unwrap_preference_model(model: nn.Module) -> PreferenceModel:
    """The PreferenceModel inside a peft model (or the model itself)."""
    if isinstance(model, PreferenceModel):
        return model
    if hasattr(model, "get_base_model"):
        base = model.get_base_model()
        if isinstance(base, PreferenceModel):
            return base
    raise TypeError(f"expected a PreferenceModel or a peft model wrapping one, got {type(model).__name__}")


def build_preference_model(model_config: "ModelConfig", backbone: nn.Module, tokenizer) -> PreferenceModel:
    """Put the configured head (model.head, model.label_tokens) on a loaded backbone."""
    label_token_ids = None
    if model_config.head == "label_token":
        label_token_ids = get_label_token_ids(tokenizer, model_config.label_tokens)
    return PreferenceModel(backbone, model_config.head, label_token_ids, pad_token_id=tokenizer.pad_token_id)


# -- LoRA -----------------------------------------------------------------------------------------------------------


def resolve_target_modules(target_modules: Union[str, list[str]], backbone: nn.Module) -> list[str]:
    """LoRA target names. ``all-linear`` means every linear layer of the decoder, never the LM head
    (the label_token head reads its frozen rows) nor the classifier head (trained in full instead).

    peft's own ``all-linear`` only excludes the output layer for a PreTrainedModel, not inside our wrapper.
    """
    if target_modules != "all-linear":
        return list(target_modules)
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in backbone.get_decoder().named_modules()
        if isinstance(module, nn.Linear)  # bitsandbytes Linear8bitLt / Linear4bit subclass nn.Linear
    }
    if not names:
        raise ValueError(
            "lora.target_modules=all-linear found no linear layer in the decoder; list module names instead"
        )
    return sorted(names)


def build_model(
    model_config: "ModelConfig",
    lora: "LoraSettings",
    tokenizer,
    *,
    seed: int,
    name_or_path: Optional[Union[str, Path]] = None,
) -> "PeftModel":
    """Backbone + head + LoRA, ready to train: only LoRA weights (and the classifier head) are trainable.
    `seed` (train.seed) seeds the random LoRA and head weights."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    # LoRA's A matrices and the classifier head start random: seed first so a fold is reproducible.
    set_seed(seed)
    backbone = load_backbone(model_config, name_or_path)
    if model_config.quantization != "none":
        # Casts the remaining (norm, head) weights to fp32 for stable training. Checkpointing was already set
        # up (non-reentrant) by load_backbone; peft would enable it again through a deprecated transformers API.
        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
    model = build_preference_model(model_config, backbone, tokenizer)
    lora_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=resolve_target_modules(lora.target_modules, backbone),
        modules_to_save=[CLASSIFIER_NAME] if model_config.head == "classifier" else None,
        bias="none",
    )
    peft_model = get_peft_model(model, lora_config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info(
        "LoRA r=%d on %s, head=%s: %d trainable of %d parameters (%.3f%%)",
        lora.r,
        sorted(lora_config.target_modules),
        model_config.head,
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return peft_model


# -- save / load ----------------------------------------------------------------------------------------------------


def save_adapter(model: "PeftModel", out_dir: Union[str, Path], tokenizer) -> Path:
    """Write the adapter (safetensors + adapter_config.json), the head description and the tokenizer to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    inner = unwrap_preference_model(model)
    head = {
        "head": inner.head,
        "label_token_ids": inner.label_token_ids.tolist() if inner.head == "label_token" else None,
        "base_model": getattr(inner.backbone.config, "_name_or_path", None),
    }
    (out_dir / PREFERENCE_HEAD_FILE).write_text(json.dumps(head, indent=2) + "\n", encoding="utf-8")
    logger.info("saved adapter to %s", out_dir)
    return out_dir


def _read_saved_head(model_config: "ModelConfig", adapter_dir: Path) -> dict:
    """The head description `save_adapter` wrote, checked against model.head."""
    head_file = adapter_dir / PREFERENCE_HEAD_FILE
    if not head_file.is_file():
        raise FileNotFoundError(f"{head_file} not found: {adapter_dir} is not a folder written by save_adapter")
    saved = json.loads(head_file.read_text(encoding="utf-8"))
    if saved["head"] != model_config.head:
        raise ValueError(
            f"model.head: the adapter in {adapter_dir} was trained with head={saved['head']!r} but the config "
            f"says {model_config.head!r}; set model.head={saved['head']} to load it"
        )
    return saved


def _load_base_for_adapters(model_config: "ModelConfig", adapter_dirs: Sequence[Path], name_or_path, device):
    """(PreferenceModel on the base, tokenizer of the first adapter folder), checked against every adapter's head."""
    from transformers import AutoTokenizer

    heads = [_read_saved_head(model_config, d) for d in adapter_dirs]  # before the (slow) base load
    tokenizer = AutoTokenizer.from_pretrained(adapter_dirs[0])
    backbone = load_backbone(model_config, name_or_path, device=device)
    model = build_preference_model(model_config, backbone, tokenizer)
    for adapter_dir, saved in zip(adapter_dirs, heads):
        if saved["head"] == "label_token" and model.label_token_ids.tolist() != saved["label_token_ids"]:
            raise ValueError(
                f"model.label_tokens {list(model_config.label_tokens)!r} map to ids {model.label_token_ids.tolist()}, "
                f"but the adapter in {adapter_dir} was trained on ids {saved['label_token_ids']}; use the "
                "label_tokens of the training run"
            )
    return model, tokenizer


def _ready_for_inference(peft_model, model_config: "ModelConfig", device):
    if model_config.quantization == "none":  # bitsandbytes layers must not be moved (they were placed at load)
        # The base was placed at load time; this moves only the adapter (and head) weights, if at all.
        peft_model.to(resolve_load_device(device))
    peft_model.eval()
    return peft_model


def load_preference_model(
    model_config: "ModelConfig",
    adapter_dir: Union[str, Path],
    name_or_path: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
):
    """Rebuild a trained model from `save_adapter`'s folder for inference. Returns (model, tokenizer).

    The base model comes from `name_or_path` (else model.name_or_path); tokenizer, adapter and head
    from `adapter_dir`. `device` defaults to the GPU when there is one.
    """
    from peft import PeftModel

    model, tokenizer = _load_base_for_adapters(model_config, [Path(adapter_dir)], name_or_path, device)
    peft_model = PeftModel.from_pretrained(model, Path(adapter_dir), is_trainable=False)
    return _ready_for_inference(peft_model, model_config, device), tokenizer


def fold_adapter_name(index: int) -> str:
    """peft adapter name of the `index`-th adapter of an ensemble loaded by `load_preference_ensemble`."""
    return f"fold_{index}"


def load_preference_ensemble(
    model_config: "ModelConfig",
    adapter_dirs: Sequence[Union[str, Path]],
    name_or_path: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
):
    """One base model with every adapter of `adapter_dirs` attached. Returns (model, tokenizer, adapter names).

    The base is loaded once, onto `device` (default: the GPU when there is one); adapter k is named ``fold_k``
    and chosen with ``model.set_adapter(name)``. The classifier head is a peft ``modules_to_save`` module, so
    each adapter carries its own copy and `set_adapter` switches it together with the LoRA weights. The
    tokenizer comes from the first adapter folder (every fold of a run saves the same one).
    """
    from peft import PeftModel

    adapter_dirs = [Path(d) for d in adapter_dirs]
    if not adapter_dirs:
        raise ValueError("load_preference_ensemble needs at least one adapter folder")
    model, tokenizer = _load_base_for_adapters(model_config, adapter_dirs, name_or_path, device)
    names = [fold_adapter_name(k) for k in range(len(adapter_dirs))]
    peft_model = PeftModel.from_pretrained(model, adapter_dirs[0], adapter_name=names[0], is_trainable=False)
    for name, adapter_dir in zip(names[1:], adapter_dirs[1:]):
        peft_model.load_adapter(adapter_dir, adapter_name=name, is_trainable=False)
    peft_model.set_adapter(names[0])
    return _ready_for_inference(peft_model, model_config, device), tokenizer, names


def member_adapter_name(member: int, index: int) -> str:
    """peft adapter name of the `index`-th adapter of member `member` in `load_preference_members`."""
    return f"m{member}_fold_{index}"


def load_preference_members(
    members: Sequence[tuple["ModelConfig", Sequence[Union[str, Path]]]],
    name_or_path: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
):
    """One base model with the adapters of several models trained over it (blend members), loaded once.

    `members`: (model section, adapter folders) per member; the sections must agree on how the base loads (the
    caller groups members by base fingerprint, dtype and quantization); heads may differ: the base carries every
    head a member needs, and `PreferenceModel.use_head` switches it. Returns (model, names, heads): names[j] the
    peft adapter names of member j (`member_adapter_name`), heads[j] its saved head description (head, label
    token ids). Predict member j with ``inner.use_head(heads[j]["head"], heads[j]["label_token_ids"])`` and
    ``model.set_adapter(name)`` for each of its names.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    if not members or any(not dirs for _, dirs in members):
        raise ValueError("load_preference_members needs members with at least one adapter folder each")
    saved = [[_read_saved_head(cfg, Path(d)) for d in dirs] for cfg, dirs in members]  # before the base load
    first_config, first_dirs = members[0]
    tokenizer = AutoTokenizer.from_pretrained(Path(first_dirs[0]))
    backbone = load_backbone(first_config, name_or_path, device=device)
    model = build_preference_model(first_config, backbone, tokenizer)
    heads = [heads_of_member[0] for heads_of_member in saved]
    for head in heads:
        model.add_head(head["head"], head.get("label_token_ids"))
    model.use_head(heads[0]["head"], heads[0].get("label_token_ids"))
    names = [[member_adapter_name(j, i) for i in range(len(dirs))] for j, (_, dirs) in enumerate(members)]
    flat = [(name, Path(d)) for member_names, (_, dirs) in zip(names, members) for name, d in zip(member_names, dirs)]
    peft_model = PeftModel.from_pretrained(model, flat[0][1], adapter_name=flat[0][0], is_trainable=False)
    for name, adapter_dir in flat[1:]:
        peft_model.load_adapter(adapter_dir, adapter_name=name, is_trainable=False)
    peft_model.set_adapter(flat[0][0])
    return _ready_for_inference(peft_model, first_config, device), names, heads
