"""Model registry. Adding a model is one file here plus one import line below.

Registration order is listing order (``list_models()``): simplest model first.
"""

from digits.models._registry import (  # noqa: F401
    ModelInfo,
    count_macs,
    count_params,
    create_model,
    list_models,
    model_info,
    predict_proba,
    register_model,
)
from digits.models import mlp  # noqa: F401,E402  (importing registers the model)
from digits.models import cnn  # noqa: F401,E402
from digits.models import lenet5  # noqa: F401,E402
