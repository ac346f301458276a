"""The Hugging Face zoo: ``transformers`` models as users bring them, from small configs with random weights.

Each case builds a model (dropout and other training-time randomness off:
parity needs determinism), makes inputs and targets for any batch size and,
for sequence models, any sequence length, and names its loss. Nothing is
downloaded. The models go to ``optgraph.compile`` as they are, except T5,
whose labels are a model input: a three-line module passes them by keyword.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn

VOCAB = 100


@dataclass
class HFCase:
    """One model of the zoo.

    Attributes:
        make: builds the model (seeded by the caller).
        inputs: ``(batch, seq, generator) -> tuple`` of ``model.forward``'s positional arguments.
        targets: ``(batch, seq, generator) -> tuple`` passed to ``loss`` after the outputs.
        loss: ``loss(outputs, *targets)``.
        seq: the example sequence length (None: not a sequence model).
        seq_dims: the dynamic dimensions of a text model's inputs and targets, by name, as
            ``compile(dynamic_shapes=...)`` takes them (None: the default, a dynamic batch).
        eps: AdamW's eps, above the float32 noise of gradients that are zero in exact arithmetic
            (a bias that a later normalization cancels): Adam's first step turns such noise
            into a step of +-lr in whichever direction the rounding went.
        lr: AdamW's learning rate.
    """

    make: Callable[[], nn.Module]
    inputs: Callable[[int, int | None, torch.Generator], tuple]
    targets: Callable[[int, int | None, torch.Generator], tuple]
    loss: Callable
    seq: int | None = None
    seq_dims: dict | None = None
    eps: float = 1e-6
    lr: float = 1e-3


def token_ids(batch: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=gen)


def padding_mask(batch: int, seq: int) -> torch.Tensor:
    """Right padding: row i keeps ``seq - i % 3`` tokens (rows of every length in one batch)."""
    lengths = seq - torch.arange(batch) % 3
    return (torch.arange(seq)[None, :] < lengths[:, None]).long()


def logits_ce(outputs, labels):
    """Cross-entropy of the model's logits (any leading dimensions) against class labels."""
    logits = outputs.logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def labels_of(n: int):
    return lambda b, s, g: (torch.randint(0, n, (b,), generator=g),)


def images(size: int = 32):
    return lambda b, s, g: (torch.randn(b, 3, size, size, generator=g),)


class Seq2SeqWithLabels(nn.Module):
    """An encoder-decoder called with ``labels``: the model shifts them into decoder inputs and returns its loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


def _bert():
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _gpt2():
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _llama_config():
    # grouped-query attention: 4 query heads share 2 key/value heads; rotary position embeddings
    return transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64, use_cache=False,
    )  # fmt: skip


def _llama():
    return transformers.LlamaForCausalLM(_llama_config())


def _t5():
    config = transformers.T5Config(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=VOCAB,
        dropout_rate=0.0, relative_attention_num_buckets=8, relative_attention_max_distance=16,
        decoder_start_token_id=0, pad_token_id=0, use_cache=False,
    )  # fmt: skip
    return Seq2SeqWithLabels(transformers.T5ForConditionalGeneration(config))


def _vit():
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=5,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


def _resnet():
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=5
    )
    return transformers.ResNetForImageClassification(config)


def _convnext():
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], patch_size=2, image_size=32, num_labels=5
    )
    return transformers.ConvNextForImageClassification(config)


def _mobilenet_v2():
    """MobileNetV2 (inverted residuals, depthwise convs, TensorFlow "same" padding, BatchNorm), tamed for parity.

    A float32 MobileNetV2 this small does not train the same way twice: eager torch in float32 and in
    float64 differ by 1e-2 in the loss after 3 AdamW steps. Three causes, each changed here:
    ReLU6's kinks (one pre-activation in 1e5 lies within rounding of 0, and which side it falls on
    moves a gradient by a few percent: GELU instead), BatchNorm over a handful of values (64 x 64
    images leave 2 x 2 maps at the end, not 1 x 1) and the init (convolutions at std 0.02 make
    BatchNorm's inputs as small as its eps: torch's default init instead). The case also trains at
    lr 1e-4. ReLU6 after padding, a depthwise conv and BatchNorm is in tests/capture/test_lowerings.py.
    """
    config = transformers.MobileNetV2Config(
        image_size=64, depth_multiplier=0.25, classifier_dropout_prob=0.0, num_labels=5, hidden_act="gelu"
    )
    model = transformers.MobileNetV2ForImageClassification(config)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return model


def _wav2vec2():
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2,
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, classifier_proj_size=16, num_labels=3,
        hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0, mask_feature_prob=0.0,
    )  # fmt: skip
    return transformers.Wav2Vec2ForSequenceClassification(config)


TEXT = {"input_ids": {0: "batch", 1: "seq"}}

MODELS: dict[str, HFCase] = {
    "bert-padding-mask": HFCase(
        _bert,
        lambda b, s, g: (token_ids(b, s, g), padding_mask(b, s)),
        labels_of(3),
        logits_ce,
        seq=12,
        seq_dims={**TEXT, "attention_mask": {0: "batch", 1: "seq"}},
    ),
    "gpt2": HFCase(
        _gpt2,
        lambda b, s, g: (token_ids(b, s, g),),
        lambda b, s, g: (token_ids(b, s, g),),
        logits_ce,
        seq=12,
        seq_dims={**TEXT, "target": {0: "batch", 1: "seq"}},
    ),
    "llama-gqa-rope": HFCase(
        _llama,
        lambda b, s, g: (token_ids(b, s, g),),
        lambda b, s, g: (token_ids(b, s, g),),
        logits_ce,
        seq=12,
        seq_dims={**TEXT, "target": {0: "batch", 1: "seq"}},
    ),
    "t5-labels": HFCase(
        _t5,
        lambda b, s, g: (token_ids(b, s, g), padding_mask(b, s), token_ids(b, s - 2, g)),
        lambda b, s, g: (),
        lambda loss: loss,
        seq=10,
        seq_dims={**TEXT, "attention_mask": {0: "batch", 1: "seq"}, "labels": {0: "batch", 1: "target_seq"}},
    ),
    "vit": HFCase(_vit, images(), labels_of(5), logits_ce),
    "resnet": HFCase(_resnet, images(), labels_of(5), logits_ce),
    "convnext": HFCase(_convnext, images(), labels_of(5), logits_ce),
    # each block's last BatchNorm bias feeds the next block's 1x1 conv and BatchNorm, which cancel it
    "mobilenet-v2": HFCase(_mobilenet_v2, images(64), labels_of(5), logits_ce, lr=1e-4, eps=1e-3),
    "wav2vec2": HFCase(
        _wav2vec2,
        lambda b, s, g: (torch.randn(b, 400, generator=g),),
        labels_of(3),
        logits_ce,
    ),
}


def lora_llama() -> nn.Module:
    """The zoo's LLaMA with LoRA adapters (rank 4) on the attention projections, through ``peft``."""
    import peft

    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(_llama(), config)
