"""Tiny random Hugging Face image classifiers, written as ``save_pretrained`` writes them with an
image processor config beside each, one per preprocessing style a downloaded model comes with:

- ``vit``: ViT with ViTImageProcessor: both sides resized to 32 (stretched), no crop;
- ``resnet``: ResNet with ConvNextImageProcessor, as microsoft/resnet-50 has: the shorter side to
  ``int(32 / crop_pct)`` = 36, centre crop 32, ImageNet's mean and std;
- ``convnext``: ConvNeXt with BitImageProcessor: the shorter side to 40, centre crop 32,
  and a rescale factor other than 1/255 folded into mean and std.
"""

from __future__ import annotations

from pathlib import Path

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_source(kind: str, folder: Path) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    imagenet = {"num_labels": 5, "id2label": {i: f"imagenet_{i}" for i in range(5)}}
    if kind == "vit":
        shape = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
        model = tf.ViTForImageClassification(tf.ViTConfig(image_size=32, patch_size=8, **shape, **imagenet))
        processor = tf.ViTImageProcessorPil(size={"height": 32, "width": 32})
    elif kind == "resnet":
        config = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **imagenet)
        model = tf.ResNetForImageClassification(config)
        processor = tf.ConvNextImageProcessorPil(
            size={"shortest_edge": 32}, crop_pct=0.875, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
        )
    elif kind == "convnext":
        config = tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], **imagenet)
        model = tf.ConvNextForImageClassification(config)
        processor = tf.BitImageProcessorPil(
            size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
            rescale_factor=1 / 127.5, image_mean=[0.9, 1.0, 1.1], image_std=[0.5, 0.6, 0.7],
        )  # fmt: skip
    else:
        raise ValueError(kind)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_text_model(folder: Path) -> Path:
    """A tiny BERT sequence classifier: a model the image task must refuse."""
    import transformers as tf

    shape = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    tf.BertForSequenceClassification(tf.BertConfig(vocab_size=64, **shape)).save_pretrained(folder)
    return folder
