"""The data contract between the edge client and the cloud job.

Both sides import this package and nothing else defines the shape of the data: the Parquet schema of the
vectors, the S3 key layout, the model fingerprint and the model card.  See :mod:`contract.vectors`.
"""
from contract.vectors import (  # noqa: F401
    CONTRACT_VERSION,
    FEATURE_DIM,
    META_CONTRACT,
    META_MODEL_NAME,
    META_MODEL_SHA256,
    ContractError,
    ModelCard,
    VECTOR_COLUMNS,
    content_key,
    file_sha256,
    load_model_card,
    read_vectors,
    validate_table,
    vector_schema,
    vectors_object_key,
    vectors_prefix,
    raw_prefix,
    raw_object_key,
    label_from_path,
    NO_LABEL,
    write_vectors,
)
