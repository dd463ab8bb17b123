"""The record fields of the registered pyfunc model, and its MLflow signature: one owner for both, imported by
the model (`pyfunc.py`) and by the registry that logs it (without the pipeline, so registry stages do not depend on
model code)."""

from __future__ import annotations

REQUIRED = ("prompt", "background_prompt", "foreground_prompts")
OPTIONAL = {
    "frames": int,
    "height": int,
    "width": int,
    "steps": int,
    "guidance": float,
    "guidance_sigma": float,
    "guidance_every": int,
    "shape_guidance": float,
    "composite_guidance": float,
    "composite_sigma": float,
    "seed": int,
}


def signature():
    """The records `predict` takes and the arrays it returns, for the registry page and input checks. Integer fields
    are `long`; the float fields are `Any`, because MLflow refuses an integer (`"guidance": 4`) for a `double`
    column, and `predict` casts and `check_request` bounds them anyway."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import AnyType, Array

    def nested(depth: int):
        return DataType.double if depth == 0 else Array(nested(depth - 1))

    kinds = {int: DataType.long, float: AnyType()}
    inputs = [ColSpec(Array(DataType.string) if name == "foreground_prompts" else DataType.string, name)
              for name in REQUIRED]  # fmt: skip
    inputs += [ColSpec(kinds[cast], name, required=False) for name, cast in OPTIONAL.items()]
    outputs = [ColSpec(nested(4), "full"), ColSpec(nested(4), "background"), ColSpec(nested(5), "foregrounds"),
               ColSpec(nested(4), "alphas")]  # fmt: skip
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))
