"""torchvision classifiers and datasets, read from local files (nothing is downloaded unless
``task.download: true``).

Models: ``torchvision:NAME`` for any classification model of ``torchvision.models`` (random
initialisation; a trained baseline comes from ``task.weights`` or is trained on the data), and
``lenet5`` for 28x28 digits.

Datasets: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` (the official train split, of
which a seeded 10% is held out for validation; the official test split for test), ``imagefolder``
(``root/CLASS/*.png``, split 60/20/20; or ``root/train`` with ``root/val`` or ``root/test``) and
``fakedata`` (torchvision's random images, for smoke runs). Images are scaled to [0, 1] and
standardised per channel with the training split's mean and standard deviation.
"""

from __future__ import annotations

import functools
import gzip
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.errors import TaskError, did_you_mean
from autocompress.tasks.spec import DATASETS, MODELS, DataSplits, ModelEntry, TaskSpec

VAL_FRACTION = 0.1  # of an official training split, held out for validation (seeded)
_AUX_HEADS = {"googlenet", "inception_v3"}  # their train-mode tuple outputs would break fine-tuning


def classification_models() -> list[str]:
    """Names of torchvision's classification models (not detection, segmentation, video)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def segmentation_models() -> list[str]:
    """Names of torchvision's semantic segmentation models (FCN, DeepLabV3, LR-ASPP)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models.segmentation))


@MODELS.register_family("torchvision")
def torchvision_model(name: str) -> ModelEntry:
    if name in segmentation_models():
        return _segmentation_model(name)
    known = classification_models()
    if name not in known:
        both = known + segmentation_models()
        raise TaskError(
            f"unknown torchvision model '{name}'{did_you_mean(name, both)} (task.model): "
            f"torchvision's classification models include {', '.join(known[:8])}, ... ({len(known)} in all); "
            f"its segmentation models are {', '.join(segmentation_models())}"
        )

    own = _own_size(name)

    def factory(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        import torchvision

        if len(input_shape) != 3 or input_shape[0] != 3:
            raise TaskError(f"torchvision:{name} takes 3-channel images, the data has shape {tuple(input_shape)}: set task.channels: 3")
        extra: dict[str, Any] = {"aux_logits": False, "init_weights": True} if name in _AUX_HEADS else {}
        height, width = input_shape[1:]
        if name.startswith("vit_"):  # a ViT is built for one image size: the data's
            extra["image_size"] = height
        elif name.startswith("maxvit_"):
            extra["input_size"] = (height, width)
        try:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
        except (ValueError, AssertionError, RuntimeError) as exc:
            raise TaskError(f"torchvision:{name} cannot be built for {height}x{width} images ({exc}): set task.image_size to {own}") from None

    return ModelEntry(factory, default_dataset=None, description=f"torchvision {name}", input_shape=(3, own, own))


def _own_size(name: str) -> int:
    """The image size a torchvision classifier is built for when no data says (``layers`` with
    no config): the smallest its published weights take (224 for ViT, Swin and MaxViT, 75 for
    Inception v3), and 32 for the models that take any size (read from the weights' metadata:
    nothing is downloaded)."""
    import torchvision

    try:
        sizes = [min(w.meta.get("min_size", (1, 1))) for w in torchvision.models.get_model_weights(name)]
    except (ValueError, KeyError):  # a model without published weights
        sizes = []
    return max(32, min(sizes, default=32))


def _segmentation_model(name: str) -> ModelEntry:
    """A torchvision segmentation model (random weights, no auxiliary head: its output is
    ``{"out": (N, classes, H, W)}``, which the built-in metrics read). It has no in-memory
    dataset: search it through a task function that returns its splits and ``metric: miou``."""

    def factory(num_classes: int | None = None, input_shape: tuple[int, ...] = (3, 64, 64)) -> nn.Module:
        import torchvision

        if len(input_shape) != 3 or input_shape[0] != 3:
            raise TaskError(f"torchvision:{name} takes 3-channel images, the data has shape {tuple(input_shape)}: set task.channels: 3")
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes or 21, aux_loss=False)

    return ModelEntry(factory, default_dataset=None, description=f"torchvision {name} (segmentation)", input_shape=(3, 64, 64))


class LeNet5(nn.Module):
    """LeCun et al. 1998 on 28x28 inputs: two 5x5 convs with pooling, then 120-84-classes."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2), 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


MODELS.register("lenet5")(ModelEntry(LeNet5, "mnist", "LeNet-5 for 28x28 images (2 conv + 3 linear)", input_shape=(1, 28, 28)))


class _BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity shortcut (a 1x1 conv where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """He et al. 2016's ResNet for small images (depth 6n+2: three stages of n blocks, 16/32/64
    channels, global average pooling): big enough for int8 kernels and channel pruning to matter,
    small enough to train on two cores (ResNet-8: 78 K weights, 9 M MACs at 28x28)."""

    def __init__(self, blocks: int, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = nn.ReLU()
        layers: list[nn.Module] = []
        cin = 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(blocks):
                layers.append(_BasicBlock(cin, width, 2 if stage and not block else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.act(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


for _depth in (8, 20):
    MODELS.register(f"resnet{_depth}")(
        ModelEntry(
            functools.partial(SmallResNet, (_depth - 2) // 6),
            "fashion-mnist",
            f"ResNet-{_depth} for small images (He et al. 2016: 3 stages of 16/32/64 channels)",
            input_shape=(1, 28, 28),
        )
    )


# ---- datasets ------------------------------------------------------------------------------


# Where Debian's packages (`apt-get install dataset-mnist` or `dataset-fashion-mnist`) put them.
DEBIAN_DATASETS = {"mnist": "/usr/share/datasets/mnist", "fashion-mnist": "/usr/share/datasets/fashion-mnist"}


def _root(spec: TaskSpec, holds: str) -> Path:
    if spec.data_root is None:
        debian = DEBIAN_DATASETS.get(str(spec.dataset))
        if debian is not None and Path(debian).is_dir():
            return Path(debian)  # installed by the system's package manager: nothing to configure
        install = f", or run apt-get install dataset-{spec.dataset} (Debian, Ubuntu) and leave data_root out" if debian else ""
        raise TaskError(f"dataset '{spec.dataset}' needs task.data_root: the folder that holds {holds}{install}")
    root = Path(spec.data_root)
    if not root.is_dir() and not spec.download:
        raise TaskError(f"data root '{root}' does not exist (task.data_root): fix the path, or set task.download: true to fetch {spec.dataset}")
    return root


def _as_images(data: Any) -> torch.Tensor:
    """uint8 arrays (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(data))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0).contiguous()


def _standardise(splits: DataSplits) -> DataSplits:
    mean = splits.x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = splits.x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    for name in ("x_train", "x_val", "x_test"):
        setattr(splits, name, (getattr(splits, name) - mean) / std)
    return splits


def _hold_out(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(VAL_FRACTION * len(x)))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


# MNIST's four files, as Debian's dataset-mnist and dataset-fashion-mnist install them: side by
# side in one folder, gzipped (torchvision wants them unpacked under MNIST/raw/).
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MAX_IDX_BYTES = 1 << 30  # 60,000 28x28 images are 47 MB


def _idx_files(root: Path) -> list[Path] | None:
    """The four idx files lying directly in ``root`` (gzipped or not); None when there are none.
    Some of them without the rest is a mistake worth naming."""
    found = [next((p for p in (root / n, root / f"{n}.gz") if p.is_file()), None) for n in IDX_FILES]
    if all(p is None for p in found):
        return None
    missing = [n for n, p in zip(IDX_FILES, found, strict=True) if p is None]
    if missing:
        raise TaskError(
            f"'{root}' (task.data_root) holds some of MNIST's four idx files but not {', '.join(missing)}[.gz]: add them from the same release"
        )
    return [p for p in found if p is not None]


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (MNIST's format: a magic, the dimensions, the values)."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise TaskError(f"cannot read '{path}' (task.data_root): {exc}") from None
    magic = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else 0
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3) or len(data) < 4 + 4 * ndim:
        raise TaskError(f"'{path}' is not an idx file of bytes (task.data_root): use MNIST's original files")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        raise TaskError(f"'{path}' holds {len(body)} bytes for a {'x'.join(map(str, dims))} array (task.data_root): the file is cut short or damaged")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()  # writable, as torch wants


def _idx_splits(files: list[Path], spec: TaskSpec, num_classes: int) -> DataSplits:
    train_x, train_y, test_x, test_y = (read_idx(p) for p in files)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise TaskError(f"images and labels differ in number under '{files[0].parent}' (task.data_root): use the four files of one release")
    x_train, y_train, x_val, y_val = _hold_out(_as_images(train_x), torch.as_tensor(train_y, dtype=torch.int64), spec.seed)
    x_test, y_test = _as_images(test_x), torch.as_tensor(test_y, dtype=torch.int64)
    return _standardise(DataSplits(x_train, y_train, x_val, y_val, x_test, y_test, num_classes))


def _official_splits(dataset_cls: Callable[..., Any], spec: TaskSpec, holds: str, num_classes: int) -> DataSplits:
    root = _root(spec, holds)
    idx = holds.endswith("MNIST/raw") and root.is_dir() and _idx_files(root)
    if idx:
        return _idx_splits(idx, spec, num_classes)
    if holds.endswith("MNIST/raw"):
        holds = f"{holds}, or the four files {', '.join(f'{n}[.gz]' for n in IDX_FILES)} side by side (Debian's layout)"
    try:
        train = dataset_cls(str(root), train=True, download=spec.download)
        test = dataset_cls(str(root), train=False, download=spec.download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise TaskError(
            f"no {spec.dataset} files under '{root}' (task.data_root; {str(exc).splitlines()[0]}): "
            f"point it at the folder holding {holds}, or set task.download: true"
        ) from None
    except OSError as exc:  # a download that cannot reach the network
        raise TaskError(f"cannot download {spec.dataset} into '{root}' ({exc}): copy the files there and set task.download: false") from None
    x, y = _as_images(train.data), torch.as_tensor(np.asarray(train.targets), dtype=torch.int64)
    x_train, y_train, x_val, y_val = _hold_out(x, y, spec.seed)
    x_test, y_test = _as_images(test.data), torch.as_tensor(np.asarray(test.targets), dtype=torch.int64)
    return _standardise(DataSplits(x_train, y_train, x_val, y_val, x_test, y_test, num_classes))


# name -> (torchvision class, what data_root holds, classes)
OFFICIAL_SPLITS = {
    "mnist": ("MNIST", "MNIST/raw", 10),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", 10),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", 10),
    "cifar100": ("CIFAR100", "cifar-100-python", 100),
}


def _official(class_name: str, holds: str, classes: int) -> Callable[[TaskSpec], DataSplits]:
    def load(spec: TaskSpec) -> DataSplits:
        import torchvision.datasets

        return _official_splits(getattr(torchvision.datasets, class_name), spec, holds, classes)

    load.__doc__ = f"torchvision {class_name} from data_root/{holds}."
    return load


for _name, (_class_name, _holds, _classes) in OFFICIAL_SPLITS.items():
    DATASETS.register(_name)(_official(_class_name, _holds, _classes))


def _stack(dataset: Any, where: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for i in range(len(dataset)):
        image, label = dataset[i]
        if images and image.shape != images[0].shape:
            raise TaskError(
                f"images under '{where}' differ in size ({tuple(images[0].shape)} and {tuple(image.shape)}): set task.image_size to resize them all"
            )
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


@DATASETS.register("imagefolder")
def imagefolder(spec: TaskSpec) -> DataSplits:
    """Images in class folders: ``root/CLASS/*`` split 60/20/20 (stratified), or ``root/train``
    plus ``root/val`` or ``root/test`` (10% of train held out for validation when one is missing)."""
    from torchvision import datasets, transforms

    from autocompress.tasks.digits import split_60_20_20

    root = _root(spec, "one folder per class (or train/ and val/ folders)")
    steps: list[Any] = [transforms.Resize((spec.image_size, spec.image_size))] if spec.image_size else []
    transform = transforms.Compose([*steps, transforms.ToTensor()])

    def read(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        try:
            ds = datasets.ImageFolder(str(folder), transform=transform)
        except (FileNotFoundError, OSError) as exc:
            raise TaskError(f"no images under '{folder}' (task.data_root; {exc}): it needs one sub-folder of images per class") from None
        x, y = _stack(ds, folder)
        return x, y, ds.classes

    if (root / "train").is_dir():
        x_train, y_train, classes = read(root / "train")
        held = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if held is None:
            raise TaskError(f"'{root}/train' has no sibling 'val' or 'test' folder (task.data_root): add one for held-out data")
        x_test, y_test, other = read(held)
        if other != classes:
            raise TaskError(f"class folders of '{held}' differ from '{root / 'train'}': use the same class names in both")
        x_train, y_train, x_val, y_val = _hold_out(x_train, y_train, spec.seed)
        splits = DataSplits(x_train, y_train, x_val, y_val, x_test, y_test, len(classes))
    else:
        x, y, classes = read(root)
        if len(x) < 5 * len(classes):
            raise TaskError(f"'{root}' has {len(x)} images for {len(classes)} classes (task.data_root): a 60/20/20 split needs at least 5 per class")
        splits = split_60_20_20(x.numpy(), y.numpy(), spec.seed, len(classes))
    return _standardise(splits)


@DATASETS.register("fakedata")
def fakedata(spec: TaskSpec) -> DataSplits:
    """torchvision's FakeData: random RGB images (image_size, default 32) with random labels;
    max_train_samples (default 256) and max_eval_samples (default 64) set the sizes."""
    from torchvision import datasets, transforms

    size = spec.image_size or 32
    classes = spec.num_classes or 10

    def split(n: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds = datasets.FakeData(n, (3, size, size), classes, transform=transforms.ToTensor(), random_offset=offset)
        return _stack(ds, Path("fakedata"))

    n_train, n_eval = spec.max_train_samples or 256, spec.max_eval_samples or 64
    x_train, y_train = split(n_train, spec.seed * 1_000_003)
    x_val, y_val = split(n_eval, spec.seed * 1_000_003 + n_train)
    x_test, y_test = split(n_eval, spec.seed * 1_000_003 + n_train + n_eval)
    return _standardise(DataSplits(x_train, y_train, x_val, y_val, x_test, y_test, classes))
