"""The featurizer both sides run: photo decoding + the model's preprocessing (:mod:`featurizer.preprocess`)
and the LiteRT interpreter on a ``.tflite`` checked against its card (:mod:`featurizer.runtime`).

The edge client (on the device), the cloud job (server-side featurization in Spark) and the export (parity
checks) import it from here, so a photo gets the same vector whichever side computes it. It depends on
:mod:`contract` only: no Spark, no TensorFlow, no boto3.
"""
