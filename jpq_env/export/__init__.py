"""Writing a compressed model out: the packed jpq file, the physically pruned network, ONNX.

- ``packed``: ``export_compressed``/``load_compressed``, format ``jpq-compressed-v2`` (integer
  levels bit-packed at each kernel's width, in the byte container of ``packing``);
- ``pruned``: ``pruned_module``/``prune_physically``, the network with pruned kernels and the
  input channels they fed removed (torch.fx), saved as a ``torch.export`` program;
- ``onnx``: ``export_onnx``, that network with integer weights and QDQ activations (opset 21).
"""
