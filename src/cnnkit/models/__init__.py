"""Models: the registry (`registry`: a name maps to a `ModelSpec` and its builder), the nets it lists, torchvision's
backbones and their pretrained weights, patch whitening, a model's weights files, and the inference model.

Importing this package registers every built-in model, in the order `cnnkit models` lists them.
"""

# importing the model files registers their models, in the order `cnnkit models` lists them
from cnnkit.models import tutorial  # noqa: F401,I001
from cnnkit.models import resnet  # noqa: F401
from cnnkit.models import fast  # noqa: F401
from cnnkit.models import backbones  # noqa: F401
from cnnkit.models.registry import (
    AUTO,
    CUSTOM,
    ModelSpec,
    check_model_name,
    create_model,
    describe_models,
    flat_size,
    model_names,
    model_spec,
    num_parameters,
    register,
)
from cnnkit.models.spec import unwrap

__all__ = [
    "AUTO",
    "CUSTOM",
    "ModelSpec",
    "check_model_name",
    "create_model",
    "describe_models",
    "flat_size",
    "model_names",
    "model_spec",
    "num_parameters",
    "register",
    "unwrap",
]
