"""Models leaving cvtrain: ONNX export, a parity check by onnxruntime, and predict/evaluate on the exported file.

- ``onnx.py``: one wrapper module per model family (what goes in and out of the graph, what is dynamic),
  the export itself and the metadata written into the file;
- ``parity.py``: onnxruntime against PyTorch on real images, detections matched box to box;
- ``runtime.py``: an exported file opened with onnxruntime, standing in for the network of a task, so that
  ``cvtrain predict`` and ``cvtrain evaluate`` run it through their usual code;
- ``workflow.py``: ``cvtrain export``: cheap checks, export, parity, and the file kept or marked ``.unverified``.

onnx and onnxruntime come with the ``export`` extra (``pip install -e ".[export]"``); nothing here imports
them before they are needed, and without them the error says what to install.
"""
