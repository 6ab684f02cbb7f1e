"""The text-classification workload family: a small byte-level encoder on labelled text.

`TextClassificationWorkload` names every setting of a run: the data set, the model's
sizes, the batch size, Adam's settings, the step budget and evaluation interval, and
the sizes of the validation and test evaluations. Inputs are the UTF-8 bytes of each
text, cut or padded to `max_bytes` (no tokenizer). `make_run(seed)` builds the run:

- the model's weights and the order of the training batches are drawn from the seed;
- the validation loss (what a controller observes) is the mean cross-entropy on
  `val_examples` fixed examples split off the training data, never trained on;
- the test loss and accuracy (the score) are on the test set.

Data sets:

- ``pystdlib`` (built in, no download): passages of the standard library's ``.py``
  sources, labelled by the top-level package they come from (`PYSTDLIB_PACKAGES`).
  Train and test are split by file, so passages of one file are never in both.
- a folder holding ``train.csv`` and ``test.csv``, or one ``.csv`` file (every fifth
  row is then the test set): columns ``text`` and ``label``, others ignored. Labels
  are strings; class indices follow the sorted training labels.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lrpilot.errors import ConfigError, require_positive_int
from lrpilot.lm.byte_gpt import check_training_settings, resolve_device
from lrpilot.lm.run import RunParts, StepRun

BUILTIN_DATA = "pystdlib"
PAD = 256  # the pad index after the 256 byte values
N_HEAD = 4  # attention heads of each encoder block
PATCH_BYTES = 4  # bytes per position the encoder attends over
EVAL_BATCH_EXAMPLES = 256  # examples per forward pass in the validation and test losses

# Top-level standard-library packages present (with sources) in every CPython 3.10+,
# each with 150 kB or more of code outside its own test folders.
PYSTDLIB_PACKAGES = (
    "asyncio",
    "email",
    "http",
    "importlib",
    "logging",
    "multiprocessing",
    "unittest",
    "xml",
)
PYSTDLIB_TEST_FRACTION = 0.2  # of each package's bytes, by whole files
PYSTDLIB_MAX_TRAIN = 600  # passages per class: balanced classes, a quick CPU run
PYSTDLIB_MAX_TEST = 150
CSV_TEST_EVERY = 5  # a single CSV file: every fifth row is the test set
WHITESPACE = b" \t\n\r\x0b\x0c"


@dataclass(frozen=True)
class TextDataset:
    """Labelled texts (as bytes) split into train and test; labels index `classes`."""

    name: str
    classes: tuple[str, ...]
    train_texts: tuple[bytes, ...]
    train_labels: tuple[int, ...]
    test_texts: tuple[bytes, ...]
    test_labels: tuple[int, ...]

    def digest(self) -> str:
        """sha256 over the class names, texts and labels: changed data, a new digest."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.classes).encode("utf-8"))
        for texts, labels in (
            (self.train_texts, self.train_labels),
            (self.test_texts, self.test_labels),
        ):
            digest.update(len(texts).to_bytes(8, "little"))
            for text, label in zip(texts, labels, strict=True):
                digest.update(len(text).to_bytes(8, "little") + label.to_bytes(4, "little"))
                digest.update(text)
        return digest.hexdigest()


@dataclass(frozen=True)
class TextClassificationWorkload:
    """A byte-level text classifier trained with Adam on a data set; every field is a
    TOML key."""

    family: ClassVar[str] = "text_classification"

    name: str = "classify"
    data: str = BUILTIN_DATA  # pystdlib, a folder with train.csv and test.csv, or a .csv
    max_bytes: int = 256  # bytes of text per example: longer cut, shorter padded
    n_embd: int = 64  # model width (4 attention heads)
    n_layer: int = 1  # transformer encoder layers
    batch_size: int = 32  # examples per step
    beta1: float = 0.9  # Adam
    beta2: float = 0.999
    weight_decay: float = 0.0  # Adam's L2 penalty
    grad_clip: float | None = 1.0  # None: no clipping (the norm is still measured)
    steps: int = 400  # the step budget
    eval_every: int = 20  # steps per evaluation interval
    val_examples: int = 256  # split off the training data, never trained on
    test_examples: int = 0  # test examples scored, spread over the test set; 0: all

    def __post_init__(self) -> None:
        for name in ("max_bytes", "n_embd", "n_layer", "batch_size", "steps", "eval_every"):
            require_positive_int(name, getattr(self, name))
        require_positive_int("val_examples", self.val_examples)
        if (
            not isinstance(self.test_examples, int)
            or isinstance(self.test_examples, bool)
            or self.test_examples < 0
        ):
            raise ConfigError(
                f"test_examples must be an integer >= 0 (0: all), got {self.test_examples!r}"
            )
        if self.n_embd % N_HEAD:
            raise ConfigError(
                f"n_embd must be divisible by the {N_HEAD} attention heads, got {self.n_embd}"
            )
        check_training_settings(self)
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError(f"data must be {BUILTIN_DATA!r} or a path, got {self.data!r}")
        if self.data != BUILTIN_DATA:
            csv_files(self.data)  # a missing path fails now, not in a worker

    def dataset(self) -> TextDataset:
        return load_dataset(self.data, self.max_bytes)

    def to_dict(self) -> dict:
        return {"family": self.family, **asdict(self)}

    def digest(self) -> str:
        """sha256 of the data set's texts and labels: an edited CSV makes new runs."""
        return self.dataset().digest()

    def make_run(self, seed: int, device: str = "cpu") -> StepRun:
        return TextClassificationRun(self.dataset(), self, seed, device)


# --- data -------------------------------------------------------------------------


def load_dataset(data: str, max_bytes: int) -> TextDataset:
    """`pystdlib` (its passages are `max_bytes` long), or a CSV folder or file."""
    if data == BUILTIN_DATA:
        return pystdlib_dataset(max_bytes)
    files = csv_files(data)
    # Keyed by the files' sizes and times too, so an edited CSV is read again.
    stamps = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _csv_dataset(data, stamps)


def csv_files(data: str) -> tuple[Path, ...]:
    """(train.csv, test.csv) of a folder, or (file,) of a single .csv file."""
    path = Path(data).expanduser()
    if not path.exists():
        raise ConfigError(
            f"data path does not exist: {data!r} (give {BUILTIN_DATA!r}, a folder with "
            f"train.csv and test.csv, or a .csv file)"
        )
    if path.is_dir():
        missing = [name for name in ("train.csv", "test.csv") if not (path / name).is_file()]
        if missing:
            raise ConfigError(
                f"data folder {data!r} has no {' or '.join(missing)} "
                f"(a data folder holds train.csv and test.csv)"
            )
        return path / "train.csv", path / "test.csv"
    if path.is_file() and path.suffix.lower() == ".csv":
        return (path,)
    raise ConfigError(
        f"data path {data!r} is neither a folder with train.csv and test.csv nor a .csv file"
    )


def read_csv(path: Path) -> tuple[list[bytes], list[str]]:
    """The `text` (as UTF-8 bytes) and `label` columns of a CSV file, as strings."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"CSV file {str(path)!r} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"CSV file {str(path)!r} cannot be read: {first_line}") from None
    missing = [column for column in ("text", "label") if column not in frame.columns]
    if missing:
        columns = ", ".join(repr(str(c)) for c in frame.columns)
        raise ConfigError(
            f"CSV file {str(path)!r} has no {' or '.join(repr(m) for m in missing)} column "
            f"(its columns: {columns}; it needs 'text' and 'label')"
        )
    if len(frame) == 0:
        raise ConfigError(f"CSV file {str(path)!r} is empty (a header but no rows)")
    texts = [text.encode("utf-8") for text in frame["text"]]
    return texts, list(frame["label"])


@functools.cache
def _csv_dataset(data: str, stamps: tuple[tuple[str, int, int], ...]) -> TextDataset:
    files = [Path(stamp[0]) for stamp in stamps]
    if len(files) == 2:
        (train_texts, train_names), (test_texts, test_names) = map(read_csv, files)
        train_file, test_file = str(files[0]), str(files[1])
    else:
        texts, names = read_csv(files[0])
        is_test = [i % CSV_TEST_EVERY == CSV_TEST_EVERY - 1 for i in range(len(texts))]
        train_texts = [t for t, test in zip(texts, is_test, strict=True) if not test]
        train_names = [n for n, test in zip(names, is_test, strict=True) if not test]
        test_texts = [t for t, test in zip(texts, is_test, strict=True) if test]
        test_names = [n for n, test in zip(names, is_test, strict=True) if test]
        train_file = test_file = str(files[0])
        if not test_texts:
            raise ConfigError(
                f"CSV file {train_file!r} has {len(texts)} rows, too few to split off "
                f"every {CSV_TEST_EVERY}th as the test set"
            )
    classes = tuple(sorted(set(train_names)))
    if len(classes) < 2:
        raise ConfigError(
            f"CSV file {train_file!r} has only one class ({classes[0]!r}) in its training "
            f"rows; a classifier needs at least 2"
        )
    index = {name: i for i, name in enumerate(classes)}
    unseen = sorted(set(test_names) - set(classes))
    if unseen:
        raise ConfigError(
            f"CSV file {test_file!r} has test label(s) not in the training labels: "
            f"{', '.join(map(repr, unseen[:5]))} (training labels: "
            f"{', '.join(map(repr, classes[:10]))})"
        )
    return TextDataset(
        name=data,
        classes=classes,
        train_texts=tuple(train_texts),
        train_labels=tuple(index[n] for n in train_names),
        test_texts=tuple(test_texts),
        test_labels=tuple(index[n] for n in test_names),
    )


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.cache
def pystdlib_files() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each package's (train files, test files), as paths relative to the standard
    library, in sorted order.

    A package's files are taken in the order of the sha256 of their relative paths;
    they go to test until it holds `PYSTDLIB_TEST_FRACTION` of the package's bytes,
    the rest (at least one file) to train. Test folders and site-packages are skipped.
    """
    root = stdlib_root()
    splits: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for package in PYSTDLIB_PACKAGES:
        folder = root / package
        if not folder.is_dir():
            continue  # stripped from this Python build
        sizes: dict[str, int] = {}
        for path in sorted(folder.rglob("*.py")):
            folders = path.relative_to(root).parts[:-1]
            if {"test", "tests", "site-packages", "dist-packages"} & set(folders):
                continue
            sizes[path.relative_to(root).as_posix()] = path.stat().st_size
        if len(sizes) < 2:
            continue
        total = sum(sizes.values())
        test: set[str] = set()
        test_bytes = 0
        for relative in sorted(sizes, key=lambda r: hashlib.sha256(r.encode()).hexdigest()):
            if test_bytes >= PYSTDLIB_TEST_FRACTION * total or len(test) == len(sizes) - 1:
                break
            test.add(relative)
            test_bytes += sizes[relative]
        train = tuple(r for r in sorted(sizes) if r not in test)
        splits[package] = (train, tuple(sorted(test)))
    if len(splits) < 2:
        raise ConfigError(
            f"the standard library at {str(root)!r} holds fewer than 2 of the packages "
            f"{', '.join(PYSTDLIB_PACKAGES)}; use a CSV data set instead"
        )
    return splits


def file_passages(data: bytes, max_bytes: int) -> list[bytes]:
    """`data` cut into passages of `max_bytes`, skipping those mostly whitespace."""
    pieces = (data[i : i + max_bytes] for i in range(0, len(data), max_bytes))
    return [p for p in pieces if len(p.translate(None, WHITESPACE)) * 2 >= max_bytes]


def spread(items: list, count: int) -> list:
    """At most `count` of `items`, evenly spread over them (all when there are fewer)."""
    if len(items) <= count:
        return items
    picks = np.linspace(0, len(items) - 1, count).round().astype(np.int64)
    return [items[i] for i in picks]


@functools.cache
def pystdlib_dataset(max_bytes: int = 256) -> TextDataset:
    """Passages of `max_bytes` of standard-library sources, labelled by package: at most
    `PYSTDLIB_MAX_TRAIN` training and `PYSTDLIB_MAX_TEST` test passages per class,
    spread over the package's files."""
    root = stdlib_root()
    classes = tuple(sorted(pystdlib_files()))
    split: dict[str, tuple[list[bytes], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, package in enumerate(classes):
        for part, files, cap in zip(
            ("train", "test"),
            pystdlib_files()[package],
            (PYSTDLIB_MAX_TRAIN, PYSTDLIB_MAX_TEST),
            strict=True,
        ):
            passages = [p for f in files for p in file_passages((root / f).read_bytes(), max_bytes)]
            passages = spread(passages, cap)
            split[part][0].extend(passages)
            split[part][1].extend([label] * len(passages))
    return TextDataset(
        name=BUILTIN_DATA,
        classes=classes,
        train_texts=tuple(split["train"][0]),
        train_labels=tuple(split["train"][1]),
        test_texts=tuple(split["test"][0]),
        test_labels=tuple(split["test"][1]),
    )


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
