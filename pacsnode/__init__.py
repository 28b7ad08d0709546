"""pacsnode: an on-premises DICOM node for AI segmentation on the CPU.

The node never imports a deep-learning framework: it runs ONNX models through
ONNX Runtime. See DESIGN.md for the stages and their contracts.
"""

__version__ = "0.1.0"
