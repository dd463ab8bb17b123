"""Export of the LayerDiT denoising step: ONNX graphs per K (`onnx.py`), their runtimes (`runtime.py`:
onnxruntime) and TensorRT engines built from them (`tensorrt.py`, GPU only)."""
