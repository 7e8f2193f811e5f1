"""Dataset specs for tiny models built in tests (no dataset on disk)."""

from advorch.pipelines.spec import DatasetSpec, InputSpec


def token_spec(vocab_size: int = 30, num_classes: int = 2) -> DatasetSpec:
    return DatasetSpec("memory://tokens", "text", "classification",
                       {"tokens": InputSpec("tokens", "tokens", (None,), "int64")},
                       [str(c) for c in range(num_classes)], {}, {}, vocab_size=vocab_size)


def pixel_spec(channels: int = 1, size: int = 8, num_classes: int = 3) -> DatasetSpec:
    return DatasetSpec("memory://pixels", "images", "classification",
                       {"pixels": InputSpec("pixels", "pixels", (channels, size, size), "uint8", (0.0, 1.0))},
                       [str(c) for c in range(num_classes)], {}, {})


def tweet_spec(vocab_size: int = 30, channels: int = 3, size: int = 16, num_classes: int = 2,
               has_image: bool = False) -> DatasetSpec:
    """Multi-modal tweets: token ids and an image per row (and a per-row has_image flag)."""
    inputs = {"tokens": InputSpec("tokens", "tokens", (None,), "int64"),
              "pixels": InputSpec("pixels", "pixels", (channels, size, size), "uint8", (0.0, 1.0))}
    if has_image:
        inputs["has_image"] = InputSpec("has_image", "has_image", (), "bool")
    return DatasetSpec("memory://tweets", "tweets", "classification", inputs,
                       [str(c) for c in range(num_classes)], {}, {}, vocab_size=vocab_size)
