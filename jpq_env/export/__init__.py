"""Writing a compressed model out: the packed jpq file, the physically pruned network, ONNX.

- ``packed``: ``export_compressed``/``load_compressed``, format ``jpq-compressed-v2`` (integer
  levels bit-packed at each kernel's width, in the byte container of ``packing``, its header
  zlib-compressed);
- ``pruned``: ``pruned_module``/``prune_physically``, the network with pruned kernels and the
  input channels they fed removed (torch.fx);
- ``program``: ``export_program``, that network as a ``torch.export`` program storing integer
  levels and scales;
- ``onnx``: ``export_onnx``, that network for onnxruntime's integer kernels (BatchNorm folded,
  QLinearConv/QLinearAdd), or with the compressed model's own quantizers only (opset 21).
"""
