"""Batch transform (`berth transform`): run a model over a dataset in object storage.

The same engine runs on one machine and in the pods of a TransformJob's Indexed Job (each pod
takes its share of the input objects). Input is streamed block by block, blocks go to ONNX
Runtime through the serving runtime's Batcher, and every output object is written atomically,
so a re-run skips the objects already done.
"""
