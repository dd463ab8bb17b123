"""`mlflow.pyfunc` wrapper of `LayerT2VPipeline`: `mlflow.pyfunc.load_model("models:/layert2v@champion")`
gives a model whose `predict` turns prompt records into layered clips.

It is logged as "models from code" (`pyfunc_entry.py` calls `set_model`), so loading it imports this
package instead of unpickling an object; the model folder travels as the `model` artifact and the ONNX
export folder, when registered with one, as `onnx`. The backend comes from the model config (`onnxruntime`
when the graphs are there); `mlflow.pyfunc.load_model(uri, model_config={"backend": "torch"})` overrides it.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd

from layert2v.serving.schema import OPTIONAL, REQUIRED


class LayerT2VModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from layert2v.pipeline import LayerT2VPipeline

        onnx = context.artifacts.get("onnx")
        backend = (context.model_config or {}).get("backend", "onnxruntime" if onnx else "torch")
        self.pipeline = LayerT2VPipeline.from_folder(context.artifacts["model"], backend=backend, onnx=onnx)

    def predict(self, context, model_input, params=None):  # untyped: MLflow would read hints as a second schema
        """One layered clip per record: `full`, `background` `[T, H, W, 3]`, `foregrounds` (premultiplied),
        `alphas` `[T, H, W]`, float arrays in [0, 1]."""
        records = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        return [self._one(record) for record in records]

    def _one(self, record: dict) -> dict[str, Any]:
        missing = [key for key in REQUIRED if key not in record]
        if missing:
            raise ValueError(f"record is missing {missing}; required: {list(REQUIRED)}")
        foregrounds = record["foreground_prompts"]
        foregrounds = [foregrounds] if isinstance(foregrounds, str) else list(np.atleast_1d(foregrounds))
        options = {key: cast(record[key]) for key, cast in OPTIONAL.items() if key in record}
        video = self.pipeline.generate(record["prompt"], record["background_prompt"], foregrounds, **options)
        return {
            "full": video.full,
            "background": video.background,
            "foregrounds": video.foregrounds,
            "alphas": video.alphas,
        }
