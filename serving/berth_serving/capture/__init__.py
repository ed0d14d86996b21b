"""Data capture: sampled requests and answers written as JSON Lines (SageMaker's shape).

The request path only decides (`sampling.sampled`) and appends to a bounded buffer
(`Capturer.offer`); a background thread serializes, writes and uploads (`writer.py`).
"""

from berth_serving.capture.capturer import Capturer
from berth_serving.capture.sampling import sampled
from berth_serving.capture.settings import CaptureConfig, capture_from_json, capture_to_json

__all__ = ["CaptureConfig", "Capturer", "capture_from_json", "capture_to_json", "sampled"]
