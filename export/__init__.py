"""The export stage: ONNX export, graph clean-up and engine builds, to the runtime's
IO spec (``answer_trt.iospec``).

Dependencies run one way: ``export`` imports ``answer_trt``, never the reverse (the
runtime reaches the build only through ``answer_trt.loaders.build_engines``, lazily).
"""
