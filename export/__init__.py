"""The export stage: ONNX export, graph clean-up and engine builds, to the runtime's
IO spec (``answer_trt.iospec``).

Installed as ``answer_trt.export`` (setuptools package-dir; the repository keeps this
folder at its top level). The middle of three layers: it imports the core runtime, and only
the application imports it (``answer_trt.loaders.build_engines``, lazily; pyproject.toml's
[tool.importlinter] contracts).
"""
