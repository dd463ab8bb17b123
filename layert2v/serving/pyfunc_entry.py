"""The code MLflow runs to build the logged pyfunc model ("models from code": nothing is unpickled)."""

import mlflow

from layert2v.serving.pyfunc import LayerT2VModel

mlflow.models.set_model(LayerT2VModel())
