"""Datasets on disk -> tensors: the dataset index, one reader per format, the file-reading layer, datasets,
transforms and sampling (docs/architecture.md)."""
