"""The export stage: IO specs, ONNX export, graph clean-up and engine builds.

Nothing is imported here eagerly, so ``export.iospec`` stays a light import.
"""
