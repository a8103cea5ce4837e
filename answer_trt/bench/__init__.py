"""`answer-trt bench`: per-stage latency, throughput, side-by-side ratios, runtime overhead."""
