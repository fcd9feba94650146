"""The data contract between the edge client and the cloud job.

Both sides import this package and nothing else defines the shape of the data:

- :mod:`contract.vectors`: the Parquet schema of the vectors, what a file may hold (lossless casts, per-row
  reasons), reading and writing;
- :mod:`contract.layout`: the S3 key layout under a dataset root, and who writes and reads each area (the
  IAM policies are generated from it);
- :mod:`contract.card`: the model fingerprint (sha256 of the ``.tflite``) and the model card;
- :mod:`contract.projection`: a published PCA projection and reference index, for the devices;
- :mod:`contract.errors`: the one error type every command reports as one line, and the CLI runner.
"""
from contract.card import FEATURE_DIM, ModelCard, card_path_for, file_sha256, load_model_card
from contract.errors import ContractError, FruitsError
from contract.layout import (NO_LABEL, content_key, label_from_path, raw_object_key, raw_prefix,
                             vectors_object_key, vectors_prefix)
from contract.vectors import (CONTRACT_VERSION, META_CONTRACT, META_MODEL_NAME, META_MODEL_SHA256,
                              META_PROJECTION_ID, PROJECTION_COLUMN, VECTOR_COLUMNS, conform_schema,
                              conform_table, read_vectors, validate_table, vector_schema, write_vectors)

__all__ = ["FEATURE_DIM", "ModelCard", "card_path_for", "file_sha256", "load_model_card", "ContractError", "FruitsError",
           "NO_LABEL", "content_key", "label_from_path", "raw_object_key", "raw_prefix", "vectors_object_key",
           "vectors_prefix", "CONTRACT_VERSION", "META_CONTRACT", "META_MODEL_NAME", "META_MODEL_SHA256",
           "META_PROJECTION_ID", "PROJECTION_COLUMN", "VECTOR_COLUMNS", "conform_schema", "conform_table",
           "read_vectors", "validate_table", "vector_schema", "write_vectors"]
