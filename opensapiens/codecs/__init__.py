"""Keypoint codecs: training targets from keypoints and keypoints from network outputs."""

from .heatmap import decode_udp_heatmaps, encode_udp_heatmaps, gaussian_blur, gaussian_kernel1d, udp_scale

__all__ = ["decode_udp_heatmaps", "encode_udp_heatmaps", "gaussian_blur", "gaussian_kernel1d", "udp_scale"]
