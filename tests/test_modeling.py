"""Model layer: the label-token head equals the seed's full-vocabulary formulation, padding-side
invariance, last-token lookup, trainable parameters, save/reload.

The seed notebook appended the label token to the input, ran the whole causal LM to get
(batch, seq, vocab) logits, and read the three label ids at the position before the label token.
`PreferenceModel` must give the same logits and loss without building those logits.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pref_core.data.labels import NUM_CLASSES, get_label_token_ids
from pref_core.model.backbone import load_backbone, resolve_attn_implementation, resolve_dtype
from pref_core.model.losses import preference_loss
from pref_core.model.preference import (
    PREFERENCE_HEAD_FILE,
    PreferenceModel,
    build_model,
    build_preference_model,
    last_token_indices,
    load_preference_model,
    resolve_target_modules,
    save_adapter,
    unwrap_preference_model,
)
from tests.factories import TINY_TEXTS, lora_model, tiny_config

pytestmark = pytest.mark.filterwarnings(
    # torch's own torch.utils.mkldnn uses the deprecated decorator; it is imported lazily by transformers/peft.
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)

TEXTS = TINY_TEXTS


def make_config(head: str = "label_token", **train):
    return tiny_config(head, model={"tiny": {"hidden_size": 32}}, seed=0, **train)


def encode(tokenizer, texts):
    return [tokenizer.encode(text) for text in texts]


def pad(sequences, pad_id: int, side: str):
    """(batch, seq) ids and mask, padded on `side`."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if side == "right":
            ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        else:
            ids[i, width - len(seq) :], mask[i, width - len(seq) :] = torch.tensor(seq), 1
    return ids, mask


def seed_label_logits(backbone, sequences, labels, label_ids, pad_id):
    """The seed's formulation: append the label token, run the full LM, read the position before it."""
    with_label = [seq + [label_ids[y]] for seq, y in zip(sequences, labels)]
    ids, mask = pad(with_label, pad_id, "right")
    vocab_logits = backbone(input_ids=ids, attention_mask=mask).logits  # (batch, seq, vocab)
    before_label = torch.tensor([len(seq) - 1 for seq in sequences])
    return vocab_logits[torch.arange(len(sequences)), before_label][:, label_ids]  # (batch, 3)


# -- last_token_indices ---------------------------------------------------------------------------------------------


def test_last_token_indices_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_indices(right).tolist() == [2, 4, 0]
    assert last_token_indices(left).tolist() == [4, 4, 4]
    assert last_token_indices(right).dtype == torch.long


def test_last_token_indices_ignore_pad_ids_inside_text(tiny_dir, tokenizer):
    """eos doubles as pad in many models: a real eos inside (or at the end of) the text must not end the row."""
    pad_id = tokenizer.pad_token_id
    real = [[5, pad_id, 7, 8, pad_id], [9, 10, pad_id]]
    ids, mask = pad(real, pad_id, "right")
    assert last_token_indices(mask).tolist() == [4, 2]  # a pad-id search would say 1 and 2 (or 0)

    backbone = load_backbone(make_config().model, tiny_dir)
    model = build_preference_model(make_config().model, backbone, tokenizer).eval()
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask)["logits"]
        alone = torch.cat([model(input_ids=torch.tensor([seq]))["logits"] for seq in real])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_last_token_indices_rejects_empty_rows():
    with pytest.raises(ValueError, match="no real token"):
        last_token_indices(torch.tensor([[1, 1], [0, 0]]))


# -- label_token head == seed formulation ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("side", ["right", "left"])
def test_label_token_head_matches_seed_formulation(tiny_dir, tokenizer, side, batch_size):
    config = make_config()
    backbone = load_backbone(config.model, tiny_dir)
    model = build_preference_model(config.model, backbone, tokenizer).eval()
    label_ids = get_label_token_ids(tokenizer, config.model.label_tokens)
    sequences = encode(tokenizer, [t + "\n\nAnswer: " for t in TEXTS[:3]])[:batch_size]
    labels = torch.tensor([0, 2, 1][:batch_size])
    ids, mask = pad(sequences, tokenizer.pad_token_id, side)

    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, labels=labels)
        if side == "right":  # the seed's own setting: one right-padded batch
            expected = seed_label_logits(backbone, sequences, labels.tolist(), label_ids, tokenizer.pad_token_id)
        else:  # left padding must give each row's unpadded result
            expected = torch.cat(
                [
                    seed_label_logits(backbone, [s], [int(y)], label_ids, tokenizer.pad_token_id)
                    for s, y in zip(sequences, labels)
                ]
            )
    assert ours["logits"].shape == (batch_size, NUM_CLASSES)
    torch.testing.assert_close(ours["logits"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["loss"], F.cross_entropy(expected, labels), atol=1e-5, rtol=0)


def test_label_token_head_matches_seed_with_lora_active(tiny_dir, tokenizer):
    """Same equality through the peft wrapper, with non-zero LoRA updates in every targeted layer."""
    model = lora_model(make_config(), tokenizer, tiny_dir).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    inner = unwrap_preference_model(model)
    label_ids = inner.label_token_ids.tolist()
    sequences = encode(tokenizer, TEXTS[:3])
    ids, mask = pad(sequences, tokenizer.pad_token_id, "right")
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask)["logits"]
        expected = seed_label_logits(inner.backbone, sequences, [0, 1, 2], label_ids, tokenizer.pad_token_id)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    with model.disable_adapter(), torch.no_grad():
        base_only = seed_label_logits(inner.backbone, sequences, [0, 1, 2], label_ids, tokenizer.pad_token_id)
    assert not torch.allclose(ours, base_only, atol=1e-4)  # the adapters did change the result


def test_label_token_head_never_builds_vocabulary_logits(tiny_dir, tokenizer):
    config = make_config()
    backbone = load_backbone(config.model, tiny_dir)
    model = build_preference_model(config.model, backbone, tokenizer)

    def forbid(module, inputs, output):
        raise AssertionError(f"lm_head ran on a {tuple(inputs[0].shape)} input: full vocabulary logits were built")

    backbone.get_output_embeddings().register_forward_hook(forbid)
    ids, mask = pad(encode(tokenizer, TEXTS[:2]), tokenizer.pad_token_id, "right")
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    out["loss"].backward()  # and the backward pass works without it


class ShapeWatch:
    """A torch dispatch mode that records the shape of every tensor any operation produces, forward
    and backward, whatever module or function computes it (a hook on lm_head sees only lm_head)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        shapes = self.shapes = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor):
                        shapes.append(tuple(t.shape))
                return out

        self.mode = Mode()

    def vocab_sized(self, vocab: int, batch_seq: int) -> list[tuple]:
        """Shapes holding a vocab axis and at least batch * seq * vocab elements: (batch, seq, vocab) logits,
        flattened or not."""
        return [s for s in self.shapes if vocab in s and int(torch.Size(s).numel()) >= batch_seq * vocab]


@pytest.mark.parametrize("head", ["label_token", "classifier"])
def test_no_operation_builds_a_batch_seq_vocab_tensor(tiny_dir, tokenizer, head):
    config = make_config(head)
    backbone = load_backbone(config.model, tiny_dir)
    model = build_preference_model(config.model, backbone, tokenizer)
    vocab = backbone.get_output_embeddings().weight.shape[0]
    ids, mask = pad(encode(tokenizer, TEXTS[:2]), tokenizer.pad_token_id, "right")
    hidden = backbone.config.hidden_size
    assert vocab not in ids.shape and vocab != hidden

    watch = ShapeWatch()
    with watch.mode:
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
        out["loss"].backward()
    assert (*ids.shape, hidden) in watch.shapes  # the mode saw the decoder's activations
    assert not watch.vocab_sized(vocab, ids.numel()), watch.vocab_sized(vocab, ids.numel())[:5]

    # The watch catches full logits however they are made, here by the backbone's own forward.
    caught = ShapeWatch()
    with caught.mode, torch.no_grad():
        backbone(input_ids=ids, attention_mask=mask)
    assert caught.vocab_sized(vocab, ids.numel())


# -- heads and loss -------------------------------------------------------------------------------------------------


def test_preference_loss_accepts_class_ids_and_probabilities():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]])
    hard = torch.tensor([0, 2])
    one_hot = F.one_hot(hard, NUM_CLASSES).float()
    torch.testing.assert_close(preference_loss(logits, hard), preference_loss(logits, one_hot))
    soft = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    # By hand: mean over rows of -sum_k target_k * log_softmax(logits)_k.
    expected = -(soft * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    torch.testing.assert_close(preference_loss(logits, soft), expected)
    with pytest.raises(ValueError, match="class ids"):
        preference_loss(logits, torch.zeros(2, 4))


def test_classifier_head_outputs_three_logits_and_learns_a_prior(tiny_dir, tokenizer):
    config = make_config(head="classifier")
    model = build_preference_model(config.model, load_backbone(config.model, tiny_dir), tokenizer)
    assert model.score.in_features == 32 and model.score.out_features == NUM_CLASSES
    assert model.score.bias is not None and model.score.weight.dtype == torch.float32
    ids, mask = pad(encode(tokenizer, TEXTS[:2]), tokenizer.pad_token_id, "left")
    out = model(input_ids=ids, attention_mask=mask)
    assert out["logits"].shape == (2, NUM_CLASSES) and out["loss"] is None


def test_unknown_head_is_rejected(tiny_dir):
    backbone = load_backbone(make_config().model, tiny_dir)
    with pytest.raises(ValueError, match="model.head"):
        PreferenceModel(backbone, "regression")


# -- LoRA wrapping --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["label_token", "classifier"])
def test_only_lora_and_classifier_are_trainable(tiny_dir, tokenizer, head):
    model = lora_model(make_config(head=head), tokenizer, tiny_dir)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable, "nothing to train"
    for name in trainable:
        assert "lora_" in name or (head == "classifier" and ".score." in name), name
    assert any("score.modules_to_save" in name for name in trainable) == (head == "classifier")
    assert not any("lm_head" in name for name in trainable)
    # all-linear covers attention and MLP of the decoder, never the LM head or the classifier.
    assert set(resolve_target_modules("all-linear", load_backbone(make_config().model, tiny_dir))) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    lora_layers = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert not any("lm_head" in n or "score" in n for n in lora_layers)
    assert len(lora_layers) == 2 * 7  # 2 layers x 7 projections


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir, tokenizer):
    """Non-reentrant checkpointing through peft with frozen embeddings: same loss, same LoRA gradients."""
    ids, mask = pad(encode(tokenizer, TEXTS[:3]), tokenizer.pad_token_id, "right")
    grads = []
    for checkpointing in (False, True):
        config = make_config()
        config.model.gradient_checkpointing = checkpointing
        model = build_model(config.model, config.lora, tokenizer, name_or_path=tiny_dir, seed=config.train.seed).train()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
        model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        backbone = unwrap_preference_model(model).backbone
        assert backbone.is_activation_checkpointing == checkpointing
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_build_model_is_reproducible_for_a_seed(tiny_dir, tokenizer):
    first = lora_model(make_config(head="classifier"), tokenizer, tiny_dir)
    second = lora_model(make_config(head="classifier"), tokenizer, tiny_dir)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(a, b), name


# -- save / reload --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["label_token", "classifier"])
def test_save_and_reload_give_identical_predictions(tiny_dir, tokenizer, tmp_path, head):
    config = make_config(head=head)
    model = build_model(config.model, config.lora, tokenizer, name_or_path=tiny_dir, seed=config.train.seed)
    with torch.no_grad():  # a trained-looking adapter: LoRA B starts at zero, which would hide a loading bug
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.3)
    model.eval()
    ids, mask = pad(encode(tokenizer, TEXTS[:3]), tokenizer.pad_token_id, "right")
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask)["logits"]

    adapter_dir = save_adapter(model, tmp_path / "adapter", tokenizer)
    files = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", PREFERENCE_HEAD_FILE} <= files
    assert json.loads((adapter_dir / PREFERENCE_HEAD_FILE).read_text())["head"] == head

    reloaded, reloaded_tokenizer = load_preference_model(config.model, adapter_dir, name_or_path=tiny_dir, device="cpu")
    assert reloaded_tokenizer.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])
    assert not reloaded.training
    with torch.no_grad():
        after = reloaded(input_ids=ids, attention_mask=mask)["logits"]
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_reload_with_another_head_names_the_field(tiny_dir, tokenizer, tmp_path):
    adapter_dir = save_adapter(lora_model(make_config(), tokenizer, tiny_dir), tmp_path / "adapter", tokenizer)
    with pytest.raises(ValueError, match="model.head"):
        load_preference_model(make_config(head="classifier").model, adapter_dir, name_or_path=tiny_dir)


def test_missing_source_explains_tiny_models():
    with pytest.raises(ValueError, match="name_or_path"):
        load_backbone(make_config().model)


# -- resolution of dtype and attention ------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults")
def test_auto_dtype_is_fp32_on_cpu():
    config = make_config()
    assert resolve_dtype(config.model.model_copy(update={"dtype": "auto"})) == torch.float32
    assert resolve_dtype(config.model.model_copy(update={"dtype": "bf16"})) == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="flash-attn may be usable on a GPU")
def test_flash_attention_falls_back_to_sdpa_with_a_log_line(caplog):
    model_config = make_config().model.model_copy(update={"attn_implementation": "flash_attention_2"})
    with caplog.at_level("WARNING", logger="pref_core.model.backbone"):
        assert resolve_attn_implementation(model_config) == "sdpa"
    assert "flash_attention_2" in caplog.text
