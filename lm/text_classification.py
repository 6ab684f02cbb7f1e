"""The text-classification workload family: a small byte-level encoder on labelled text.

`TextClassificationWorkload` names every setting of a run: the data set, the model's
sizes, the batch size, Adam's settings, the step budget and evaluation interval, and
the sizes of the validation and test evaluations. Inputs are the UTF-8 bytes of each
text, cut or padded to `max_bytes` (no tokenizer). `make_run(seed)` builds the run:

- the model's weights and the order of the training batches are drawn from the seed;
- the validation loss (what a controller observes) is the mean cross-entropy on
  `val_examples` fixed examples split off the training data, never trained on;
- the test loss and accuracy (the score) are on the test set.

The data sets (the built-in ``pystdlib``, or the user's CSV files) are in
`lrpilot.lm.text_datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrpilot.config import check_fields, fraction_or_zero, non_negative, positive, setting
from lrpilot.errors import ConfigError
from lrpilot.lm.byte_gpt import check_budget, non_empty_text, resolve_device
from lrpilot.lm.memory import require_fits_in_memory
from lrpilot.lm.metric import metric_setting, run_settings
from lrpilot.lm.run import StepRun
from lrpilot.lm.run_parts import RunParts
from lrpilot.lm.text_datasets import BUILTIN_DATA, TextDataset, csv_files, load_dataset

PAD = 256  # the pad index after the 256 byte values
N_HEAD = 4  # attention heads of each encoder block
PATCH_BYTES = 4  # bytes per position the encoder attends over
EVAL_BATCH_EXAMPLES = 256  # examples per forward pass in the validation and test losses


@dataclass(frozen=True)
class TextClassificationWorkload:
    """A byte-level text classifier trained with Adam on a data set; every field is a
    TOML key."""

    family: ClassVar[str] = "text_classification"

    name: str = setting("classify", help="the workload's name in tables", check=non_empty_text)
    data: str = setting(
        BUILTIN_DATA,
        help="pystdlib, a folder with train.csv and test.csv, or a .csv",
        check=non_empty_text,
    )
    max_bytes: int = setting(
        256, help="bytes of text per example: longer cut, shorter padded", check=positive
    )
    n_embd: int = setting(64, help="model width (4 attention heads)", check=positive)
    n_layer: int = setting(1, help="transformer encoder layers", check=positive)
    batch_size: int = setting(32, help="examples per step", check=positive)
    beta1: float = setting(0.9, help="Adam's beta1", check=fraction_or_zero)
    beta2: float = setting(0.999, help="Adam's beta2", check=fraction_or_zero)
    weight_decay: float = setting(0.0, help="Adam's L2 penalty", check=non_negative)
    grad_clip: float | None = setting(
        1.0,
        help="gradient-norm clip; none: no clipping (the norm is still measured)",
        check=positive,
    )
    steps: int = setting(400, help="the step budget", check=positive)
    eval_every: int = setting(20, help="steps per evaluation interval", check=positive)
    val_examples: int = setting(
        256, help="split off the training data, never trained on", check=positive
    )
    test_examples: int = setting(
        0, help="test examples scored, spread over the test set; 0: all", check=non_negative
    )
    metric: str = metric_setting("accuracy")

    def __post_init__(self) -> None:
        check_fields(self)
        check_budget(self)
        if self.n_embd % N_HEAD:
            raise ConfigError(
                f"n_embd must be divisible by the {N_HEAD} attention heads, got {self.n_embd}"
            )
        require_fits_in_memory(
            classifier_num_params(2, self.max_bytes, self.n_embd, self.n_layer),
            f"the model (n_layer={self.n_layer}, n_embd={self.n_embd}, "
            f"max_bytes={self.max_bytes}, 2 classes)",
        )
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError(f"data must be {BUILTIN_DATA!r} or a path, got {self.data!r}")
        if self.data != BUILTIN_DATA:
            csv_files(self.data)  # a missing path fails now, not in a worker

    def dataset(self) -> TextDataset:
        return load_dataset(self.data, self.max_bytes)

    def step_cost(self) -> int:
        """Parameters (the head counted for 2 classes) x input bytes of one optimizer
        step, at most: its compute, up to a factor."""
        params = classifier_num_params(2, self.max_bytes, self.n_embd, self.n_layer)
        return params * self.batch_size * self.max_bytes

    def to_dict(self) -> dict:
        return run_settings(self)

    def digest(self) -> str:
        """sha256 of the data set's texts and labels: an edited CSV makes new runs."""
        return self.dataset().digest()

    def make_run(self, seed: int, device: str = "cpu") -> StepRun:
        return TextClassificationRun(self.dataset(), self, seed, device)


def encode(texts: tuple[bytes, ...] | list[bytes], max_bytes: int) -> torch.Tensor:
    """(N, max_bytes rounded up to whole patches) int64: each text's first `max_bytes`
    bytes, then `PAD`."""
    array = np.full((len(texts), padded_length(max_bytes)), PAD, dtype=np.int64)
    for row, text in enumerate(texts):
        cut = text[:max_bytes]
        array[row, : len(cut)] = np.frombuffer(cut, dtype=np.uint8)
    return torch.from_numpy(array)


# --- model ------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """Pre-norm transformer block without a causal mask: x + attn(ln(x)), then
    x + mlp(ln(x)); positions where `keep` is False are not attended to."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.attn_proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # batch, positions, channels
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        # (B, T, C) -> (B, N_HEAD, T, head_size)
        q, k, v = (t.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x))))


class ByteClassifier(nn.Module):
    """(B, T) byte indices (`PAD` for padding) -> (B, n_classes) logits.

    Bytes are grouped in patches of `PATCH_BYTES`: their embeddings, side by side, go
    through one linear layer, plus a learned position embedding per patch. Pre-norm
    encoder blocks attend over the patches that hold text, and the head reads the mean
    of those after a final LayerNorm. The first patch always counts, so an empty text
    is one patch of padding.
    """

    def __init__(
        self,
        n_classes: int,
        max_bytes: int,
        n_embd: int,
        n_layer: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.byte_emb = nn.Embedding(PAD + 1, n_embd)
        self.patch = nn.Linear(PATCH_BYTES * n_embd, n_embd)
        self.pos_emb = nn.Embedding(padded_length(max_bytes) // PATCH_BYTES, n_embd)
        self.blocks = nn.ModuleList(EncoderBlock(n_embd) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, n_classes)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Drawn from `generator`: byte embeddings N(0, 1), other matrices N(0, 0.02),
        biases 0, LayerNorm gains 1, and a zero head (the first loss is ln(n_classes))."""
        for name, param in self.named_parameters():
            if name.endswith("bias") or name.startswith("head."):
                param.zero_()
            elif param.dim() == 1:  # LayerNorm gains
                param.fill_(1.0)
            else:
                std = 1.0 if name == "byte_emb.weight" else 0.02
                param.normal_(0.0, std, generator=generator)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape  # T: a multiple of PATCH_BYTES
        n_patches = T // PATCH_BYTES
        keep = (idx != PAD).view(B, n_patches, PATCH_BYTES).any(-1)  # (B, n_patches)
        keep[:, 0] = True
        x = self.byte_emb(idx).view(B, n_patches, -1)  # (B, n_patches, PATCH_BYTES * C)
        x = self.patch(x) + self.pos_emb(torch.arange(n_patches, device=idx.device))
        for block in self.blocks:
            x = block(x, keep)
        x = self.ln_f(x) * keep.unsqueeze(-1)
        return self.head(x.sum(1) / keep.sum(1, keepdim=True))


def classifier_num_params(n_classes: int, max_bytes: int, n_embd: int, n_layer: int) -> int:
    """The parameter count of a `ByteClassifier`, computed without building it."""
    C = n_embd
    patches = padded_length(max_bytes) // PATCH_BYTES
    embeddings = (PAD + 1) * C + PATCH_BYTES * C * C + C + patches * C
    return embeddings + n_layer * (12 * C * C + 13 * C) + 2 * C + C * n_classes + n_classes


def padded_length(max_bytes: int) -> int:
    """`max_bytes` rounded up to whole patches."""
    return -(-max_bytes // PATCH_BYTES) * PATCH_BYTES


def trim(inputs: torch.Tensor) -> torch.Tensor:
    """`inputs` without the trailing patches that are padding in every row (the
    model's output is the same; short texts cost less)."""
    used = (inputs != PAD).any(0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return inputs[:, : padded_length(length)]


# --- run --------------------------------------------------------------------------


class TextClassificationRun(StepRun):
    """One seeded run of a `TextClassificationWorkload` on a loaded data set."""

    def __init__(
        self,
        dataset: TextDataset,
        workload: TextClassificationWorkload,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        n_train = len(dataset.train_texts)
        if len(dataset.classes) < 2:
            raise ConfigError(
                f"data set {dataset.name!r} has {len(dataset.classes)} class(es); "
                f"a classifier needs at least 2"
            )
        if n_train < workload.val_examples + 1:
            raise ConfigError(
                f"data set {dataset.name!r} has {n_train} training examples, too few for "
                f"val_examples={workload.val_examples} plus at least one to train on"
            )
        if not dataset.test_texts:
            raise ConfigError(f"data set {dataset.name!r} has no test examples")
        self.dataset = dataset
        self.workload = workload
        self.device = resolve_device(device)
        init_seed, data_seed = np.random.SeedSequence(seed).generate_state(2)
        model = ByteClassifier(
            n_classes=len(dataset.classes),
            max_bytes=workload.max_bytes,
            n_embd=workload.n_embd,
            n_layer=workload.n_layer,
            generator=torch.Generator().manual_seed(int(init_seed)),
        ).to(self.device)
        self.batch_generator = torch.Generator().manual_seed(int(data_seed))

        inputs = encode(dataset.train_texts, workload.max_bytes)
        labels = torch.tensor(dataset.train_labels, dtype=torch.int64)
        # Validation: fixed examples spread evenly over the training data (sorted data
        # gives every class its share), never trained on.
        val = torch.zeros(n_train, dtype=torch.bool)
        val[torch.linspace(0, n_train - 1, workload.val_examples).round().long()] = True
        self._val = inputs[val].to(self.device), labels[val].to(self.device)
        self._train = inputs[~val].to(self.device), labels[~val].to(self.device)

        n_test = len(dataset.test_texts)
        count = min(workload.test_examples or n_test, n_test)
        picks = torch.linspace(0, n_test - 1, count).round().long()
        test_inputs = encode(dataset.test_texts, workload.max_bytes)[picks]
        test_labels = torch.tensor(dataset.test_labels, dtype=torch.int64)[picks]
        self._test = test_inputs.to(self.device), test_labels.to(self.device)
        self._scored: tuple[int, tuple[float, float]] | None = None  # (step, scores)

        optimizer = torch.optim.Adam(
            model.parameters(),
            lr=1e-3,
            betas=(workload.beta1, workload.beta2),
            weight_decay=workload.weight_decay,
            foreach=True,
        )
        super().__init__(
            RunParts(
                model=model,
                optimizer=optimizer,
                batches=self.batches(),
                loss=self._batch_loss,
                validation_loss=lambda: self._evaluate(*self._val)[0],
                test_loss=lambda: self._test_scores()[0],
                test_accuracy=lambda: self._test_scores()[1],
                test_items=count,
                items_in=lambda batch: batch[1].numel(),
                grad_clip=workload.grad_clip,
            )
        )

    def batches(self):
        """Training batches forever: seeded shuffles of the training examples, each
        example once per pass (a pass's last, incomplete batch is dropped)."""
        inputs, labels = self._train
        n = labels.numel()
        size = min(self.workload.batch_size, n)
        while True:
            order = torch.randperm(n, generator=self.batch_generator).to(self.device)
            for start in range(0, n - size + 1, size):
                picks = order[start : start + size]
                yield trim(inputs[picks]), labels[picks]

    def _test_scores(self) -> tuple[float, float]:
        """The test loss and accuracy, computed once per step count (`test()` asks for
        both)."""
        if self._scored is None or self._scored[0] != self.step:
            self._scored = self.step, self._evaluate(*self._test)
        return self._scored[1]

    def _batch_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, labels = batch
        return F.cross_entropy(self.model(inputs), labels)

    def _evaluate(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """Mean cross-entropy (nats) and accuracy over fixed examples (under no_grad)."""
        loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for chunk, chunk_labels in zip(
            inputs.split(EVAL_BATCH_EXAMPLES), labels.split(EVAL_BATCH_EXAMPLES), strict=True
        ):
            logits = self.model(trim(chunk))
            loss += F.cross_entropy(logits, chunk_labels, reduction="sum")
            correct += (logits.argmax(1) == chunk_labels).sum()
        n = labels.numel()
        return float(loss.item() / n), float(correct.item() / n)
