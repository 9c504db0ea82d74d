"""Network architectures behind one registry: `create_model(name, **kwargs)`, `list_models()`.

Models are plain single-device `nn.Module`s returning logits; mixed precision, compilation,
memory format and data parallelism are applied from outside by `noduleflow.train.wrap`.
"""

from noduleflow.models import digits_cnn, nodule_classifier, nodule_net, unet  # noqa: F401  (register the architectures)
from noduleflow.models.registry import (
    ModelEntry,
    build_model,
    create_model,
    input_size_of,
    list_models,
    model_entry,
    register_model,
)

__all__ = ["ModelEntry", "build_model", "create_model", "input_size_of", "list_models", "model_entry", "register_model"]
