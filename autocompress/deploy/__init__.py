"""Deploy targets: the runtime, precision and device a compressed model ships to.

``DeployConfig`` (settings) -> ``RUNTIMES`` (torch, onnxruntime, openvino) -> a ``Deployed`` form
that accuracy and latency are measured on; ``to_onnx`` writes the ONNX file; ``timing`` measures
latency paired with the baseline in an exclusive slot per device.
"""

from autocompress.deploy.target import DeployConfig

__all__ = ["DeployConfig"]
