"""Dense (no sparsity) bf16 tensor-core peaks by exact CUDA device name, for model-FLOPs utilisation.

Keys are the names ``torch.cuda.get_device_name()`` reports (as ``nvidia-smi`` does). A name that is not
here has no known peak: the benchmarks then print no MFU rather than guess (``--peak-tflops`` gives one).
NVIDIA's datasheets give bf16 tensor-core throughput "with sparsity"; the dense figure is half of it.
"""

from __future__ import annotations

PEAK_BF16_TFLOPS: dict[str, float] = {
    # NVIDIA H100 Tensor Core GPU datasheet: SXM 1,979 / PCIe 1,513 / NVL 1,671 TFLOPS with sparsity
    "NVIDIA H100 80GB HBM3": 989.0,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    # NVIDIA H200 Tensor Core GPU datasheet: H200 SXM 1,979 / H200 NVL 1,671 TFLOPS with sparsity
    "NVIDIA H200": 989.0,  # H200 SXM
    "NVIDIA H200 NVL": 835.0,
    # NVIDIA A100 Tensor Core GPU datasheet: 312 dense / 624 with sparsity, for 40 and 80 GB, SXM and PCIe
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    # NVIDIA L4 Tensor Core GPU datasheet: 242 TFLOPS with sparsity
    "NVIDIA L4": 121.0,
    # NVIDIA L40S datasheet: 362.05 dense / 733 with sparsity
    "NVIDIA L40S": 362.0,
    # NVIDIA A10 Tensor Core GPU datasheet: 125 dense / 250 with sparsity
    "NVIDIA A10": 125.0,
}


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the device called exactly ``device_name``, or None when it is not known."""
    return PEAK_BF16_TFLOPS.get(device_name.strip())
